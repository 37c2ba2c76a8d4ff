//! The outer loop: Adam ascent of the marginal likelihood on softplus-parametrised
//! hyperparameters θ = softplus(u), as in the reference defaults (lr 0.1, β = (0.9, 0.999),
//! ε = 1e-8, θ initialised at 1, 64 probes, 2000 random features, seed 12345).
//!
//! Warm start is state carried here from step to step ([`EstimatorState`]); the solver is told
//! nothing about it beyond its `initial` argument.

use std::time::Instant;

use faer::{Mat, MatRef};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{DataFingerprint, TrainCheckpoint};
use crate::error::{GpError, Result};
use crate::estimator::{exact_gradient, EstimatorKind, EstimatorState, ProbeDraws};
use crate::features::RandomFeatures;
use crate::kernel::{check_finite_slice, Hyperparameters, KernelKind, KernelSystem};
use crate::rng::{stream, GpStream};
use crate::solvers::{SolveOptions, Solver};

/// Everything that defines a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Kernel family (Matérn-3/2 by default).
    pub kernel: KernelKind,
    /// Linear solver (ignored by the exact estimator).
    pub solver: Solver,
    /// Gradient estimator.
    pub estimator: EstimatorKind,
    /// Freeze probe randomness and start each solve from the previous solution.
    pub warm_start: bool,
    /// Probe vectors s.
    pub num_probes: usize,
    /// Random Fourier features m (pathwise).
    pub num_features: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Number of Adam steps.
    pub steps: usize,
    /// Solver tolerances and epoch budget.
    pub solve_options: SolveOptions,
    /// Seed of every random draw of the run.
    pub seed: u64,
    /// Lower clip on the noise scale σ after each step (0: off, the reference default).
    pub min_noise_scale: f64,
    /// Form the dense kernel matrix once per outer step, so that solver epochs of CG are GEMMs
    /// (memory 8 n² bytes; off by default: the products are matrix-free).
    #[serde(default)]
    pub cache_kernel: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            kernel: KernelKind::Matern32,
            solver: Solver::cg(),
            estimator: EstimatorKind::Pathwise,
            warm_start: false,
            num_probes: 64,
            num_features: 2000,
            learning_rate: 0.1,
            steps: 100,
            solve_options: SolveOptions::default(),
            seed: 12345,
            min_noise_scale: 0.0,
            cache_kernel: false,
        }
    }
}

/// One outer step, as logged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Zero-based step index.
    pub step: usize,
    /// Hyperparameters at which this step's gradient was taken.
    pub hyper: Hyperparameters,
    /// Solver epochs spent in this step.
    pub solver_epochs: f64,
    /// Solver iterations in this step.
    pub solver_iterations: usize,
    /// Relative residual of the y system at solver exit.
    pub residual_y: f64,
    /// Mean relative residual of the probe systems at solver exit.
    pub residual_z: f64,
    /// Whether the solver met its tolerances.
    pub converged: bool,
    /// Exact log marginal likelihood (exact estimator only, where it comes for free).
    pub exact_mll: Option<f64>,
    /// Seconds spent in the solver.
    pub solver_seconds: f64,
    /// Seconds for the whole update step (probes, solve, gradient, Adam).
    pub step_seconds: f64,
}

/// The last solve of a run, kept for "free" pathwise predictions.
#[derive(Clone, Debug)]
pub struct LastSolve {
    /// θ of the solve.
    pub hyper: Hyperparameters,
    /// `[α | U]`.
    pub solution: Mat<f64>,
    /// The RFF randomness of its probes (pathwise only).
    pub features: Option<RandomFeatures>,
}

/// Result of [`train`].
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    /// Per-step log.
    pub records: Vec<StepRecord>,
    /// Hyperparameters after the last Adam step.
    pub final_hyper: Hyperparameters,
    /// Sum of solver epochs over all steps.
    pub total_epochs: f64,
    /// Sum of update-step times (excludes evaluation), seconds.
    pub train_seconds: f64,
    /// Sum of solver times, seconds.
    pub solver_seconds: f64,
    /// The last solve (absent for the exact estimator).
    pub last_solve: Option<LastSolve>,
}

