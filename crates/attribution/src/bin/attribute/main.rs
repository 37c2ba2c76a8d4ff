//! `attribute`: which training images made this sample? K-FAC / EK-FAC influence for DDPMs.

mod benchmark;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use attribution::fit::{fit_curvature, CurvatureSettings};
use attribution::npy::{read_matrix, write_matrix};
use attribution::{parse_shard, shard_range, DiffusionTask, Measurement, Role, Scorer};
use burn::module::{Module, ParamId};
use burn::prelude::*;
use clap::{Args, Parser, Subcommand, ValueEnum};
use curvature::diffusion_batch::DiffusionBatch;
use curvature::fit::{fit_factors, GgnKind};
use curvature::{EigenCurvature, KfacApprox, LayerInfo};
use diffusion::checkpoint::write_atomic;
use diffusion::progress::{bar, exit_code};
use diffusion::run::{
    is_finished, load_trained, train_run, DataArgs, DataSpec, RunConfig, TrainEvent, TrainedModel,
};
use diffusion::tap::{layer_names, Tap};
use diffusion::{
    sample, AnyDenoiser, Denoiser, ModelConfig, ReverseVariance, Sampler, TrainConfig, UNetConfig,
};

const EXAMPLES: &str = "\
Examples:
  attribute demo                                  # the whole pipeline on the embedded two-class data
  attribute fit --run runs/ddpm --out runs/ddpm/ekfac.safetensors
  attribute score --run runs/ddpm --factors runs/ddpm/ekfac.safetensors --queries q.npy --out scores.npy
  attribute score ... --shard 0/4 --out scores-0.npy   # one of 4 shards of the training set
  attribute merge --out scores.npy scores-0.npy scores-1.npy scores-2.npy scores-3.npy
  attribute lds --out runs/lds --jobs 2           # LDS benchmark: EK-FAC vs TRAK, D-TRAK, ... (resumable)
  attribute lds --out runs/lds --shard 3/16       # one job-array task: train + measure its subset models
  attribute retrain-top --out runs/lds            # retraining without top influences (after lds)";

#[derive(Parser)]
#[command(name = "attribute", version, about = "Influence-function data attribution for diffusion models", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    fn config(&self) -> Option<benchmark::BenchmarkConfig> {
        let mut c = benchmark::default_config();
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

#[derive(Clone, Copy, ValueEnum)]
enum ApproxArg {
    Expand,
    Reduce,
}

#[derive(Clone, Copy, ValueEnum)]
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
    let cli = Cli::parse();
    let dev = Device::flex();
    let result = match cli.command {
        Command::Fit(a) => fit_cmd(a, &dev),
        Command::Score(a) => score_cmd(a, &dev),
        Command::Merge(a) => merge_cmd(a),
        Command::Demo(a) => demo(a, &dev),
        Command::Bench(a) => bench(a, &dev),
        Command::Lds(a) => lds_cmd(a, &dev),
        Command::RetrainTop(a) => retrain_top_cmd(a, &dev),
    };
    exit_code(result)
}

