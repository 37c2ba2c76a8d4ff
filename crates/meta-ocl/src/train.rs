//! Training the LM on the workspace's one training loop ([`foundation::train::Trainer`]), greedy
//! decoding and exact match.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::TensorData;
use foundation::loss::softmax_cross_entropy_sum_fused;
use foundation::progress::Progress;
use foundation::rng::epoch_order;
use foundation::train::{load_module, save_module, Checkpoints, Objective, OptimConfig, Trainer};
use serde::{Deserialize, Serialize};

use crate::model::{one_hot, ModelConfig, Transformer};
use crate::world::{Subset, TestItem, EOS, PAD};
use crate::MetaOclError;

/// Optimisation settings of one training stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageConfig {
    /// Passes over the stage's data.
    pub epochs: usize,
    /// Sequences per batch.
    pub batch_size: usize,
    /// Peak learning rate (AdamW; linear warmup, cosine decay to 10 %).
    pub lr: f64,
    /// Warmup steps.
    pub warmup_steps: usize,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
}

/// Concurrent microbatches of every stage's training step (see [`StageConfig::optim`]).
pub const STAGE_MICROBATCHES: usize = 2;

impl StageConfig {
    /// Steps of the stage on `n` sequences.
    pub fn steps(&self, n: usize) -> usize {
        n.div_ceil(self.batch_size.max(1)) * self.epochs
    }

    /// The trainer's settings for `n` sequences (`seed` initialises a fresh model).
    pub fn optim(&self, n: usize, seed: u64) -> OptimConfig {
        OptimConfig {
            steps: self.steps(n),
            lr: self.lr,
            warmup_steps: self.warmup_steps,
            min_lr_ratio: 0.1,
            weight_decay: self.weight_decay,
            grad_clip: Some(1.0),
            ema_decay: 0.0,
            seed,
            // Two concurrent halves of each batch (gradients summed in a fixed order, the same
            // for any thread count): at these sizes one pass keeps burn on about one core, two
            // halves use both (1.7x the tokens/s of one pass on 2 idle cores, ~5 % slower on one).
            microbatches: STAGE_MICROBATCHES,
        }
    }

    /// Checks the settings.
    pub fn validate(&self, what: &str) -> Result<(), MetaOclError> {
        if self.epochs == 0 || self.batch_size == 0 || !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(MetaOclError::Invalid(format!(
                "{what}: epochs, batch_size and lr must be positive (got {self:?})"
            )));
        }
        Ok(())
    }
}

/// A batch: one-hot inputs `[B * T, V]` and masked one-hot next-token targets `[B * T, V]`
/// (all-zero rows at padding), with `T = block - 1`.
#[derive(Clone, Debug)]
pub struct LmBatch {
    /// Inputs.
    pub x: Tensor<2>,
    /// Targets.
    pub y: Tensor<2>,
    /// Sequences.
    pub b: usize,
    /// Positions per sequence.
    pub t: usize,
    /// What the summed token loss is divided by: the batch's target (non-padding) tokens, at
    /// least 1; for a microbatch, those of the batch it was cut from times its share of the
    /// rows, so the trainer's row-weighted sum of microbatch losses is the batch's mean token
    /// loss exactly.
    pub norm: f64,
}

/// Causal-LM loss on the full text of each sequence (every token after `<bos>` is a target;
/// padding is not). Step `s` of epoch `s / steps_per_epoch` takes the next `batch_size`
/// sequences of the permutation [`epoch_order`]`(order_seed, epoch, n)`.
pub struct LmObjective<'a> {
    /// Training sequences (each `<bos> ... <eos>`, at most `block` tokens).
    pub data: &'a [Vec<u32>],
    /// Sequences per batch.
    pub batch_size: usize,
    /// Seed of the order.
    pub order_seed: u64,
    /// Vocabulary size.
    pub vocab: usize,
    /// Longest sequence.
    pub block: usize,
}

impl LmObjective<'_> {
    /// Builds the batch of the sequences `chunk`.
    pub fn batch_of(&self, seqs: &[&Vec<u32>], device: &Device) -> LmBatch {
        let t = self.block - 1;
        let b = seqs.len();
        let mut x = vec![PAD; b * t];
        let mut y = vec![0.0f32; b * t * self.vocab];
        let mut tokens = 0;
        for (i, s) in seqs.iter().enumerate() {
            for p in 0..s.len().saturating_sub(1).min(t) {
                x[i * t + p] = s[p];
                y[(i * t + p) * self.vocab + s[p + 1] as usize] = 1.0;
                tokens += 1;
            }
        }
        LmBatch {
            x: one_hot(&x, self.vocab, device),
            y: Tensor::from_data(TensorData::new(y, [b * t, self.vocab]), device),
            b,
            t,
            norm: tokens.max(1) as f64,
        }
    }
}

