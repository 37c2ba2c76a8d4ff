//! Linear solvers for the batched systems `H V = B`, `B = [y | z_1 … z_s]`, all behind one
//! signature ([`Solver::solve`]): many right-hand sides, a warm start in, relative residuals of the
//! y column and of the probe columns out, and an epoch budget.
//!
//! Every right-hand-side column is divided by its norm (+1e-10) before solving (the warm start is
//! scaled the same way, and the solution scaled back), so all residuals and tolerances are relative
//! and mean the same for every solver. One *epoch* is one pass over the n² kernel entries: a CG
//! iteration costs 1 epoch, an AP or SGD iteration with a block of B rows costs B/n.

use faer::linalg::matmul::matmul;
use faer::linalg::solvers::{Llt, Solve};
use faer::{Accum, Mat, MatRef, Par, Side};
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{GpError, Result};
use crate::kernel::{check_finite_mat, KernelSystem};

/// Added to every column norm before normalising, as in the reference code (guards zero columns).
const NORM_EPS: f64 = 1e-10;

/// Stopping rule and budget shared by all solvers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SolveOptions {
    /// Stop when the relative residual of the y column is at most this …
    pub rtol_y: f64,
    /// … and the mean relative residual of the probe columns is at most this.
    pub rtol_z: f64,
    /// Epoch budget (early stopping when small); the reference default is 1000.
    pub max_epochs: f64,
}

impl Default for SolveOptions {
    fn default() -> Self {
        SolveOptions { rtol_y: 0.01, rtol_z: 0.01, max_epochs: 1000.0 }
    }
}

/// What a solve returns.
#[derive(Clone, Debug)]
pub struct SolveOutcome {
    /// The solution V (n × columns), in the units of the original right-hand sides.
    pub solution: Mat<f64>,
    /// Epochs spent (passes over the kernel matrix), including the residual pass of a warm start.
    pub epochs: f64,
    /// Solver iterations (CG steps, AP block updates, SGD mini-batch steps).
    pub iterations: usize,
    /// Relative residual ‖b_y − H v_y‖/‖b_y‖ of the y column at exit.
    pub residual_y: f64,
    /// Mean relative residual of the probe columns at exit (0 when there are none).
    pub residual_z: f64,
    /// Whether the tolerances were met (false: the epoch budget ran out).
    pub converged: bool,
}

/// The linear solvers. All solve `H V = B` through [`Solver::solve`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Solver {
    /// Dense Cholesky factorisation: the exact oracle (O(n³), forms H).
    Cholesky,
    /// Conjugate gradients on all columns at once, preconditioned by a pivoted Cholesky of K of
    /// the given rank (100 in the reference), applied with the Woodbury identity.
    ConjugateGradients {
        /// Rank of the pivoted-Cholesky preconditioner (0: no preconditioner).
        preconditioner_rank: usize,
    },
    /// Alternating projections (block Gauss–Seidel) with greedy block choice: the block with the
    /// largest residual norm summed over all columns is solved exactly each iteration.
    AlternatingProjections {
        /// Rows per block (500 in the reference); the last block takes the remainder.
        block_size: usize,
    },
    /// Stochastic gradient descent with heavy-ball momentum on the dual objective
    /// `½ vᵀHv − bᵀv`, with fresh mini-batches of rows each iteration.
    StochasticGradientDescent {
        /// Rows per mini-batch (500 in the reference).
        batch_size: usize,
        /// Step size on the normalised system (1.0 in the reference).
        learning_rate: f64,
        /// Heavy-ball momentum (0.9 in the reference).
        momentum: f64,
    },
}

impl Solver {
    /// CG with the reference's rank-100 pivoted-Cholesky preconditioner.
    pub fn cg() -> Self {
        Solver::ConjugateGradients { preconditioner_rank: 100 }
    }

    /// AP with the reference's block size 500.
    pub fn ap() -> Self {
        Solver::AlternatingProjections { block_size: 500 }
    }

