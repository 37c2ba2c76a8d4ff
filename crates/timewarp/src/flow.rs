//! The conditional normalising flow p_θ(x(t+τ), v′ | x(t)), a miniature of Timewarp's
//! `custom_transformer_nvp`: positions and auxiliary velocities are two latent channels, each
//! an isotropic Gaussian with a learned log-scale; `couplings` RealNVP affine layers alternate
//! between transforming the positions (conditioned on the current velocities) and the velocities
//! (conditioned on the current positions), z ← z ⊙ e^s + t per atom and coordinate. The position
//! channel is the displacement y − x (Timewarp's `use_displacement_as_target`). Every layer's s
//! and t come from an atom transformer over per-atom tokens [type embedding, centred x(t), the
//! conditioning latent]: an input MLP, one post-LayerNorm encoder layer whose attention is a
//! normalised Gaussian RBF of the interatomic distances of x(t) with one lengthscale per head (no
//! query–key product, no positional encoding), and an output layer. The model is therefore
//! permutation-equivariant over atoms but not rotation-equivariant.

use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::prelude::*;
use burn::tensor::activation::{silu, softmax};
use foundation::layers::TapLinear;
use rand::Rng;

use crate::error::TimewarpError;

/// Architecture settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FlowConfig {
    /// Number of atom types.
    pub n_types: usize,
    /// Width of the type embedding.
    pub type_dim: usize,
    /// Width of the transformer.
    pub d_model: usize,
    /// Hidden width of the input MLP and the feed-forward block.
    pub hidden: usize,
    /// One RBF lengthscale per attention head (d_model must divide by their count).
    pub lengthscales: Vec<f64>,
    /// Number of affine coupling layers (alternating positions, velocities).
    pub couplings: usize,
    /// Bound of the log-scale s of a coupling: s = b·tanh(raw / b).
    pub max_log_scale: f64,
    /// Initial log standard deviation of the position latent (training sets it from the data).
    pub position_log_scale: f64,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            n_types: 2,
            type_dim: 8,
            d_model: 32,
            hidden: 64,
            lengthscales: vec![0.5, 1.0, 2.0, 3.0],
            couplings: 4,
            max_log_scale: 2.0,
            position_log_scale: -1.0,
        }
    }
}

impl FlowConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), TimewarpError> {
        let heads = self.lengthscales.len();
        if heads == 0 || !self.d_model.is_multiple_of(heads) || self.couplings == 0 || self.n_types == 0 {
            return Err(TimewarpError::Input(format!(
                "flow: need >= 1 head dividing d_model ({} heads, d_model {}), >= 1 coupling and >= 1 type",
                heads, self.d_model
            )));
        }
        if self.lengthscales.iter().any(|l| !(l.is_finite() && *l > 0.0)) {
            return Err(TimewarpError::Input("flow: lengthscales must be finite and > 0".into()));
        }
        Ok(())
    }

    /// A flow with weights drawn from `rng`. The output layer of every coupling is scaled by
    /// `output_scale` (0: every coupling starts as the identity).
    pub fn init_with(&self, rng: &mut impl Rng, device: &Device, output_scale: f32) -> TimewarpFlow {
        let emb_vals: Vec<f32> =
            (0..self.n_types * self.type_dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let type_embedding =
            Param::from_data(TensorData::new(emb_vals, [self.n_types, self.type_dim]), device);
        let d_in = self.type_dim + 4;
        let couplings = (0..self.couplings)
            .map(|_| {
                let mut out = TapLinear::new(self.d_model, 4, rng, device);
                // Rebuilt from data so that the scaled weights are leaves of an autodiff graph.
                out.inner.weight =
                    Param::from_data(out.inner.weight.val().mul_scalar(output_scale).into_data(), device);
                if let Some(b) = out.inner.bias.take() {
                    out.inner.bias =
                        Some(Param::from_data(b.val().mul_scalar(output_scale).into_data(), device));
                }
                AtomTransformer {
                    in1: TapLinear::new(d_in, self.hidden, rng, device),
                    in2: TapLinear::new(self.hidden, self.d_model, rng, device),
                    value: TapLinear::new(self.d_model, self.d_model, rng, device),
                    attn_out: TapLinear::new(self.d_model, self.d_model, rng, device),
                    ln1: LayerNormConfig::new(self.d_model).init(device),
                    ff1: TapLinear::new(self.d_model, self.hidden, rng, device),
                    ff2: TapLinear::new(self.hidden, self.d_model, rng, device),
                    ln2: LayerNormConfig::new(self.d_model).init(device),
                    out,
                    lengthscales: self.lengthscales.clone(),
                }
            })
            .collect();
        let log_scale =
            Param::from_data(TensorData::new(vec![self.position_log_scale as f32, 0.0], [2]), device);
        TimewarpFlow { type_embedding, couplings, log_scale, max_log_scale: self.max_log_scale }
    }
}

