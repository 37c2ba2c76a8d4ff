//! The analyzer stages of one trained run, as library calls: fit (EK-)FAC curvature, score the
//! training set (or one shard of it) against queries for a whole damping grid, and merge shard
//! score matrices exactly. `attribute fit/score/merge`, the demo and the benchmark all use these.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::{bail, Context, Result};
use burn::module::{Module, ParamId};
use burn::prelude::*;
use curvature::{EigenCurvature, KfacApprox, LayerInfo};
use diffusion::run::{load_trained, TrainedModel};
use diffusion::{AnyDenoiser, Denoiser};
use foundation::progress::Progress;
use foundation::tap::{layer_names, Tap};
use serde::{Deserialize, Serialize};

use crate::fit::{fit_curvature, CurvatureSettings};
use crate::npy::{read_matrix, write_matrix};
use crate::{shard_range, DiffusionTask, Measurement, Role, Scorer};

/// How training images are scored against queries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreSettings {
    /// Draws averaged per training gradient.
    pub train_draws: u64,
    /// Draws averaged per query gradient.
    pub query_draws: u64,
    /// What is attributed on the queries.
    pub measurement: Measurement,
    /// Damping values (absolute, mean-loss GGN units); the first is the one reported.
    pub lambdas: Vec<f64>,
    /// Training images per gradient pass (also the unit shards are aligned to).
    pub images_per_batch: usize,
    /// Seed of the gradient draws.
    pub gradient_seed: u64,
}

impl ScoreSettings {
    /// Checks the settings against a diffusion with `steps` timesteps.
    pub fn validate(&self, steps: usize) -> Result<()> {
        if let Measurement::LossAtTime(t) = self.measurement {
            if t >= steps {
                bail!("--at-time {t}: must be below T = {steps}");
            }
        }
        validate_lambdas(&self.lambdas)?;
        if self.train_draws == 0 || self.query_draws == 0 {
            bail!("--train-draws and --query-draws must be at least 1");
        }
        Ok(())
    }

    /// The task of a trained model: training-loss gradients against the chosen measurement.
    pub fn task(&self, trained: &TrainedModel) -> DiffusionTask {
        DiffusionTask {
            diffusion: trained.diffusion.clone(),
            train_output: Measurement::Loss,
            measurement: self.measurement,
            train_draws: self.train_draws,
            query_draws: self.query_draws,
            seed: self.gradient_seed,
        }
    }
}

/// Checks a damping grid: at least one value, every value positive and finite.
pub fn validate_lambdas(lambdas: &[f64]) -> Result<()> {
    if lambdas.is_empty() {
        bail!("--lambda: give at least one damping value");
    }
    for &l in lambdas {
        if !(l.is_finite() && l > 0.0) {
            bail!("--lambda {l}: damping must be a positive number");
        }
    }
    Ok(())
}

/// The covered layers of a model, from one recording forward pass.
pub fn layer_infos(model: &AnyDenoiser, dev: &Device) -> Vec<LayerInfo> {
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

/// Fits the curvature of a trained run on its training set (EK-FAC when `settings.ekfac`, else
/// K-FAC); `progress` sees one stage, `factors`, counted in (datum, draw) pairs.
pub fn fit(
    trained: &TrainedModel,
    settings: &CurvatureSettings,
    dev: &Device,
    progress: &dyn Progress,
) -> Result<EigenCurvature> {
    let (_, data) = trained.config.train_data().context("loading training data")?;
    let passes = if settings.ekfac { 2 } else { 1 };
    progress.start("factors", passes * data.n as u64 * settings.factor_draws);
    let fitted = fit_curvature(&trained.model, &trained.diffusion, &data, settings, dev, |n| {
        progress.advance(n as u64)
    });
    progress.finish();
    Ok(fitted.best().with_meta(crate::meta::fit_meta(settings, curvature::LossKind::Mse)))
}

/// What `attribute fit` does: fit a run's curvature and save it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitJob {
    /// Run directory of a trained model.
    pub run: PathBuf,
    /// Output factor file (.safetensors).
    pub out: PathBuf,
    /// How the curvature is estimated.
    pub curvature: CurvatureSettings,
}