    /// SGD with the reference's batch 500, learning rate 1 and momentum 0.9.
    pub fn sgd() -> Self {
        Solver::StochasticGradientDescent { batch_size: 500, learning_rate: 1.0, momentum: 0.9 }
    }

    /// Parses `cg`, `ap`, `sgd` or `cholesky` into the reference configuration.
    pub fn from_name(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "cg" => Ok(Solver::cg()),
            "ap" => Ok(Solver::ap()),
            "sgd" => Ok(Solver::sgd()),
            "cholesky" | "chol" => Ok(Solver::Cholesky),
            other => Err(GpError::InvalidArgument(format!(
                "unknown solver '{other}' (known: cg, ap, sgd, cholesky)"
            ))),
        }
    }

    /// Short name: `cg`, `ap`, `sgd` or `cholesky`.
    pub fn name(&self) -> &'static str {
        match self {
            Solver::Cholesky => "cholesky",
            Solver::ConjugateGradients { .. } => "cg",
            Solver::AlternatingProjections { .. } => "ap",
            Solver::StochasticGradientDescent { .. } => "sgd",
        }
    }

    /// Solves `H V = targets` (n × columns; column 0 is y, the rest probes), starting from
    /// `initial` (the warm start; `None` means zero), within `options`. `rng` drives SGD's
    /// mini-batches and is untouched by the other solvers.
    pub fn solve<R: Rng>(
        &self,
        system: &KernelSystem,
        targets: MatRef<'_, f64>,
        initial: Option<MatRef<'_, f64>>,
        options: &SolveOptions,
        rng: &mut R,
    ) -> Result<SolveOutcome> {
        let n = system.n();
        if targets.nrows() != n {
            return Err(GpError::DimensionMismatch {
                what: "right-hand sides vs training points".into(),
                expected: n,
                found: targets.nrows(),
            });
        }
        if targets.ncols() == 0 {
            return Err(GpError::InvalidArgument("no right-hand sides to solve".into()));
        }
        check_finite_mat(targets, "right-hand sides")?;
        if let Some(v0) = initial {
            if v0.nrows() != n || v0.ncols() != targets.ncols() {
                return Err(GpError::DimensionMismatch {
                    what: "warm start vs right-hand sides (rows, then columns)".into(),
                    expected: if v0.nrows() != n { n } else { targets.ncols() },
                    found: if v0.nrows() != n { v0.nrows() } else { v0.ncols() },
                });
            }
            check_finite_mat(v0, "warm start")?;
        }
        if options.max_epochs.is_nan() || options.max_epochs < 0.0 {
            return Err(GpError::InvalidArgument(format!(
                "epoch budget must be non-negative, got {}",
                options.max_epochs
            )));
        }
        let scales: Vec<f64> = (0..targets.ncols()).map(|j| column_norm(targets, j) + NORM_EPS).collect();
        let b = Mat::from_fn(n, targets.ncols(), |i, j| targets[(i, j)] / scales[j]);
        let v0 = initial.map(|v0| Mat::from_fn(n, targets.ncols(), |i, j| v0[(i, j)] / scales[j]));
        let mut outcome = match self {
            Solver::Cholesky => solve_cholesky(system, b.as_ref(), options),
            Solver::ConjugateGradients { preconditioner_rank } => {
                solve_cg(system, b.as_ref(), v0, options, *preconditioner_rank)
            }
            Solver::AlternatingProjections { block_size } => {
                solve_ap(system, b.as_ref(), v0, options, *block_size)
            }
            Solver::StochasticGradientDescent { batch_size, learning_rate, momentum } => {
                solve_sgd(system, b.as_ref(), v0, options, *batch_size, *learning_rate, *momentum, rng)
            }
        }?;
        for (j, scale) in scales.iter().enumerate() {
            for i in 0..n {
                outcome.solution[(i, j)] *= scale;
            }
        }
        Ok(outcome)
    }
}

/// Euclidean norm of column `j`.
fn column_norm(m: MatRef<'_, f64>, j: usize) -> f64 {
    (0..m.nrows()).map(|i| m[(i, j)].powi(2)).sum::<f64>().sqrt()
}

