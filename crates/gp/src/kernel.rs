//! Stationary ARD kernels, matrix-free tiled kernel-matrix products, and the gradient of the
//! bilinear form `½ Σ_ij M_ij ∂H_ij/∂θ` on which every marginal-likelihood gradient rests.
//!
//! The kernel matrix is never formed unless asked for ([`KernelSystem::kernel_matrix`]). Products
//! `K V` are computed in row tiles of [`TILE_ROWS`] rows: one kernel block (tile × n) is evaluated
//! into a per-thread scratch buffer (squared distances by one GEMM, then the kernel function entry
//! by entry) and multiplied against the right-hand sides by a second GEMM. Row tiles run in
//! parallel on rayon; each GEMM is sequential so the two levels of parallelism do not fight.

use std::fmt;
use std::str::FromStr;

use faer::linalg::matmul::matmul;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{GpError, Result};

/// Rows per tile of the matrix-free kernel products. 256 rows × n columns of f64 is 8 MB at
/// n = 4000, which stays in the last-level cache of one core's share.
pub const TILE_ROWS: usize = 256;

/// Kernel products with at most this many kernel entries run on the calling thread.
pub const SEQUENTIAL_MAX_ENTRIES: usize = 1 << 17;

/// Lower clip of the squared scaled distance, as in the reference code: it keeps `r` and the
/// Matérn-1/2 derivative weight finite for coincident points.
pub const MIN_SQUARED_DISTANCE: f64 = 1e-10;

/// The stationary kernel family. All use ARD length scales: `r = ‖(x − x')/ℓ‖`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelKind {
    /// Matérn-1/2 (exponential): `s² exp(−r)`.
    Matern12,
    /// Matérn-3/2 (the reference default): `s² (1 + √3 r) exp(−√3 r)`.
    Matern32,
    /// Matérn-5/2: `s² (1 + √5 r + 5r²/3) exp(−√5 r)`.
    Matern52,
    /// Squared exponential: `s² exp(−r²/2)`.
    Rbf,
}

impl KernelKind {
    /// Kernel value divided by `s²` and the derivative weight `−k'(r)/(r s²)`, at squared scaled
    /// distance `r2` (already clipped). The weight turns length-scale derivatives into
    /// `∂k/∂ℓ_d = s² · weight · (Δ_d/ℓ_d)² / ℓ_d`, which is what makes them a GEMM.
    #[inline(always)]
    pub fn unit_value_and_weight(self, r2: f64) -> (f64, f64) {
        match self {
            KernelKind::Matern12 => {
                let r = r2.sqrt();
                let e = (-r).exp();
                (e, e / r)
            }
            KernelKind::Matern32 => {
                let sr = (3.0 * r2).sqrt();
                let e = (-sr).exp();
                ((1.0 + sr) * e, 3.0 * e)
            }
            KernelKind::Matern52 => {
                let sr = (5.0 * r2).sqrt();
                let e = (-sr).exp();
                ((1.0 + sr + 5.0 * r2 / 3.0) * e, 5.0 / 3.0 * (1.0 + sr) * e)
            }
            KernelKind::Rbf => {
                let e = (-0.5 * r2).exp();
                (e, e)
            }
        }
    }

    /// Kernel value divided by `s²` at squared scaled distance `r2` (already clipped).
    #[inline(always)]
    pub fn unit_value(self, r2: f64) -> f64 {
        match self {
            KernelKind::Matern12 => (-r2.sqrt()).exp(),
            KernelKind::Matern32 => {
                let sr = (3.0 * r2).sqrt();
                (1.0 + sr) * (-sr).exp()
            }
            KernelKind::Matern52 => {
                let sr = (5.0 * r2).sqrt();
                (1.0 + sr + 5.0 * r2 / 3.0) * (-sr).exp()
            }
            KernelKind::Rbf => (-0.5 * r2).exp(),
        }
    }

    /// `2ν` of the Matérn family (degrees of freedom of the chi-square in its spectral density),
    /// `None` for the RBF kernel (Gaussian spectral density).
    pub fn matern_two_nu(self) -> Option<f64> {
        match self {
            KernelKind::Matern12 => Some(1.0),
            KernelKind::Matern32 => Some(3.0),
            KernelKind::Matern52 => Some(5.0),
            KernelKind::Rbf => None,
        }
    }
}

