//! Output losses: what the network's output is scored with, and hence which Gauss-Newton matrix
//! the curvature approximates (spec p1 §1.4).
//!
//! For a per-datum loss `rho(y_i, target_i)` of the output `y_i` with Hessian `H_i` in the output,
//! GGN^model is `E[J^T H_i J]`. An [`OutputLoss`] supplies what the fitting passes back-propagate:
//! - sampled pseudo-gradients `r_i` with `E[r_i r_i^T] = H_i` (GGN^model, Monte Carlo; for a
//!   likelihood loss these are the gradients at targets sampled from the model's predictive
//!   distribution: the "true Fisher");
//! - `D` exact columns `c_ij` with `sum_j c_ij c_ij^T = H_i` (GGN^model exactly, for tests);
//! - the loss itself at the true targets (GGN^loss, the empirical Fisher).
//!
//! Two losses: [`Mse`], the weighted per-pixel mean squared error of diffusion models
//! (`H_i = (2 w_i / D) I`), and [`SoftmaxCrossEntropy`] for classifiers
//! (`H_i = w_i (diag(p_i) - p_i p_i^T)` with `p_i = softmax(y_i)`).

use burn::prelude::*;
use burn::tensor::activation::softmax;
use foundation::loss::softmax_cross_entropy_per_example;
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use crate::fit::{mse_pseudo_gradients, CurvatureOutput};

/// Which output loss a curvature was fitted with (recorded in factor file headers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// Weighted per-pixel mean squared error ([`Mse`]).
    #[default]
    Mse,
    /// Softmax cross-entropy over classes ([`SoftmaxCrossEntropy`]).
    CrossEntropy,
}

impl LossKind {
    /// The loss as a trait object.
    pub fn loss(self) -> &'static dyn OutputLoss {
        match self {
            LossKind::Mse => &Mse,
            LossKind::CrossEntropy => &SoftmaxCrossEntropy,
        }
    }
}

impl std::fmt::Display for LossKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LossKind::Mse => "mse",
            LossKind::CrossEntropy => "cross-entropy",
        })
    }
}

/// A per-datum loss of the network output, as the curvature passes need it.
pub trait OutputLoss: Sync {
    /// Which loss this is.
    fn kind(&self) -> LossKind;

    /// The per-datum loss `[N]` of `out` at its true targets (weighted by `out.weight`).
    fn per_datum_loss(&self, out: &CurvatureOutput) -> Tensor<1>;

    /// GGN^model, sampled: a scalar whose gradient with respect to `out.output` is, for every
    /// datum, one pseudo-gradient `r_i` with `E[r_i r_i^T] = H_i` (drawn from `rng`).
    fn sampled_scalar(&self, out: &CurvatureOutput, rng: &mut dyn RngCore) -> Tensor<1>;

    /// GGN^loss: a scalar whose gradient with respect to `out.output` is, for every datum, the
    /// gradient of its loss at the true target.
    fn loss_scalar(&self, out: &CurvatureOutput) -> Tensor<1> {
        self.per_datum_loss(out).sum()
    }

    /// Number of exact passes (columns of the Hessian's square root): the output dimension.
    fn exact_passes(&self, out: &CurvatureOutput) -> usize {
        out.output.dims()[1]
    }

    /// GGN^model, exactly: the scalar of pass `j`, whose gradient with respect to `y` (a fresh
    /// forward pass with the same values as `first.output`) is column `c_ij` with
    /// `sum_j c_ij c_ij^T = H_i`.
    fn exact_scalar(&self, first: &CurvatureOutput, y: Tensor<2>, j: usize) -> Tensor<1>;
}

/// The weighted per-pixel mean squared error `w_i (1/D) ||target_i - y_i||^2` (diffusion).
#[derive(Clone, Copy, Debug, Default)]
pub struct Mse;

impl OutputLoss for Mse {
    fn kind(&self) -> LossKind {
        LossKind::Mse
    }

    fn per_datum_loss(&self, out: &CurvatureOutput) -> Tensor<1> {
        out.per_datum_loss()
    }

    fn sampled_scalar(&self, out: &CurvatureOutput, rng: &mut dyn RngCore) -> Tensor<1> {
        let [n, d] = out.output.dims();
        let device = out.output.device();
        let r = Tensor::<2>::from_data(
            TensorData::new(mse_pseudo_gradients(&mut &mut *rng, n, d), [n, d]),
            &device,
        );
        let r = match out.sqrt_weight_column() {
            None => r,
            Some(s) => r * s,
        };
        (out.output.clone() * r).sum()
    }

    fn loss_scalar(&self, out: &CurvatureOutput) -> Tensor<1> {
        let d = out.output.dims()[1];
        match out.weight {
            None => (out.target.clone() - out.output.clone()).square().sum().div_scalar(d as f64),
            Some(_) => out.per_datum_loss().sum(),
        }
    }

