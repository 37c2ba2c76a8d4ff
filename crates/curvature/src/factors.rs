//! Kronecker factors of the Gauss-Newton matrix, their eigendecomposition, and the EK-FAC
//! eigenvalue correction, with exact damping `(G + lambda I)^-1` in the eigenbasis.
//!
//! Scale conventions follow spec p1 §1.5/§1.9: with M data (= examples x draws) and S shared
//! positions per layer, K-FAC-expand uses `A = (1/(M S)) sum_i sum_s a a^T` and
//! `B = (1/M) sum_i sum_s g g^T`; K-FAC-reduce uses `a_hat = mean_s a`, `g_hat = sum_s g`,
//! `A = (1/M) sum a_hat a_hat^T`, `B = (1/M) sum g_hat g_hat^T`. Weight and bias are separate
//! blocks: the weight block is `A (x) B`, the bias block is `B`. G therefore approximates the GGN
//! of the *mean* training loss, so damping values such as 1e-8 mean what they mean in the paper.

use burn::prelude::*;
use burn::tensor::Gradients;
use faer::{Mat, Side};
use foundation::tap::{LayerKind, TapRecord};
use serde::{Deserialize, Serialize};

use crate::layer::{from_f64, gram, gram_sum, to_f64, LayerBatch};

/// How positions shared by a layer (conv pixels) enter the Kronecker factors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KfacApprox {
    /// Positions act like extra data (the default for diffusion).
    Expand,
    /// Positions are averaged (inputs) and summed (gradients) first.
    Reduce,
}

/// Identity and geometry of one covered layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// Module path, e.g. `Unet.down.0.conv1`.
    pub name: String,
    /// Weight parameter id (stable ids, see `diffusion::checkpoint::stable_param_ids`).
    pub weight_id: u64,
    /// Whether the layer has a bias block.
    pub has_bias: bool,
    /// Input features (conv: `c_in * kh * kw`).
    pub d_in: usize,
    /// Output features.
    pub d_out: usize,
    /// Shared positions per datum seen when fitting (conv: output pixels; linear: 1; sequences:
    /// T).
    pub positions: usize,
    /// The input factor A is kept diagonal (embeddings: one-hot inputs, so A is the diagonal of
    /// token frequencies): A is stored as its `d_in` diagonal entries and its eigenbasis is the
    /// identity, never materialised.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub diagonal_input: bool,
}

impl LayerInfo {
    fn from_record(rec: &TapRecord, name: String, positions: usize) -> Self {
        let (d_in, d_out) = match rec.kind {
            LayerKind::Linear { d_in, d_out } => (d_in, d_out),
            LayerKind::Conv2d { c_in, c_out, kernel, .. } => (c_in * kernel[0] * kernel[1], c_out),
            LayerKind::Embedding { vocab, dim } => (vocab, dim),
        };
        let diagonal_input = matches!(rec.kind, LayerKind::Embedding { .. });
        Self {
            name,
            weight_id: rec.weight_id.val(),
            has_bias: rec.bias_id.is_some(),
            d_in,
            d_out,
            positions,
            diagonal_input,
        }
    }

    /// Number of parameters covered (weight + bias).
    pub fn num_params(&self) -> usize {
        self.d_in * self.d_out + if self.has_bias { self.d_out } else { 0 }
    }
}

/// Running sums of the Kronecker factors of every layer.
#[derive(Clone, Debug)]
pub struct FactorAccumulator {
    approx: KfacApprox,
    layers: Vec<LayerInfo>,
    a_sum: Vec<Vec<f64>>,
    b_sum: Vec<Vec<f64>>,
    data: usize,
}

impl FactorAccumulator {
    /// An empty accumulator.
    pub fn new(approx: KfacApprox) -> Self {
        Self { approx, layers: Vec::new(), a_sum: Vec::new(), b_sum: Vec::new(), data: 0 }
    }

