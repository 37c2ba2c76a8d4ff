//! Noise schedules and every quantity derived from them, precomputed once in f64.
//!
//! Conventions (Ho et al. 2020, zero-based timestep index `t = 0..T-1`):
//! - `beta[t]` is the variance added at step `t`, `alpha[t] = 1 - beta[t]`;
//! - `alpha_bar[t] = prod_{s <= t} alpha[s]`, so `q(x_t | x_0) = N(sqrt(alpha_bar[t]) x_0, (1 - alpha_bar[t]) I)`;
//! - the posterior `q(x_{t-1} | x_t, x_0) = N(c0[t] x_0 + ct[t] x_t, beta_tilde[t] I)` for `t >= 1`;
//!   at `t = 0` the "previous" state is the data itself, so `beta_tilde[0] = 0`.

use serde::{Deserialize, Serialize};

/// Which beta schedule to use.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Linear betas from `beta_start` to `beta_end` (Ho et al.: 1e-4 to 0.02, T = 1000).
    Linear,
    /// Cosine alpha-bar schedule (Nichol & Dhariwal 2021), betas clipped at 0.999.
    Cosine,
}

/// Schedule hyper-parameters; `NoiseSchedule::new` derives everything else.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleConfig {
    /// Schedule family.
    pub kind: ScheduleKind,
    /// Number of diffusion steps T.
    pub steps: usize,
    /// First beta (linear schedule only).
    pub beta_start: f64,
    /// Last beta (linear schedule only).
    pub beta_end: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self { kind: ScheduleKind::Linear, steps: 1000, beta_start: 1e-4, beta_end: 0.02 }
    }
}

/// A noise schedule with all derived quantities precomputed.
#[derive(Clone, Debug)]
pub struct NoiseSchedule {
    /// The configuration this schedule was built from.
    pub config: ScheduleConfig,
    /// beta_t.
    pub beta: Vec<f64>,
    /// alpha_t = 1 - beta_t.
    pub alpha: Vec<f64>,
    /// alpha_bar_t = prod_{s<=t} alpha_s.
    pub alpha_bar: Vec<f64>,
    /// alpha_bar_{t-1}, with alpha_bar_{-1} = 1.
    pub alpha_bar_prev: Vec<f64>,
    /// sqrt(alpha_bar_t): the signal scale of x_t.
    pub sqrt_alpha_bar: Vec<f64>,
    /// sqrt(1 - alpha_bar_t): the noise scale of x_t.
    pub sqrt_one_minus_alpha_bar: Vec<f64>,
    /// Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t).
    pub snr: Vec<f64>,
    /// Posterior variance beta_tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t).
    pub beta_tilde: Vec<f64>,
    /// Posterior mean coefficient on x_0.
    pub posterior_coef_x0: Vec<f64>,
    /// Posterior mean coefficient on x_t.
    pub posterior_coef_xt: Vec<f64>,
}

impl NoiseSchedule {
    /// Build a schedule and precompute all derived quantities.
    pub fn new(config: ScheduleConfig) -> Self {
        let n = config.steps;
        let beta: Vec<f64> = match config.kind {
            ScheduleKind::Linear => (0..n)
                .map(|i| {
                    let f = if n > 1 { i as f64 / (n - 1) as f64 } else { 0.0 };
                    config.beta_start + f * (config.beta_end - config.beta_start)
                })
                .collect(),
            ScheduleKind::Cosine => {
                let s = 0.008;
                let f = |t: f64| ((t / n as f64 + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2).cos().powi(2);
                (0..n).map(|i| (1.0 - f(i as f64 + 1.0) / f(i as f64)).min(0.999)).collect()
            }
        };
        let alpha: Vec<f64> = beta.iter().map(|b| 1.0 - b).collect();
        let mut alpha_bar = Vec::with_capacity(n);
        let mut acc = 1.0;
        for a in &alpha {
            acc *= a;
            alpha_bar.push(acc);
        }
        let alpha_bar_prev: Vec<f64> = (0..n).map(|i| if i == 0 { 1.0 } else { alpha_bar[i - 1] }).collect();
        let sqrt_alpha_bar = alpha_bar.iter().map(|a| a.sqrt()).collect();
        let sqrt_one_minus_alpha_bar = alpha_bar.iter().map(|a| (1.0 - a).sqrt()).collect();
        let snr = alpha_bar.iter().map(|a| a / (1.0 - a)).collect();
        let beta_tilde = (0..n).map(|i| beta[i] * (1.0 - alpha_bar_prev[i]) / (1.0 - alpha_bar[i])).collect();
        let posterior_coef_x0 =
            (0..n).map(|i| beta[i] * alpha_bar_prev[i].sqrt() / (1.0 - alpha_bar[i])).collect();
        let posterior_coef_xt =
            (0..n).map(|i| (1.0 - alpha_bar_prev[i]) * alpha[i].sqrt() / (1.0 - alpha_bar[i])).collect();
        Self {
            config,
            beta,
            alpha,
            alpha_bar,
            alpha_bar_prev,
            sqrt_alpha_bar,
            sqrt_one_minus_alpha_bar,
            snr,
            beta_tilde,
            posterior_coef_x0,
            posterior_coef_xt,
        }
    }

    /// Number of diffusion steps T.
    pub fn steps(&self) -> usize {
        self.beta.len()
    }

    /// Weight that turns the per-pixel epsilon MSE at step `t` into the ELBO's KL term
    /// (with reverse variance beta_t): `beta_t / (2 alpha_t (1 - alpha_bar_t))`.
    /// This is the "simplified ELBO" weight of the influence paper (spec p1 §1.3).
    pub fn elbo_weight(&self, t: usize) -> f64 {
        self.beta[t] / (2.0 * self.alpha[t] * (1.0 - self.alpha_bar[t]))
    }
}
