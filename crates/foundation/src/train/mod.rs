//! The one training loop for burn models: AdamW, linear warmup + cosine decay, global-norm
//! clipping, an EMA of the weights with warm-up, concurrent microbatches and crash-safe
//! checkpoints ([`checkpoint`]).
//!
//! What is trained is an [`Objective`]: it turns step `s` into a batch (every random draw of the
//! step comes from seeded streams indexed by `s`), splits a batch into contiguous slices, and maps
//! a model and a batch to a scalar loss. Parameters are initialised from
//! `stream_for(seed, Purpose::Init, 0)` and dropout masks come from
//! `stream_for(seed, Purpose::Dropout, step)` ([`crate::layers::with_dropout_stream`]); burn's
//! process-wide RNG is never used, so a run gives the same weights whatever else runs in the
//! process, and a run resumed from the checkpoint of step `k` takes exactly the steps of an
//! uninterrupted one.

pub mod checkpoint;
pub mod fused_adamw;

use std::ops::Range;
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::layers::with_dropout_stream;
use crate::progress::Progress;
use crate::rng::{stream_for, Purpose};
pub use checkpoint::{
    load_module, save_module, stable_param_ids, write_atomic, CheckpointError, Checkpoints, FileWriter,
    STATE_FILE,
};
pub use fused_adamw::FusedAdamW;

/// Optimisation settings of the trainer.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimConfig {
    /// Total optimisation steps (sets the cosine schedule's length).
    pub steps: usize,
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
    /// EMA decay per step (0: the EMA is the model).
    pub ema_decay: f64,
    /// Seed of initialisation and dropout.
    pub seed: u64,
    /// Each batch is split into this many near-equal microbatches whose forward and backward
    /// passes run concurrently on the rayon pool; their losses and gradients are summed, weighted
    /// by size, in a fixed order. An objective that draws randomness runs in one pass.
    pub microbatches: usize,
}

impl OptimConfig {
    /// Learning rate used at (zero-based) step `step`: linear warmup to `lr` over `warmup_steps`,
    /// then cosine decay to `lr * min_lr_ratio` at `steps`.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)
    }

    /// EMA decay used after step `step`: `min(ema_decay, (1 + step) / (10 + step))`. Without this
    /// warm-up the EMA keeps `ema_decay^step` of the random initial weights.
    pub fn ema_decay_at(&self, step: usize) -> f64 {
        self.ema_decay.min((1.0 + step as f64) / (10.0 + step as f64))
    }

    /// The AdamW optimizer (epsilon 1e-8, as PyTorch and optax; burn's default is 1e-5).
    pub fn optimizer(&self) -> ModuleOptimizer {
        AdamWConfig::new().with_weight_decay(self.weight_decay as f32).with_epsilon(1e-8).init()
    }

    /// The same AdamW as [`optimizer`](Self::optimizer) (betas 0.9 and 0.999, epsilon 1e-8,
    /// decoupled weight decay `weight_decay`), computed by [`FusedAdamW`]: one pass over each
    /// parameter tensor instead of a dozen tensor operations, the same numbers on the CPU backend
    /// and the same checkpointed state.
    pub fn fused_optimizer(&self) -> ModuleOptimizer {
        FusedAdamW::new(0.9, 0.999, 1e-8, self.weight_decay as f32).into()
    }

    /// [`fused_optimizer`](Self::fused_optimizer) when `fused`, else
    /// [`optimizer`](Self::optimizer).
    pub fn optimizer_of(&self, fused: bool) -> ModuleOptimizer {
        if fused {
            self.fused_optimizer()
        } else {
            self.optimizer()
        }
    }
}

/// What a model is trained on: batches indexed by step, and the loss of a batch.
pub trait Objective<M: Module>: Sync {
    /// Everything one step uses (data, and every random draw of the step).
    type Batch: Send;

    /// The batch of step `step` on `device` (the trainer's autodiff device). Must depend on the
    /// step alone (and fixed settings), so a resumed run repeats an uninterrupted one.
    fn batch(&self, step: usize, device: &Device) -> Self::Batch;

    /// Number of examples in `batch`.
    fn batch_len(&self, batch: &Self::Batch) -> usize;

