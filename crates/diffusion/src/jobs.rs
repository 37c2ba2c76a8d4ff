//! The `ddpm` commands as library calls: train a run directory (new or resumed) and draw its
//! sample grid, draw samples in batches (optionally scored by the MNIST classifier), and the
//! test-set ELBO. Each takes a validated, serialisable job description and reports progress
//! through [`Progress`]; the binary only parses flags and prints what these return.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use data::{write_png_grid, Split};
use foundation::progress::Progress;
use foundation::train::Checkpoints;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{write_atomic, CheckpointError};
use crate::elbo::elbo_bits_per_dim;
use crate::eval::{default_classifier_path, evaluate_samples, real_references, SampleQuality};
use crate::model::{AnyDenoiser, ModelConfig};
use crate::run::{load_trained, train_run, DataSpec, RunConfig, TrainEvent};
use crate::sample::{sample, sample_batched, ReverseVariance, Sampler};
use crate::train::checkpoint_dir;

/// Errors of the `ddpm` jobs, one message each.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Settings that cannot work (the message names the flag).
    #[error("{0}")]
    Invalid(String),
    /// A run directory: config, checkpoint, training or an output file.
    #[error(transparent)]
    Run(#[from] CheckpointError),
    /// Loading images or writing PNGs.
    #[error(transparent)]
    Data(#[from] data::DataError),
    /// A report that does not serialise.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// The MNIST classifier of `--eval`.
    #[error("MNIST classifier: {0}")]
    Classifier(#[from] mnist_classifier::ClassifierError),
}

/// The jobs' result.
pub type Result<T, E = JobError> = std::result::Result<T, E>;

macro_rules! bail {
    ($($arg:tt)*) => {
        return Err(JobError::Invalid(format!($($arg)*)))
    };
}

/// What `ddpm train` does: start a new run or continue a stored one, then draw a sample grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainJob {
    /// Run directory (config, checkpoints, log, samples).
    pub out: PathBuf,
    /// `None`: continue the run stored in `out` with its own settings. `Some`: a new run (refused
    /// when `out` already holds a checkpoint).
    pub config: Option<RunConfig>,
    /// Write a checkpoint every this many steps.
    pub checkpoint_every: usize,
    /// Samples in the final grid `out/samples.png` (0: none).
    pub samples: usize,
}

/// What a finished [`TrainJob`] did.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    /// The run's settings.
    pub config: RunConfig,
    /// Step training (re)started from.
    pub first_step: usize,
    /// Trainable parameters.
    pub params: usize,
    /// Training images.
    pub images: usize,
    /// Wall seconds of training.
    pub seconds: f64,
    /// The sample grid, when one was drawn.
    pub samples_png: Option<PathBuf>,
}

impl TrainJob {
    /// Checks the settings (once, before anything is written).
    pub fn validate(&self) -> Result<()> {
        if self.checkpoint_every == 0 {
            bail!("--checkpoint-every must be at least 1");
        }
        if let Some(c) = &self.config {
            if c.train.steps == 0 || c.train.batch_size == 0 {
                bail!("steps and batch size must be positive");
            }
            if !(c.train.lr.is_finite() && c.train.lr > 0.0) {
                bail!("--lr {}: must be a positive number", c.train.lr);
            }
            if let ModelConfig::Unet(u) = &c.model {
                if let Err(e) = u.validate() {
                    bail!("{e}");
                }
            }
        }
        Ok(())
    }

