//! `phpo`: hyperparameter optimisation through network partitioning on MNIST. With no flags,
//! rotated MNIST on the embedded 5 000-image subset, every baseline, report in
//! `runs/partition-hpo`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use foundation::cli::{exit_code, keep_freed_memory, Bar};
use partition_hpo::experiment::{default_config, run_experiment, Method, Task};
use partition_hpo::hpo::{PsiInit, PsiOptimizer};
use partition_hpo::model::PsiUse;

const EXAMPLES: &str = "\
Examples:
  phpo                                              # rotated embedded MNIST, all baselines, runs/partition-hpo
  phpo --task plain --methods partitioned,none --out runs/phpo-plain
  phpo --task noise --out runs/phpo-noise           # 200 noise features, learned input mask
  phpo --data ../shared/data/mnist --n-train 5000 --n-test 10000 --out runs/phpo-rot5k";

/// Learn augmentation ranges, input masks and dropout rates from the out-of-training-sample loss
/// of a partitioned network, in one training run; compare with the baselines.
#[derive(Parser)]
#[command(name = "phpo", version, after_help = EXAMPLES)]
struct Cli {
    /// Data set: rotated MNIST, plain MNIST, or MNIST with appended noise features.
    #[arg(long, value_enum, default_value = "rotated")]
    task: Task,
    /// MNIST directory with the four IDX files (default: the embedded subset).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output directory (report.md, results.json, PNGs).
    #[arg(long, default_value = "runs/partition-hpo")]
    out: PathBuf,
    /// Training images.
    #[arg(long)]
    n_train: Option<usize>,
    /// Test images.
    #[arg(long)]
    n_test: Option<usize>,
    /// Methods to run (default: all that apply to the task).
    #[arg(long, value_enum, value_delimiter = ',')]
    methods: Option<Vec<Method>>,
    /// Parts of psi to use and learn: any of rotation, mask, dropout (default: rotation, or mask
    /// for the noise task).
    #[arg(long, value_delimiter = ',')]
    psi: Option<Vec<String>>,
    /// Parameter steps of every run.
    #[arg(long)]
    steps: Option<usize>,
    /// Examples per parameter step.
    #[arg(long)]
    batch: Option<usize>,
    /// Channels of 3x3 stride-2 convolutions on the image before the MLP (a small CNN), e.g. 16,32.
    #[arg(long, value_delimiter = ',')]
    conv: Option<Vec<usize>>,
    /// Hidden widths of the MLP, e.g. 512,512.
    #[arg(long, value_delimiter = ',')]
    hidden: Option<Vec<usize>>,
    /// Number of partitions C.
    #[arg(long)]
    partitions: Option<usize>,
    /// Weight share of each partition (C values summing to 1; default equal).
    #[arg(long, value_delimiter = ',')]
    weight_proportions: Option<Vec<f64>>,
    /// Data share of each shard (C values summing to 1; default equal).
    #[arg(long, value_delimiter = ',')]
    data_proportions: Option<Vec<f64>>,
    /// A hyperparameter step every this many parameter steps.
    #[arg(long)]
    psi_every: Option<usize>,
    /// Learning rate of psi.
    #[arg(long)]
    psi_lr: Option<f64>,
    /// Optimiser of psi.
    #[arg(long, value_enum)]
    psi_optimizer: Option<PsiOptimizer>,
    /// Rows per shard (or per batch) in a hyperparameter step.
    #[arg(long)]
    psi_batch: Option<usize>,
    /// Augmentation samples averaged by the predictive (hyperparameter steps and evaluation).
    #[arg(long)]
    samples: Option<usize>,
    /// Augerino's width-regulariser weight.
    #[arg(long)]
    augerino_lambda: Option<f64>,
    /// Prior precision delta of the Laplace method (every weight and bias).
    #[arg(long)]
    laplace_prior: Option<f64>,
    /// Rotation ranges of the grid search, degrees.
    #[arg(long, value_delimiter = ',')]
    grid: Option<Vec<f64>>,
    /// Noise features of the noise task.
    #[arg(long)]
    noise_features: Option<usize>,
    /// Initial keep probability of every input feature of the mask, in (0, 1) (default 0.55).
    #[arg(long)]
    mask_keep: Option<f64>,
    /// Untrained partitions hold zeros instead of their initial values.
    #[arg(long)]
    zero_defaults: bool,
    /// Federated training (FedAvg) over this many label-skewed clients (each holds two label-sorted
    /// chunks of the training rows); every method runs federated.
    #[arg(long)]
    clients: Option<usize>,
    /// Communication rounds of the federated training (--steps counts a client's local steps
    /// over all rounds).
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// Only rewrite report.md and the PNGs of --out from its results.json.
    #[arg(long)]
    report_only: bool,
    /// Skip retraining the partitioned network with the learned psi.
    #[arg(long)]
    no_retrain: bool,
    /// Seed of every draw.
    #[arg(long)]
    seed: Option<u64>,
    /// Compute device: cpu (burn flex backend), cuda or wgpu (need the cargo features `cuda` /
    /// `wgpu`).
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn main() -> ExitCode {
    keep_freed_memory();
    exit_code(run(Cli::parse()))
}

fn run(cli: Cli) -> Result<()> {
    if cli.report_only {
        partition_hpo::experiment::rewrite_report(&cli.out)?;
        println!("report: {}", cli.out.join("report.md").display());
        return Ok(());
    }
    let device = foundation::cli::device(&cli.device)?;
    let mut config = default_config(cli.task, &cli.out);
    config.data = cli.data;
    if let Some(n) = cli.n_train {
        config.n_train = n;
    }
    if let Some(n) = cli.n_test {
        config.n_test = n;
    }
    let methods_given = cli.methods.is_some();
    if let Some(m) = cli.methods {
        config.methods = m;
    }
    if let Some(list) = cli.psi {
        let mut u = PsiUse { rotation: false, mask: false, dropout: false };
        for p in &list {
            match p.as_str() {
                "rotation" => u.rotation = true,
                "mask" => u.mask = true,
                "dropout" => u.dropout = true,
                other => anyhow::bail!("unknown psi part {other:?} (expected rotation, mask or dropout)"),
            }
        }
        config.psi_use = Some(u);
    }
    let r = &mut config.run;
    if let Some(v) = cli.steps {
        r.steps = v;
    }
    if let Some(v) = cli.batch {
        r.batch = v;
    }
    if let Some(v) = cli.conv {
        r.conv_channels = v;
    }
    if let Some(v) = cli.hidden {
        r.hidden = v;
    }
    if let Some(c) = cli.partitions {
        r.partitions = c;
        r.weight_proportions = vec![1.0 / c.max(1) as f64; c];
        r.data_proportions = vec![1.0 / c.max(1) as f64; c];
    }
    if let Some(v) = cli.weight_proportions {
        r.weight_proportions = v;
    }
    if let Some(v) = cli.data_proportions {
        r.data_proportions = v;
    }
    if let Some(v) = cli.psi_every {
        r.psi_every = v;
    }
    if let Some(v) = cli.psi_lr {
        r.psi_lr = v;
    }
    if let Some(v) = cli.psi_optimizer {
        r.psi_optimizer = v;
    }
    r.zero_defaults = cli.zero_defaults;
    if let Some(v) = cli.mask_keep {
        if let PsiInit::Uniform { mask_keep, .. } = &mut r.init {
            *mask_keep = v;
        }
    }
    if let Some(v) = cli.psi_batch {
        r.psi_batch = v;
    }
    if let Some(v) = cli.samples {
        r.samples = v;
    }
    if let Some(clients) = cli.clients {
        config.federated = Some(partition_hpo::federated::FederatedConfig { clients, rounds: cli.rounds });
        // Grid, validation split and Laplace need central data.
        if !methods_given {
            config.methods.retain(|m| {
                matches!(m, Method::Partitioned | Method::None | Method::TrainLoss | Method::Augerino)
            });
        }
    }
    if let Some(v) = cli.augerino_lambda {
        config.augerino_lambda = v;
    }
    if let Some(v) = cli.laplace_prior {
        config.laplace_prior_precision = v;
    }
    if let Some(v) = cli.seed {
        r.seed = v;
    }
    if let Some(v) = cli.grid {
        config.grid_deg = v;
    }
    if let Some(v) = cli.noise_features {
        config.noise_features = v;
    }
    config.retrain = !cli.no_retrain;
    let bar = Bar::new();
    let started = std::time::Instant::now();
    let results = run_experiment(&config, &device, &bar, &|line| bar.suspend(|| eprintln!("{line}")))?;
    println!(
        "{} methods in {:.1} s; report: {}",
        results.len(),
        started.elapsed().as_secs_f64(),
        config.out.join("report.md").display()
    );
    Ok(())
}
