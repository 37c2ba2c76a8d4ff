//! The experiment runner behind `igp`: data preparation, one configuration trained and evaluated
//! ([`run_one`], [`fit`]), the benchmark grid of solvers × estimators × warm start and the
//! early-stopping grid ([`bench`]), and the markdown report of merged bench runs ([`report`]).
//!
//! Settings are plain serde structs, checked once by `validate()`; progress goes through
//! [`foundation::progress::Progress`], per-step and per-run lines through callbacks, so the
//! binary only parses arguments and prints. Every file is written atomically.

use std::path::{Path, PathBuf};
use std::time::Instant;

use foundation::progress::Progress;
use foundation::tensor_file::{NoFault, SaveFault};
use serde::{Deserialize, Serialize};

use crate::checkpoint::TrainCheckpoint;
use crate::error::{GpError, Result};
use crate::estimator::EstimatorKind;
use crate::kernel::{Hyperparameters, KernelSystem};
use crate::predict::{metrics, predict_exact, predict_pathwise, Metrics};
use crate::rng::{stream, GpStream};
use crate::solvers::Solver;
use crate::train::{StepRecord, TrainConfig, TrainOutcome, Trainer};
use crate::uci::{self, TargetColumn, NUM_SPLITS};

/// Where the data of a run comes from and how it is split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataConfig {
    /// Directory holding `uci/<name>/` (`None`: `$SHARED_DATA_DIR` or `../shared/data`, see
    /// [`uci::shared_data_dir`]).
    pub data_dir: Option<PathBuf>,
    /// Use the embedded 600-row subset of pol instead of any data directory.
    pub embedded: bool,
    /// Target column of plain CSV data sets.
    pub target: TargetColumn,
    /// Train/test split index (0..10).
    pub split: usize,
    /// Seed of the subsample centre ([`GpStream::Subsample`]).
    pub seed: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig { data_dir: None, embedded: false, target: TargetColumn::Last, split: 0, seed: 12345 }
    }
}

impl DataConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.split >= NUM_SPLITS {
            return Err(GpError::InvalidArgument(format!(
                "split must be 0..{}, got {}",
                NUM_SPLITS - 1,
                self.split
            )));
        }
        if self.embedded && self.data_dir.is_some() {
            return Err(GpError::InvalidArgument(
                "embedded data and a data directory exclude each other".into(),
            ));
        }
        Ok(())
    }

    /// The data directory to read, if any (the embedded subset needs none).
    pub fn resolved_dir(&self) -> Result<Option<PathBuf>> {
        if self.embedded {
            return Ok(None);
        }
        let dir = self.data_dir.clone().or_else(uci::shared_data_dir);
        if let Some(d) = &dir {
            if !d.is_dir() {
                return Err(GpError::InvalidArgument(format!(
                    "data directory {} does not exist",
                    d.display()
                )));
            }
        }
        Ok(dir)
    }
}

/// A data set loaded, split, z-scored and subsampled, ready to train on.
#[derive(Clone, Debug)]
pub struct PreparedData {
    /// The data set's name.
    pub name: String,
    /// Where it came from.
    pub source: String,
    /// Split index.
    pub split_index: usize,
    /// Subsample size asked for.
    pub subsample: Option<usize>,
    /// The prepared split.
    pub split: uci::Split,
}

/// Loads `dataset` (a name, a folder or a CSV file: [`uci::resolve`]), takes split
/// `data.split`, z-scores it and takes the centred subsample of `subsample` points.
pub fn prepare_data(dataset: &str, data: &DataConfig, subsample: Option<usize>) -> Result<PreparedData> {
    data.validate()?;
    let dir = data.resolved_dir()?;
    let loaded = uci::resolve(dataset, dir.as_deref(), &data.target)?;
    let mut rng = stream(data.seed, GpStream::Subsample);
    let (split, _) = uci::prepare(&loaded, data.split, subsample, &mut rng)?;
    Ok(PreparedData { name: loaded.name, source: loaded.source, split_index: data.split, subsample, split })
}