/// The covered layers of a model, from one recording forward pass.
fn layer_infos(model: &AnyDenoiser, dev: &Device) -> Vec<LayerInfo> {
    let d = model.data_dim();
    let ad = dev.clone().autodiff();
    let m = model.clone().fork(&ad);
    let names = layer_names(&m);
    let mut tap = Tap::recording();
    let y = m.forward_tapped(Tensor::zeros([1, d], &ad), Tensor::zeros([1], &ad), &mut tap);
    let grads = y.sum().backward();
    let mut acc = curvature::factors::FactorAccumulator::new(KfacApprox::Expand);
    let name = |id: u64| names.get(&ParamId::from(id)).cloned().unwrap_or_default();
    acc.add_activations(tap.records(), &name);
    acc.add_gradients(tap.records(), &grads);
    acc.add_data(1);
    acc.finish().layers.into_iter().map(|l| l.info).collect()
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

fn fit(trained: &TrainedModel, args: &CurvatureArgs, dev: &Device) -> Result<EigenCurvature> {
    let (_, data) = trained.config.train_data().context("loading training data")?;
    let passes = if args.no_ekfac { 1 } else { 2 };
    let pb = bar(passes * data.n as u64 * args.factor_draws, "factors");
    let fitted =
        fit_curvature(&trained.model, &trained.diffusion, &data, &args.settings(), dev, |n| pb.inc(n as u64));
    pb.finish();
    Ok(fitted.best())
}

fn fit_cmd(a: FitArgs, dev: &Device) -> Result<()> {
    let trained = load_trained(&a.run, dev)?;
    let t = Instant::now();
    let curv = fit(&trained, &a.curvature, dev)?;
    curv.save(&a.out)?;
    eprintln!(
        "fitted {} layers in {:.1} s -> {}",
        curv.layers.len(),
        t.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

fn task(trained: &TrainedModel, s: &ScoringArgs) -> DiffusionTask {
    DiffusionTask {
        diffusion: trained.diffusion.clone(),
        train_output: Measurement::Loss,
        measurement: match s.measurement {
            MeasurementArg::Loss => Measurement::Loss,
            MeasurementArg::SimplifiedElbo => Measurement::SimplifiedElbo,
            MeasurementArg::SquareNorm => Measurement::SquareNorm,
            MeasurementArg::LossAtTime => Measurement::LossAtTime(s.at_time),
        },
        train_draws: s.train_draws,
        query_draws: s.query_draws,
        seed: s.gradient_seed,
    }
}

/// Scores `[L][Q x range]` of the training images in `range` against `queries` (`[Q, D]`).
fn score(
    trained: &TrainedModel,
    curv: &EigenCurvature,
    queries: &[f32],
    range: std::ops::Range<usize>,
    s: &ScoringArgs,
    dev: &Device,
) -> Result<Vec<Vec<f32>>> {
    if matches!(s.measurement, MeasurementArg::LossAtTime) && s.at_time >= trained.diffusion.steps() {
        bail!("--at-time {}: must be below T = {}", s.at_time, trained.diffusion.steps());
    }
    for &l in &s.lambda {
        if !(l.is_finite() && l > 0.0) {
            bail!("--lambda {l}: damping must be a positive number");
        }
    }
    let (ds, _) = trained.config.train_data().context("loading training data")?;
    let ad = dev.clone().autodiff();
    let model = trained.model.clone().fork(&ad);
    let task = task(trained, s);
    let d = model.data_dim();
    let q = queries.len() / d;
    let qids: Vec<usize> = (0..q).collect();
    let qg = task.gradients(&model, queries, &qids, Role::Query, &ad).inner();
    check_finite(&qg, "query gradients")?;
    let scorer = Scorer::new(curv, qg, s.lambda.clone());
    let n = range.len();
    let mut out = vec![vec![0f32; q * n]; s.lambda.len()];
    let pb = bar(n as u64, "score");
    let ids: Vec<usize> = range.clone().collect();
    for chunk in ids.chunks(s.images_per_batch.max(1)) {
        let rows: Vec<f32> = chunk.iter().flat_map(|&i| ds.image(i).iter().copied()).collect();
        let g = task.gradients(&model, &rows, chunk, Role::Train, &ad).inner();
        check_finite(&g, "training gradients")?;
        let b = chunk.len();
        for (li, sc) in scorer.score(g).into_iter().enumerate() {
            for qi in 0..q {
                for j in 0..b {
                    out[li][qi * n + (chunk[j] - range.start)] = sc[qi * b + j];
                }
            }
        }
        pb.inc(b as u64);
    }
    pb.finish();
    Ok(out)
}

fn check_finite(t: &Tensor<2>, what: &str) -> Result<()> {
    let s: f32 = t.clone().abs().sum().into_scalar();
    if !s.is_finite() {
        bail!("{what} contain NaN or infinity (is the model diverged?)");
    }
    Ok(())
}

fn lambda_path(out: &Path, lambda: f64) -> PathBuf {
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("scores");
    out.with_file_name(format!("{stem}.lambda-{lambda:e}.npy"))
}

fn score_cmd(a: ScoreArgs, dev: &Device) -> Result<()> {
    let trained = load_trained(&a.run, dev)?;
    let infos = layer_infos(&trained.model, dev);
    let curv = EigenCurvature::load(&a.factors, Some(&infos))?;
    let (queries, qn, qd) = read_matrix(&a.queries).with_context(|| a.queries.display().to_string())?;
    let d = trained.model.data_dim();
    if qd != d {
        bail!("{}: queries have {qd} pixels, the model takes {d}", a.queries.display());
    }
    if queries.iter().any(|v| !v.is_finite()) {
        bail!("{}: queries contain NaN or infinity", a.queries.display());
    }
    let n_train = trained.config.train_data()?.0.n;
    let (i, n) = match &a.shard {
        Some(s) => parse_shard(s).map_err(anyhow::Error::msg)?,
        None => (0, 1),
    };
    // Shards own whole scoring batches (aligned to --images-per-batch from image 0), so every
    // image is scored in the same batch composition sharded or not: the merge is bit-exact.
    let per_batch = a.scoring.images_per_batch.max(1);
    let batches = shard_range(n_train.div_ceil(per_batch), i, n);
    let range = (batches.start * per_batch)..(batches.end * per_batch).min(n_train);
    let cols = range.len();
    let scores = score(&trained, &curv, &queries, range, &a.scoring, dev)?;
    write_matrix(&a.out, &scores[0], qn, cols)?;
    for (l, s) in a.scoring.lambda.iter().zip(&scores).skip(1) {
        write_matrix(&lambda_path(&a.out, *l), s, qn, cols)?;
    }
    eprintln!("wrote {} ({qn} x {cols}, lambda {:e})", a.out.display(), a.scoring.lambda[0]);
    Ok(())
}

fn merge_cmd(a: MergeArgs) -> Result<()> {
    if a.shards.is_empty() {
        bail!("merge needs at least one shard file");
    }
    let mut parts = Vec::new();
    for p in &a.shards {
        parts.push(read_matrix(p).with_context(|| p.display().to_string())?);
    }
    let rows = parts[0].1;
    if let Some((_, r, _)) = parts.iter().find(|p| p.1 != rows) {
        bail!("shards disagree on the number of queries ({rows} vs {r})");
    }
    let cols: usize = parts.iter().map(|p| p.2).sum();
    let mut out = vec![0f32; rows * cols];
    let mut off = 0;
    for (data, _, c) in &parts {
        for r in 0..rows {
            out[r * cols + off..r * cols + off + c].copy_from_slice(&data[r * c..(r + 1) * c]);
        }
        off += c;
    }
    write_matrix(&a.out, &out, rows, cols)?;
    eprintln!("merged {} shards into {} ({rows} x {cols})", a.shards.len(), a.out.display());
    Ok(())
}

/// 8-bit quantisation, as if the sample had been saved as a PNG (spec p1 §1.3).
pub(crate) fn quantise(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| data::to_u8(v) as f32 / 255.0 * 2.0 - 1.0).collect()
}

fn demo(a: DemoArgs, dev: &Device) -> Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(&a.out).with_context(|| a.out.display().to_string())?;
    // 1. A small DDPM on the embedded MNIST {0, 1} subset at 14x14 (N = 1000).
    let run = a.out.join("model");
    let config = RunConfig {
        model: ModelConfig::Unet(UNetConfig {
            height: 14,
            width: 14,
            channels: vec![16, 32],
            ..UNetConfig::default()
        }),
        diffusion: Default::default(),
        train: TrainConfig {
            steps: a.steps,
            batch_size: 64,
            lr: 1e-3,
            ema_decay: 0.995,
            ..TrainConfig::default()
        },
        data: DataSpec { classes: vec![0, 1], size: 14, ..DataSpec::default() },
    };
    let t0 = Instant::now();
    let reuse = is_finished(&run, &config);
    if !reuse && RunConfig::load(&run).is_ok_and(|c| c != config) {
        // The demo's own model directory, made with other demo settings: start it afresh.
        std::fs::remove_dir_all(&run).with_context(|| run.display().to_string())?;
    }
    if !reuse {
        let pb = bar(config.train.steps as u64, "train");
        train_run(&config, &run, 250, dev, |e| {
            if let TrainEvent::Step { .. } = e {
                pb.inc(1);
            }
            Ok(())
        })?;
        pb.finish();
    }
    let train_secs = t0.elapsed().as_secs_f64();
    let trained = load_trained(&run, dev)?;
    let (ds, _) = trained.config.train_data()?;

    // 2. Queries: generated samples, 8-bit quantised.
    let t0 = Instant::now();
    let pb = bar(0, "sample");
    let sampler = Sampler::Ancestral { variance: ReverseVariance::BetaTilde };
    let queries =
        quantise(&sample(&trained.model, &trained.diffusion, &sampler, a.queries, 2024, dev, Some(&pb)));
    pb.finish();
    let d = trained.model.data_dim();
    write_matrix(&a.out.join("queries.npy"), &queries, a.queries, d)?;
    let sample_secs = t0.elapsed().as_secs_f64();

    // 3. EK-FAC on the training set.
    let t0 = Instant::now();
    let curv = fit(&trained, &a.curvature, dev)?;
    curv.save(&a.out.join("ekfac.safetensors"))?;
    let fit_secs = t0.elapsed().as_secs_f64();
    let ev = curv.eigenvalues();
    let mean_ev = ev.iter().sum::<f64>() / ev.len() as f64;

    // 4. Scores for the whole damping grid.
    let t0 = Instant::now();
    let scores = score(&trained, &curv, &queries, 0..ds.n, &a.scoring, dev)?;
    let score_secs = t0.elapsed().as_secs_f64();
    let lambda = a.scoring.lambda[0];
    write_matrix(&a.out.join("scores.npy"), &scores[0], a.queries, ds.n)?;
    for (l, s) in a.scoring.lambda.iter().zip(&scores).skip(1) {
        write_matrix(&lambda_path(&a.out.join("scores.npy"), *l), s, a.queries, ds.n)?;
    }

    // 5. Report and image rows: query | top-k proponents | top-k opponents.
    let k = a.top_k.min(ds.n / 2);
    let side = trained.config.data.size;
    let mut grid = Vec::new();
    let mut report = String::new();
    report.push_str("# Attribution demo\n\n");
    report.push_str(&format!(
        "A {}-parameter U-Net DDPM trained on N = {} MNIST images (classes 0 and 1, {side}x{side}); {} generated queries;\n\
         EK-FAC ({} draws per example per pass, GGN^model, expand) fitted on the training set; scores for damping lambda = {lambda:e}\n\
         (mean EK-FAC eigenvalue {mean_ev:.3e}). Positive score = removing the training image is predicted to raise the\n\
         query's loss (a proponent).\n\n",
        trained.model.num_params(), ds.n, a.queries, a.curvature.factor_draws
    ));
    report.push_str("| stage | seconds |\n|---|---|\n");
    report.push_str(&format!(
        "| train ({} steps{}) | {train_secs:.1} |\n",
        a.steps,
        if reuse { ", reused" } else { "" }
    ));
    report.push_str(&format!("| sample queries | {sample_secs:.1} |\n| fit EK-FAC | {fit_secs:.1} |\n| score | {score_secs:.1} |\n\n"));
    report.push_str(
        "Rows in `rows.png`: query, then its top proponents, then its top opponents (most negative).\n\n",
    );
    // Query labels from the project's MNIST classifier (if its weights are present), to check
    // that proponents share the query's digit.
    let labels: Option<Vec<usize>> =
        diffusion::eval::classifier::load_classifier(&diffusion::eval::default_classifier_path(), dev)
            .ok()
            .map(|c| {
                diffusion::eval::classifier::predict_proba_sized(&c, &queries, a.queries, side, side, dev)
                    .iter()
                    .map(diffusion::eval::classifier::argmax)
                    .collect()
            });
    let top_order = |li: usize, qi: usize| -> Vec<usize> {
        let row = &scores[li][qi * ds.n..(qi + 1) * ds.n];
        let mut order: Vec<usize> = (0..ds.n).collect();
        order.sort_by(|&x, &y| row[y].partial_cmp(&row[x]).unwrap().then(x.cmp(&y)));
        order
    };
    if let Some(labels) = &labels {
        report.push_str("Share of each query's top-10 proponents that show the query's digit (classifier label), per damping:\n\n| lambda | same-digit share |\n|---|---|\n");
        for (li, l) in a.scoring.lambda.iter().enumerate() {
            let hits: usize = (0..a.queries)
                .map(|qi| {
                    top_order(li, qi)[..10.min(ds.n)]
                        .iter()
                        .filter(|&&i| ds.labels[i] as usize == labels[qi])
                        .count()
                })
                .sum();
            report.push_str(&format!("| {l:e} | {:.2} |\n", hits as f64 / (10 * a.queries) as f64));
        }
        report.push('\n');
    }
    report.push_str("| query | label | top proponents (index: label, score) |\n|---|---|---|\n");
    for qi in 0..a.queries {
        let row = &scores[0][qi * ds.n..(qi + 1) * ds.n];
        let order = top_order(0, qi);
        grid.extend_from_slice(&queries[qi * d..(qi + 1) * d]);
        for &i in &order[..k] {
            grid.extend_from_slice(ds.image(i));
        }
        for &i in order.iter().rev().take(k) {
            grid.extend_from_slice(ds.image(i));
        }
        let listed: Vec<String> =
            order[..3].iter().map(|&i| format!("{i}: {} ({:.3e})", ds.labels[i], row[i])).collect();
        let label = labels.as_ref().map_or("?".to_string(), |l| l[qi].to_string());
        report.push_str(&format!("| {qi} | {label} | {} |\n", listed.join(", ")));
    }
    let row_labels: Vec<String> = (0..a.queries)
        .map(|qi| labels.as_ref().map_or(format!("q{qi}"), |l| format!("q{qi}\ndigit {}", l[qi])))
        .collect();
    let layout = attribution::plot::RowsLayout { rows: a.queries, k, height: side, width: side };
    attribution::plot::write_attribution_rows(&a.out.join("rows.png"), &grid, &layout, &row_labels)?;
    report.push_str(&format!("\nTotal {:.1} s.\n", started.elapsed().as_secs_f64()));
    write_atomic(&a.out.join("report.md"), report.as_bytes())?;
    println!("{}", a.out.join("report.md").display());
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn bench(a: BenchArgs, dev: &Device) -> Result<()> {
    let d = a.size * a.size;
    let ad = dev.clone().autodiff();
    let config = ModelConfig::Unet(UNetConfig {
        height: a.size,
        width: a.size,
        channels: vec![a.base, 2 * a.base],
        ..UNetConfig::default()
    });
    ad.seed(0);
    let model = config.init(&ad);
    let diffusion = diffusion::Diffusion::new(Default::default());
    let n = 512;
    let mut rng = diffusion::rng::stream(0, 5, 0);
    let rows: Vec<f32> = (0..n * d).map(|_| rand::Rng::gen_range(&mut rng, -1.0f32..1.0)).collect();
    let data = diffusion::TrainData::new(rows, n, d);
    let examples: Vec<usize> = (0..n).collect();
    let names = layer_names(&model);
    let name = |id: u64| names.get(&ParamId::from(id)).cloned().unwrap_or_default();

    // Factor pass: one batch of `batch` data per repetition.
    let mut fit_times = Vec::new();
    let mut curv = None;
    for rep in 0..a.steps + 2 {
        let batches = DiffusionBatch::batches(
            &model,
            &diffusion,
            &data,
            &examples[..a.batch.min(n)],
            1,
            0,
            rep as u64,
            a.batch,
            &ad,
        );
        let t = Instant::now();
        let f = fit_factors(batches, KfacApprox::Expand, GgnKind::Model, &mut rng, &name, |_| {});
        if rep >= 2 {
            fit_times.push(t.elapsed().as_secs_f64());
        }
        curv = Some(f.eigendecompose());
    }
    let curv = curv.expect("fitted");
    let p = curvature::precondition::flat_len(&curv.infos());

    // Scoring: per-example gradients of `images_per_batch` images x `draws`, rotated, dotted
    // with the preconditioned queries.
    let task = DiffusionTask {
        diffusion: diffusion.clone(),
        measurement: Measurement::Loss,
        train_output: Measurement::Loss,
        train_draws: a.draws,
        query_draws: a.draws,
        seed: 0,
    };
    let qids: Vec<usize> = (0..a.queries).collect();
    let qg = task.gradients(&model, &data.rows[..a.queries * d], &qids, Role::Query, &ad).inner();
    let scorer = Scorer::new(&curv, qg, vec![1e-6]);
    let mut score_times = Vec::new();
    for rep in 0..a.steps + 2 {
        let ids: Vec<usize> = (0..a.images_per_batch).map(|i| (rep * a.images_per_batch + i) % n).collect();
        let rows: Vec<f32> =
            ids.iter().flat_map(|&i| data.rows[i * d..(i + 1) * d].iter().copied()).collect();
        let t = Instant::now();
        let g = task.gradients(&model, &rows, &ids, Role::Train, &ad).inner();
        let s = scorer.score(g);
        assert_eq!(s[0].len(), a.queries * ids.len());
        if rep >= 2 {
            score_times.push(t.elapsed().as_secs_f64());
        }
    }
    let (fit_s, score_s) = (median(fit_times), median(score_times));
    let jax = if a.no_jax { None } else { run_jax_bench(&a) };
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{x:.3}"));
    let ratio = |rust: f64, j: Option<f64>| j.map_or("n/a".to_string(), |j| format!("{:.2}x", j / rust));
    let (jf, js) = (jax.map(|j| j.0), jax.map(|j| j.1));
    println!("U-Net {}x{} base {} ({} params, {p} covered)\n", a.size, a.size, a.base, model.num_params());
    println!("| computation | Rust s/batch | JAX s/batch | Rust/JAX throughput |\n|---|---|---|---|");
    println!(
        "| factor pass, {} data (GGN^model, expand) | {fit_s:.3} | {} | {} |",
        a.batch,
        fmt(jf),
        ratio(fit_s, jf)
    );
    println!(
        "| scoring, {} train images x {} draws vs {} queries | {score_s:.3} | {} | {} |",
        a.images_per_batch,
        a.draws,
        a.queries,
        fmt(js),
        ratio(score_s, js)
    );
    Ok(())
}

/// (fit, score) median seconds per batch of `bench/jax_kfac_bench.py`.
fn run_jax_bench(a: &BenchArgs) -> Option<(f64, f64)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/jax_kfac_bench.py");
    let args = [
        "--size".to_string(),
        a.size.to_string(),
        "--base".into(),
        a.base.to_string(),
        "--batch".into(),
        a.batch.to_string(),
        "--images-per-batch".into(),
        a.images_per_batch.to_string(),
        "--draws".into(),
        a.draws.to_string(),
        "--queries".into(),
        a.queries.to_string(),
        "--steps".into(),
        a.steps.to_string(),
        "--warmup".into(),
        "2".into(),
    ];
    let out = std::process::Command::new("python3").arg(&script).args(&args).output().ok()?;
    if !out.status.success() {
        eprintln!(
            "JAX reference failed: {}",
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.lines().last()?).ok()?;
    Some((v.get("fit_sec_per_batch_median")?.as_f64()?, v.get("score_sec_per_batch_median")?.as_f64()?))
}

/// Open the benchmark in `dir`: with the given settings, or with the stored ones when none given.
fn open_benchmark(
    dir: &Path,
    config: Option<benchmark::BenchmarkConfig>,
    dev: &Device,
) -> Result<benchmark::Benchmark> {
    let config = match config {
        Some(c) => c,
        None => {
            let path = dir.join("benchmark.json");
            match std::fs::read_to_string(&path) {
                Ok(text) => serde_json::from_str(&text)
                    .with_context(|| format!("{}: not a benchmark file", path.display()))?,
                Err(_) => benchmark::default_config(),
            }
        }
    };
    benchmark::Benchmark::open(dir, config, dev)
}

/// Run `args` (plus `--shard i/jobs`) in `jobs` worker processes of this binary and wait.
fn run_workers(subcommand: &str, dir: &Path, jobs: usize, extra: &[String]) -> Result<()> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let children: Vec<_> = (0..jobs)
        .map(|i| {
            std::process::Command::new(&exe)
                .arg(subcommand)
                .arg("--out")
                .arg(dir)
                .arg("--shard")
                .arg(format!("{i}/{jobs}"))
                .args(extra)
                .spawn()
                .context("starting a worker process")
        })
        .collect::<Result<_>>()?;
    let mut failed = 0;
    for mut c in children {
        if !c.wait().map(|s| s.success()).unwrap_or(false) {
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} of {jobs} worker processes failed (their errors are above)");
    }
    Ok(())
}

/// Add `secs` to stage `stage` in DIR/timing.json (so resumed runs sum up).
fn add_time(dir: &Path, stage: &str, secs: f64) -> Result<()> {
    let path = dir.join("timing.json");
    let mut map = read_timing(dir);
    *map.entry(stage.to_string()).or_default() += secs;
    write_atomic(&path, serde_json::to_string_pretty(&map)?.as_bytes())?;
    Ok(())
}

/// Stage -> seconds from DIR/timing.json (empty when absent).
fn read_timing(dir: &Path) -> std::collections::BTreeMap<String, f64> {
    std::fs::read_to_string(dir.join("timing.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn timing_table(dir: &Path) -> String {
    let map = read_timing(dir);
    let mut s = String::from("| stage | wall seconds |\n|---|---|\n");
    for (k, v) in &map {
        s.push_str(&format!("| {k} | {v:.1} |\n"));
    }
    s.push_str(&format!("| **total** | **{:.1}** |\n", map.values().sum::<f64>()));
    s
}

fn lds_cmd(a: LdsArgs, dev: &Device) -> Result<()> {
    let shard = a.shard.as_deref().map(parse_shard).transpose().map_err(anyhow::Error::msg)?;
    let bench = open_benchmark(&a.out, a.config(), dev)?;
    let timed = |stage: &str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        let t = Instant::now();
        f()?;
        if shard.is_none() {
            add_time(&a.out, stage, t.elapsed().as_secs_f64())?;
        }
        Ok(())
    };
    let mut queries = Vec::new();
    timed("full model + queries", &mut || {
        queries = bench.prepare()?;
        Ok(())
    })?;
    if let Some(sh) = shard {
        return bench.retrain(&queries, sh);
    }
    timed("subset models (train + measure)", &mut || {
        if a.jobs > 1 {
            run_workers("lds", &a.out, a.jobs, &[])
        } else {
            bench.retrain(&queries, (0, 1))
        }
    })?;
    timed("attribution scores (all methods)", &mut || bench.scores(&queries))?;
    let (results, ceiling) = bench.lds()?;
    let md = bench.lds_report(&results, &ceiling, &timing_table(&a.out))?;
    println!("{md}");
    eprintln!("wrote {}", a.out.join("lds.md").display());
    Ok(())
}

fn retrain_top_cmd(a: RetrainTopArgs, dev: &Device) -> Result<()> {
    let shard = a.shard.as_deref().map(parse_shard).transpose().map_err(anyhow::Error::msg)?;
    if !a.out.join("benchmark.json").exists() {
        bail!("{}: no benchmark here; run `attribute lds --out {}` first", a.out.display(), a.out.display());
    }
    for m in &a.methods {
        if m != "random"
            && !benchmark::DAMPED_METHODS.contains(&m.as_str())
            && !benchmark::PLAIN_METHODS.contains(&m.as_str())
        {
            bail!("unknown method '{m}'");
        }
    }
    if let Some(f) = a.fractions.iter().find(|f| !(**f > 0.0 && **f < 1.0)) {
        bail!("--fractions {f}: must be between 0 and 1");
    }
    let bench = open_benchmark(&a.out, None, dev)?;
    let queries = bench.prepare()?;
    if let Some(sh) = shard {
        bench.retrain_top(&queries, a.top_queries, &a.methods, &a.fractions, sh)?;
        return Ok(());
    }
    let t = Instant::now();
    if a.jobs > 1 {
        let extra = vec![
            "--top-queries".to_string(),
            a.top_queries.to_string(),
            "--methods".into(),
            a.methods.join(","),
            "--fractions".into(),
            a.fractions.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(","),
        ];
        run_workers("retrain-top", &a.out, a.jobs, &extra)?;
    }
    let md = bench
        .retrain_top(&queries, a.top_queries, &a.methods, &a.fractions, (0, 1))?
        .context("retraining jobs are missing")?;
    add_time(&a.out, "retrain without top influences", t.elapsed().as_secs_f64())?;
    println!("{md}");
    eprintln!("wrote {}", a.out.join("retrain-top.md").display());
    Ok(())
}
