//! Fine-tuning the flow with Timewarp's acceptance loss (`AcceptanceLoss` and the convex
//! combination with the NLL of the authors' `losses.py`, `NLLAndAcceptanceLossConfig`).
//!
//! From a training start x(t) with a fresh auxiliary velocity v ~ N(0, I), the flow draws its own
//! move (x′, v′) by the reparameterisation (so the draw is differentiable in the weights), and
//! the acceptance term of that pair is the MH energy of [`crate::mh::mh_energy`] plus β times the
//! forward log-density (a conditional-entropy term that keeps the proposals from collapsing onto
//! x, where E = 0 would be trivially reached):
//!
//! a(x) = [U(x′) − U(x)]/kT + ½‖v′‖² − ½‖v‖² + log q(x′, v′ | x) − log q(x, v | x′) + β log q(x′, v′ | x).
//!
//! As in the authors' default (no clamping) the term is E itself, not min(0, E), so every pair
//! carries a gradient. The loss of a batch is (1 − λ)·NLL + λ·mean(a) over the pairs whose
//! proposal raises U by at most `energy_cap_kt` kT (the authors' `high_energy_threshold`: a move
//! into an atom overlap has an enormous, useless gradient); both terms are per pair (summed over
//! atoms and coordinates).
//!
//! U is the crate's one [`Potential`] in f64, outside the graph: the term enters as the surrogate
//! Σ x′·∇U(x′)/kT + const ([`energy_surrogate`]), whose value is U(x′)/kT and whose gradient
//! with respect to x′ is ∇U(x′)/kT, exact to first order, which is all backpropagation uses.

use std::ops::Range;

use burn::prelude::*;
use foundation::train::{Objective, OptimConfig, Trainer};
use rand::Rng;
use rand_distr::StandardNormal;

use crate::error::TimewarpError;
use crate::flow::{Conditioning, TimewarpFlow};
use crate::potential::Potential;
use crate::train::{run_first_last_tenth, FlowBatch, FlowObjective, PairSet};

/// Settings of an acceptance-loss fine-tuning run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AcceptanceConfig {
    /// Optimisation steps.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Pairs per step.
    pub batch_size: usize,
    /// Weight λ of the acceptance term: loss = (1 − λ)·NLL + λ·acceptance.
    pub weight: f64,
    /// β of the entropy term (the authors' default 0.2).
    pub beta: f64,
    /// Proposals raising U by more than this many kT are left out of the acceptance term.
    pub energy_cap_kt: f64,
    /// Temperature k_B T of the target.
    pub kt: f64,
}

impl Default for AcceptanceConfig {
    fn default() -> Self {
        Self { steps: 500, lr: 3e-4, batch_size: 64, weight: 0.5, beta: 0.2, energy_cap_kt: 20.0, kt: 0.15 }
    }
}

impl AcceptanceConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), TimewarpError> {
        let ok = self.steps > 0
            && self.batch_size > 0
            && self.lr.is_finite()
            && self.lr > 0.0
            && (0.0..=1.0).contains(&self.weight)
            && self.beta.is_finite()
            && self.energy_cap_kt > 0.0
            && self.kt.is_finite()
            && self.kt > 0.0;
        if ok {
            Ok(())
        } else {
            Err(TimewarpError::Input(format!(
                "acceptance fine-tuning needs steps, batch >= 1, lr > 0, weight in [0, 1], finite beta, cap > 0, kT > 0; got {self:?}"
            )))
        }
    }
}