impl FitJob {
    /// Fits and writes the factor file; returns the number of layers.
    pub fn run(&self, dev: &Device, progress: &dyn Progress) -> Result<usize> {
        if self.curvature.factor_draws == 0 || self.curvature.batch == 0 {
            bail!("--factor-draws and --batch must be at least 1");
        }
        let trained = load_trained(&self.run, dev)?;
        let curv = fit(&trained, &self.curvature, dev, progress)?;
        curv.save(&self.out)?;
        Ok(curv.layers.len())
    }
}

/// Scores `[L][Q x range]` (one matrix per damping value) of the training images in `range`
/// against `queries` (`[Q, D]`); `progress` sees one stage, `score`, counted in images.
pub fn score_range(
    trained: &TrainedModel,
    curv: &EigenCurvature,
    queries: &[f32],
    range: Range<usize>,
    s: &ScoreSettings,
    dev: &Device,
    progress: &dyn Progress,
) -> Result<Vec<Vec<f32>>> {
    s.validate(trained.diffusion.steps())?;
    let (ds, _) = trained.config.train_data().context("loading training data")?;
    let ad = dev.clone().autodiff();
    let model = trained.model.clone().fork(&ad);
    let task = s.task(trained);
    let d = model.data_dim();
    let q = queries.len() / d;
    let qids: Vec<usize> = (0..q).collect();
    let qg = task.gradients(&model, queries, &qids, Role::Query, &ad).inner();
    check_finite(&qg, "query gradients")?;
    let scorer = Scorer::new(curv, qg, s.lambdas.clone());
    scorer.score_range(range, s.images_per_batch, progress, |chunk| {
        let rows: Vec<f32> = chunk.iter().flat_map(|&i| ds.image(i).iter().copied()).collect();
        let g = task.gradients(&model, &rows, chunk, Role::Train, &ad).inner();
        check_finite(&g, "training gradients")?;
        Ok(g)
    })
}

fn check_finite(t: &Tensor<2>, what: &str) -> Result<()> {
    let s: f32 = t.clone().abs().sum().into_scalar();
    if !s.is_finite() {
        bail!("{what} contain NaN or infinity (is the model diverged?)");
    }
    Ok(())
}

/// The training images shard `i` of `n` scores: shards own whole scoring batches (aligned to
/// `images_per_batch` from image 0), so every image is scored in the same batch composition
/// sharded or not, and the merge is bit-exact.
pub fn shard_columns(n_train: usize, images_per_batch: usize, (i, n): (usize, usize)) -> Range<usize> {
    let per_batch = images_per_batch.max(1);
    let batches = shard_range(n_train.div_ceil(per_batch), i, n);
    (batches.start * per_batch)..(batches.end * per_batch).min(n_train)
}

/// Where the scores for damping `lambda` go beside `out`: `STEM.lambda-L.npy`.
pub fn lambda_path(out: &Path, lambda: f64) -> PathBuf {
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("scores");
    out.with_file_name(format!("{stem}.lambda-{lambda:e}.npy"))
}

/// Writes one `[rows x cols]` matrix per damping value: the first at `out`, the others at
/// [`lambda_path`].
pub fn write_score_grid(
    out: &Path,
    lambdas: &[f64],
    scores: &[Vec<f32>],
    rows: usize,
    cols: usize,
) -> Result<()> {
    write_matrix(out, &scores[0], rows, cols).with_context(|| out.display().to_string())?;
    for (l, s) in lambdas.iter().zip(scores).skip(1) {
        let p = lambda_path(out, *l);
        write_matrix(&p, s, rows, cols).with_context(|| p.display().to_string())?;
    }
    Ok(())
}