/// Where a run saves its checkpoints, and whether it resumes from one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointPlan {
    /// The checkpoint file.
    pub path: PathBuf,
    /// Steps between saves (the last step is always saved).
    pub every: usize,
    /// Continue the run stored at `path` (which must exist).
    pub resume: bool,
}

impl CheckpointPlan {
    /// Checks the plan against the file system: resuming needs a checkpoint, a fresh run must not
    /// overwrite one.
    pub fn validate(&self) -> Result<()> {
        if self.every == 0 {
            return Err(GpError::InvalidArgument("checkpoint interval must be at least 1 step".into()));
        }
        match (self.resume, self.path.exists()) {
            (true, false) => Err(GpError::NoCheckpoint(self.path.clone())),
            (false, true) => Err(GpError::InvalidArgument(format!(
                "checkpoint {} already exists: pass --resume to continue it, or remove it to start over",
                self.path.display()
            ))),
            _ => Ok(()),
        }
    }
}

/// Checks a training configuration once, before any work.
pub fn validate_train_config(config: &TrainConfig) -> Result<()> {
    let positive = |v: f64, what: &str| {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(GpError::InvalidArgument(format!("{what} must be positive, got {v}")))
        }
    };
    positive(config.learning_rate, "learning rate")?;
    if config.estimator != EstimatorKind::Exact {
        positive(config.solve_options.rtol_y, "tolerance")?;
        positive(config.solve_options.rtol_z, "tolerance")?;
        positive(config.solve_options.max_epochs, "epoch budget")?;
        if config.num_probes == 0 {
            return Err(GpError::InvalidArgument("at least one probe vector is needed".into()));
        }
    }
    if config.estimator == EstimatorKind::Pathwise
        && (config.num_features == 0 || !config.num_features.is_multiple_of(2))
    {
        return Err(GpError::InvalidArgument(format!(
            "random features must be a positive even number, got {}",
            config.num_features
        )));
    }
    if config.steps == 0 {
        return Err(GpError::InvalidArgument("at least one step is needed".into()));
    }
    Ok(())
}

/// Everything `igp fit` does: one data set, one configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitConfig {
    /// Data set: a name under the data directory, a folder in the `uci_datasets` layout, or a CSV.
    pub dataset: String,
    /// Data source and split.
    pub data: DataConfig,
    /// Centred subsample of this many training points (`None`: all).
    pub subsample: Option<usize>,
    /// The training run.
    pub train: TrainConfig,
    /// Compute exact (Cholesky) test metrics when n_train is at most this.
    pub exact_metrics_max_n: usize,
    /// Checkpoint and resume.
    pub checkpoint: Option<CheckpointPlan>,
}

impl FitConfig {
    /// Checks every setting (and the checkpoint file's presence) once.
    pub fn validate(&self) -> Result<()> {
        self.data.validate()?;
        validate_train_config(&self.train)?;
        if self.subsample == Some(0) {
            return Err(GpError::InvalidArgument("subsample size must be positive".into()));
        }
        if let Some(plan) = &self.checkpoint {
            plan.validate()?;
        }
        Ok(())
    }
}

/// Everything written for one run.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct RunReport {
    /// Data set name.
    pub dataset: String,
    /// Where the data came from.
    pub data_source: String,
    /// Split index.
    pub split: usize,
    /// Training points.
    pub n_train: usize,
    /// Test points.
    pub n_test: usize,
    /// Input dimension.
    pub dim: usize,
    /// Subsample size asked for.
    pub subsample: Option<usize>,
    /// The training configuration.
    pub config: TrainConfig,
    /// Sum of solver epochs.
    pub total_solver_epochs: f64,
    /// Training time (s).
    pub train_seconds: f64,
    /// Solver time (s).
    pub solver_seconds: f64,
    /// Mean relative residual of the y system over the steps.
    pub mean_residual_y: f64,
    /// Mean relative residual of the probe systems over the steps.
    pub mean_residual_z: f64,
    /// Relative residual of the y system at the last step.
    pub final_residual_y: f64,
    /// Relative residual of the probe systems at the last step.
    pub final_residual_z: f64,
    /// Hyperparameters after the last step.
    pub final_hyper: Hyperparameters,
    /// Exact (Cholesky) test metrics at the final hyperparameters.
    pub exact_metrics: Option<Metrics>,
    /// Pathwise-sample test metrics from the last solve (pathwise estimator only; no extra solve).
    pub pathwise_metrics: Option<Metrics>,
    /// Time of the exact metrics (s).
    pub exact_metrics_seconds: Option<f64>,
    /// Per-step log.
    pub records: Vec<StepRecord>,
}