    /// The examples `range` of `batch` (a microbatch).
    fn slice(&self, batch: &Self::Batch, range: Range<usize>) -> Self::Batch;

    /// The mean loss of `batch` under `model`, a scalar tensor (`[1]`) with its graph.
    fn loss(&self, model: &M, batch: Self::Batch) -> Tensor<1>;

    /// Whether a training pass of `model` draws random numbers (dropout). Such a step runs in one
    /// pass with the step's dropout stream installed, whatever `microbatches` says.
    fn draws_randomness(&self, _model: &M) -> bool {
        false
    }
}

/// What [`Trainer::run`] reports besides progress.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Event {
    /// A step was taken.
    Step {
        /// Steps taken so far.
        step: usize,
        /// The step's batch loss.
        loss: f32,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// Its step.
        step: usize,
    },
}

/// Mutable training state.
pub struct TrainState<M> {
    /// Steps taken so far.
    pub step: usize,
    /// The trained model (autodiff device).
    pub model: M,
    /// EMA of the weights (no autodiff).
    pub ema: M,
    /// AdamW state.
    pub optim: ModuleOptimizer,
}

/// Trains models on an [`Objective`].
pub struct Trainer<O> {
    /// Optimisation settings.
    pub config: OptimConfig,
    /// What is trained.
    pub objective: O,
    /// Autodiff device the model trains on.
    pub device: Device,
    /// Whether the AdamW step runs as [`FusedAdamW`] (see [`OptimConfig::fused_optimizer`]; off
    /// unless set with [`with_fused_adamw`](Self::with_fused_adamw)).
    pub fused_adamw: bool,
}

impl<O> Trainer<O> {
    /// A trainer on `device` (autodiff is added if missing).
    pub fn new(config: OptimConfig, objective: O, device: &Device) -> Self {
        Self { config, objective, device: device.clone().autodiff(), fused_adamw: false }
    }

    /// The trainer with the AdamW step computed by [`FusedAdamW`] (`fused`) or by burn's AdamW.
    /// Both give the same numbers on the CPU backend and read each other's checkpoints.
    pub fn with_fused_adamw(mut self, fused: bool) -> Self {
        self.fused_adamw = fused;
        self
    }

    /// The stream parameters are initialised from.
    pub fn init_stream(&self) -> ChaCha8Rng {
        stream_for(self.config.seed, Purpose::Init, 0)
    }

    /// Fresh state from a model built by `init` from [`init_stream`](Self::init_stream).
    pub fn init_state<M: Module>(&self, init: impl FnOnce(&mut ChaCha8Rng, &Device) -> M) -> TrainState<M> {
        let model = stable_param_ids(init(&mut self.init_stream(), &self.device));
        let ema = model.valid();
        TrainState { step: 0, model, ema, optim: self.config.optimizer_of(self.fused_adamw) }
    }

    /// One optimisation step; returns the batch loss.
    pub fn step<M>(&self, state: &mut TrainState<M>) -> f32
    where
        M: Module,
        O: Objective<M>,
    {
        let s = state.step;
        let batch = self.objective.batch(s, &self.device);
        let (loss, mut grads) = self.gradients(&state.model, batch, s);
        if let Some(max_norm) = self.config.grad_clip {
            clip_global_norm(&state.model, &mut grads, max_norm);
        }
        let model = std::mem::replace(&mut state.model, state.ema.clone());
        state.model = state.optim.step(self.config.lr_at(s), model, grads);
        let decay = self.config.ema_decay_at(s);
        state.ema = if decay == 0.0 {
            state.model.valid()
        } else {
            let ema = std::mem::replace(&mut state.ema, state.model.valid());
            ema_update(ema, &state.model.valid(), decay)
        };
        state.step += 1;
        loss
    }

