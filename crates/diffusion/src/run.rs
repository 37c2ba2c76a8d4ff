//! A training run on disk: `config.json` (everything needed to rebuild the model and data),
//! `checkpoint` (a link to the newest complete generation `checkpoint-<step>/` of weights, EMA,
//! optimizer and step; older runs have a plain `checkpoint/` directory, read the same way) and
//! outputs such as `samples.png`.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use data::{load_mnist, Dataset, Split};
use serde::{Deserialize, Serialize};

use foundation::progress::{NoProgress, Progress};
use foundation::train::Event;

use crate::checkpoint::{
    load_module, read_step, stable_param_ids, write_atomic, CheckpointError, Checkpoints,
};
use crate::diffusion::{Diffusion, DiffusionConfig};
use crate::model::{AnyDenoiser, ModelConfig};
use crate::train::{checkpoint_dir, TrainConfig, TrainData, TrainState, Trainer};

/// Which images a run trains on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    /// Which data set (MNIST when absent from a stored config).
    #[serde(default, skip_serializing_if = "DataSource::is_mnist")]
    pub source: DataSource,
    /// Directory with the IDX files: MNIST's four (`None` = the embedded subset), or
    /// Fashion-MNIST's two (`None` = `<shared data>/fashion-mnist`).
    pub dir: Option<PathBuf>,
    /// Classes to keep (empty = all).
    pub classes: Vec<u8>,
    /// Side length after area downsampling (28 = none).
    pub size: usize,
    /// Keep at most this many images per class (class-balanced, seeded), `None` = all.
    pub per_class: Option<usize>,
    /// Seed of the subset selection.
    pub subset_seed: u64,
    /// Keep only these indices of the selected images (after every other filter), e.g. a random
    /// half of the training set for a retraining experiment. `None` = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indices: Option<Vec<usize>>,
}

impl Default for DataSpec {
    fn default() -> Self {
        Self {
            source: DataSource::Mnist,
            dir: None,
            classes: vec![],
            size: 28,
            per_class: None,
            subset_seed: 0,
            indices: None,
        }
    }
}

/// The image data sets a run can train on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum DataSource {
    /// MNIST digits (the official 60k/10k split, or the embedded subset).
    #[default]
    Mnist,
    /// Fashion-MNIST under the seeded split of `data::load_fashion_mnist_split`.
    Fashion,
}

impl DataSource {
    /// Whether this is MNIST (the default, left out of stored configs).
    pub fn is_mnist(&self) -> bool {
        *self == DataSource::Mnist
    }

    /// The name in reports.
    pub fn describe(self) -> &'static str {
        match self {
            DataSource::Mnist => "MNIST",
            DataSource::Fashion => "Fashion-MNIST (seeded split)",
        }
    }
}

/// The data-selection flags shared by the binaries that train models (`ddpm train`,
/// `attribute lds`), flattened into their argument structs.
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct DataArgs {
    /// Data set: mnist, or fashion (Fashion-MNIST, seeded 60k/10k split).
    #[cfg_attr(feature = "cli", arg(long, value_enum))]
    pub dataset: Option<DataSource>,
    /// Directory with the IDX files (default: the embedded MNIST subset; for fashion,
    /// `<shared data>/fashion-mnist`).
    #[cfg_attr(feature = "cli", arg(long))]
    pub data: Option<PathBuf>,
    /// Comma-separated classes to keep (default: all).
    #[cfg_attr(feature = "cli", arg(long, value_delimiter = ','))]
    pub classes: Option<Vec<u8>>,
    /// Image side after area downsampling.
    #[cfg_attr(feature = "cli", arg(long))]
    pub size: Option<usize>,
    /// Keep at most this many images per class.
    #[cfg_attr(feature = "cli", arg(long))]
    pub per_class: Option<usize>,
}

impl DataArgs {
    /// Whether any of the flags was given.
    pub fn any(&self) -> bool {
        self.dataset.is_some()
            || self.data.is_some()
            || self.classes.is_some()
            || self.size.is_some()
            || self.per_class.is_some()
    }

    /// Override the fields of `spec` whose flag was given.
    pub fn apply(&self, spec: &mut DataSpec) {
        if let Some(source) = self.dataset {
            spec.source = source;
        }
        if let Some(dir) = &self.data {
            spec.dir = Some(dir.clone());
        }
        if let Some(classes) = &self.classes {
            spec.classes = classes.clone();
        }
        if let Some(size) = self.size {
            spec.size = size;
        }
        if let Some(per_class) = self.per_class {
            spec.per_class = Some(per_class);
        }
    }
}

