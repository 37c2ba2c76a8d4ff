//! Tapped layers: burn's `Linear` (on `[N, d]` rows or `[N, T, d]` sequences), `Conv2d` and
//! `Embedding`, called through a [`Tap`] so that curvature code
//! can see their inputs and output gradients without touching the model definition; and
//! [`Dropout`], whose masks come from a seeded stream instead of burn's process-wide RNG.
//!
//! Initialisation draws from the caller's random stream (normally
//! `foundation::rng::stream_for(seed, Purpose::Init, 0)`), never from burn's process-wide RNG, so
//! a model built on one thread is the same whatever other threads do. The distribution is burn's
//! default for these layers: weight and bias uniform on `[-1/sqrt(fan_in), 1/sqrt(fan_in)]`
//! (Kaiming-uniform with gain `1/sqrt(3)`).

use std::cell::RefCell;

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use rand::distributions::{Distribution, Uniform};
use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;

use crate::tap::{LayerKind, Tap};

/// A parameter of `shape` drawn uniformly from `[-1/sqrt(fan_in), 1/sqrt(fan_in)]`.
pub fn kaiming_uniform<const D: usize>(
    shape: [usize; D],
    fan_in: usize,
    rng: &mut impl Rng,
    device: &Device,
) -> Param<Tensor<D>> {
    let bound = (1.0 / (fan_in.max(1) as f64).sqrt()) as f32;
    let dist = Uniform::new_inclusive(-bound, bound);
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| dist.sample(rng)).collect();
    Param::from_data(TensorData::new(values, shape), device)
}

/// A `Linear` layer whose calls can be recorded by a [`Tap`].
#[derive(Module, Debug)]
pub struct TapLinear {
    /// The wrapped layer (weight `[d_in, d_out]`).
    pub inner: Linear,
}

impl TapLinear {
    /// A new layer with burn's default distribution, drawn from `rng` (weight first, then bias).
    pub fn new(d_in: usize, d_out: usize, rng: &mut impl Rng, device: &Device) -> Self {
        let mut inner = LinearConfig::new(d_in, d_out).with_initializer(Initializer::Zeros).init(device);
        inner.weight = kaiming_uniform([d_in, d_out], d_in, rng, device);
        inner.bias = Some(kaiming_uniform([d_out], d_in, rng, device));
        Self { inner }
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

    /// `x W + b` at every position of `x: [N, T, d_in]` (the same weights at every position;
    /// curvature code treats the T positions like shared positions: K-FAC expand / reduce).
    pub fn forward_seq(&self, x: Tensor<3>, tap: &mut Tap) -> Tensor<3> {
        let y = self.inner.forward(x.clone());
        if !tap.is_active() {
            return y;
        }
        tap.sequence(self.inner.weight.id, self.inner.bias.as_ref().map(|b| b.id), self.kind(), &x, y)
    }
}

/// A token `Embedding` (no bias) whose calls can be recorded by a [`Tap`]: as a linear map of
/// one-hot inputs, with the one-hot rows recorded as its input.
#[derive(Module, Debug)]
pub struct TapEmbedding {
    /// The wrapped layer (weight `[vocab, dim]`).
    pub inner: Embedding,
}

impl TapEmbedding {
    /// A new embedding with weights drawn from N(0, 1) (burn's default) out of `rng`.
    pub fn new(vocab: usize, dim: usize, rng: &mut impl Rng, device: &Device) -> Self {
        let mut inner = EmbeddingConfig::new(vocab, dim).with_initializer(Initializer::Zeros).init(device);
        let values = crate::rng::normals(rng, vocab * dim);
        inner.weight = Param::from_data(TensorData::new(values, [vocab, dim]), device);
        Self { inner }
    }

    /// Geometry of this layer.
    pub fn kind(&self) -> LayerKind {
        let [vocab, dim] = self.inner.weight.dims();
        LayerKind::Embedding { vocab, dim }
    }

