//! Marginal-likelihood gradient estimators and their warm-start state.
//!
//! Both stochastic estimators solve one batch `H [α | U] = [y | Z]` per outer step and estimate
//! `tr(H⁻¹ ∂H) ≈ (1/s) Σ_j u_jᵀ ∂H r_j`. They differ **only** in the right-hand factor `r_j`:
//! - standard (Hutchinson): `z_j ~ N(0, I)`, `r_j = z_j`;
//! - pathwise: `z_j = f_j(X) + σ e_j ~ N(0, H)` with RFF prior samples `f_j`, `r_j = u_j`.
//!
//! [`EstimatorState`] is the state the outer loop carries between steps: the frozen probe
//! randomness and the previous solution, which together make a warm start.

use std::fmt;
use std::str::FromStr;

use faer::linalg::matmul::matmul;
use faer::linalg::solvers::Solve;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::error::{GpError, Result};
use crate::features::RandomFeatures;
use crate::kernel::{HyperGradient, KernelSystem};
use crate::solvers::{cholesky_with_jitter, MAX_RELATIVE_JITTER};

/// Which gradient the outer loop follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EstimatorKind {
    /// Exact gradient by dense Cholesky (the oracle baseline; O(n³) per step).
    Exact,
    /// Hutchinson trace estimator with Gaussian probes.
    Standard,
    /// Pathwise estimator: probes are RFF prior samples plus noise.
    Pathwise,
}

impl FromStr for EstimatorKind {
    type Err = GpError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "exact" | "cholesky" => Ok(EstimatorKind::Exact),
            "standard" | "hutchinson" => Ok(EstimatorKind::Standard),
            "pathwise" => Ok(EstimatorKind::Pathwise),
            other => Err(GpError::InvalidArgument(format!(
                "unknown estimator '{other}' (known: standard, pathwise, exact)"
            ))),
        }
    }
}

impl fmt::Display for EstimatorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EstimatorKind::Exact => "exact",
            EstimatorKind::Standard => "standard",
            EstimatorKind::Pathwise => "pathwise",
        })
    }
}

/// The random draws behind the probe vectors of one outer step (or of the whole run, when frozen).
#[derive(Clone, Debug)]
pub enum ProbeDraws {
    /// Standard estimator: Gaussian probes Z (n × s).
    Gaussian {
        /// The probes themselves.
        probes: Mat<f64>,
    },
    /// Pathwise estimator: RFF frequencies and weights, and unit noise e (n × s); the probes
    /// `f_j(X) + σ e_j` are rebuilt from them at the current θ.
    Pathwise {
        /// Prior-sample randomness.
        features: RandomFeatures,
        /// Standard-normal noise draws, scaled by σ at use.
        unit_noise: Mat<f64>,
    },
}

/// Estimator state carried by the outer loop from step to step.
#[derive(Clone, Debug)]
pub struct EstimatorState {
    /// Standard or pathwise (exact needs no state).
    pub kind: EstimatorKind,
    /// Number of probe vectors s.
    pub num_probes: usize,
    /// Number of random Fourier features m (pathwise only).
    pub num_features: usize,
    /// Warm start: freeze the probe randomness for the run and start each solve at the previous
    /// solution. Without it probes are redrawn every step and solves start at zero.
    pub warm_start: bool,
    /// The current probe randomness.
    pub draws: Option<ProbeDraws>,
    /// The solution of the previous outer step (n × (s+1)).
    pub previous_solution: Option<Mat<f64>>,
}

impl EstimatorState {
    /// Fresh state; nothing is drawn until [`EstimatorState::begin_step`].
    pub fn new(
        kind: EstimatorKind,
        num_probes: usize,
        num_features: usize,
        warm_start: bool,
    ) -> Result<Self> {
        if kind != EstimatorKind::Exact && num_probes == 0 {
            return Err(GpError::InvalidArgument("number of probe vectors must be positive".into()));
        }
        Ok(EstimatorState {
            kind,
            num_probes,
            num_features,
            warm_start,
            draws: None,
            previous_solution: None,
        })
    }

    /// Draws the probe randomness for this step: once per run with warm start (frozen), every step
    /// without.
    pub fn begin_step<R: Rng>(&mut self, system: &KernelSystem, rng: &mut R) -> Result<()> {
        if self.warm_start && self.draws.is_some() {
            return Ok(());
        }
        let n = system.n();
        let s = self.num_probes;
        self.draws = match self.kind {
            EstimatorKind::Exact => None,
            EstimatorKind::Standard => {
                Some(ProbeDraws::Gaussian { probes: Mat::from_fn(n, s, |_, _| StandardNormal.sample(rng)) })
            }
            EstimatorKind::Pathwise => {
                let features = RandomFeatures::draw(system.kind(), system.dim(), self.num_features, s, rng)?;
                let unit_noise = Mat::from_fn(n, s, |_, _| StandardNormal.sample(rng));
                Some(ProbeDraws::Pathwise { features, unit_noise })
            }
        };
        Ok(())
    }