    /// Mean loss of `batch` (the batch of step `step`) and its gradient with respect to `model`,
    /// in `microbatches` concurrent passes (one if the objective draws randomness).
    pub fn gradients<M>(&self, model: &M, batch: O::Batch, step: usize) -> (f32, GradientsParams)
    where
        M: Module,
        O: Objective<M>,
    {
        // One forward/backward pass over a slice holding `weight` of the batch (1.0 is exact, so
        // the single-pass path gives the same numbers as an unweighted loss).
        let pass = |model: &M, b: O::Batch, weight: f64| {
            let loss = self.objective.loss(model, b).mul_scalar(weight);
            let value: f32 = loss.clone().into_scalar();
            (value, GradientsParams::from_grads(loss.backward(), model))
        };
        let n = self.objective.batch_len(&batch);
        if self.objective.draws_randomness(model) {
            let rng = stream_for(self.config.seed, Purpose::Dropout, step as u64);
            return with_dropout_stream(rng, || pass(model, batch, 1.0));
        }
        let parts = self.config.microbatches.clamp(1, n.max(1));
        if parts == 1 {
            return pass(model, batch, 1.0);
        }
        // Contiguous, near-equal slices; each pass runs on its own copy of the parameters as
        // fresh autodiff leaves (same ParamIds), so the passes build disjoint graphs that burn
        // can backpropagate concurrently.
        let jobs: Vec<(M, O::Batch, f64)> = (0..parts)
            .map(|p| {
                let (a, b) = (p * n / parts, (p + 1) * n / parts);
                let copy = model.clone().map(&mut FreshLeaves);
                (copy, self.objective.slice(&batch, a..b), (b - a) as f64 / n as f64)
            })
            .collect();
        let passes: Vec<(f32, GradientsParams)> =
            jobs.into_par_iter().map(|(copy, b, weight)| pass(&copy, b, weight)).collect();
        // Combined in a fixed order, so the result does not depend on thread timing.
        let mut passes = passes.into_iter();
        let (mut value, mut total) = passes.next().expect("at least two passes");
        for (v, mut g) in passes {
            value += v;
            model.visit(&mut AddGradients { into: &mut total, from: &mut g });
        }
        (value, total)
    }

    /// Takes steps until `state.step == until`, saving to `checkpoints` every `every` steps and at
    /// the end (with `meta` in `state.json`, see [`save`](Self::save)), reporting each step to
    /// `progress` (its message is the step's loss) and every step and checkpoint to `on_event`
    /// (an error it returns stops training). Stops with an error when a loss is not finite.
    pub fn run<M>(
        &self,
        state: &mut TrainState<M>,
        until: usize,
        save: Option<(&Checkpoints, usize, &serde_json::Value)>,
        progress: &dyn Progress,
        mut on_event: impl FnMut(Event) -> Result<(), CheckpointError>,
    ) -> Result<(), CheckpointError>
    where
        M: Module,
        O: Objective<M>,
    {
        progress.start("train", until as u64);
        progress.advance(state.step as u64);
        while state.step < until {
            let loss = self.step(state);
            if !loss.is_finite() {
                return Err(CheckpointError::Run(format!(
                    "training diverged (loss {loss} at step {}); lower the learning rate",
                    state.step
                )));
            }
            progress.advance(1);
            progress.message(&format!("loss {loss:.4}"));
            on_event(Event::Step { step: state.step, loss })?;
            if let Some((checkpoints, every, meta)) = save {
                if state.step.is_multiple_of(every.max(1)) || state.step == until {
                    self.save(state, checkpoints, meta)?;
                    on_event(Event::Checkpoint { step: state.step })?;
                }
            }
        }
        progress.finish();
        Ok(())
    }

    /// Saves the state as the generation `state.step` of `checkpoints`: `model.safetensors`,
    /// `ema.safetensors`, `optimizer.bpk` and `state.json` (`{"step": ..}` plus the fields of
    /// `meta`, a JSON object the loader checks).
    pub fn save<M: Module>(
        &self,
        state: &TrainState<M>,
        checkpoints: &Checkpoints,
        meta: &serde_json::Value,
    ) -> Result<(), CheckpointError> {
        self.save_with_hook(state, checkpoints, meta, &mut |_| false)
    }