/// `log(1 + e^u)`, stable for large |u|.
pub fn softplus(u: f64) -> f64 {
    if u > 30.0 {
        u
    } else {
        u.exp().ln_1p()
    }
}

/// Inverse of [`softplus`]: `log(e^θ − 1)`.
pub fn softplus_inverse(theta: f64) -> f64 {
    if theta > 30.0 {
        theta
    } else {
        theta.exp_m1().ln()
    }
}

/// `dθ/du` of the softplus map.
fn sigmoid(u: f64) -> f64 {
    1.0 / (1.0 + (-u).exp())
}

/// Adam (Kingma & Ba) in ascent form, matching optax defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Adam {
    pub(crate) learning_rate: f64,
    pub(crate) first_moment: Vec<f64>,
    pub(crate) second_moment: Vec<f64>,
    pub(crate) step: i32,
}

impl Adam {
    const BETA1: f64 = 0.9;
    const BETA2: f64 = 0.999;
    const EPS: f64 = 1e-8;

    /// Adam for `dim` parameters.
    pub fn new(dim: usize, learning_rate: f64) -> Self {
        Adam { learning_rate, first_moment: vec![0.0; dim], second_moment: vec![0.0; dim], step: 0 }
    }

    /// One ascent step: `params += lr · m̂ / (√v̂ + ε)`.
    pub fn ascend(&mut self, params: &mut [f64], gradient: &[f64]) {
        self.step += 1;
        let c1 = 1.0 - Self::BETA1.powi(self.step);
        let c2 = 1.0 - Self::BETA2.powi(self.step);
        for (((p, &g), m), v) in
            params.iter_mut().zip(gradient).zip(&mut self.first_moment).zip(&mut self.second_moment)
        {
            *m = Self::BETA1 * *m + (1.0 - Self::BETA1) * g;
            *v = Self::BETA2 * *v + (1.0 - Self::BETA2) * g * g;
            *p += self.learning_rate * (*m / c1) / ((*v / c2).sqrt() + Self::EPS);
        }
    }
}

/// Checks training data: finite, consistent sizes, non-empty.
pub fn validate_training_data(x: MatRef<'_, f64>, y: &[f64]) -> Result<()> {
    if x.nrows() == 0 || x.ncols() == 0 {
        return Err(GpError::InvalidArgument(format!(
            "training inputs must be non-empty, got {} × {}",
            x.nrows(),
            x.ncols()
        )));
    }
    if y.len() != x.nrows() {
        return Err(GpError::DimensionMismatch {
            what: "training targets vs training inputs".into(),
            expected: x.nrows(),
            found: y.len(),
        });
    }
    crate::kernel::check_finite_mat(x, "training inputs")?;
    check_finite_slice(y, "training targets")
}

/// Runs `config.steps` Adam steps from θ = 1 on training data `(x, y)`, calling `on_step` after
/// each step. The same as driving a [`Trainer`] to the end.
pub fn train(
    x: MatRef<'_, f64>,
    y: &[f64],
    config: &TrainConfig,
    mut on_step: impl FnMut(&StepRecord),
) -> Result<TrainOutcome> {
    let mut trainer = Trainer::new(x, y, config.clone())?;
    while !trainer.is_done() {
        on_step(trainer.step()?);
    }
    trainer.finish()
}

/// A training run in progress: θ (in softplus space), Adam's moments, the estimator's carried
/// state (frozen probes and the previous solution, for warm starts) and both random streams.
/// [`Trainer::checkpoint`] captures all of it, so a run resumed with [`Trainer::resume`] takes
/// exactly the steps the uninterrupted run would have taken.
pub struct Trainer<'a> {
    x: MatRef<'a, f64>,
    y: &'a [f64],
    config: TrainConfig,
    params: Vec<f64>,
    adam: Adam,
    state: EstimatorState,
    probe_rng: ChaCha8Rng,
    solver_rng: ChaCha8Rng,
    records: Vec<StepRecord>,
}