impl DataSpec {
    /// Load the images this spec describes from the given split.
    pub fn load(&self, split: Split) -> Result<Dataset, data::DataError> {
        let mut ds = match self.source {
            DataSource::Mnist => load_mnist(self.dir.as_deref(), split)?,
            DataSource::Fashion => {
                let dir = self
                    .dir
                    .clone()
                    .or_else(|| data::shared_data_dir().map(|d| d.join("fashion-mnist")))
                    .ok_or_else(|| {
                        data::DataError::InvalidArgument(
                            "Fashion-MNIST: no --data directory given and no shared data directory found"
                                .into(),
                        )
                    })?;
                data::load_fashion_mnist_split(&dir, split)?
            }
        };
        if !self.classes.is_empty() {
            ds = ds.filter_classes(&self.classes);
        }
        if let Some(k) = self.per_class {
            ds = ds.balanced_subset(k, self.subset_seed);
        }
        if self.size != ds.height || self.size != ds.width {
            ds = ds.resize_area(self.size, self.size);
        }
        if let Some(idx) = &self.indices {
            if let Some(&bad) = idx.iter().find(|&&i| i >= ds.n) {
                return Err(data::DataError::InvalidArgument(format!(
                    "subset index {bad} is out of range for {} images",
                    ds.n
                )));
            }
            ds = ds.select(idx);
        }
        Ok(ds)
    }
}

/// Everything that defines a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Network.
    pub model: ModelConfig,
    /// Diffusion process and loss.
    pub diffusion: DiffusionConfig,
    /// Optimisation.
    pub train: TrainConfig,
    /// Training data.
    pub data: DataSpec,
}

impl RunConfig {
    /// Path of the config file inside a run directory.
    pub fn path(run_dir: &Path) -> PathBuf {
        run_dir.join("config.json")
    }

    /// Read `config.json` from a run directory.
    pub fn load(run_dir: &Path) -> Result<Self, CheckpointError> {
        let path = Self::path(run_dir);
        let text = std::fs::read_to_string(&path)
            .map_err(|source| CheckpointError::Io { path: path.clone(), source })?;
        serde_json::from_str(&text).map_err(|e| CheckpointError::Json { path, message: e.to_string() })
    }

    /// Write `config.json` into a run directory (atomically).
    pub fn save(&self, run_dir: &Path) -> Result<(), CheckpointError> {
        std::fs::create_dir_all(run_dir)
            .map_err(|source| CheckpointError::Io { path: run_dir.to_path_buf(), source })?;
        write_atomic(&Self::path(run_dir), serde_json::to_string_pretty(self).unwrap().as_bytes())
    }

    /// The training data as flat rows.
    pub fn train_data(&self) -> Result<(Dataset, TrainData), data::DataError> {
        let ds = self.data.load(Split::Train)?;
        let td = TrainData::new(ds.images.clone(), ds.n, ds.pixels_per_image());
        Ok((ds, td))
    }

    /// The diffusion process.
    pub fn diffusion(&self) -> Diffusion {
        Diffusion::new(self.diffusion.clone())
    }
}

/// A trained model loaded for inference: its config, diffusion and EMA weights (plain device).
pub struct TrainedModel {
    /// Run configuration.
    pub config: RunConfig,
    /// Diffusion process.
    pub diffusion: Diffusion,
    /// EMA weights.
    pub model: AnyDenoiser,
    /// Optimisation steps the weights had.
    pub step: usize,
}

/// Load the EMA model of a run directory (refuses weights that do not fit its config).
pub fn load_trained(run_dir: &Path, device: &Device) -> Result<TrainedModel, CheckpointError> {
    let config = RunConfig::load(run_dir)?;
    let pointer = checkpoint_dir(run_dir);
    let ckpt = Checkpoints::new(&pointer).latest().ok_or(CheckpointError::NoCheckpoint { path: pointer })?;
    let meta_path = ckpt.join("state.json");
    let text = std::fs::read_to_string(&meta_path)
        .map_err(|source| CheckpointError::Io { path: meta_path.clone(), source })?;
    let meta: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CheckpointError::Json { path: meta_path.clone(), message: e.to_string() })?;
    let step = meta.get("step").and_then(|s| s.as_u64()).unwrap_or(0) as usize;
    let model = load_module(stable_param_ids(config.model.init(device)), &ckpt.join("ema.safetensors"))?;
    Ok(TrainedModel { diffusion: config.diffusion(), config, model, step })
}

/// Whether `run_dir` holds a finished training run of exactly `config` (same settings, final
/// step reached).
pub fn is_finished(run_dir: &Path, config: &RunConfig) -> bool {
    RunConfig::load(run_dir).ok().as_ref() == Some(config)
        && Checkpoints::new(&checkpoint_dir(run_dir))
            .latest()
            .and_then(|dir| read_step(&dir.join("state.json")))
            == Some(config.train.steps)
}