impl FromStr for KernelKind {
    type Err = GpError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "matern12" | "matern-1/2" => Ok(KernelKind::Matern12),
            "matern32" | "matern-3/2" => Ok(KernelKind::Matern32),
            "matern52" | "matern-5/2" => Ok(KernelKind::Matern52),
            "rbf" => Ok(KernelKind::Rbf),
            other => Err(GpError::InvalidArgument(format!(
                "unknown kernel '{other}' (known: matern12, matern32, matern52, rbf)"
            ))),
        }
    }
}

impl fmt::Display for KernelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            KernelKind::Matern12 => "matern12",
            KernelKind::Matern32 => "matern32",
            KernelKind::Matern52 => "matern52",
            KernelKind::Rbf => "rbf",
        };
        f.write_str(name)
    }
}

/// GP hyperparameters θ = (σ, s, ℓ_1..ℓ_d), all standard deviations / scales (not variances).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hyperparameters {
    /// Observation noise standard deviation σ; the system matrix is `K + σ² I`.
    pub noise_scale: f64,
    /// Signal scale s; the kernel's variance is `s²`.
    pub signal_scale: f64,
    /// One length scale per input dimension.
    pub length_scales: Vec<f64>,
}

impl Hyperparameters {
    /// The reference initialisation: σ = s = ℓ_d = 1.
    pub fn ones(dim: usize) -> Self {
        Hyperparameters { noise_scale: 1.0, signal_scale: 1.0, length_scales: vec![1.0; dim] }
    }

    /// Flattens to `[σ, s, ℓ_1, …, ℓ_d]`, the order used by gradients and the optimiser.
    pub fn to_vec(&self) -> Vec<f64> {
        let mut v = vec![self.noise_scale, self.signal_scale];
        v.extend_from_slice(&self.length_scales);
        v
    }

    /// Inverse of [`Hyperparameters::to_vec`].
    pub fn from_slice(v: &[f64]) -> Result<Self> {
        if v.len() < 3 {
            return Err(GpError::InvalidArgument(format!(
                "hyperparameter vector needs at least 3 entries, got {}",
                v.len()
            )));
        }
        Ok(Hyperparameters { noise_scale: v[0], signal_scale: v[1], length_scales: v[2..].to_vec() })
    }

    /// Checks that every entry is finite and positive and that there is one length scale per input
    /// dimension.
    pub fn validate(&self, dim: usize) -> Result<()> {
        if self.length_scales.len() != dim {
            return Err(GpError::DimensionMismatch {
                what: "length scales vs input dimension".into(),
                expected: dim,
                found: self.length_scales.len(),
            });
        }
        for (name, value) in [("noise scale", self.noise_scale), ("signal scale", self.signal_scale)]
            .into_iter()
            .chain(self.length_scales.iter().map(|&l| ("length scale", l)))
        {
            if !value.is_finite() {
                return Err(GpError::NonFinite { what: format!("hyperparameters ({name})") });
            }
            if value <= 0.0 {
                return Err(GpError::InvalidArgument(format!("{name} must be positive, got {value}")));
            }
        }
        Ok(())
    }
}

/// Input points divided by the length scales, with their squared norms cached, so that a squared
/// scaled distance is `|a|² + |b|² − 2 a·b` and a kernel block costs one GEMM plus one pass.
#[derive(Clone, Debug)]
pub struct ScaledPoints {
    /// `x / ℓ`, one point per row (n × d).
    pub coords: Mat<f64>,
    /// Squared row norms of `coords`.
    pub sq_norms: Vec<f64>,
}

/// A borrowed view of (a row range of) [`ScaledPoints`].
#[derive(Clone, Copy, Debug)]
pub struct PointsRef<'a> {
    /// Scaled coordinates, one point per row.
    pub coords: MatRef<'a, f64>,
    /// Squared row norms of `coords`.
    pub sq_norms: &'a [f64],
}

impl ScaledPoints {
    /// Scales `x` (n × d) by the length scales (`length_scales.len() == d` is the caller's duty).
    pub fn new(x: MatRef<'_, f64>, length_scales: &[f64]) -> Self {
        let coords = Mat::from_fn(x.nrows(), x.ncols(), |i, j| x[(i, j)] / length_scales[j]);
        Self::from_coords(coords)
    }

