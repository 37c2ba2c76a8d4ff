//! `attribute`: which training images made this sample? K-FAC / EK-FAC influence for DDPMs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use attribution::bench::BenchConfig;
use attribution::benchmark::{default_config, BenchmarkConfig, LdsJob, Method, RetrainTopJob, Workers};
use attribution::classifier::{ClassMeasurement, ClassifierDemoConfig, ClassifierFitJob, ClassifierScoreJob};
use attribution::demo::DemoConfig;
use attribution::fit::CurvatureSettings;
use attribution::scoring::{merge_shards, FitJob, ScoreJob, ScoreSettings};
use attribution::{parse_shard, Measurement};
use burn::prelude::*;
use clap::{Args, Parser, Subcommand, ValueEnum};
use curvature::fit::GgnKind;
use curvature::CurvatureMeta;
use curvature::KfacApprox;
use diffusion::progress::LogLines;
use diffusion::run::DataArgs;
use diffusion::ModelConfig;
use foundation::cli::{exit_code, Bar};

const EXAMPLES: &str = "\
Examples:
  attribute demo                                  # the whole pipeline on the embedded two-class data
  attribute fit --run runs/ddpm --out runs/ddpm/ekfac.safetensors
  attribute score --run runs/ddpm --factors runs/ddpm/ekfac.safetensors --queries q.npy --out scores.npy
  attribute score ... --shard 0/4 --out scores-0.npy   # one of 4 shards of the training set
  attribute merge --out scores.npy scores-0.npy scores-1.npy scores-2.npy scores-3.npy
  attribute lds --out runs/lds --jobs 2           # LDS benchmark: EK-FAC vs TRAK, D-TRAK, ... (resumable)
  attribute lds --out runs/lds --shard 3/16       # one job-array task: train + measure its subset models
  attribute retrain-top --out runs/lds            # retraining without top influences (after lds)
  attribute classifier demo                       # a small MNIST CNN: EK-FAC influence of test predictions
  attribute classifier fit --model runs/attribution-classifier/classifier.safetensors --out cls-ekfac.safetensors
  attribute classifier score --model ... --factors cls-ekfac.safetensors --queries 16 --shard 0/2 --out s-0.npy";

#[derive(Parser)]
#[command(name = "attribute", version, about = "Influence-function data attribution for diffusion models", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Compute device: cpu (burn flex backend), cuda or wgpu (need the cargo features `cuda` /
    /// `wgpu`).
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
}

#[derive(Subcommand)]
enum Command {
    /// Fit (EK-)FAC curvature of a trained run on its training set.
    Fit(FitArgs),
    /// Score every training image against every query; writes a [queries x train] .npy.
    Score(ScoreArgs),
    /// Concatenate shard score matrices (in shard order) into one.
    Merge(MergeArgs),
    /// Factor-fitting and scoring throughput, side by side with the JAX reference
    /// (`bench/jax_kfac_bench.py`, which installs JAX when missing).
    Bench(BenchArgs),
    /// Main job: train a small DDPM on the embedded two-class data, sample queries, fit EK-FAC,
    /// score the training set, write report.md and PNG rows of proponents/opponents.
    Demo(DemoArgs),
    /// Linear datamodelling score of EK-FAC influence and the baselines: trains the full model,
    /// samples queries, retrains M subsets x K seeds, scores every method, writes lds.md/png.
    /// Resumable: rerun the same command after an interruption.
    Lds(LdsArgs),
    /// Retraining without top influences (needs a finished `lds` directory): removes each
    /// method's top-k training images for some queries, retrains, reports the loss increase.
    RetrainTop(RetrainTopArgs),
    /// Influence functions for an MNIST classifier (softmax cross-entropy GGN): demo, fit, score.
    #[command(subcommand)]
    Classifier(ClassifierCommand),
}

