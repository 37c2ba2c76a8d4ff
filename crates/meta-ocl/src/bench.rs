//! Speed of a training step: tokens per second of the real training path
//! ([`LmObjective`](crate::train::LmObjective) on [`foundation::train::Trainer::step`]: AdamW,
//! warmup + cosine schedule, global-norm clip 1.0), the Rust side of `bench/meta_ocl_jax.py`.

use std::time::Instant;

use burn::module::Module;
use burn::prelude::*;
use foundation::train::{Objective, TrainState, Trainer};
use serde::{Deserialize, Serialize};

use crate::harness::SweepConfig;
use crate::model::{ModelConfig, Transformer};
use crate::train::{LmObjective, StageConfig};
use crate::world::{Protocol, World, WorldConfig};
use crate::MetaOclError;

/// What [`bench`] times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchConfig {
    /// Sequences (rows) per batch (default: the stage-1 batch size, 64).
    pub batch: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Residual width (heads and MLP width as the default model: 4 heads, MLP 4 d).
    pub d_model: usize,
    /// Tokens per row (the model's block; a row feeds `block - 1` positions).
    pub block: usize,
    /// Timed steps.
    pub steps: usize,
    /// Untimed steps before them.
    pub warmup: usize,
    /// Each batch runs as this many concurrent microbatches on the rayon pool
    /// ([`OptimConfig::microbatches`](foundation::train::OptimConfig::microbatches); the same
    /// mean token loss and gradient, summed in a fixed order). 1: one pass, parallel inside each op;
    /// the default is the stages' [`crate::train::STAGE_MICROBATCHES`].
    #[serde(default = "stage_microbatches")]
    pub microbatches: usize,
}

fn stage_microbatches() -> usize {
    crate::train::STAGE_MICROBATCHES
}

impl Default for BenchConfig {
    fn default() -> Self {
        let model = ModelConfig::default();
        Self {
            batch: 64,
            layers: model.layers,
            d_model: model.d_model,
            block: model.block,
            steps: 30,
            warmup: 5,
            microbatches: crate::train::STAGE_MICROBATCHES,
        }
    }
}

/// What [`bench`] measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchResult {
    /// `"burn"`.
    pub framework: String,
    /// The settings.
    pub config: BenchConfig,
    /// Vocabulary size (the default world's).
    pub vocab: usize,
    /// Number of parameters.
    pub params: usize,
    /// Whether rows are packed token streams (true) or one padded sequence each (false).
    pub packed: bool,
    /// Positions through the model per step (`batch * (block - 1)`).
    pub tokens_per_step: usize,
    /// Median seconds of a whole training step (batch, forward, backward, clip, AdamW).
    pub sec_per_step_median: f64,
    /// Fastest step.
    pub sec_per_step_min: f64,
    /// Median CPU seconds of a step, all threads of the process together (from
    /// `/proc/self/task/*/schedstat`; absent where that cannot be read). Unlike wall time it does
    /// not grow when other processes take turns on the cores, so on a shared machine it is the
    /// steadier measure of the work of a single-threaded step (with more threads it also counts
    /// their waiting spins).
    #[serde(default)]
    pub cpu_sec_per_step_median: Option<f64>,
    /// `tokens_per_step / sec_per_step_median`.
    pub tokens_per_sec: f64,
    /// Median seconds of building a batch (one-hot inputs and targets), timed apart.
    pub batch_sec_median: f64,
    /// Median seconds of the forward pass and loss (recording the autodiff graph), timed apart.
    pub forward_sec_median: f64,
    /// Median seconds of the backward pass after it, timed apart.
    pub backward_sec_median: f64,
    /// Worker threads (rayon's pool).
    pub threads: usize,
    /// Every timed step, in seconds.
    pub step_seconds: Vec<f64>,
}

/// The median (the mean of the middle two of an even count, as Python's `statistics.median`).
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// The training rows: the stage-1 sequences of the default world (protocol seed 0), one per row
/// when the block holds fewer than two of the longest, else the whole token stream packed end to
/// end into rows of exactly `block` tokens (as the authors pack text into blocks of 48).
pub fn bench_rows(block: usize) -> Result<(usize, Vec<Vec<u32>>, bool), MetaOclError> {
    let world = World::new(&WorldConfig::default())?;
    let seqs = Protocol::new(&world, 0).stage1;
    let longest = seqs.iter().map(Vec::len).max().unwrap_or(0);
    if block < longest {
        return Err(MetaOclError::Invalid(format!(
            "the block ({block}) must hold the longest training sequence ({longest} tokens)"
        )));
    }
    if block < 2 * longest {
        return Ok((world.vocab.len(), seqs, false));
    }
    let stream: Vec<u32> = seqs.into_iter().flatten().collect();
    let rows = stream.chunks_exact(block).map(<[u32]>::to_vec).collect();
    Ok((world.vocab.len(), rows, true))
}