    /// Add the input (A) statistics of one forward pass. `names` maps weight ids to layer names.
    pub fn add_activations(&mut self, records: &[TapRecord], names: &dyn Fn(u64) -> String) {
        for (k, rec) in records.iter().enumerate() {
            let diagonal = matches!(rec.kind, LayerKind::Embedding { .. });
            if self.approx == KfacApprox::Expand && !diagonal {
                // Feature-major blocks: no transposed copy of the patches.
                let a = LayerBatch::activations_by_feature(rec);
                let [_, d_in, s] = a.dims();
                self.ensure_layer(k, rec, names, s, d_in);
                let aa = gram_sum(a);
                self.a_sum[k].iter_mut().zip(aa).for_each(|(s, v)| *s += v);
                continue;
            }
            let a = LayerBatch::activations(rec);
            let [n, s, d_in] = a.dims();
            self.ensure_layer(k, rec, names, s, d_in);
            let a = match self.approx {
                KfacApprox::Expand => a.reshape([n * s, d_in]),
                KfacApprox::Reduce => a.mean_dim(1).reshape([n, d_in]),
            };
            let aa = if self.layers[k].diagonal_input { to_f64(a.square().sum_dim(0)) } else { gram(a) };
            self.a_sum[k].iter_mut().zip(aa).for_each(|(s, v)| *s += v);
        }
    }

    /// Creates the sums of layer `k` on its first batch.
    fn ensure_layer(
        &mut self,
        k: usize,
        rec: &TapRecord,
        names: &dyn Fn(u64) -> String,
        s: usize,
        d_in: usize,
    ) {
        if self.layers.len() <= k {
            let mut info = LayerInfo::from_record(rec, names(rec.weight_id.val()), s);
            info.d_in = d_in;
            self.a_sum.push(vec![0.0; if info.diagonal_input { d_in } else { d_in * d_in }]);
            self.b_sum.push(vec![0.0; info.d_out * info.d_out]);
            self.layers.push(info);
        }
    }

    /// Add the output-gradient (B) statistics of one backward pass.
    pub fn add_gradients(&mut self, records: &[TapRecord], grads: &Gradients) {
        for (k, rec) in records.iter().enumerate() {
            let gg = match self.approx {
                KfacApprox::Expand => gram_sum(
                    LayerBatch::output_grads_by_feature(rec, grads)
                        .expect("every tapped layer reaches the loss"),
                ),
                KfacApprox::Reduce => {
                    let g =
                        LayerBatch::output_grads(rec, grads).expect("every tapped layer reaches the loss");
                    let [n, _, d_out] = g.dims();
                    gram(g.sum_dim(1).reshape([n, d_out]))
                }
            };
            self.b_sum[k].iter_mut().zip(gg).for_each(|(s, v)| *s += v);
        }
    }

    /// Count `n` more data (M).
    pub fn add_data(&mut self, n: usize) {
        self.data += n;
    }

    /// Add the sums of `part` (same layers, e.g. half of a batch) into these; the first part
    /// merged into an empty accumulator brings the layers, named with `names`.
    pub fn merge(&mut self, part: FactorAccumulator, names: &dyn Fn(u64) -> String) {
        if self.layers.is_empty() {
            self.layers = part.layers;
            self.layers.iter_mut().for_each(|l| l.name = names(l.weight_id));
            self.a_sum = part.a_sum;
            self.b_sum = part.b_sum;
        } else {
            add_into(&mut self.a_sum, part.a_sum);
            add_into(&mut self.b_sum, part.b_sum);
        }
        self.data += part.data;
    }

    /// The normalised factors.
    pub fn finish(self) -> KfacFactors {
        let m = self.data as f64;
        let layers = self
            .layers
            .into_iter()
            .zip(self.a_sum.into_iter().zip(self.b_sum))
            .map(|(info, (a, b))| {
                let a_scale = match self.approx {
                    KfacApprox::Expand => 1.0 / (m * info.positions as f64),
                    KfacApprox::Reduce => 1.0 / m,
                };
                let a = a.into_iter().map(|v| v * a_scale).collect();
                let b = b.into_iter().map(|v| v / m).collect();
                KroneckerFactors { info, a, b }
            })
            .collect();
        KfacFactors { approx: self.approx, num_data: self.data, layers }
    }
}

/// A and B of one layer (row-major, symmetric).
#[derive(Clone, Debug)]
pub struct KroneckerFactors {
    /// Layer identity.
    pub info: LayerInfo,
    /// Input factor `[d_in, d_in]` (only its diagonal `[d_in]` when `info.diagonal_input`).
    pub a: Vec<f64>,
    /// Output-gradient factor `[d_out, d_out]`.
    pub b: Vec<f64>,
}

