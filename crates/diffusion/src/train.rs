//! Diffusion training: the denoising objective ([`DiffusionObjective`]) on the workspace's one
//! training loop, [`foundation::train::Trainer`] (AdamW, linear warmup + cosine decay, global-norm
//! gradient clipping, EMA weights, concurrent microbatches, crash-safe checkpoints).
//!
//! Every random quantity of step `s` (minibatch, timesteps, noise, dropout) is derived from
//! `(seed, s)` alone, and the initial weights from `(seed, Purpose::Init)`, so a run resumed from a
//! checkpoint at step `k` takes exactly the same steps as an uninterrupted run, and two runs on
//! two threads of one process get the weights each gets alone.

use std::ops::Range;
use std::path::{Path, PathBuf};

use burn::optim::GradientsParams;
use burn::prelude::*;
use foundation::rng::{epoch_order, normals, stream_for, timesteps, Purpose};
use foundation::train::{Checkpoints, Objective, OptimConfig};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::checkpoint::CheckpointError;
use crate::diffusion::Diffusion;
use crate::model::Denoiser;
use foundation::tap::Tap;

pub use foundation::train::{clip_global_norm, TrainState};

/// Optimisation hyper-parameters: the minibatch size and the trainer's settings
/// ([`OptimConfig`], which documents each field; [`TrainConfig::optim`] converts), flat as they
/// stand in a run's `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// [`OptimConfig::steps`].
    pub steps: usize,
    /// Minibatch size.
    pub batch_size: usize,
    /// [`OptimConfig::lr`].
    pub lr: f64,
    /// [`OptimConfig::warmup_steps`].
    pub warmup_steps: usize,
    /// [`OptimConfig::min_lr_ratio`].
    pub min_lr_ratio: f64,
    /// [`OptimConfig::weight_decay`].
    pub weight_decay: f64,
    /// [`OptimConfig::grad_clip`].
    pub grad_clip: Option<f64>,
    /// [`OptimConfig::ema_decay`].
    pub ema_decay: f64,
    /// [`OptimConfig::seed`]; also of every other random draw of the run.
    pub seed: u64,
    /// [`OptimConfig::microbatches`]. Burn's CPU ops have serial stretches (a 28x28 U-Net step
    /// keeps 1.3 of 2 cores busy), which a second pass fills; same numbers up to float rounding,
    /// deterministic. A model with dropout runs in one pass regardless
    /// ([`Denoiser::draws_randomness`]; `ddpm train` refuses the combination outright). Absent in
    /// older configs (= 1).
    #[serde(default = "one")]
    pub microbatches: usize,
}

fn one() -> usize {
    1
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 2000,
            batch_size: 128,
            lr: 1e-3,
            warmup_steps: 100,
            min_lr_ratio: 0.05,
            weight_decay: 0.0,
            grad_clip: Some(1.0),
            ema_decay: 0.999,
            seed: 0,
            microbatches: 1,
        }
    }
}

impl TrainConfig {
    /// The trainer's settings.
    pub fn optim(&self) -> OptimConfig {
        OptimConfig {
            steps: self.steps,
            lr: self.lr,
            warmup_steps: self.warmup_steps,
            min_lr_ratio: self.min_lr_ratio,
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
            ema_decay: self.ema_decay,
            seed: self.seed,
            microbatches: self.microbatches,
        }
    }

    /// EMA decay used after step `step` ([`OptimConfig::ema_decay_at`]): without the warm-up the
    /// EMA keeps `ema_decay^step` of the random initial weights (37% after 1000 steps at 0.999),
    /// which visibly spoils early samples.
    pub fn ema_decay_at(&self, step: usize) -> f64 {
        self.optim().ema_decay_at(step)
    }

    /// Learning rate used at (zero-based) step `step` ([`OptimConfig::lr_at`]).
    pub fn lr_at(&self, step: usize) -> f64 {
        self.optim().lr_at(step)
    }

    /// Dataset indices of the minibatch of step `step` from `n` examples: epochs are seeded
    /// permutations.
    pub fn batch_indices(&self, n: usize, step: usize) -> Vec<usize> {
        let b = self.batch_size;
        let mut out = Vec::with_capacity(b);
        let mut cached: Option<(usize, Vec<usize>)> = None;
        for k in step * b..(step + 1) * b {
            let (epoch, pos) = (k / n, k % n);
            if cached.as_ref().map(|c| c.0) != Some(epoch) {
                cached = Some((epoch, epoch_order(self.seed, epoch, n)));
            }
            out.push(cached.as_ref().unwrap().1[pos]);
        }
        out
    }
}