    fn exact_scalar(&self, first: &CurvatureOutput, y: Tensor<2>, j: usize) -> Tensor<1> {
        let d = first.output.dims()[1];
        let scale = (2.0 / d as f64).sqrt();
        let column = y.narrow(1, j, 1);
        let column = match first.sqrt_weight_column() {
            None => column,
            Some(s) => column * s,
        };
        column.sum().mul_scalar(scale)
    }
}

/// Softmax cross-entropy `-w_i sum_c target_ic log softmax(y_i)_c` with logits `y_i` and
/// one-hot (or probability) targets.
#[derive(Clone, Copy, Debug, Default)]
pub struct SoftmaxCrossEntropy;

/// Softmax probabilities of the (detached) logits, row-major `[N, C]`, in f64.
fn probabilities(out: &CurvatureOutput) -> Vec<f64> {
    softmax(out.output.clone().detach(), 1).into_data().try_into_vec_as::<f64>().expect("float data")
}

/// Per-datum weights `w_i` in f64 (1 when unweighted).
fn weights(out: &CurvatureOutput) -> Vec<f64> {
    let n = out.output.dims()[0];
    match &out.weight {
        None => vec![1.0; n],
        Some(w) => w.clone().detach().into_data().try_into_vec_as::<f64>().expect("float data"),
    }
}

/// Labels drawn from the categorical distributions of the rows of `probs` (`[n, c]`).
pub fn sample_labels(rng: &mut impl Rng, probs: &[f64], n: usize, c: usize) -> Vec<usize> {
    (0..n)
        .map(|i| {
            let row = &probs[i * c..(i + 1) * c];
            let u: f64 = rng.gen::<f64>() * row.iter().sum::<f64>();
            let mut acc = 0.0;
            for (k, p) in row.iter().enumerate() {
                acc += p;
                if u < acc {
                    return k;
                }
            }
            c - 1
        })
        .collect()
}

/// Cross-entropy pseudo-gradients `p_i - e_{y_i}` with labels `y_i ~ Cat(p_i)` drawn from `rng`
/// (`[n, c]` row-major): the gradient of the cross-entropy at a label sampled from the model.
/// Their covariance is `diag(p_i) - p_i p_i^T`, the Hessian of the cross-entropy in the logits.
pub fn cross_entropy_pseudo_gradients(rng: &mut impl Rng, probs: &[f64], n: usize, c: usize) -> Vec<f64> {
    let labels = sample_labels(rng, probs, n, c);
    let mut r = probs.to_vec();
    for (i, &y) in labels.iter().enumerate() {
        r[i * c + y] -= 1.0;
    }
    r
}

impl OutputLoss for SoftmaxCrossEntropy {
    fn kind(&self) -> LossKind {
        LossKind::CrossEntropy
    }

    fn per_datum_loss(&self, out: &CurvatureOutput) -> Tensor<1> {
        let ce = softmax_cross_entropy_per_example(out.output.clone(), out.target.clone());
        match &out.weight {
            None => ce,
            Some(w) => ce * w.clone(),
        }
    }

    fn sampled_scalar(&self, out: &CurvatureOutput, rng: &mut dyn RngCore) -> Tensor<1> {
        let [n, c] = out.output.dims();
        let probs = probabilities(out);
        let mut r = cross_entropy_pseudo_gradients(&mut &mut *rng, &probs, n, c);
        for (i, w) in weights(out).into_iter().enumerate() {
            let s = w.sqrt();
            r[i * c..(i + 1) * c].iter_mut().for_each(|v| *v *= s);
        }
        let r = Tensor::<2>::from_data(TensorData::new(r, [n, c]), &out.output.device());
        (out.output.clone() * r).sum()
    }

    /// Column `j`: `sqrt(w_i p_ij) (e_j - p_i)`; `sum_j` of their outer products is
    /// `w_i (diag(p_i) - p_i p_i^T)` because the `p_ij` sum to one.
    fn exact_scalar(&self, first: &CurvatureOutput, y: Tensor<2>, j: usize) -> Tensor<1> {
        let [n, c] = first.output.dims();
        let probs = probabilities(first);
        let w = weights(first);
        let mut col = vec![0.0f64; n * c];
        for i in 0..n {
            let s = (w[i] * probs[i * c + j]).sqrt();
            for k in 0..c {
                col[i * c + k] = s * (if k == j { 1.0 } else { 0.0 } - probs[i * c + k]);
            }
        }
        let col = Tensor::<2>::from_data(TensorData::new(col, [n, c]), &y.device());
        (y * col).sum()
    }
}