    /// Wraps already-scaled coordinates.
    pub fn from_coords(coords: Mat<f64>) -> Self {
        let sq_norms =
            (0..coords.nrows()).map(|i| (0..coords.ncols()).map(|j| coords[(i, j)].powi(2)).sum()).collect();
        ScaledPoints { coords, sq_norms }
    }

    /// Copies the given rows (used for SGD mini-batches).
    pub fn gather(&self, rows: &[usize]) -> ScaledPoints {
        let coords = Mat::from_fn(rows.len(), self.coords.ncols(), |i, j| self.coords[(rows[i], j)]);
        let sq_norms = rows.iter().map(|&r| self.sq_norms[r]).collect();
        ScaledPoints { coords, sq_norms }
    }

    /// Borrowed view of all points.
    pub fn view(&self) -> PointsRef<'_> {
        PointsRef { coords: self.coords.as_ref(), sq_norms: &self.sq_norms }
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.coords.nrows()
    }

    /// True when there are no points.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> PointsRef<'a> {
    /// Number of points.
    pub fn len(&self) -> usize {
        self.coords.nrows()
    }

    /// True when there are no points.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The contiguous row range `start..start + len`.
    pub fn rows(&self, start: usize, len: usize) -> PointsRef<'a> {
        PointsRef { coords: self.coords.subrows(start, len), sq_norms: &self.sq_norms[start..start + len] }
    }
}

/// 1.5 · 2⁵²: adding and subtracting it rounds an f64 of magnitude < 2⁵¹ to the nearest integer,
/// with plain additions that vectorise (unlike `f64::round`).
const ROUNDING_SHIFTER: f64 = 6_755_399_441_055_744.0;
// ln 2 split as in fdlibm: the high part has trailing zero bits so that k·LN2_HI is exact.
const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000); // 6.93147180369123816490e-01
const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76); // 1.90821492927058770002e-10

/// `exp(x)` for `x ≤ 0`, branch-free so that the kernel loops vectorise: Cody–Waite reduction
/// `x = k ln2 + r`, |r| ≤ ln2/2, degree-12 Taylor polynomial for `e^r` (truncation error below
/// 2e-16 relative), and `2^k` built from its bits. Arguments below −700 return `exp(−700)` (≈1e-304),
/// which is zero for every purpose here.
#[inline(always)]
fn exp_nonpositive(x: f64) -> f64 {
    let x = if x < -700.0 { -700.0 } else { x };
    let shifted = x * std::f64::consts::LOG2_E + ROUNDING_SHIFTER;
    let k = shifted - ROUNDING_SHIFTER;
    let r = x - k * LN2_HI - k * LN2_LO;
    let mut p = 1.0 / 479_001_600.0;
    p = p * r + 1.0 / 39_916_800.0;
    p = p * r + 1.0 / 3_628_800.0;
    p = p * r + 1.0 / 362_880.0;
    p = p * r + 1.0 / 40_320.0;
    p = p * r + 1.0 / 5_040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    let k_int = (shifted.to_bits() as i64).wrapping_sub(ROUNDING_SHIFTER.to_bits() as i64);
    p * f64::from_bits(((k_int + 1023) << 52) as u64)
}

/// Replaces squared distances by kernel values `s² k(r)`, one loop per kernel so each vectorises.
#[inline(always)]
fn values_in_place_generic(kind: KernelKind, signal_variance: f64, buf: &mut [f64]) {
    let s2 = signal_variance;
    match kind {
        KernelKind::Matern12 => buf.iter_mut().for_each(|v| *v = s2 * exp_nonpositive(-v.sqrt())),
        KernelKind::Matern32 => buf.iter_mut().for_each(|v| {
            let sr = (3.0 * *v).sqrt();
            *v = s2 * (1.0 + sr) * exp_nonpositive(-sr);
        }),
        KernelKind::Matern52 => buf.iter_mut().for_each(|v| {
            let sr = (5.0 * *v).sqrt();
            *v = s2 * (1.0 + sr + 5.0 / 3.0 * *v) * exp_nonpositive(-sr);
        }),
        KernelKind::Rbf => buf.iter_mut().for_each(|v| *v = s2 * exp_nonpositive(-0.5 * *v)),
    }
}

