//! Helpers shared by the integration tests.
#![allow(dead_code)]

use burn::module::Param;
use burn::prelude::*;
use diffusion::model::Denoiser;
use diffusion::{ModelConfig, NoiseSchedule, UNetConfig};
use foundation::tap::Tap;

/// A tiny U-Net config for fast tests (8x8 images, 2 levels of 8/16 channels).
pub fn tiny_unet() -> ModelConfig {
    ModelConfig::Unet(UNetConfig {
        height: 8,
        width: 8,
        channels: vec![8, 16],
        groups: 4,
        ..UNetConfig::default()
    })
}

/// The exact epsilon predictor for data x0 ~ N(m, s^2 I):
/// `E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) m) / (ab s^2 + 1 - ab)`.
#[derive(Module, Debug)]
pub struct GaussianOptimal {
    pub alpha_bar: Param<Tensor<1>>,
    pub m: f64,
    pub s2: f64,
    pub dim: usize,
}

impl GaussianOptimal {
    pub fn new(schedule: &NoiseSchedule, m: f64, s: f64, dim: usize, device: &Device) -> Self {
        let ab: Vec<f32> = schedule.alpha_bar.iter().map(|&v| v as f32).collect();
        Self { alpha_bar: Param::from_tensor(Tensor::from_floats(ab.as_slice(), device)), m, s2: s * s, dim }
    }
}

impl Denoiser for GaussianOptimal {
    fn data_dim(&self) -> usize {
        self.dim
    }
    fn forward_tapped(&self, x: Tensor<2>, t: Tensor<1>, _tap: &mut Tap) -> Tensor<2> {
        let n = x.dims()[0];
        let ab = self.alpha_bar.val().select(0, t.int()).reshape([n, 1]);
        let num = (x - ab.clone().sqrt().mul_scalar(self.m)) * (ab.clone().neg() + 1.0).sqrt();
        num / (ab.clone().mul_scalar(self.s2) - ab + 1.0)
    }
}