/// What `attribute score` does: score (a shard of) a run's training set against queries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreJob {
    /// Run directory of a trained model.
    pub run: PathBuf,
    /// Factor file from [`FitJob`].
    pub factors: PathBuf,
    /// Queries: a `[Q, D]` f32 .npy of images in [-1, 1].
    pub queries: PathBuf,
    /// Output .npy (`[Q x columns]` for the first damping; the others beside it).
    pub out: PathBuf,
    /// Shard `(i, n)` of the training set (`(0, 1)`: all of it).
    pub shard: (usize, usize),
    /// Scoring settings.
    pub settings: ScoreSettings,
}

impl ScoreJob {
    /// Scores and writes the matrices; returns `(queries, columns)`. Nothing is written when
    /// the factors, queries or settings do not fit the run.
    pub fn run(&self, dev: &Device, progress: &dyn Progress) -> Result<(usize, usize)> {
        let (i, n) = self.shard;
        if n == 0 || i >= n {
            bail!("--shard {i}/{n}: need 0 <= i < n");
        }
        let trained = load_trained(&self.run, dev)?;
        self.settings.validate(trained.diffusion.steps())?;
        let infos = layer_infos(&trained.model, dev);
        let curv = EigenCurvature::load(&self.factors, Some(&infos))?;
        curv.meta.check(&self.factors, curvature::LossKind::Mse, None)?;
        let (queries, qn, qd) =
            read_matrix(&self.queries).with_context(|| self.queries.display().to_string())?;
        let d = trained.model.data_dim();
        if qd != d {
            bail!("{}: queries have {qd} pixels, the model takes {d}", self.queries.display());
        }
        if queries.iter().any(|v| !v.is_finite()) {
            bail!("{}: queries contain NaN or infinity", self.queries.display());
        }
        let n_train = trained.config.train_data()?.0.n;
        let range = shard_columns(n_train, self.settings.images_per_batch, self.shard);
        let cols = range.len();
        let scores = score_range(&trained, &curv, &queries, range, &self.settings, dev, progress)?;
        write_score_grid(&self.out, &self.settings.lambdas, &scores, qn, cols)?;
        crate::meta::ScoreMeta {
            curvature: curv.meta.clone(),
            measurement: format!("{:?}", self.settings.measurement),
            shard: self.shard,
        }
        .write_beside(&self.out, &self.settings.lambdas)?;
        Ok((qn, cols))
    }
}

/// Concatenates shard score matrices (in shard order, columns side by side) into `out`;
/// returns `(rows, columns)`.
pub fn merge_shards(out: &Path, shards: &[PathBuf]) -> Result<(usize, usize)> {
    if shards.is_empty() {
        bail!("merge needs at least one shard file");
    }
    crate::meta::check_shards(shards)?;
    let mut parts = Vec::new();
    for p in shards {
        parts.push(read_matrix(p).with_context(|| p.display().to_string())?);
    }
    let rows = parts[0].1;
    if let Some((_, r, _)) = parts.iter().find(|p| p.1 != rows) {
        bail!("shards disagree on the number of queries ({rows} vs {r})");
    }
    let cols: usize = parts.iter().map(|p| p.2).sum();
    let mut merged = vec![0f32; rows * cols];
    let mut off = 0;
    for (data, _, c) in &parts {
        for r in 0..rows {
            merged[r * cols + off..r * cols + off + c].copy_from_slice(&data[r * c..(r + 1) * c]);
        }
        off += c;
    }
    write_matrix(out, &merged, rows, cols).with_context(|| out.display().to_string())?;
    crate::meta::write_merged(out, shards)?;
    Ok((rows, cols))
}

/// 8-bit quantisation, as if the sample had been saved as a PNG (spec p1 §1.3).
pub fn quantise(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| data::to_u8(v) as f32 / 255.0 * 2.0 - 1.0).collect()
}