/// One line describing a step (for logs).
pub fn format_step(r: &StepRecord) -> String {
    let h = &r.hyper;
    let ls = &h.length_scales;
    let (lmin, lmax) = ls.iter().fold((f64::INFINITY, 0.0f64), |(a, b), &l| (a.min(l), b.max(l)));
    let mll = r.exact_mll.map(|m| format!(" mll {m:.2}")).unwrap_or_default();
    format!(
        "step {:3}: epochs {:7.2} iters {:5} r_y {:.2e} r_z {:.2e}{} | σ {:.4} s {:.4} ℓ [{:.3}, {:.3}]{} | {:.2}s",
        r.step,
        r.solver_epochs,
        r.solver_iterations,
        r.residual_y,
        r.residual_z,
        if r.converged { "" } else { " (budget)" },
        h.noise_scale,
        h.signal_scale,
        lmin,
        lmax,
        mll,
        r.step_seconds
    )
}

/// Trains one configuration on prepared data and evaluates it. With a checkpoint plan the run
/// saves every `plan.every` steps (and after the last) through `fault` ([`NoFault`] outside
/// tests) and, with `plan.resume`, continues the stored run; `on_step` sees every step's record.
#[allow(clippy::too_many_arguments)]
pub fn run_one(
    data: &PreparedData,
    config: &TrainConfig,
    exact_metrics_max_n: usize,
    checkpoint: Option<&CheckpointPlan>,
    progress: &dyn Progress,
    on_step: &mut dyn FnMut(&StepRecord),
    fault: &mut dyn SaveFault,
) -> Result<RunReport> {
    let split = &data.split;
    progress.start(
        &format!(
            "{} {} {} {}",
            data.name,
            config.solver.name(),
            config.estimator,
            if config.warm_start { "warm" } else { "cold" }
        ),
        config.steps as u64,
    );
    let (x, y) = (split.x_train.as_ref(), &split.y_train[..]);
    let mut trainer = match checkpoint {
        Some(plan) if plan.resume => {
            if !plan.path.exists() {
                return Err(GpError::NoCheckpoint(plan.path.clone()));
            }
            let stored = TrainCheckpoint::load(&plan.path)?;
            let trainer = Trainer::resume(x, y, config.clone(), stored)?;
            progress.message(&format!("resumed {} at step {}", plan.path.display(), trainer.records().len()));
            progress.advance(trainer.records().len() as u64);
            trainer
        }
        _ => Trainer::new(x, y, config.clone())?,
    };
    while !trainer.is_done() {
        let r = trainer.step()?;
        progress.advance(1);
        progress.message(&format!("epochs {:.1} r_y {:.1e}", r.solver_epochs, r.residual_y));
        on_step(r);
        if let Some(plan) = checkpoint {
            let done = trainer.records().len();
            if done.is_multiple_of(plan.every.max(1)) || trainer.is_done() {
                trainer.checkpoint().save_with(&plan.path, fault)?;
            }
        }
    }
    let outcome: TrainOutcome = trainer.finish()?;
    progress.finish();
    let n = split.x_train.nrows();
    let (exact_metrics, exact_metrics_seconds) = if n <= exact_metrics_max_n {
        let t = Instant::now();
        let system = KernelSystem::new(split.x_train.as_ref(), config.kernel, &outcome.final_hyper)?;
        let pred = predict_exact(&system, &split.y_train, split.x_test.as_ref())?;
        (Some(metrics(&pred, &split.y_test)?), Some(t.elapsed().as_secs_f64()))
    } else {
        (None, None)
    };
    let pathwise_metrics = match outcome.last_solve.as_ref().and_then(|l| l.features.as_ref().map(|f| (l, f)))
    {
        Some((last, features)) => {
            let system = KernelSystem::new(split.x_train.as_ref(), config.kernel, &last.hyper)?;
            let pred = predict_pathwise(&system, last.solution.as_ref(), features, split.x_test.as_ref())?;
            Some(metrics(&pred, &split.y_test)?)
        }
        None => None,
    };
    let steps = outcome.records.len().max(1) as f64;
    let last = outcome.records.last();
    Ok(RunReport {
        dataset: data.name.clone(),
        data_source: data.source.clone(),
        split: data.split_index,
        n_train: n,
        n_test: split.x_test.nrows(),
        dim: split.x_train.ncols(),
        subsample: data.subsample,
        config: config.clone(),
        total_solver_epochs: outcome.total_epochs,
        train_seconds: outcome.train_seconds,
        solver_seconds: outcome.solver_seconds,
        mean_residual_y: outcome.records.iter().map(|r| r.residual_y).sum::<f64>() / steps,
        mean_residual_z: outcome.records.iter().map(|r| r.residual_z).sum::<f64>() / steps,
        final_residual_y: last.map_or(0.0, |r| r.residual_y),
        final_residual_z: last.map_or(0.0, |r| r.residual_z),
        final_hyper: outcome.final_hyper,
        exact_metrics,
        pathwise_metrics,
        exact_metrics_seconds,
        records: outcome.records,
    })
}

