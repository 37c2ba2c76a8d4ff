//! The paper's counterfactual evaluation at CPU scale (spec p1 §3, §6): a benchmark directory
//! holds the full model, generated queries, the retrained subset models with their
//! measurements, every method's score matrices, and the reports. Every stage skips what is
//! already on disk, so an interrupted run (or a job array with `--shard i/n`) just reruns.
//!
//! ```text
//! DIR/benchmark.json                    settings (a rerun with other settings is refused)
//! DIR/base/                             the model trained on all N images (a `ddpm` run dir)
//! DIR/queries.npy                       [Q, D] generated samples, 8-bit quantised
//! DIR/retrain/subset-JJJ-seed-S/        models trained on subset J with seed S (+ measure.json)
//! DIR/scores/METHOD[.lambda-L].npy      [Q, N] score matrices, scores/meta.json
//! DIR/lds.json, lds.md, lds.png         LDS report
//! DIR/top/qQQ-METHOD-kK/                retrained without the top-k of query Q (+ measure.json)
//! DIR/retrain-top.json, .md, .png       retraining-without-top-influences report
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{bail, Context, Result};
use burn::prelude::*;
use curvature::fit::GgnKind;
use curvature::KfacApprox;
use diffusion::run::{is_finished, load_trained, train_run, DataSpec, RunConfig, TrainEvent};
use diffusion::{
    sample, Denoiser, DiffusionConfig, ModelConfig, ReverseVariance, Sampler, TrainConfig, UNetConfig,
};
use foundation::atomic::write_bytes;
use foundation::progress::Progress;
use foundation::rng::{stream_for, Purpose};
use foundation::stats::mean_se;
use serde::{Deserialize, Serialize};

use crate::baselines::{grad_dot, pixel_cosine, RandomProjection, TrakScorer};
use crate::fit::{fit_curvature, CurvatureSettings};
use crate::lds::{
    lds_per_query, random_subsets, removal_predictions, seed_ceiling, seed_mean, split_half_reliability,
    LdsResult, PairedDifference, Verdict,
};
use crate::measure::measure;
use crate::npy::{read_matrix, write_matrix};
use crate::plot::{write_bar_chart, Bar};
use crate::scoring::quantise;
use crate::{DiffusionTask, Measurement, Role, Scorer};

/// Everything that defines a benchmark.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchmarkConfig {
    /// Training images (the full set; subsets index into it).
    pub data: DataSpec,
    /// Network.
    pub model: ModelConfig,
    /// Diffusion process.
    pub diffusion: DiffusionConfig,
    /// Training of the full model (and of the retrain-top models: the full schedule).
    pub train: TrainConfig,
    /// Steps of the subset models (the paper halves them).
    pub subset_steps: usize,
    /// M, random subsets.
    pub subsets: usize,
    /// K, seeds per subset (seed s is shared across subsets).
    pub seeds: usize,
    /// Subset fraction alpha.
    pub alpha: f64,
    /// Q, generated queries.
    pub queries: usize,
    /// (t, noise) draws of each ground-truth measurement (common to all models).
    pub measure_draws: usize,
    /// Draws per training gradient.
    pub train_draws: u64,
    /// Draws per query gradient.
    pub query_draws: u64,
    /// Draws per example per curvature pass.
    pub factor_draws: u64,
    /// TRAK / D-TRAK projection dimension.
    pub trak_dim: usize,
    /// Damping grid (mean-loss GGN scale, also used for TRAK's kernel divided by N).
    pub lambdas: Vec<f64>,
    /// Seed of subsets, queries, draws and projections.
    pub seed: u64,
}

impl BenchmarkConfig {
    /// Checks the settings (once, when a benchmark is opened).
    pub fn validate(&self) -> Result<()> {
        if self.subsets < 2 || self.seeds == 0 || self.queries == 0 {
            bail!("an LDS needs at least 2 subsets, 1 seed and 1 query");
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            bail!("subset fraction {}: must be between 0 and 1", self.alpha);
        }
        if self.measure_draws == 0 || self.train_draws == 0 || self.query_draws == 0 || self.factor_draws == 0
        {
            bail!("draw counts must be at least 1");
        }
        if self.trak_dim == 0 || self.train.steps == 0 || self.subset_steps == 0 {
            bail!("--trak-dim, --steps and --subset-steps must be at least 1");
        }
        if let Some(l) = self.lambdas.iter().find(|l| !(l.is_finite() && **l > 0.0)) {
            bail!("--lambda {l}: damping must be a positive number");
        }
        Ok(())
    }

    /// The run of the model trained on all images.
    pub fn base_run(&self) -> RunConfig {
        RunConfig {
            model: self.model.clone(),
            diffusion: self.diffusion.clone(),
            train: self.train.clone(),
            data: self.data.clone(),
        }
    }

    /// The damping grid of `method` (the configured grid plus the method's default), ascending;
    /// empty for methods without damping.
    pub fn method_lambdas(&self, method: Method, n: usize) -> Vec<f64> {
        if !method.is_damped() {
            return vec![];
        }
        let mut l = self.lambdas.clone();
        if let Some(d) = method.default_lambda(n) {
            if !l.contains(&d) {
                l.push(d);
            }
        }
        l.sort_by(f64::total_cmp);
        l
    }

    /// A run on a subset of the training images, with the given step count and seed.
    pub fn subset_run(&self, keep: &[usize], steps: usize, seed: u64) -> RunConfig {
        let mut run = self.base_run();
        run.data.indices = Some(keep.to_vec());
        run.train.steps = steps;
        run.train.seed = seed;
        run
    }
}

/// `a` followed by `b` (`C = A + B`, checked when the constant is evaluated): the method lists
/// are built from one another, so each method's place in the report order is written once.
const fn concat<const A: usize, const B: usize, const C: usize>(
    a: [Method; A],
    b: [Method; B],
) -> [Method; C] {
    assert!(A + B == C, "concat: C must be A + B");
    let mut out = [Method::Random; C];
    let mut i = 0;
    while i < A {
        out[i] = a[i];
        i += 1;
    }
    while i < C {
        out[i] = b[i - A];
        i += 1;
    }
    out
}

/// An attribution method of the benchmark (its name is the file stem of its scores).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// EK-FAC influence (GGN^model, K-FAC-expand).
    Ekfac,
    /// K-FAC influence (no eigenvalue correction).
    Kfac,
    /// EK-FAC with K-FAC-reduce.
    EkfacReduce,
    /// EK-FAC with GGN^loss (empirical Fisher).
    EkfacGgnLoss,
    /// TRAK: projected loss gradients.
    Trak,
    /// D-TRAK: projected square-norm gradients.
    Dtrak,
    /// Gradient dot product (identity curvature).
    GradDot,
    /// Pixel cosine similarity.
    Pixel,
    /// Diagnostic: same class as the query's pixel nearest neighbour.
    SameClass,
    /// Random removal: the control of the retraining experiment (has no scores).
    Random,
}

impl Method {
    /// Methods with a damping grid, in report order.
    pub const DAMPED: [Method; 6] =
        [Method::Ekfac, Method::Kfac, Method::EkfacReduce, Method::EkfacGgnLoss, Method::Trak, Method::Dtrak];
    /// Methods without damping.
    pub const PLAIN: [Method; 3] = [Method::GradDot, Method::Pixel, Method::SameClass];
    /// Every method with scores, in report order: [`Method::DAMPED`], then [`Method::PLAIN`].
    pub const SCORED: [Method; 9] = concat(Method::DAMPED, Method::PLAIN);
    /// Every method, `random` last: [`Method::SCORED`], then [`Method::Random`].
    pub const ALL: [Method; 10] = concat(Method::SCORED, [Method::Random]);

