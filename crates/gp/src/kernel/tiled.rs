//! Scaled input points and tiled, matrix-free kernel-matrix products.

use faer::linalg::matmul::matmul;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::{kernel_values_in_place, KernelKind, MIN_SQUARED_DISTANCE, SEQUENTIAL_MAX_ENTRIES, TILE_ROWS};

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
pub(super) fn squared_distances(a: PointsRef<'_>, b: PointsRef<'_>, mut out: MatMut<'_, f64>) {
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
