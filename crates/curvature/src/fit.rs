//! Fitting the curvature: forward passes with a recording tap, output-space "pseudo-gradients"
//! back-propagated through the network, and the factor / correction accumulators.

use burn::prelude::*;
use foundation::tap::Tap;
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::factors::{CorrectionAccumulator, EigenCurvature, FactorAccumulator, KfacApprox, KfacFactors};
use crate::loss::{Mse, OutputLoss};

/// Which Gauss-Newton matrix is approximated (spec p1 §1.4), for the batch's output loss
/// ([`CurvatureBatch::output_loss`], [`crate::loss`]). The formulas below are those of the default
/// loss, the weighted per-pixel mean squared error `w_i (1/D) ||target_i - y_i||^2` of
/// [`CurvatureOutput`], whose Hessian in the output is `(2 w_i / D) I`; for softmax
/// cross-entropy, `Model` samples labels from the model's predictive distribution and `Loss` uses
/// the true labels (the empirical Fisher).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GgnKind {
    /// GGN^model (recommended): linearise the network only, `E[J^T (2 w_i/D) I J]`, estimated with
    /// one Monte-Carlo pseudo-gradient `r ~ N(0, (2 w_i/D) I)` per datum back-propagated from the
    /// output.
    Model,
    /// GGN^model computed exactly ("type-2"): D backward passes per batch, one per output
    /// coordinate scaled by `sqrt(2 w_i/D)`. For small models and tests.
    ModelExact,
    /// GGN^loss (empirical-Fisher-like): the gradient of the per-datum loss itself.
    Loss,
}

/// What one forward pass of a [`CurvatureBatch`] gives: the outputs, the targets and the
/// per-datum weights of the loss (for the default MSE, `w_i (1/D) ||target_i - y_i||^2`; for
/// cross-entropy the targets are one-hot labels and the outputs logits).
pub struct CurvatureOutput {
    /// Network outputs `[N, D]` (on an autodiff device, every covered layer tapped).
    pub output: Tensor<2>,
    /// Regression targets `[N, D]` (used by [`GgnKind::Loss`] only).
    pub target: Tensor<2>,
    /// Per-datum loss weights `w_i` `[N]`; `None` means all 1.
    pub weight: Option<Tensor<1>>,
}

impl CurvatureOutput {
    /// Unweighted outputs and targets (`w_i = 1`).
    pub fn unweighted(output: Tensor<2>, target: Tensor<2>) -> Self {
        Self { output, target, weight: None }
    }

    /// The per-datum loss `w_i (1/D) ||target_i - y_i||^2` `[N]` whose Gauss-Newton matrix the
    /// curvature approximates.
    pub fn per_datum_loss(&self) -> Tensor<1> {
        let n = self.output.dims()[0];
        let mse = (self.output.clone() - self.target.clone()).square().mean_dim(1).reshape([n]);
        match &self.weight {
            None => mse,
            Some(w) => mse * w.clone(),
        }
    }

    /// `sqrt(w_i)` as a column `[N, 1]` (the factor by which datum i's output-space
    /// pseudo-gradients scale), or `None` when unweighted.
    pub(crate) fn sqrt_weight_column(&self) -> Option<Tensor<2>> {
        let n = self.output.dims()[0];
        self.weight.as_ref().map(|w| w.clone().sqrt().reshape([n, 1]))
    }
}

/// One batch of data for the curvature: runs the model forward (on an autodiff device) with the
/// given tap and returns its outputs, targets and loss weights.
pub trait CurvatureBatch {
    /// Forward pass; `tap` records every covered layer.
    fn forward(&self, tap: &mut Tap) -> CurvatureOutput;
    /// N, the number of data in the batch.
    fn len(&self) -> usize;
    /// Whether the batch is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The loss of the outputs (default: the weighted per-pixel MSE of diffusion models).
    fn output_loss(&self) -> &dyn OutputLoss {
        &Mse
    }
    /// The batch as two halves (first data, then the rest) whose passes may run concurrently on
    /// disjoint autodiff graphs, or `None` (the default) to run it as one pass. The halves'
    /// output loss must be this batch's, and their data in order must be this batch's data.
    fn split(&self) -> Option<[Box<dyn CurvatureBatch + Send + '_>; 2]> {
        None
    }
}