/// `igp fit`: validates `config`, prepares the data and runs it (see [`run_one`]); `on_data` sees
/// the prepared data before training starts (for a summary line).
pub fn fit(
    config: &FitConfig,
    progress: &dyn Progress,
    on_data: &mut dyn FnMut(&PreparedData),
    on_step: &mut dyn FnMut(&StepRecord),
) -> Result<RunReport> {
    fit_with(config, progress, on_data, on_step, &mut NoFault)
}

/// [`fit`] with a fault hook on every checkpoint save (for crash tests).
pub fn fit_with(
    config: &FitConfig,
    progress: &dyn Progress,
    on_data: &mut dyn FnMut(&PreparedData),
    on_step: &mut dyn FnMut(&StepRecord),
    fault: &mut dyn SaveFault,
) -> Result<RunReport> {
    config.validate()?;
    let data = prepare_data(&config.dataset, &config.data, config.subsample)?;
    on_data(&data);
    run_one(
        &data,
        &config.train,
        config.exact_metrics_max_n,
        config.checkpoint.as_ref(),
        progress,
        on_step,
        fault,
    )
}

/// Writes `value` as pretty JSON to `path`, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| GpError::InvalidArgument(format!("{}: cannot serialise: {e}", path.display())))?;
    Ok(foundation::atomic::write_bytes(path, text.as_bytes())?)
}

/// Writes `text` to `path`, atomically.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    Ok(foundation::atomic::write_bytes(path, text.as_bytes())?)
}

/// The runs of a bench (possibly partial, or merged from several).
#[derive(Serialize, Deserialize, Default, Clone, Debug)]
pub struct BenchResults {
    /// The command line that produced it.
    pub command: String,
    /// Exact-gradient (Cholesky) baselines.
    pub exact: Vec<RunReport>,
    /// Solve-to-tolerance runs.
    pub tolerance: Vec<RunReport>,
    /// Early-stopping runs.
    pub early_stopping: Vec<RunReport>,
}