impl<'a> Trainer<'a> {
    /// A fresh run at θ = 1 (validates the data and the configuration).
    pub fn new(x: MatRef<'a, f64>, y: &'a [f64], config: TrainConfig) -> Result<Self> {
        validate_training_data(x, y)?;
        if !(config.learning_rate.is_finite() && config.learning_rate > 0.0) {
            return Err(GpError::InvalidArgument(format!(
                "learning rate must be positive, got {}",
                config.learning_rate
            )));
        }
        let params: Vec<f64> =
            Hyperparameters::ones(x.ncols()).to_vec().into_iter().map(softplus_inverse).collect();
        let adam = Adam::new(params.len(), config.learning_rate);
        let state =
            EstimatorState::new(config.estimator, config.num_probes, config.num_features, config.warm_start)?;
        let probe_rng = stream(config.seed, GpStream::Probes);
        let solver_rng = stream(config.seed, GpStream::SolverBatches);
        Ok(Trainer {
            x,
            y,
            records: Vec::with_capacity(config.steps),
            config,
            params,
            adam,
            state,
            probe_rng,
            solver_rng,
        })
    }

    /// The run's configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Steps taken so far (the records of each).
    pub fn records(&self) -> &[StepRecord] {
        &self.records
    }

    /// Whether all `config.steps` steps have been taken.
    pub fn is_done(&self) -> bool {
        self.records.len() >= self.config.steps
    }

    /// The current hyperparameters θ = softplus(u).
    pub fn hyperparameters(&self) -> Result<Hyperparameters> {
        Hyperparameters::from_slice(&self.params.iter().map(|&u| softplus(u)).collect::<Vec<_>>())
    }

    /// Takes one outer step: probes, solve, gradient estimate, Adam. Returns its record.
    pub fn step(&mut self) -> Result<&StepRecord> {
        let config = &self.config;
        let step = self.records.len();
        let started = Instant::now();
        let hyper = self.hyperparameters()?;
        let mut system = KernelSystem::new(self.x, config.kernel, &hyper)?;
        if config.cache_kernel && config.estimator != EstimatorKind::Exact {
            system.cache_kernel();
        }
        let state = &mut self.state;
        let (gradient, record_solver, exact_mll) = match config.estimator {
            EstimatorKind::Exact => {
                let (mll, gradient) = exact_gradient(&system, self.y)?;
                (gradient, None, Some(mll))
            }
            EstimatorKind::Standard | EstimatorKind::Pathwise => {
                state.begin_step(&system, &mut self.probe_rng)?;
                let rhs = state.right_hand_sides(&system, self.y)?;
                let solve_started = Instant::now();
                let outcome = config.solver.solve(
                    &system,
                    rhs.as_ref(),
                    state.initial_guess(),
                    &config.solve_options,
                    &mut self.solver_rng,
                )?;
                let solver_seconds = solve_started.elapsed().as_secs_f64();
                let gradient = state.gradient(&system, outcome.solution.as_ref(), rhs.as_ref());
                let summary = (
                    outcome.epochs,
                    outcome.iterations,
                    outcome.residual_y,
                    outcome.residual_z,
                    outcome.converged,
                    solver_seconds,
                );
                state.previous_solution = Some(outcome.solution);
                (gradient, Some(summary), None)
            }
        };
        let grad_theta = gradient.to_vec();
        check_finite_slice(&grad_theta, "marginal-likelihood gradient")?;
        let grad_u: Vec<f64> = grad_theta.iter().zip(&self.params).map(|(g, &u)| g * sigmoid(u)).collect();
        self.adam.ascend(&mut self.params, &grad_u);
        if config.min_noise_scale > 0.0 && softplus(self.params[0]) < config.min_noise_scale {
            self.params[0] = softplus_inverse(config.min_noise_scale);
        }
        let (solver_epochs, solver_iterations, residual_y, residual_z, converged, solver_seconds) =
            record_solver.unwrap_or((0.0, 0, 0.0, 0.0, true, 0.0));
        self.records.push(StepRecord {
            step,
            hyper,
            solver_epochs,
            solver_iterations,
            residual_y,
            residual_z,
            converged,
            exact_mll,
            solver_seconds,
            step_seconds: started.elapsed().as_secs_f64(),
        });
        Ok(self.records.last().expect("just pushed"))
    }