/// One coupling's atom transformer: tokens → (s, t) for the two coordinates of every atom.
#[derive(Module, Debug)]
pub struct AtomTransformer {
    in1: TapLinear,
    in2: TapLinear,
    value: TapLinear,
    attn_out: TapLinear,
    ln1: LayerNorm,
    ff1: TapLinear,
    ff2: TapLinear,
    ln2: LayerNorm,
    out: TapLinear,
    lengthscales: Vec<f64>,
}

impl AtomTransformer {
    /// Kernel self-attention: per head h, weights softmax_j(−d²_ij / (2ℓ_h²)) applied to the
    /// head's slice of the value projection. `d2`: squared distances `[B, N, N]`.
    pub fn kernel_attention(&self, h: Tensor<3>, d2: Tensor<3>) -> Tensor<3> {
        let [b, n, d] = h.dims();
        let heads = self.lengthscales.len();
        let dh = d / heads;
        let v = self.value.inner.forward(h).reshape([b, n, heads, dh]).swap_dims(1, 2);
        let coef: Vec<f32> = self.lengthscales.iter().map(|l| (-0.5 / (l * l)) as f32).collect();
        let coef =
            Tensor::<1>::from_data(TensorData::new(coef, [heads]), &d2.device()).reshape([1, heads, 1, 1]);
        let w = softmax(d2.unsqueeze_dim::<4>(1) * coef, 3);
        let o = w.matmul(v).swap_dims(1, 2).reshape([b, n, d]);
        self.attn_out.inner.forward(o)
    }

    /// (s, t), each `[B, N, 2]`, from tokens `[B, N, d_in]` and squared distances `[B, N, N]`.
    pub fn forward(&self, tokens: Tensor<3>, d2: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        let h = self.in2.inner.forward(silu(self.in1.inner.forward(tokens)));
        let h = self.ln1.forward(h.clone() + self.kernel_attention(h, d2));
        let h = self.ln2.forward(h.clone() + self.ff2.inner.forward(silu(self.ff1.inner.forward(h))));
        let o = self.out.inner.forward(h);
        let [b, n, _] = o.dims();
        (o.clone().narrow(2, 0, 2).reshape([b, n, 2]), o.narrow(2, 2, 2).reshape([b, n, 2]))
    }
}

/// The flow. Inputs are `[B, N, 2]` tensors: the conditioning positions x(t), the one-hot atom
/// types `[B, N, n_types]`.
#[derive(Module, Debug)]
pub struct TimewarpFlow {
    type_embedding: Param<Tensor<2>>,
    couplings: Vec<AtomTransformer>,
    /// Learned log standard deviations of the position and velocity latents.
    log_scale: Param<Tensor<1>>,
    max_log_scale: f64,
}

/// What the flow needs of a batch of conditioning states.
#[derive(Clone, Debug)]
pub struct Conditioning {
    /// Positions x(t) `[B, N, 2]`.
    pub x: Tensor<3>,
    /// One-hot atom types `[B, N, n_types]`.
    pub types: Tensor<3>,
}

fn log_normal_sum(z: Tensor<3>, log_sigma: Tensor<1>) -> Tensor<1> {
    // Σ over atoms and coordinates of log N(z; 0, σ²).
    let [b, n, c] = z.dims();
    let sigma = log_sigma.clone().exp().reshape([1, 1, 1]);
    let quad = (z / sigma).powi_scalar(2).sum_dims(&[1, 2]).reshape([b]);
    let per = (n * c) as f64;
    quad.mul_scalar(-0.5)
        - log_sigma.mul_scalar(per).reshape([1]).expand([b])
        - (0.5 * per * (2.0 * std::f64::consts::PI).ln())
}

impl TimewarpFlow {
    fn tokens(&self, cond: &Conditioning, centred: &Tensor<3>, other: Tensor<3>) -> Tensor<3> {
        let [b, n, k] = cond.types.dims();
        let emb = cond.types.clone().reshape([b * n, k]).matmul(self.type_embedding.val());
        let [_, e] = emb.dims();
        Tensor::cat(vec![emb.reshape([b, n, e]), centred.clone(), other], 2)
    }

    fn geometry(cond: &Conditioning) -> (Tensor<3>, Tensor<3>) {
        let [_, n, _] = cond.x.dims();
        let centred = cond.x.clone() - cond.x.clone().mean_dim(1);
        let diff = centred.clone().unsqueeze_dim::<4>(2) - centred.clone().unsqueeze_dim::<4>(1);
        let d2 = diff.powi_scalar(2).sum_dim(3);
        let [b, _, _, _] = d2.dims();
        (centred, d2.reshape([b, n, n]))
    }

    fn st(
        &self,
        k: usize,
        cond: &Conditioning,
        centred: &Tensor<3>,
        d2: &Tensor<3>,
        other: Tensor<3>,
    ) -> (Tensor<3>, Tensor<3>) {
        let (s, t) = self.couplings[k].forward(self.tokens(cond, centred, other), d2.clone());
        let m = self.max_log_scale;
        ((s.div_scalar(m)).tanh().mul_scalar(m), t)
    }

