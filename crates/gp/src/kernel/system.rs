//! The kernel system `H_θ = K_θ(X, X) + σ² I` on fixed training inputs.

use faer::linalg::matmul::matmul;
use faer::reborrow::ReborrowMut;
use faer::{Accum, Mat, MatMut, MatRef, Par};

use super::{
    check_finite_mat, fill_kernel_block, kernel_matmul, kernel_matrix, Hyperparameters, KernelKind,
    PointsRef, ScaledPoints,
};
use crate::error::{GpError, Result};

/// The system `H_θ = K_θ(X, X) + σ² I` on fixed training inputs, applied matrix-free.
#[derive(Clone, Debug)]
pub struct KernelSystem {
    pub(super) kind: KernelKind,
    pub(super) hyper: Hyperparameters,
    pub(super) points: ScaledPoints,
    /// Dense `K(X, X)`, when [`KernelSystem::cache_kernel`] was called: every product then is one
    /// GEMM instead of a kernel evaluation plus a GEMM per tile.
    pub(super) cache: Option<std::sync::Arc<Mat<f64>>>,
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
}
