//! The denoiser interface shared by all networks, and the MLP denoiser for toy data.

use burn::prelude::*;
use burn::tensor::activation::silu;
use foundation::rng::{stream_for, Purpose};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::unet::{timestep_embedding, UNet, UNetConfig};
use foundation::layers::TapLinear;
use foundation::tap::Tap;

/// A network `f(x_t, t)` on flattened data `[N, D]` with float timesteps `[N]`.
/// What it predicts (epsilon or x0) is decided by the [`Parametrisation`](crate::Parametrisation).
pub trait Denoiser: Module + Clone + core::fmt::Debug + Send {
    /// D, the flattened data dimension.
    fn data_dim(&self) -> usize;

    /// Forward pass that reports every Linear/Conv2d call to `tap`.
    fn forward_tapped(&self, x: Tensor<2>, t: Tensor<1>, tap: &mut Tap) -> Tensor<2>;

    /// Plain forward pass.
    fn forward(&self, x: Tensor<2>, t: Tensor<1>) -> Tensor<2> {
        self.forward_tapped(x, t, &mut Tap::off())
    }

    /// Whether a training forward pass draws random numbers (dropout). A training step of such a
    /// model runs in one pass with the step's seeded dropout stream installed
    /// ([`foundation::layers::with_dropout_stream`]), whatever the microbatch setting.
    fn draws_randomness(&self) -> bool {
        false
    }
}

/// MLP denoiser hyper-parameters (for 1-D/2-D toy data and fast ablations).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Data dimension D.
    pub data_dim: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Number of hidden layers (each FiLM-conditioned on time).
    pub layers: usize,
    /// Sinusoidal time-embedding dimension.
    pub time_dim: usize,
}

impl MlpConfig {
    /// Build the network with weights from the seed-0 initialisation stream (for a model whose
    /// weights are loaded afterwards, or a fixed test model); see [`MlpConfig::init_with`].
    pub fn init(&self, device: &Device) -> Mlp {
        self.init_with(&mut stream_for(0, Purpose::Init, 0), device)
    }

    /// Build the network with weights drawn from `rng` (layers in declaration order).
    pub fn init_with(&self, rng: &mut impl Rng, device: &Device) -> Mlp {
        Mlp {
            time_in: TapLinear::new(self.time_dim, self.hidden, rng, device),
            input: TapLinear::new(self.data_dim, self.hidden, rng, device),
            hidden: (0..self.layers).map(|_| TapLinear::new(self.hidden, self.hidden, rng, device)).collect(),
            film: (0..self.layers)
                .map(|_| TapLinear::new(self.hidden, 2 * self.hidden, rng, device))
                .collect(),
            output: TapLinear::new(self.hidden, self.data_dim, rng, device),
            time_dim: self.time_dim,
            data_dim: self.data_dim,
        }
    }
}

/// MLP denoiser: `h = W_in x`; per layer `h = W_l SiLU(FiLM_l(t) ⊙ h)`; `out = W_out SiLU(h)`.
#[derive(Module, Debug)]
pub struct Mlp {
    time_in: TapLinear,
    input: TapLinear,
    hidden: Vec<TapLinear>,
    film: Vec<TapLinear>,
    output: TapLinear,
    time_dim: usize,
    data_dim: usize,
}

impl Denoiser for Mlp {
    fn data_dim(&self) -> usize {
        self.data_dim
    }

    fn forward_tapped(&self, x: Tensor<2>, t: Tensor<1>, tap: &mut Tap) -> Tensor<2> {
        let temb = silu(self.time_in.forward(timestep_embedding(t, self.time_dim), tap));
        let mut h = self.input.forward(x, tap);
        for (lin, film) in self.hidden.iter().zip(&self.film) {
            let ss = film.forward(temb.clone(), tap);
            let d = h.dims()[1];
            let scale = ss.clone().narrow(1, 0, d);
            let shift = ss.narrow(1, d, d);
            h = lin.forward(silu(h * (scale + 1.0) + shift), tap);
        }
        self.output.forward(silu(h), tap)
    }
}

/// Which network a run uses; serialised into checkpoints and configs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ModelConfig {
    /// Convolutional U-Net for images.
    Unet(UNetConfig),
    /// MLP for vectors.
    Mlp(MlpConfig),
}

impl ModelConfig {
    /// Flattened data dimension D.
    pub fn data_dim(&self) -> usize {
        match self {
            ModelConfig::Unet(c) => c.image_channels * c.height * c.width,
            ModelConfig::Mlp(c) => c.data_dim,
        }
    }

    /// Build the network with weights from the seed-0 initialisation stream (for a model whose
    /// weights are loaded afterwards, or a fixed test model); see [`ModelConfig::init_with`].
    pub fn init(&self, device: &Device) -> AnyDenoiser {
        self.init_with(&mut stream_for(0, Purpose::Init, 0), device)
    }

    /// Build the network with weights drawn from `rng` (training draws it from
    /// `stream_for(seed, Purpose::Init, 0)`).
    pub fn init_with(&self, rng: &mut impl Rng, device: &Device) -> AnyDenoiser {
        match self {
            ModelConfig::Unet(c) => AnyDenoiser::Unet(c.init_with(rng, device)),
            ModelConfig::Mlp(c) => AnyDenoiser::Mlp(c.init_with(rng, device)),
        }
    }
}

/// Either network, so binaries can pick one at run time.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum AnyDenoiser {
    /// U-Net.
    Unet(UNet),
    /// MLP.
    Mlp(Mlp),
}

impl Denoiser for AnyDenoiser {
    fn data_dim(&self) -> usize {
        match self {
            AnyDenoiser::Unet(m) => m.data_dim(),
            AnyDenoiser::Mlp(m) => m.data_dim(),
        }
    }

    fn forward_tapped(&self, x: Tensor<2>, t: Tensor<1>, tap: &mut Tap) -> Tensor<2> {
        match self {
            AnyDenoiser::Unet(m) => m.forward_tapped(x, t, tap),
            AnyDenoiser::Mlp(m) => m.forward_tapped(x, t, tap),
        }
    }

    fn draws_randomness(&self) -> bool {
        match self {
            AnyDenoiser::Unet(m) => m.draws_randomness(),
            AnyDenoiser::Mlp(m) => m.draws_randomness(),
        }
    }
}