/// Replaces squared distances by unit kernel values `k(r)/s²` and writes the derivative weights
/// `−k'(r)/(r s²)` (see [`KernelKind::unit_value_and_weight`]) into `weights`.
#[inline(always)]
fn values_and_weights_generic(kind: KernelKind, buf: &mut [f64], weights: &mut [f64]) {
    let pairs = buf.iter_mut().zip(weights.iter_mut());
    match kind {
        KernelKind::Matern12 => pairs.for_each(|(v, w)| {
            let r = v.sqrt();
            let e = exp_nonpositive(-r);
            *v = e;
            *w = e / r;
        }),
        KernelKind::Matern32 => pairs.for_each(|(v, w)| {
            let sr = (3.0 * *v).sqrt();
            let e = exp_nonpositive(-sr);
            *v = (1.0 + sr) * e;
            *w = 3.0 * e;
        }),
        KernelKind::Matern52 => pairs.for_each(|(v, w)| {
            let sr = (5.0 * *v).sqrt();
            let e = exp_nonpositive(-sr);
            *v = (1.0 + sr + 5.0 / 3.0 * *v) * e;
            *w = 5.0 / 3.0 * (1.0 + sr) * e;
        }),
        KernelKind::Rbf => pairs.for_each(|(v, w)| {
            let e = exp_nonpositive(-0.5 * *v);
            *v = e;
            *w = e;
        }),
    }
}

// The build targets baseline x86-64 (SSE2); these copies let LLVM use 256- or 512-bit vectors when
// the CPU has them (checked at run time, the check is a cached atomic load).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn values_in_place_avx512(kind: KernelKind, signal_variance: f64, buf: &mut [f64]) {
    values_in_place_generic(kind, signal_variance, buf)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn values_in_place_avx2(kind: KernelKind, signal_variance: f64, buf: &mut [f64]) {
    values_in_place_generic(kind, signal_variance, buf)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn values_and_weights_avx512(kind: KernelKind, buf: &mut [f64], weights: &mut [f64]) {
    values_and_weights_generic(kind, buf, weights)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn values_and_weights_avx2(kind: KernelKind, buf: &mut [f64], weights: &mut [f64]) {
    values_and_weights_generic(kind, buf, weights)
}

/// The widest vector extension the CPU has, among those the kernel passes are built for.
#[derive(Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum SimdLevel {
    Avx512,
    Avx2,
    Baseline,
}

fn simd_level() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512dq") {
            return SimdLevel::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Baseline
}

/// Kernel values `s² k(r)` from clipped squared distances, in place (SIMD when available).
pub fn kernel_values_in_place(kind: KernelKind, signal_variance: f64, buf: &mut [f64]) {
    match simd_level() {
        // SAFETY: `simd_level` detected the CPU features each copy is compiled for.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { values_in_place_avx512(kind, signal_variance, buf) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { values_in_place_avx2(kind, signal_variance, buf) },
        _ => values_in_place_generic(kind, signal_variance, buf),
    }
}

/// Unit kernel values (in place of the squared distances) and derivative weights.
pub fn kernel_values_and_weights(kind: KernelKind, buf: &mut [f64], weights: &mut [f64]) {
    assert_eq!(buf.len(), weights.len());
    match simd_level() {
        // SAFETY: `simd_level` detected the CPU features each copy is compiled for.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { values_and_weights_avx512(kind, buf, weights) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { values_and_weights_avx2(kind, buf, weights) },
        _ => values_and_weights_generic(kind, buf, weights),
    }
}

/// Fills `out` (a.len × b.len) with `K(a, b) = s² k(r)`; `out` must have unit row stride.
pub fn fill_kernel_block(
    kind: KernelKind,
    signal_variance: f64,
    a: PointsRef<'_>,
    b: PointsRef<'_>,
    mut out: MatMut<'_, f64>,
) {
    squared_distances(a, b, out.rb_mut());
    let mut out = out.try_as_col_major_mut().expect("kernel block buffers are column-major");
    for j in 0..b.len() {
        kernel_values_in_place(kind, signal_variance, out.rb_mut().col_mut(j).as_slice_mut());
    }
}