#[derive(Subcommand)]
enum ClassifierCommand {
    /// Train a small CNN on the embedded MNIST subset, fit EK-FAC, score the training set against
    /// test queries; report.md (label agreement of proponents vs chance) and rows.png.
    Demo(ClassifierDemoArgs),
    /// Fit (EK-)FAC curvature of a trained classifier on its training set.
    Fit(ClassifierFitArgs),
    /// Score (a shard of) the training set against the first test images; merge shards with
    /// `attribute merge`.
    Score(ClassifierScoreArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum ClassMeasurementArg {
    CrossEntropy,
    Margin,
}

impl ClassMeasurementArg {
    fn value(self) -> ClassMeasurement {
        match self {
            ClassMeasurementArg::CrossEntropy => ClassMeasurement::CrossEntropy,
            ClassMeasurementArg::Margin => ClassMeasurement::Margin,
        }
    }
}

#[derive(Args, Clone)]
struct ClassifierCurvatureArgs {
    /// Label draws per training image in each factor pass (GGN^model samples labels from the model).
    #[arg(long, default_value_t = 1)]
    factor_draws: u64,
    /// K-FAC variant for shared positions (conv pixels).
    #[arg(long, value_enum, default_value = "expand")]
    approx: ApproxArg,
    /// Which Gauss-Newton matrix: model (Fisher, sampled labels) or loss (empirical Fisher).
    #[arg(long, value_enum, default_value = "model")]
    ggn: GgnArg,
    /// Plain K-FAC (skip the EK-FAC eigenvalue correction pass).
    #[arg(long)]
    no_ekfac: bool,
    /// Images per forward/backward pass.
    #[arg(long, default_value_t = 250)]
    batch: usize,
    /// Seed of the sampled labels.
    #[arg(long, default_value_t = 0)]
    factor_seed: u64,
}

impl ClassifierCurvatureArgs {
    fn settings(&self) -> CurvatureSettings {
        CurvatureArgs {
            factor_draws: self.factor_draws,
            approx: self.approx,
            ggn: self.ggn,
            no_ekfac: self.no_ekfac,
            batch: self.batch,
            factor_seed: self.factor_seed,
        }
        .settings()
    }
}

#[derive(Args)]
struct ClassifierDemoArgs {
    /// Output directory.
    #[arg(long, default_value = "runs/attribution-classifier")]
    out: PathBuf,
    /// Queries: the first this many test images.
    #[arg(long, default_value_t = 20)]
    queries: usize,
    /// Proponents and opponents shown per query.
    #[arg(long, default_value_t = 6)]
    top_k: usize,
    /// Training epochs of the demo classifier.
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// What is attributed on the queries.
    #[arg(long, value_enum, default_value = "cross-entropy")]
    measurement: ClassMeasurementArg,
    /// Damping values (absolute, mean-loss GGN units); the first is the one shown.
    #[arg(long, value_delimiter = ',', default_value = "1e-3,1e-4,1e-2,1e-1,1")]
    lambda: Vec<f64>,
    #[command(flatten)]
    curvature: ClassifierCurvatureArgs,
}

#[derive(Args)]
struct ClassifierFitArgs {
    /// Classifier weights (e.g. the demo's classifier.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Directory with the MNIST IDX files (default: the embedded subset).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output factor file (.safetensors).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    curvature: ClassifierCurvatureArgs,
}

#[derive(Args)]
struct ClassifierScoreArgs {
    /// Classifier weights.
    #[arg(long)]
    model: PathBuf,
    /// Directory with the MNIST IDX files (default: the embedded subset).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Factor file from `attribute classifier fit`.
    #[arg(long)]
    factors: PathBuf,
    /// Queries: the first this many test images.
    #[arg(long, default_value_t = 20)]
    queries: usize,
    /// Output .npy ([queries x train] for the first lambda; other lambdas beside it).
    #[arg(long)]
    out: PathBuf,
    /// Score only shard i of n of the training set.
    #[arg(long)]
    shard: Option<String>,
    /// What is attributed on the queries.
    #[arg(long, value_enum, default_value = "cross-entropy")]
    measurement: ClassMeasurementArg,
    /// Damping values (absolute, mean-loss GGN units).
    #[arg(long, value_delimiter = ',', default_value = "1e-3,1e-4,1e-2,1e-1,1")]
    lambda: Vec<f64>,
    /// Training images per gradient pass (shards are aligned to it).
    #[arg(long, default_value_t = 100)]
    images_per_batch: usize,
    /// Refuse factors fitted with another GGN than this one.
    #[arg(long, value_enum)]
    expect_ggn: Option<GgnArg>,
    /// Refuse factors fitted with another number of label draws.
    #[arg(long)]
    expect_draws: Option<u64>,
    /// Refuse factors fitted with another seed.
    #[arg(long)]
    expect_seed: Option<u64>,
}

#[derive(Args)]
struct LdsArgs {
    /// Benchmark directory.
    #[arg(long, default_value = "runs/lds")]
    out: PathBuf,
    /// Only train and measure shard i of n of the subset models, then exit (for job arrays).
    #[arg(long)]
    shard: Option<String>,
    /// Train the subset models in this many parallel worker processes.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    #[command(flatten)]
    data: DataArgs,
    /// U-Net channels per level.
    #[arg(long, value_delimiter = ',')]
    channels: Option<Vec<usize>>,
    /// Steps of the full model.
    #[arg(long)]
    steps: Option<usize>,
    /// Steps of the subset models.
    #[arg(long)]
    subset_steps: Option<usize>,
    /// M, random subsets.
    #[arg(long)]
    subsets: Option<usize>,
    /// K, seeds per subset.
    #[arg(long)]
    seeds: Option<usize>,
    /// Q, generated queries.
    #[arg(long)]
    queries: Option<usize>,
    /// Draws per ground-truth measurement.
    #[arg(long)]
    measure_draws: Option<usize>,
    /// Draws per training gradient.
    #[arg(long)]
    train_draws: Option<u64>,
    /// Draws per query gradient.
    #[arg(long)]
    query_draws: Option<u64>,
    /// Draws per example per curvature pass.
    #[arg(long)]
    factor_draws: Option<u64>,
    /// TRAK projection dimension.
    #[arg(long)]
    trak_dim: Option<usize>,
    /// Damping grid.
    #[arg(long, value_delimiter = ',')]
    lambda: Option<Vec<f64>>,
}

impl LdsArgs {
    /// The settings: defaults with the flags applied; `None` when no setting flag was given.
    fn config(&self) -> Option<BenchmarkConfig> {
        let mut c = default_config();
        let mut any = self.data.any();
        self.data.apply(&mut c.data);
        macro_rules! set {
            ($field:ident => $target:expr) => {
                if let Some(v) = &self.$field {
                    $target = v.clone();
                    any = true;
                }
            };
        }
        set!(steps => c.train.steps);
        set!(subset_steps => c.subset_steps);
        set!(subsets => c.subsets);
        set!(seeds => c.seeds);
        set!(queries => c.queries);
        set!(measure_draws => c.measure_draws);
        set!(train_draws => c.train_draws);
        set!(query_draws => c.query_draws);
        set!(factor_draws => c.factor_draws);
        set!(trak_dim => c.trak_dim);
        set!(lambda => c.lambdas);
        if let ModelConfig::Unet(u) = &mut c.model {
            set!(channels => u.channels);
            u.height = c.data.size;
            u.width = c.data.size;
        }
        any.then_some(c)
    }
}

#[derive(Args)]
struct RetrainTopArgs {
    /// Benchmark directory of a finished `attribute lds`.
    #[arg(long, default_value = "runs/lds")]
    out: PathBuf,
    /// Use the first this many queries.
    #[arg(long, default_value_t = 8)]
    top_queries: usize,
    /// Methods whose top influences are removed (`random` = control).
    #[arg(long, value_delimiter = ',', default_value = "ekfac,dtrak,trak,random")]
    methods: Vec<String>,
    /// Removed fractions of the training set.
    #[arg(long, value_delimiter = ',', default_value = "0.02,0.1")]
    fractions: Vec<f64>,
    /// Only train shard i of n of the retraining jobs, then exit.
    #[arg(long)]
    shard: Option<String>,
    /// Train in this many parallel worker processes.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum ApproxArg {
    Expand,
    Reduce,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum GgnArg {
    Model,
    Loss,
}

#[derive(Clone, Copy, ValueEnum)]
enum MeasurementArg {
    Loss,
    SimplifiedElbo,
    SquareNorm,
    /// The loss at the single timestep given by --at-time.
    LossAtTime,
}

#[derive(Args, Clone)]
struct CurvatureArgs {
    /// Draws (t, noise) per training example in each factor pass.
    #[arg(long, default_value_t = 4)]
    factor_draws: u64,
    /// K-FAC variant for shared positions.
    #[arg(long, value_enum, default_value = "expand")]
    approx: ApproxArg,
    /// Which Gauss-Newton matrix.
    #[arg(long, value_enum, default_value = "model")]
    ggn: GgnArg,
    /// Plain K-FAC (skip the EK-FAC eigenvalue correction pass).
    #[arg(long)]
    no_ekfac: bool,
    /// Data per forward/backward pass.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Seed of the curvature draws.
    #[arg(long, default_value_t = 0)]
    factor_seed: u64,
}

#[derive(Args)]
struct FitArgs {
    /// Run directory of a trained model (from `ddpm train`).
    #[arg(long)]
    run: PathBuf,
    /// Output factor file (.safetensors).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    curvature: CurvatureArgs,
}

#[derive(Args, Clone)]
struct ScoringArgs {
    /// Draws averaged per training gradient.
    #[arg(long, default_value_t = 16)]
    train_draws: u64,
    /// Draws averaged per query gradient.
    #[arg(long, default_value_t = 64)]
    query_draws: u64,
    /// What is attributed on the queries.
    #[arg(long, value_enum, default_value = "loss")]
    measurement: MeasurementArg,
    /// Timestep of --measurement loss-at-time.
    #[arg(long, default_value_t = 100)]
    at_time: usize,
    /// Damping values (absolute, mean-loss GGN units); the first is the one reported.
    #[arg(long, value_delimiter = ',', default_value = "1e-6,1e-8,1e-7,1e-5,1e-4,1e-3,1e-2,1e-1")]
    lambda: Vec<f64>,
    /// Training images per gradient pass.
    #[arg(long, default_value_t = 8)]
    images_per_batch: usize,
    /// Seed of the gradient draws.
    #[arg(long, default_value_t = 1)]
    gradient_seed: u64,
}

#[derive(Args)]
struct ScoreArgs {
    /// Run directory of a trained model.
    #[arg(long)]
    run: PathBuf,
    /// Factor file from `attribute fit`.
    #[arg(long)]
    factors: PathBuf,
    /// Queries: a [Q, D] f32 .npy of images in [-1, 1] (D = the model's pixels).
    #[arg(long)]
    queries: PathBuf,
    /// Output .npy ([queries x train] for the first lambda; other lambdas beside it).
    #[arg(long)]
    out: PathBuf,
    /// Score only shard i of n of the training set (contiguous, balanced).
    #[arg(long)]
    shard: Option<String>,
    #[command(flatten)]
    scoring: ScoringArgs,
}

#[derive(Args)]
struct MergeArgs {
    /// Output .npy.
    #[arg(long)]
    out: PathBuf,
    /// Shard files, in shard order.
    shards: Vec<PathBuf>,
}

#[derive(Args)]
struct BenchArgs {
    /// Image side.
    #[arg(long, default_value_t = 14)]
    size: usize,
    /// U-Net base channels (levels: base, 2 x base).
    #[arg(long, default_value_t = 16)]
    base: usize,
    /// Data per factor-pass batch.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Training images per scoring batch.
    #[arg(long, default_value_t = 8)]
    images_per_batch: usize,
    /// Draws per training gradient.
    #[arg(long, default_value_t = 16)]
    draws: u64,
    /// Queries scored against.
    #[arg(long, default_value_t = 8)]
    queries: usize,
    /// Timed repetitions (after 2 warm-up ones).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Skip the JAX reference.
    #[arg(long)]
    no_jax: bool,
}

#[derive(Args)]
struct DemoArgs {
    /// Output directory.
    #[arg(long, default_value = "runs/attribution-demo")]
    out: PathBuf,
    /// Generated queries.
    #[arg(long, default_value_t = 8)]
    queries: usize,
    /// Proponents and opponents shown per query.
    #[arg(long, default_value_t = 6)]
    top_k: usize,
    /// Training steps of the demo model.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    #[command(flatten)]
    curvature: CurvatureArgs,
    #[command(flatten)]
    scoring: ScoringArgs,
}

fn main() -> ExitCode {
    foundation::cli::keep_freed_memory();
    let cli = Cli::parse();
    let dev = match foundation::cli::device(&cli.device) {
        Ok(d) => d,
        Err(e) => return exit_code(Err(e)),
    };
    let result = match cli.command {
        Command::Fit(a) => fit_cmd(a, &dev),
        Command::Score(a) => score_cmd(a, &dev),
        Command::Merge(a) => merge_cmd(a),
        Command::Demo(a) => demo(a, &dev),
        Command::Bench(a) => bench(a, &dev),
        Command::Lds(a) => lds_cmd(a, &dev),
        Command::RetrainTop(a) => retrain_top_cmd(a, &dev),
        Command::Classifier(c) => classifier_cmd(c, &dev),
    };
    exit_code(result)
}

impl CurvatureArgs {
    fn settings(&self) -> CurvatureSettings {
        CurvatureSettings {
            factor_draws: self.factor_draws,
            approx: match self.approx {
                ApproxArg::Expand => KfacApprox::Expand,
                ApproxArg::Reduce => KfacApprox::Reduce,
            },
            ggn: match self.ggn {
                GgnArg::Model => GgnKind::Model,
                GgnArg::Loss => GgnKind::Loss,
            },
            ekfac: !self.no_ekfac,
            batch: self.batch,
            seed: self.factor_seed,
        }
    }
}

impl ScoringArgs {
    fn settings(&self) -> ScoreSettings {
        ScoreSettings {
            train_draws: self.train_draws,
            query_draws: self.query_draws,
            measurement: match self.measurement {
                MeasurementArg::Loss => Measurement::Loss,
                MeasurementArg::SimplifiedElbo => Measurement::SimplifiedElbo,
                MeasurementArg::SquareNorm => Measurement::SquareNorm,
                MeasurementArg::LossAtTime => Measurement::LossAtTime(self.at_time),
            },
            lambdas: self.lambda.clone(),
            images_per_batch: self.images_per_batch,
            gradient_seed: self.gradient_seed,
        }
    }
}

fn shard(s: &Option<String>) -> Result<Option<(usize, usize)>> {
    s.as_deref().map(parse_shard).transpose().map_err(anyhow::Error::msg)
}

fn fit_cmd(a: FitArgs, dev: &Device) -> Result<()> {
    let t = Instant::now();
    let job = FitJob { run: a.run, out: a.out, curvature: a.curvature.settings() };
    let layers = job.run(dev, &Bar::new())?;
    eprintln!("fitted {layers} layers in {:.1} s -> {}", t.elapsed().as_secs_f64(), job.out.display());
    Ok(())
}

fn score_cmd(a: ScoreArgs, dev: &Device) -> Result<()> {
    let job = ScoreJob {
        run: a.run,
        factors: a.factors,
        queries: a.queries,
        out: a.out,
        shard: shard(&a.shard)?.unwrap_or((0, 1)),
        settings: a.scoring.settings(),
    };
    let (qn, cols) = job.run(dev, &Bar::new())?;
    eprintln!("wrote {} ({qn} x {cols}, lambda {:e})", job.out.display(), job.settings.lambdas[0]);
    Ok(())
}

fn merge_cmd(a: MergeArgs) -> Result<()> {
    let (rows, cols) = merge_shards(&a.out, &a.shards)?;
    eprintln!("merged {} shards into {} ({rows} x {cols})", a.shards.len(), a.out.display());
    Ok(())
}

fn demo(a: DemoArgs, dev: &Device) -> Result<()> {
    let config = DemoConfig {
        out: a.out,
        queries: a.queries,
        top_k: a.top_k,
        steps: a.steps,
        curvature: a.curvature.settings(),
        scoring: a.scoring.settings(),
    };
    println!("{}", config.run(dev, &Bar::new())?.display());
    Ok(())
}

fn bench(a: BenchArgs, dev: &Device) -> Result<()> {
    let config = BenchConfig {
        size: a.size,
        base: a.base,
        batch: a.batch,
        images_per_batch: a.images_per_batch,
        draws: a.draws,
        queries: a.queries,
        steps: a.steps,
        jax: !a.no_jax,
    };
    let result = config.run(dev, &Bar::new())?;
    if let Some(note) = &result.jax_note {
        eprintln!("{note}");
    }
    println!("{}", config.report(&result));
    Ok(())
}

fn workers(jobs: usize) -> Result<Workers> {
    Ok(Workers { exe: std::env::current_exe().context("locating this binary")?, jobs })
}

fn lds_cmd(a: LdsArgs, dev: &Device) -> Result<()> {
    let job = LdsJob { config: a.config(), shard: shard(&a.shard)?, out: a.out.clone() };
    if let Some(md) = job.run(&workers(a.jobs)?, dev, &LogLines::new())? {
        println!("{md}");
        eprintln!("wrote {}", a.out.join("lds.md").display());
    }
    Ok(())
}

fn retrain_top_cmd(a: RetrainTopArgs, dev: &Device) -> Result<()> {
    let job = RetrainTopJob {
        shard: shard(&a.shard)?,
        methods: a
            .methods
            .iter()
            .map(|m| m.parse::<Method>())
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?,
        out: a.out.clone(),
        top_queries: a.top_queries,
        fractions: a.fractions,
    };
    if let Some(md) = job.run(&workers(a.jobs)?, dev, &LogLines::new())? {
        println!("{md}");
        eprintln!("wrote {}", a.out.join("retrain-top.md").display());
    }
    Ok(())
}

fn ggn_kind(g: GgnArg) -> GgnKind {
    match g {
        GgnArg::Model => GgnKind::Model,
        GgnArg::Loss => GgnKind::Loss,
    }
}

fn classifier_cmd(c: ClassifierCommand, dev: &Device) -> Result<()> {
    match c {
        ClassifierCommand::Demo(a) => {
            let config = ClassifierDemoConfig {
                out: a.out,
                queries: a.queries,
                top_k: a.top_k,
                epochs: a.epochs,
                curvature: a.curvature.settings(),
                measurement: a.measurement.value(),
                lambdas: a.lambda,
            };
            println!("{}", config.run(dev, &Bar::new())?.display());
        }
        ClassifierCommand::Fit(a) => {
            let t = Instant::now();
            let job = ClassifierFitJob {
                model: a.model,
                data: a.data,
                out: a.out,
                curvature: a.curvature.settings(),
            };
            let layers = job.run(dev, &Bar::new())?;
            eprintln!(
                "fitted {layers} layers in {:.1} s -> {}",
                t.elapsed().as_secs_f64(),
                job.out.display()
            );
        }
        ClassifierCommand::Score(a) => {
            let expect = (a.expect_ggn.is_some() || a.expect_draws.is_some() || a.expect_seed.is_some())
                .then(|| CurvatureMeta {
                    loss: curvature::LossKind::CrossEntropy,
                    ggn: a.expect_ggn.map(ggn_kind),
                    draws: a.expect_draws,
                    seed: a.expect_seed,
                });
            let job = ClassifierScoreJob {
                model: a.model,
                data: a.data,
                factors: a.factors,
                queries: a.queries,
                out: a.out,
                shard: shard(&a.shard)?.unwrap_or((0, 1)),
                measurement: a.measurement.value(),
                lambdas: a.lambda,
                images_per_batch: a.images_per_batch,
                expect,
            };
            let (qn, cols) = job.run(dev, &Bar::new())?;
            eprintln!("wrote {} ({qn} x {cols}, lambda {:e})", job.out.display(), job.lambdas[0]);
        }
    }
    Ok(())
}
