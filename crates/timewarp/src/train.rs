//! Training the flow by maximum likelihood on MD pairs through `foundation::train`, and the
//! trained flow as an MH [`Proposal`].
//!
//! A step's batch is drawn from the step alone: pair indices from
//! [`foundation::rng::epoch_order`], and from the step's `TrainNoise` stream a random rotation per
//! pair (applied to x(t) and x(t+τ) alike, the data augmentation that stands in for rotation
//! equivariance) and the target auxiliary velocities v′ ~ N(0, I).

use std::ops::Range;

use burn::prelude::*;
use foundation::rng::{epoch_order, stream_for, Purpose};
use foundation::train::{Objective, OptimConfig, Trainer};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::error::TimewarpError;
use crate::flow::{one_hot, Conditioning, FlowConfig, TimewarpFlow};
use crate::mh::{Move, Proposal};

/// Training pairs of one cluster composition (flat, `pairs × N × 2`).
#[derive(Clone, Debug)]
pub struct PairSet {
    /// Atom types (indices), the same for every pair.
    pub types: Vec<usize>,
    /// x(t).
    pub x0: Vec<f64>,
    /// x(t + τ).
    pub x1: Vec<f64>,
    /// Per pair, whether its two frames quench to different isomers (empty: not known). Only
    /// [`FlowTrainConfig::hop_fraction`] reads it.
    pub hop: Vec<bool>,
}

impl PairSet {
    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.x0.len() / (2 * self.types.len()).max(1)
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pairs with every x(t + τ) moved rigidly onto its x(t): translated to the same
    /// centroid and rotated by the angle that minimises the squared distance between the two
    /// (2-D Kabsch). The Boltzmann target is invariant under both, so a proposal of the aligned
    /// pairs' kind stays exact under MH; it spares the flow the Brownian translation and rotation
    /// of the whole cluster, which are unpredictable from x(t).
    pub fn aligned(&self) -> PairSet {
        let n = self.types.len();
        let mut x1 = self.x1.clone();
        for (a, b) in self.x0.chunks_exact(2 * n).zip(x1.chunks_exact_mut(2 * n)) {
            align_onto(a, b);
        }
        PairSet { types: self.types.clone(), x0: self.x0.clone(), x1, hop: self.hop.clone() }
    }

    /// [`PairSet::aligned`] with the atoms of every x(t + τ) also relabelled, within each atom
    /// type, to the labelling closest to x(t) ([`align_permuted_onto`]). The Boltzmann target is invariant
    /// under exchanging atoms of one type as under rigid motions, so MH with a flow trained on
    /// these pairs stays exact; the flow learns the smallest motion that carries x(t) into the
    /// shape of x(t + τ) instead of the MD's labelling, which after an excursion and return can
    /// have atoms exchanged (a large, concerted displacement of a pair that stays in its isomer).
    pub fn aligned_permuted(&self) -> PairSet {
        let n = self.types.len();
        let mut x1 = self.x1.clone();
        for (a, b) in self.x0.chunks_exact(2 * n).zip(x1.chunks_exact_mut(2 * n)) {
            align_permuted_onto(a, b, &self.types);
        }
        PairSet { types: self.types.clone(), x0: self.x0.clone(), x1, hop: self.hop.clone() }
    }

    /// Root-mean-square displacement per coordinate between x(t) and x(t + τ).
    pub fn rms_displacement(&self) -> f64 {
        let s: f64 = self.x0.iter().zip(&self.x1).map(|(a, b)| (a - b).powi(2)).sum();
        (s / self.x0.len().max(1) as f64).sqrt()
    }
}

/// Moves `b` (flat 2-D coordinates) rigidly onto `a`: same centroid, best rotation.
pub fn align_onto(a: &[f64], b: &mut [f64]) {
    let (ca, cb) = (crate::lj::centroid(a), crate::lj::centroid(b));
    let (mut dot, mut cross) = (0.0, 0.0);
    for (p, q) in a.chunks_exact(2).zip(b.chunks_exact(2)) {
        let (px, py, qx, qy) = (p[0] - ca.0, p[1] - ca.1, q[0] - cb.0, q[1] - cb.1);
        dot += qx * px + qy * py;
        cross += qx * py - qy * px;
    }
    let theta = cross.atan2(dot);
    let (c, s) = (theta.cos(), theta.sin());
    for q in b.chunks_exact_mut(2) {
        let (qx, qy) = (q[0] - cb.0, q[1] - cb.1);
        q[0] = ca.0 + c * qx - s * qy;
        q[1] = ca.1 + s * qx + c * qy;
    }
}