/// K-FAC factors of every covered layer.
#[derive(Clone, Debug)]
pub struct KfacFactors {
    /// Expand or reduce.
    pub approx: KfacApprox,
    /// M, the number of data the factors average over.
    pub num_data: usize,
    /// Per layer, in forward-call order.
    pub layers: Vec<KroneckerFactors>,
}

/// Symmetric eigendecomposition in f64: (eigenvectors as columns, row-major `[d, d]`; eigenvalues).
pub fn eigh(m: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mat = Mat::<f64>::from_fn(d, d, |i, j| 0.5 * (m[i * d + j] + m[j * d + i]));
    let eig = mat.self_adjoint_eigen(Side::Lower).expect("symmetric eigendecomposition");
    let u = eig.U();
    let s = eig.S().column_vector();
    let q = (0..d * d).map(|k| u[(k / d, k % d)]).collect();
    let vals = (0..d).map(|i| s[i].max(0.0)).collect();
    (q, vals)
}

/// One layer's curvature in its Kronecker eigenbasis: `G ~ (Q_A (x) Q_B) diag(Lambda) (...)^T`.
#[derive(Clone, Debug)]
pub struct LayerEigen {
    /// Layer identity.
    pub info: LayerInfo,
    /// Eigenvectors of A (columns), row-major `[d_in, d_in]`; empty when `info.diagonal_input`
    /// (the identity).
    pub q_a: Vec<f64>,
    /// Eigenvectors of B (columns), row-major `[d_out, d_out]`.
    pub q_b: Vec<f64>,
    /// Eigenvalues of the weight block, `[d_out, d_in]` row-major (K-FAC: `s_B s_A^T`; EK-FAC:
    /// corrected).
    pub lambda_w: Vec<f64>,
    /// Eigenvalues of the bias block, `[d_out]` (K-FAC: `s_B`).
    pub lambda_b: Vec<f64>,
}

impl LayerEigen {
    /// Rotate a weight-gradient matrix `V` (`[d_out, d_in]`) into the eigenbasis: `Q_B^T V Q_A`.
    pub fn rotate(&self, v: Tensor<3>, device: &Device) -> Tensor<3> {
        let d_o = self.info.d_out;
        let qb = from_f64(&self.q_b, d_o, d_o, device);
        let left = qb.transpose().unsqueeze_dim::<3>(0).matmul(v);
        if self.info.diagonal_input {
            return left;
        }
        let di = self.info.d_in;
        left.matmul(from_f64(&self.q_a, di, di, device).unsqueeze_dim::<3>(0))
    }

    /// Rotate bias gradients `[N, d_out]` into the eigenbasis: `Q_B^T v`.
    pub fn rotate_bias(&self, v: Tensor<2>, device: &Device) -> Tensor<2> {
        let d_o = self.info.d_out;
        v.matmul(from_f64(&self.q_b, d_o, d_o, device))
    }

    /// `(Q_A, Q_B)` as tensors (`Q_A` materialised as the identity for a diagonal input factor).
    pub fn bases(&self, device: &Device) -> (Tensor<2>, Tensor<2>) {
        let (di, d_o) = (self.info.d_in, self.info.d_out);
        let qa = if self.info.diagonal_input {
            Tensor::<2>::eye(di, device)
        } else {
            from_f64(&self.q_a, di, di, device)
        };
        (qa, from_f64(&self.q_b, d_o, d_o, device))
    }
}

/// The eigendecomposed curvature of every covered layer: K-FAC, or EK-FAC after
/// [`EigenCurvature::correct`].
#[derive(Clone, Debug)]
pub struct EigenCurvature {
    /// Expand or reduce.
    pub approx: KfacApprox,
    /// Whether the eigenvalues carry the EK-FAC correction.
    pub corrected: bool,
    /// M of the first (factor) pass.
    pub num_data: usize,
    /// Per layer.
    pub layers: Vec<LayerEigen>,
    /// The settings it was fitted with (saved in the file header; default: unknown, MSE).
    pub meta: crate::io::CurvatureMeta,
}

