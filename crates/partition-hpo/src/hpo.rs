//! Training with hyperparameter steps: the parameter objective on `foundation::train`, the
//! hyperparameter objectives (out-of-training-sample loss and the baselines' signals), the
//! alternation, and evaluation.
//!
//! Parameter steps go through [`foundation::train::Trainer::step`] with [`WeightObjective`]: one
//! step sums, over k = 1..C, the mean cross-entropy of subnetwork k (in [`Mode::Train`]) on a
//! batch from shards `D_1..D_k`, with `psi` detached. Because subnetwork k sees partitions `< k`
//! detached and partitions `> k` at their initial values, partition k receives the gradient of
//! its own subnetwork only; AdamW is elementwise, so partition k never depends on shards `> k`.
//! Hyperparameter steps do not fit the trainer (a second optimiser on other parameters, every
//! `n` steps): [`train`] takes them in its own loop around `Trainer::step`, with a second
//! optimiser built by `foundation::train::OptimConfig` (Adam, constant rate).

use std::time::Instant;

use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use foundation::loss::{one_hot, softmax_cross_entropy_per_example};
use foundation::progress::Progress;
use foundation::rng::{stream_for, Purpose};
use foundation::train::{Objective, OptimConfig, Trainer};
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::data::{check_proportions, shards, Inputs};
use crate::model::{Draws, Mode, PartitionedNet, Psi, PsiUse, PsiValues};
use crate::HpoError;

/// Number of classes.
pub const CLASSES: usize = 10;

/// Where the gradient of `psi` comes from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum PsiSignal {
    /// The out-of-training-sample loss: `sum_{k>=2}` loss of subnetwork k-1 on shard k.
    Oots,
    /// The training loss of the full network (augmentation should collapse).
    TrainLoss,
    /// Augerino: the training loss minus `lambda * theta_max` (radians), the width regulariser.
    Augerino {
        /// Weight of the width regulariser.
        lambda: f64,
    },
    /// The loss of the full network on the validation rows.
    Validation,
    /// The negative Laplace log marginal likelihood with a K-FAC GGN (Immer et al. 2022) of the
    /// full network (C = 1, an MLP), whose weights are trained to the MAP under a Gaussian prior
    /// of this precision (see [`crate::laplace`]).
    Laplace {
        /// Prior precision delta of every weight and bias.
        prior_precision: f64,
    },
}

/// Settings of one training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Output channels of the 3x3 stride-2 convolutions on the image (empty: an MLP).
    #[serde(default)]
    pub conv_channels: Vec<usize>,
    /// Hidden widths of the ReLU MLP.
    pub hidden: Vec<usize>,
    /// Parameter steps.
    pub steps: usize,
    /// Examples per parameter step in all (split evenly over the C subnetworks).
    pub batch: usize,
    /// Peak learning rate of the weights (AdamW, no decay, cosine to 5 %).
    pub lr: f64,
    /// Seed of every draw.
    pub seed: u64,
    /// Number of partitions C (1: standard training).
    pub partitions: usize,
    /// Share of the weights in each partition (C entries summing to 1).
    pub weight_proportions: Vec<f64>,
    /// Share of the training rows in each shard (C entries summing to 1).
    pub data_proportions: Vec<f64>,
    /// Which parts of `psi` the network uses.
    pub psi_use: PsiUse,
    /// Where `psi` is learned from (`None`: held at its initial value).
    pub signal: Option<PsiSignal>,
    /// A hyperparameter step every this many parameter steps.
    pub psi_every: usize,
    /// Learning rate of `psi`.
    pub psi_lr: f64,
    /// Optimiser of `psi`.
    #[serde(default)]
    pub psi_optimizer: PsiOptimizer,
    /// Examples per shard (or per batch) in a hyperparameter step.
    pub psi_batch: usize,
    /// Augmentation samples averaged in the predictive of a hyperparameter step and of evaluation.
    pub samples: usize,
    /// Initial values of `psi`.
    pub init: PsiInit,
    /// Untrained partitions hold zeros instead of their initial values.
    #[serde(default)]
    pub zero_defaults: bool,
}

/// The optimiser of the hyperparameters.
///
/// Adam normalises every coordinate by its own gradient scale, so a feature whose mask gradient
/// is small but of constant sign moves as fast as one whose gradient is large. SGD keeps the
/// relative sizes: features move in proportion to how much they change the objective.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum PsiOptimizer {
    /// Adam (constant rate, no decay).
    #[default]
    Adam,
    /// SGD with momentum 0.9 (no dampening).
    Sgd,
}

