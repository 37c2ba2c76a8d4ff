//! Negative ELBO in bits per dimension: the discrete-time DDPM bound on uniformly dequantised
//! 8-bit data.
//!
//! For 8-bit data `x` and `z = 2 (x + u) / 256 - 1`, `u ~ U[0,1)^D`, Jensen gives
//! `-log2 P(x) / D <= -E_u[log p(z)] / (D ln 2) + 7`, and `-log p(z)` is bounded by
//! `L_T + sum_{t=1}^{T-1} L_t + L_0` with `L_T = KL(q(x_T|z) || N(0, I))` (exact),
//! `L_t = KL(q(x_{t-1}|x_t, z) || p(x_{t-1}|x_t))` (estimated from `t_samples` stratified
//! timesteps per image) and the Gaussian decoder term `L_0 = -log N(z; x0_hat(x_0), beta_0 I)`.

use burn::prelude::*;
use foundation::progress::Progress;
use rand::Rng;

use crate::diffusion::Diffusion;
use crate::model::Denoiser;
use crate::sample::ReverseVariance;
use foundation::rng::{normals, stream_for, Purpose};

/// Per-image upper bounds on bits/dim of 8-bit images given in [-1, 1] (`rows`: `[n, D]`):
/// uniform dequantisation, then [`negative_elbo_nats`], then `/ (D ln 2) + 7`.
#[allow(clippy::too_many_arguments)]
pub fn elbo_bits_per_dim<M: Denoiser>(
    model: &M,
    diffusion: &Diffusion,
    rows: &[f32],
    n: usize,
    variance: ReverseVariance,
    t_samples: usize,
    batch_size: usize,
    seed: u64,
    device: &Device,
    progress: Option<&dyn Progress>,
) -> Vec<f64> {
    let d = model.data_dim();
    let mut rng = stream_for(seed, Purpose::Elbo, u64::MAX);
    let z: Vec<f32> = rows[..n * d]
        .iter()
        .map(|&v| {
            let level = ((v + 1.0) * 0.5 * 255.0).round().clamp(0.0, 255.0);
            2.0 * (level + rng.gen::<f32>()) / 256.0 - 1.0
        })
        .collect();
    negative_elbo_nats(model, diffusion, &z, n, variance, t_samples, batch_size, seed, device, progress)
        .into_iter()
        .map(|v| v / (d as f64 * std::f64::consts::LN_2) + 7.0)
        .collect()
}

/// Per-row negative ELBO in nats of continuous data `z` (`[n, D]`): an upper bound on
/// `-log p(z)` under the model's reverse chain with Gaussian decoder variance `beta_0`.
#[allow(clippy::too_many_arguments)]
pub fn negative_elbo_nats<M: Denoiser>(
    model: &M,
    diffusion: &Diffusion,
    z: &[f32],
    n: usize,
    variance: ReverseVariance,
    t_samples: usize,
    batch_size: usize,
    seed: u64,
    device: &Device,
    progress: Option<&dyn Progress>,
) -> Vec<f64> {
    let d = model.data_dim();
    let s = &diffusion.schedule;
    let big_t = s.steps();
    let k = t_samples.clamp(1, big_t - 1);
    let mut out = Vec::with_capacity(n);
    if let Some(pb) = progress {
        pb.start("elbo", n as u64);
    }
    let per_row_sq = |t: Tensor<2>| -> Vec<f64> {
        t.square()
            .sum_dim(1)
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32")
            .into_iter()
            .map(f64::from)
            .collect()
    };
    for start in (0..n).step_by(batch_size.max(1)) {
        let b = batch_size.min(n - start);
        let mut rng = stream_for(seed, Purpose::Elbo, start as u64);
        let z_t =
            Tensor::<2>::from_data(TensorData::new(z[start * d..(start + b) * d].to_vec(), [b, d]), device);
        let z_sq = per_row_sq(z_t.clone());
        // Prior term L_T, exact.
        let ab_t = s.alpha_bar[big_t - 1];
        let mut nll: Vec<f64> = z_sq
            .iter()
            .map(|&zz| 0.5 * (ab_t * zz + d as f64 * ((1.0 - ab_t) - 1.0 - (1.0 - ab_t).ln())))
            .collect();
        // Decoder term L_0 at t = 0 with variance beta_0.
        let eps = Tensor::<2>::from_data(TensorData::new(normals(&mut rng, b * d), [b, d]), device);
        let t0 = vec![0usize; b];
        let x1 = diffusion.q_sample(z_t.clone(), &t0, eps);
        let err0 = per_row_sq(diffusion.predict_x0(model, x1, &t0) - z_t.clone());
        let var0 = s.beta[0];
        for (acc, e) in nll.iter_mut().zip(&err0) {
            *acc += 0.5 * d as f64 * (2.0 * std::f64::consts::PI * var0).ln() + e / (2.0 * var0);
        }
        // KL terms for t = 1..T-1, stratified over k strata.
        let scale = (big_t - 1) as f64 / k as f64;
        for stratum in 0..k {
            let t: Vec<usize> = (0..b)
                .map(|_| {
                    let u: f64 = rng.gen();
                    (1 + (((stratum as f64 + u) * (big_t - 1) as f64 / k as f64) as usize)).min(big_t - 1)
                })
                .collect();
            let eps = Tensor::<2>::from_data(TensorData::new(normals(&mut rng, b * d), [b, d]), device);
            let xt = diffusion.q_sample(z_t.clone(), &t, eps);
            let err = per_row_sq(diffusion.predict_x0(model, xt, &t) - z_t.clone());
            for (i, acc) in nll.iter_mut().enumerate() {
                let ti = t[i];
                let var = match variance {
                    ReverseVariance::Beta => s.beta[ti],
                    ReverseVariance::BetaTilde => s.beta_tilde[ti],
                };
                let ratio = s.beta_tilde[ti] / var;
                let c0 = s.posterior_coef_x0[ti];
                let kl = c0 * c0 * err[i] / (2.0 * var) + 0.5 * d as f64 * (ratio - 1.0 - ratio.ln());
                *acc += scale * kl;
            }
        }
        out.extend(nll);
        if let Some(pb) = progress {
            pb.advance(b as u64);
        }
    }
    out
}
