//! Fitting the curvature: forward passes with a recording tap, output-space "pseudo-gradients"
//! back-propagated through the network, and the factor / correction accumulators.

use burn::prelude::*;
use diffusion::tap::Tap;
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::factors::{CorrectionAccumulator, EigenCurvature, FactorAccumulator, KfacApprox, KfacFactors};

/// Which Gauss-Newton matrix is approximated (spec p1 §1.4). The per-datum loss is the
/// per-pixel mean squared error `(1/D) ||target - y||^2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GgnKind {
    /// GGN^model (recommended): linearise the network only, `E[J^T (2/D) I J]`, estimated with one
    /// Monte-Carlo pseudo-gradient `r ~ N(0, (2/D) I)` per datum back-propagated from the output.
    Model,
    /// GGN^model computed exactly ("type-2"): D backward passes per batch, one per output
    /// coordinate scaled by `sqrt(2/D)`. For small models and tests.
    ModelExact,
    /// GGN^loss (empirical-Fisher-like): the gradient of the per-datum loss itself.
    Loss,
}

/// One batch of data for the curvature: runs the model forward (on an autodiff device) with the
/// given tap and returns its outputs `[N, D]` and the regression targets `[N, D]` (used by
/// [`GgnKind::Loss`] only).
pub trait CurvatureBatch {
    /// Forward pass; `tap` records every covered layer.
    fn forward(&self, tap: &mut Tap) -> (Tensor<2>, Tensor<2>);
    /// N, the number of data in the batch.
    fn len(&self) -> usize;
    /// Whether the batch is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `n * d` draws of N(0, 2/d): the output-space pseudo-gradients whose covariance is the
/// Hessian `(2/d) I` of the per-pixel mean squared error.
pub fn mse_pseudo_gradients(rng: &mut impl Rng, n: usize, d: usize) -> Vec<f32> {
    let scale = (2.0 / d as f64).sqrt();
    (0..n * d).map(|_| (rng.sample::<f64, _>(StandardNormal) * scale) as f32).collect()
}

/// Run the backward passes of one batch for `ggn` and hand each (records, gradients) to `sink`.
/// Returns the number of data in the batch.
pub fn backward_passes<B: CurvatureBatch>(
    batch: &B,
    ggn: GgnKind,
    rng: &mut impl Rng,
    mut sink: impl FnMut(&[diffusion::tap::TapRecord], &burn::tensor::Gradients, bool),
) -> usize {
    let mut tap = Tap::recording();
    let (y, target) = batch.forward(&mut tap);
    let [n, d] = y.dims();
    let device = y.device();
    match ggn {
        GgnKind::Model => {
            let r = Tensor::<2>::from_data(TensorData::new(mse_pseudo_gradients(rng, n, d), [n, d]), &device);
            let grads = (y * r).sum().backward();
            sink(tap.records(), &grads, true);
        }
        GgnKind::Loss => {
            let grads = (target - y).square().sum().div_scalar(d as f64).backward();
            sink(tap.records(), &grads, true);
        }
        GgnKind::ModelExact => {
            let scale = (2.0 / d as f64).sqrt();
            let mut first = Some((tap, y));
            for j in 0..d {
                let (tap_j, y_j) = match first.take() {
                    Some(v) => v,
                    None => {
                        let mut t = Tap::recording();
                        let (y, _) = batch.forward(&mut t);
                        (t, y)
                    }
                };
                let grads = y_j.narrow(1, j, 1).sum().mul_scalar(scale).backward();
                sink(tap_j.records(), &grads, j == 0);
            }
        }
    }
    n
}

/// Pass 1: the Kronecker factors over all `batches`.
pub fn fit_factors<B: CurvatureBatch>(
    batches: impl IntoIterator<Item = B>,
    approx: KfacApprox,
    ggn: GgnKind,
    rng: &mut impl Rng,
    names: &dyn Fn(u64) -> String,
    mut progress: impl FnMut(usize),
) -> KfacFactors {
    let mut acc = FactorAccumulator::new(approx);
    for batch in batches {
        let n = backward_passes(&batch, ggn, rng, |records, grads, first| {
            if first {
                acc.add_activations(records, names);
                acc.add_data(batch.len());
            }
            acc.add_gradients(records, grads);
        });
        progress(n);
    }
    acc.finish()
}

/// Pass 2 (EK-FAC): re-estimate the eigenvalues in the Kronecker eigenbasis on fresh batches.
pub fn fit_correction<B: CurvatureBatch>(
    curvature: &EigenCurvature,
    batches: impl IntoIterator<Item = B>,
    ggn: GgnKind,
    rng: &mut impl Rng,
    mut progress: impl FnMut(usize),
) -> EigenCurvature {
    let mut acc = CorrectionAccumulator::new(curvature);
    for batch in batches {
        let n = backward_passes(&batch, ggn, rng, |records, grads, first| {
            if first {
                acc.add_data(batch.len());
            }
            acc.add(records, grads);
        });
        progress(n);
    }
    acc.finish()
}
