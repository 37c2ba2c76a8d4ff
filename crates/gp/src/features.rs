//! Random Fourier features (RFF) for drawing approximate GP prior function samples
//! `f_j(x) = φ(x)ᵀ w_j`, with `φ(x) = s √(2/m) [sin(Ωᵀ x/ℓ), cos(Ωᵀ x/ℓ)]`.
//!
//! The frequencies Ω and weights w are drawn once for unit length scales and unit signal scale;
//! the current θ enters only through the scaled inputs `x/ℓ` and the factor s. Keeping Ω and w fixed
//! while θ moves is what lets the pathwise estimator's right-hand sides move smoothly (warm start).

use faer::linalg::matmul::matmul;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, Par};
use rand::Rng;
use rand_distr::{ChiSquared, Distribution, StandardNormal};
use rayon::prelude::*;

use crate::error::{GpError, Result};
use crate::kernel::{KernelKind, PointsRef, TILE_ROWS};

/// Fixed randomness of RFF prior samples: frequencies and weights.
#[derive(Clone, Debug)]
pub struct RandomFeatures {
    /// Spectral frequencies for unit length scales, d × (m/2).
    pub frequencies: Mat<f64>,
    /// Standard-normal weights, m × (number of samples).
    pub weights: Mat<f64>,
}

impl RandomFeatures {
    /// Draws `num_features` features (m, even: m/2 sin/cos pairs) and weights for `num_samples`
    /// prior samples.
    ///
    /// Frequencies follow the kernel's spectral density: ω ~ N(0, I) for RBF; for Matérn-ν,
    /// ω = g √(2ν/u) with g ~ N(0, I_d) and one u ~ χ²_{2ν} per frequency (a multivariate Student-t;
    /// this is the corrected sampler of the reference code, not the per-dimension one used before
    /// its 2025-04 fix).
    pub fn draw<R: Rng>(
        kind: KernelKind,
        dim: usize,
        num_features: usize,
        num_samples: usize,
        rng: &mut R,
    ) -> Result<Self> {
        if num_features == 0 || !num_features.is_multiple_of(2) {
            return Err(GpError::InvalidArgument(format!(
                "number of random features must be positive and even, got {num_features}"
            )));
        }
        let half = num_features / 2;
        let chi = kind.matern_two_nu().map(|two_nu| ChiSquared::new(two_nu).expect("2ν > 0"));
        let mut frequencies = Mat::<f64>::zeros(dim, half);
        for k in 0..half {
            let scale = match &chi {
                Some(chi) => {
                    let two_nu = kind.matern_two_nu().expect("Matérn");
                    let u: f64 = chi.sample(rng);
                    (two_nu / u.max(f64::MIN_POSITIVE)).sqrt()
                }
                None => 1.0,
            };
            for d in 0..dim {
                let g: f64 = StandardNormal.sample(rng);
                frequencies[(d, k)] = g * scale;
            }
        }
        let weights = Mat::from_fn(num_features, num_samples, |_, _| StandardNormal.sample(rng));
        Ok(RandomFeatures { frequencies, weights })
    }

    /// Number of features m.
    pub fn num_features(&self) -> usize {
        2 * self.frequencies.ncols()
    }

    /// Number of prior samples (columns of the weights).
    pub fn num_samples(&self) -> usize {
        self.weights.ncols()
    }

    /// Dense feature matrix Φ (n × m) at points already divided by the length scales. Memory n·m;
    /// meant for tests (`Φ Φᵀ ≈ K`) and small n.
    pub fn feature_matrix(&self, points: PointsRef<'_>, signal_scale: f64) -> Mat<f64> {
        let mut phi = Mat::<f64>::zeros(points.len(), self.num_features());
        let mut proj = Mat::<f64>::zeros(points.len(), self.frequencies.ncols());
        self.fill_features(points, signal_scale, proj.as_mut(), phi.as_mut());
        phi
    }

    /// Prior function samples `F = Φ(x) w` (n × samples) at points divided by the length scales,
    /// tiled over rows so Φ is never stored whole.
    pub fn sample_functions(&self, points: PointsRef<'_>, signal_scale: f64) -> Mat<f64> {
        let half = self.frequencies.ncols();
        let m = self.num_features();
        let mut out = Mat::<f64>::zeros(points.len(), self.num_samples());
        out.as_mut().par_row_chunks_mut(TILE_ROWS).enumerate().for_each_init(
            || (Mat::<f64>::zeros(TILE_ROWS, half), Mat::<f64>::zeros(TILE_ROWS, m)),
            |(proj, phi), (t, out_tile)| {
                let rows = out_tile.nrows();
                let tile_pts = points.rows(t * TILE_ROWS, rows);
                let mut proj = proj.as_mut().submatrix_mut(0, 0, rows, half);
                let mut phi = phi.as_mut().submatrix_mut(0, 0, rows, m);
                self.fill_features(tile_pts, signal_scale, proj.rb_mut(), phi.rb_mut());
                matmul(out_tile, Accum::Replace, phi.rb(), self.weights.as_ref(), 1.0, Par::Seq);
            },
        );
        out
    }