/// The benchmark grid: for every data set, the exact-gradient baseline, every solver × estimator
/// (standard, pathwise) × warm start solved to tolerance, and the pathwise early-stopping runs at
/// every budget, cold and warm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchConfig {
    /// Data sets (names, folders or CSV files).
    pub datasets: Vec<String>,
    /// Data source and split (shared by all data sets).
    pub data: DataConfig,
    /// Solvers of the grid.
    pub solvers: Vec<Solver>,
    /// Centred subsample size n.
    pub subsample: usize,
    /// Epoch budgets of the early-stopping runs (empty: none).
    pub budgets: Vec<f64>,
    /// Epoch budget of the solve-to-tolerance runs.
    pub max_epochs: f64,
    /// Skip the solve-to-tolerance grid.
    pub skip_tolerance: bool,
    /// Settings shared by every run (solver, estimator, warm start and budget are set per run).
    pub base: TrainConfig,
    /// Compute exact test metrics when n_train is at most this.
    pub exact_metrics_max_n: usize,
    /// Output directory for bench.md and bench.json.
    pub out_dir: PathBuf,
    /// The command line, recorded in the outputs.
    pub command: String,
}

impl BenchConfig {
    /// Checks every setting once.
    pub fn validate(&self) -> Result<()> {
        self.data.validate()?;
        if self.datasets.is_empty() {
            return Err(GpError::InvalidArgument("no data sets to bench".into()));
        }
        if self.subsample == 0 {
            return Err(GpError::InvalidArgument("subsample size must be positive".into()));
        }
        if let Some(b) = self.budgets.iter().find(|b| !(b.is_finite() && **b > 0.0)) {
            return Err(GpError::InvalidArgument(format!("epoch budget must be positive, got {b}")));
        }
        for solver in &self.solvers {
            validate_train_config(&self.run_config(
                solver.clone(),
                EstimatorKind::Pathwise,
                false,
                self.max_epochs,
            ))?;
        }
        Ok(())
    }

    fn run_config(
        &self,
        solver: Solver,
        estimator: EstimatorKind,
        warm: bool,
        max_epochs: f64,
    ) -> TrainConfig {
        let mut config = self.base.clone();
        config.solver = solver;
        config.estimator = estimator;
        config.warm_start = warm;
        config.solve_options.max_epochs = max_epochs;
        config
    }
}

/// Runs the grid of `config`, rewriting `bench.json` and `bench.md` in `config.out_dir` after
/// every run (so partial results survive an interruption); `log` receives one line per data set
/// and per run.
pub fn bench(
    config: &BenchConfig,
    progress: &dyn Progress,
    log: &mut dyn FnMut(&str),
) -> Result<BenchResults> {
    config.validate()?;
    let mut results = BenchResults { command: config.command.clone(), ..Default::default() };
    let started = Instant::now();
    // Every data set is loaded before the first run, so a bad name fails at once, not hours in.
    let prepared = config
        .datasets
        .iter()
        .map(|name| prepare_data(name, &config.data, Some(config.subsample)))
        .collect::<Result<Vec<_>>>()?;
    for (name, data) in config.datasets.iter().zip(prepared) {
        log(&format!(
            "bench {name}: n_train {}, n_test {}, d {} ({})",
            data.split.x_train.nrows(),
            data.split.x_test.nrows(),
            data.split.x_train.ncols(),
            data.source
        ));
        let mut plan: Vec<(&str, TrainConfig)> =
            vec![("exact", config.run_config(Solver::Cholesky, EstimatorKind::Exact, false, 0.0))];
        if !config.skip_tolerance {
            for solver in &config.solvers {
                for estimator in [EstimatorKind::Standard, EstimatorKind::Pathwise] {
                    for warm in [false, true] {
                        plan.push((
                            "tolerance",
                            config.run_config(solver.clone(), estimator, warm, config.max_epochs),
                        ));
                    }
                }
            }
        }
        for solver in &config.solvers {
            for &budget in &config.budgets {
                for warm in [false, true] {
                    plan.push((
                        "early",
                        config.run_config(solver.clone(), EstimatorKind::Pathwise, warm, budget),
                    ));
                }
            }
        }
        for (kind, run) in plan {
            let report =
                run_one(&data, &run, config.exact_metrics_max_n, None, progress, &mut |_| {}, &mut NoFault)?;
            log(&format!(
                "  [{:6.0}s] {kind:9} {:8} {:8} {:4} max_epochs {:6}: epochs {:9.1}, time {:8.2}s, llh {}, r_y {:.2e}",
                started.elapsed().as_secs_f64(),
                report.config.solver.name(),
                report.config.estimator.to_string(),
                if report.config.warm_start { "warm" } else { "cold" },
                report.config.solve_options.max_epochs,
                report.total_solver_epochs,
                report.train_seconds,
                report.exact_metrics.map_or("n/a".into(), |m| format!("{:.4}", m.log_likelihood)),
                report.mean_residual_y
            ));
            match kind {
                "exact" => results.exact.push(report),
                "tolerance" => results.tolerance.push(report),
                _ => results.early_stopping.push(report),
            }
            write_json(&config.out_dir.join("bench.json"), &results)?;
            write_text(&config.out_dir.join("bench.md"), &markdown(&results))?;
        }
    }
    Ok(results)
}