impl KfacFactors {
    /// Eigendecompose A and B of every layer (f64, faer); eigenvalues are the K-FAC ones.
    pub fn eigendecompose(&self) -> EigenCurvature {
        let layers = self
            .layers
            .iter()
            .map(|f| {
                let (q_a, s_a) = if f.info.diagonal_input {
                    (Vec::new(), f.a.iter().map(|v| v.max(0.0)).collect())
                } else {
                    eigh(&f.a, f.info.d_in)
                };
                let (q_b, s_b) = eigh(&f.b, f.info.d_out);
                let lambda_w = s_b.iter().flat_map(|sb| s_a.iter().map(move |sa| sb * sa)).collect();
                // The bias "activation" is 1 at every position, so its A factor is exactly 1.
                let lambda_b = s_b.clone();
                LayerEigen { info: f.info.clone(), q_a, q_b, lambda_w, lambda_b }
            })
            .collect();
        EigenCurvature {
            approx: self.approx,
            corrected: false,
            num_data: self.num_data,
            layers,
            meta: Default::default(),
        }
    }
}

/// Running sums of the EK-FAC eigenvalue correction (second pass, fresh draws).
pub struct CorrectionAccumulator<'c> {
    curvature: &'c EigenCurvature,
    lambda_w: Vec<Vec<f64>>,
    lambda_b: Vec<Vec<f64>>,
    data: usize,
}

impl<'c> CorrectionAccumulator<'c> {
    /// Start a correction pass for `curvature`'s eigenbases.
    pub fn new(curvature: &'c EigenCurvature) -> Self {
        let lambda_w = curvature.layers.iter().map(|l| vec![0.0; l.info.d_in * l.info.d_out]).collect();
        let lambda_b = curvature.layers.iter().map(|l| vec![0.0; l.info.d_out]).collect();
        Self { curvature, lambda_w, lambda_b, data: 0 }
    }

    /// Count `n` more data (M).
    pub fn add_data(&mut self, n: usize) {
        self.data += n;
    }

    /// Add one backward pass: `Lambda += sum_i (Q_B^T G_i Q_A)^2` per layer.
    pub fn add(&mut self, records: &[TapRecord], grads: &Gradients) {
        for (k, (rec, layer)) in records.iter().zip(&self.curvature.layers).enumerate() {
            assert_eq!(
                rec.weight_id.val(),
                layer.info.weight_id,
                "records must follow the factor pass's layer order"
            );
            let lb = LayerBatch::from_record(rec, grads).expect("layer reaches the loss");
            let device = lb.a.device();
            let gw = layer.rotate(lb.per_datum_weight_grads(), &device);
            let sq = gw.square().sum_dim(0);
            let [_, d_out, d_in] = sq.dims();
            let sq = to_f64(sq.reshape([d_out, d_in]));
            self.lambda_w[k].iter_mut().zip(sq).for_each(|(s, v)| *s += v);
            if layer.info.has_bias {
                let gb = layer.rotate_bias(lb.per_datum_bias_grads(), &device).square().sum_dim(0);
                let gb = to_f64(gb);
                self.lambda_b[k].iter_mut().zip(gb).for_each(|(s, v)| *s += v);
            }
        }
    }

    /// Add the sums of `part` (another accumulator for the same curvature) into these.
    pub fn merge(&mut self, part: CorrectionAccumulator<'_>) {
        add_into(&mut self.lambda_w, part.lambda_w);
        add_into(&mut self.lambda_b, part.lambda_b);
        self.data += part.data;
    }

    /// The EK-FAC curvature: same eigenbases, corrected eigenvalues.
    pub fn finish(self) -> EigenCurvature {
        let m = self.data as f64;
        let mut out = self.curvature.clone();
        out.corrected = true;
        for ((layer, lw), lb) in out.layers.iter_mut().zip(self.lambda_w).zip(self.lambda_b) {
            layer.lambda_w = lw.into_iter().map(|v| v / m).collect();
            layer.lambda_b = lb.into_iter().map(|v| v / m).collect();
        }
        out
    }
}

/// `into[k][i] += from[k][i]` for every layer k.
fn add_into(into: &mut [Vec<f64>], from: Vec<Vec<f64>>) {
    for (s, f) in into.iter_mut().zip(from) {
        s.iter_mut().zip(f).for_each(|(s, v)| *s += v);
    }
}
