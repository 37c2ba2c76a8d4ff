//! A small decoder-only transformer LM: token and learned position embeddings, pre-LayerNorm
//! blocks (causal multi-head self-attention, GELU MLP), a final LayerNorm and an untied output
//! layer. Tokens enter as one-hot rows (the batches' format) or ids; either way the embedding is a
//! row lookup (`select`), which gives exactly the numbers of the one-hot product without its
//! `[N, V] x [V, d]` matmul forward and backward.

use burn::module::{Module, Param};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Int, TensorData};
use foundation::layers::kaiming_uniform;
use foundation::loss::exp_nonpositive_f32;
use foundation::rng::normals;
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::MetaOclError;

/// Architecture of [`Transformer`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of blocks.
    pub layers: usize,
    /// Attention heads (must divide `d_model`).
    pub heads: usize,
    /// Hidden width of the MLP.
    pub d_mlp: usize,
    /// Longest sequence (number of learned positions).
    pub block: usize,
    /// Tie the output layer to the token embedding (logits = h E^T, no bias); an exploratory
    /// variant, off by default.
    #[serde(default)]
    pub tie_embeddings: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self { d_model: 128, layers: 2, heads: 4, d_mlp: 512, block: 8, tie_embeddings: false }
    }
}

impl ModelConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), MetaOclError> {
        if self.d_model == 0 || self.layers == 0 || self.heads == 0 || self.d_mlp == 0 || self.block == 0 {
            return Err(MetaOclError::Invalid(format!("every model size must be positive (got {self:?})")));
        }
        if !self.d_model.is_multiple_of(self.heads) {
            return Err(MetaOclError::Invalid(format!(
                "heads ({}) must divide d_model ({})",
                self.heads, self.d_model
            )));
        }
        Ok(())
    }

    /// A model over `vocab` tokens with parameters drawn from `rng`: embeddings N(0, 0.02²),
    /// linear layers uniform on ±1/sqrt(fan_in) (burn's default), LayerNorms at (1, 0).
    pub fn init_with(&self, vocab: usize, rng: &mut impl Rng, device: &Device) -> Transformer {
        let d = self.d_model;
        let mut normal = |rows: usize, cols: usize| -> Param<Tensor<2>> {
            let v: Vec<f32> = normals(rng, rows * cols).into_iter().map(|x| 0.02 * x).collect();
            Param::from_data(TensorData::new(v, [rows, cols]), device)
        };
        let tok = normal(vocab, d);
        let pos = normal(self.block, d);
        let mut linear = |d_in: usize, d_out: usize| {
            let mut l = LinearConfig::new(d_in, d_out).with_initializer(Initializer::Zeros).init(device);
            l.weight = kaiming_uniform([d_in, d_out], d_in, rng, device);
            l.bias = Some(kaiming_uniform([d_out], d_in, rng, device));
            l
        };
        let mut blocks = Vec::with_capacity(self.layers);
        for _ in 0..self.layers {
            let qkv = linear(d, 3 * d);
            let proj = linear(d, d);
            let fc1 = linear(d, self.d_mlp);
            let fc2 = linear(self.d_mlp, d);
            blocks.push(Block {
                ln1: LayerNormConfig::new(d).init(device),
                qkv,
                proj,
                ln2: LayerNormConfig::new(d).init(device),
                fc1,
                fc2,
                heads: self.heads,
            });
        }
        let head = (!self.tie_embeddings).then(|| linear(d, vocab));
        Transformer { tok, pos, blocks, ln_f: LayerNormConfig::new(d).init(device), head }
    }

    /// A model with the seed-0 initialisation (for weights loaded afterwards).
    pub fn init(&self, vocab: usize, device: &Device) -> Transformer {
        use foundation::rng::{stream_for, Purpose};
        self.init_with(vocab, &mut stream_for(0, Purpose::Init, 0), device)
    }
}

/// One pre-LayerNorm transformer block.
#[derive(Module, Debug)]
pub struct Block {
    ln1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl Block {
    fn forward(&self, x: Tensor<3>, mask: Tensor<4, Bool>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let h = self.heads;
        let dh = d / h;
        let qkv = self.qkv.forward(self.ln1.forward(x.clone()));
        let split = |i: usize| qkv.clone().narrow(2, i * d, d).reshape([b, t, h, dh]).swap_dims(1, 2);
        let (q, k, v) = (split(0), split(1), split(2));
        let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((dh as f64).sqrt()).mask_fill(mask, -1e9);
        let att = softmax(scores, 3).matmul(v).swap_dims(1, 2).reshape([b, t, d]);
        let x = x + self.proj.forward(att);
        let m = self.fc2.forward(gelu(self.fc1.forward(self.ln2.forward(x.clone()))));
        x + m
    }
}

/// The decoder-only transformer LM.
#[derive(Module, Debug)]
pub struct Transformer {
    tok: Param<Tensor<2>>,
    pos: Param<Tensor<2>>,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    head: Option<Linear>,
}

impl Transformer {
    /// The device its weights are on.
    pub fn device(&self) -> Device {
        self.tok.device()
    }

    /// Vocabulary size.
    pub fn vocab(&self) -> usize {
        self.tok.dims()[0]
    }

    /// Longest sequence it takes.
    pub fn block(&self) -> usize {
        self.pos.dims()[0]
    }

    /// Next-token logits `[B, T, V]` of `tokens` (`B` rows of `T` token ids each, row-major;
    /// `T <= block`). Position `i` sees tokens `0..=i` only.
    pub fn forward_tokens(&self, tokens: &[u32], t: usize, device: &Device) -> Tensor<3> {
        let b = tokens.len() / t.max(1);
        let ids: Vec<i64> = tokens.iter().map(|&x| i64::from(x)).collect();
        self.forward_ids(Tensor::from_data(TensorData::new(ids, [tokens.len()]), device), b, t)
    }