    /// The name on the command line, in file names and reports.
    pub const fn name(self) -> &'static str {
        match self {
            Method::Ekfac => "ekfac",
            Method::Kfac => "kfac",
            Method::EkfacReduce => "ekfac-reduce",
            Method::EkfacGgnLoss => "ekfac-ggn-loss",
            Method::Trak => "trak",
            Method::Dtrak => "dtrak",
            Method::GradDot => "grad-dot",
            Method::Pixel => "pixel",
            Method::SameClass => "same-class",
            Method::Random => "random",
        }
    }

    /// Whether the method has a damping grid.
    pub fn is_damped(self) -> bool {
        Self::DAMPED.contains(&self)
    }

    /// The damping the method is reported at "untuned" (spec p1 §1.6, §2): 1e-8 for the K-FAC
    /// family, TRAK's 1e-6 on the summed kernel (1e-6 / N in our mean scale) for TRAK and
    /// D-TRAK; `None` for methods without damping.
    pub fn default_lambda(self, n: usize) -> Option<f64> {
        match self {
            Method::Trak | Method::Dtrak => Some(1e-6 / n as f64),
            Method::GradDot | Method::Pixel | Method::SameClass | Method::Random => None,
            _ => Some(1e-8),
        }
    }

    /// One line for reports.
    pub fn describe(self) -> &'static str {
        match self {
            Method::Ekfac => "EK-FAC influence (GGN^model, expand)",
            Method::Kfac => "K-FAC influence (no eigenvalue correction)",
            Method::EkfacReduce => "EK-FAC, K-FAC-reduce",
            Method::EkfacGgnLoss => "EK-FAC, GGN^loss (empirical Fisher)",
            Method::Trak => "TRAK (projected loss gradients)",
            Method::Dtrak => "D-TRAK (projected square-norm gradients)",
            Method::GradDot => "gradient dot product (identity curvature)",
            Method::Pixel => "pixel cosine similarity (CLIP stand-in)",
            Method::SameClass => {
                "same-class indicator (diagnostic: class of the query's pixel nearest neighbour)"
            }
            Method::Random => "random removal (control)",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Method::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| format!("unknown method '{s}'"))
    }
}

#[derive(Serialize, Deserialize)]
struct MeasureFile {
    draws: usize,
    seed: u64,
    loss: Vec<f64>,
}

impl MeasureFile {
    /// The measurements stored in a model's run directory, if any.
    fn read(run_dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(run_dir.join("measure.json")).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// The minibatch training loss of one model, step by step (`RUN_DIR/losses.json`; a resumed run
/// records the steps of its last part only).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LossCurve {
    /// Steps taken after each recorded minibatch (1-based).
    pub steps: Vec<usize>,
    /// Minibatch loss at each of `steps`.
    pub loss: Vec<f32>,
}

impl LossCurve {
    /// File name inside a run directory.
    pub const FILE: &'static str = "losses.json";

    /// The curve stored in `run_dir`, if any.
    pub fn read(run_dir: &Path) -> Option<Self> {
        serde_json::from_str(&std::fs::read_to_string(run_dir.join(Self::FILE)).ok()?).ok()
    }
}

/// The reference rows of an LDS report (per query, like the methods').
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ceilings {
    /// One seed's measurements against the mean of the other seeds' ([`seed_ceiling`]).
    pub seed_vs_seed: LdsResult,
    /// Split-half reliability of the K-seed mean, Spearman-Brown corrected
    /// ([`split_half_reliability`]).
    pub reliability: LdsResult,
    /// The square root of each query's reliability (0 where negative): about the LDS of a
    /// perfect attribution against the noisy K-seed mean.
    pub attainable: LdsResult,
}

/// One of the paper's claims as a paired comparison over queries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claim {
    /// The claim, in words.
    pub claim: String,
    /// The paired difference (first named minus second named).
    pub difference: PairedDifference,
    /// Which way it came out, in words.
    pub verdict: String,
}

/// A loss curve averaged over models and binned into equal step ranges.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BinnedCurve {
    /// Models averaged.
    pub models: usize,
    /// Mean loss at every step (over models).
    pub mean: Vec<f64>,
    /// The bins, in step order.
    pub bins: Vec<CurveBin>,
    /// Mean loss over the last tenth of the steps.
    pub last_tenth: f64,
    /// Mean loss over the tenth of the steps before the last.
    pub tenth_before: f64,
}

/// One step range of a [`BinnedCurve`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CurveBin {
    /// First step (1-based).
    pub first: usize,
    /// Last step (inclusive).
    pub last: usize,
    /// Mean loss over the range and the models.
    pub mean: f64,
    /// Standard error over models of each model's mean over the range.
    pub se: f64,
}

impl BinnedCurve {
    /// Averages `curves` (one per model, equal lengths, losses at steps 1, 2, ...) and bins them
    /// into `bins` ranges; `None` without curves, with unequal lengths or fewer steps than bins.
    pub fn new(curves: &[Vec<f32>], bins: usize) -> Option<Self> {
        let steps = curves.first()?.len();
        if bins == 0 || steps < bins.max(10) || curves.iter().any(|c| c.len() != steps) {
            return None;
        }
        let mean: Vec<f64> = (0..steps)
            .map(|i| curves.iter().map(|c| c[i] as f64).sum::<f64>() / curves.len() as f64)
            .collect();
        let range_mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let bins = (0..bins)
            .map(|b| {
                let (lo, hi) = (b * steps / bins, (b + 1) * steps / bins);
                let per_model: Vec<f64> = curves
                    .iter()
                    .map(|c| c[lo..hi].iter().map(|&v| v as f64).sum::<f64>() / (hi - lo) as f64)
                    .collect();
                let (m, se) = mean_se(&per_model);
                CurveBin { first: lo + 1, last: hi, mean: m, se }
            })
            .collect();
        let tenth = steps / 10;
        Some(Self {
            models: curves.len(),
            last_tenth: range_mean(&mean[steps - tenth..]),
            tenth_before: range_mean(&mean[steps - 2 * tenth..steps - tenth]),
            mean,
            bins,
        })
    }
}

/// A benchmark directory on a device; progress messages go to `progress`.
pub struct Benchmark<'p> {
    /// Directory.
    pub dir: PathBuf,
    /// Settings.
    pub config: BenchmarkConfig,
    device: Device,
    progress: &'p dyn Progress,
    /// N, loaded once at open (every stage needs it).
    n_train: usize,
}

impl<'p> Benchmark<'p> {
    /// Open (or create) `dir` with `config`; refuses a directory made with other settings.
    pub fn open(
        dir: &Path,
        config: BenchmarkConfig,
        device: &Device,
        progress: &'p dyn Progress,
    ) -> Result<Self> {
        config.validate()?;
        let path = dir.join("benchmark.json");
        if path.exists() {
            let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
            let existing: BenchmarkConfig = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a benchmark file", path.display()))?;
            if existing != config {
                bail!(
                    "{} holds a benchmark with other settings; use the same flags or another --out",
                    dir.display()
                );
            }
        } else {
            std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
            write_bytes(&path, serde_json::to_string_pretty(&config)?.as_bytes())?;
        }
        let n_train = config.base_run().train_data().context("loading training data")?.0.n;
        Ok(Self { dir: dir.to_path_buf(), config, device: device.clone(), progress, n_train })
    }