/// Per-column dot products `aᵀ_j b_j`.
fn column_dots(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Vec<f64> {
    (0..a.ncols()).map(|j| (0..a.nrows()).map(|i| a[(i, j)] * b[(i, j)]).sum()).collect()
}

/// (relative residual of column 0, mean relative residual of the other columns) of a residual on
/// the normalised system.
fn residual_summary(r: MatRef<'_, f64>) -> (f64, f64) {
    let norms: Vec<f64> = (0..r.ncols()).map(|j| column_norm(r, j)).collect();
    let probes = &norms[1..];
    let mean_z = if probes.is_empty() { 0.0 } else { probes.iter().sum::<f64>() / probes.len() as f64 };
    (norms[0], mean_z)
}

impl SolveOutcome {
    /// The outcome of a solve that ended at `solution` with residual summary `(r_y, r_z)`.
    fn finished(
        solution: Mat<f64>,
        epochs: f64,
        iterations: usize,
        summary: (f64, f64),
        options: &SolveOptions,
    ) -> Self {
        Self {
            solution,
            epochs,
            iterations,
            residual_y: summary.0,
            residual_z: summary.1,
            converged: tolerances_met(summary, options),
        }
    }
}

fn tolerances_met(summary: (f64, f64), options: &SolveOptions) -> bool {
    summary.0 <= options.rtol_y && summary.1 <= options.rtol_z
}

/// `b − H v` (one epoch).
fn residual(system: &KernelSystem, b: MatRef<'_, f64>, v: MatRef<'_, f64>) -> Mat<f64> {
    let mut hv = Mat::<f64>::zeros(b.nrows(), b.ncols());
    system.apply(v, hv.as_mut());
    Mat::from_fn(b.nrows(), b.ncols(), |i, j| b[(i, j)] - hv[(i, j)])
}

/// Start point and residual of CG and AP: zero (residual b, no cost), or the warm start `v0`
/// (one epoch for its residual). A warm-started column whose residual is larger than `b` itself
/// starts at zero instead: under a small epoch budget and a badly conditioned system (σ → 0) an
/// unfinished solution can be worse than nothing after θ moves, and carrying it over lets the
/// error grow from step to step.
fn start_point(system: &KernelSystem, b: MatRef<'_, f64>, v0: Option<Mat<f64>>) -> (Mat<f64>, Mat<f64>, f64) {
    let Some(mut v) = v0 else {
        return (Mat::<f64>::zeros(b.nrows(), b.ncols()), b.to_owned(), 0.0);
    };
    let mut r = residual(system, b, v.as_ref());
    for j in 0..b.ncols() {
        if r.col(j).norm_l2() > b.col(j).norm_l2() {
            v.col_mut(j).fill(0.0);
            r.col_mut(j).copy_from(b.col(j));
        }
    }
    (v, r, 1.0)
}

/// Cholesky factor of `matrix`, retrying with diagonal jitter `10^k · mean(diag)` for
/// k = −10 … log10(`max_relative_jitter`) when the plain factorisation fails.
pub fn cholesky_with_jitter(matrix: &Mat<f64>, what: &str, max_relative_jitter: f64) -> Result<Llt<f64>> {
    let n = matrix.nrows();
    check_finite_mat(matrix.as_ref(), what)?;
    if let Ok(llt) = matrix.llt(Side::Lower) {
        return Ok(llt);
    }
    let mean_diag = (0..n).map(|i| matrix[(i, i)].abs()).sum::<f64>() / n.max(1) as f64;
    let mut relative = 1e-10;
    let mut jitter = 0.0;
    while relative <= max_relative_jitter * (1.0 + 1e-12) {
        jitter = relative * mean_diag.max(f64::MIN_POSITIVE);
        let mut jittered = matrix.clone();
        for i in 0..n {
            jittered[(i, i)] += jitter;
        }
        if let Ok(llt) = jittered.llt(Side::Lower) {
            return Ok(llt);
        }
        relative *= 10.0;
    }
    Err(GpError::NotPositiveDefinite { what: what.to_string(), jitter })
}

/// Largest relative jitter the solvers and exact baselines may add before giving up.
pub const MAX_RELATIVE_JITTER: f64 = 1e-6;

fn solve_cholesky(system: &KernelSystem, b: MatRef<'_, f64>, options: &SolveOptions) -> Result<SolveOutcome> {
    let llt = cholesky_with_jitter(&system.system_matrix(), "K + σ²I", MAX_RELATIVE_JITTER)?;
    let mut solution = b.to_owned();
    llt.solve_in_place(solution.as_mut());
    let summary = residual_summary(residual(system, b, solution.as_ref()).as_ref());
    Ok(SolveOutcome::finished(solution, 0.0, 0, summary, options))
}

/// Thin preconditioner GEMMs (n × rank × columns) only pay for threads when n is large.
fn gemm_par(n: usize) -> Par {
    if n >= 4096 {
        Par::rayon(0)
    } else {
        Par::Seq
    }
}

/// `(L Lᵀ + σ² I)⁻¹` by Woodbury, where `L` (n × rank) is a pivoted Cholesky factor of K.
struct PivotedCholeskyPreconditioner {
    factor: Mat<f64>,
    inner: Option<Llt<f64>>,
    noise_variance: f64,
}

impl PivotedCholeskyPreconditioner {
    /// Greedy pivoted Cholesky of K: each step takes the point with the largest remaining diagonal
    /// (over the not-yet-chosen points, i.e. the corrected pivot rule), computes one kernel row.
    fn new(system: &KernelSystem, rank: usize) -> Result<Self> {
        let n = system.n();
        let rank = rank.min(n);
        let signal_variance = system.signal_variance();
        let mut diag = vec![signal_variance; n];
        let mut chosen = vec![false; n];
        let mut factor = Mat::<f64>::zeros(n, rank);
        let mut row = vec![0.0; n];
        let mut used = 0;
        for m in 0..rank {
            let (pivot, &largest) = diag
                .iter()
                .enumerate()
                .filter(|(i, _)| !chosen[*i])
                .max_by(|a, b| a.1.total_cmp(b.1))
                .expect("rank ≤ n leaves a candidate");
            if largest <= 1e-10 * signal_variance {
                break;
            }
            chosen[pivot] = true;
            system.kernel_row(pivot, &mut row);
            for p in 0..m {
                let coeff = factor[(pivot, p)];
                let col = factor.col_as_slice(p);
                for (r, &l) in row.iter_mut().zip(col) {
                    *r -= coeff * l;
                }
            }
            let pivot_sqrt = largest.sqrt();
            let col = factor.col_as_slice_mut(m);
            for j in 0..n {
                let l = if chosen[j] && j != pivot { 0.0 } else { row[j] / pivot_sqrt };
                col[j] = l;
                diag[j] = if chosen[j] { 0.0 } else { (diag[j] - l * l).max(0.0) };
            }
            used = m + 1;
        }
        let factor = factor.subcols(0, used).to_owned();
        let noise_variance = system.noise_variance();
        let inner = if used > 0 {
            let mut inner = Mat::<f64>::zeros(used, used);
            matmul(inner.as_mut(), Accum::Replace, factor.transpose(), factor.as_ref(), 1.0, Par::rayon(0));
            for i in 0..used {
                inner[(i, i)] += noise_variance;
            }
            Some(cholesky_with_jitter(&inner, "preconditioner core σ²I + LᵀL", MAX_RELATIVE_JITTER)?)
        } else {
            None
        };
        Ok(PivotedCholeskyPreconditioner { factor, inner, noise_variance })
    }

    /// `P⁻¹ r = σ⁻² (r − L (σ² I + LᵀL)⁻¹ Lᵀ r)`.
    fn apply(&self, r: MatRef<'_, f64>) -> Mat<f64> {
        let mut out = r.to_owned();
        if let Some(inner) = &self.inner {
            let mut small = Mat::<f64>::zeros(self.factor.ncols(), r.ncols());
            matmul(small.as_mut(), Accum::Replace, self.factor.transpose(), r, 1.0, gemm_par(r.nrows()));
            inner.solve_in_place(small.as_mut());
            matmul(out.as_mut(), Accum::Add, self.factor.as_ref(), small.as_ref(), -1.0, gemm_par(r.nrows()));
        }
        let inv = 1.0 / self.noise_variance;
        for j in 0..out.ncols() {
            for i in 0..out.nrows() {
                out[(i, j)] *= inv;
            }
        }
        out
    }
}

fn solve_cg(
    system: &KernelSystem,
    b: MatRef<'_, f64>,
    v0: Option<Mat<f64>>,
    options: &SolveOptions,
    preconditioner_rank: usize,
) -> Result<SolveOutcome> {
    let (n, k) = (b.nrows(), b.ncols());
    let preconditioner = if preconditioner_rank > 0 {
        Some(PivotedCholeskyPreconditioner::new(system, preconditioner_rank)?)
    } else {
        None
    };
    let precondition = |r: MatRef<'_, f64>| match &preconditioner {
        Some(p) => p.apply(r),
        None => r.to_owned(),
    };
    let (mut v, mut r, mut epochs) = start_point(system, b, v0);
    let mut z = precondition(r.as_ref());
    let mut p = z.clone();
    let mut rz = column_dots(r.as_ref(), z.as_ref());
    let mut hp = Mat::<f64>::zeros(n, k);
    let mut iterations = 0;
    let mut summary = residual_summary(r.as_ref());
    while !tolerances_met(summary, options) && epochs + 1.0 <= options.max_epochs + 1e-9 {
        system.apply(p.as_ref(), hp.as_mut());
        epochs += 1.0;
        iterations += 1;
        let php = column_dots(p.as_ref(), hp.as_ref());
        // Per-column step; a column whose search direction has vanished (already solved) stays put.
        let step: Vec<f64> =
            rz.iter().zip(&php).map(|(&a, &b)| if b > 0.0 && a.is_finite() { a / b } else { 0.0 }).collect();
        for j in 0..k {
            for i in 0..n {
                v[(i, j)] += step[j] * p[(i, j)];
                r[(i, j)] -= step[j] * hp[(i, j)];
            }
        }
        z = precondition(r.as_ref());
        let rz_new = column_dots(r.as_ref(), z.as_ref());
        for j in 0..k {
            let beta = if rz[j] > 0.0 { rz_new[j] / rz[j] } else { 0.0 };
            for i in 0..n {
                p[(i, j)] = z[(i, j)] + beta * p[(i, j)];
            }
        }
        rz = rz_new;
        summary = residual_summary(r.as_ref());
    }
    Ok(SolveOutcome::finished(v, epochs, iterations, summary, options))
}