fn fmt_opt(m: Option<f64>, digits: usize) -> String {
    m.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

/// The markdown tables of a (possibly partial) bench.
pub fn markdown(results: &BenchResults) -> String {
    let mut md = String::new();
    md.push_str(&format!("Command: `{}`\n\n", results.command));
    md.push_str("### Exact-gradient baseline (Cholesky)\n\n");
    md.push_str(
        "| dataset | n | d | steps | time (s) | test RMSE | test LLH |\n|---|---|---|---|---|---|---|\n",
    );
    for r in &results.exact {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {} | {} |\n",
            r.dataset,
            r.n_train,
            r.dim,
            r.config.steps,
            r.train_seconds,
            fmt_opt(r.exact_metrics.map(|m| m.rmse), 4),
            fmt_opt(r.exact_metrics.map(|m| m.log_likelihood), 4)
        ));
    }
    md.push_str(
        "\n### Solve to tolerance (rtol 0.01, at most 1000 epochs per step)\n\n\
         Speed-ups are against standard/cold of the same solver and dataset. LLH (exact) is the Cholesky test \
         log-likelihood at the final hyperparameters; LLH (samples) the free pathwise estimate from the last solve; \
         ΔLLH is LLH (exact) minus the exact-gradient baseline's.\n\n",
    );
    md.push_str(
        "| dataset | solver | estimator | warm | total epochs | time (s) | solver time (s) | test RMSE | test LLH (exact) | ΔLLH vs exact grad | test LLH (samples) | speed-up (epochs) | speed-up (time) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &results.tolerance {
        let base = results.tolerance.iter().find(|b| {
            b.dataset == r.dataset
                && b.config.solver == r.config.solver
                && b.config.estimator == EstimatorKind::Standard
                && !b.config.warm_start
        });
        let exact_llh = results
            .exact
            .iter()
            .find(|e| e.dataset == r.dataset)
            .and_then(|e| e.exact_metrics.map(|m| m.log_likelihood));
        let llh = r.exact_metrics.map(|m| m.log_likelihood);
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} |\n",
            r.dataset,
            r.config.solver.name(),
            r.config.estimator,
            if r.config.warm_start { "yes" } else { "no" },
            r.total_solver_epochs,
            r.train_seconds,
            r.solver_seconds,
            fmt_opt(r.exact_metrics.map(|m| m.rmse), 4),
            fmt_opt(llh, 4),
            fmt_opt(llh.zip(exact_llh).map(|(a, b)| a - b), 4),
            fmt_opt(r.pathwise_metrics.map(|m| m.log_likelihood), 4),
            fmt_opt(base.map(|b| b.total_solver_epochs / r.total_solver_epochs.max(1e-12)), 1),
            fmt_opt(base.map(|b| b.train_seconds / r.train_seconds.max(1e-12)), 1),
        ));
    }
    md.push_str(
        "\n### Early stopping (pathwise estimator; epoch budget per outer step)\n\n\
         Residuals are relative; mean over all outer steps, and at the last step. Residual ratio = cold mean r_y / \
         warm mean r_y for the same solver and budget.\n\n",
    );
    md.push_str(
        "| dataset | solver | budget | warm | total epochs | time (s) | mean r_y | mean r_z | final r_y | final r_z | test RMSE | test LLH (exact) | test LLH (samples) | residual ratio (y) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &results.early_stopping {
        let ratio = if r.config.warm_start {
            results
                .early_stopping
                .iter()
                .find(|b| {
                    b.dataset == r.dataset
                        && b.config.solver == r.config.solver
                        && b.config.solve_options.max_epochs == r.config.solve_options.max_epochs
                        && !b.config.warm_start
                })
                .map(|b| b.mean_residual_y / r.mean_residual_y.max(1e-300))
        } else {
            None
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.3e} | {:.3e} | {:.3e} | {:.3e} | {} | {} | {} | {} |\n",
            r.dataset,
            r.config.solver.name(),
            r.config.solve_options.max_epochs,
            if r.config.warm_start { "yes" } else { "no" },
            r.total_solver_epochs,
            r.train_seconds,
            r.mean_residual_y,
            r.mean_residual_z,
            r.final_residual_y,
            r.final_residual_z,
            fmt_opt(r.exact_metrics.map(|m| m.rmse), 4),
            fmt_opt(r.exact_metrics.map(|m| m.log_likelihood), 4),
            fmt_opt(r.pathwise_metrics.map(|m| m.log_likelihood), 4),
            fmt_opt(ratio, 2),
        ));
    }
    md
}

