//! The workspace's one softmax cross-entropy: `-sum_c t_ic log softmax(z_i)_c` for logits `z: [N, C]`
//! against one-hot or probability targets `t: [N, C]`, summed ([`softmax_cross_entropy_sum`]),
//! averaged over the `N` rows ([`softmax_cross_entropy`]) or per row
//! ([`softmax_cross_entropy_per_example`]); the summed one in one pass over the logits on the CPU
//! ([`softmax_cross_entropy_sum_fused`]); and [`one_hot`] targets from class labels.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

/// The summed cross-entropy `-sum_i sum_c t_ic log softmax(z_i)_c` (a one-element tensor, with
/// the graph of `logits`).
pub fn softmax_cross_entropy_sum(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    (log_softmax(logits, 1) * targets).sum().neg()
}

/// [`softmax_cross_entropy_sum`] in one pass over the logits: for `f32` logits in an autodiff
/// graph on the `flex` CPU device, each row's log-sum-exp, loss and gradient
/// `softmax(z_i) sum_c t_ic - t_i` are computed at once (the exponentials by the branch-free,
/// vectorised [`exp_nonpositive_f32`], the sums in `f64`), and the result is
/// `loss + (sum(z G) - detach(sum(z G)))` with `G` that gradient as a constant: the value of the
/// summed cross-entropy, and its gradient in the backward pass, without the half-dozen tensor
/// operations of `log_softmax` and their backward passes. The same numbers as
/// [`softmax_cross_entropy_sum`] to float rounding. Otherwise (another device or dtype, or logits
/// without a graph) it is [`softmax_cross_entropy_sum`].
pub fn softmax_cross_entropy_sum_fused(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    let device = logits.device();
    let cpu = device == Device::flex() || device == Device::flex().autodiff();
    if !cpu || !logits.is_tracked() || logits.dtype() != DType::F32 || targets.dtype() != DType::F32 {
        return softmax_cross_entropy_sum(logits, targets);
    }
    let [n, c] = logits.dims();
    let z: Vec<f32> = logits.to_data().try_into_vec().expect("f32 logits");
    let t: Vec<f32> = targets.to_data().try_into_vec().expect("f32 targets");
    let mut g = vec![0f32; n * c];
    const ROWS: usize = 16;
    let losses: Vec<f64> = z
        .par_chunks(ROWS * c)
        .zip(t.par_chunks(ROWS * c))
        .zip(g.par_chunks_mut(ROWS * c))
        .map(|((z, t), g)| {
            let mut loss = 0.0f64;
            for ((z, t), g) in z.chunks_exact(c).zip(t.chunks_exact(c)).zip(g.chunks_exact_mut(c)) {
                loss += cross_entropy_row(z, t, g);
            }
            loss
        })
        .collect();
    let loss: f64 = losses.iter().sum();
    let constant = Tensor::<2>::from_data(TensorData::new(g, [n, c]), &device);
    let zg = (logits * constant).sum();
    Tensor::<1>::from_data(TensorData::new(vec![loss as f32], [1]), &device) + (zg.clone() - zg.detach())
}

/// One row of [`softmax_cross_entropy_sum_fused`]: writes the gradient `softmax(z) sum(t) - t` to
/// `g` and returns the loss `sum(t) lse(z) - t . z`.
fn cross_entropy_row(z: &[f32], t: &[f32], g: &mut [f32]) -> f64 {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    pulp::Arch::new().dispatch(
        #[inline(always)]
        || {
            for (g, &z) in g.iter_mut().zip(z) {
                *g = exp_nonpositive_f32(z - max);
            }
        },
    );
    let (mut sum, mut t_sum, mut tz) = (0.0f64, 0.0f64, 0.0f64);
    for ((&e, &t), &z) in g.iter().zip(t).zip(z) {
        sum += f64::from(e);
        t_sum += f64::from(t);
        tz += f64::from(t) * f64::from(z);
    }
    let lse = f64::from(max) + sum.ln();
    let (scale, t_sum32) = ((1.0 / sum) as f32, t_sum as f32);
    for (g, &t) in g.iter_mut().zip(t) {
        *g = *g * scale * t_sum32 - t;
    }
    t_sum * lse - tz
}

/// `exp(t)` in `f32` without branches for `t <= 0` (Cephes' `expf`: `2^n` times a degree-7
/// polynomial on `[-ln 2 / 2, ln 2 / 2]`; within about 1 ulp, and 0 below `-87`), so loops over
/// it vectorise.
#[inline(always)]
pub fn exp_nonpositive_f32(t: f32) -> f32 {
    let below = t < -87.0;
    let t = t.max(-87.0);
    let n = (t * std::f32::consts::LOG2_E + 0.5).floor();
    let r = t - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if below {
        0.0
    } else {
        e * scale
    }
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
