//! Metropolis–Hastings with auxiliary velocities, as in Timewarp's `sample_with_model`: the
//! target is μ(x)·N(v; 0, I); a proposal draws (x′, v′) ~ q(· | x) and is accepted with
//! probability min(1, e^{−E}),
//!
//! E = [U(x′) − U(x)]/kT + ½‖v′‖² − ½‖v‖² + log q(x′, v′ | x) − log q(x, v | x′),
//!
//! after which v is refreshed from N(0, I) (the Gibbs step). Batched proposals draw B moves from
//! the same state, each with its own fresh v, test each, and move to the first accepted one; the
//! trials before it are recorded as repeats of the current state. That is exact: it is the
//! sequence B single-proposal steps would produce, since a rejected step leaves x unchanged and
//! the next one refreshes v. Exploration mode accepts every move whose energy rise is below a cap.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

use crate::potential::Potential;

/// One proposed move: the new positions and velocities and log q(x′, v′ | x).
#[derive(Clone, Debug)]
pub struct Move {
    /// Proposed positions x′.
    pub x: Vec<f64>,
    /// Proposed auxiliary velocities v′.
    pub v: Vec<f64>,
    /// log q(x′, v′ | x).
    pub log_q_forward: f64,
}

/// A conditional proposal q(x′, v′ | x) that can be sampled and evaluated both ways.
pub trait Proposal: Sync {
    /// `count` independent moves from `x`.
    fn propose(&self, x: &[f64], count: usize, rng: &mut ChaCha8Rng) -> Vec<Move>;
    /// log q(to_x, to_v | from) for each case `(from, to_x, to_v)`.
    fn log_density(&self, cases: &[(&[f64], &[f64], &[f64])]) -> Vec<f64>;
    /// One move from each state of `xs` (by default one [`Proposal::propose`] call per state; a
    /// batched proposal computes them at once).
    fn propose_each(&self, xs: &[&[f64]], rng: &mut ChaCha8Rng) -> Vec<Move> {
        xs.iter().flat_map(|x| self.propose(x, 1, rng)).collect()
    }
}

/// Sampler settings.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MhConfig {
    /// Temperature k_B T of the target.
    pub kt: f64,
    /// Proposals per batch (B ≥ 1); with `adapt`, the largest B allowed.
    pub batch: usize,
    /// Adapt B so that P(at least one acceptance in a batch) ≈ 0.9 under a smoothed acceptance
    /// rate a: B = ⌈ln 0.1 / ln(1 − a)⌉, capped at `batch` (the authors'
    /// `compute_num_proposal_steps`). Still exact: B only sets how many of the identical,
    /// independent trials from the current state are computed at once.
    pub adapt: bool,
}

/// The batch size for a smoothed acceptance rate `a`, capped at `max`.
pub fn adaptive_batch(a: f64, max: usize) -> usize {
    if a.is_nan() || a <= 0.0 {
        return max.max(1);
    }
    if a >= 0.9 {
        return 1;
    }
    let b = (0.1f64.ln() / (1.0 - a).ln()).ceil();
    (b as usize).clamp(1, max.max(1))
}

/// Counts of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MhStats {
    /// Proposals evaluated (including those of the last batch past the first acceptance).
    pub proposals: usize,
    /// Trials recorded in the chain (each proposal up to and including the first accepted one
    /// of its batch).
    pub trials: usize,
    /// Accepted trials.
    pub accepted: usize,
}

impl MhStats {
    /// Accepted / recorded trials.
    pub fn acceptance(&self) -> f64 {
        self.accepted as f64 / self.trials.max(1) as f64
    }
}

fn sq(v: &[f64]) -> f64 {
    v.iter().map(|a| a * a).sum()
}

/// The MH energy E of a move from (x, v) with energy `u_x` to `mv` with energy `u_y`, given the
/// reverse density log q(x, v | x′).
pub fn mh_energy(kt: f64, u_x: f64, u_y: f64, v: &[f64], mv: &Move, log_q_reverse: f64) -> f64 {
    (u_y - u_x) / kt + 0.5 * sq(&mv.v) - 0.5 * sq(v) + mv.log_q_forward - log_q_reverse
}