/// Initial `psi`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PsiInit {
    /// The same value for every entry.
    Uniform {
        /// Rotation range, degrees.
        theta_deg: f64,
        /// Keep probability of every input feature.
        mask_keep: f64,
        /// Gaussian dropout standard deviation.
        sigma: f64,
    },
    /// Given values (e.g. learned by an earlier run).
    Values(PsiValues),
}

impl RunConfig {
    /// The checks every run makes: C partitions with proportions summing to 1, positive sizes.
    pub fn validate(&self) -> Result<(), HpoError> {
        check_proportions(&self.weight_proportions, self.partitions, "weight")?;
        check_proportions(&self.data_proportions, self.partitions, "data")?;
        if self.steps == 0 || self.batch < self.partitions || self.psi_every == 0 || self.samples == 0 {
            return Err(HpoError::InvalidArgument(format!(
                "steps ({}), psi_every ({}) and samples ({}) must be positive and the batch ({}) at least C ({})",
                self.steps, self.psi_every, self.samples, self.batch, self.partitions
            )));
        }
        if let PsiInit::Uniform { theta_deg, mask_keep, sigma } = self.init {
            if !(mask_keep > 0.0 && mask_keep < 1.0) {
                return Err(HpoError::InvalidArgument(format!(
                    "the initial mask keep probability must lie strictly between 0 and 1 (got {mask_keep})"
                )));
            }
            if !((0.0..=180.0).contains(&theta_deg) && sigma >= 0.0 && sigma.is_finite()) {
                return Err(HpoError::InvalidArgument(format!(
                    "the initial rotation range must lie in [0, 180] degrees and the dropout sigma be finite and non-negative (got {theta_deg} and {sigma})"
                )));
            }
        }
        if self.signal == Some(PsiSignal::Oots) && self.partitions < 2 {
            return Err(HpoError::InvalidArgument(
                "the out-of-training-sample loss needs at least C = 2 partitions".into(),
            ));
        }
        if let Some(PsiSignal::Laplace { prior_precision }) = self.signal {
            crate::laplace::check(self, prior_precision)?;
        }
        Ok(())
    }

    pub(crate) fn optim(&self) -> OptimConfig {
        OptimConfig {
            steps: self.steps,
            lr: self.lr,
            warmup_steps: 0,
            min_lr_ratio: 0.05,
            weight_decay: 0.0,
            grad_clip: None,
            ema_decay: 0.0,
            seed: self.seed,
            microbatches: 1,
        }
    }

    fn psi_optim(&self) -> OptimConfig {
        OptimConfig { lr: self.psi_lr, min_lr_ratio: 1.0, weight_decay: 0.0, ..self.optim() }
    }
}

/// Rows of one subnetwork's batch with their random draws and the subnetwork to run.
#[derive(Clone, Debug)]
pub struct Group {
    /// Features, `n * d`.
    pub x: Vec<f32>,
    /// Labels.
    pub y: Vec<u8>,
    /// Rows.
    pub n: usize,
    /// Draws of the forward pass.
    pub draws: Draws,
    /// Which subnetwork.
    pub mode: Mode,
}

/// The batch of a parameter step: one group per subnetwork.
#[derive(Clone, Debug)]
pub struct WeightBatch {
    /// Groups, subnetwork 1 first.
    pub groups: Vec<Group>,
}