impl Objective<Transformer> for LmObjective<'_> {
    type Batch = LmBatch;

    fn batch(&self, step: usize, device: &Device) -> LmBatch {
        let n = self.data.len();
        let per_epoch = n.div_ceil(self.batch_size);
        let (epoch, pos) = (step / per_epoch, step % per_epoch);
        let order = epoch_order(self.order_seed, epoch, n);
        let chunk: Vec<&Vec<u32>> = order[pos * self.batch_size..((pos + 1) * self.batch_size).min(n)]
            .iter()
            .map(|&i| &self.data[i])
            .collect();
        self.batch_of(&chunk, device)
    }

    fn batch_len(&self, batch: &LmBatch) -> usize {
        batch.b
    }

    fn slice(&self, batch: &LmBatch, range: Range<usize>) -> LmBatch {
        let (t, len) = (batch.t, range.end - range.start);
        let y = batch.y.clone().narrow(0, range.start * t, len * t);
        let norm = batch.norm * len as f64 / batch.b.max(1) as f64;
        LmBatch { x: batch.x.clone().narrow(0, range.start * t, len * t), y, b: len, t, norm }
    }

    fn loss(&self, model: &Transformer, batch: LmBatch) -> Tensor<1> {
        let logits = model.forward(batch.x, batch.b, batch.t).reshape([batch.b * batch.t, self.vocab]);
        softmax_cross_entropy_sum_fused(logits, batch.y) / batch.norm
    }
}

/// Where a training stage starts from.
pub enum Start<'a> {
    /// A fresh model from the trainer's initialisation stream.
    Fresh,
    /// The weights in this safetensors file.
    Weights(&'a Path),
}

/// Exact match per subset at one point of a training stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    /// Epochs of the stage trained so far (0: its starting weights).
    pub epoch: usize,
    /// Steps of the stage taken so far.
    pub step: usize,
    /// What the evaluation returned (EM per subset).
    pub em: BTreeMap<String, f64>,
}

/// Evaluation of a stage while it trains: `evaluate` runs on the weights before the first step
/// and after every `every_epochs` epochs, and always after the last epoch.
pub struct EvalSchedule<'a> {
    /// Epochs between evaluations (at least 1).
    pub every_epochs: usize,
    /// The evaluation (e.g. EM per subset of the held-out questions).
    pub evaluate: &'a dyn Fn(&Transformer) -> BTreeMap<String, f64>,
}

/// The epochs at which a stage of `epochs` epochs is evaluated every `every` epochs: 0, `every`,
/// `2 every`, ... and `epochs` (each once, increasing).
pub fn eval_epochs(epochs: usize, every: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..epochs).step_by(every.max(1)).collect();
    v.push(epochs);
    v
}

/// What [`train_stage`] reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageReport {
    /// Steps taken in total (including resumed ones).
    pub steps: usize,
    /// Mean loss of the last up to 20 steps run in this call.
    pub final_loss: f64,
    /// Seconds spent in this call (evaluations included).
    pub seconds: f64,
    /// The evaluations of an [`EvalSchedule`], in epoch order (empty without one; a stage
    /// resumed from a checkpoint has none before the step it resumed at).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub em_over_training: Vec<EvalPoint>,
}

/// The mean loss of the last up to 20 training steps seen: [`StageReport::final_loss`] of every
/// stage trainer of this crate.
#[derive(Debug, Default)]
pub struct RecentLoss {
    losses: std::collections::VecDeque<f32>,
}

impl RecentLoss {
    /// Records the loss of a [`foundation::train::Event::Step`]; other events are ignored.
    pub fn observe(&mut self, event: &foundation::train::Event) {
        if let foundation::train::Event::Step { loss, .. } = event {
            self.losses.push_back(*loss);
            if self.losses.len() > 20 {
                self.losses.pop_front();
            }
        }
    }

