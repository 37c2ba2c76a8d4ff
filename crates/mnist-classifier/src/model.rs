//! The network and its architecture settings.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use foundation::layers::{kaiming_uniform, Dropout};
use foundation::tap::{LayerKind, Tap};
use rand::Rng;

use crate::{CLASSIFIER_SIDE, NUM_CLASSES};

/// Architecture hyper-parameters of [`MnistClassifier`].
#[derive(Config, Debug)]
pub struct MnistClassifierConfig {
    /// Channels of the two 28×28 convolutions.
    #[config(default = 32)]
    pub channels_1: usize,
    /// Channels of the two 14×14 convolutions.
    #[config(default = 64)]
    pub channels_2: usize,
    /// Width of the penultimate (feature) layer.
    #[config(default = 128)]
    pub feature_dim: usize,
    /// Dropout probability applied to the features during training.
    #[config(default = 0.3)]
    pub dropout: f64,
}

impl MnistClassifierConfig {
    /// Builds a classifier on `device` with weights drawn from `rng` (burn's default
    /// distributions: uniform on ±1/sqrt(fan_in), layer by layer, weight then bias).
    pub fn init_with(&self, rng: &mut impl Rng, device: &Device) -> MnistClassifier {
        let mut conv = |cin: usize, cout: usize| {
            let mut c = Conv2dConfig::new([cin, cout], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_initializer(Initializer::Zeros)
                .init(device);
            c.weight = kaiming_uniform([cout, cin, 3, 3], cin * 9, rng, device);
            c.bias = Some(kaiming_uniform([cout], cin * 9, rng, device));
            c
        };
        let conv1 = conv(1, self.channels_1);
        let conv2 = conv(self.channels_1, self.channels_1);
        let conv3 = conv(self.channels_1, self.channels_2);
        let conv4 = conv(self.channels_2, self.channels_2);
        let mut linear = |d_in: usize, d_out: usize| {
            let mut l = LinearConfig::new(d_in, d_out).with_initializer(Initializer::Zeros).init(device);
            l.weight = kaiming_uniform([d_in, d_out], d_in, rng, device);
            l.bias = Some(kaiming_uniform([d_out], d_in, rng, device));
            l
        };
        let pooled = CLASSIFIER_SIDE / 4;
        let fc1 = linear(self.channels_2 * pooled * pooled, self.feature_dim);
        let fc2 = linear(self.feature_dim, NUM_CLASSES);
        MnistClassifier {
            conv1,
            conv2,
            conv3,
            conv4,
            pool: MaxPool2dConfig::new([2, 2]).init(),
            fc1,
            dropout: Dropout::new(self.dropout),
            fc2,
        }
    }

    /// Builds a classifier with weights from the seed-0 initialisation stream (for weights that
    /// are loaded afterwards).
    pub fn init(&self, device: &Device) -> MnistClassifier {
        self.init_with(&mut foundation::rng::stream_for(0, foundation::rng::Purpose::Init, 0), device)
    }
}

/// The MNIST CNN classifier (see the crate documentation for the layers).
///
/// Inputs are `[N, 1, 28, 28]` tensors with pixels in [-1, 1].
#[derive(Module, Debug)]
pub struct MnistClassifier {
    pub(crate) conv1: Conv2d,
    pub(crate) conv2: Conv2d,
    pub(crate) conv3: Conv2d,
    pub(crate) conv4: Conv2d,
    pub(crate) pool: MaxPool2d,
    pub(crate) fc1: Linear,
    pub(crate) dropout: Dropout,
    pub(crate) fc2: Linear,
}

impl MnistClassifier {
    /// Penultimate features, `[N, 1, 28, 28] -> [N, feature_dim]` (after the ReLU, before
    /// dropout).
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let x = relu(self.conv1.forward(x));
        let x = relu(self.conv2.forward(x));
        let x = self.pool.forward(x);
        let x = relu(self.conv3.forward(x));
        let x = relu(self.conv4.forward(x));
        let x = self.pool.forward(x);
        let x: Tensor<2> = x.flatten(1, 3);
        relu(self.fc1.forward(x))
    }

    /// Class logits, `[N, 1, 28, 28] -> [N, 10]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.head(self.features(x))
    }

    /// Maps penultimate features to logits (dropout acts only inside a training step, see
    /// [`foundation::layers::Dropout`]).
    pub(crate) fn head(&self, features: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(self.dropout.forward(features))
    }

    /// Class logits like [`MnistClassifier::forward`], with every convolution and linear layer
    /// reported to `tap` (for curvature and influence functions: layer inputs and output
    /// gradients; layers are named `conv1` ... `fc2` by `foundation::tap::layer_names`).
    pub fn forward_tapped(&self, x: Tensor<4>, tap: &mut Tap) -> Tensor<2> {
        let x = relu(tapped_conv(&self.conv1, x, tap));
        let x = relu(tapped_conv(&self.conv2, x, tap));
        let x = self.pool.forward(x);
        let x = relu(tapped_conv(&self.conv3, x, tap));
        let x = relu(tapped_conv(&self.conv4, x, tap));
        let x = self.pool.forward(x);
        let x: Tensor<2> = x.flatten(1, 3);
        let h = relu(tapped_linear(&self.fc1, x, tap));
        tapped_linear(&self.fc2, self.dropout.forward(h), tap)
    }

    /// Width of the feature vector returned by [`MnistClassifier::features`].
    pub fn feature_dim(&self) -> usize {
        self.fc2.weight.val().dims()[0]
    }

    /// The architecture this model was built with.
    pub fn config(&self) -> MnistClassifierConfig {
        MnistClassifierConfig {
            channels_1: self.conv1.weight.val().dims()[0],
            channels_2: self.conv3.weight.val().dims()[0],
            feature_dim: self.feature_dim(),
            dropout: self.dropout.prob,
        }
    }
}

/// A 3x3 convolution (stride 1, padding 1, as built by [`MnistClassifierConfig::init_with`])
/// reported to `tap`.
fn tapped_conv(conv: &Conv2d, x: Tensor<4>, tap: &mut Tap) -> Tensor<4> {
    let y = conv.forward(x.clone());
    if !tap.is_active() {
        return y;
    }
    let [c_out, c_in, kh, kw] = conv.weight.dims();
    let kind = LayerKind::Conv2d { c_in, c_out, kernel: [kh, kw], stride: conv.stride, padding: [1, 1] };
    tap.spatial(conv.weight.id, conv.bias.as_ref().map(|b| b.id), kind, &x, y)
}

/// A linear layer reported to `tap`.
fn tapped_linear(linear: &Linear, x: Tensor<2>, tap: &mut Tap) -> Tensor<2> {
    let y = linear.forward(x.clone());
    if !tap.is_active() {
        return y;
    }
    let [d_in, d_out] = linear.weight.dims();
    tap.dense(linear.weight.id, linear.bias.as_ref().map(|b| b.id), LayerKind::Linear { d_in, d_out }, &x, y)
}