/// Draws `count` rows uniformly (with replacement) from `pool`, `samples` augmentation copies of
/// each (copy `s` of row `i` at position `s * count + i`), with rotation draws and dropout noise.
#[allow(clippy::too_many_arguments)]
fn draw_group(
    data: &Inputs,
    pool: &[usize],
    count: usize,
    samples: usize,
    hidden: &[usize],
    use_: PsiUse,
    mode: Mode,
    rng: &mut impl Rng,
) -> Group {
    let idx: Vec<usize> = (0..count).map(|_| pool[rng.gen_range(0..pool.len())]).collect();
    let n = count * samples;
    let mut x = Vec::with_capacity(n * data.d);
    let mut y = Vec::with_capacity(n);
    for _ in 0..samples {
        for &i in &idx {
            x.extend_from_slice(&data.x[i * data.d..(i + 1) * data.d]);
            y.push(data.y[i]);
        }
    }
    let u = (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let eps = if use_.dropout {
        hidden.iter().map(|&w| (0..n * w).map(|_| rng.sample::<f32, _>(StandardNormal)).collect()).collect()
    } else {
        Vec::new()
    };
    let gate = if use_.mask {
        (0..n * data.d).map(|_| rng.sample::<f32, _>(StandardNormal)).collect()
    } else {
        Vec::new()
    };
    Group { x, y, n, draws: Draws { u, eps, gate }, mode }
}

/// Mean cross-entropy of `logits` against `y` (the mean of the workspace's per-example
/// softmax cross-entropy).
pub fn cross_entropy(logits: Tensor<2>, y: &[u8]) -> Tensor<1> {
    let device = logits.device();
    softmax_cross_entropy_per_example(logits, one_hot(y, CLASSES, &device)).mean()
}

/// Mean negative log-likelihood of the predictive that averages the class probabilities of
/// `samples` copies (`logits` rows `s * n + i`, labels `y` repeated the same way).
pub fn averaged_nll(logits: Tensor<2>, y: &[u8], samples: usize) -> Tensor<1> {
    let [rows, k] = logits.dims();
    let n = rows / samples;
    let device = logits.device();
    let lp = log_softmax(logits, 1).reshape([samples, n, k]);
    let m = lp.clone().detach().max_dim(0);
    let lme = (lp - m.clone()).exp().mean_dim(0).log() + m;
    (lme.reshape([n, k]) * one_hot(&y[..n], CLASSES, &device)).sum_dim(1).mean().neg()
}

/// The parameter objective: the sum over subnetworks k of the mean cross-entropy of subnetwork k
/// on a batch drawn from shards `1..k` (one augmentation sample per row), `psi` detached.
pub struct WeightObjective<'a> {
    /// Training rows.
    pub data: &'a Inputs,
    /// Rows of `D_1 ∪ .. ∪ D_k` for each k.
    pub prefixes: Vec<Vec<usize>>,
    /// Rows per subnetwork per step.
    pub per_group: usize,
    /// Hidden widths (for dropout noise).
    pub hidden: Vec<usize>,
    /// Parts of `psi` in use.
    pub psi_use: PsiUse,
    /// Seed.
    pub seed: u64,
    /// Index of step 0 in the batch stream (a federated round continues the stream).
    pub first_step: usize,
    /// Weight of `1/2 ||w||^2` (all trained weights and biases) added to the loss: the Gaussian
    /// prior of a MAP fit in per-example units (`delta / N`; 0: none).
    pub l2: f64,
}

impl Objective<PartitionedNet> for WeightObjective<'_> {
    type Batch = WeightBatch;

    fn batch(&self, step: usize, _device: &Device) -> WeightBatch {
        // One stream per step; subnetwork k's rows are drawn after those of 1..k-1, and every draw
        // depends only on shard sizes, never on their content.
        let mut rng = stream_for(self.seed, Purpose::TrainNoise, (self.first_step + step) as u64);
        let groups = self
            .prefixes
            .iter()
            .enumerate()
            .map(|(k, pool)| {
                draw_group(
                    self.data,
                    pool,
                    self.per_group,
                    1,
                    &self.hidden,
                    self.psi_use,
                    Mode::Train(k),
                    &mut rng,
                )
            })
            .collect();
        WeightBatch { groups }
    }

    fn batch_len(&self, batch: &WeightBatch) -> usize {
        batch.groups.iter().map(|g| g.n).sum()
    }

    fn slice(&self, batch: &WeightBatch, range: std::ops::Range<usize>) -> WeightBatch {
        // Rows in the concatenated order of the groups.
        let mut groups = Vec::new();
        let mut offset = 0;
        for g in &batch.groups {
            let (a, b) = (range.start.max(offset), range.end.min(offset + g.n));
            if a < b {
                let (a, b) = (a - offset, b - offset);
                let d = g.x.len() / g.n;
                let eps = g
                    .draws
                    .eps
                    .iter()
                    .map(|e| {
                        let w = e.len() / g.n;
                        e[a * w..b * w].to_vec()
                    })
                    .collect();
                groups.push(Group {
                    x: g.x[a * d..b * d].to_vec(),
                    y: g.y[a..b].to_vec(),
                    n: b - a,
                    draws: Draws {
                        u: g.draws.u[a..b].to_vec(),
                        eps,
                        gate: if g.draws.gate.is_empty() {
                            Vec::new()
                        } else {
                            g.draws.gate[a * d..b * d].to_vec()
                        },
                    },
                    mode: g.mode,
                });
            }
            offset += g.n;
        }
        WeightBatch { groups }
    }

    fn loss(&self, model: &PartitionedNet, batch: WeightBatch) -> Tensor<1> {
        let mut total: Option<Tensor<1>> = None;
        for g in batch.groups {
            let logits = model.forward(&g.x, g.n, self.data.image, &g.draws, self.psi_use, false, g.mode);
            let l = cross_entropy(logits, &g.y);
            total = Some(match total {
                Some(t) => t + l,
                None => l,
            });
        }
        let total = total.expect("at least one group");
        if self.l2 > 0.0 {
            total + crate::laplace::squared_norm(model).mul_scalar(0.5 * self.l2)
        } else {
            total
        }
    }
}