/// Contiguous blocks `(start, len)`: ⌊n/B⌋ blocks of B rows, the last one taking the remainder.
fn blocks(n: usize, block_size: usize) -> Vec<(usize, usize)> {
    let count = (n / block_size).max(1);
    (0..count)
        .map(|b| {
            let start = b * block_size;
            let len = if b + 1 == count { n - start } else { block_size };
            (start, len)
        })
        .collect()
}

fn solve_ap(
    system: &KernelSystem,
    b: MatRef<'_, f64>,
    v0: Option<Mat<f64>>,
    options: &SolveOptions,
    block_size: usize,
) -> Result<SolveOutcome> {
    if block_size == 0 {
        return Err(GpError::InvalidArgument("AP block size must be positive".into()));
    }
    let (n, k) = (b.nrows(), b.ncols());
    let blocks = blocks(n, block_size);
    let noise = system.noise_variance();
    // Factor every diagonal block H_bb once per solve (rebuilt each outer step, as θ changes).
    let factors: Vec<Llt<f64>> = blocks
        .par_iter()
        .map(|&(start, len)| {
            let h_bb = system.block_system_matrix(start, len);
            cholesky_with_jitter(&h_bb, "AP diagonal block of K + σ²I", MAX_RELATIVE_JITTER)
        })
        .collect::<Result<_>>()?;
    let (mut v, mut r, mut epochs) = start_point(system, b, v0);
    let mut iterations = 0;
    let mut summary = residual_summary(r.as_ref());
    loop {
        if tolerances_met(summary, options) {
            break;
        }
        // Greedy (Gauss–Southwell) choice on the residual of all columns together.
        let (best, _) = blocks
            .iter()
            .enumerate()
            .map(|(bi, &(start, len))| {
                let score: f64 =
                    (0..k).map(|j| (start..start + len).map(|i| r[(i, j)].powi(2)).sum::<f64>()).sum();
                (bi, score)
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("at least one block");
        let (start, len) = blocks[best];
        let cost = len as f64 / n as f64;
        if epochs + cost > options.max_epochs + 1e-9 {
            break;
        }
        let mut delta = r.as_ref().subrows(start, len).to_owned();
        factors[best].solve_in_place(delta.as_mut());
        for j in 0..k {
            for i in 0..len {
                v[(start + i, j)] += delta[(i, j)];
                r[(start + i, j)] -= noise * delta[(i, j)];
            }
        }
        // r −= K(X, X_b) Δ: one n × B kernel block.
        system.block_columns_matmul_add(start, len, delta.as_ref(), r.as_mut(), -1.0);
        epochs += cost;
        iterations += 1;
        summary = residual_summary(r.as_ref());
    }
    Ok(SolveOutcome::finished(v, epochs, iterations, summary, options))
}

#[allow(clippy::too_many_arguments)]
fn solve_sgd<R: Rng>(
    system: &KernelSystem,
    b: MatRef<'_, f64>,
    v0: Option<Mat<f64>>,
    options: &SolveOptions,
    batch_size: usize,
    learning_rate: f64,
    momentum: f64,
    rng: &mut R,
) -> Result<SolveOutcome> {
    if batch_size == 0 {
        return Err(GpError::InvalidArgument("SGD batch size must be positive".into()));
    }
    let (n, k) = (b.nrows(), b.ncols());
    let batch = batch_size.min(n);
    let cost = batch as f64 / n as f64;
    let noise = system.noise_variance();
    let mut v = v0.unwrap_or_else(|| Mat::zeros(n, k));
    let mut velocity = Mat::<f64>::zeros(n, k);
    // Running residual estimate: rows are refreshed only when sampled. It starts at b even when
    // warm starting (as in the reference), which makes the stopping test conservative.
    let mut residual_estimate = b.to_owned();
    let mut gradient = Mat::<f64>::zeros(batch, k);
    let mut epochs = 0.0;
    let mut iterations = 0;
    let mut converged = false;
    loop {
        if tolerances_met(residual_summary(residual_estimate.as_ref()), options) {
            converged = true;
            break;
        }
        // The final exact residual costs one more epoch; keep it inside the budget.
        if epochs + cost + 1.0 > options.max_epochs.max(1.0) + 1e-9 {
            break;
        }
        let rows = rand::seq::index::sample(rng, n, batch).into_vec();
        system.rows_matmul(&rows, v.as_ref(), gradient.as_mut());
        for j in 0..k {
            for (t, &i) in rows.iter().enumerate() {
                let g = gradient[(t, j)] + noise * v[(i, j)] - b[(i, j)];
                gradient[(t, j)] = g;
                residual_estimate[(i, j)] = -g;
            }
        }
        let step = learning_rate / batch as f64;
        for j in 0..k {
            for i in 0..n {
                velocity[(i, j)] *= momentum;
            }
            for (t, &i) in rows.iter().enumerate() {
                velocity[(i, j)] -= step * gradient[(t, j)];
            }
            for i in 0..n {
                v[(i, j)] += velocity[(i, j)];
            }
        }
        epochs += cost;
        iterations += 1;
    }
    // Report the exact residual, not the stale running estimate (one more epoch, counted).
    let summary = residual_summary(residual(system, b, v.as_ref()).as_ref());
    epochs += 1.0;
    let mut outcome = SolveOutcome::finished(v, epochs, iterations, summary, options);
    outcome.converged &= converged;
    Ok(outcome)
}