    /// Trains to the last step (resuming from the run's checkpoint), logging the smoothed loss
    /// to `out/train_log.jsonl` at each checkpoint, then draws the sample grid. A resume that
    /// finds no checkpoint says so instead of starting over.
    pub fn run(&self, device: &Device, progress: &dyn Progress) -> Result<TrainReport> {
        self.validate()?;
        // Whether a complete checkpoint exists is decided by the crash-safe lookup (pointer, else
        // the newest complete generation), not by the pointer alone.
        let checkpoints = Checkpoints::new(&checkpoint_dir(&self.out));
        let config = match &self.config {
            None => {
                let c = RunConfig::load(&self.out)?;
                if checkpoints.latest().is_none() {
                    bail!(
                        "{}: nothing to resume (no complete checkpoint); run without --resume to start it",
                        self.out.display()
                    );
                }
                c
            }
            Some(c) => {
                if checkpoints.latest().is_some() || checkpoints.pointer().exists() {
                    bail!(
                        "{} already holds a checkpoint; pass --resume to continue it or choose another --out",
                        self.out.display()
                    );
                }
                c.save(&self.out)?;
                c.clone()
            }
        };
        let started = Instant::now();
        let mut smoothed = None::<f32>;
        let mut log = String::new();
        let log_path = self.out.join("train_log.jsonl");
        let mut first = (0, 0, 0);
        progress.start("train", config.train.steps as u64);
        let state = train_run(&config, &self.out, self.checkpoint_every, device, |event| {
            match event {
                TrainEvent::Started { step, params, images } => {
                    first = (step, params, images);
                    progress.advance(step as u64);
                    let side = config.data.size;
                    progress.message(&format!(
                        "{} on {images} images {side}x{side} ({params} params) from step {step}",
                        model_kind(&config.model)
                    ));
                }
                TrainEvent::Step { step, loss } => {
                    let s = smoothed.map_or(loss, |s| 0.98 * s + 0.02 * loss);
                    smoothed = Some(s);
                    progress.message(&format!("loss {s:.4}"));
                    progress.advance(1);
                    if step % 50 == 0 {
                        log.push_str(&format!("{{\"step\":{step},\"loss\":{s:.6}}}\n"));
                    }
                }
                TrainEvent::Checkpoint { .. } => append(&log_path, &std::mem::take(&mut log))?,
            }
            Ok(())
        })?;
        progress.finish();
        let seconds = started.elapsed().as_secs_f64();
        let mut samples_png = None;
        if self.samples > 0 {
            let model: AnyDenoiser = state.ema;
            let sampler = Sampler::default();
            let x = sample(&model, &config.diffusion(), &sampler, self.samples, 1, device, Some(progress));
            progress.finish();
            let png = self.out.join("samples.png");
            let side = config.data.size;
            write_png_grid(&png, &x, self.samples, side, side, grid_columns(self.samples))?;
            samples_png = Some(png);
        }
        let (first_step, params, images) = first;
        Ok(TrainReport { config, first_step, params, images, seconds, samples_png })
    }
}

/// "U-Net" or "MLP".
pub fn model_kind(model: &ModelConfig) -> &'static str {
    match model {
        ModelConfig::Unet(_) => "U-Net",
        ModelConfig::Mlp(_) => "MLP",
    }
}

/// Columns of a square-ish grid of `n` images.
fn grid_columns(n: usize) -> usize {
    (n as f64).sqrt().ceil() as usize
}

/// Appends `text` to the training log at `path` (at each checkpoint) through the atomic
/// writer: a crash leaves the previous complete log, never a torn line.
fn append(path: &Path, text: &str) -> Result<(), CheckpointError> {
    let mut log = match std::fs::read_to_string(path) {
        Ok(old) => old,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(CheckpointError::Io { path: path.to_path_buf(), source }),
    };
    log.push_str(text);
    write_atomic(path, log.as_bytes())
}

/// What `ddpm sample` does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleJob {
    /// Run directory of a trained model.
    pub run: PathBuf,
    /// Number of samples.
    pub n: usize,
    /// Sampling seed.
    pub seed: u64,
    /// Output PNG grid (`None`: `run/samples-SEED.png`; at most 256 images are drawn).
    pub out: Option<PathBuf>,
    /// Score the samples with the MNIST classifier and write `run/quality.json`.
    pub eval: bool,
    /// MNIST directory of the reference statistics of `eval` (`None`: embedded subset).
    pub data: Option<PathBuf>,
    /// Images per batch.
    pub batch: usize,
    /// The sampler.
    pub sampler: Sampler,
}

