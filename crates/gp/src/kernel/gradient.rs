//! The hyperparameter gradient `½ Σ_ij M_ij ∂H_ij/∂θ` of a bilinear form, on which every
//! marginal-likelihood gradient rests.

use faer::linalg::matmul::matmul;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, Par};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::tiled::squared_distances;
use super::{kernel_values_and_weights, KernelSystem, TILE_ROWS};

impl KernelSystem {
    /// The gradient `½ Σ_ij M_ij ∂H_ij/∂θ` with respect to θ = (σ, s, ℓ), for a symmetric-in-
    /// expectation weight matrix M that is never stored whole: `fill_weights(row_start, tile)` must
    /// write rows `row_start..row_start + tile.nrows()` of M into `tile` (tile.nrows() × n).
    ///
    /// With `M = ααᵀ − H⁻¹` this is the exact marginal-likelihood gradient; with
    /// `M = ααᵀ − (1/s) L Rᵀ` it is a stochastic estimate whose trace term is `(1/s) Σ_j L_jᵀ ∂H R_j`.
    /// Cost: one kernel pass plus the GEMMs of `fill_weights` and one `tile × n × d` GEMM per tile.
    pub fn bilinear_gradient<F>(&self, fill_weights: F) -> HyperGradient
    where
        F: Fn(usize, MatMut<'_, f64>) + Sync,
    {
        let n = self.n();
        let d = self.dim();
        let pts = self.points.view();
        let kind = self.kind;
        let signal_variance = self.signal_variance();
        let num_tiles = n.div_ceil(TILE_ROWS);
        let partial = (0..num_tiles)
            .into_par_iter()
            .fold(
                || GradientAccumulator::new(n, d),
                |mut acc, t| {
                    let start = t * TILE_ROWS;
                    let rows = TILE_ROWS.min(n - start);
                    let tile_pts = pts.rows(start, rows);
                    let mut weights = acc.weights.as_mut().submatrix_mut(0, 0, rows, n);
                    fill_weights(start, weights.rb_mut());
                    let mut kern = acc.kernel.as_mut().submatrix_mut(0, 0, rows, n);
                    squared_distances(tile_pts, pts, kern.rb_mut());
                    let mut kern = kern.try_as_col_major_mut().expect("column-major scratch");
                    let mut weights = weights.try_as_col_major_mut().expect("column-major scratch");
                    for j in 0..n {
                        let m_col = weights.rb_mut().col_mut(j).as_slice_mut();
                        let k_col = kern.rb_mut().col_mut(j).as_slice_mut();
                        if j >= start && j < start + rows {
                            // Diagonal entry of M: ∂H_ii/∂σ = 2σ, read before M is overwritten.
                            acc.trace_m += m_col[j - start];
                        }
                        let col_weights = &mut acc.column[..rows];
                        kernel_values_and_weights(kind, k_col, col_weights);
                        let mut col_sum = 0.0;
                        for ((m, value), weight) in m_col.iter_mut().zip(k_col.iter()).zip(col_weights.iter())
                        {
                            acc.sum_m_k += *m * value;
                            // Overwrite M by W = M ∘ (−k'/r)/s² for the length-scale GEMM below.
                            *m *= weight;
                            col_sum += *m;
                        }
                        acc.col_sums[j] += col_sum;
                    }
                    let weights = weights.rb();
                    // (W Xs) for the cross term Σ_ij W_ij x_id x_jd.
                    let mut wx = Mat::<f64>::zeros(rows, d);
                    matmul(wx.as_mut(), Accum::Replace, weights, pts.coords, 1.0, Par::Seq);
                    for i in 0..rows {
                        let row_sum: f64 = (0..n).map(|j| weights[(i, j)]).sum();
                        for dd in 0..d {
                            let x = tile_pts.coords[(i, dd)];
                            acc.length_terms[dd] += x * x * row_sum - 2.0 * x * wx[(i, dd)];
                        }
                    }
                    acc
                },
            )
            .map(|acc| (acc.sum_m_k, acc.trace_m, acc.length_terms, acc.col_sums))
            .reduce(
                || (0.0, 0.0, vec![0.0; d], vec![0.0; n]),
                |mut a, b| {
                    a.0 += b.0;
                    a.1 += b.1;
                    a.2.iter_mut().zip(&b.2).for_each(|(x, y)| *x += y);
                    a.3.iter_mut().zip(&b.3).for_each(|(x, y)| *x += y);
                    a
                },
            );
        let (sum_m_k, trace_m, mut length_terms, col_sums) = partial;
        for (dd, term) in length_terms.iter_mut().enumerate() {
            *term += (0..n).map(|j| pts.coords[(j, dd)].powi(2) * col_sums[j]).sum::<f64>();
        }
        let h = &self.hyper;
        HyperGradient {
            noise: h.noise_scale * trace_m,
            signal: signal_variance * sum_m_k / h.signal_scale,
            lengths: length_terms
                .iter()
                .zip(&h.length_scales)
                .map(|(term, l)| 0.5 * signal_variance * term / l)
                .collect(),
        }
    }
}

/// Per-rayon-job scratch and partial sums of [`KernelSystem::bilinear_gradient`].
struct GradientAccumulator {
    column: Vec<f64>,
    weights: Mat<f64>,
    kernel: Mat<f64>,
    sum_m_k: f64,
    trace_m: f64,
    length_terms: Vec<f64>,
    col_sums: Vec<f64>,
}

impl GradientAccumulator {
    fn new(n: usize, d: usize) -> Self {
        GradientAccumulator {
            column: vec![0.0; TILE_ROWS],
            weights: Mat::zeros(TILE_ROWS, n),
            kernel: Mat::zeros(TILE_ROWS, n),
            sum_m_k: 0.0,
            trace_m: 0.0,
            length_terms: vec![0.0; d],
            col_sums: vec![0.0; n],
        }
    }
}

/// Gradient of a scalar objective with respect to θ = (σ, s, ℓ_1..ℓ_d).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HyperGradient {
    /// Derivative with respect to the noise scale σ.
    pub noise: f64,
    /// Derivative with respect to the signal scale s.
    pub signal: f64,
    /// Derivatives with respect to the length scales.
    pub lengths: Vec<f64>,
}

impl HyperGradient {
    /// Flattens in the order of [`Hyperparameters::to_vec`].
    pub fn to_vec(&self) -> Vec<f64> {
        let mut v = vec![self.noise, self.signal];
        v.extend_from_slice(&self.lengths);
        v
    }
}