/// U(y)/kT per example as a tensor `[B]` whose gradient with respect to `y` (`[B, N, 2]`) is
/// ∇U(y)/kT: Σ y·g + (U − Σ y·g) with g = ∇U(y)/kT computed outside the graph. `pots[e]` is the
/// potential of example e. Also returns the f64 energies U(y) (an example whose energy or
/// gradient is not finite gets U = +∞ and no gradient).
pub fn energy_surrogate(y: Tensor<3>, pots: &[&dyn Potential], kt: f64) -> (Tensor<1>, Vec<f64>) {
    let [b, n, c] = y.dims();
    let device = y.device();
    let vals = y.clone().detach().into_data().try_into_vec::<f32>().unwrap_or_default();
    let (mut grads, mut consts, mut energies) = (vec![0f32; b * n * c], vec![0f32; b], vec![0f64; b]);
    let mut g = vec![0.0; n * c];
    for e in 0..b {
        let x: Vec<f64> = vals[e * n * c..(e + 1) * n * c].iter().map(|&a| f64::from(a)).collect();
        let u = pots[e].energy_grad(&x, &mut g);
        if !(u.is_finite() && g.iter().all(|v| v.is_finite())) {
            energies[e] = f64::INFINITY;
            continue;
        }
        energies[e] = u;
        let dot: f64 = x.iter().zip(&g).map(|(a, b)| a * b).sum();
        consts[e] = ((u - dot) / kt) as f32;
        for (k, gk) in g.iter().enumerate() {
            grads[e * n * c + k] = (gk / kt) as f32;
        }
    }
    let gt = Tensor::<3>::from_data(TensorData::new(grads, [b, n, c]), &device);
    let ct = Tensor::<1>::from_data(TensorData::new(consts, [b]), &device);
    ((y * gt).sum_dims(&[1, 2]).reshape([b]) + ct, energies)
}

/// The MH energies of the flow's own proposals, differentiable in the weights: from x
/// (`cond.x`) with velocities `v0`, the flow maps `(e_p, e_v)` to (x′, v′); returns E per
/// example (as [`crate::mh::mh_energy`] defines it), log q(x′, v′ | x), and U(x′) − U(x) in f64.
pub fn proposal_mh_energy(
    model: &TimewarpFlow,
    pots: &[&dyn Potential],
    cond: &Conditioning,
    e_p: Tensor<3>,
    e_v: Tensor<3>,
    v0: Tensor<3>,
    kt: f64,
) -> (Tensor<1>, Tensor<1>, Vec<f64>) {
    let [b, _, _] = cond.x.dims();
    let device = cond.x.device();
    let (y, vy, logq_f) = model.sample(cond, e_p, e_v);
    let rev = Conditioning { x: y.clone(), types: cond.types.clone() };
    let (logq_r, _, _) = model.log_density(&rev, cond.x.clone(), v0.clone());
    let (u_y, e_y) = energy_surrogate(y, pots, kt);
    let xs = cond.x.clone().detach().into_data().try_into_vec::<f32>().unwrap_or_default();
    let per = xs.len() / b.max(1);
    let e_x: Vec<f64> = (0..b)
        .map(|e| {
            let x: Vec<f64> = xs[e * per..(e + 1) * per].iter().map(|&a| f64::from(a)).collect();
            pots[e].energy(&x)
        })
        .collect();
    let u_x = Tensor::<1>::from_data(
        TensorData::new(e_x.iter().map(|&u| (u / kt) as f32).collect::<Vec<f32>>(), [b]),
        &device,
    );
    let kin = |v: Tensor<3>| v.powi_scalar(2).sum_dims(&[1, 2]).reshape([b]).mul_scalar(0.5);
    let energy = u_y - u_x + kin(vy) - kin(v0) + logq_f.clone() - logq_r;
    let du = e_y.iter().zip(&e_x).map(|(a, b)| a - b).collect();
    (energy, logq_f, du)
}

/// A fine-tuning batch: the NLL batch, the potential of each example, the noise of the flow's
/// own proposals and the velocities of the starts.
#[derive(Clone, Debug)]
pub struct AcceptanceBatch {
    nll: FlowBatch,
    sets: Vec<usize>,
    e_p: Tensor<3>,
    e_v: Tensor<3>,
    v0: Tensor<3>,
}

/// The objective (1 − λ)·NLL + λ·acceptance over training pairs.
pub struct AcceptanceObjective<'a> {
    nll: FlowObjective<'a>,
    pots: Vec<&'a dyn Potential>,
    cfg: AcceptanceConfig,
    seed: u64,
}

