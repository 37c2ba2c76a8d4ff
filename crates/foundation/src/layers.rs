//! Tapped layers: burn's `Linear` and `Conv2d`, called through a [`Tap`] so that curvature code
//! can see their inputs and output gradients without touching the model definition.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;

use crate::tap::{LayerKind, Tap};

/// A `Linear` layer whose calls can be recorded by a [`Tap`].
#[derive(Module, Debug)]
pub struct TapLinear {
    /// The wrapped layer (weight `[d_in, d_out]`).
    pub inner: Linear,
}

impl TapLinear {
    /// A new layer with burn's default initialisation.
    pub fn new(d_in: usize, d_out: usize, device: &Device) -> Self {
        Self { inner: LinearConfig::new(d_in, d_out).init(device) }
    }

    /// Geometry of this layer.
    pub fn kind(&self) -> LayerKind {
        let [d_in, d_out] = self.inner.weight.dims();
        LayerKind::Linear { d_in, d_out }
    }

    /// `x W + b` for `x: [N, d_in]`.
    pub fn forward(&self, x: Tensor<2>, tap: &mut Tap) -> Tensor<2> {
        let y = self.inner.forward(x.clone());
        if !tap.is_active() {
            return y;
        }
        tap.dense(self.inner.weight.id, self.inner.bias.as_ref().map(|b| b.id), self.kind(), &x, y)
    }
}

/// A `Conv2d` layer (symmetric zero padding) whose calls can be recorded by a [`Tap`].
#[derive(Module, Debug)]
pub struct TapConv2d {
    /// The wrapped layer (weight `[c_out, c_in, kh, kw]`).
    pub inner: Conv2d,
    /// Symmetric padding (kept here because burn's padding config is not a module field).
    pub pad: [usize; 2],
}

impl TapConv2d {
    /// A square `k x k` convolution with the given stride and padding `pad`.
    pub fn new(c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize, device: &Device) -> Self {
        let inner = Conv2dConfig::new([c_in, c_out], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .init(device);
        Self { inner, pad: [pad, pad] }
    }

    /// Geometry of this layer.
    pub fn kind(&self) -> LayerKind {
        let [c_out, c_in, kh, kw] = self.inner.weight.dims();
        LayerKind::Conv2d { c_in, c_out, kernel: [kh, kw], stride: self.inner.stride, padding: self.pad }
    }

    /// Convolution of `x: [N, C_in, H, W]`.
    pub fn forward(&self, x: Tensor<4>, tap: &mut Tap) -> Tensor<4> {
        let y = self.inner.forward(x.clone());
        if !tap.is_active() {
            return y;
        }
        tap.spatial(self.inner.weight.id, self.inner.bias.as_ref().map(|b| b.id), self.kind(), &x, y)
    }
}
