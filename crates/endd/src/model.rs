//! The classifiers: an MLP (the spiral) and a small CNN (MNIST), one [`Net`] type for both, so the
//! ensemble members and the students share the code and a student has its teacher's
//! architecture.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use foundation::layers::kaiming_uniform;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The architecture of a classifier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Arch {
    /// `input_dim → hidden… → classes` with ReLU, inputs multiplied by `input_scale` first.
    Mlp {
        /// Input features.
        input_dim: usize,
        /// Widths of the hidden layers.
        hidden: Vec<usize>,
        /// Output classes.
        classes: usize,
        /// Fixed scale applied to the inputs.
        input_scale: f64,
    },
    /// `side × side` one-channel images: 3×3 stride-2 convolutions with ReLU (channels
    /// `channels`), flattened, one hidden ReLU layer of `hidden`, then `classes` logits.
    Cnn {
        /// Image side (pixels).
        side: usize,
        /// Channels of each convolution.
        channels: Vec<usize>,
        /// Width of the hidden dense layer.
        hidden: usize,
        /// Output classes.
        classes: usize,
    },
}

impl Arch {
    /// Number of input features of one example.
    pub fn input_dim(&self) -> usize {
        match self {
            Arch::Mlp { input_dim, .. } => *input_dim,
            Arch::Cnn { side, .. } => side * side,
        }
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        match self {
            Arch::Mlp { classes, .. } | Arch::Cnn { classes, .. } => *classes,
        }
    }

    /// A network with weights drawn from `rng` (uniform on ±1/sqrt(fan_in), layer by layer,
    /// weight then bias).
    pub fn init_with(&self, rng: &mut impl Rng, device: &Device) -> Net {
        match self {
            Arch::Mlp { input_dim, hidden, classes, input_scale } => {
                let mut dims = vec![*input_dim];
                dims.extend(hidden);
                dims.push(*classes);
                let linears = dims.windows(2).map(|w| dense(w[0], w[1], rng, device)).collect();
                Net { convs: Vec::new(), linears, side: 0, input_scale: *input_scale }
            }
            Arch::Cnn { side, channels, hidden, classes } => {
                let mut convs = Vec::new();
                let (mut cin, mut s) = (1usize, *side);
                for &cout in channels {
                    let mut c = Conv2dConfig::new([cin, cout], [3, 3])
                        .with_stride([2, 2])
                        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                        .with_initializer(Initializer::Zeros)
                        .init(device);
                    c.weight = kaiming_uniform([cout, cin, 3, 3], cin * 9, rng, device);
                    c.bias = Some(kaiming_uniform([cout], cin * 9, rng, device));
                    convs.push(c);
                    cin = cout;
                    s = s.div_ceil(2);
                }
                let flat = cin * s * s;
                let l1 = dense(flat, *hidden, rng, device);
                let l2 = dense(*hidden, *classes, rng, device);
                Net { convs, linears: vec![l1, l2], side: *side, input_scale: 1.0 }
            }
        }
    }
}

/// A dense layer with burn's default distribution drawn from `rng` (weight, then bias).
fn dense(d_in: usize, d_out: usize, rng: &mut impl Rng, device: &Device) -> Linear {
    let mut l = LinearConfig::new(d_in, d_out).with_initializer(Initializer::Zeros).init(device);
    l.weight = kaiming_uniform([d_in, d_out], d_in, rng, device);
    l.bias = Some(kaiming_uniform([d_out], d_in, rng, device));
    l
}

/// A classifier: optional stride-2 convolutions, then dense layers with ReLU between them.
#[derive(Module, Debug)]
pub struct Net {
    /// Convolutions (empty for an MLP).
    pub convs: Vec<Conv2d>,
    /// Dense layers (weights `[d_in, d_out]`).
    pub linears: Vec<Linear>,
    /// Image side when there are convolutions.
    pub side: usize,
    /// Fixed scale applied to the inputs.
    pub input_scale: f64,
}

impl Net {
    /// The device its weights are on (every network has at least one dense layer).
    pub fn device(&self) -> Device {
        self.linears[0].weight.device()
    }

    /// Logits `[N, classes]` of inputs `[N, input_dim]` (images flattened row-major).
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = if self.input_scale == 1.0 { x } else { x.mul_scalar(self.input_scale) };
        let mut h = if self.convs.is_empty() {
            x
        } else {
            let n = x.dims()[0];
            let mut img: Tensor<4> = x.reshape([n, 1, self.side, self.side]);
            for c in &self.convs {
                img = relu(c.forward(img));
            }
            img.flatten(1, 3)
        };
        let last = self.linears.len() - 1;
        for (i, l) in self.linears.iter().enumerate() {
            h = l.forward(h);
            if i < last {
                h = relu(h);
            }
        }
        h
    }
}