/// The groups of hyperparameter step `j` for `signal` (`S = samples` copies per row).
pub fn psi_groups(
    signal: PsiSignal,
    train: &Inputs,
    shards: &[Vec<usize>],
    val: Option<&Inputs>,
    config: &RunConfig,
    j: usize,
) -> Vec<(Group, &'static str)> {
    let mut rng = stream_for(config.seed, Purpose::HpoHyperStep, j as u64);
    let c = config.partitions;
    let (b, s, h, u) = (config.psi_batch, config.samples, &config.hidden, config.psi_use);
    match signal {
        PsiSignal::Oots => (1..c)
            .map(|k| (draw_group(train, &shards[k], b, s, h, u, Mode::Eval(k - 1), &mut rng), "oots"))
            .collect(),
        PsiSignal::TrainLoss | PsiSignal::Augerino { .. } | PsiSignal::Laplace { .. } => {
            let all: Vec<usize> = (0..train.n).collect();
            vec![(draw_group(train, &all, b, s, h, u, Mode::Eval(c - 1), &mut rng), "train")]
        }
        PsiSignal::Validation => {
            let v = val.expect("validation rows");
            let all: Vec<usize> = (0..v.n).collect();
            vec![(draw_group(v, &all, b, s, h, u, Mode::Eval(c - 1), &mut rng), "validation")]
        }
    }
}

/// The hyperparameter objective of `groups` under `model`: the sum over groups of the averaged
/// predictive's NLL (weights detached, `psi` live), plus Augerino's regulariser. Only `psi`
/// receives gradients: they come through the forward pass alone.
pub fn psi_objective(
    model: &PartitionedNet,
    groups: &[Group],
    image: (usize, usize),
    psi_use: PsiUse,
    samples: usize,
    signal: PsiSignal,
) -> Tensor<1> {
    let mut total: Option<Tensor<1>> = None;
    for g in groups {
        let logits = model.forward(&g.x, g.n, image, &g.draws, psi_use, true, g.mode);
        let l = averaged_nll(logits, &g.y, samples);
        total = Some(match total {
            Some(t) => t + l,
            None => l,
        });
    }
    let mut total = total.expect("at least one group");
    if let PsiSignal::Augerino { lambda } = signal {
        total = total - model.psi.theta_max().mul_scalar(lambda);
    }
    total
}

/// The scalar whose `psi` gradient a hyperparameter step follows, and the objective's value for
/// the trace: [`psi_objective`], or for [`PsiSignal::Laplace`] the surrogate of
/// [`crate::laplace::objective`] (its value is the marginal-likelihood estimate).
fn hyper_objective(
    model: &PartitionedNet,
    groups: &[Group],
    train: &Inputs,
    config: &RunConfig,
    signal: PsiSignal,
) -> (Tensor<1>, f64) {
    if let PsiSignal::Laplace { prior_precision } = signal {
        let (image, use_, s) = (train.image, config.psi_use, config.samples);
        return crate::laplace::objective(model, &groups[0], image, use_, s, train.n, prior_precision)
            .into_surrogate();
    }
    let obj = psi_objective(model, groups, train.image, config.psi_use, config.samples, signal);
    let value: f32 = obj.clone().into_scalar();
    (obj, value as f64)
}

/// One point of the hyperparameter trace.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TracePoint {
    /// Parameter steps taken.
    pub step: usize,
    /// Rotation range, degrees.
    pub theta_max_deg: f64,
    /// Gaussian dropout standard deviation.
    pub sigma: f64,
    /// Mean keep probability of the input mask.
    pub mean_keep: f64,
    /// The hyperparameter objective at this step, before the update (`None` at the start).
    pub objective: Option<f64>,
}