/// Reads a bench.json (or bench.json.gz) written by [`bench`].
pub fn read_bench(path: &Path) -> Result<BenchResults> {
    let text = if path.extension().is_some_and(|e| e == "gz") {
        uci::read_gz(path)?
    } else {
        std::fs::read_to_string(path).map_err(|source| GpError::Io { path: path.to_path_buf(), source })?
    };
    serde_json::from_str(&text).map_err(|e| {
        GpError::InvalidArgument(format!("{} is not a bench.json of igp bench ({e})", path.display()))
    })
}

/// Merges bench results: the first exact baseline of each data set is kept; a later run of the same
/// data set and configuration replaces an earlier one (a rerun after a fix).
pub fn merge(parts: Vec<BenchResults>) -> BenchResults {
    let mut merged = BenchResults::default();
    for part in parts {
        for e in part.exact {
            if !merged.exact.iter().any(|m| m.dataset == e.dataset) {
                merged.exact.push(e);
            }
        }
        for (runs, new) in
            [(&mut merged.tolerance, part.tolerance), (&mut merged.early_stopping, part.early_stopping)]
        {
            for run in new {
                match runs.iter_mut().find(|r| r.dataset == run.dataset && r.config == run.config) {
                    Some(old) => *old = run,
                    None => runs.push(run),
                }
            }
        }
    }
    merged
}

/// `igp report`: merges the bench.json files `inputs` and writes the summary and every run to
/// `out` as markdown; `command` is recorded in it.
pub fn report(inputs: &[PathBuf], out: &Path, command: &str) -> Result<()> {
    let parts = inputs.iter().map(|p| read_bench(p)).collect::<Result<Vec<_>>>()?;
    let runs: String = parts.iter().map(|p| format!("- `{}`\n", p.command)).collect();
    let mut merged = merge(parts);
    if merged.tolerance.is_empty() && merged.early_stopping.is_empty() {
        return Err(GpError::InvalidArgument(format!("no solver runs in {} input file(s)", inputs.len())));
    }
    merged.command = command.to_string();
    let text = format!("{}\nBench runs merged here:\n\n{runs}\n{}", summary(&merged), markdown(&merged));
    write_text(out, &text)
}

