//! Training: AdamW, linear warmup + cosine decay, global-norm gradient clipping, EMA weights,
//! seeded and resumable bit-for-bit from checkpoints.
//!
//! Every random quantity of step `s` (minibatch, timesteps, noise, dropout) is derived from
//! `(seed, s)` alone, so a run resumed from a checkpoint at step `k` takes exactly the same
//! steps as an uninterrupted run.

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{load_module, save_module, stable_param_ids, write_atomic, CheckpointError};
use crate::diffusion::Diffusion;
use crate::ema::ema_update;
use crate::model::Denoiser;
use crate::rng::{derived_seed, normals, purpose, stream, timesteps};
use crate::tap::Tap;

/// Optimisation hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Total optimisation steps (sets the cosine schedule's length).
    pub steps: usize,
    /// Minibatch size.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps from 0 to `lr`.
    pub warmup_steps: usize,
    /// Final learning rate as a fraction of `lr` at the end of the cosine decay.
    pub min_lr_ratio: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value (None: no clipping).
    pub grad_clip: Option<f64>,
    /// EMA decay per step.
    pub ema_decay: f64,
    /// Seed of every random draw of the run.
    pub seed: u64,
    /// Each batch is split into this many near-equal microbatches whose forward and backward passes
    /// run concurrently on the rayon pool; their gradients are combined, weighted by size, before
    /// clipping. Burn's CPU ops have serial stretches (a 28x28 U-Net step keeps 1.3 of 2 cores
    /// busy), which a second pass fills. Same objective as one pass over the batch, same numbers up
    /// to float rounding, deterministic. A model with dropout runs in one pass regardless
    /// ([`Denoiser::draws_randomness`]): its masks come from one device-wide random stream that
    /// concurrent passes would race for (`ddpm train` refuses the combination outright). Absent in
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
    /// EMA decay used after step `step`: `min(ema_decay, (1 + step) / (10 + step))`. Without this
    /// warm-up the EMA keeps `ema_decay^step` of the random initial weights (37% after 1000 steps
    /// at 0.999), which visibly spoils early samples.
    pub fn ema_decay_at(&self, step: usize) -> f64 {
        self.ema_decay.min((1.0 + step as f64) / (10.0 + step as f64))
    }

    /// Learning rate used at (zero-based) step `step`.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)
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

    /// A 64-bit fingerprint of the values (FNV-1a over the f32 bits), stored in checkpoints so a
    /// resume on different data is refused.
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for v in &self.rows {
            for b in v.to_bits().to_le_bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x100_0000_01b3);
            }
        }
        h ^ (self.n as u64).rotate_left(32)
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

/// Mutable training state: the model (on the autodiff device), its EMA (plain device),
/// the optimizer, and the number of steps taken.
pub struct TrainState<M: Denoiser> {
    /// Steps taken so far.
    pub step: usize,
    /// The trained model (autodiff device).
    pub model: M,
    /// EMA of the weights (no autodiff), the model to sample from.
    pub ema: M,
    /// AdamW state.
    pub optim: ModuleOptimizer,
}

/// What `state.json` in a checkpoint holds besides the weights.
#[derive(Debug, Serialize, Deserialize)]
struct StateMeta {
    step: usize,
    data_fingerprint: u64,
    train: TrainConfig,
}

/// Runs training steps of a diffusion model on fixed data.
pub struct Trainer<'a> {
    /// Optimisation settings.
    pub config: TrainConfig,
    /// The diffusion process and loss.
    pub diffusion: &'a Diffusion,
    /// Training data.
    pub data: &'a TrainData,
    /// Autodiff device the model trains on.
    pub device: Device,
}

impl<'a> Trainer<'a> {
    /// A trainer on `device` (autodiff is added if missing).
    pub fn new(config: TrainConfig, diffusion: &'a Diffusion, data: &'a TrainData, device: &Device) -> Self {
        Self { config, diffusion, data, device: device.clone().autodiff() }
    }

    fn optimizer(&self) -> ModuleOptimizer {
        AdamWConfig::new().with_weight_decay(self.config.weight_decay as f32).with_epsilon(1e-8).init()
    }

    /// Fresh state from a model built by `init` (called with the device seeded from the run seed).
    pub fn init_state<M: Denoiser>(&self, init: impl FnOnce(&Device) -> M) -> TrainState<M> {
        self.device.seed(derived_seed(self.config.seed, purpose::INIT, 0));
        let model = stable_param_ids(init(&self.device));
        let ema = model.valid();
        TrainState { step: 0, model, ema, optim: self.optimizer() }
    }