/// Runs an MH chain of `trials` trials from `x0`, calling `record` with the state after each
/// trial. Returns the counts and the final state.
pub fn run_chain(
    pot: &dyn Potential,
    prop: &dyn Proposal,
    cfg: &MhConfig,
    x0: &[f64],
    trials: usize,
    rng: &mut ChaCha8Rng,
    mut record: impl FnMut(&[f64]),
) -> (MhStats, Vec<f64>) {
    let dim = x0.len();
    let max_batch = cfg.batch.max(1);
    let mut x = x0.to_vec();
    let mut u_x = pot.energy(&x);
    let mut stats = MhStats::default();
    // Smoothed acceptance rate for the adaptive batch size, starting optimistic.
    let mut smoothed = 0.5;
    while stats.trials < trials {
        let batch = if cfg.adapt { adaptive_batch(smoothed, max_batch) } else { max_batch };
        let (trials_before, accepted_before) = (stats.trials, stats.accepted);
        let moves = prop.propose(&x, batch, rng);
        stats.proposals += moves.len();
        // The Gibbs refresh: each trial starts from its own fresh velocity.
        let vs: Vec<Vec<f64>> = (0..moves.len())
            .map(|_| (0..dim).map(|_| rng.sample::<f64, _>(StandardNormal)).collect())
            .collect();
        let cases: Vec<(&[f64], &[f64], &[f64])> =
            moves.iter().zip(&vs).map(|(m, v)| (m.x.as_slice(), x.as_slice(), v.as_slice())).collect();
        let rev = prop.log_density(&cases);
        let energies: Vec<f64> = if moves.len() > 1 {
            moves.par_iter().map(|m| pot.energy(&m.x)).collect()
        } else {
            moves.iter().map(|m| pot.energy(&m.x)).collect()
        };
        let uniforms: Vec<f64> = (0..moves.len()).map(|_| rng.gen::<f64>()).collect();
        for k in 0..moves.len() {
            if stats.trials >= trials {
                break;
            }
            stats.trials += 1;
            let e = mh_energy(cfg.kt, u_x, energies[k], &vs[k], &moves[k], rev[k]);
            if e.is_finite() && uniforms[k].ln() < -e {
                stats.accepted += 1;
                x.clone_from(&moves[k].x);
                u_x = energies[k];
                record(&x);
                break;
            }
            record(&x);
        }
        let (t, a) = (stats.trials - trials_before, stats.accepted - accepted_before);
        if t > 0 {
            smoothed = 0.9 * smoothed + 0.1 * (a as f64 / t as f64);
        }
    }
    (stats, x)
}

/// Exploration mode over parallel chains, one per state of `x0s`: at every step each chain
/// proposes one move (all chains' moves in one [`Proposal::propose_each`] call) and takes it
/// unless U rises by more than `energy_cap` (in energy units, not kT). Not Boltzmann-exact.
/// Calls `record(chain, x, moved)` for every chain after each step and stops after the step in
/// which a call returned false. Returns the number of accepted moves and the final states.
pub fn explore(
    pot: &dyn Potential,
    prop: &dyn Proposal,
    energy_cap: f64,
    x0s: &[Vec<f64>],
    steps: usize,
    rng: &mut ChaCha8Rng,
    mut record: impl FnMut(usize, &[f64], bool) -> bool,
) -> (usize, Vec<Vec<f64>>) {
    let mut xs = x0s.to_vec();
    let mut u: Vec<f64> = xs.iter().map(|x| pot.energy(x)).collect();
    let mut accepted = 0;
    for _ in 0..steps {
        let refs: Vec<&[f64]> = xs.iter().map(|x| x.as_slice()).collect();
        let moves = prop.propose_each(&refs, rng);
        let energies: Vec<f64> = if moves.len() > 1 {
            moves.par_iter().map(|m| pot.energy(&m.x)).collect()
        } else {
            moves.iter().map(|m| pot.energy(&m.x)).collect()
        };
        let mut go_on = true;
        for (k, (mv, u_y)) in moves.into_iter().zip(energies).enumerate() {
            let moved = u_y.is_finite() && u_y - u[k] <= energy_cap;
            if moved {
                xs[k] = mv.x;
                u[k] = u_y;
                accepted += 1;
            }
            go_on &= record(k, &xs[k], moved);
        }
        if !go_on {
            break;
        }
    }
    (accepted, xs)
}

/// A proposal with a known closed-form density, for testing the sampler and as a baseline:
/// x′ = x − h ∇U(x) + s z₁, v′ = c z₁ + √(1 − c²) z₂ with z₁, z₂ ~ N(0, I). The drift makes it
/// asymmetric (q(x′|x) ≠ q(x|x′)) and c couples the velocities to the move, so every term of E
/// matters.
#[derive(Clone, Copy)]
pub struct GaussianDrift<'a> {
    /// The potential whose gradient drives the drift.
    pub pot: &'a dyn Potential,
    /// Drift step h.
    pub h: f64,
    /// Noise scale s.
    pub s: f64,
    /// Velocity–move correlation c ∈ (−1, 1).
    pub c: f64,
}

impl GaussianDrift<'_> {
    fn mean(&self, x: &[f64]) -> Vec<f64> {
        let mut g = vec![0.0; x.len()];
        self.pot.energy_grad(x, &mut g);
        x.iter().zip(&g).map(|(a, b)| a - self.h * b).collect()
    }
}