impl TracePoint {
    /// The point of `model`'s `psi` after `step` parameter steps.
    pub fn of(model: &PartitionedNet, step: usize, objective: Option<f64>) -> Self {
        let v = model.psi.values();
        let mean_keep = v.keep.iter().map(|&k| k as f64).sum::<f64>() / v.keep.len().max(1) as f64;
        TracePoint { step, theta_max_deg: v.theta_max_deg, sigma: v.sigma, mean_keep, objective }
    }
}

/// What a run returns.
pub struct RunOutcome {
    /// The trained network (no autodiff).
    pub model: PartitionedNet,
    /// Final `psi`.
    pub psi: PsiValues,
    /// `psi` over training.
    pub trace: Vec<TracePoint>,
    /// Wall time of training (parameter and hyperparameter steps), seconds.
    pub seconds: f64,
    /// Mean training loss of the last 10 % of the steps.
    pub final_loss: f64,
}

/// Where a run starts: [`Start::FRESH`] builds a new network from `config.seed`; a federated
/// round starts from the global network's values, with its own data streams and learning rate.
#[derive(Clone, Copy, Debug)]
pub struct Start<'a> {
    /// Trained values (weights, biases and `psi`, in [`crate::federated::NetValues`] order) to
    /// load into the network built from `config.seed` (its partitions and initial values).
    pub values: Option<&'a crate::federated::NetValues>,
    /// Seed of the shards, the batches and the hyperparameter draws (`None`: `config.seed`).
    pub data_seed: Option<u64>,
    /// Index of the first step in the batch and hyperparameter streams.
    pub first_step: usize,
    /// A constant learning rate instead of the cosine schedule over `config.steps`.
    pub constant_lr: Option<f64>,
}

impl Start<'_> {
    /// A new network, every stream from `config.seed`, the cosine schedule.
    pub const FRESH: Start<'static> =
        Start { values: None, data_seed: None, first_step: 0, constant_lr: None };
}

/// Trains a partitioned network on `train` (and `psi` from `config.signal`; `val` is needed for
/// [`PsiSignal::Validation`]).
pub fn train(
    config: &RunConfig,
    train: &Inputs,
    val: Option<&Inputs>,
    device: &Device,
    progress: &dyn Progress,
) -> Result<RunOutcome, HpoError> {
    train_from(config, train, val, Start::FRESH, device, progress)
}

