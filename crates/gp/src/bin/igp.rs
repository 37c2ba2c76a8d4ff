//! `igp`: iterative Gaussian-process hyperparameter optimisation on UCI regression data.
//!
//! `igp fit` runs one configuration; `igp bench` runs the grid of solvers × estimators × warm start
//! (to tolerance) and the early-stopping grid, and writes a markdown table.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use gp::checkpoint::TrainCheckpoint;
use gp::estimator::EstimatorKind;
use gp::kernel::{KernelKind, KernelSystem};
use gp::predict::{metrics, predict_exact, predict_pathwise, Metrics};
use gp::solvers::{SolveOptions, Solver};
use gp::train::{StepRecord, TrainConfig, TrainOutcome, Trainer};
use gp::uci;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

#[derive(Parser, Debug)]
#[command(
    name = "igp",
    version,
    about = "Iterative Gaussian processes: marginal-likelihood optimisation with CG, AP or SGD solvers, \
             standard or pathwise gradient estimators, warm starts and early stopping",
    after_help = "Examples:\n  \
        igp fit --dataset pol --split 0 --solver cg --estimator pathwise --warm-start --subsample 1000\n  \
        igp fit --dataset pol --solver ap --estimator standard --max-epochs 20 --steps 30 --out fit.json\n  \
        igp fit --dataset pol --solver cg --warm-start --cache-kernel --checkpoint pol.ckpt [--resume]\n  \
        igp bench --datasets pol,elevators,bike --subsample 1000 --steps 30 --out-dir crates/gp/results\n\n\
        Data: <dir>/uci/<name>/{data.csv.gz,test_mask.csv.gz}, with <dir> from --data-dir, $SHARED_DATA_DIR \
        or ../shared/data; without any, pol comes from a 600-row embedded subset."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Optimise the hyperparameters of one configuration and write JSON results.
    #[command(after_help = "Examples:\n  \
        igp fit --dataset pol --solver cg --estimator pathwise --warm-start --subsample 1000 --out pol.json\n  \
        igp fit --dataset bike --solver sgd --estimator standard --max-epochs 10 --warm-start\n  \
        igp fit --dataset pol --estimator exact --subsample 1000   # Cholesky exact-gradient baseline")]
    Fit(FitArgs),
    /// Run the benchmark grid and write bench.md / bench.json into --out-dir.
    #[command(after_help = "Example:\n  \
        igp bench --datasets pol --subsample 1000 --steps 30 --solvers cg,ap --budgets 10,20 --out-dir out")]
    Bench(BenchArgs),
    /// Merge the bench.json files of several `bench` runs (e.g. one per dataset or solver) into
    /// one markdown report: summary tables (speed-ups, ΔLLH, early-stopping residual ratios) and
    /// every run.
    #[command(after_help = "Example:\n  \
        igp report --out crates/gp/results/n1000-steps100/report.md crates/gp/results/n1000-steps100/*/bench.json")]
    Report(ReportArgs),
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// bench.json files (gzipped ones too) written by `igp bench`. A run in a later file replaces
    /// a run of the same dataset and configuration in an earlier one.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Markdown output.
    #[arg(long)]
    out: PathBuf,
}

/// Options shared by `fit` and `bench`.
#[derive(Args, Debug, Clone)]
struct CommonArgs {
    /// Train/test split index (0..9).
    #[arg(long, default_value_t = 0)]
    split: usize,
    /// Adam steps.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Probe vectors s.
    #[arg(long, default_value_t = 64)]
    probes: usize,
    /// Random Fourier features m (pathwise estimator), even.
    #[arg(long, default_value_t = 2000)]
    features: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 0.1)]
    learning_rate: f64,
    /// Kernel: matern12, matern32, matern52 or rbf.
    #[arg(long, default_value = "matern32")]
    kernel: KernelKind,
    /// Relative residual tolerance for the y and probe systems.
    #[arg(long, default_value_t = 0.01)]
    rtol: f64,
    /// Seed of every random draw (probes, features, mini-batches, subsample centre).
    #[arg(long, default_value_t = 12345)]
    seed: u64,
    /// Data directory holding uci/<name>/ (default: $SHARED_DATA_DIR or ../shared/data).
    #[arg(long, conflicts_with = "embedded")]
    data_dir: Option<PathBuf>,
    /// Use the embedded 600-row subset of pol instead of any data directory.
    #[arg(long)]
    embedded: bool,
    /// Compute exact (Cholesky) test metrics at the final hyperparameters when n_train is at most this.
    #[arg(long, default_value_t = 5000)]
    exact_metrics_max_n: usize,
    /// Form the dense kernel matrix once per outer step (8 n² bytes) so that each solver epoch
    /// of CG is one GEMM; default: matrix-free products.
    #[arg(long)]
    cache_kernel: bool,
}

#[derive(Args, Debug)]
struct FitArgs {
    /// Dataset: pol, elevators or bike.
    #[arg(long, default_value = "pol")]
    dataset: String,
    /// Solver: cg, ap, sgd (or cholesky).
    #[arg(long, default_value = "cg")]
    solver: String,
    /// Gradient estimator: standard, pathwise or exact (Cholesky).
    #[arg(long, default_value = "pathwise")]
    estimator: EstimatorKind,
    /// Warm start: freeze probe randomness and start each solve from the previous solution.
    #[arg(long)]
    warm_start: bool,
    /// Solver epoch budget per outer step (early stopping when small).
    #[arg(long, default_value_t = 1000.0)]
    max_epochs: f64,
    /// Centred subsample of this many training points (default: all).
    #[arg(long)]
    subsample: Option<usize>,
    /// Write JSON results here (atomically).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Do not print one line per outer step.
    #[arg(long)]
    quiet: bool,
    /// Save the run's complete state here (safetensors) after every --checkpoint-every steps, so
    /// that `--resume` can continue it exactly.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every: u64,
    /// Continue the run stored in --checkpoint (same data and settings; --steps may be larger).
    #[arg(long, requires = "checkpoint")]
    resume: bool,
    #[command(flatten)]
    common: CommonArgs,
}

/// Where `run_one` saves and resumes from.
struct CheckpointPlan<'a> {
    path: &'a Path,
    every: usize,
    resume: bool,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Comma-separated datasets.
    #[arg(long, default_value = "pol,elevators,bike", value_delimiter = ',')]
    datasets: Vec<String>,
    /// Comma-separated solvers.
    #[arg(long, default_value = "cg,ap,sgd", value_delimiter = ',')]
    solvers: Vec<String>,
    /// Centred subsample size n.
    #[arg(long, default_value_t = 4000)]
    subsample: usize,
    /// Epoch budgets of the early-stopping table (pathwise estimator); empty to skip.
    #[arg(long, default_value = "10,20", value_delimiter = ',')]
    budgets: Vec<String>,
    /// Epoch budget of the solve-to-tolerance runs.
    #[arg(long, default_value_t = 1000.0)]
    max_epochs: f64,
    /// Skip the solve-to-tolerance grid (only exact baseline and early stopping).
    #[arg(long)]
    skip_tolerance: bool,
    /// Output directory for bench.md and bench.json (all runs, with their per-step logs).
    #[arg(long, default_value = "igp-bench")]
    out_dir: PathBuf,
    #[command(flatten)]
    common: CommonArgs,
}

/// Everything written for one run.
#[derive(Serialize, Deserialize, Clone)]
struct RunReport {
    dataset: String,
    data_source: String,
    split: usize,
    n_train: usize,
    n_test: usize,
    dim: usize,
    subsample: Option<usize>,
    config: TrainConfig,
    total_solver_epochs: f64,
    train_seconds: f64,
    solver_seconds: f64,
    mean_residual_y: f64,
    mean_residual_z: f64,
    final_residual_y: f64,
    final_residual_z: f64,
    final_hyper: gp::kernel::Hyperparameters,
    /// Exact (Cholesky) test metrics at the final hyperparameters.
    exact_metrics: Option<Metrics>,
    /// Pathwise-sample test metrics from the last solve (pathwise estimator only; no extra solve).
    pathwise_metrics: Option<Metrics>,
    exact_metrics_seconds: Option<f64>,
    records: Vec<StepRecord>,
}

fn main() {
    if let Err(err) = run() {
        // One line naming the problem (the chain joined), non-zero exit.
        let chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
        eprintln!("igp: error: {}", chain.join(": "));
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Fit(args) => fit(args),
        Command::Bench(args) => bench(args),
        Command::Report(args) => report(args),
    }
}

struct PreparedData {
    split: uci::Split,
    source: String,
}

fn prepare_data(name: &str, common: &CommonArgs, subsample: Option<usize>) -> Result<PreparedData> {
    let dir = if common.embedded { None } else { common.data_dir.clone().or_else(uci::shared_data_dir) };
    if let Some(d) = &dir {
        if !d.is_dir() {
            bail!("data directory {} does not exist", d.display());
        }
    }
    let dataset = uci::load(name, dir.as_deref())?;
    // Its own stream of the run seed, so the subsample centre does not shift the probes.
    let mut rng = ChaCha8Rng::seed_from_u64(common.seed);
    rng.set_stream(2);
    let (split, _) = uci::prepare(&dataset, common.split, subsample, &mut rng)?;
    Ok(PreparedData { split, source: dataset.source })
}

fn config_from(
    common: &CommonArgs,
    solver: Solver,
    estimator: EstimatorKind,
    warm: bool,
    max_epochs: f64,
) -> TrainConfig {
    TrainConfig {
        kernel: common.kernel,
        solver,
        estimator,
        warm_start: warm,
        num_probes: common.probes,
        num_features: common.features,
        learning_rate: common.learning_rate,
        steps: common.steps,
        solve_options: SolveOptions { rtol_y: common.rtol, rtol_z: common.rtol, max_epochs },
        seed: common.seed,
        min_noise_scale: 0.0,
        cache_kernel: common.cache_kernel,
    }
}

fn format_step(r: &StepRecord) -> String {
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

/// Trains one configuration and evaluates it.
fn run_one(
    name: &str,
    data: &PreparedData,
    common: &CommonArgs,
    subsample: Option<usize>,
    config: &TrainConfig,
    print_steps: bool,
    checkpoint: Option<CheckpointPlan<'_>>,
) -> Result<RunReport> {
    let split = &data.split;
    let bar = ProgressBar::new(config.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!(
        "{name} {} {} {}",
        config.solver.name(),
        config.estimator,
        if config.warm_start { "warm" } else { "cold" }
    ));
    let (x, y) = (split.x_train.as_ref(), &split.y_train[..]);
    let mut trainer = match &checkpoint {
        Some(plan) if plan.resume => {
            let stored = TrainCheckpoint::load(plan.path)?;
            let trainer = Trainer::resume(x, y, config.clone(), stored)
                .with_context(|| format!("cannot resume from {}", plan.path.display()))?;
            bar.suspend(|| eprintln!("resuming {} at step {}", plan.path.display(), trainer.records().len()));
            bar.set_position(trainer.records().len() as u64);
            trainer
        }
        _ => Trainer::new(x, y, config.clone())?,
    };
    while !trainer.is_done() {
        let r = trainer.step()?;
        bar.inc(1);
        bar.set_message(format!("epochs {:.1} r_y {:.1e}", r.solver_epochs, r.residual_y));
        if print_steps {
            bar.suspend(|| eprintln!("{}", format_step(r)));
        }
        if let Some(plan) = &checkpoint {
            let done = trainer.records().len();
            if done % plan.every == 0 || trainer.is_done() {
                trainer.checkpoint().save(plan.path)?;
            }
        }
    }
    let outcome: TrainOutcome = trainer.finish()?;
    bar.finish_and_clear();
    let n = split.x_train.nrows();
    let (exact_metrics, exact_metrics_seconds) = if n <= common.exact_metrics_max_n {
        let t = Instant::now();
        let system = KernelSystem::new(split.x_train.as_ref(), config.kernel, &outcome.final_hyper)?;
        let pred = predict_exact(&system, &split.y_train, split.x_test.as_ref())?;
        (Some(metrics(&pred, &split.y_test)?), Some(t.elapsed().as_secs_f64()))
    } else {
        (None, None)
    };
    let pathwise_metrics = match &outcome.last_solve {
        Some(last) => match &last.features {
            Some(features) => {
                let system = KernelSystem::new(split.x_train.as_ref(), config.kernel, &last.hyper)?;
                let pred =
                    predict_pathwise(&system, last.solution.as_ref(), features, split.x_test.as_ref())?;
                Some(metrics(&pred, &split.y_test)?)
            }
            None => None,
        },
        None => None,
    };
    let steps = outcome.records.len().max(1) as f64;
    let last = outcome.records.last();
    Ok(RunReport {
        dataset: name.to_string(),
        data_source: data.source.clone(),
        split: common.split,
        n_train: n,
        n_test: split.x_test.nrows(),
        dim: split.x_train.ncols(),
        subsample,
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

fn fit(args: FitArgs) -> Result<()> {
    let plan = args.checkpoint.as_deref().map(|path| CheckpointPlan {
        path,
        every: args.checkpoint_every as usize,
        resume: args.resume,
    });
    if let Some(plan) = &plan {
        if !plan.resume && plan.path.exists() {
            bail!(
                "checkpoint {} already exists: pass --resume to continue it, or remove it to start over",
                plan.path.display()
            );
        }
    }
    let solver = Solver::from_name(&args.solver)?;
    let data = prepare_data(&args.dataset, &args.common, args.subsample)?;
    let config = config_from(&args.common, solver, args.estimator, args.warm_start, args.max_epochs);
    eprintln!(
        "igp fit: {} split {} ({}), n_train {}, n_test {}, d {}; solver {}, estimator {}, warm start {}, max epochs {}",
        args.dataset,
        args.common.split,
        data.source,
        data.split.x_train.nrows(),
        data.split.x_test.nrows(),
        data.split.x_train.ncols(),
        config.solver.name(),
        config.estimator,
        config.warm_start,
        config.solve_options.max_epochs
    );
    let report = run_one(&args.dataset, &data, &args.common, args.subsample, &config, !args.quiet, plan)?;
    let fmt_metrics = |m: &Option<Metrics>| {
        m.map(|m| format!("rmse {:.4} llh {:.4}", m.rmse, m.log_likelihood)).unwrap_or_else(|| "n/a".into())
    };
    println!(
        "total solver epochs {:.1}, train time {:.2}s (solver {:.2}s); test exact: {}; test pathwise samples: {}",
        report.total_solver_epochs,
        report.train_seconds,
        report.solver_seconds,
        fmt_metrics(&report.exact_metrics),
        fmt_metrics(&report.pathwise_metrics)
    );
    if let Some(out) = &args.out {
        write_json_atomic(out, &report)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

/// Writes `value` as pretty JSON to `path` via a temp file and a rename.
fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_text_atomic(path, &serde_json::to_string_pretty(value)?)
}

fn write_text_atomic(path: &Path, text: &str) -> Result<()> {
    Ok(gp::checkpoint::write_atomic(path, text.as_bytes())?)
}

#[derive(Serialize, Deserialize, Default)]
struct BenchResults {
    command: String,
    exact: Vec<RunReport>,
    tolerance: Vec<RunReport>,
    early_stopping: Vec<RunReport>,
}

fn bench(args: BenchArgs) -> Result<()> {
    let solvers: Vec<Solver> = args.solvers.iter().map(|s| Solver::from_name(s)).collect::<Result<_, _>>()?;
    let budgets: Vec<f64> = args
        .budgets
        .iter()
        .filter(|b| !b.trim().is_empty())
        .map(|b| b.trim().parse::<f64>().with_context(|| format!("budget '{b}' is not a number")))
        .collect::<Result<_>>()?;
    for name in &args.datasets {
        if !uci::KNOWN_DATASETS.contains(&name.as_str()) {
            bail!(gp::GpError::UnknownDataset(name.clone()));
        }
    }
    let mut results =
        BenchResults { command: std::env::args().collect::<Vec<_>>().join(" "), ..Default::default() };
    let common = &args.common;
    let started = Instant::now();
    for name in &args.datasets {
        let data = prepare_data(name, common, Some(args.subsample))?;
        eprintln!(
            "bench {name}: n_train {}, n_test {}, d {} ({})",
            data.split.x_train.nrows(),
            data.split.x_test.nrows(),
            data.split.x_train.ncols(),
            data.source
        );
        let record = |kind: &str, report: RunReport, results: &mut BenchResults| -> Result<()> {
            eprintln!(
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
            );
            match kind {
                "exact" => results.exact.push(report),
                "tolerance" => results.tolerance.push(report),
                _ => results.early_stopping.push(report),
            }
            // Rewrite the tables after every run, so partial results survive an interrupted bench.
            write_json_atomic(&args.out_dir.join("bench.json"), &*results)?;
            write_text_atomic(&args.out_dir.join("bench.md"), &markdown(results))?;
            Ok(())
        };
        let exact = config_from(common, Solver::Cholesky, EstimatorKind::Exact, false, 0.0);
        let report = run_one(name, &data, common, Some(args.subsample), &exact, false, None)?;
        record("exact", report, &mut results)?;
        if !args.skip_tolerance {
            for solver in &solvers {
                for estimator in [EstimatorKind::Standard, EstimatorKind::Pathwise] {
                    for warm in [false, true] {
                        let config = config_from(common, solver.clone(), estimator, warm, args.max_epochs);
                        let report =
                            run_one(name, &data, common, Some(args.subsample), &config, false, None)?;
                        record("tolerance", report, &mut results)?;
                    }
                }
            }
        }
        for solver in &solvers {
            for &budget in &budgets {
                for warm in [false, true] {
                    let config = config_from(common, solver.clone(), EstimatorKind::Pathwise, warm, budget);
                    let report = run_one(name, &data, common, Some(args.subsample), &config, false, None)?;
                    record("early", report, &mut results)?;
                }
            }
        }
    }
    eprintln!(
        "bench done in {:.0}s; wrote {}",
        started.elapsed().as_secs_f64(),
        args.out_dir.join("bench.md").display()
    );
    Ok(())
}

fn fmt_opt(m: Option<f64>, digits: usize) -> String {
    m.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

/// The markdown tables of a (possibly partial) bench.
fn markdown(results: &BenchResults) -> String {
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

/// Reads a bench.json (or bench.json.gz).
fn read_bench(path: &Path) -> Result<BenchResults> {
    let text = if path.extension().is_some_and(|e| e == "gz") {
        uci::read_gz(path)?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a bench.json of igp bench", path.display()))
}

fn report(args: ReportArgs) -> Result<()> {
    let mut merged = BenchResults::default();
    let mut commands = Vec::new();
    for path in &args.inputs {
        let part = read_bench(path)?;
        commands.push(format!("`{}`", part.command));
        // Every bench run repeats the exact baseline of its datasets; keep the first.
        for e in part.exact {
            if !merged.exact.iter().any(|m| m.dataset == e.dataset) {
                merged.exact.push(e);
            }
        }
        // A later input replaces a run of the same configuration (a rerun after a fix).
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
    if merged.tolerance.is_empty() && merged.early_stopping.is_empty() {
        bail!("no solver runs in {} input file(s)", args.inputs.len());
    }
    merged.command = std::env::args().collect::<Vec<_>>().join(" ");
    let runs: String = commands.iter().map(|c| format!("- {c}\n")).collect();
    let text = format!("{}\nBench runs merged here:\n\n{runs}\n{}", summary(&merged), markdown(&merged));
    write_text_atomic(&args.out, &text)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
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
fn summary(r: &BenchResults) -> String {
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