/// Relabels (within each type of `types`) and moves `b` rigidly onto `a`, to the least squared
/// distance found by alternating the optimal assignment of `b`'s atoms to `a`'s ([`assignment`])
/// and [`align_onto`] until the assignment keeps every label (each round lowers or keeps the
/// distance; at most 20 rounds). Started from `b` rigidly aligned with its own labels, turned by
/// each multiple of 30° (0° included: a symmetric cluster has local minima one symmetry turn
/// apart); the best of the 12 results is kept.
pub fn align_permuted_onto(a: &[f64], b: &mut [f64], types: &[usize]) {
    let sq = |b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
    align_onto(a, b);
    let mut best = b.to_vec();
    let mut best_d = sq(b);
    let c = crate::lj::centroid(a);
    for k in 0..12 {
        let mut t = b.to_vec();
        if k > 0 {
            let (cs, sn) = (
                (k as f64 * std::f64::consts::PI / 6.0).cos(),
                (k as f64 * std::f64::consts::PI / 6.0).sin(),
            );
            for q in t.chunks_exact_mut(2) {
                let (x, y) = (q[0] - c.0, q[1] - c.1);
                q[0] = c.0 + cs * x - sn * y;
                q[1] = c.1 + sn * x + cs * y;
            }
        }
        relabel_and_align(a, &mut t, types);
        let d = sq(&t);
        if d < best_d - 1e-12 {
            best_d = d;
            best = t;
        }
    }
    b.copy_from_slice(&best);
}

/// Alternates the optimal assignment and [`align_onto`] from `b` as it is until the assignment
/// keeps every label (at most 20 rounds).
fn relabel_and_align(a: &[f64], b: &mut [f64], types: &[usize]) {
    let n = types.len();
    for _ in 0..20 {
        let mut cost = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                let d = (a[2 * i] - b[2 * j]).powi(2) + (a[2 * i + 1] - b[2 * j + 1]).powi(2);
                // Atoms of different types are never exchanged.
                cost[i * n + j] = if types[i] == types[j] { d } else { d + 1e9 };
            }
        }
        let perm = assignment(&cost, n);
        if perm.iter().enumerate().all(|(i, &j)| i == j) {
            return;
        }
        let old = b.to_vec();
        for (i, &j) in perm.iter().enumerate() {
            b[2 * i] = old[2 * j];
            b[2 * i + 1] = old[2 * j + 1];
        }
        align_onto(a, b);
    }
}

/// The assignment of rows to columns of the `n × n` row-major `cost` with the least total cost
/// (Hungarian method, O(n³)): entry i is the column of row i.
pub fn assignment(cost: &[f64], n: usize) -> Vec<usize> {
    // Potentials u (rows), v (columns); p[j]: the row (1-based) matched to column j; column 0
    // is a sentinel.
    let (mut u, mut v) = (vec![0.0; n + 1], vec![0.0; n + 1]);
    let (mut p, mut way) = (vec![0usize; n + 1], vec![0usize; n + 1]);
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0;
        let mut minv = vec![f64::INFINITY; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let (mut delta, mut j1) = (f64::INFINITY, 0);
            for j in 1..=n {
                if !used[j] {
                    let cur = cost[(i0 - 1) * n + j - 1] - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut out = vec![0; n];
    for j in 1..=n {
        if p[j] > 0 {
            out[p[j] - 1] = j - 1;
        }
    }
    out
}

/// Settings of a training run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FlowTrainConfig {
    /// Architecture.
    pub flow: FlowConfig,
    /// Optimisation steps.
    pub steps: usize,
    /// Pairs per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Seed of initialisation, order and augmentation.
    pub seed: u64,
    /// Fraction of every batch drawn (uniformly, with replacement) from the pairs flagged as
    /// isomer changes ([`PairSet::hop`]); the rest of the batch follows the epoch order over all
    /// pairs. 0 trains on the MD pairs as they come (maximum likelihood of the MD kernel); above
    /// the pairs' own hop fraction the flow fits a hop-enriched mixture instead, which MH keeps
    /// exact (it evaluates the flow's own density both ways).
    #[serde(default)]
    pub hop_fraction: f64,
}

impl FlowTrainConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), TimewarpError> {
        self.flow.validate()?;
        if !(0.0..=1.0).contains(&self.hop_fraction) {
            return Err(TimewarpError::Input(format!(
                "hop fraction must be in [0, 1], got {}",
                self.hop_fraction
            )));
        }
        Ok(())
    }
}

