//! Underdamped Langevin dynamics with the BAOAB splitting (Leimkuhler–Matthews), unit masses:
//! B: v += (dt/2) F; A: x += (dt/2) v; O: v ← c₁ v + c₂ ξ with c₁ = e^{−γ dt},
//! c₂ = √((1 − c₁²) kT); A; B. One force evaluation per step (the last B's force is reused).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::error::TimewarpError;
use crate::potential::Potential;

/// Integrator settings.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Langevin {
    /// Time step.
    pub dt: f64,
    /// Friction γ (inverse time).
    pub gamma: f64,
    /// Temperature k_B T.
    pub kt: f64,
}

impl Langevin {
    /// Checks that every setting is finite and positive.
    pub fn validate(&self) -> Result<(), TimewarpError> {
        for (name, v) in [("dt", self.dt), ("gamma", self.gamma), ("kT", self.kt)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(TimewarpError::Input(format!("Langevin {name} must be finite and > 0, got {v}")));
            }
        }
        Ok(())
    }
}

/// A trajectory's state: positions, velocities, the current force and energy.
#[derive(Clone, Debug)]
pub struct MdState {
    /// Positions.
    pub x: Vec<f64>,
    /// Velocities.
    pub v: Vec<f64>,
    /// Gradient ∇U at `x`.
    pub grad: Vec<f64>,
    /// U(x).
    pub energy: f64,
}

impl MdState {
    /// A state at `x` with velocities drawn from the Maxwell–Boltzmann distribution at `kt`.
    pub fn new(pot: &dyn Potential, x: Vec<f64>, kt: f64, rng: &mut ChaCha8Rng) -> Self {
        let mut grad = vec![0.0; x.len()];
        let energy = pot.energy_grad(&x, &mut grad);
        let v = (0..x.len()).map(|_| kt.sqrt() * rng.sample::<f64, _>(StandardNormal)).collect();
        Self { x, v, grad, energy }
    }
}

/// Advances `state` by `steps` BAOAB steps under `pot`.
pub fn baoab(pot: &dyn Potential, lang: &Langevin, state: &mut MdState, steps: usize, rng: &mut ChaCha8Rng) {
    let c1 = (-lang.gamma * lang.dt).exp();
    let c2 = ((1.0 - c1 * c1) * lang.kt).sqrt();
    let (h, dt) = (0.5 * lang.dt, lang.dt);
    let MdState { x, v, grad, energy } = state;
    for _ in 0..steps {
        for i in 0..x.len() {
            v[i] -= h * grad[i];
            x[i] += 0.5 * dt * v[i];
            v[i] = c1 * v[i] + c2 * rng.sample::<f64, _>(StandardNormal);
            x[i] += 0.5 * dt * v[i];
        }
        *energy = pot.energy_grad(x, grad);
        for i in 0..x.len() {
            v[i] -= h * grad[i];
        }
    }
}

/// Runs `n_samples × stride` steps and returns the positions after every `stride` steps
/// (row-major, `n_samples × dim`).
pub fn trajectory(
    pot: &dyn Potential,
    lang: &Langevin,
    state: &mut MdState,
    n_samples: usize,
    stride: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(n_samples * state.x.len());
    for _ in 0..n_samples {
        baoab(pot, lang, state, stride, rng);
        out.extend_from_slice(&state.x);
    }
    out
}
