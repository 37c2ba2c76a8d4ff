//! A training run on disk: `config.json` (everything needed to rebuild the model and data),
//! `checkpoint/` (weights, EMA, optimizer, step) and outputs such as `samples.png`.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use data::{load_mnist, Dataset, Split};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{load_module, stable_param_ids, write_atomic, CheckpointError};
use crate::diffusion::{Diffusion, DiffusionConfig};
use crate::model::{AnyDenoiser, ModelConfig};
use crate::train::{checkpoint_dir, TrainConfig, TrainData};

/// Which images a run trains on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    /// Directory with the four MNIST IDX files; `None` = the embedded subset.
    pub dir: Option<PathBuf>,
    /// Classes to keep (empty = all).
    pub classes: Vec<u8>,
    /// Side length after area downsampling (28 = none).
    pub size: usize,
    /// Keep at most this many images per class (class-balanced, seeded), `None` = all.
    pub per_class: Option<usize>,
    /// Seed of the subset selection.
    pub subset_seed: u64,
}

impl Default for DataSpec {
    fn default() -> Self {
        Self { dir: None, classes: vec![], size: 28, per_class: None, subset_seed: 0 }
    }
}

impl DataSpec {
    /// Load the images this spec describes from the given split.
    pub fn load(&self, split: Split) -> Result<Dataset, data::DataError> {
        let mut ds = load_mnist(self.dir.as_deref(), split)?;
        if !self.classes.is_empty() {
            ds = ds.filter_classes(&self.classes);
        }
        if let Some(k) = self.per_class {
            ds = ds.balanced_subset(k, self.subset_seed);
        }
        if self.size != ds.height || self.size != ds.width {
            ds = ds.resize_area(self.size, self.size);
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
    let ckpt = checkpoint_dir(run_dir);
    let meta_path = ckpt.join("state.json");
    let text = std::fs::read_to_string(&meta_path)
        .map_err(|source| CheckpointError::Io { path: meta_path.clone(), source })?;
    let meta: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CheckpointError::Json { path: meta_path.clone(), message: e.to_string() })?;
    let step = meta.get("step").and_then(|s| s.as_u64()).unwrap_or(0) as usize;
    let model = load_module(stable_param_ids(config.model.init(device)), &ckpt.join("ema.safetensors"))?;
    Ok(TrainedModel { diffusion: config.diffusion(), config, model, step })
}
