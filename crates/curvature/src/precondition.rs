//! Gradients in layer space and the damped inverse curvature applied to them.
//!
//! Layout of a flat gradient vector ("layer space"): for every covered layer in forward-call
//! order, the weight as a `[d_out, d_in]` row-major matrix (conv: `d_in = c_in * kh * kw`,
//! channel-major like burn's weight), then the bias `[d_out]` if the layer has one. Norm layers
//! are not covered (spec p1 §1.5): they enter neither the curvature nor the gradient products.

use burn::prelude::*;
use burn::tensor::Gradients;
use foundation::tap::TapRecord;

use crate::factors::{EigenCurvature, LayerInfo};
use crate::layer::{to_f64, LayerBatch};

/// Total length of a flat gradient over `layers`.
pub fn flat_len(layers: &[LayerInfo]) -> usize {
    layers.iter().map(|l| l.num_params()).sum()
}

/// Per-datum gradients `[N, P]` of the back-propagated scalar with respect to every covered
/// layer's weight and bias, rebuilt from tap records (no parameter gradients needed).
pub fn per_datum_gradients(records: &[TapRecord], grads: &Gradients) -> Tensor<2> {
    let mut parts = Vec::new();
    for rec in records {
        let lb = LayerBatch::from_record(rec, grads).expect("layer reaches the loss");
        let gw = lb.per_datum_weight_grads();
        let [n, d_out, d_in] = gw.dims();
        parts.push(gw.reshape([n, d_out * d_in]));
        if rec.bias_id.is_some() {
            parts.push(lb.per_datum_bias_grads());
        }
    }
    Tensor::cat(parts, 1)
}

impl EigenCurvature {
    /// Layer descriptions, in layout order.
    pub fn infos(&self) -> Vec<LayerInfo> {
        self.layers.iter().map(|l| l.info.clone()).collect()
    }

    /// Eigenvalues in the rotated layout (same order as [`rotate`](Self::rotate) output).
    pub fn eigenvalues(&self) -> Vec<f64> {
        let mut out = Vec::with_capacity(flat_len(&self.infos()));
        for l in &self.layers {
            out.extend_from_slice(&l.lambda_w);
            if l.info.has_bias {
                out.extend_from_slice(&l.lambda_b);
            }
        }
        out
    }

    /// Rotate flat gradients `[N, P]` into the Kronecker eigenbasis (`Q_B^T V Q_A` per layer).
    pub fn rotate(&self, g: Tensor<2>) -> Tensor<2> {
        self.map_layers(g, false)
    }

    /// Inverse of [`rotate`](Self::rotate) (`Q_B V Q_A^T` per layer).
    pub fn unrotate(&self, g: Tensor<2>) -> Tensor<2> {
        self.map_layers(g, true)
    }

    fn map_layers(&self, g: Tensor<2>, inverse: bool) -> Tensor<2> {
        let device = g.device();
        let n = g.dims()[0];
        let mut offset = 0;
        let mut parts = Vec::new();
        for l in &self.layers {
            let (d_in, d_out) = (l.info.d_in, l.info.d_out);
            let qb = crate::layer::from_f64(&l.q_b, d_out, d_out, &device);
            let w = g.clone().narrow(1, offset, d_out * d_in).reshape([n, d_out, d_in]);
            let left = if inverse { qb.clone() } else { qb.clone().transpose() };
            let w = left.unsqueeze_dim::<3>(0).matmul(w);
            let w = if l.info.diagonal_input {
                w
            } else {
                let qa = crate::layer::from_f64(&l.q_a, d_in, d_in, &device);
                let right = if inverse { qa.transpose() } else { qa };
                w.matmul(right.unsqueeze_dim::<3>(0))
            };
            parts.push(w.reshape([n, d_out * d_in]));
            offset += d_out * d_in;
            if l.info.has_bias {
                let b = g.clone().narrow(1, offset, d_out);
                parts.push(if inverse { b.matmul(qb.transpose()) } else { b.matmul(qb) });
                offset += d_out;
            }
        }
        Tensor::cat(parts, 1)
    }

    /// `(G + lambda I)^-1 g` for flat gradients `[N, P]` (exact damping in the eigenbasis).
    pub fn inverse_apply(&self, g: Tensor<2>, lambda: f64) -> Tensor<2> {
        let device = g.device();
        let inv: Vec<f64> = self.eigenvalues().into_iter().map(|e| 1.0 / (e + lambda)).collect();
        let p = inv.len();
        let inv = Tensor::<1>::from_data(TensorData::new(inv, [p]), &device).reshape([1, p]);
        self.unrotate(self.rotate(g) * inv)
    }

    /// `G g` for flat gradients (the curvature as an operator, for tests).
    pub fn apply(&self, g: Tensor<2>) -> Tensor<2> {
        let device = g.device();
        let ev = self.eigenvalues();
        let p = ev.len();
        let ev = Tensor::<1>::from_data(TensorData::new(ev, [p]), &device).reshape([1, p]);
        self.unrotate(self.rotate(g) * ev)
    }

    /// The dense `[P, P]` matrix this curvature represents (small models only).
    pub fn to_dense(&self, device: &Device) -> Vec<f64> {
        let p = flat_len(&self.infos());
        let eye = Tensor::<2>::eye(p, device);
        to_f64(self.apply(eye))
    }
}