    /// Everything needed to continue this run later (see [`TrainCheckpoint::save`]).
    pub fn checkpoint(&self) -> TrainCheckpoint {
        TrainCheckpoint {
            config: self.config.clone(),
            data: DataFingerprint::of(self.x, self.y),
            params: self.params.clone(),
            adam: self.adam.clone(),
            probe_rng_word_pos: self.probe_rng.get_word_pos(),
            solver_rng_word_pos: self.solver_rng.get_word_pos(),
            draws: self.state.draws.clone(),
            previous_solution: self.state.previous_solution.clone(),
            records: self.records.clone(),
        }
    }

    /// Continues the run stored in `checkpoint` on the same data. `config` must equal the stored
    /// configuration except for `steps` (a run may be extended) and `cache_kernel` (which changes
    /// only how products are computed).
    pub fn resume(
        x: MatRef<'a, f64>,
        y: &'a [f64],
        config: TrainConfig,
        checkpoint: TrainCheckpoint,
    ) -> Result<Self> {
        let mut trainer = Trainer::new(x, y, config)?;
        let comparable = TrainConfig {
            steps: trainer.config.steps,
            cache_kernel: trainer.config.cache_kernel,
            ..checkpoint.config.clone()
        };
        if comparable != trainer.config {
            return Err(GpError::InvalidArgument(format!(
                "checkpoint was written by another configuration (stored: {})",
                serde_json::to_string(&checkpoint.config).unwrap_or_default()
            )));
        }
        let data = DataFingerprint::of(x, y);
        if data != checkpoint.data {
            return Err(GpError::InvalidArgument(format!(
                "checkpoint was written for other training data (stored: n {}, d {}, hash {:016x}; \
                 given: n {}, d {}, hash {:016x})",
                checkpoint.data.n, checkpoint.data.dim, checkpoint.data.hash, data.n, data.dim, data.hash
            )));
        }
        if checkpoint.params.len() != trainer.params.len() {
            return Err(GpError::DimensionMismatch {
                what: "checkpoint hyperparameters".into(),
                expected: trainer.params.len(),
                found: checkpoint.params.len(),
            });
        }
        trainer.params = checkpoint.params;
        trainer.adam = checkpoint.adam;
        trainer.probe_rng.set_word_pos(checkpoint.probe_rng_word_pos);
        trainer.solver_rng.set_word_pos(checkpoint.solver_rng_word_pos);
        trainer.state.draws = checkpoint.draws;
        trainer.state.previous_solution = checkpoint.previous_solution;
        trainer.records = checkpoint.records;
        Ok(trainer)
    }

    /// Ends the run: totals, final θ and the last solve (for free pathwise predictions).
    pub fn finish(self) -> Result<TrainOutcome> {
        let final_hyper = self.hyperparameters()?;
        let last_solve = match (self.records.last(), self.state.previous_solution) {
            (Some(last), Some(solution)) => Some(LastSolve {
                hyper: last.hyper.clone(),
                solution,
                features: match self.state.draws {
                    Some(ProbeDraws::Pathwise { features, .. }) => Some(features),
                    _ => None,
                },
            }),
            _ => None,
        };
        let records = self.records;
        Ok(TrainOutcome {
            total_epochs: records.iter().map(|r| r.solver_epochs).sum(),
            train_seconds: records.iter().map(|r| r.step_seconds).sum(),
            solver_seconds: records.iter().map(|r| r.solver_seconds).sum(),
            records,
            final_hyper,
            last_solve,
        })
    }
}