    /// Embeddings `[N, T, dim]` of token ids `[N, T]`.
    pub fn forward(&self, ids: Tensor<2, Int>, tap: &mut Tap) -> Tensor<3> {
        let y = self.inner.forward(ids.clone());
        if !tap.is_active() {
            return y;
        }
        let [vocab, _] = self.inner.weight.dims();
        let one_hot: Tensor<3> = ids.one_hot::<3>(vocab).float();
        tap.sequence(self.inner.weight.id, None, self.kind(), &one_hot, y)
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
    /// A square `k x k` convolution with the given stride and padding `pad`, with burn's default
    /// distribution drawn from `rng` (weight first, then bias; `fan_in = c_in k^2`).
    pub fn new(
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Self {
        let mut inner = Conv2dConfig::new([c_in, c_out], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_initializer(Initializer::Zeros)
            .init(device);
        let fan_in = c_in * k * k;
        inner.weight = kaiming_uniform([c_out, c_in, k, k], fan_in, rng, device);
        inner.bias = Some(kaiming_uniform([c_out], fan_in, rng, device));
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

thread_local! {
    /// The stream dropout masks of the current training pass come from (see [`with_dropout_stream`]).
    static DROPOUT_STREAM: RefCell<Option<ChaCha8Rng>> = const { RefCell::new(None) };
}

/// Runs `f` (one training forward pass) with dropout masks drawn from `rng`, on this thread.
///
/// The stream is installed for the duration of `f` only and the previous one is restored
/// afterwards, so nested or interleaved passes (rayon may run another job on this thread while
/// `f` waits) each see their own. The trainer calls this with
/// `stream_for(seed, Purpose::Dropout, step)`: masks depend on the seed and the step alone, not on
/// what else runs in the process.
pub fn with_dropout_stream<T>(rng: ChaCha8Rng, f: impl FnOnce() -> T) -> T {
    let previous = DROPOUT_STREAM.with(|s| s.replace(Some(rng)));
    struct Restore(Option<ChaCha8Rng>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            DROPOUT_STREAM.with(|s| *s.borrow_mut() = previous);
        }
    }
    let _restore = Restore(previous);
    f()
}

/// Dropout whose masks come from the stream installed by [`with_dropout_stream`].
///
/// Outside such a scope (sampling, evaluation, attribution gradients) it is the identity, as is a
/// probability of 0. Inside, each element is kept with probability `1 - prob` and scaled by
/// `1 / (1 - prob)`. Holds no tensors, so checkpoints are the same as with burn's `Dropout`.
#[derive(Module, Debug)]
pub struct Dropout {
    /// Probability of zeroing an element.
    pub prob: f64,
}

impl Dropout {
    /// Dropout with probability `prob` in `[0, 1)`.
    pub fn new(prob: f64) -> Self {
        assert!(
            prob.is_finite() && (0.0..1.0).contains(&prob),
            "dropout probability {prob} is not in [0, 1)"
        );
        Self { prob }
    }

    /// Applies dropout if a stream is installed on this thread and `prob > 0`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if self.prob == 0.0 {
            return x;
        }
        let keep = 1.0 - self.prob;
        let shape = x.dims();
        let n: usize = shape.iter().product();
        let mask = DROPOUT_STREAM.with(|s| {
            let mut s = s.borrow_mut();
            let rng: &mut ChaCha8Rng = s.as_mut()?;
            let threshold = (keep * 4_294_967_296.0) as u64;
            let scale = (1.0 / keep) as f32;
            Some(
                (0..n)
                    .map(|_| if (rng.next_u32() as u64) < threshold { scale } else { 0.0 })
                    .collect::<Vec<f32>>(),
            )
        });
        match mask {
            Some(mask) => {
                let device = x.device();
                x * Tensor::<D>::from_data(TensorData::new(mask, shape), &device)
            }
            None => x,
        }
    }
}
