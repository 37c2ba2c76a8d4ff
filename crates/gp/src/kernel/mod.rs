//! Stationary ARD kernels, matrix-free tiled kernel-matrix products, and the gradient of the
//! bilinear form `½ Σ_ij M_ij ∂H_ij/∂θ` on which every marginal-likelihood gradient rests.
//!
//! The kernel matrix is never formed unless asked for ([`KernelSystem::kernel_matrix`]). Products
//! `K V` are computed in row tiles of [`TILE_ROWS`] rows: one kernel block (tile × n) is evaluated
//! into a per-thread scratch buffer (squared distances by one GEMM, then the kernel function entry
//! by entry) and multiplied against the right-hand sides by a second GEMM. Row tiles run in
//! parallel on rayon; each GEMM is sequential so the two levels of parallelism do not fight.

//!
//! Layout: `kinds` (the kernel families and θ), `simd` (vectorised kernel-value passes),
//! `tiled` (scaled points and tiled matrix-free products), `system` (the kernel system
//! `H = K + σ² I`), `gradient` (the hyperparameter gradient of a bilinear form).

mod gradient;
mod kinds;
mod simd;
mod system;
mod tiled;

pub use gradient::HyperGradient;
pub use kinds::{Hyperparameters, KernelKind};
pub use simd::{kernel_values_and_weights, kernel_values_in_place};
pub use system::KernelSystem;
pub use tiled::{fill_kernel_block, kernel_matmul, kernel_matrix, PointsRef, ScaledPoints};

use faer::MatRef;

use crate::error::{GpError, Result};

/// Rows per tile of the matrix-free kernel products. 256 rows × n columns of f64 is 8 MB at
/// n = 4000, which stays in the last-level cache of one core's share.
pub const TILE_ROWS: usize = 256;

/// Kernel products with at most this many kernel entries run on the calling thread.
pub const SEQUENTIAL_MAX_ENTRIES: usize = 1 << 17;

/// Lower clip of the squared scaled distance, as in the reference code: it keeps `r` and the
/// Matérn-1/2 derivative weight finite for coincident points.
pub const MIN_SQUARED_DISTANCE: f64 = 1e-10;

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