/// The NLL objective over one or more pair sets of the same atom count.
pub struct FlowObjective<'a> {
    sets: &'a [PairSet],
    n_types: usize,
    batch_size: usize,
    seed: u64,
    /// (set, pair) of every training example.
    index: Vec<(usize, usize)>,
    /// Positions in `index` of the pairs flagged as isomer changes.
    hops: Vec<usize>,
    /// Examples per batch drawn from `hops`.
    hop_count: usize,
}

/// A batch: conditioning, targets.
#[derive(Clone, Debug)]
pub struct FlowBatch {
    pub(crate) cond: Conditioning,
    pub(crate) y: Tensor<3>,
    pub(crate) v: Tensor<3>,
}

impl<'a> FlowObjective<'a> {
    /// The objective over `sets` (all with the same number of atoms, at least one pair).
    pub fn new(
        sets: &'a [PairSet],
        n_types: usize,
        batch_size: usize,
        seed: u64,
    ) -> Result<Self, TimewarpError> {
        let n = sets.first().map(|s| s.types.len()).unwrap_or(0);
        if sets.iter().any(|s| s.types.len() != n) || n == 0 || batch_size == 0 {
            return Err(TimewarpError::Input(
                "flow training needs sets of one atom count and batch_size >= 1".into(),
            ));
        }
        let index: Vec<(usize, usize)> =
            sets.iter().enumerate().flat_map(|(k, s)| (0..s.len()).map(move |i| (k, i))).collect();
        if index.is_empty() {
            return Err(TimewarpError::Input("flow training needs at least one pair".into()));
        }
        Ok(Self { sets, n_types, batch_size, seed, index, hops: Vec::new(), hop_count: 0 })
    }

    /// Draws `round(fraction × batch_size)` examples of every batch from the pairs flagged as
    /// isomer changes (no effect if none is flagged).
    pub fn with_hop_fraction(mut self, fraction: f64) -> Self {
        self.hops = self
            .index
            .iter()
            .enumerate()
            .filter(|(_, &(k, i))| self.sets[k].hop.get(i).copied().unwrap_or(false))
            .map(|(j, _)| j)
            .collect();
        self.hop_count = if self.hops.is_empty() {
            0
        } else {
            ((fraction * self.batch_size as f64).round() as usize).min(self.batch_size)
        };
        self
    }

    /// The (set, pair) of every example of step `step`'s batch, and the step's noise stream
    /// positioned after these draws (rotations and velocities come next).
    fn examples(&self, step: usize) -> (Vec<(usize, usize)>, ChaCha8Rng) {
        let m = self.index.len();
        let per_epoch = m.div_ceil(self.batch_size);
        let (epoch, pos) = (step / per_epoch, step % per_epoch);
        let order = epoch_order(self.seed, epoch, m);
        let chunk = &order[pos * self.batch_size..((pos + 1) * self.batch_size).min(m)];
        let mut r = stream_for(self.seed, Purpose::TrainNoise, step as u64);
        let k = self.hop_count.min(chunk.len());
        let mut out: Vec<(usize, usize)> =
            (0..k).map(|_| self.index[self.hops[r.gen_range(0..self.hops.len())]]).collect();
        out.extend(chunk[k..].iter().map(|&j| self.index[j]));
        (out, r)
    }

    /// The (set, pair) of every example of step `step`'s batch.
    pub fn batch_examples(&self, step: usize) -> Vec<(usize, usize)> {
        self.examples(step).0
    }

    /// Number of pair sets.
    pub fn n_sets(&self) -> usize {
        self.sets.len()
    }

    fn n_atoms(&self) -> usize {
        self.sets[0].types.len()
    }
}