/// Fills `out` with clipped squared scaled distances `max(|a_i − b_j|², MIN_SQUARED_DISTANCE)`.
fn squared_distances(a: PointsRef<'_>, b: PointsRef<'_>, mut out: MatMut<'_, f64>) {
    matmul(out.rb_mut(), Accum::Replace, a.coords, b.coords.transpose(), -2.0, Par::Seq);
    let mut out = out.try_as_col_major_mut().expect("kernel block buffers are column-major");
    for j in 0..b.len() {
        let norm_b = b.sq_norms[j];
        for (value, &norm_a) in out.rb_mut().col_mut(j).as_slice_mut().iter_mut().zip(a.sq_norms) {
            *value = (*value + norm_a + norm_b).max(MIN_SQUARED_DISTANCE);
        }
    }
}

/// Dense kernel matrix `K(a, b)`, computed in parallel row tiles. Only for small problems, oracles
/// and exact metrics: memory is `a.len × b.len` f64.
pub fn kernel_matrix(kind: KernelKind, signal_variance: f64, a: PointsRef<'_>, b: PointsRef<'_>) -> Mat<f64> {
    let mut out = Mat::<f64>::zeros(a.len(), b.len());
    out.as_mut().par_row_chunks_mut(TILE_ROWS).enumerate().for_each(|(t, tile)| {
        let rows = tile.nrows();
        // A row chunk of a column-major matrix is strided; compute into a contiguous buffer.
        let mut buf = Mat::<f64>::zeros(rows, b.len());
        fill_kernel_block(kind, signal_variance, a.rows(t * TILE_ROWS, rows), b, buf.as_mut());
        let mut tile = tile;
        tile.copy_from(&buf);
    });
    out
}

/// Matrix-free product `out = beta·out + alpha · K(a, b) · v` with `v` of size b.len × k, tiled over
/// the rows of `a` and parallel over tiles. `accum` selects whether `out` is overwritten
/// ([`Accum::Replace`]) or added to ([`Accum::Add`]).
#[allow(clippy::too_many_arguments)]
pub fn kernel_matmul(
    kind: KernelKind,
    signal_variance: f64,
    a: PointsRef<'_>,
    b: PointsRef<'_>,
    v: MatRef<'_, f64>,
    out: MatMut<'_, f64>,
    accum: Accum,
    alpha: f64,
) {
    assert_eq!(v.nrows(), b.len(), "kernel_matmul: v rows vs b points");
    assert_eq!(out.nrows(), a.len(), "kernel_matmul: out rows vs a points");
    assert_eq!(out.ncols(), v.ncols(), "kernel_matmul: out cols vs v cols");
    let nb = b.len();
    if a.len() * nb <= SEQUENTIAL_MAX_ENTRIES {
        // Small products (AP blocks and SGD batches on small n): a fork-join costs more than it
        // saves, especially on a machine whose cores are busy with other work.
        let mut scratch = Mat::<f64>::zeros(TILE_ROWS.min(a.len()), nb);
        let mut out = out;
        let mut start = 0;
        while start < a.len() {
            let rows = TILE_ROWS.min(a.len() - start);
            let mut block = scratch.as_mut().submatrix_mut(0, 0, rows, nb);
            fill_kernel_block(kind, signal_variance, a.rows(start, rows), b, block.rb_mut());
            matmul(out.rb_mut().subrows_mut(start, rows), accum, block.rb(), v, alpha, Par::Seq);
            start += rows;
        }
        return;
    }
    out.par_row_chunks_mut(TILE_ROWS).enumerate().for_each_init(
        // One scratch kernel block per rayon job, reused across the tiles of that job.
        || Mat::<f64>::zeros(TILE_ROWS, nb),
        |scratch, (t, out_tile)| {
            let rows = out_tile.nrows();
            let mut block = scratch.as_mut().submatrix_mut(0, 0, rows, nb);
            fill_kernel_block(kind, signal_variance, a.rows(t * TILE_ROWS, rows), b, block.rb_mut());
            matmul(out_tile, accum, block.rb(), v, alpha, Par::Seq);
        },
    );
}

/// The system `H_θ = K_θ(X, X) + σ² I` on fixed training inputs, applied matrix-free.
#[derive(Clone, Debug)]
pub struct KernelSystem {
    kind: KernelKind,
    hyper: Hyperparameters,
    points: ScaledPoints,
    /// Dense `K(X, X)`, when [`KernelSystem::cache_kernel`] was called: every product then is one
    /// GEMM instead of a kernel evaluation plus a GEMM per tile.
    cache: Option<std::sync::Arc<Mat<f64>>>,
}