    /// Open the benchmark in `dir`: with `config`, or with the stored settings when `None` (the
    /// defaults when the directory holds none).
    pub fn open_or_stored(
        dir: &Path,
        config: Option<BenchmarkConfig>,
        device: &Device,
        progress: &'p dyn Progress,
    ) -> Result<Self> {
        let config = match config {
            Some(c) => c,
            None => {
                let path = dir.join("benchmark.json");
                match std::fs::read_to_string(&path) {
                    Ok(text) => serde_json::from_str(&text)
                        .with_context(|| format!("{}: not a benchmark file", path.display()))?,
                    Err(_) => default_config(),
                }
            }
        };
        Self::open(dir, config, device, progress)
    }

    fn log(&self, msg: &str) {
        self.progress.message(msg);
    }

    /// Number of training images.
    pub fn n_train(&self) -> usize {
        self.n_train
    }

    /// The M random subsets.
    pub fn subsets(&self) -> Vec<Vec<usize>> {
        random_subsets(self.n_train(), self.config.subsets, self.config.alpha, self.config.seed)
    }

    /// Trains `run` in `dir` unless it is finished there (resuming a partial run); returns
    /// whether it trained.
    fn train(&self, run: &RunConfig, dir: &Path, what: &str) -> Result<bool> {
        if is_finished(dir, run) {
            return Ok(false);
        }
        let t = Instant::now();
        let mut curve = LossCurve::default();
        train_run(run, dir, 500, &self.device, |event| {
            if let TrainEvent::Step { step, loss } = event {
                curve.steps.push(step);
                curve.loss.push(loss);
            }
            Ok(())
        })
        .with_context(|| format!("training {what}"))?;
        write_bytes(&dir.join(LossCurve::FILE), serde_json::to_string(&curve)?.as_bytes())?;
        self.log(&format!(
            "trained {what} ({} steps) in {:.1} s",
            run.train.steps,
            t.elapsed().as_secs_f64()
        ));
        Ok(true)
    }