impl Objective<TimewarpFlow> for FlowObjective<'_> {
    type Batch = FlowBatch;

    fn batch(&self, step: usize, device: &Device) -> FlowBatch {
        let (chunk, mut r) = self.examples(step);
        let n = self.n_atoms();
        let (mut x, mut y, mut v, mut t) =
            (Vec::new(), Vec::new(), Vec::new(), vec![0f32; chunk.len() * n * self.n_types]);
        for (e, &(k, i)) in chunk.iter().enumerate() {
            let set = &self.sets[k];
            let theta: f64 = r.gen_range(0.0..std::f64::consts::TAU);
            let (c, s) = (theta.cos(), theta.sin());
            for a in 0..n {
                let p = 2 * (i * n + a);
                x.extend([
                    (c * set.x0[p] - s * set.x0[p + 1]) as f32,
                    (s * set.x0[p] + c * set.x0[p + 1]) as f32,
                ]);
                y.extend([
                    (c * set.x1[p] - s * set.x1[p + 1]) as f32,
                    (s * set.x1[p] + c * set.x1[p + 1]) as f32,
                ]);
                v.extend([r.sample::<f32, _>(StandardNormal), r.sample::<f32, _>(StandardNormal)]);
                t[(e * n + a) * self.n_types + set.types[a]] = 1.0;
            }
        }
        let b = chunk.len();
        let f = |d: Vec<f32>, w: usize| Tensor::<3>::from_data(TensorData::new(d, [b, n, w]), device);
        FlowBatch { cond: Conditioning { x: f(x, 2), types: f(t, self.n_types) }, y: f(y, 2), v: f(v, 2) }
    }

    fn batch_len(&self, batch: &FlowBatch) -> usize {
        batch.y.dims()[0]
    }

    fn slice(&self, batch: &FlowBatch, range: Range<usize>) -> FlowBatch {
        let (s, l) = (range.start, range.end - range.start);
        FlowBatch {
            cond: Conditioning {
                x: batch.cond.x.clone().narrow(0, s, l),
                types: batch.cond.types.clone().narrow(0, s, l),
            },
            y: batch.y.clone().narrow(0, s, l),
            v: batch.v.clone().narrow(0, s, l),
        }
    }

    fn loss(&self, model: &TimewarpFlow, batch: FlowBatch) -> Tensor<1> {
        let (logq, _, _) = model.log_density(&batch.cond, batch.y, batch.v);
        logq.mean().neg()
    }
}

/// What a training run reports.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FlowTrainReport {
    /// Mean NLL (per pair) over the first and last tenth of the steps.
    pub nll_first_last: (f64, f64),
    /// Wall seconds.
    pub seconds: f64,
    /// Parameters.
    pub num_params: usize,
}

/// Trains a flow on `sets` and returns it (non-autodiff, flex device) with a report.
pub fn train_flow(
    sets: &[PairSet],
    cfg: &FlowTrainConfig,
    progress: &dyn foundation::progress::Progress,
) -> Result<(TimewarpFlow, FlowTrainReport), TimewarpError> {
    cfg.validate()?;
    let objective = FlowObjective::new(sets, cfg.flow.n_types, cfg.batch_size, cfg.seed)?
        .with_hop_fraction(cfg.hop_fraction);
    let optim = OptimConfig {
        steps: cfg.steps,
        lr: cfg.lr,
        warmup_steps: (cfg.steps / 20).max(1),
        min_lr_ratio: 0.05,
        weight_decay: 0.0,
        grad_clip: Some(10.0),
        ema_decay: 0.0,
        seed: cfg.seed,
        microbatches: 1,
    };
    let start = std::time::Instant::now();
    let trainer = Trainer::new(optim, objective, &Device::flex());
    let mut flow_cfg = cfg.flow.clone();
    // The position latent starts at the data's displacement scale.
    let rms = sets.iter().map(|s| s.rms_displacement()).sum::<f64>() / sets.len() as f64;
    if rms.is_finite() && rms > 0.0 {
        flow_cfg.position_log_scale = rms.ln();
    }
    let mut state = trainer.init_state(|rng, device| flow_cfg.init_with(rng, device, 0.0));
    let nll_first_last = run_first_last_tenth(&trainer, &mut state, cfg.steps, progress)?;
    let model = state.model.valid();
    let report = FlowTrainReport {
        nll_first_last,
        seconds: start.elapsed().as_secs_f64(),
        num_params: model.num_params(),
    };
    Ok((model, report))
}