/// The data a run trains on: flattened rows in [-1, 1].
#[derive(Clone, Debug)]
pub struct TrainData {
    /// Row-major `[n, dim]`.
    pub rows: Vec<f32>,
    /// Number of rows.
    pub n: usize,
    /// Row length.
    pub dim: usize,
}

impl TrainData {
    /// Wrap row-major data.
    pub fn new(rows: Vec<f32>, n: usize, dim: usize) -> Self {
        assert_eq!(rows.len(), n * dim, "data length must be n * dim");
        Self { rows, n, dim }
    }

    /// The workspace's data fingerprint ([`foundation::fingerprint::of_f32`]) of the values,
    /// stored in checkpoints so a resume on different data is refused.
    pub fn fingerprint(&self) -> u64 {
        foundation::fingerprint::of_f32(&self.rows, self.n)
    }

    /// Gather rows into a `[idx.len(), dim]` tensor.
    pub fn batch(&self, idx: &[usize], device: &Device) -> Tensor<2> {
        let mut v = Vec::with_capacity(idx.len() * self.dim);
        for &i in idx {
            v.extend_from_slice(&self.rows[i * self.dim..(i + 1) * self.dim]);
        }
        Tensor::from_data(TensorData::new(v, [idx.len(), self.dim]), device)
    }
}

/// The minibatch of one step: clean data, timesteps and noise.
#[derive(Clone, Debug)]
pub struct DiffusionBatch {
    /// Clean data `[B, D]`.
    pub x0: Tensor<2>,
    /// Timesteps, one per row.
    pub t: Vec<usize>,
    /// Noise `[B, D]`.
    pub eps: Tensor<2>,
}

/// The denoising objective: step `s` trains on the minibatch [`TrainConfig::batch_indices`] with
/// timesteps and noise from `stream_for(seed, Purpose::TrainNoise, s)`; the loss is
/// [`Diffusion::loss`].
pub struct DiffusionObjective<'a> {
    /// The diffusion process and loss.
    pub diffusion: &'a Diffusion,
    /// Training data.
    pub data: &'a TrainData,
    /// Batch size and seed come from here.
    pub config: TrainConfig,
}

impl<M: Denoiser> Objective<M> for DiffusionObjective<'_> {
    type Batch = DiffusionBatch;

    fn batch(&self, step: usize, device: &Device) -> DiffusionBatch {
        let idx = self.config.batch_indices(self.data.n, step);
        let mut rng = stream_for(self.config.seed, Purpose::TrainNoise, step as u64);
        let t = timesteps(&mut rng, idx.len(), self.diffusion.steps());
        let eps = normals(&mut rng, idx.len() * self.data.dim);
        let eps = Tensor::from_data(TensorData::new(eps, [idx.len(), self.data.dim]), device);
        DiffusionBatch { x0: self.data.batch(&idx, device), t, eps }
    }

    fn batch_len(&self, batch: &DiffusionBatch) -> usize {
        batch.t.len()
    }

    fn slice(&self, batch: &DiffusionBatch, range: Range<usize>) -> DiffusionBatch {
        let len = range.end - range.start;
        DiffusionBatch {
            x0: batch.x0.clone().narrow(0, range.start, len),
            t: batch.t[range.clone()].to_vec(),
            eps: batch.eps.clone().narrow(0, range.start, len),
        }
    }

    fn loss(&self, model: &M, batch: DiffusionBatch) -> Tensor<1> {
        self.diffusion.loss(model, batch.x0, &batch.t, batch.eps, &mut Tap::off())
    }

    fn draws_randomness(&self, model: &M) -> bool {
        model.draws_randomness()
    }
}

/// Runs training steps of a diffusion model on fixed data: [`DiffusionObjective`] on
/// [`foundation::train::Trainer`].
pub struct Trainer<'a> {
    /// Optimisation settings.
    pub config: TrainConfig,
    /// The generic trainer and the objective.
    pub inner: foundation::train::Trainer<DiffusionObjective<'a>>,
    /// Autodiff device the model trains on.
    pub device: Device,
}

impl<'a> Trainer<'a> {
    /// A trainer on `device` (autodiff is added if missing).
    pub fn new(config: TrainConfig, diffusion: &'a Diffusion, data: &'a TrainData, device: &Device) -> Self {
        let objective = DiffusionObjective { diffusion, data, config: config.clone() };
        let inner = foundation::train::Trainer::new(config.optim(), objective, device);
        Self { device: inner.device.clone(), config, inner }
    }

