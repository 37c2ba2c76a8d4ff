//! The forward process, parametrisations and training losses, on flattened tensors `[N, D]`.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::model::Denoiser;
use crate::schedule::{NoiseSchedule, ScheduleConfig};
use foundation::tap::Tap;

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

    /// The per-t weight `w_t` of the training loss: 1 for [`LossWeighting::Simple`], the ELBO
    /// weight normalised to mean 1 over t for [`LossWeighting::Elbo`].
    pub fn loss_weight(&self, t: usize) -> f64 {
        self.loss_weight[t]
    }

    /// The per-row loss weights `[N]` of timesteps `t`, or `None` when every weight is 1
    /// ([`LossWeighting::Simple`]), so that unweighted losses skip the multiplication.
    pub fn loss_weights(&self, t: &[usize], device: &Device) -> Option<Tensor<1>> {
        match self.config.weighting {
            LossWeighting::Simple => None,
            LossWeighting::Elbo => Some(self.coef(&self.loss_weight, t, device).reshape([t.len()])),
        }
    }

    /// The network's regression target for the draw `(x0, eps)`: `eps` for
    /// [`Parametrisation::Epsilon`], `x0` for [`Parametrisation::X0`].
    pub fn target(&self, x0: Tensor<2>, eps: Tensor<2>) -> Tensor<2> {
        match self.config.parametrisation {
            Parametrisation::Epsilon => eps,
            Parametrisation::X0 => x0,
        }
    }

    /// Noise `x0` to `x_t` with `eps` and run the network on it: returns `(x_t, output)`, where
    /// the output is whatever the network predicts (see [`Parametrisation`]). Layer calls are
    /// reported to `tap`.
    pub fn forward_draw<M: Denoiser>(
        &self,
        model: &M,
        x0: Tensor<2>,
        t: &[usize],
        eps: Tensor<2>,
        tap: &mut Tap,
    ) -> (Tensor<2>, Tensor<2>) {
        let device = x0.device();
        let xt = self.q_sample(x0, t, eps);
        let out = model.forward_tapped(xt.clone(), Self::t_tensor(t, &device), tap);
        (xt, out)
    }

    /// The epsilon prediction implied by a network output at `(x_t, t)`.
    pub fn eps_from_output(&self, out: Tensor<2>, xt: Tensor<2>, t: &[usize]) -> Tensor<2> {
        match self.config.parametrisation {
            Parametrisation::Epsilon => out,
            Parametrisation::X0 => self.eps_from_x0(xt, out, t),
        }
    }

    /// The x0 prediction implied by a network output at `(x_t, t)`.
    pub fn x0_from_output(&self, out: Tensor<2>, xt: Tensor<2>, t: &[usize]) -> Tensor<2> {
        match self.config.parametrisation {
            Parametrisation::Epsilon => self.x0_from_eps(xt, out, t),
            Parametrisation::X0 => out,
        }
    }

    /// The network's epsilon prediction, whatever its parametrisation.
    pub fn predict_eps<M: Denoiser>(&self, model: &M, xt: Tensor<2>, t: &[usize]) -> Tensor<2> {
        let out = model.forward(xt.clone(), Self::t_tensor(t, &xt.device()));
        self.eps_from_output(out, xt, t)
    }

    /// The network's x0 prediction, whatever its parametrisation.
    pub fn predict_x0<M: Denoiser>(&self, model: &M, xt: Tensor<2>, t: &[usize]) -> Tensor<2> {
        let out = model.forward(xt.clone(), Self::t_tensor(t, &xt.device()));
        self.x0_from_output(out, xt, t)
    }

    /// The per-example training loss `[N]` of network outputs `out` (`[N, D]`) for the draw
    /// `(x0, t, eps)`: `w_t (1/D) ||out - target||^2` with the target of [`Diffusion::target`]
    /// and the weight of [`Diffusion::loss_weight`]. This is the one definition of the training
    /// loss; [`Diffusion::per_example_loss`] runs the network and calls it.
    pub fn per_example_loss_from_output(
        &self,
        out: Tensor<2>,
        x0: Tensor<2>,
        t: &[usize],
        eps: Tensor<2>,
    ) -> Tensor<1> {
        let n = t.len();
        let device = out.device();
        let mse = (out - self.target(x0, eps)).square().mean_dim(1).reshape([n]);
        match self.loss_weights(t, &device) {
            None => mse,
            Some(w) => mse * w,
        }
    }

    /// Per-example training loss `[N]`: the weighted per-pixel mean squared error of the network's
    /// target, for the given timesteps and noise (see [`Diffusion::per_example_loss_from_output`]).
    /// Layer calls are reported to `tap`.
    pub fn per_example_loss<M: Denoiser>(
        &self,
        model: &M,
        x0: Tensor<2>,
        t: &[usize],
        eps: Tensor<2>,
        tap: &mut Tap,
    ) -> Tensor<1> {
        let (_, out) = self.forward_draw(model, x0.clone(), t, eps.clone(), tap);
        self.per_example_loss_from_output(out, x0, t, eps)
    }

    /// The per-pixel epsilon error `(1/D) ||eps_hat - eps||^2` `[N]` of network outputs `out` at
    /// `(x_t, t)`, whatever the parametrisation (an x0 output is converted to epsilon exactly).
    pub fn eps_error_from_output(
        &self,
        out: Tensor<2>,
        xt: Tensor<2>,
        t: &[usize],
        eps: Tensor<2>,
    ) -> Tensor<1> {
        let n = t.len();
        (self.eps_from_output(out, xt, t) - eps).square().mean_dim(1).reshape([n])
    }

    /// The "simplified ELBO" `[N]` of network outputs `out` at `(x_t, t)`: the epsilon error of
    /// [`Diffusion::eps_error_from_output`] weighted by [`NoiseSchedule::elbo_weight`] (not
    /// normalised), the ELBO's KL term at t with reverse variance beta_t.
    pub fn simplified_elbo_from_output(
        &self,
        out: Tensor<2>,
        xt: Tensor<2>,
        t: &[usize],
        eps: Tensor<2>,
    ) -> Tensor<1> {
        let w: Vec<f32> = t.iter().map(|&ti| self.schedule.elbo_weight(ti) as f32).collect();
        let w = Tensor::<1>::from_floats(w.as_slice(), &out.device());
        self.eps_error_from_output(out, xt, t, eps) * w
    }

    /// The squared norm `(1/D) ||eps_hat||^2` `[N]` of the epsilon prediction implied by network
    /// outputs `out` at `(x_t, t)` (D-TRAK's output function).
    pub fn eps_square_norm_from_output(&self, out: Tensor<2>, xt: Tensor<2>, t: &[usize]) -> Tensor<1> {
        let n = t.len();
        self.eps_from_output(out, xt, t).square().mean_dim(1).reshape([n])
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