/// [`train`] from `start`.
pub fn train_from(
    config: &RunConfig,
    train: &Inputs,
    val: Option<&Inputs>,
    start: Start,
    device: &Device,
    progress: &dyn Progress,
) -> Result<RunOutcome, HpoError> {
    config.validate()?;
    // Without rotation or dropout a forward pass draws nothing: one sample says it all.
    let stochastic = config.psi_use.rotation || config.psi_use.dropout;
    let config = &RunConfig { samples: if stochastic { config.samples } else { 1 }, ..config.clone() };
    if config.signal == Some(PsiSignal::Validation) && val.is_none_or(|v| v.n == 0) {
        return Err(HpoError::InvalidArgument("the validation signal needs validation rows".into()));
    }
    // The data streams (shards, batches, hyperparameter draws) may differ from the network's.
    let data_config = RunConfig { seed: start.data_seed.unwrap_or(config.seed), ..config.clone() };
    let parts = shards(train.n, &config.data_proportions, data_config.seed)?;
    let prefixes: Vec<Vec<usize>> =
        (0..parts.len()).map(|k| parts[..=k].iter().flatten().copied().collect()).collect();
    let objective = WeightObjective {
        data: train,
        prefixes,
        per_group: config.batch / config.partitions,
        hidden: config.hidden.clone(),
        psi_use: config.psi_use,
        seed: data_config.seed,
        first_step: start.first_step,
        l2: match config.signal {
            Some(PsiSignal::Laplace { prior_precision }) => prior_precision / train.n as f64,
            _ => 0.0,
        },
    };
    let optim = match start.constant_lr {
        Some(lr) => OptimConfig { lr, min_lr_ratio: 1.0, ..config.optim() },
        None => config.optim(),
    };
    let trainer = Trainer::new(optim, objective, device);
    let psi_optim = config.psi_optim();
    let mut psi_opt = match config.psi_optimizer {
        PsiOptimizer::Adam => psi_optim.optimizer(),
        PsiOptimizer::Sgd => SgdConfig::new()
            .with_momentum(Some(MomentumConfig { momentum: 0.9, dampening: 0.0, nesterov: false }))
            .init(),
    };
    let mut state = trainer.init_state(|rng, dev| {
        let psi = match &config.init {
            PsiInit::Uniform { theta_deg, mask_keep, sigma } => {
                Psi::new(train.d, *theta_deg, *mask_keep, *sigma, dev)
            }
            PsiInit::Values(v) => Psi::from_values(v, dev),
        };
        let mut net = PartitionedNet::new(
            train.d,
            train.image,
            &config.conv_channels,
            &config.hidden,
            CLASSES,
            &config.weight_proportions,
            psi,
            config.seed,
            rng,
            dev,
        );
        if config.zero_defaults {
            for l in &mut net.layers {
                l.set_initial(l.weight.val().detach().zeros_like(), l.bias.val().detach().zeros_like());
            }
            for l in &mut net.convs {
                l.set_initial(l.weight.val().detach().zeros_like(), l.bias.val().detach().zeros_like());
            }
        }
        if let Some(values) = start.values {
            values.load_into(&mut net);
        }
        net
    });
    let mut trace = Vec::new();
    let mut losses = Vec::with_capacity(config.steps);
    let clock = Instant::now();
    progress.start("train", config.steps as u64);
    trace.push(TracePoint::of(&state.model, 0, None));
    for step in 0..config.steps {
        let loss = trainer.step(&mut state);
        if !loss.is_finite() {
            return Err(HpoError::Diverged { step, loss });
        }
        losses.push(loss as f64);
        progress.advance(1);
        if let Some(signal) = config.signal {
            if (step + 1) % config.psi_every == 0 {
                let j = (start.first_step + step + 1) / config.psi_every;
                let groups: Vec<Group> = psi_groups(signal, train, &parts, val, &data_config, j)
                    .into_iter()
                    .map(|(g, _)| g)
                    .collect();
                let (obj, value) = hyper_objective(&state.model, &groups, train, config, signal);
                let grads = GradientsParams::from_grads(obj.backward(), &state.model);
                let model = std::mem::replace(&mut state.model, state.ema.clone());
                state.model = psi_opt.step(psi_optim.lr, model, grads);
                trace.push(TracePoint::of(&state.model, step + 1, Some(value)));
                progress.message(&format!("loss {loss:.3} theta {:.1}", trace.last().unwrap().theta_max_deg));
            }
        }
    }
    progress.finish();
    let seconds = clock.elapsed().as_secs_f64();
    let tail = (losses.len() / 10).max(1);
    let final_loss = losses[losses.len() - tail..].iter().sum::<f64>() / tail as f64;
    let model = state.model.valid();
    let psi = model.psi.values();
    Ok(RunOutcome { model, psi, trace, seconds, final_loss })
}

/// Accuracy of subnetwork `C` (the full network) on `data`, predicting with the class
/// probabilities averaged over `samples` augmentation draws (from
/// `stream_for(seed, HpoDataTransform, 2)`; no dropout); with rotation off, one pass.
pub fn accuracy(model: &PartitionedNet, data: &Inputs, psi_use: PsiUse, samples: usize, seed: u64) -> f64 {
    let c = model.layers[0].partitions - 1;
    let use_ = PsiUse { dropout: false, ..psi_use };
    let samples = if use_.rotation { samples } else { 1 };
    let mut rng = stream_for(seed, Purpose::HpoDataTransform, 2);
    let chunk = 250;
    let mut correct = 0usize;
    let mut start = 0;
    while start < data.n {
        let idx: Vec<usize> = (start..(start + chunk).min(data.n)).collect();
        let n = idx.len();
        let rows = data.select(&idx);
        let mut x = Vec::with_capacity(n * samples * data.d);
        for _ in 0..samples {
            x.extend_from_slice(&rows.x);
        }
        let u = (0..n * samples).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let logits = model.forward(
            &x,
            n * samples,
            data.image,
            &Draws { u, ..Draws::default() },
            use_,
            false,
            Mode::Eval(c),
        );
        let probs = softmax(logits, 1).reshape([samples, n, CLASSES]).mean_dim(0).reshape([n, CLASSES]);
        let pred =
            probs.argmax(1).into_data().convert::<i64>().try_into_vec::<i64>().expect("int predictions");
        correct += pred.iter().zip(&rows.y).filter(|(p, y)| **p == **y as i64).count();
        start += n;
    }
    correct as f64 / data.n as f64
}
