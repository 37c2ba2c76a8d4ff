//! `igp`: iterative Gaussian-process hyperparameter optimisation on UCI regression data.
//!
//! `igp fit` runs one configuration; `igp bench` runs the grid of solvers × estimators × warm start
//! (to tolerance) and the early-stopping grid, and writes a markdown table; `igp report` merges
//! bench runs. Argument parsing and printing only: the work is in [`gp::experiment`].

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use foundation::cli::Bar;
use gp::estimator::EstimatorKind;
use gp::experiment::{self, BenchConfig, CheckpointPlan, DataConfig, FitConfig};
use gp::kernel::KernelKind;
use gp::predict::Metrics;
use gp::solvers::{SolveOptions, Solver};
use gp::train::TrainConfig;

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
        or ../shared/data (without any, pol comes from a 600-row embedded subset); or --dataset PATH to \
        such a folder or to a CSV file (header optional, --target COLUMN, split k tests rows i % 10 == k)."
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
    /// Target column of a CSV data set: `last`, a zero-based index, or a header name.
    #[arg(long, default_value = "last")]
    target: String,
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
    /// Data set: a name under <data-dir>/uci/ (pol, elevators, bike, or any folder in that
    /// layout), a path to such a folder, or a CSV file (.csv or .csv.gz).
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
    /// Continue the run stored in --checkpoint (same data and settings; --steps may be larger);
    /// an error if there is no checkpoint.
    #[arg(long, requires = "checkpoint")]
    resume: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Comma-separated data sets (names, folders or CSV files).
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

fn main() {
    foundation::cli::keep_freed_memory();
    if let Err(err) = run() {
        // One line naming the problem (the chain joined), non-zero exit.
        let chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
        eprintln!("igp: error: {}", chain.join(": "));
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    match cli.command {
        Command::Fit(args) => fit(args),
        Command::Bench(args) => bench(args, command),
        Command::Report(args) => {
            experiment::report(&args.inputs, &args.out, &command)?;
            eprintln!("wrote {}", args.out.display());
            Ok(())
        }
    }
}

fn data_config(common: &CommonArgs) -> Result<DataConfig> {
    Ok(DataConfig {
        data_dir: common.data_dir.clone(),
        embedded: common.embedded,
        target: common.target.parse()?,
        split: common.split,
        seed: common.seed,
    })
}

fn train_config(
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

fn fit(args: FitArgs) -> Result<()> {
    let config = FitConfig {
        dataset: args.dataset.clone(),
        data: data_config(&args.common)?,
        subsample: args.subsample,
        train: train_config(
            &args.common,
            Solver::from_name(&args.solver)?,
            args.estimator,
            args.warm_start,
            args.max_epochs,
        ),
        exact_metrics_max_n: args.common.exact_metrics_max_n,
        checkpoint: args.checkpoint.clone().map(|path| CheckpointPlan {
            path,
            every: args.checkpoint_every as usize,
            resume: args.resume,
        }),
    };
    let bar = Bar::new();
    let train = &config.train;
    let report = experiment::fit(
        &config,
        &bar,
        &mut |data| {
            eprintln!(
                "igp fit: {} split {} ({}), n_train {}, n_test {}, d {}; solver {}, estimator {}, warm start {}, max epochs {}",
                data.name,
                data.split_index,
                data.source,
                data.split.x_train.nrows(),
                data.split.x_test.nrows(),
                data.split.x_train.ncols(),
                train.solver.name(),
                train.estimator,
                train.warm_start,
                train.solve_options.max_epochs
            )
        },
        &mut |record| {
            if !args.quiet {
                bar.suspend(|| eprintln!("{}", experiment::format_step(record)));
            }
        },
    )?;
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
        experiment::write_json(out, &report)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

fn bench(args: BenchArgs, command: String) -> Result<()> {
    let solvers: Vec<Solver> = args.solvers.iter().map(|s| Solver::from_name(s)).collect::<Result<_, _>>()?;
    let budgets: Vec<f64> = args
        .budgets
        .iter()
        .filter(|b| !b.trim().is_empty())
        .map(|b| b.trim().parse::<f64>().with_context(|| format!("budget '{b}' is not a number")))
        .collect::<Result<_>>()?;
    let config = BenchConfig {
        datasets: args.datasets.clone(),
        data: data_config(&args.common)?,
        solvers,
        subsample: args.subsample,
        budgets,
        max_epochs: args.max_epochs,
        skip_tolerance: args.skip_tolerance,
        base: train_config(&args.common, Solver::cg(), EstimatorKind::Pathwise, false, args.max_epochs),
        exact_metrics_max_n: args.common.exact_metrics_max_n,
        out_dir: args.out_dir.clone(),
        command,
    };
    let started = Instant::now();
    let bar = Bar::new();
    experiment::bench(&config, &bar, &mut |line| bar.suspend(|| eprintln!("{line}")))?;
    eprintln!(
        "bench done in {:.0}s; wrote {}",
        started.elapsed().as_secs_f64(),
        args.out_dir.join("bench.md").display()
    );
    Ok(())
}