    /// Dataset indices of the minibatch of step `step`: epochs are seeded permutations.
    pub fn batch_indices(&self, step: usize) -> Vec<usize> {
        let n = self.data.n;
        let b = self.config.batch_size;
        let mut out = Vec::with_capacity(b);
        let mut cached: Option<(usize, Vec<usize>)> = None;
        for k in step * b..(step + 1) * b {
            let (epoch, pos) = (k / n, k % n);
            if cached.as_ref().map(|c| c.0) != Some(epoch) {
                let mut perm: Vec<usize> = (0..n).collect();
                perm.shuffle(&mut stream(self.config.seed, purpose::ORDER, epoch as u64));
                cached = Some((epoch, perm));
            }
            out.push(cached.as_ref().unwrap().1[pos]);
        }
        out
    }

    /// One optimisation step; returns the minibatch loss.
    pub fn step<M: Denoiser>(&self, state: &mut TrainState<M>) -> f32 {
        let s = state.step;
        let idx = self.batch_indices(s);
        let mut rng = stream(self.config.seed, purpose::TRAIN_NOISE, s as u64);
        let t = timesteps(&mut rng, idx.len(), self.diffusion.steps());
        let eps = normals(&mut rng, idx.len() * self.data.dim);
        let eps = Tensor::from_data(TensorData::new(eps, [idx.len(), self.data.dim]), &self.device);
        let x0 = self.data.batch(&idx, &self.device);
        self.device.seed(derived_seed(self.config.seed, purpose::DROPOUT, s as u64));

        let (loss_value, mut grads) = self.batch_gradients(&state.model, x0, &t, eps);
        if let Some(max_norm) = self.config.grad_clip {
            clip_global_norm(&state.model, &mut grads, max_norm);
        }
        let model = std::mem::replace(&mut state.model, state.ema.clone());
        state.model = state.optim.step(self.config.lr_at(s), model, grads);
        let ema = std::mem::replace(&mut state.ema, state.model.valid());
        state.ema = ema_update(ema, &state.model.valid(), self.config.ema_decay_at(s));
        state.step += 1;
        loss_value
    }

    /// Mean loss over the batch `(x0, t, eps)` (tensors on [`Trainer::device`]) and its gradient
    /// with respect to `model`'s parameters, in `microbatches` concurrent passes.
    pub fn batch_gradients<M: Denoiser>(
        &self,
        model: &M,
        x0: Tensor<2>,
        t: &[usize],
        eps: Tensor<2>,
    ) -> (f32, GradientsParams) {
        // One forward/backward pass over a slice holding `weight` of the batch (1.0 is exact, so
        // the single-pass path gives the same numbers as an unweighted loss).
        let pass = |model: &M, x: Tensor<2>, t: &[usize], e: Tensor<2>, weight: f64| {
            let loss = self.diffusion.loss(model, x, t, e, &mut Tap::off()).mul_scalar(weight);
            let value: f32 = loss.clone().into_scalar();
            (value, GradientsParams::from_grads(loss.backward(), model))
        };
        let n = t.len();
        // A model that draws randomness (dropout) runs in one pass whatever `microbatches` says:
        // concurrent passes would take its masks from the shared stream in thread-timing order.
        let parts = if model.draws_randomness() { 1 } else { self.config.microbatches.clamp(1, n.max(1)) };
        if parts == 1 {
            return pass(model, x0, t, eps, 1.0);
        }
        // Contiguous, near-equal slices; each pass runs on its own copy of the parameters as
        // fresh autodiff leaves (same ParamIds), so the passes build disjoint graphs that burn
        // can backpropagate concurrently.
        let jobs: Vec<(M, Tensor<2>, Tensor<2>, &[usize], f64)> = (0..parts)
            .map(|p| {
                let (a, b) = (p * n / parts, (p + 1) * n / parts);
                let copy = model.clone().map(&mut FreshLeaves);
                let x = x0.clone().narrow(0, a, b - a);
                let e = eps.clone().narrow(0, a, b - a);
                (copy, x, e, &t[a..b], (b - a) as f64 / n as f64)
            })
            .collect();
        let passes: Vec<(f32, GradientsParams)> =
            jobs.into_par_iter().map(|(copy, x, e, t, weight)| pass(&copy, x, t, e, weight)).collect();
        // Combined in a fixed order, so the result does not depend on thread timing.
        let mut passes = passes.into_iter();
        let (mut value, mut total) = passes.next().expect("at least two passes");
        for (v, mut g) in passes {
            value += v;
            model.visit(&mut AddGradients { into: &mut total, from: &mut g });
        }
        (value, total)
    }

