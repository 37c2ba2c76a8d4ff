//! The distillation targets and losses: central smoothing of teacher probabilities, the
//! temperature schedule, the EnD² loss (negative log-likelihood of the members' categoricals
//! under `Dir(exp(z / T))`, times `T²`) with its gradient, and the EnD target (the ensemble's
//! mean probabilities at temperature `T`).

use serde::{Deserialize, Serialize};

use crate::special::{digamma, ln_gamma};

/// The central smoothing of the authors' code: `π ← (1 − ε)(π − 1/K) + 1/K` with `ε = 1e-3`,
/// which keeps every teacher probability at least `ε / K`, so `ln π` stays finite.
pub const CENTRAL_SMOOTHING: f64 = 1e-3;

/// Applies central smoothing with `eps` to one probability vector.
pub fn smooth(p: &mut [f64], eps: f64) {
    let k = p.len() as f64;
    for v in p.iter_mut() {
        *v = (1.0 - eps) * (*v - 1.0 / k) + 1.0 / k;
    }
}

/// Softmax of `logits / t` (numerically stable), in f64.
pub fn softmax_t(logits: &[f32], t: f64) -> Vec<f64> {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(z as f64 / t));
    let e: Vec<f64> = logits.iter().map(|&z| (z as f64 / t - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// The targets of one input from its teacher logits `[M, K]` (row-major, member after member) at
/// temperature `t`, each member's probabilities centrally smoothed with `eps`: the mean
/// probabilities (EnD) and the mean log-probabilities (EnD², the log of the geometric mean).
pub fn teacher_targets(logits: &[f32], members: usize, classes: usize, t: f64, eps: f64) -> Targets {
    let mut mean_p = vec![0.0; classes];
    let mut mean_logp = vec![0.0; classes];
    for m in 0..members {
        let mut p = softmax_t(&logits[m * classes..(m + 1) * classes], t);
        smooth(&mut p, eps);
        for c in 0..classes {
            mean_p[c] += p[c] / members as f64;
            mean_logp[c] += p[c].ln() / members as f64;
        }
    }
    Targets { mean_p, mean_logp }
}

/// What the students are distilled towards, for one input.
#[derive(Clone, Debug, PartialEq)]
pub struct Targets {
    /// Mean of the members' (smoothed, heated) probabilities: the EnD target.
    pub mean_p: Vec<f64>,
    /// Mean of the members' log-probabilities: all EnD² needs.
    pub mean_logp: Vec<f64>,
}

/// Temperature annealing (the authors' `LRTempScheduler`): `T = t0` for epochs `< hold_epochs`,
/// then a linear decay over `decay_epochs` epochs to `T = 1`, where it stays. `t0 = 1` switches
/// annealing off.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Anneal {
    /// Initial temperature `T₀ >= 1`.
    pub t0: f64,
    /// Epochs held at `T₀` (`e₀`).
    pub hold_epochs: usize,
    /// Epochs of the linear decay to 1 (`L`).
    pub decay_epochs: usize,
}

impl Anneal {
    /// No annealing: `T = 1` throughout.
    pub const OFF: Anneal = Anneal { t0: 1.0, hold_epochs: 0, decay_epochs: 0 };

    /// The temperature of (zero-based) epoch `epoch`.
    pub fn temperature(&self, epoch: usize) -> f64 {
        if epoch < self.hold_epochs {
            return self.t0;
        }
        let into = (epoch - self.hold_epochs) as f64;
        if self.decay_epochs == 0 || into >= self.decay_epochs as f64 {
            return 1.0;
        }
        self.t0 + (1.0 - self.t0) * into / self.decay_epochs as f64
    }
}

/// The EnD² loss of one input and its gradient with respect to the student's logits `z`:
/// with `α = exp(z / t)` and `ℓ_c` the teacher's mean log-probabilities at temperature `t`,
///
/// `L = t² [Σ_c ln Γ(α_c) − ln Γ(α₀) − Σ_c (α_c − 1) ℓ_c]`,
/// `∂L/∂z_c = t α_c [ψ(α_c) − ψ(α₀) − ℓ_c]`.
///
/// Returns `(L, ∂L/∂z)`; non-finite when `exp(z / t)` overflows.
pub fn dirichlet_nll(z: &[f64], mean_logp: &[f64], t: f64) -> (f64, Vec<f64>) {
    let alpha: Vec<f64> = z.iter().map(|&v| (v / t).exp()).collect();
    let a0: f64 = alpha.iter().sum();
    let psi0 = digamma(a0);
    let mut loss = -ln_gamma(a0);
    let mut grad = Vec::with_capacity(z.len());
    for (&a, &l) in alpha.iter().zip(mean_logp) {
        loss += ln_gamma(a) - (a - 1.0) * l;
        grad.push(t * a * (digamma(a) - psi0 - l));
    }
    (t * t * loss, grad)
}

/// The EnD loss of one input: `t²` times the cross-entropy from the mean probabilities `mean_p` to
/// `softmax(z / t)`, and its gradient `t (softmax(z / t) − mean_p)` (for tests; training computes
/// it in the graph).
pub fn end_cross_entropy(z: &[f64], mean_p: &[f64], t: f64) -> (f64, Vec<f64>) {
    let max = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v / t));
    let lse = max + z.iter().map(|&v| (v / t - max).exp()).sum::<f64>().ln();
    let loss: f64 = z.iter().zip(mean_p).map(|(&v, &p)| -p * (v / t - lse)).sum();
    let q: Vec<f64> = z.iter().map(|&v| (v / t - lse).exp()).collect();
    (t * t * loss, q.iter().zip(mean_p).map(|(&q, &p)| t * (q - p)).collect())
}