impl<'a> AcceptanceObjective<'a> {
    /// The objective over `sets` (one potential per set, same atom count) with the NLL batches
    /// of `nll`.
    pub fn new(
        nll: FlowObjective<'a>,
        pots: Vec<&'a dyn Potential>,
        cfg: AcceptanceConfig,
        seed: u64,
    ) -> Result<Self, TimewarpError> {
        cfg.validate()?;
        if pots.len() != nll.n_sets() {
            return Err(TimewarpError::Input(format!(
                "acceptance fine-tuning needs one potential per pair set ({} sets, {} potentials)",
                nll.n_sets(),
                pots.len()
            )));
        }
        Ok(Self { nll, pots, cfg, seed })
    }

    /// Mean MH acceptance probability min(1, e^{−E}) of the flow's own proposals from the
    /// starts of step `step`'s batch (no gradient), and the fraction of them within the cap.
    pub fn acceptance(&self, model: &TimewarpFlow, step: usize, device: &Device) -> (f64, f64) {
        let b = self.batch(step, device);
        let pots: Vec<&dyn Potential> = b.sets.iter().map(|&k| self.pots[k]).collect();
        let (e, _, du) = proposal_mh_energy(model, &pots, &b.nll.cond, b.e_p, b.e_v, b.v0, self.cfg.kt);
        let e = e.into_data().try_into_vec::<f32>().unwrap_or_default();
        let n = e.len().max(1) as f64;
        // A move to U = +∞ (no finite energy or gradient) is never accepted.
        let acc = e
            .iter()
            .zip(&du)
            .map(|(&v, d)| if v.is_finite() && d.is_finite() { (-f64::from(v)).exp().min(1.0) } else { 0.0 })
            .sum::<f64>();
        let within = du.iter().filter(|&&d| d / self.cfg.kt <= self.cfg.energy_cap_kt).count();
        (acc / n, within as f64 / n)
    }
}

impl Objective<TimewarpFlow> for AcceptanceObjective<'_> {
    type Batch = AcceptanceBatch;

    fn batch(&self, step: usize, device: &Device) -> AcceptanceBatch {
        let nll = self.nll.batch(step, device);
        let sets = self.nll.batch_examples(step).into_iter().map(|(k, _)| k).collect();
        let [b, n, c] = nll.y.dims();
        // The proposals' noise and the starts' velocities: the step's own stream.
        let mut r = crate::rng::stream(self.seed, crate::rng::FINETUNE, step as u64);
        let mut normals = || {
            let v: Vec<f32> = (0..b * n * c).map(|_| r.sample::<f32, _>(StandardNormal)).collect();
            Tensor::<3>::from_data(TensorData::new(v, [b, n, c]), device)
        };
        let (e_p, e_v, v0) = (normals(), normals(), normals());
        AcceptanceBatch { nll, sets, e_p, e_v, v0 }
    }

    fn batch_len(&self, batch: &AcceptanceBatch) -> usize {
        batch.sets.len()
    }

    fn slice(&self, batch: &AcceptanceBatch, range: Range<usize>) -> AcceptanceBatch {
        let (s, l) = (range.start, range.end - range.start);
        AcceptanceBatch {
            nll: self.nll.slice(&batch.nll, range.clone()),
            sets: batch.sets[range].to_vec(),
            e_p: batch.e_p.clone().narrow(0, s, l),
            e_v: batch.e_v.clone().narrow(0, s, l),
            v0: batch.v0.clone().narrow(0, s, l),
        }
    }

    fn loss(&self, model: &TimewarpFlow, batch: AcceptanceBatch) -> Tensor<1> {
        let lambda = self.cfg.weight;
        let AcceptanceBatch { nll, sets, e_p, e_v, v0 } = batch;
        let cond = nll.cond.clone();
        let nll_loss = self.nll.loss(model, nll);
        if lambda == 0.0 {
            return nll_loss;
        }
        let pots: Vec<&dyn Potential> = sets.iter().map(|&k| self.pots[k]).collect();
        let (energy, logq_f, du) = proposal_mh_energy(model, &pots, &cond, e_p, e_v, v0, self.cfg.kt);
        let keep: Vec<f32> =
            du.iter().map(|&d| f32::from(u8::from(d / self.cfg.kt <= self.cfg.energy_cap_kt))).collect();
        let kept = keep.iter().sum::<f32>().max(1.0);
        let b = keep.len();
        let w = Tensor::<1>::from_data(TensorData::new(keep, [b]), &energy.device());
        // Masked rows are multiplied by 0; their E is finite (U = +∞ rows carry a zero surrogate).
        let acc = ((energy + logq_f.mul_scalar(self.cfg.beta)) * w).sum().div_scalar(kept);
        nll_loss.mul_scalar(1.0 - lambda) + acc.mul_scalar(lambda)
    }
}