/// Progress of [`train_run`], for logs and progress bars.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TrainEvent {
    /// Training (re)starts at `step`, with the model's parameter count and the training-set size.
    Started {
        /// First step to take (non-zero when resuming).
        step: usize,
        /// Trainable parameters.
        params: usize,
        /// Training images.
        images: usize,
    },
    /// A step was taken; `loss` is its minibatch loss.
    Step {
        /// Steps taken so far.
        step: usize,
        /// Minibatch loss of this step.
        loss: f32,
    },
    /// A checkpoint for `step` was written.
    Checkpoint {
        /// Steps taken so far.
        step: usize,
    },
}

/// Train the run `config` in `run_dir` to its last step: resumes from the run's newest complete
/// checkpoint when one exists (refusing a directory that holds another run, or one with traces of
/// a checkpoint but no complete generation), checkpoints every `checkpoint_every` steps and at the
/// end. `on_event` sees the start, every step and every checkpoint; an error it returns stops
/// training. Returns the final state (the EMA weights are the model to sample from).
pub fn train_run(
    config: &RunConfig,
    run_dir: &Path,
    checkpoint_every: usize,
    device: &Device,
    on_event: impl FnMut(TrainEvent) -> Result<(), CheckpointError>,
) -> Result<TrainState<AnyDenoiser>, CheckpointError> {
    run(config, run_dir, checkpoint_every, device, false, &NoProgress, on_event)
}

/// Continue the run in `run_dir` (settings from its `config.json`) from its newest complete
/// checkpoint to its last step, like [`train_run`] but reporting every step to `progress` (`ddpm train
/// --resume`); a run
/// without a complete checkpoint is an error ([`CheckpointError::NoCheckpoint`], one line), never
/// a silent restart from step 0.
pub fn resume_run(
    run_dir: &Path,
    checkpoint_every: usize,
    device: &Device,
    progress: &dyn Progress,
    on_event: impl FnMut(TrainEvent) -> Result<(), CheckpointError>,
) -> Result<TrainState<AnyDenoiser>, CheckpointError> {
    let config = RunConfig::load(run_dir)?;
    run(&config, run_dir, checkpoint_every, device, true, progress, on_event)
}

fn run(
    config: &RunConfig,
    run_dir: &Path,
    checkpoint_every: usize,
    device: &Device,
    must_resume: bool,
    progress: &dyn Progress,
    mut on_event: impl FnMut(TrainEvent) -> Result<(), CheckpointError>,
) -> Result<TrainState<AnyDenoiser>, CheckpointError> {
    if config.train.microbatches > 1 {
        if let ModelConfig::Unet(unet) = &config.model {
            if unet.dropout > 0.0 {
                return Err(CheckpointError::Run(
                    "concurrent microbatches need dropout 0 (a step with dropout runs in one pass)".into(),
                ));
            }
        }
    }
    let pointer = checkpoint_dir(run_dir);
    let checkpoints = Checkpoints::new(&pointer);
    match RunConfig::load(run_dir) {
        Ok(existing) if existing != *config => {
            return Err(CheckpointError::Mismatch {
                path: RunConfig::path(run_dir),
                message: "the directory holds a run with other settings".into(),
            })
        }
        Ok(_) => {}
        Err(_) => config.save(run_dir)?,
    }
    let latest = checkpoints.latest();
    if latest.is_none() && (must_resume || checkpoints.any_trace()) {
        return Err(CheckpointError::NoCheckpoint { path: pointer });
    }
    let (ds, data) =
        config.train_data().map_err(|e| CheckpointError::Run(format!("loading training data: {e}")))?;
    let diffusion = config.diffusion();
    let trainer = Trainer::new(config.train.clone(), &diffusion, &data, device);
    let mut state = match latest {
        Some(_) => trainer.load(&pointer, |d| config.model.init(d))?,
        None => trainer.init_state(|rng, d| config.model.init_with(rng, d)),
    };
    on_event(TrainEvent::Started { step: state.step, params: state.model.num_params(), images: ds.n })?;
    let meta = trainer.checkpoint_meta();
    trainer.inner.run(
        &mut state,
        config.train.steps,
        Some((&checkpoints, checkpoint_every, &meta)),
        progress,
        |event| match event {
            Event::Step { step, loss } => on_event(TrainEvent::Step { step, loss }),
            Event::Checkpoint { step } => on_event(TrainEvent::Checkpoint { step }),
        },
    )?;
    Ok(state)
}