    /// Next-token logits `[B, T, V]` of one-hot tokens `[B * T, V]` (each row's largest entry
    /// names its token).
    pub fn forward(&self, one_hot: Tensor<2>, b: usize, t: usize) -> Tensor<3> {
        let n = one_hot.dims()[0];
        self.forward_ids(one_hot.argmax(1).reshape([n]), b, t)
    }

    /// Next-token logits `[B, T, V]` of token ids `[B * T]`.
    fn forward_ids(&self, ids: Tensor<1, Int>, b: usize, t: usize) -> Tensor<3> {
        let d = self.tok.dims()[1];
        let device = ids.device();
        let x = self.tok.val().select(0, ids).reshape([b, t, d]);
        let x = x + self.pos.val().narrow(0, 0, t).unsqueeze::<3>();
        let h = self.blocks.first().map_or(1, |blk| blk.heads);
        // True above the diagonal: key j > query i is in the future and masked out.
        let mask = Tensor::<2, Bool>::tril_mask([t, t], 0, &device).unsqueeze::<4>().expand([b, h, t, t]);
        let mut x = x;
        for blk in &self.blocks {
            x = blk.forward(x, mask.clone());
        }
        let x = self.ln_f.forward(x);
        match &self.head {
            Some(head) => head.forward(x),
            None => x.matmul(self.tok.val().transpose().unsqueeze::<3>()),
        }
    }
}

/// One-hot rows `[N, vocab]` of `tokens`.
pub fn one_hot(tokens: &[u32], vocab: usize, device: &Device) -> Tensor<2> {
    let mut v = vec![0.0f32; tokens.len() * vocab];
    for (i, &tok) in tokens.iter().enumerate() {
        v[i * vocab + tok as usize] = 1.0;
    }
    Tensor::from_data(TensorData::new(v, [tokens.len(), vocab]), device)
}

/// The exact (erf) GELU, `0.5 x (1 + erf(x / sqrt 2))`, computed fast on the CPU: burn-flex
/// evaluates the scalar `erff` (libm) on one thread in the forward pass and again, with an `exp`,
/// in the backward pass. Here, on the `flex` device, the value `y` and (when `x` is in an autodiff
/// graph) the derivative `s = Phi(x) + x phi(x)` are computed once by [`gelu_kernel`]
/// (branch-free, vectorised for the CPU's widest SIMD, on the rayon pool) as constants, and the
/// result is `y + (x s - detach(x s))`: forward exactly `y` (the bracket is exactly 0), gradient
/// `g s` (what flex's `gelu_backward` returns, to a few ulp). On another device it is burn's
/// `gelu`.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.device() != Device::flex() && x.device() != Device::flex().autodiff() {
        return burn::tensor::activation::gelu(x);
    }
    let (shape, device, tracked) = (x.shape(), x.device(), x.is_tracked());
    let v: Vec<f32> = x.to_data().try_into_vec::<f32>().expect("f32 activations");
    let mut y = vec![0.0f32; v.len()];
    let mut s = vec![0.0f32; if tracked { v.len() } else { 0 }];
    const CHUNK: usize = 1 << 14;
    if tracked {
        v.par_chunks(CHUNK)
            .zip(y.par_chunks_mut(CHUNK))
            .zip(s.par_chunks_mut(CHUNK))
            .for_each(|((v, y), s)| gelu_kernel(v, y, Some(s)));
    } else {
        v.par_chunks(CHUNK).zip(y.par_chunks_mut(CHUNK)).for_each(|(v, y)| gelu_kernel(v, y, None));
    }
    let constant = |v: Vec<f32>| Tensor::<D>::from_data(TensorData::new(v, shape.clone()), &device);
    if !tracked {
        return constant(y);
    }
    let xs = x * constant(s);
    constant(y) + (xs.clone() - xs.detach())
}

/// `erf(x)` in `f32` without branches: XLA's and Eigen's rational approximation (odd degree-13
/// over even degree-8 polynomial on `[-4, 4]`, `±1` outside), within a few ulp of the exact value.
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    const ALPHA: [f32; 7] = [
        -2.726_142_3e-10,
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_6e-3,
        -1.609_603_3e-2,
    ];
    const BETA: [f32; 5] =
        [-1.456_607_2e-5, -2.133_740_6e-4, -1.682_827e-3, -7.373_329_2e-3, -1.426_473_9e-2];
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = ALPHA[0];
    for a in &ALPHA[1..] {
        p = p * x2 + a;
    }
    let mut q = BETA[0];
    for b in &BETA[1..] {
        q = q * x2 + b;
    }
    x * p / q
}

/// GELU values `y = x Phi(x)` of `x` and, given `s`, derivatives `s = Phi(x) + x phi(x)`, with
/// [`erf_f32`] and [`exp_nonpositive_f32`], compiled for the CPU's widest SIMD (chosen at run time).
pub fn gelu_kernel(x: &[f32], y: &mut [f32], s: Option<&mut [f32]>) {
    let inv_sqrt_2pi: f32 = 1.0 / (2.0 * std::f32::consts::PI).sqrt();
    pulp::Arch::new().dispatch(
        #[inline(always)]
        || match s {
            Some(s) => {
                for ((&x, y), s) in x.iter().zip(y.iter_mut()).zip(s.iter_mut()) {
                    let cdf = 0.5 * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2));
                    *y = x * cdf;
                    *s = cdf + x * (inv_sqrt_2pi * exp_nonpositive_f32(-0.5 * x * x));
                }
            }
            None => {
                for (&x, y) in x.iter().zip(y.iter_mut()) {
                    *y = x * (0.5 * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2)));
                }
            }
        },
    );
}