/// Datasets and solvers in first-seen order.
fn seen<T: PartialEq + Clone>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// The headline tables: speed-ups of each variant against standard/cold, ΔLLH of pathwise + warm
/// start against the exact-gradient run, and early-stopping residual ratios (cold / warm).
pub fn summary(r: &BenchResults) -> String {
    let all = r.tolerance.iter().chain(&r.early_stopping);
    let datasets = seen(all.clone().map(|x| x.dataset.clone()));
    let solvers = seen(all.map(|x| x.config.solver.name().to_string()));
    let find = |ds: &str, solver: &str, est: EstimatorKind, warm: bool| {
        r.tolerance.iter().find(|x| {
            x.dataset == ds
                && x.config.solver.name() == solver
                && x.config.estimator == est
                && x.config.warm_start == warm
        })
    };
    let header = |first: &str| {
        let mut h = format!("| {first} |");
        for ds in &datasets {
            h.push_str(&format!(" {ds} |"));
        }
        h.push_str("\n|---|");
        h.push_str(&"---|".repeat(datasets.len()));
        h.push('\n');
        h
    };
    let mut md = String::from("## Summary\n\n");
    md.push_str(
        "Speed-up to tolerance against standard estimator / cold start of the same solver: total solver \
         epochs (wall time in brackets).\n\n",
    );
    md.push_str(&header("solver, variant"));
    for solver in &solvers {
        for (est, warm, label) in [
            (EstimatorKind::Standard, true, "standard + warm start"),
            (EstimatorKind::Pathwise, false, "pathwise"),
            (EstimatorKind::Pathwise, true, "pathwise + warm start"),
        ] {
            md.push_str(&format!("| {solver}, {label} |"));
            for ds in &datasets {
                let cell = find(ds, solver, EstimatorKind::Standard, false)
                    .zip(find(ds, solver, est, warm))
                    .map(|(b, x)| {
                        format!(
                            "{:.1}x ({:.1}x)",
                            b.total_solver_epochs / x.total_solver_epochs.max(1e-12),
                            b.train_seconds / x.train_seconds.max(1e-12)
                        )
                    });
                md.push_str(&format!(" {} |", cell.unwrap_or_else(|| "n/a".into())));
            }
            md.push('\n');
        }
    }
    md.push_str(
        "\nTest log-likelihood (exact, at the final θ) of pathwise + warm start minus that of the \
         Cholesky exact-gradient run; in brackets, standard + cold.\n\n",
    );
    md.push_str(&header("solver"));
    for solver in &solvers {
        md.push_str(&format!("| {solver} |"));
        for ds in &datasets {
            let exact = r.exact.iter().find(|e| &e.dataset == ds).and_then(|e| e.exact_metrics);
            let delta = |x: Option<&RunReport>| {
                x.and_then(|x| x.exact_metrics)
                    .zip(exact)
                    .map(|(a, b)| format!("{:+.4}", a.log_likelihood - b.log_likelihood))
                    .unwrap_or_else(|| "n/a".into())
            };
            md.push_str(&format!(
                " {} ({}) |",
                delta(find(ds, solver, EstimatorKind::Pathwise, true)),
                delta(find(ds, solver, EstimatorKind::Standard, false))
            ));
        }
        md.push('\n');
    }
    let budgets = seen(r.early_stopping.iter().map(|x| x.config.solve_options.max_epochs.to_string()));
    if !budgets.is_empty() {
        md.push_str(
            "\nEarly stopping (pathwise estimator): mean relative residual r_y without / with warm start \
             (the ratio), and the test LLH with warm start.\n\n",
        );
        md.push_str(&header("solver, budget (epochs per step)"));
        for solver in &solvers {
            for budget in &budgets {
                md.push_str(&format!("| {solver}, {budget} |"));
                for ds in &datasets {
                    let get = |warm: bool| {
                        r.early_stopping.iter().find(|x| {
                            &x.dataset == ds
                                && x.config.solver.name() == solver
                                && x.config.solve_options.max_epochs.to_string() == *budget
                                && x.config.warm_start == warm
                        })
                    };
                    let cell = get(false).zip(get(true)).map(|(c, w)| {
                        format!(
                            "{:.1}x, LLH {}",
                            c.mean_residual_y / w.mean_residual_y.max(1e-300),
                            fmt_opt(w.exact_metrics.map(|m| m.log_likelihood), 3)
                        )
                    });
                    md.push_str(&format!(" {} |", cell.unwrap_or_else(|| "n/a".into())));
                }
                md.push('\n');
            }
        }
    }
    md.push('\n');
    md
}