    /// Mean of the recorded losses, oldest first (0 before any step).
    pub fn mean(&self) -> f64 {
        self.losses.iter().map(|&l| l as f64).sum::<f64>() / self.losses.len().max(1) as f64
    }
}

/// Trains `model_cfg` on `data` for `cfg.epochs` epochs from `start` on `device` and returns the
/// trained model (on `device` without autodiff). With `checkpoints`, saves every `every` steps and
/// resumes from the newest complete generation if there is one (the device is not part of the
/// checked settings). With `eval`, the one training run is taken in chunks of epochs
/// ([`Trainer::run`] up to each evaluation's step, on the same state, so the weights are
/// bit-identical to an unchunked run) and evaluated at [`eval_epochs`].
#[allow(clippy::too_many_arguments)]
pub fn train_stage(
    model_cfg: &ModelConfig,
    vocab: usize,
    data: &[Vec<u32>],
    cfg: &StageConfig,
    start: Start<'_>,
    order_seed: u64,
    checkpoints: Option<(&Checkpoints, usize)>,
    eval: Option<&EvalSchedule<'_>>,
    device: &Device,
    progress: &dyn Progress,
) -> Result<(Transformer, StageReport), MetaOclError> {
    cfg.validate("stage")?;
    if data.is_empty() {
        return Err(MetaOclError::Invalid("a training stage has no data".into()));
    }
    if let Some(s) = data.iter().find(|s| s.len() > model_cfg.block) {
        return Err(MetaOclError::Invalid(format!(
            "a sequence of {} tokens is longer than the block of {}",
            s.len(),
            model_cfg.block
        )));
    }
    let clock = std::time::Instant::now();
    let optim = cfg.optim(data.len(), order_seed);
    let steps = optim.steps;
    let objective =
        LmObjective { data, batch_size: cfg.batch_size, order_seed, vocab, block: model_cfg.block };
    let trainer = Trainer::new(optim, objective, device).with_fused_adamw(true);
    let build = |device: &Device| -> Result<Transformer, MetaOclError> {
        let fresh = model_cfg.init(vocab, device);
        match start {
            Start::Fresh => Ok(fresh),
            Start::Weights(p) => Ok(load_module(fresh, p)?),
        }
    };
    let meta = serde_json::json!({ "steps": steps, "order_seed": order_seed });
    let resumed = match checkpoints {
        Some((c, _)) if c.latest().is_some() => Some(trainer.load(
            c,
            |d| model_cfg.init(vocab, d),
            |path, m| {
                if m.get("steps") != meta.get("steps") || m.get("order_seed") != meta.get("order_seed") {
                    return Err(foundation::train::CheckpointError::Run(format!(
                        "{} was written by a run with other settings",
                        path.display()
                    )));
                }
                Ok(())
            },
        )?),
        _ => None,
    };
    let mut state = match resumed {
        Some(s) => s,
        None => match start {
            Start::Fresh => trainer.init_state(|rng, d| model_cfg.init_with(vocab, rng, d)),
            Start::Weights(_) => {
                let model = build(&trainer.device)?;
                trainer.init_state(|_, _| model)
            }
        },
    };
    let mut recent = RecentLoss::default();
    let mut on_event = |e: foundation::train::Event| -> Result<(), foundation::train::CheckpointError> {
        recent.observe(&e);
        Ok(())
    };
    let save = checkpoints.map(|(c, every)| (c, every, &meta));
    let per_epoch = data.len().div_ceil(cfg.batch_size);
    let mut em_over_training = Vec::new();
    if let Some(schedule) = eval {
        for epoch in eval_epochs(cfg.epochs, schedule.every_epochs) {
            let until = epoch * per_epoch;
            if until < state.step {
                continue;
            }
            trainer.run(&mut state, until, save, progress, &mut on_event)?;
            let em = (schedule.evaluate)(&state.model.valid());
            em_over_training.push(EvalPoint { epoch, step: until, em });
        }
    }
    trainer.run(&mut state, steps, save, progress, &mut on_event)?;
    let final_loss = recent.mean();
    let report = StageReport {
        steps: state.step,
        final_loss,
        seconds: clock.elapsed().as_secs_f64(),
        em_over_training,
    };
    Ok((state.model.valid(), report))
}

/// Saves a model (safetensors, atomic).
pub fn save_model(model: &Transformer, path: &Path) -> Result<(), MetaOclError> {
    Ok(save_module(model, path)?)
}