    /// Pushes standard normals `(e_p, e_v)` through the flow: returns (y, v′, log q(y, v′ | x)).
    pub fn sample(
        &self,
        cond: &Conditioning,
        e_p: Tensor<3>,
        e_v: Tensor<3>,
    ) -> (Tensor<3>, Tensor<3>, Tensor<1>) {
        let (centred, d2) = Self::geometry(cond);
        let ls = self.log_scale.val();
        let (lp, lv) = (ls.clone().narrow(0, 0, 1), ls.narrow(0, 1, 1));
        let mut zp = e_p * lp.clone().exp().reshape([1, 1, 1]);
        let mut zv = e_v * lv.clone().exp().reshape([1, 1, 1]);
        let mut logq = log_normal_sum(zp.clone(), lp) + log_normal_sum(zv.clone(), lv);
        let [b, _, _] = zp.dims();
        for k in 0..self.couplings.len() {
            if k % 2 == 0 {
                let (s, t) = self.st(k, cond, &centred, &d2, zv.clone());
                zp = zp * s.clone().exp() + t;
                logq = logq - s.sum_dims(&[1, 2]).reshape([b]);
            } else {
                let (s, t) = self.st(k, cond, &centred, &d2, zp.clone());
                zv = zv * s.clone().exp() + t;
                logq = logq - s.sum_dims(&[1, 2]).reshape([b]);
            }
        }
        (cond.x.clone() + zp, zv, logq)
    }

    /// log q(y, v′ | x) by inverting the flow; also returns the recovered standard normals
    /// (e_p, e_v).
    pub fn log_density(
        &self,
        cond: &Conditioning,
        y: Tensor<3>,
        v: Tensor<3>,
    ) -> (Tensor<1>, Tensor<3>, Tensor<3>) {
        let (centred, d2) = Self::geometry(cond);
        let mut zp = y - cond.x.clone();
        let mut zv = v;
        let [b, _, _] = zp.dims();
        let mut logdet = Tensor::<1>::zeros([b], &zp.device());
        for k in (0..self.couplings.len()).rev() {
            if k % 2 == 0 {
                let (s, t) = self.st(k, cond, &centred, &d2, zv.clone());
                zp = (zp - t) * s.clone().neg().exp();
                logdet = logdet + s.sum_dims(&[1, 2]).reshape([b]);
            } else {
                let (s, t) = self.st(k, cond, &centred, &d2, zp.clone());
                zv = (zv - t) * s.clone().neg().exp();
                logdet = logdet + s.sum_dims(&[1, 2]).reshape([b]);
            }
        }
        let ls = self.log_scale.val();
        let (lp, lv) = (ls.clone().narrow(0, 0, 1), ls.narrow(0, 1, 1));
        let logq = log_normal_sum(zp.clone(), lp.clone()) + log_normal_sum(zv.clone(), lv.clone()) - logdet;
        let e_p = zp / lp.exp().reshape([1, 1, 1]);
        let e_v = zv / lv.exp().reshape([1, 1, 1]);
        (logq, e_p, e_v)
    }

    /// The per-coupling log-scales s of the forward pass from `(e_p, e_v)` (for checking the
    /// change-of-variables sum).
    pub fn forward_log_scales(&self, cond: &Conditioning, e_p: Tensor<3>, e_v: Tensor<3>) -> Vec<Tensor<3>> {
        let (centred, d2) = Self::geometry(cond);
        let ls = self.log_scale.val();
        let mut zp = e_p * ls.clone().narrow(0, 0, 1).exp().reshape([1, 1, 1]);
        let mut zv = e_v * ls.narrow(0, 1, 1).exp().reshape([1, 1, 1]);
        let mut out = Vec::new();
        for k in 0..self.couplings.len() {
            if k % 2 == 0 {
                let (s, t) = self.st(k, cond, &centred, &d2, zv.clone());
                zp = zp * s.clone().exp() + t;
                out.push(s);
            } else {
                let (s, t) = self.st(k, cond, &centred, &d2, zp.clone());
                zv = zv * s.clone().exp() + t;
                out.push(s);
            }
        }
        out
    }

    /// The learned log-scales (positions, velocities) of the base distribution.
    pub fn prior_log_scales(&self) -> [f32; 2] {
        let v = self.log_scale.val().into_data().try_into_vec::<f32>().unwrap_or_default();
        [v.first().copied().unwrap_or(f32::NAN), v.get(1).copied().unwrap_or(f32::NAN)]
    }

    /// Kernel attention of coupling `k` (exposed for the permutation test).
    pub fn coupling(&self, k: usize) -> &AtomTransformer {
        &self.couplings[k]
    }
}

/// One-hot types `[B, N, n_types]` of `types` repeated for `b` examples.
pub fn one_hot(types: &[usize], n_types: usize, b: usize, device: &Device) -> Tensor<3> {
    let n = types.len();
    let mut v = vec![0f32; b * n * n_types];
    for e in 0..b {
        for (i, &t) in types.iter().enumerate() {
            v[(e * n + i) * n_types + t] = 1.0;
        }
    }
    Tensor::from_data(TensorData::new(v, [b, n, n_types]), device)
}