    /// Save the state to `dir` (model, EMA, optimizer, step); atomic at the directory level.
    pub fn save<M: Denoiser>(&self, state: &TrainState<M>, dir: &Path) -> Result<(), CheckpointError> {
        let tmp = dir.with_extension("tmp");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CheckpointError::Io { path, source }
        };
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        save_module(&state.model.valid(), &tmp.join("model.safetensors"))?;
        save_module(&state.ema, &tmp.join("ema.safetensors"))?;
        let opt_path = tmp.join("optimizer.bpk");
        state
            .optim
            .save(&opt_path)
            .map_err(|e| CheckpointError::Format { path: opt_path.clone(), message: format!("{e:?}") })?;
        let meta = StateMeta {
            step: state.step,
            data_fingerprint: self.data.fingerprint(),
            train: self.config.clone(),
        };
        write_atomic(&tmp.join("state.json"), serde_json::to_string_pretty(&meta).unwrap().as_bytes())?;
        let old = dir.with_extension("old");
        if dir.exists() {
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(io(&old))?;
            }
            std::fs::rename(dir, &old).map_err(io(dir))?;
        }
        std::fs::rename(&tmp, dir).map_err(io(dir))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        Ok(())
    }

    /// Restore a state saved by [`save`](Self::save) into a model built by `init`. Refuses a
    /// checkpoint made with other data or other training settings.
    pub fn load<M: Denoiser>(
        &self,
        dir: &Path,
        init: impl FnOnce(&Device) -> M,
    ) -> Result<TrainState<M>, CheckpointError> {
        let meta_path = dir.join("state.json");
        let text = std::fs::read_to_string(&meta_path)
            .map_err(|source| CheckpointError::Io { path: meta_path.clone(), source })?;
        let meta: StateMeta = serde_json::from_str(&text)
            .map_err(|e| CheckpointError::Json { path: meta_path.clone(), message: e.to_string() })?;
        if meta.data_fingerprint != self.data.fingerprint() {
            return Err(CheckpointError::Mismatch {
                path: meta_path,
                message: "it was trained on different data".into(),
            });
        }
        if meta.train != self.config {
            return Err(CheckpointError::Mismatch {
                path: meta_path,
                message: format!("training settings differ (checkpoint: {:?})", meta.train),
            });
        }
        let fresh = stable_param_ids(init(&self.device));
        let ema = load_module(fresh.valid(), &dir.join("ema.safetensors"))?;
        let model = load_module(fresh, &dir.join("model.safetensors"))?;
        let opt_path = dir.join("optimizer.bpk");
        let optim = self
            .optimizer()
            .load(&opt_path)
            .map_err(|e| CheckpointError::Format { path: opt_path.clone(), message: format!("{e:?}") })?;
        Ok(TrainState { step: meta.step, model, ema, optim })
    }
}

/// Scale all gradients so that their global L2 norm is at most `max_norm`; returns the norm
/// before clipping. (burn's own clipping is per tensor.)
pub fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    struct SqNorm<'g>(&'g GradientsParams, f64);
    impl ModuleVisitor for SqNorm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(param.id) {
                self.1 += g.square().sum().into_scalar::<f32>() as f64;
            }
        }
    }
    struct Scale<'g>(&'g mut GradientsParams, f64);
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.remove::<D>(param.id) {
                self.0.register(param.id, g.mul_scalar(self.1));
            }
        }
    }
    let mut sq = SqNorm(grads, 0.0);
    model.visit(&mut sq);
    let norm = sq.1.sqrt();
    if norm > max_norm {
        model.visit(&mut Scale(grads, max_norm / norm));
    }
    norm
}

/// Re-creates every float parameter as a fresh autodiff leaf holding the same values.
struct FreshLeaves;

impl ModuleMapper for FreshLeaves {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, value, mapper) = param.consume();
        Param::from_mapped_value(id, value.detach().require_grad(), mapper)
    }
}

/// Adds the gradients of `from` into `into`, parameter by parameter.
struct AddGradients<'g> {
    into: &'g mut GradientsParams,
    from: &'g mut GradientsParams,
}

impl ModuleVisitor for AddGradients<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let sum = match (self.into.remove::<D>(param.id), self.from.remove::<D>(param.id)) {
            (Some(a), Some(b)) => a + b,
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return,
        };
        self.into.register(param.id, sum);
    }
}

/// Default checkpoint directory inside a run directory.
pub fn checkpoint_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoint")
}