    fn fill_features(
        &self,
        points: PointsRef<'_>,
        signal_scale: f64,
        mut proj: faer::MatMut<'_, f64>,
        phi: faer::MatMut<'_, f64>,
    ) {
        let half = self.frequencies.ncols();
        matmul(proj.rb_mut(), Accum::Replace, points.coords, self.frequencies.as_ref(), 1.0, Par::Seq);
        let amplitude = signal_scale * (2.0 / self.num_features() as f64).sqrt();
        let proj = proj.rb().try_as_col_major().expect("column-major scratch");
        let mut phi = phi.try_as_col_major_mut().expect("column-major scratch");
        let (mut sines, mut cosines) = phi.rb_mut().split_at_col_mut(half);
        for k in 0..half {
            scaled_sin_cos(
                proj.col(k).as_slice(),
                amplitude,
                sines.rb_mut().col_mut(k).as_slice_mut(),
                cosines.rb_mut().col_mut(k).as_slice_mut(),
            );
        }
    }
}

/// 1.5 · 2⁵²: adding and subtracting it rounds to the nearest integer with vectorisable additions.
const ROUNDING_SHIFTER: f64 = 6_755_399_441_055_744.0;
// π/2 in three parts (fdlibm's pio2_1, pio2_2, pio2_2t), so that x − k·π/2 is accurate for the
// arguments met here (|x| up to ~1e6).
const PIO2_1: f64 = f64::from_bits(0x3FF9_21FB_5440_0000); // 1.57079632673412561417
const PIO2_2: f64 = f64::from_bits(0x3DD0_B461_1A60_0000); // 6.07710050630396597660e-11
const PIO2_3: f64 = f64::from_bits(0x3BA3_198A_2E03_7073); // 2.02226624879595063154e-21

/// `(sin x, cos x)`, branch-free so the feature loop vectorises: reduction by the nearest multiple
/// k of π/2, Taylor polynomials on |r| ≤ π/4 (truncation error below 1e-16), quadrant by k mod 4.
#[inline(always)]
fn sin_cos(x: f64) -> (f64, f64) {
    let shifted = x * std::f64::consts::FRAC_2_PI + ROUNDING_SHIFTER;
    let k = shifted - ROUNDING_SHIFTER;
    let r = ((x - k * PIO2_1) - k * PIO2_2) - k * PIO2_3;
    let r2 = r * r;
    let mut sp = -1.0 / 1_307_674_368_000.0;
    sp = sp * r2 + 1.0 / 6_227_020_800.0;
    sp = sp * r2 - 1.0 / 39_916_800.0;
    sp = sp * r2 + 1.0 / 362_880.0;
    sp = sp * r2 - 1.0 / 5_040.0;
    sp = sp * r2 + 1.0 / 120.0;
    sp = sp * r2 - 1.0 / 6.0;
    let sin_r = r + r * r2 * sp;
    let mut cp = 1.0 / 20_922_789_888_000.0;
    cp = cp * r2 - 1.0 / 87_178_291_200.0;
    cp = cp * r2 + 1.0 / 479_001_600.0;
    cp = cp * r2 - 1.0 / 3_628_800.0;
    cp = cp * r2 + 1.0 / 40_320.0;
    cp = cp * r2 - 1.0 / 720.0;
    cp = cp * r2 + 1.0 / 24.0;
    cp = cp * r2 - 0.5;
    let cos_r = 1.0 + r2 * cp;
    let quadrant = (shifted.to_bits() as i64).wrapping_sub(ROUNDING_SHIFTER.to_bits() as i64) & 3;
    // quadrant 0: (s, c); 1: (c, −s); 2: (−s, −c); 3: (−c, s).
    let swap = quadrant & 1 == 1;
    let (s, c) = if swap { (cos_r, sin_r) } else { (sin_r, cos_r) };
    let sin_sign = if quadrant >= 2 { -1.0 } else { 1.0 };
    let cos_sign = if quadrant == 1 || quadrant == 2 { -1.0 } else { 1.0 };
    (sin_sign * s, cos_sign * c)
}

#[inline(always)]
fn scaled_sin_cos_generic(x: &[f64], amplitude: f64, sines: &mut [f64], cosines: &mut [f64]) {
    for ((&x, s), c) in x.iter().zip(sines.iter_mut()).zip(cosines.iter_mut()) {
        let (sv, cv) = sin_cos(x);
        *s = amplitude * sv;
        *c = amplitude * cv;
    }
}

// Baseline x86-64 builds get SSE2 only; these copies use wider vectors when the CPU has them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn scaled_sin_cos_avx512(x: &[f64], amplitude: f64, sines: &mut [f64], cosines: &mut [f64]) {
    scaled_sin_cos_generic(x, amplitude, sines, cosines)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scaled_sin_cos_avx2(x: &[f64], amplitude: f64, sines: &mut [f64], cosines: &mut [f64]) {
    scaled_sin_cos_generic(x, amplitude, sines, cosines)
}

/// `sines = amplitude · sin(x)`, `cosines = amplitude · cos(x)` (SIMD when available).
pub fn scaled_sin_cos(x: &[f64], amplitude: f64, sines: &mut [f64], cosines: &mut [f64]) {
    assert!(sines.len() == x.len() && cosines.len() == x.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512dq") {
            // SAFETY: the required CPU features were detected just above.
            return unsafe { scaled_sin_cos_avx512(x, amplitude, sines, cosines) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the required CPU features were detected just above.
            return unsafe { scaled_sin_cos_avx2(x, amplitude, sines, cosines) };
        }
    }
    scaled_sin_cos_generic(x, amplitude, sines, cosines)
}
