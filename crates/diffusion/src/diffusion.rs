//! The forward process, parametrisations and training losses, on flattened tensors `[N, D]`.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::model::Denoiser;
use crate::schedule::{NoiseSchedule, ScheduleConfig};
use crate::tap::Tap;

/// What the network predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Parametrisation {
    /// The added noise epsilon (Ho et al.; the default).
    Epsilon,
    /// The clean data x0.
    X0,
}

/// How the per-timestep squared errors are weighted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum LossWeighting {
    /// L_simple: unweighted per-pixel mean squared error of the network's own target
    /// (epsilon-MSE for epsilon, x0-MSE for x0), uniform t, as in the reference code.
    Simple,
    /// ELBO weighting: each t weighted so the loss is proportional to the discrete-time ELBO's
    /// KL term, `w_t ||eps - eps_hat||^2` with `w_t = beta_t / (2 alpha_t (1 - alpha_bar_t))`
    /// (for x0 the error is converted with SNR_t). Weights are normalised to mean 1 over t so the
    /// learning rate means the same as for `Simple`.
    Elbo,
}

/// Everything that defines the diffusion process and objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiffusionConfig {
    /// Noise schedule.
    pub schedule: ScheduleConfig,
    /// Network output.
    pub parametrisation: Parametrisation,
    /// Loss weighting over t.
    pub weighting: LossWeighting,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        Self {
            schedule: ScheduleConfig::default(),
            parametrisation: Parametrisation::Epsilon,
            weighting: LossWeighting::Simple,
        }
    }
}

/// A diffusion process with its precomputed schedule.
#[derive(Clone, Debug)]
pub struct Diffusion {
    /// The configuration.
    pub config: DiffusionConfig,
    /// Precomputed schedule quantities.
    pub schedule: NoiseSchedule,
    /// Per-t loss weights (all 1 for `Simple`).
    loss_weight: Vec<f64>,
}

impl Diffusion {
    /// Build from a configuration.
    pub fn new(config: DiffusionConfig) -> Self {
        let schedule = NoiseSchedule::new(config.schedule.clone());
        let steps = schedule.steps();
        let loss_weight = match config.weighting {
            LossWeighting::Simple => vec![1.0; steps],
            LossWeighting::Elbo => {
                let raw: Vec<f64> = (0..steps)
                    .map(|t| {
                        let w = schedule.elbo_weight(t);
                        match config.parametrisation {
                            Parametrisation::Epsilon => w,
                            Parametrisation::X0 => w * schedule.snr[t],
                        }
                    })
                    .collect();
                let mean = raw.iter().sum::<f64>() / steps as f64;
                raw.into_iter().map(|w| w / mean).collect()
            }
        };
        Self { config, schedule, loss_weight }
    }

    /// Number of diffusion steps T.
    pub fn steps(&self) -> usize {
        self.schedule.steps()
    }

    /// A per-row coefficient column `[N, 1]` gathered from a schedule vector.
    pub fn coef(&self, values: &[f64], t: &[usize], device: &Device) -> Tensor<2> {
        let v: Vec<f32> = t.iter().map(|&i| values[i] as f32).collect();
        Tensor::<1>::from_floats(v.as_slice(), device).reshape([t.len(), 1])
    }

    /// Timesteps as the float tensor the networks take.
    pub fn t_tensor(t: &[usize], device: &Device) -> Tensor<1> {
        let v: Vec<f32> = t.iter().map(|&i| i as f32).collect();
        Tensor::<1>::from_floats(v.as_slice(), device)
    }

    /// Draw from q(x_t | x_0): `sqrt(ab_t) x0 + sqrt(1 - ab_t) eps`.
    pub fn q_sample(&self, x0: Tensor<2>, t: &[usize], eps: Tensor<2>) -> Tensor<2> {
        let d = x0.device();
        x0 * self.coef(&self.schedule.sqrt_alpha_bar, t, &d)
            + eps * self.coef(&self.schedule.sqrt_one_minus_alpha_bar, t, &d)
    }

    /// Exact conversion of an x0 prediction to the implied epsilon at (x_t, t).
    pub fn eps_from_x0(&self, xt: Tensor<2>, x0: Tensor<2>, t: &[usize]) -> Tensor<2> {
        let d = xt.device();
        (xt - x0 * self.coef(&self.schedule.sqrt_alpha_bar, t, &d))
            / self.coef(&self.schedule.sqrt_one_minus_alpha_bar, t, &d)
    }

    /// Exact conversion of an epsilon prediction to the implied x0 at (x_t, t).
    pub fn x0_from_eps(&self, xt: Tensor<2>, eps: Tensor<2>, t: &[usize]) -> Tensor<2> {
        let d = xt.device();
        (xt - eps * self.coef(&self.schedule.sqrt_one_minus_alpha_bar, t, &d))
            / self.coef(&self.schedule.sqrt_alpha_bar, t, &d)
    }

    /// The network's epsilon prediction, whatever its parametrisation.
    pub fn predict_eps<M: Denoiser>(&self, model: &M, xt: Tensor<2>, t: &[usize]) -> Tensor<2> {
        let out = model.forward(xt.clone(), Self::t_tensor(t, &xt.device()));
        match self.config.parametrisation {
            Parametrisation::Epsilon => out,
            Parametrisation::X0 => self.eps_from_x0(xt, out, t),
        }
    }

    /// The network's x0 prediction, whatever its parametrisation.
    pub fn predict_x0<M: Denoiser>(&self, model: &M, xt: Tensor<2>, t: &[usize]) -> Tensor<2> {
        let out = model.forward(xt.clone(), Self::t_tensor(t, &xt.device()));
        match self.config.parametrisation {
            Parametrisation::Epsilon => self.x0_from_eps(xt, out, t),
            Parametrisation::X0 => out,
        }
    }

    /// Per-example training loss `[N]`: the weighted per-pixel mean squared error of the network's
    /// target, for the given timesteps and noise. Layer calls are reported to `tap`.
    pub fn per_example_loss<M: Denoiser>(
        &self,
        model: &M,
        x0: Tensor<2>,
        t: &[usize],
        eps: Tensor<2>,
        tap: &mut Tap,
    ) -> Tensor<1> {
        let device = x0.device();
        let n = t.len();
        let xt = self.q_sample(x0.clone(), t, eps.clone());
        let out = model.forward_tapped(xt, Self::t_tensor(t, &device), tap);
        let target = match self.config.parametrisation {
            Parametrisation::Epsilon => eps,
            Parametrisation::X0 => x0,
        };
        let mse = (out - target).square().mean_dim(1).reshape([n]);
        match self.config.weighting {
            LossWeighting::Simple => mse,
            LossWeighting::Elbo => mse * self.coef(&self.loss_weight, t, &device).reshape([n]),
        }
    }

    /// Batch-mean training loss (a scalar tensor of shape `[1]`).
    pub fn loss<M: Denoiser>(
        &self,
        model: &M,
        x0: Tensor<2>,
        t: &[usize],
        eps: Tensor<2>,
        tap: &mut Tap,
    ) -> Tensor<1> {
        self.per_example_loss(model, x0, t, eps, tap).mean()
    }
}
