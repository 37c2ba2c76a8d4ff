//! The workspace's one softmax cross-entropy: `-sum_c t_ic log softmax(z_i)_c` for logits `z: [N, C]`
//! against one-hot or probability targets `t: [N, C]`, summed ([`softmax_cross_entropy_sum`]),
//! averaged over the `N` rows ([`softmax_cross_entropy`]) or per row
//! ([`softmax_cross_entropy_per_example`]); and [`one_hot`] targets from class labels.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// The summed cross-entropy `-sum_i sum_c t_ic log softmax(z_i)_c` (a one-element tensor, with
/// the graph of `logits`).
pub fn softmax_cross_entropy_sum(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    (log_softmax(logits, 1) * targets).sum().neg()
}

/// The mean cross-entropy over the `N` rows: [`softmax_cross_entropy_sum`] divided by `N`.
pub fn softmax_cross_entropy(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    let n = logits.dims()[0];
    softmax_cross_entropy_sum(logits, targets) / (n as f64)
}

/// The cross-entropy of each row, `[N]`: `-sum_c t_ic log softmax(z_i)_c`.
pub fn softmax_cross_entropy_per_example(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    let n = logits.dims()[0];
    (log_softmax(logits, 1) * targets).sum_dim(1).reshape([n]).neg()
}

/// One-hot targets `[labels.len(), classes]` (f32 data; the device's float type). Every label
/// must be below `classes` (a larger one panics: labels are checked where they are read).
pub fn one_hot(labels: &[u8], classes: usize, device: &Device) -> Tensor<2> {
    let mut v = vec![0f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        v[i * classes + l as usize] = 1.0;
    }
    Tensor::from_data(TensorData::new(v, [labels.len(), classes]), device)
}