/// What a finished [`SampleJob`] did.
#[derive(Clone, Debug, Serialize)]
pub struct SampleReport {
    /// The PNG grid written.
    pub png: PathBuf,
    /// Samples drawn.
    pub n: usize,
    /// Wall seconds of sampling.
    pub seconds: f64,
    /// Classifier metrics (with `eval`), also written to `run/quality.json`.
    pub quality: Option<SampleQuality>,
}

impl SampleJob {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.n == 0 {
            bail!("--n must be at least 1");
        }
        if self.eval && self.n < 2 {
            bail!("--eval needs at least 2 samples");
        }
        Ok(())
    }

    /// Draws the samples in batches, writes the grid, and scores them when asked.
    pub fn run(&self, device: &Device, progress: &dyn Progress) -> Result<SampleReport> {
        self.validate()?;
        let trained = load_trained(&self.run, device)?;
        let side = trained.config.data.size;
        let started = Instant::now();
        let x = sample_batched(
            &trained.model,
            &trained.diffusion,
            &self.sampler,
            self.n,
            self.batch,
            self.seed,
            device,
            progress,
        );
        let seconds = started.elapsed().as_secs_f64();
        let png = self.out.clone().unwrap_or_else(|| self.run.join(format!("samples-{}.png", self.seed)));
        let shown = self.n.min(256);
        write_png_grid(&png, &x[..shown * side * side], shown, side, side, grid_columns(shown))?;
        let quality = if self.eval {
            let classifier = crate::eval::classifier::load_classifier(&default_classifier_path(), device)
                .map_err(JobError::Classifier)?;
            let (test, train_ref) = real_references(self.data.as_deref(), side, self.n)?;
            let q = evaluate_samples(&classifier, &x, self.n, side, side, &test, &train_ref, device);
            write_atomic(&self.run.join("quality.json"), serde_json::to_string_pretty(&q)?.as_bytes())?;
            Some(q)
        } else {
            None
        };
        Ok(SampleReport { png, n: self.n, seconds, quality })
    }
}

/// What `ddpm elbo` does: the negative ELBO in bits/dim of test images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ElboJob {
    /// Run directory of a trained model.
    pub run: PathBuf,
    /// MNIST directory (`None`: the embedded test subset).
    pub data: Option<PathBuf>,
    /// Number of test images.
    pub n: usize,
    /// Stratified timesteps per image.
    pub t_samples: usize,
    /// Reverse variance of the model.
    pub variance: ReverseVariance,
    /// Seed of the dequantisation and noise draws.
    pub seed: u64,
}

/// Result of an [`ElboJob`].
#[derive(Clone, Debug, Serialize)]
pub struct ElboReport {
    /// Test images used.
    pub images: usize,
    /// Mean bits/dim.
    pub bits_per_dim: f64,
    /// Its standard error over images (0 for one image).
    pub standard_error: f64,
    /// Stratified timesteps per image.
    pub t_samples: usize,
}

impl ElboJob {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.n == 0 || self.t_samples == 0 {
            bail!("--n and --t-samples must be at least 1");
        }
        Ok(())
    }

    /// Estimates the bound on the first `n` test images (of the run's classes and size).
    pub fn run(&self, device: &Device, progress: &dyn Progress) -> Result<ElboReport> {
        self.validate()?;
        let trained = load_trained(&self.run, device)?;
        let spec = DataSpec { dir: self.data.clone(), ..trained.config.data.clone() };
        let test = spec.load(Split::Test)?.subset(self.n, 0);
        let bpd = elbo_bits_per_dim(
            &trained.model,
            &trained.diffusion,
            &test.images,
            test.n,
            self.variance,
            self.t_samples,
            100,
            self.seed,
            device,
            Some(progress),
        );
        progress.finish();
        let (mean, se) = foundation::stats::mean_se(&bpd);
        Ok(ElboReport {
            images: test.n,
            bits_per_dim: mean,
            standard_error: if se.is_nan() { 0.0 } else { se },
            t_samples: self.t_samples,
        })
    }
}