impl KernelSystem {
    /// Builds the system for inputs `x` (n × d) and hyperparameters `hyper`, after validating both.
    pub fn new(x: MatRef<'_, f64>, kind: KernelKind, hyper: &Hyperparameters) -> Result<Self> {
        hyper.validate(x.ncols())?;
        check_finite_mat(x, "training inputs")?;
        Ok(KernelSystem {
            kind,
            hyper: hyper.clone(),
            points: ScaledPoints::new(x, &hyper.length_scales),
            cache: None,
        })
    }

    /// Form and keep the dense kernel matrix (8 n² bytes: 1.5 GB at n = 13 500), so that each
    /// solver epoch of [`KernelSystem::apply`] is a single GEMM. The outer loop builds one system
    /// per step, so the matrix is formed once per set of hyperparameters.
    pub fn cache_kernel(&mut self) {
        if self.cache.is_none() {
            self.cache = Some(std::sync::Arc::new(self.kernel_matrix()));
        }
    }

    /// Whether the dense kernel matrix is held.
    pub fn is_cached(&self) -> bool {
        self.cache.is_some()
    }

    /// Number of training points n.
    pub fn n(&self) -> usize {
        self.points.len()
    }

    /// Input dimension d.
    pub fn dim(&self) -> usize {
        self.points.coords.ncols()
    }

    /// Refuse targets that are not one per training point.
    pub fn check_targets(&self, y: &[f64]) -> Result<()> {
        if y.len() != self.n() {
            return Err(GpError::DimensionMismatch {
                what: "targets vs inputs".into(),
                expected: self.n(),
                found: y.len(),
            });
        }
        Ok(())
    }

    /// Refuse test inputs of another dimension or with NaN / infinity.
    pub fn check_test_inputs(&self, x_test: MatRef<'_, f64>) -> Result<()> {
        if x_test.ncols() != self.dim() {
            return Err(GpError::DimensionMismatch {
                what: "test inputs vs training input dimension".into(),
                expected: self.dim(),
                found: x_test.ncols(),
            });
        }
        check_finite_mat(x_test, "test inputs")
    }

    /// The kernel family.
    pub fn kind(&self) -> KernelKind {
        self.kind
    }

    /// The hyperparameters this system was built with.
    pub fn hyper(&self) -> &Hyperparameters {
        &self.hyper
    }

    /// The scaled training inputs.
    pub fn points(&self) -> &ScaledPoints {
        &self.points
    }

    /// σ².
    pub fn noise_variance(&self) -> f64 {
        self.hyper.noise_scale * self.hyper.noise_scale
    }

    /// s².
    pub fn signal_variance(&self) -> f64 {
        self.hyper.signal_scale * self.hyper.signal_scale
    }

    /// Scales other inputs (test points) by this system's length scales.
    pub fn scale_points(&self, x: MatRef<'_, f64>) -> ScaledPoints {
        ScaledPoints::new(x, &self.hyper.length_scales)
    }

    /// `out = H v` for `v` of size n × k (one solver epoch).
    pub fn apply(&self, v: MatRef<'_, f64>, mut out: MatMut<'_, f64>) {
        self.columns_matmul(0, self.n(), v, out.rb_mut(), Accum::Replace, 1.0);
        let noise = self.noise_variance();
        for j in 0..v.ncols() {
            for i in 0..v.nrows() {
                out[(i, j)] += noise * v[(i, j)];
            }
        }
    }

    /// `out = accum(out) + alpha · K(other, X) v`: kernel products between other points (scaled by
    /// [`KernelSystem::scale_points`], or a subset of the training points) and the training points.
    pub fn cross_matmul(
        &self,
        other: PointsRef<'_>,
        v: MatRef<'_, f64>,
        out: MatMut<'_, f64>,
        accum: Accum,
        alpha: f64,
    ) {
        kernel_matmul(self.kind, self.signal_variance(), other, self.points.view(), v, out, accum, alpha);
    }