/// What a fine-tuning run reports.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AcceptanceReport {
    /// The settings.
    pub config: AcceptanceConfig,
    /// Mean loss over the first and last tenth of the steps.
    pub loss_first_last: (f64, f64),
    /// Mean acceptance probability of the flow's own proposals from 4 batches of training
    /// starts, before and after.
    pub acceptance_before_after: (f64, f64),
    /// Fraction of those proposals within the energy cap, before and after.
    pub within_cap_before_after: (f64, f64),
    /// Wall seconds.
    pub seconds: f64,
}

/// Acceptance and within-cap fraction over 4 evaluation batches (steps past any training run).
fn mean_acceptance(objective: &AcceptanceObjective, model: &TimewarpFlow) -> (f64, f64) {
    let dev = Device::flex();
    let r: Vec<(f64, f64)> = (0..4).map(|k| objective.acceptance(model, 1_000_000 + k, &dev)).collect();
    (r.iter().map(|a| a.0).sum::<f64>() / 4.0, r.iter().map(|a| a.1).sum::<f64>() / 4.0)
}

/// Fine-tunes `flow` on `sets` (potential `pots[k]` for set k) with the acceptance loss; the NLL
/// part draws `hop_fraction` of every batch from isomer-changing pairs as
/// [`crate::train::FlowTrainConfig::hop_fraction`] does.
#[allow(clippy::too_many_arguments)]
pub fn finetune_acceptance(
    flow: &TimewarpFlow,
    sets: &[PairSet],
    pots: Vec<&dyn Potential>,
    n_types: usize,
    hop_fraction: f64,
    cfg: &AcceptanceConfig,
    seed: u64,
    progress: &dyn foundation::progress::Progress,
) -> Result<(TimewarpFlow, AcceptanceReport), TimewarpError> {
    let nll = FlowObjective::new(sets, n_types, cfg.batch_size, seed)?.with_hop_fraction(hop_fraction);
    let objective = AcceptanceObjective::new(nll, pots, cfg.clone(), seed)?;
    let before = mean_acceptance(&objective, flow);
    let optim = OptimConfig {
        steps: cfg.steps,
        lr: cfg.lr,
        warmup_steps: (cfg.steps / 20).max(1),
        min_lr_ratio: 0.05,
        weight_decay: 0.0,
        grad_clip: Some(10.0),
        ema_decay: 0.0,
        seed,
        microbatches: 1,
    };
    let start = std::time::Instant::now();
    let trainer = Trainer::new(optim, objective, &Device::flex());
    let mut state = trainer.init_state(|_, device| flow.clone().fork(device).train());
    let loss_first_last = run_first_last_tenth(&trainer, &mut state, cfg.steps, progress)?;
    let model = state.model.valid();
    let seconds = start.elapsed().as_secs_f64();
    let after = mean_acceptance(&trainer.objective, &model);
    let report = AcceptanceReport {
        config: cfg.clone(),
        loss_first_last,
        acceptance_before_after: (before.0, after.0),
        within_cap_before_after: (before.1, after.1),
        seconds,
    };
    Ok((model, report))
}