    /// The batched right-hand sides `[y | z_1 … z_s]` at the current θ.
    pub fn right_hand_sides(&self, system: &KernelSystem, y: &[f64]) -> Result<Mat<f64>> {
        let n = system.n();
        system.check_targets(y)?;
        let draws = self.draws.as_ref().ok_or_else(|| {
            GpError::InvalidArgument("probe randomness not drawn (call begin_step first)".into())
        })?;
        let s = self.num_probes;
        let mut rhs = Mat::<f64>::zeros(n, s + 1);
        for (i, &yi) in y.iter().enumerate() {
            rhs[(i, 0)] = yi;
        }
        match draws {
            ProbeDraws::Gaussian { probes } => rhs.as_mut().subcols_mut(1, s).copy_from(probes),
            ProbeDraws::Pathwise { features, unit_noise } => {
                let prior = features.sample_functions(system.points().view(), system.hyper().signal_scale);
                let sigma = system.hyper().noise_scale;
                for j in 0..s {
                    for i in 0..n {
                        rhs[(i, j + 1)] = prior[(i, j)] + sigma * unit_noise[(i, j)];
                    }
                }
            }
        }
        Ok(rhs)
    }

    /// The warm start for this step's solve: the previous solution, or `None` (zero) when cold.
    pub fn initial_guess(&self) -> Option<MatRef<'_, f64>> {
        if self.warm_start {
            self.previous_solution.as_ref().map(|v| v.as_ref())
        } else {
            None
        }
    }

    /// The gradient estimate from this step's solution `[α | U]` and right-hand sides `[y | Z]`:
    /// the right-hand trace factor is Z (standard) or U (pathwise) — the only difference.
    pub fn gradient(
        &self,
        system: &KernelSystem,
        solution: MatRef<'_, f64>,
        rhs: MatRef<'_, f64>,
    ) -> HyperGradient {
        let s = self.num_probes;
        let right = match self.kind {
            EstimatorKind::Pathwise => solution.subcols(1, s),
            _ => rhs.subcols(1, s),
        };
        estimate_gradient(system, solution, right)
    }
}

/// Stochastic marginal-likelihood gradient `½ αᵀ∂Hα − ½ (1/s) Σ_j u_jᵀ ∂H r_j` from the solution
/// `[α | U]` (n × (s+1)) and the right-hand trace factor R (n × s).
///
/// Each row tile of `M = ααᵀ − (1/s) U Rᵀ` is formed by one GEMM `[α | −U/s]_tile · [α | R]ᵀ`.
pub fn estimate_gradient(
    system: &KernelSystem,
    solution: MatRef<'_, f64>,
    right: MatRef<'_, f64>,
) -> HyperGradient {
    let n = solution.nrows();
    let s = right.ncols();
    let inv_s = 1.0 / s as f64;
    let left =
        Mat::from_fn(n, s + 1, |i, j| if j == 0 { solution[(i, 0)] } else { -inv_s * solution[(i, j)] });
    let right_full = Mat::from_fn(n, s + 1, |i, j| if j == 0 { solution[(i, 0)] } else { right[(i, j - 1)] });
    system.bilinear_gradient(|start, tile: MatMut<'_, f64>| {
        let rows = tile.nrows();
        matmul(
            tile,
            Accum::Replace,
            left.as_ref().subrows(start, rows),
            right_full.transpose(),
            1.0,
            Par::Seq,
        );
    })
}

/// Exact log marginal likelihood and its gradient by dense Cholesky (forms H and H⁻¹: O(n²)
/// memory, O(n³) time). `y` must have one entry per training point.
pub fn exact_gradient(system: &KernelSystem, y: &[f64]) -> Result<(f64, HyperGradient)> {
    let n = system.n();
    system.check_targets(y)?;
    let llt = cholesky_with_jitter(&system.system_matrix(), "K + σ²I", MAX_RELATIVE_JITTER)?;
    let mut alpha = Mat::from_fn(n, 1, |i, _| y[i]);
    llt.solve_in_place(alpha.as_mut());
    let log_det: f64 = 2.0 * (0..n).map(|i| llt.L()[(i, i)].ln()).sum::<f64>();
    let fit: f64 = (0..n).map(|i| y[i] * alpha[(i, 0)]).sum();
    let mll = -0.5 * fit - 0.5 * log_det - 0.5 * n as f64 * (2.0 * std::f64::consts::PI).ln();
    // M = ααᵀ − H⁻¹, formed densely.
    let mut weights = Mat::<f64>::identity(n, n);
    llt.solve_in_place(weights.as_mut());
    for j in 0..n {
        for i in 0..n {
            weights[(i, j)] = alpha[(i, 0)] * alpha[(j, 0)] - weights[(i, j)];
        }
    }
    let gradient = system.bilinear_gradient(|start, mut tile: MatMut<'_, f64>| {
        tile.copy_from(weights.as_ref().subrows(start, tile.nrows()));
    });
    Ok((mll, gradient))
}