/// Loads a model saved by [`save_model`] onto `device`.
pub fn load_model(
    cfg: &ModelConfig,
    vocab: usize,
    path: &Path,
    device: &Device,
) -> Result<Transformer, MetaOclError> {
    Ok(load_module(cfg.init(vocab, device), path)?)
}

/// Greedy decoding: for each prompt, appends the most likely next token until `<eos>`,
/// `max_new` tokens or the model's block is reached. Returns the generated tokens (without the
/// prompt, with the `<eos>` if one was produced). Prompts of equal length run as one batch, on
/// the device of `model`'s weights.
pub fn greedy_decode(model: &Transformer, prompts: &[Vec<u32>], max_new: usize) -> Vec<Vec<u32>> {
    let device = model.device();
    let vocab = model.vocab();
    let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in prompts.iter().enumerate() {
        by_len.entry(p.len()).or_default().push(i);
    }
    let mut out = vec![Vec::new(); prompts.len()];
    for (len, idx) in by_len {
        if len == 0 {
            continue;
        }
        let mut seqs: Vec<Vec<u32>> = idx.iter().map(|&i| prompts[i].clone()).collect();
        let mut done = vec![false; seqs.len()];
        for t in len..(len + max_new).min(model.block() + 1) {
            if done.iter().all(|&d| d) {
                break;
            }
            let flat: Vec<u32> = seqs.iter().flatten().copied().collect();
            let logits = model.forward_tokens(&flat, t, &device);
            let last = logits.narrow(1, t - 1, 1).reshape([seqs.len(), vocab]);
            let v: Vec<f32> = last.into_data().try_into_vec::<f32>().expect("f32 logits");
            for (r, s) in seqs.iter_mut().enumerate() {
                let next = argmax(&v[r * vocab..(r + 1) * vocab]) as u32;
                s.push(next);
                if !done[r] {
                    out[idx[r]].push(next);
                    done[r] = next == EOS;
                }
            }
        }
    }
    out
}

/// Index of the largest value (the first on ties).
pub fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
}

/// Whether a generation matches `answer` exactly: its tokens up to the first `<eos>` (or all of
/// them) equal the answer tokens.
pub fn exact_match(generated: &[u32], answer: &[u32]) -> bool {
    let end = generated.iter().position(|&t| t == EOS).unwrap_or(generated.len());
    &generated[..end] == answer
}

/// Exact match of each test item (greedy decoding of `answer.len() + 1` tokens).
pub fn exact_matches(model: &Transformer, items: &[TestItem]) -> Vec<bool> {
    let max_new = items.iter().map(|i| i.answer.len()).max().unwrap_or(0) + 1;
    let prompts: Vec<Vec<u32>> = items.iter().map(|i| i.prompt.clone()).collect();
    let mut results = Vec::with_capacity(items.len());
    for chunk in prompts.chunks(512).zip(items.chunks(512)) {
        let gens = greedy_decode(model, chunk.0, max_new);
        results.extend(gens.iter().zip(chunk.1).map(|(g, it)| exact_match(g, &it.answer)));
    }
    results
}

/// Exact match per subset (fraction of that subset's items answered exactly).
pub fn em_by_subset(model: &Transformer, items: &[TestItem]) -> BTreeMap<String, f64> {
    em_by_subset_prefixed(model, items, "")
}

/// [`em_by_subset`] with `prefix` before each subset name.
pub fn em_by_subset_prefixed(model: &Transformer, items: &[TestItem], prefix: &str) -> BTreeMap<String, f64> {
    let labels: Vec<String> = items
        .iter()
        .map(|it| format!("{prefix}{}", it.subset.map_or("stage0_recall", Subset::name)))
        .collect();
    em_by_label(model, items, &labels)
}

/// Exact match per label: the fraction of the items labelled `l` (`labels[i]` is item `i`'s)
/// answered exactly.
pub fn em_by_label(
    model: &Transformer,
    items: &[TestItem],
    labels: &[impl AsRef<str>],
) -> BTreeMap<String, f64> {
    assert_eq!(items.len(), labels.len(), "one label per item");
    let hits = exact_matches(model, items);
    let mut acc: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (label, h) in labels.iter().zip(hits) {
        let e = acc.entry(label.as_ref().to_string()).or_default();
        e.0 += h as usize;
        e.1 += 1;
    }
    acc.into_iter().map(|(k, (h, n))| (k, h as f64 / n as f64)).collect()
}