/// A trained flow as an MH proposal for one composition (f32 inside, f64 outside).
pub struct FlowProposal {
    /// The flow (non-autodiff).
    pub flow: TimewarpFlow,
    /// Atom types.
    pub types: Vec<usize>,
    /// Number of atom types of the flow.
    pub n_types: usize,
    /// Device.
    pub device: Device,
}

impl FlowProposal {
    fn tensor(&self, rows: &[&[f64]]) -> Tensor<3> {
        let n = self.types.len();
        let v: Vec<f32> = rows.iter().flat_map(|r| r.iter().map(|&a| a as f32)).collect();
        Tensor::from_data(TensorData::new(v, [rows.len(), n, 2]), &self.device)
    }

    fn rows(t: Tensor<3>) -> Vec<Vec<f64>> {
        let [b, n, c] = t.dims();
        let v = t.into_data().try_into_vec::<f32>().unwrap_or_default();
        (0..b).map(|i| v[i * n * c..(i + 1) * n * c].iter().map(|&a| f64::from(a)).collect()).collect()
    }
}

impl Proposal for FlowProposal {
    fn propose(&self, x: &[f64], count: usize, rng: &mut ChaCha8Rng) -> Vec<Move> {
        self.propose_each(&vec![x; count], rng)
    }

    fn propose_each(&self, xs: &[&[f64]], rng: &mut ChaCha8Rng) -> Vec<Move> {
        let (n, count) = (self.types.len(), xs.len());
        let cond = Conditioning {
            x: self.tensor(xs),
            types: one_hot(&self.types, self.n_types, count, &self.device),
        };
        let mut normals = |_| -> Tensor<3> {
            let v: Vec<f32> = (0..count * n * 2).map(|_| rng.sample::<f32, _>(StandardNormal)).collect();
            Tensor::from_data(TensorData::new(v, [count, n, 2]), &self.device)
        };
        let (e_p, e_v) = (normals(0), normals(1));
        let (y, v, logq) = self.flow.sample(&cond, e_p, e_v);
        let logq = logq.into_data().try_into_vec::<f32>().unwrap_or_default();
        Self::rows(y)
            .into_iter()
            .zip(Self::rows(v))
            .zip(logq)
            .map(|((x, v), l)| Move { x, v, log_q_forward: f64::from(l) })
            .collect()
    }

    fn log_density(&self, cases: &[(&[f64], &[f64], &[f64])]) -> Vec<f64> {
        let from: Vec<&[f64]> = cases.iter().map(|c| c.0).collect();
        let to_x: Vec<&[f64]> = cases.iter().map(|c| c.1).collect();
        let to_v: Vec<&[f64]> = cases.iter().map(|c| c.2).collect();
        let cond = Conditioning {
            x: self.tensor(&from),
            types: one_hot(&self.types, self.n_types, cases.len(), &self.device),
        };
        let (logq, _, _) = self.flow.log_density(&cond, self.tensor(&to_x), self.tensor(&to_v));
        logq.into_data().try_into_vec::<f32>().unwrap_or_default().into_iter().map(f64::from).collect()
    }
}

/// Runs `trainer` from `state` to step `steps` and returns the mean training loss over the
/// first and over the last tenth of the steps (the training reports' summary).
pub(crate) fn run_first_last_tenth<O: Objective<TimewarpFlow>>(
    trainer: &Trainer<O>,
    state: &mut foundation::train::TrainState<TimewarpFlow>,
    steps: usize,
    progress: &dyn foundation::progress::Progress,
) -> Result<(f64, f64), TimewarpError> {
    let mut losses = Vec::with_capacity(steps);
    trainer
        .run(state, steps, None, progress, |e| {
            if let foundation::train::Event::Step { loss, .. } = e {
                losses.push(f64::from(loss));
            }
            Ok(())
        })
        .map_err(|e| TimewarpError::Input(e.to_string()))?;
    let tenth = (losses.len() / 10).max(1);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
    Ok((mean(&losses[..tenth.min(losses.len())]), mean(&losses[losses.len().saturating_sub(tenth)..])))
}