/// Times `cfg.steps` training steps (after `cfg.warmup` untimed ones) of a model with
/// `cfg.layers` blocks of width `cfg.d_model` (4 heads, MLP 4 d, block `cfg.block`) on the
/// default world's stage-1 data ([`bench_rows`]) with the stage-1 optimiser settings, through
/// [`Trainer::step`] on `device`. Each step ends with the loss read back to the host. Then times
/// the parts of as many more steps apart (batch, forward and loss, backward; no update).
pub fn bench(cfg: &BenchConfig, device: &Device) -> Result<BenchResult, MetaOclError> {
    if cfg.batch == 0 || cfg.steps == 0 || cfg.microbatches == 0 || cfg.microbatches > cfg.batch {
        return Err(MetaOclError::Invalid(format!(
            "batch and steps must be positive and microbatches between 1 and the batch (got batch {}, steps {}, microbatches {})",
            cfg.batch, cfg.steps, cfg.microbatches
        )));
    }
    let model_cfg = ModelConfig {
        d_model: cfg.d_model,
        layers: cfg.layers,
        d_mlp: 4 * cfg.d_model,
        block: cfg.block,
        ..Default::default()
    };
    model_cfg.validate()?;
    let (vocab, rows, packed) = bench_rows(cfg.block)?;
    if rows.len() < cfg.batch {
        return Err(MetaOclError::Invalid(format!(
            "the batch ({}) is larger than the {} training rows",
            cfg.batch,
            rows.len()
        )));
    }
    let stage = StageConfig { epochs: 1, batch_size: cfg.batch, ..SweepConfig::default().stage1 };
    let mut optim = stage.optim(rows.len(), 0);
    optim.steps = cfg.warmup + cfg.steps;
    optim.microbatches = cfg.microbatches.max(1);
    let objective =
        LmObjective { data: &rows, batch_size: cfg.batch, order_seed: 0, vocab, block: cfg.block };
    let trainer = Trainer::new(optim, objective, device).with_fused_adamw(true);
    let mut state: TrainState<Transformer> = trainer.init_state(|rng, d| model_cfg.init_with(vocab, rng, d));
    let params = state.model.num_params();
    let mut step_seconds = Vec::with_capacity(cfg.steps);
    let mut cpu_seconds = Vec::with_capacity(cfg.steps);
    for i in 0..cfg.warmup + cfg.steps {
        let cpu = process_cpu_seconds();
        let clock = Instant::now();
        let loss = trainer.step(&mut state);
        let sec = clock.elapsed().as_secs_f64();
        if let (Some(a), Some(b)) = (cpu, process_cpu_seconds()) {
            if i >= cfg.warmup {
                cpu_seconds.push(b - a);
            }
        }
        if !loss.is_finite() {
            return Err(MetaOclError::Invalid(format!("step {i}: the loss is not finite")));
        }
        if i >= cfg.warmup {
            step_seconds.push(sec);
        }
    }
    let (mut batch_sec, mut forward, mut backward) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..cfg.steps {
        let clock = Instant::now();
        let batch = trainer.objective.batch(i, &trainer.device);
        batch_sec.push(clock.elapsed().as_secs_f64());
        let clock = Instant::now();
        let loss = trainer.objective.loss(&state.model, batch);
        std::hint::black_box(loss.clone().into_scalar::<f32>());
        forward.push(clock.elapsed().as_secs_f64());
        let clock = Instant::now();
        let grads = loss.backward();
        backward.push(clock.elapsed().as_secs_f64());
        drop(grads);
    }
    let tokens_per_step = cfg.batch * (cfg.block - 1);
    let sec = median(&step_seconds);
    Ok(BenchResult {
        framework: "burn".into(),
        config: cfg.clone(),
        vocab,
        params,
        packed,
        tokens_per_step,
        sec_per_step_median: sec,
        sec_per_step_min: step_seconds.iter().copied().fold(f64::INFINITY, f64::min),
        cpu_sec_per_step_median: (cpu_seconds.len() == cfg.steps).then(|| median(&cpu_seconds)),
        tokens_per_sec: tokens_per_step as f64 / sec,
        batch_sec_median: median(&batch_sec),
        forward_sec_median: median(&forward),
        backward_sec_median: median(&backward),
        threads: rayon_threads(),
        step_seconds,
    })
}

/// CPU seconds used so far by all threads of this process (the first field of each thread's
/// `/proc/self/task/<tid>/schedstat`, nanoseconds on the CPU), or None where that is not readable.
fn process_cpu_seconds() -> Option<f64> {
    let mut ns = 0u64;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let text = std::fs::read_to_string(entry.ok()?.path().join("schedstat")).ok()?;
        ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 * 1e-9)
}

/// Threads of the pool burn's CPU backend runs on (`RAYON_NUM_THREADS`, else the cores).
fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