    /// `out = K(X_rows, X) v` for the training points listed in `rows` (an SGD mini-batch).
    pub fn rows_matmul(&self, rows: &[usize], v: MatRef<'_, f64>, mut out: MatMut<'_, f64>) {
        match &self.cache {
            Some(k) => {
                let gathered = Mat::from_fn(rows.len(), self.n(), |t, j| k[(rows[t], j)]);
                matmul(out.rb_mut(), Accum::Replace, gathered.as_ref(), v, 1.0, Par::rayon(0));
            }
            None => {
                let batch_pts = self.points.gather(rows);
                self.cross_matmul(batch_pts.view(), v, out, Accum::Replace, 1.0);
            }
        }
    }

    /// `out += alpha · K(X, X_b) delta` for the block `b = start..start + len` of training points
    /// (an alternating-projections update).
    pub fn block_columns_matmul_add(
        &self,
        start: usize,
        len: usize,
        delta: MatRef<'_, f64>,
        out: MatMut<'_, f64>,
        alpha: f64,
    ) {
        self.columns_matmul(start, len, delta, out, Accum::Add, alpha);
    }

    /// `out = accum(out) + alpha · K(X, X_b) v` for the columns `b = start..start + len`: one GEMM
    /// against the cached matrix, or matrix-free tiles.
    fn columns_matmul(
        &self,
        start: usize,
        len: usize,
        v: MatRef<'_, f64>,
        out: MatMut<'_, f64>,
        accum: Accum,
        alpha: f64,
    ) {
        match &self.cache {
            Some(k) => matmul(out, accum, k.as_ref().as_ref().subcols(start, len), v, alpha, Par::rayon(0)),
            None => {
                let pts = self.points.view();
                let cols = pts.rows(start, len);
                kernel_matmul(self.kind, self.signal_variance(), pts, cols, v, out, accum, alpha)
            }
        }
    }

    /// Dense `K(X_b, X_b) + σ² I` for the block `b = start..start + len`.
    pub fn block_system_matrix(&self, start: usize, len: usize) -> Mat<f64> {
        let mut h = match &self.cache {
            Some(k) => k.as_ref().as_ref().submatrix(start, start, len, len).to_owned(),
            None => {
                let block = self.points.view().rows(start, len);
                kernel_matrix(self.kind, self.signal_variance(), block, block)
            }
        };
        let noise = self.noise_variance();
        for i in 0..len {
            h[(i, i)] += noise;
        }
        h
    }

    /// Dense `K(X, X)` (n × n). Only when asked: tests, Cholesky oracles, small n.
    pub fn kernel_matrix(&self) -> Mat<f64> {
        if let Some(k) = &self.cache {
            return k.as_ref().clone();
        }
        let pts = self.points.view();
        kernel_matrix(self.kind, self.signal_variance(), pts, pts)
    }

    /// Dense `H = K + σ² I`.
    pub fn system_matrix(&self) -> Mat<f64> {
        let mut h = self.kernel_matrix();
        let noise = self.noise_variance();
        for i in 0..h.nrows() {
            h[(i, i)] += noise;
        }
        h
    }

    /// Row `i` of K, i.e. `k(x_i, X)`, written into `out` (length n).
    pub fn kernel_row(&self, i: usize, out: &mut [f64]) {
        if let Some(k) = &self.cache {
            for (j, o) in out.iter_mut().enumerate() {
                *o = k[(i, j)];
            }
            return;
        }
        let pts = self.points.view();
        let mut row = Mat::<f64>::zeros(1, self.n());
        fill_kernel_block(self.kind, self.signal_variance(), pts.rows(i, 1), pts, row.as_mut());
        for (j, o) in out.iter_mut().enumerate() {
            *o = row[(0, j)];
        }
    }

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

/// Checks a matrix for NaN or infinity.
pub fn check_finite_mat(m: MatRef<'_, f64>, what: &str) -> Result<()> {
    for j in 0..m.ncols() {
        for i in 0..m.nrows() {
            if !m[(i, j)].is_finite() {
                return Err(GpError::NonFinite { what: format!("{what} (row {i}, column {j})") });
            }
        }
    }
    Ok(())
}

/// Checks a vector for NaN or infinity.
pub fn check_finite_slice(v: &[f64], what: &str) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(GpError::NonFinite { what: format!("{what} (entry {i})") }),
        None => Ok(()),
    }
}