    /// The diffusion process.
    pub fn diffusion(&self) -> &'a Diffusion {
        self.inner.objective.diffusion
    }

    /// The training data.
    pub fn data(&self) -> &'a TrainData {
        self.inner.objective.data
    }

    /// Fresh state from a model built by `init` from the run's initialisation stream
    /// (`stream_for(seed, Purpose::Init, 0)`), e.g. `|rng, d| config.init_with(rng, d)`.
    pub fn init_state<M: Denoiser>(&self, init: impl FnOnce(&mut ChaCha8Rng, &Device) -> M) -> TrainState<M> {
        self.inner.init_state(init)
    }

    /// Dataset indices of the minibatch of step `step`: epochs are seeded permutations.
    pub fn batch_indices(&self, step: usize) -> Vec<usize> {
        self.config.batch_indices(self.data().n, step)
    }

    /// One optimisation step; returns the minibatch loss.
    pub fn step<M: Denoiser>(&self, state: &mut TrainState<M>) -> f32 {
        self.inner.step(state)
    }

    /// Mean loss over the batch `(x0, t, eps)` (tensors on [`Trainer::device`]) of step `step` and
    /// its gradient with respect to `model`'s parameters, in `microbatches` concurrent passes (the
    /// step selects the dropout stream of a model with dropout).
    pub fn batch_gradients<M: Denoiser>(
        &self,
        model: &M,
        x0: Tensor<2>,
        t: &[usize],
        eps: Tensor<2>,
        step: usize,
    ) -> (f32, GradientsParams) {
        self.inner.gradients(model, DiffusionBatch { x0, t: t.to_vec(), eps }, step)
    }

    /// What `state.json` holds besides the step: the data fingerprint and the training settings,
    /// checked by [`load`](Self::load).
    pub fn checkpoint_meta(&self) -> serde_json::Value {
        serde_json::json!({ "data_fingerprint": self.data().fingerprint(), "train": self.config })
    }

    /// Save the state as a new generation of the checkpoint `dir` (model, EMA, optimizer, step;
    /// see [`foundation::train::checkpoint`]: a complete checkpoint exists at every instant).
    pub fn save<M: Denoiser>(&self, state: &TrainState<M>, dir: &Path) -> Result<(), CheckpointError> {
        self.inner.save(state, &Checkpoints::new(dir), &self.checkpoint_meta())
    }

    /// [`save`](Self::save) with a fault-injection hook (see
    /// [`Checkpoints::save_with_hook`]): `stop(k)` true stops the save before its write step `k`.
    pub fn save_with_hook<M: Denoiser>(
        &self,
        state: &TrainState<M>,
        dir: &Path,
        stop: &mut dyn FnMut(usize) -> bool,
    ) -> Result<(), CheckpointError> {
        self.inner.save_with_hook(state, &Checkpoints::new(dir), &self.checkpoint_meta(), stop)
    }

    /// Restore the newest complete generation of the checkpoint `dir` into a model built by
    /// `init` (its initial values are overwritten). Refuses a checkpoint made with other data or
    /// other training settings; [`CheckpointError::NoCheckpoint`] when there is none.
    pub fn load<M: Denoiser>(
        &self,
        dir: &Path,
        init: impl FnOnce(&Device) -> M,
    ) -> Result<TrainState<M>, CheckpointError> {
        self.inner.load(&Checkpoints::new(dir), init, |path, meta| self.check_meta(path, meta))
    }

    fn check_meta(&self, path: &Path, meta: &serde_json::Value) -> Result<(), CheckpointError> {
        let json_error = |message: String| CheckpointError::Json { path: path.to_path_buf(), message };
        let fingerprint = meta.get("data_fingerprint").and_then(|v| v.as_u64());
        if fingerprint != Some(self.data().fingerprint()) {
            return Err(CheckpointError::Mismatch {
                path: path.to_path_buf(),
                message: "it was trained on different data".into(),
            });
        }
        let train: TrainConfig = serde_json::from_value(meta.get("train").cloned().unwrap_or_default())
            .map_err(|e| json_error(e.to_string()))?;
        if train != self.config {
            return Err(CheckpointError::Mismatch {
                path: path.to_path_buf(),
                message: format!("training settings differ (checkpoint: {train:?})"),
            });
        }
        Ok(())
    }
}

/// Default checkpoint pointer inside a run directory (`run/checkpoint`, a link to the newest
/// generation `run/checkpoint-<step>/`).
pub fn checkpoint_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoint")
}