    /// Measure the queries on the model in `run_dir` once (kept in `run_dir/measure.json`).
    fn measure(&self, run_dir: &Path, queries: &[f32], ids: &[usize]) -> Result<Vec<f64>> {
        let path = run_dir.join("measure.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(m) = serde_json::from_str::<MeasureFile>(&text) {
                if m.draws == self.config.measure_draws
                    && m.seed == self.config.seed
                    && m.loss.len() == ids.len()
                {
                    return Ok(m.loss);
                }
            }
        }
        let trained = load_trained(run_dir, &self.device)?;
        let loss = measure(
            &trained.model,
            &trained.diffusion,
            Measurement::Loss,
            queries,
            ids,
            self.config.measure_draws,
            self.config.seed,
            4096,
            &self.device,
        );
        let file =
            MeasureFile { draws: self.config.measure_draws, seed: self.config.seed, loss: loss.clone() };
        write_bytes(&path, serde_json::to_string(&file)?.as_bytes())?;
        Ok(loss)
    }

    fn base_dir(&self) -> PathBuf {
        self.dir.join("base")
    }

    /// Train the full model and generate the queries (skipped when present).
    pub fn prepare(&self) -> Result<Vec<f32>> {
        self.train(&self.config.base_run(), &self.base_dir(), "the full model")?;
        let path = self.dir.join("queries.npy");
        if let Ok((q, rows, _)) = read_matrix(&path) {
            if rows == self.config.queries {
                return Ok(q);
            }
        }
        let t = Instant::now();
        let trained = load_trained(&self.base_dir(), &self.device)?;
        let sampler = Sampler::Ancestral { variance: ReverseVariance::BetaTilde };
        let x = sample(
            &trained.model,
            &trained.diffusion,
            &sampler,
            self.config.queries,
            self.config.seed + 2024,
            &self.device,
            None,
        );
        let q = quantise(&x);
        let d = trained.model.data_dim();
        write_matrix(&path, &q, self.config.queries, d)?;
        let side = self.config.data.size;
        data::write_png_grid(&self.dir.join("queries.png"), &q, self.config.queries, side, side, 16)?;
        self.log(&format!("sampled {} queries in {:.1} s", self.config.queries, t.elapsed().as_secs_f64()));
        Ok(q)
    }

    fn retrain_dir(&self, subset: usize, seed: usize) -> PathBuf {
        self.dir.join("retrain").join(format!("subset-{subset:03}-seed-{seed}"))
    }

    /// Train and measure the subset models of shard `i` of `n` (jobs are (subset, seed) pairs,
    /// dealt round-robin), skipping finished ones.
    pub fn retrain(&self, queries: &[f32], shard: (usize, usize)) -> Result<()> {
        let subsets = self.subsets();
        let ids: Vec<usize> = (0..self.config.queries).collect();
        let jobs: Vec<(usize, usize)> =
            (0..subsets.len()).flat_map(|j| (0..self.config.seeds).map(move |s| (j, s))).collect();
        let (mut mine, mut trained) = (0, 0);
        for (k, &(j, s)) in jobs.iter().enumerate() {
            if k % shard.1 != shard.0 {
                continue;
            }
            mine += 1;
            let dir = self.retrain_dir(j, s);
            let run = self.config.subset_run(&subsets[j], self.config.subset_steps, s as u64);
            trained +=
                self.train(&run, &dir, &format!("subset {j} seed {s} ({}/{})", k + 1, jobs.len()))? as usize;
            self.measure(&dir, queries, &ids)?;
        }
        if trained == 0 && mine > 0 {
            self.log(&format!(
                "all {mine} subset models of this shard are already trained; nothing to continue"
            ));
        }
        Ok(())
    }

    /// Measurements `[K][M][Q]` of all subset models (all must be finished).
    pub fn measurements(&self) -> Result<Vec<Vec<Vec<f64>>>> {
        let mut out = vec![Vec::new(); self.config.seeds];
        let mut missing = 0;
        for j in 0..self.config.subsets {
            for (s, per_seed) in out.iter_mut().enumerate() {
                match MeasureFile::read(&self.retrain_dir(j, s)) {
                    Some(m) => per_seed.push(m.loss),
                    None => missing += 1,
                }
            }
        }
        if missing > 0 {
            bail!(
                "{missing} of {} subset models are not trained and measured yet (run `attribute lds` on {} without --shard, or finish the shards)",
                self.config.subsets * self.config.seeds,
                self.dir.display()
            );
        }
        Ok(out)
    }

    fn score_path(&self, method: Method, lambda: Option<f64>) -> PathBuf {
        let name = match lambda {
            Some(l) => format!("{method}.lambda-{l:e}.npy"),
            None => format!("{method}.npy"),
        };
        self.dir.join("scores").join(name)
    }

    /// Compute every method's score matrices (skipped when `scores/meta.json` exists; the cheap
    /// data-only baselines are written whenever missing).
    pub fn scores(&self, queries: &[f32]) -> Result<()> {
        self.data_only_scores(queries)?;
        let meta = self.dir.join("scores").join("meta.json");
        if meta.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(self.dir.join("scores"))?;
        let c = &self.config;
        let trained = load_trained(&self.base_dir(), &self.device)?;
        let (ds, data) = trained.config.train_data()?;
        let n = ds.n;
        let d = trained.model.data_dim();
        let q = queries.len() / d;
        let ad = self.device.clone().autodiff();
        let model = trained.model.clone().fork(&ad);
        let mut timing = serde_json::Map::new();
        let mut time = |name: &str, t: Instant| {
            timing.insert(name.to_string(), serde_json::json!(t.elapsed().as_secs_f64()));
        };

        // Gradients: training loss and D-TRAK's square norm, averaged over the same draws.
        let t = Instant::now();
        let task = |measurement, train_output| DiffusionTask {
            diffusion: trained.diffusion.clone(),
            measurement,
            train_output,
            train_draws: c.train_draws,
            query_draws: c.query_draws,
            seed: c.seed + 1,
        };
        let loss_task = task(Measurement::Loss, Measurement::Loss);
        let sq_task = task(Measurement::SquareNorm, Measurement::SquareNorm);
        let gradients = |task: &DiffusionTask| -> Tensor<2> {
            let ids: Vec<usize> = (0..n).collect();
            let parts: Vec<Tensor<2>> = ids
                .chunks(8)
                .map(|chunk| {
                    let rows: Vec<f32> = chunk.iter().flat_map(|&i| ds.image(i).iter().copied()).collect();
                    task.gradients(&model, &rows, chunk, Role::Train, &ad).inner()
                })
                .collect();
            Tensor::cat(parts, 0)
        };
        let qids: Vec<usize> = (0..q).collect();
        let g_loss = gradients(&loss_task);
        let q_loss = loss_task.gradients(&model, queries, &qids, Role::Query, &ad).inner();
        time("gradients (loss)", t);
        let t = Instant::now();
        let g_sq = gradients(&sq_task);
        let q_sq = sq_task.gradients(&model, queries, &qids, Role::Query, &ad).inner();
        time("gradients (square norm)", t);
        self.log("gradients done");

        let write = |method: Method, lambda: Option<f64>, s: &[f32]| -> Result<()> {
            write_matrix(&self.score_path(method, lambda), s, q, n).map_err(Into::into)
        };
        let write_grid = |method: Method, lambdas: &[f64], s: Vec<Vec<f32>>| -> Result<()> {
            for (l, sc) in lambdas.iter().zip(&s) {
                write(method, Some(*l), sc)?;
            }
            Ok(())
        };

        // K-FAC family.
        let fits = [
            (Method::Ekfac, KfacApprox::Expand, GgnKind::Model),
            (Method::EkfacReduce, KfacApprox::Reduce, GgnKind::Model),
            (Method::EkfacGgnLoss, KfacApprox::Expand, GgnKind::Loss),
        ];
        for (name, approx, ggn) in fits {
            let t = Instant::now();
            let settings = CurvatureSettings {
                factor_draws: c.factor_draws,
                approx,
                ggn,
                seed: c.seed + 3,
                ..Default::default()
            };
            let fitted =
                fit_curvature(&trained.model, &trained.diffusion, &data, &settings, &self.device, |_| {});
            time(&format!("fit {name}"), t);
            let t = Instant::now();
            if name == Method::Ekfac {
                let grid = c.method_lambdas(Method::Kfac, n);
                let scorer = Scorer::new(&fitted.kfac, q_loss.clone(), grid.clone());
                write_grid(Method::Kfac, &grid, scorer.score(g_loss.clone()))?;
            }
            let ekfac = fitted.ekfac.expect("EK-FAC fitted");
            let grid = c.method_lambdas(name, n);
            let scorer = Scorer::new(&ekfac, q_loss.clone(), grid.clone());
            write_grid(name, &grid, scorer.score(g_loss.clone()))?;
            time(&format!("score {name}"), t);
            self.log(&format!("{name} scored"));
        }

        // TRAK and D-TRAK: projected gradients, kernel inverse for the whole grid.
        for (name, g, qg) in [(Method::Trak, &g_loss, &q_loss), (Method::Dtrak, &g_sq, &q_sq)] {
            let t = Instant::now();
            let proj = RandomProjection { dim: c.trak_dim, seed: c.seed + 4 };
            let grid = c.method_lambdas(name, n);
            let scorer = TrakScorer::new(proj.project(g.clone()), grid.clone());
            write_grid(name, &grid, scorer.score(proj.project(qg.clone())))?;
            time(&format!("score {name}"), t);
        }
        write(Method::GradDot, None, &grad_dot(q_loss, g_loss))?;
        self.log("baselines scored");
        write_bytes(&meta, serde_json::to_string_pretty(&serde_json::Value::Object(timing))?.as_bytes())?;
        Ok(())
    }

    /// Baselines that look only at pixels and labels: pixel cosine similarity, and a diagnostic
    /// same-class indicator (1 for training images of the class of the query's most
    /// pixel-similar training image), which tells how much of the LDS class composition alone
    /// explains.
    fn data_only_scores(&self, queries: &[f32]) -> Result<()> {
        if self.score_path(Method::Pixel, None).exists() && self.score_path(Method::SameClass, None).exists()
        {
            return Ok(());
        }
        let (ds, _) = self.config.base_run().train_data()?;
        let d = ds.pixels_per_image();
        let q = queries.len() / d;
        std::fs::create_dir_all(self.dir.join("scores"))?;
        let pixel = pixel_cosine(queries, &ds.images, d);
        if !self.score_path(Method::Pixel, None).exists() {
            write_matrix(&self.score_path(Method::Pixel, None), &pixel, q, ds.n)?;
        }
        if !self.score_path(Method::SameClass, None).exists() {
            let mut same = vec![0f32; q * ds.n];
            for qi in 0..q {
                let row = &pixel[qi * ds.n..(qi + 1) * ds.n];
                let nn = (0..ds.n).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap_or(0);
                for (n, v) in same[qi * ds.n..(qi + 1) * ds.n].iter_mut().enumerate() {
                    *v = (ds.labels[n] == ds.labels[nn]) as u8 as f32;
                }
            }
            write_matrix(&self.score_path(Method::SameClass, None), &same, q, ds.n)?;
        }
        Ok(())
    }

    /// Every method's LDS over the damping grid, plus the ceilings.
    pub fn lds(&self) -> Result<(Vec<LdsResult>, Ceilings)> {
        let per_seed = self.measurements()?;
        let measured = seed_mean(&per_seed);
        let subsets = self.subsets();
        let n = self.n_train();
        let mut results = Vec::new();
        let grid = |m: Method| -> Vec<Option<f64>> {
            if !m.is_damped() {
                vec![None]
            } else {
                self.config.method_lambdas(m, n).into_iter().map(Some).collect()
            }
        };
        for method in Method::SCORED {
            for lambda in grid(method) {
                let path = self.score_path(method, lambda);
                let (scores, _, cols) = read_matrix(&path).with_context(|| path.display().to_string())?;
                if cols != n {
                    bail!("{}: {cols} columns, expected {n}", path.display());
                }
                let predicted = removal_predictions(&scores, n, &subsets);
                results.push(LdsResult::new(method.name(), lambda, lds_per_query(&predicted, &measured)));
            }
        }
        let reliability = split_half_reliability(&per_seed);
        let attainable = reliability.iter().map(|r| r.max(0.0).sqrt()).collect();
        let ceilings = Ceilings {
            seed_vs_seed: LdsResult::new("exact retraining", None, seed_ceiling(&per_seed)),
            reliability: LdsResult::new("reliability", None, reliability),
            attainable: LdsResult::new("attainable", None, attainable),
        };
        Ok((results, ceilings))
    }

    /// Best-lambda result of a method.
    pub fn best(results: &[LdsResult], method: Method) -> Option<&LdsResult> {
        results.iter().filter(|r| r.method == method.name()).max_by(|a, b| a.mean.total_cmp(&b.mean))
    }

    /// The paired comparisons and verdicts of the paper's claims (spec p1 §4), each method at
    /// its best λ unless the claim is about damping.
    pub fn claims(&self, results: &[LdsResult]) -> Vec<Claim> {
        let n = self.n_train();
        let best = |m: Method| Self::best(results, m);
        let default = |m: Method| {
            let l = m.default_lambda(n);
            results.iter().find(|r| r.method == m.name() && r.lambda == l)
        };
        let seed = self.config.seed + 5;
        let mut out = Vec::new();
        let mut compare = |claim: &str, a: Option<&LdsResult>, b: Option<&LdsResult>, wording: [&str; 3]| {
            if let (Some(a), Some(b)) = (a, b) {
                let d = PairedDifference::new(&a.per_query, &b.per_query, seed);
                let text = match d.verdict() {
                    Verdict::AAbove => wording[0],
                    Verdict::BAbove => wording[1],
                    Verdict::Unresolved => wording[2],
                };
                out.push(Claim { claim: claim.to_string(), difference: d, verdict: text.to_string() });
            }
        };
        const UNRESOLVED: &str = "not resolved: the 95 % CI includes 0";
        compare(
            "EK-FAC > TRAK (each at its best λ)",
            best(Method::Ekfac),
            best(Method::Trak),
            ["holds: EK-FAC is higher", "reversed: TRAK is higher", UNRESOLVED],
        );
        compare(
            "EK-FAC > D-TRAK (each at its best λ)",
            best(Method::Ekfac),
            best(Method::Dtrak),
            ["holds: EK-FAC is higher", "reversed: D-TRAK is higher", UNRESOLVED],
        );
        compare(
            "EK-FAC > TRAK, untuned damping",
            default(Method::Ekfac),
            default(Method::Trak),
            ["holds: EK-FAC is higher", "reversed: TRAK is higher", UNRESOLVED],
        );
        compare(
            "EK-FAC > D-TRAK, untuned damping",
            default(Method::Ekfac),
            default(Method::Dtrak),
            ["holds: EK-FAC is higher", "reversed: D-TRAK is higher", UNRESOLVED],
        );
        // Flat in damping: the loss from the best λ to the untuned one, TRAK's minus EK-FAC's.
        let drop = |m: Method| -> Option<LdsResult> {
            let (b, d) = (best(m)?, default(m)?);
            let v = b.per_query.iter().zip(&d.per_query).map(|(x, y)| x - y).collect();
            Some(LdsResult::new(m.name(), None, v))
        };
        for trak in [Method::Trak, Method::Dtrak] {
            compare(
                &format!("K-FAC family flat in damping while {} is not (LDS lost from best to untuned λ, {trak} minus EK-FAC)", if trak == Method::Trak { "TRAK" } else { "D-TRAK" }),
                drop(trak).as_ref(),
                drop(Method::Ekfac).as_ref(),
                [
                    "holds: the TRAK-type method loses more without tuning",
                    "reversed: EK-FAC loses more without tuning",
                    UNRESOLVED,
                ],
            );
        }
        compare(
            "expand > reduce (EK-FAC, best λ)",
            best(Method::Ekfac),
            best(Method::EkfacReduce),
            ["holds: expand is higher", "reversed: reduce is higher", UNRESOLVED],
        );
        compare(
            "GGN^model vs GGN^loss (EK-FAC, best λ; the paper recommends GGN^model)",
            best(Method::Ekfac),
            best(Method::EkfacGgnLoss),
            ["GGN^model is higher", "GGN^loss is higher", UNRESOLVED],
        );
        compare(
            "EK-FAC > K-FAC (eigenvalue correction, best λ)",
            best(Method::Ekfac),
            best(Method::Kfac),
            ["holds: EK-FAC is higher", "reversed: K-FAC is higher", UNRESOLVED],
        );
        out
    }

    /// The mean training-loss curve of the subset models (those that recorded one), averaged
    /// over models and binned into `bins` equal step ranges; `None` when no model recorded one.
    pub fn subset_loss_curve(&self, bins: usize) -> Option<BinnedCurve> {
        let mut curves = Vec::new();
        for j in 0..self.config.subsets {
            for s in 0..self.config.seeds {
                if let Some(c) = LossCurve::read(&self.retrain_dir(j, s)) {
                    if c.steps.first() == Some(&1) && c.loss.len() == self.config.subset_steps {
                        curves.push(c.loss);
                    }
                }
            }
        }
        BinnedCurve::new(&curves, bins)
    }

    /// Write lds.json, lds.md and lds.png (and loss-curve.json/.png when the subset models
    /// recorded their losses); returns the markdown.
    pub fn lds_report(&self, results: &[LdsResult], ceilings: &Ceilings, timing: &str) -> Result<String> {
        let n = self.n_train();
        let c = &self.config;
        let claims = self.claims(results);
        let curve = self.subset_loss_curve(20);
        write_bytes(
            &self.dir.join("lds.json"),
            serde_json::to_string_pretty(&serde_json::json!({
                "results": results,
                "ceiling": ceilings.seed_vs_seed,
                "reliability": ceilings.reliability,
                "attainable": ceilings.attainable,
                "claims": claims,
            }))?
            .as_bytes(),
        )?;
        let pct = |r: &LdsResult| format!("{:.1} ± {:.1}", 100.0 * r.mean, 100.0 * r.se);
        let mut md = String::new();
        md.push_str(&format!(
            "# Linear datamodelling score\n\n{}, N = {n} training images; {} ({} params); \
             M = {} subsets (alpha = {}) x K = {} seeds, subset models {} steps, full model {} steps; \
             Q = {} generated queries; ground truth: query loss over {} common (t, noise) draws, averaged over seeds. \
             Gradients: {} draws per training image, {} per query; curvature: {} draws per image per pass; \
             TRAK dimension {}. LDS in % (Spearman, mean ± s.e. over queries).\n\n",
            describe_data(&c.data),
            describe_model(&c.model),
            load_trained(&self.base_dir(), &self.device).map(|t| t.model.num_params()).unwrap_or(0),
            c.subsets,
            c.alpha,
            c.seeds,
            c.subset_steps,
            c.train.steps,
            c.queries,
            c.measure_draws,
            c.train_draws,
            c.query_draws,
            c.factor_draws,
            c.trak_dim,
        ));
        // Ceiling and floor.
        let floor = Self::best(results, Method::SameClass);
        let best_method = Method::SCORED
            .into_iter()
            .filter(|m| *m != Method::SameClass)
            .filter_map(|m| Self::best(results, m).map(|r| (m, r)))
            .max_by(|a, b| a.1.mean.total_cmp(&b.1.mean));
        md.push_str("## Ceiling and floor\n\n| reference | LDS (%) |\n|---|---|\n");
        md.push_str(&format!(
            "| reliability of the {}-seed mean (split-half, Spearman-Brown: r_SB = n r / (1 + (n - 1) r), n = K / floor(K/2)) | {} |\n",
            c.seeds,
            pct(&ceilings.reliability)
        ));
        md.push_str(&format!(
            "| attainable: √reliability per query (a perfect attribution against the noisy {}-seed mean) | {} |\n",
            c.seeds,
            pct(&ceilings.attainable)
        ));
        md.push_str(&format!(
            "| seed vs seed (one seed against the mean of the other {}) | {} |\n",
            c.seeds - 1,
            pct(&ceilings.seed_vs_seed)
        ));
        if let Some(f) = floor {
            md.push_str(&format!("| floor: same-class indicator (no model) | {} |\n", pct(f)));
        }
        md.push('\n');
        if let Some(f) = floor {
            let gap = PairedDifference::new(&ceilings.reliability.per_query, &f.per_query, c.seed + 6);
            md.push_str(&format!(
                "Ceiling (reliability) minus floor, paired over queries: {} points (95 % CI); {}.\n",
                gap.format_points(),
                if gap.mean >= 0.10 { "at least 10 points" } else { "less than 10 points" }
            ));
        }
        if let Some((m, b)) = best_method {
            let gap = PairedDifference::new(&ceilings.reliability.per_query, &b.per_query, c.seed + 7);
            let spread = Method::SCORED
                .into_iter()
                .filter(|m| *m != Method::SameClass)
                .filter_map(|m| Self::best(results, m).map(|r| r.mean))
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
            md.push_str(&format!(
                "Ceiling (reliability) minus the best method ({m}): {} points; spread of the methods at their best λ: {:.1} points.\n\n",
                gap.format_points(),
                100.0 * (spread.1 - spread.0)
            ));
        }
        md.push_str("## Methods\n\n| method | best λ | LDS at best λ | default λ | LDS at default λ |\n|---|---|---|---|---|\n");
        let mut bars = Vec::new();
        for method in Method::SCORED {
            let Some(best) = Self::best(results, method) else { continue };
            let default = method.default_lambda(n);
            let at_default = results.iter().find(|r| r.method == method.name() && r.lambda == default);
            let fmt_l = |l: Option<f64>| l.map_or("–".to_string(), |l| format!("{l:.0e}"));
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                method.describe(),
                fmt_l(best.lambda),
                pct(best),
                fmt_l(default),
                at_default.map_or("–".to_string(), pct)
            ));
            bars.push(Bar { label: method.to_string(), value: 100.0 * best.mean, se: 100.0 * best.se });
        }
        md.push('\n');
        bars.push(Bar {
            label: "reliability".into(),
            value: 100.0 * ceilings.reliability.mean,
            se: 100.0 * ceilings.reliability.se,
        });
        bars.push(Bar {
            label: "seed vs seed".into(),
            value: 100.0 * ceilings.seed_vs_seed.mean,
            se: 100.0 * ceilings.seed_vs_seed.se,
        });
        // Paired over queries (the same queries and subsets for every method), so the interval
        // of a difference is much narrower than either method's own.
        if let Some(reference) = Self::best(results, Method::Ekfac) {
            let ref_default =
                results.iter().find(|r| r.method == "ekfac" && r.lambda == Method::Ekfac.default_lambda(n));
            md.push_str(
                "Paired difference to EK-FAC, LDS(method) − LDS(EK-FAC) in % points, mean [95 % bootstrap CI] over queries:\n\n\
                 | method | both at best λ | both at default λ |\n|---|---|---|\n",
            );
            for method in Method::SCORED.into_iter().filter(|m| *m != Method::Ekfac) {
                let Some(b) = Self::best(results, method) else { continue };
                let at_best = PairedDifference::new(&b.per_query, &reference.per_query, c.seed + 8);
                let default = method.default_lambda(n);
                let at_default = results
                    .iter()
                    .find(|r| r.method == method.name() && r.lambda == default)
                    .zip(ref_default)
                    .map(|(m, e)| {
                        PairedDifference::new(&m.per_query, &e.per_query, c.seed + 9).format_points()
                    });
                md.push_str(&format!(
                    "| {method} | {} | {} |\n",
                    at_best.format_points(),
                    at_default.unwrap_or_else(|| "–".into())
                ));
            }
            md.push('\n');
        }
        md.push_str("## The paper's claims\n\nPaired over queries, % points, mean [95 % bootstrap CI]; a claim holds only when the whole interval is on its side of 0.\n\n| claim | difference | verdict |\n|---|---|---|\n");
        for cl in &claims {
            md.push_str(&format!("| {} | {} | {} |\n", cl.claim, cl.difference.format_points(), cl.verdict));
        }
        md.push_str("\nLDS (%) over the damping grid:\n\n| method |");
        for l in &c.lambdas {
            md.push_str(&format!(" {l:.0e} |"));
        }
        md.push_str("\n|---|");
        md.push_str(&"---|".repeat(c.lambdas.len()));
        md.push('\n');
        for method in Method::DAMPED {
            md.push_str(&format!("| {method} |"));
            for l in &c.lambdas {
                let r = results.iter().find(|r| r.method == method.name() && r.lambda == Some(*l));
                md.push_str(&format!(" {} |", r.map_or("–".into(), |r| format!("{:.1}", 100.0 * r.mean))));
            }
            md.push('\n');
        }
        if let Some(curve) = &curve {
            write_bytes(&self.dir.join("loss-curve.json"), serde_json::to_string_pretty(curve)?.as_bytes())?;
            let bars: Vec<Bar> = curve
                .bins
                .iter()
                .map(|b| Bar { label: format!("steps {}-{}", b.first, b.last), value: b.mean, se: b.se })
                .collect();
            write_bar_chart(
                &self.dir.join("loss-curve.png"),
                "subset models: mean training loss per step range, +-1 s.e. over models",
                &bars,
                |v, s| format!("{v:.4}+-{s:.4}"),
            )?;
            md.push_str(&format!(
                "\n## Training loss of the subset models\n\nMean minibatch loss of {} subset models (`loss-curve.png`, `loss-curve.json`): {:.4} over the last tenth of the steps, {:.4} over the tenth before ({:+.1} %).\n",
                curve.models,
                curve.last_tenth,
                curve.tenth_before,
                100.0 * (curve.last_tenth / curve.tenth_before - 1.0)
            ));
        }
        md.push_str(&format!("\n{timing}\n"));
        write_bar_chart(&self.dir.join("lds.png"), "LDS (%) at best damping, +-1 s.e.", &bars, |v, s| {
            format!("{v:.1}+-{s:.1}")
        })?;
        write_bytes(&self.dir.join("lds.md"), md.as_bytes())?;
        Ok(md)
    }

    fn top_dir(&self, query: usize, method: Method, k: usize) -> PathBuf {
        self.dir.join("top").join(format!("q{query:03}-{method}-k{k}"))
    }

    /// Training indices to remove for (query, method, k): the k highest scores at the method's
    /// best LDS damping, or k random ones ([`Method::Random`], seeded by the query).
    fn removal(
        &self,
        results: &[LdsResult],
        query: usize,
        method: Method,
        k: usize,
        n: usize,
    ) -> Result<Vec<usize>> {
        if method == Method::Random {
            use rand::seq::SliceRandom;
            let mut idx: Vec<usize> = (0..n).collect();
            idx.shuffle(&mut stream_for(self.config.seed, Purpose::RetrainTopOrder, query as u64));
            return Ok(idx[..k].to_vec());
        }
        let best = Self::best(results, method).with_context(|| format!("unknown method '{method}'"))?;
        let path = self.score_path(method, best.lambda);
        let (scores, _, cols) = read_matrix(&path).with_context(|| path.display().to_string())?;
        let row = &scores[query * cols..(query + 1) * cols];
        let mut order: Vec<usize> = (0..cols).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        Ok(order[..k].to_vec())
    }

    /// Retrain without the top-k influences of each of the first `n_queries` queries, for each
    /// method and removal fraction (shard `i` of `n` of the jobs); returns the report when all are
    /// done.
    pub fn retrain_top(
        &self,
        queries: &[f32],
        n_queries: usize,
        methods: &[Method],
        fractions: &[f64],
        shard: (usize, usize),
    ) -> Result<Option<String>> {
        let (results, _) = self.lds()?;
        let n = self.n_train();
        let d = queries.len() / self.config.queries;
        let n_queries = n_queries.min(self.config.queries);
        let base_ids: Vec<usize> = (0..n_queries).collect();
        let base = self.measure(&self.base_dir(), &queries[..n_queries * d], &base_ids)?;
        let ks: Vec<usize> =
            fractions.iter().map(|f| ((f * n as f64).round() as usize).clamp(1, n - 1)).collect();
        let mut jobs = Vec::new();
        for qi in 0..n_queries {
            for &k in &ks {
                for m in methods {
                    jobs.push((qi, *m, k));
                }
            }
        }
        let (mut mine, mut trained) = (0, 0);
        for (j, (qi, m, k)) in jobs.iter().enumerate() {
            if j % shard.1 != shard.0 {
                continue;
            }
            mine += 1;
            let removed = self.removal(&results, *qi, *m, *k, n)?;
            let keep: Vec<usize> = (0..n).filter(|i| !removed.contains(i)).collect();
            let run = self.config.subset_run(&keep, self.config.train.steps, self.config.train.seed);
            let dir = self.top_dir(*qi, *m, *k);
            trained += self.train(
                &run,
                &dir,
                &format!("without top-{k} of query {qi} by {m} ({}/{})", j + 1, jobs.len()),
            )? as usize;
            self.measure(&dir, &queries[qi * d..(qi + 1) * d], &[*qi])?;
        }
        if trained == 0 && mine > 0 {
            self.log(&format!(
                "all {mine} retraining jobs of this shard are already trained; nothing to continue"
            ));
        }
        // Report (only when every job is measured).
        let mut md = format!(
            "# Retraining without top influences\n\nFor each of {n_queries} queries, the k training images with the highest \
             score (each method at its best LDS damping) are removed and the model is retrained from scratch with the \
             full schedule ({} steps, same seed as the full model); the table shows the increase of the query's loss \
             (common draws, {} of them) over the full model, mean ± s.e. over queries. Higher is better; random removal \
             is the control.\n\n| method |",
            self.config.train.steps, self.config.measure_draws
        );
        for (f, k) in fractions.iter().zip(&ks) {
            md.push_str(&format!(" k = {k} ({:.0} %) |", 100.0 * f));
        }
        md.push_str("\n|---|");
        md.push_str(&"---|".repeat(ks.len()));
        md.push('\n');
        let mut bars = Vec::new();
        let mut json = Vec::new();
        for m in methods {
            md.push_str(&format!("| {} |", m.describe()));
            for &k in &ks {
                let mut inc = Vec::new();
                for (qi, b) in base.iter().enumerate() {
                    match MeasureFile::read(&self.top_dir(qi, *m, k)) {
                        Some(f) => inc.push(f.loss[0] - b),
                        None => return Ok(None),
                    }
                }
                let (mean, se) = mean_se(&inc);
                md.push_str(&format!(" {mean:.5} ± {se:.5} |"));
                bars.push(Bar { label: format!("{m} k={k}"), value: 1e3 * mean, se: 1e3 * se });
                json.push(serde_json::json!({"method": m, "k": k, "mean": mean, "se": se, "per_query": inc}));
            }
            md.push('\n');
        }
        // Paired over queries (each query is retrained once per method and k): every method
        // against random removal, and EK-FAC against TRAK and D-TRAK.
        let increases = |m: Method, k: usize| -> Option<Vec<f64>> {
            base.iter()
                .enumerate()
                .map(|(qi, b)| MeasureFile::read(&self.top_dir(qi, m, k)).map(|f| f.loss[0] - b))
                .collect()
        };
        let mut pairs: Vec<(Method, Method)> =
            methods.iter().filter(|m| **m != Method::Random).map(|m| (*m, Method::Random)).collect();
        for other in [Method::Trak, Method::Dtrak] {
            if methods.contains(&Method::Ekfac) && methods.contains(&other) {
                pairs.push((Method::Ekfac, other));
            }
        }
        let mut paired = Vec::new();
        if !pairs.is_empty() {
            md.push_str(&format!(
                "\nPaired differences of the loss increase over the {n_queries} queries (x 1000, mean [95 % bootstrap CI]):\n\n| comparison |"
            ));
            for (f, k) in fractions.iter().zip(&ks) {
                md.push_str(&format!(" k = {k} ({:.0} %) |", 100.0 * f));
            }
            md.push_str("\n|---|");
            md.push_str(&"---|".repeat(ks.len()));
            md.push('\n');
            for (a, b) in pairs {
                if !methods.contains(&b) {
                    continue;
                }
                md.push_str(&format!("| {a} − {b} |"));
                for &k in &ks {
                    let (Some(x), Some(y)) = (increases(a, k), increases(b, k)) else { return Ok(None) };
                    let d = PairedDifference::new(&x, &y, self.config.seed + 10);
                    let verdict = match d.verdict() {
                        Verdict::AAbove => format!("{a} higher"),
                        Verdict::BAbove => format!("{b} higher"),
                        Verdict::Unresolved => "CI includes 0".to_string(),
                    };
                    md.push_str(&format!(
                        " {:+.2} [{:+.2}, {:+.2}]: {verdict} |",
                        1e3 * d.mean,
                        1e3 * d.ci.low,
                        1e3 * d.ci.high
                    ));
                    paired.push(serde_json::json!({"a": a, "b": b, "k": k, "difference": d}));
                }
                md.push('\n');
            }
        }
        let json = serde_json::json!({"results": json, "paired": paired});
        write_bytes(&self.dir.join("retrain-top.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
        write_bar_chart(
            &self.dir.join("retrain-top.png"),
            "loss increase x 1000, +-1 s.e.",
            &bars,
            |v, s| format!("{v:.2}+-{s:.2}"),
        )?;
        write_bytes(&self.dir.join("retrain-top.md"), md.as_bytes())?;
        Ok(Some(md))
    }
}

fn describe_data(d: &DataSpec) -> String {
    let classes =
        if d.classes.is_empty() { "all 10 classes".to_string() } else { format!("classes {:?}", d.classes) };
    format!("{}, {classes}, {}x{}", d.source.describe(), d.size, d.size)
}

fn describe_model(m: &ModelConfig) -> String {
    match m {
        ModelConfig::Unet(u) => format!("U-Net channels {:?}", u.channels),
        ModelConfig::Mlp(_) => "MLP".to_string(),
    }
}

/// The default benchmark: MNIST {0, 1} at 8x8 from the embedded subset (N = 1000), an 8/16-channel
/// U-Net, M = 32 subsets x K = 2 seeds, Q = 64 queries (spec p1 §6). The base and subset models
/// train in two concurrent microbatches (since 2026-11-29; a benchmark directory made before
/// keeps its own settings in `benchmark.json`).
pub fn default_config() -> BenchmarkConfig {
    BenchmarkConfig {
        data: DataSpec { classes: vec![0, 1], size: 8, per_class: Some(500), ..DataSpec::default() },
        model: ModelConfig::Unet(UNetConfig {
            height: 8,
            width: 8,
            channels: vec![8, 16],
            ..UNetConfig::default()
        }),
        diffusion: DiffusionConfig::default(),
        train: TrainConfig {
            steps: 2000,
            batch_size: 64,
            lr: 1e-3,
            ema_decay: 0.999,
            microbatches: 2,
            ..TrainConfig::default()
        },
        subset_steps: 1000,
        subsets: 32,
        seeds: 2,
        alpha: 0.5,
        queries: 64,
        measure_draws: 1000,
        train_draws: 64,
        query_draws: 128,
        factor_draws: 32,
        trak_dim: 2048,
        lambdas: (-9..=0).map(|e| 10f64.powi(e)).collect(),
        seed: 0,
    }
}

/// Add `secs` to stage `stage` in `dir/timing.json` (so resumed runs sum up).
pub fn add_time(dir: &Path, stage: &str, secs: f64) -> Result<()> {
    let mut map = read_timing(dir);
    *map.entry(stage.to_string()).or_default() += secs;
    write_bytes(&dir.join("timing.json"), serde_json::to_string_pretty(&map)?.as_bytes())?;
    Ok(())
}

/// Stage -> seconds from `dir/timing.json` (empty when absent).
pub fn read_timing(dir: &Path) -> std::collections::BTreeMap<String, f64> {
    std::fs::read_to_string(dir.join("timing.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// The markdown table of `dir/timing.json`.
pub fn timing_table(dir: &Path) -> String {
    let map = read_timing(dir);
    let mut s = String::from("| stage | wall seconds |\n|---|---|\n");
    for (k, v) in &map {
        s.push_str(&format!("| {k} | {v:.1} |\n"));
    }
    s.push_str(&format!("| **total** | **{:.1}** |\n", map.values().sum::<f64>()));
    s
}

/// Worker processes for the retraining stages: `jobs` copies of `exe SUBCOMMAND --out DIR
/// --shard i/jobs ...` (the binary that calls the library, rerun as shard workers).
#[derive(Clone, Debug)]
pub struct Workers {
    /// The program to start (e.g. `std::env::current_exe()`).
    pub exe: PathBuf,
    /// Number of worker processes; 1 runs everything in this process.
    pub jobs: usize,
}

impl Workers {
    /// Starts the workers and waits for all of them; an error names how many failed.
    pub fn run(&self, subcommand: &str, dir: &Path, extra: &[String]) -> Result<()> {
        let jobs = self.jobs;
        let children: Vec<_> = (0..jobs)
            .map(|i| {
                std::process::Command::new(&self.exe)
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
}

/// What `attribute lds` does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LdsJob {
    /// Benchmark directory.
    pub out: PathBuf,
    /// Settings; `None` uses the ones stored in `out` (or the defaults for a new directory).
    pub config: Option<BenchmarkConfig>,
    /// Only train and measure this shard `(i, n)` of the subset models, then stop.
    pub shard: Option<(usize, usize)>,
}

impl LdsJob {
    /// Runs (or continues: every stage skips what is on disk) the benchmark: the full model and
    /// queries, the subset models (in `workers`' processes when it has more than one job), every
    /// method's scores, and the report `lds.md`/`lds.json`/`lds.png`. Returns the report, or
    /// `None` for a shard worker.
    pub fn run(&self, workers: &Workers, dev: &Device, progress: &dyn Progress) -> Result<Option<String>> {
        let bench = Benchmark::open_or_stored(&self.out, self.config.clone(), dev, progress)?;
        let timed = |stage: &str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
            let t = Instant::now();
            f()?;
            if self.shard.is_none() {
                add_time(&self.out, stage, t.elapsed().as_secs_f64())?;
            }
            Ok(())
        };
        let mut queries = Vec::new();
        timed("full model + queries", &mut || {
            queries = bench.prepare()?;
            Ok(())
        })?;
        if let Some(sh) = self.shard {
            bench.retrain(&queries, sh)?;
            return Ok(None);
        }
        timed("subset models (train + measure)", &mut || {
            if workers.jobs > 1 {
                workers.run("lds", &self.out, &[])
            } else {
                bench.retrain(&queries, (0, 1))
            }
        })?;
        timed("attribution scores (all methods)", &mut || bench.scores(&queries))?;
        let (results, ceilings) = bench.lds()?;
        Ok(Some(bench.lds_report(&results, &ceilings, &timing_table(&self.out))?))
    }
}

/// What `attribute retrain-top` does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetrainTopJob {
    /// Benchmark directory of a finished [`LdsJob`].
    pub out: PathBuf,
    /// Use the first this many queries.
    pub top_queries: usize,
    /// Methods whose top influences are removed ([`Method::Random`] = control).
    pub methods: Vec<Method>,
    /// Removed fractions of the training set.
    pub fractions: Vec<f64>,
    /// Only train this shard `(i, n)` of the retraining jobs, then stop.
    pub shard: Option<(usize, usize)>,
}

impl RetrainTopJob {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.methods.is_empty() || self.top_queries == 0 {
            bail!("--methods and --top-queries: need at least one method and one query");
        }
        if let Some(f) = self.fractions.iter().find(|f| !(**f > 0.0 && **f < 1.0)) {
            bail!("--fractions {f}: must be between 0 and 1");
        }
        Ok(())
    }

    /// Retrains without each method's top influences (continuing what is on disk) and writes
    /// `retrain-top.md`/`.json`/`.png`; returns the report, or `None` for a shard worker.
    pub fn run(&self, workers: &Workers, dev: &Device, progress: &dyn Progress) -> Result<Option<String>> {
        self.validate()?;
        if !self.out.join("benchmark.json").exists() {
            bail!(
                "{}: no benchmark here; run `attribute lds --out {}` first",
                self.out.display(),
                self.out.display()
            );
        }
        let bench = Benchmark::open_or_stored(&self.out, None, dev, progress)?;
        let queries = bench.prepare()?;
        if let Some(sh) = self.shard {
            bench.retrain_top(&queries, self.top_queries, &self.methods, &self.fractions, sh)?;
            return Ok(None);
        }
        let t = Instant::now();
        if workers.jobs > 1 {
            let extra = vec![
                "--top-queries".to_string(),
                self.top_queries.to_string(),
                "--methods".into(),
                self.methods.iter().map(|m| m.name()).collect::<Vec<_>>().join(","),
                "--fractions".into(),
                self.fractions.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(","),
            ];
            workers.run("retrain-top", &self.out, &extra)?;
        }
        let md = bench
            .retrain_top(&queries, self.top_queries, &self.methods, &self.fractions, (0, 1))?
            .context("retraining jobs are missing")?;
        add_time(&self.out, "retrain without top influences", t.elapsed().as_secs_f64())?;
        Ok(Some(md))
    }
}