/// `n * d` draws of N(0, 2/d): the output-space pseudo-gradients whose covariance is the
/// Hessian `(2/d) I` of the per-pixel mean squared error (scaled by `sqrt(w_i)` per datum for a
/// weighted loss).
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
    mut sink: impl FnMut(&[foundation::tap::TapRecord], &burn::tensor::Gradients, bool),
) -> usize {
    let mut tap = Tap::recording();
    let out = batch.forward(&mut tap);
    let loss = batch.output_loss();
    let n = out.output.dims()[0];
    match ggn {
        GgnKind::Model => {
            let grads = loss.sampled_scalar(&out, rng).backward();
            sink(tap.records(), &grads, true);
        }
        GgnKind::Loss => {
            let grads = loss.loss_scalar(&out).backward();
            sink(tap.records(), &grads, true);
        }
        GgnKind::ModelExact => {
            let passes = loss.exact_passes(&out);
            let mut first = Some((tap, out.output.clone()));
            for j in 0..passes {
                let (tap_j, y_j) = match first.take() {
                    Some(v) => v,
                    None => {
                        let mut t = Tap::recording();
                        let y = batch.forward(&mut t).output;
                        (t, y)
                    }
                };
                let grads = loss.exact_scalar(&out, y_j, j).backward();
                sink(tap_j.records(), &grads, j == 0);
            }
        }
    }
    n
}

/// The single-backward-pass kinds ([`GgnKind::Model`], [`GgnKind::Loss`]) of a batch that
/// [`CurvatureBatch::split`]s: both halves' forward passes run concurrently, the pseudo-gradients
/// are drawn from `rng` for the first half then the second (the draws of one whole-batch pass),
/// both backward passes run concurrently and `stats` reduces each to a partial result, returned in
/// half order. `None` when the batch does not split or `ggn` is [`GgnKind::ModelExact`].
fn concurrent_passes<B: CurvatureBatch + ?Sized, S: Send>(
    batch: &B,
    ggn: GgnKind,
    rng: &mut impl Rng,
    stats: impl Fn(&[foundation::tap::TapRecord], &burn::tensor::Gradients) -> S + Sync,
) -> Option<[S; 2]> {
    if ggn == GgnKind::ModelExact {
        return None;
    }
    let [a, b] = batch.split()?;
    let forward = |half: Box<dyn CurvatureBatch + Send + '_>| {
        let mut tap = Tap::recording();
        let out = half.forward(&mut tap);
        (tap, out)
    };
    let ((tap_a, out_a), (tap_b, out_b)) = rayon::join(|| forward(a), || forward(b));
    let loss = batch.output_loss();
    let mut scalar = |out: &CurvatureOutput| match ggn {
        GgnKind::Loss => loss.loss_scalar(out),
        _ => loss.sampled_scalar(out, rng),
    };
    let (s_a, s_b) = (scalar(&out_a), scalar(&out_b));
    drop((out_a, out_b));
    let backward = |tap: Tap, s: Tensor<1>| stats(tap.records(), &s.backward());
    let (r_a, r_b) = rayon::join(|| backward(tap_a, s_a), || backward(tap_b, s_b));
    Some([r_a, r_b])
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
        let halves = concurrent_passes(&batch, ggn, rng, |records, grads| {
            let mut part = FactorAccumulator::new(approx);
            part.add_activations(records, &|_| String::new());
            part.add_gradients(records, grads);
            part
        });
        if let Some(halves) = halves {
            halves.into_iter().for_each(|part| acc.merge(part, names));
            acc.add_data(batch.len());
            progress(batch.len());
            continue;
        }
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
        let halves = concurrent_passes(&batch, ggn, rng, |records, grads| {
            let mut part = CorrectionAccumulator::new(curvature);
            part.add(records, grads);
            part
        });
        if let Some(halves) = halves {
            halves.into_iter().for_each(|part| acc.merge(part));
            acc.add_data(batch.len());
            progress(batch.len());
            continue;
        }
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
