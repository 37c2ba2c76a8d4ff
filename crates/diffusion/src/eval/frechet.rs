//! Fréchet distance between two sets of feature vectors, i.e. the squared
//! 2-Wasserstein distance between Gaussians fitted to them (FID/FCD):
//!
//! `d² = ‖μ_a − μ_b‖² + tr(C_a + C_b − 2 (C_a^{1/2} C_b C_a^{1/2})^{1/2})`.
//!
//! Everything is computed in f64 with faer: sample means, unbiased sample
//! covariances (denominator `n − 1`), and the matrix square roots through
//! symmetric eigendecompositions (`self_adjoint_eigen`), clamping tiny
//! negative eigenvalues (round-off) to 0.

use faer::{Mat, Side};

/// Mean and covariance of a set of `dim`-dimensional vectors.
#[derive(Clone, Debug)]
pub struct GaussianStats {
    /// Sample mean, length `dim`.
    pub mean: Vec<f64>,
    /// Unbiased sample covariance (denominator `n − 1`), `dim × dim`.
    pub cov: Mat<f64>,
    /// Number of vectors the statistics were computed from.
    pub n: usize,
}

impl GaussianStats {
    /// Computes the mean and unbiased covariance of `n` row-major vectors of
    /// length `dim` stored in `x` (accumulated in f64).
    ///
    /// # Panics
    /// If `x.len() != n * dim`, `n < 2` or `dim == 0`.
    pub fn from_samples(x: &[f32], n: usize, dim: usize) -> GaussianStats {
        assert!(dim > 0, "dimension must be positive");
        assert!(n >= 2, "need at least 2 vectors for a covariance, got {n}");
        assert_eq!(
            x.len(),
            n * dim,
            "expected {n} vectors of dimension {dim} = {} values, got {}",
            n * dim,
            x.len()
        );
        let mut mean = vec![0.0f64; dim];
        for row in x.chunks_exact(dim) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += v as f64;
            }
        }
        for m in &mut mean {
            *m /= n as f64;
        }
        // Centred data as an n × dim matrix, then C = Xᵀ X / (n − 1).
        let centred = Mat::<f64>::from_fn(n, dim, |i, j| x[i * dim + j] as f64 - mean[j]);
        let scale = 1.0 / (n as f64 - 1.0);
        let mut cov = centred.transpose() * &centred;
        // Symmetrise exactly and scale.
        for i in 0..dim {
            for j in 0..i {
                let v = 0.5 * (cov[(i, j)] + cov[(j, i)]) * scale;
                cov[(i, j)] = v;
                cov[(j, i)] = v;
            }
            cov[(i, i)] *= scale;
        }
        GaussianStats { mean, cov, n }
    }

    /// Dimension of the vectors.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }
}

/// Symmetric PSD square root `U diag(√max(λ,0)) Uᵀ`; `None` if the
/// eigendecomposition fails to converge.
fn sqrt_psd(a: &Mat<f64>) -> Option<Mat<f64>> {
    let evd = a.self_adjoint_eigen(Side::Lower).ok()?;
    let u = evd.U();
    let s = evd.S().column_vector();
    let d = a.nrows();
    let us = Mat::<f64>::from_fn(d, d, |i, j| u[(i, j)] * s[j].max(0.0).sqrt());
    Some(&us * u.transpose())
}

/// `tr (A^{1/2} B A^{1/2})^{1/2}` for symmetric PSD `A`, `B`; `None` if an
/// eigendecomposition fails to converge.
fn trace_sqrt_product(a: &Mat<f64>, b: &Mat<f64>) -> Option<f64> {
    let ra = sqrt_psd(a)?;
    let m = &ra * b * &ra;
    let d = m.nrows();
    let sym = Mat::<f64>::from_fn(d, d, |i, j| 0.5 * (m[(i, j)] + m[(j, i)]));
    let eig = sym.self_adjoint_eigenvalues(Side::Lower).ok()?;
    Some(eig.iter().map(|&l| l.max(0.0).sqrt()).sum())
}

/// Fréchet distance between two Gaussians given by their statistics.
///
/// The cross term is averaged over both argument orders, so the result is
/// exactly symmetric; it is clamped at 0, and identical statistics give
/// exactly 0. Returns NaN if an eigendecomposition
/// fails to converge (e.g. non-finite inputs).
///
/// # Panics
/// If the dimensions differ.
pub fn frechet_distance_from_stats(a: &GaussianStats, b: &GaussianStats) -> f64 {
    assert_eq!(a.dim(), b.dim(), "dimension mismatch");
    if a.mean == b.mean && a.cov == b.cov {
        return 0.0;
    }
    let mean_term: f64 = a.mean.iter().zip(&b.mean).map(|(x, y)| (x - y) * (x - y)).sum();
    let trace = |c: &Mat<f64>| (0..c.nrows()).map(|i| c[(i, i)]).sum::<f64>();
    let (ab, ba) = match (trace_sqrt_product(&a.cov, &b.cov), trace_sqrt_product(&b.cov, &a.cov)) {
        (Some(ab), Some(ba)) => (ab, ba),
        _ => return f64::NAN,
    };
    let d = mean_term + (trace(&a.cov) + trace(&b.cov)) - (ab + ba);
    if d.is_nan() {
        d
    } else {
        d.max(0.0)
    }
}

/// Fréchet distance between the Gaussians fitted to two sets of vectors:
/// `a` holds `n_a` and `b` holds `n_b` row-major vectors of length `dim`.
///
/// Computed in f64 (see the module documentation). Identical inputs give
/// exactly 0, and the result is exactly symmetric in its two arguments.
/// Returns NaN if an eigendecomposition fails to converge.
///
/// # Panics
/// If `a.len() != n_a * dim`, `b.len() != n_b * dim`, `n_a < 2`, `n_b < 2`
/// or `dim == 0`.
pub fn frechet_distance(a: &[f32], n_a: usize, b: &[f32], n_b: usize, dim: usize) -> f64 {
    let sa = GaussianStats::from_samples(a, n_a, dim);
    if n_a == n_b && a == b {
        return 0.0;
    }
    let sb = GaussianStats::from_samples(b, n_b, dim);
    frechet_distance_from_stats(&sa, &sb)
}