impl Proposal for GaussianDrift<'_> {
    fn propose(&self, x: &[f64], count: usize, rng: &mut ChaCha8Rng) -> Vec<Move> {
        let m = self.mean(x);
        let r = (1.0 - self.c * self.c).sqrt();
        (0..count)
            .map(|_| {
                let z1: Vec<f64> = (0..x.len()).map(|_| rng.sample::<f64, _>(StandardNormal)).collect();
                let z2: Vec<f64> = (0..x.len()).map(|_| rng.sample::<f64, _>(StandardNormal)).collect();
                let y: Vec<f64> = m.iter().zip(&z1).map(|(a, z)| a + self.s * z).collect();
                let v: Vec<f64> = z1.iter().zip(&z2).map(|(a, b)| self.c * a + r * b).collect();
                let log_q = self.log_density(&[(x, &y, &v)])[0];
                Move { x: y, v, log_q_forward: log_q }
            })
            .collect()
    }

    fn log_density(&self, cases: &[(&[f64], &[f64], &[f64])]) -> Vec<f64> {
        let r = (1.0 - self.c * self.c).sqrt();
        cases
            .iter()
            .map(|&(from, to_x, to_v)| {
                let m = self.mean(from);
                let d = from.len() as f64;
                let mut quad = 0.0;
                for i in 0..from.len() {
                    let z1 = (to_x[i] - m[i]) / self.s;
                    let z2 = (to_v[i] - self.c * z1) / r;
                    quad += z1 * z1 + z2 * z2;
                }
                -0.5 * quad - d * (2.0 * std::f64::consts::PI).ln() - d * self.s.ln() - d * r.ln()
            })
            .collect()
    }
}

/// log(e^a + e^b) without overflow (−∞ if both are −∞).
pub fn log_add_exp(a: f64, b: f64) -> f64 {
    let m = a.max(b);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// An exact two-component mixture proposal q = w·q_a + (1 − w)·q_b: every move comes from `a`
/// with probability `weight`, otherwise from `b`, and its density is the mixture's, evaluated
/// both ways as log-sum-exp of the two components' densities. MH with it stays exact whatever
/// the components are. Each move of a batch draws its component independently, in trial order,
/// so the trials of a batch stay independent draws of the mixture (sorting them by component
/// would make a trial's component depend on the earlier ones' and break the batch's exactness).
/// Costs both components' densities both ways per trial.
#[derive(Clone, Copy)]
pub struct Mixture<'a> {
    /// The component drawn with probability `weight`.
    pub a: &'a dyn Proposal,
    /// The other component.
    pub b: &'a dyn Proposal,
    /// w ∈ [0, 1].
    pub weight: f64,
}

impl Mixture<'_> {
    fn mix(&self, log_a: f64, log_b: f64) -> f64 {
        let w = self.weight;
        let la = if w > 0.0 { w.ln() + log_a } else { f64::NEG_INFINITY };
        let lb = if w < 1.0 { (1.0 - w).ln() + log_b } else { f64::NEG_INFINITY };
        log_add_exp(la, lb)
    }
}

impl Proposal for Mixture<'_> {
    fn propose(&self, x: &[f64], count: usize, rng: &mut ChaCha8Rng) -> Vec<Move> {
        self.propose_each(&vec![x; count], rng)
    }

    fn propose_each(&self, xs: &[&[f64]], rng: &mut ChaCha8Rng) -> Vec<Move> {
        let from_a: Vec<bool> = xs.iter().map(|_| rng.gen::<f64>() < self.weight).collect();
        let pick = |want: bool| -> Vec<&[f64]> {
            xs.iter().zip(&from_a).filter(|(_, &f)| f == want).map(|(x, _)| *x).collect()
        };
        let (xa, xb) = (pick(true), pick(false));
        let ma = if xa.is_empty() { Vec::new() } else { self.a.propose_each(&xa, rng) };
        let mb = if xb.is_empty() { Vec::new() } else { self.b.propose_each(&xb, rng) };
        // Each component's moves under the other component's density.
        let other = |p: &dyn Proposal, from: &[&[f64]], moves: &[Move]| -> Vec<f64> {
            if moves.is_empty() {
                return Vec::new();
            }
            let cases: Vec<(&[f64], &[f64], &[f64])> =
                from.iter().zip(moves).map(|(x, m)| (*x, m.x.as_slice(), m.v.as_slice())).collect();
            p.log_density(&cases)
        };
        let (la_under_b, lb_under_a) = (other(self.b, &xa, &ma), other(self.a, &xb, &mb));
        let mut ia = ma.into_iter().zip(la_under_b);
        let mut ib = mb.into_iter().zip(lb_under_a);
        from_a
            .iter()
            .filter_map(|&f| {
                if f {
                    ia.next().map(|(m, lb)| Move { log_q_forward: self.mix(m.log_q_forward, lb), ..m })
                } else {
                    ib.next().map(|(m, la)| Move { log_q_forward: self.mix(la, m.log_q_forward), ..m })
                }
            })
            .collect()
    }

    fn log_density(&self, cases: &[(&[f64], &[f64], &[f64])]) -> Vec<f64> {
        let (la, lb) = (self.a.log_density(cases), self.b.log_density(cases));
        la.into_iter().zip(lb).map(|(a, b)| self.mix(a, b)).collect()
    }
}