    /// [`save`](Self::save) with the fault-injection hook of [`Checkpoints::save_with_hook`].
    pub fn save_with_hook<M: Module>(
        &self,
        state: &TrainState<M>,
        checkpoints: &Checkpoints,
        meta: &serde_json::Value,
        stop: &mut dyn FnMut(usize) -> bool,
    ) -> Result<(), CheckpointError> {
        let mut fields = serde_json::Map::new();
        fields.insert("step".into(), state.step.into());
        if let Some(extra) = meta.as_object() {
            fields.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let json =
            serde_json::to_string_pretty(&serde_json::Value::Object(fields)).expect("JSON values serialise");
        let model = state.model.valid();
        let files: Vec<(&str, FileWriter<'_>)> = vec![
            ("model.safetensors", Box::new(move |p: &Path| save_module(&model, p))),
            ("ema.safetensors", Box::new(|p: &Path| save_module(&state.ema, p))),
            (
                "optimizer.bpk",
                Box::new(|p: &Path| {
                    state.optim.save(p).map_err(|e| CheckpointError::Format {
                        path: p.to_path_buf(),
                        message: format!("{e:?}"),
                    })
                }),
            ),
            (STATE_FILE, Box::new(move |p: &Path| write_atomic(p, json.as_bytes()))),
        ];
        checkpoints.save_with_hook(state.step, files, stop).map(|_| ())
    }

    /// Restores the newest complete generation of `checkpoints` into a model built by `init`
    /// (its values are overwritten). `check` sees `state.json` and may refuse it. Errors with
    /// [`CheckpointError::NoCheckpoint`] when there is no complete generation.
    pub fn load<M: Module>(
        &self,
        checkpoints: &Checkpoints,
        init: impl FnOnce(&Device) -> M,
        check: impl FnOnce(&Path, &serde_json::Value) -> Result<(), CheckpointError>,
    ) -> Result<TrainState<M>, CheckpointError> {
        let dir = checkpoints
            .latest()
            .ok_or_else(|| CheckpointError::NoCheckpoint { path: checkpoints.pointer().to_path_buf() })?;
        self.load_dir(&dir, init, check)
    }

    /// Restores the generation in `dir` (see [`load`](Self::load)).
    pub fn load_dir<M: Module>(
        &self,
        dir: &Path,
        init: impl FnOnce(&Device) -> M,
        check: impl FnOnce(&Path, &serde_json::Value) -> Result<(), CheckpointError>,
    ) -> Result<TrainState<M>, CheckpointError> {
        let meta_path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&meta_path)
            .map_err(|source| CheckpointError::Io { path: meta_path.clone(), source })?;
        let meta: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| CheckpointError::Json { path: meta_path.clone(), message: e.to_string() })?;
        let step = meta
            .get("step")
            .and_then(|s| s.as_u64())
            .ok_or_else(|| CheckpointError::Json { path: meta_path.clone(), message: "no step".into() })?
            as usize;
        check(&meta_path, &meta)?;
        let fresh = stable_param_ids(init(&self.device));
        let ema = load_module(fresh.valid(), &dir.join("ema.safetensors"))?;
        let model = load_module(fresh, &dir.join("model.safetensors"))?;
        let opt_path = dir.join("optimizer.bpk");
        let optim = self
            .config
            .optimizer_of(self.fused_adamw)
            .load(&opt_path)
            .map_err(|e| CheckpointError::Format { path: opt_path.clone(), message: format!("{e:?}") })?;
        Ok(TrainState { step, model, ema, optim })
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

/// Flatten every float parameter of `module` (visiting order) into rank-1 tensors without autodiff.
pub fn flat_params<M: Module>(module: &M) -> Vec<Tensor<1>> {
    struct Collect(Vec<Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let v = param.val().inner();
            let n = v.shape().num_elements();
            self.0.push(v.reshape([n]));
        }
    }
    let mut c = Collect(Vec::new());
    module.visit(&mut c);
    c.0
}

/// `ema <- decay * ema + (1 - decay) * model`, parameter by parameter (both must share structure).
pub fn ema_update<M: Module>(ema: M, model: &M, decay: f64) -> M {
    struct Blend {
        src: std::vec::IntoIter<Tensor<1>>,
        decay: f64,
    }
    impl ModuleMapper for Blend {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, value, mapper) = param.consume();
            let src = self.src.next().expect("EMA and model have the same parameters");
            let src = src.reshape(value.dims());
            let blended = value.mul_scalar(self.decay) + src.mul_scalar(1.0 - self.decay);
            Param::from_mapped_value(id, blended, mapper)
        }
    }
    let src = flat_params(model).into_iter();
    ema.map(&mut Blend { src, decay })
}
