//! Influence vs exact retraining on a linear-Gaussian model (f64): a linear map fitted by least
//! squares to Gaussian data. Its GGN is its Hessian, and K-FAC-expand is exact for one linear
//! layer with centred inputs, so the predicted change in a query's loss after removing k
//! training examples, `(1/N) sum_{n in R} tau(q, n)`, must match exact retraining to first order.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use curvature::factors::KfacApprox;
use curvature::fit::{fit_factors, CurvatureBatch, CurvatureOutput, GgnKind};
use curvature::layer::to_f64;
use curvature::precondition::per_datum_gradients;
use foundation::layers::TapLinear;
use foundation::rng::{normals, stream};
use foundation::tap::Tap;

fn dev() -> Device {
    foundation::device::f64_flex().autodiff()
}

const D_IN: usize = 3;
const D_OUT: usize = 2;

struct Batch<'a> {
    layer: &'a TapLinear,
    x: Tensor<2>,
    y: Tensor<2>,
}

impl CurvatureBatch for Batch<'_> {
    fn forward(&self, tap: &mut Tap) -> CurvatureOutput {
        CurvatureOutput::unweighted(self.layer.forward(self.x.clone(), tap), self.y.clone())
    }
    fn len(&self) -> usize {
        self.x.dims()[0]
    }
}

/// Least squares with bias on rows `keep`: returns (W [D_IN, D_OUT] as burn stores it, b).
fn least_squares(x: &[f64], y: &[f64], keep: &[usize]) -> (Vec<f64>, Vec<f64>) {
    let p = D_IN + 1;
    let xt =
        faer::Mat::<f64>::from_fn(keep.len(), p, |r, c| if c < D_IN { x[keep[r] * D_IN + c] } else { 1.0 });
    let yt = faer::Mat::<f64>::from_fn(keep.len(), D_OUT, |r, c| y[keep[r] * D_OUT + c]);
    let gram = xt.transpose() * &xt;
    let rhs = xt.transpose() * &yt;
    let sol = curvature::exact::damped_solve(&gram, 0.0, &rhs);
    let w = (0..D_IN * D_OUT).map(|k| sol[(k / D_OUT, k % D_OUT)]).collect();
    let b = (0..D_OUT).map(|o| sol[(D_IN, o)]).collect();
    (w, b)
}

fn query_loss(w: &[f64], b: &[f64], xq: &[f64], yq: &[f64]) -> f64 {
    (0..D_OUT)
        .map(|o| {
            let pred: f64 = (0..D_IN).map(|i| xq[i] * w[i * D_OUT + o]).sum::<f64>() + b[o];
            (yq[o] - pred).powi(2)
        })
        .sum::<f64>()
        / D_OUT as f64
}

#[test]
fn predicted_change_after_removal_matches_exact_retraining_to_first_order() {
    let d = dev();
    let n = 400;
    let mut rng = stream(31, 0, 0);
    let mut x: Vec<f64> = normals(&mut rng, n * D_IN).into_iter().map(f64::from).collect();
    // Centre the inputs exactly: the weight-bias cross block of the GGN then vanishes, and the
    // block-diagonal K-FAC is the exact Hessian.
    for i in 0..D_IN {
        let m = (0..n).map(|r| x[r * D_IN + i]).sum::<f64>() / n as f64;
        (0..n).for_each(|r| x[r * D_IN + i] -= m);
    }
    let true_w = [0.5, -1.0, 2.0, 0.3, -0.7, 1.1];
    let noise: Vec<f64> = normals(&mut rng, n * D_OUT).into_iter().map(|v| 0.5 * v as f64).collect();
    let y: Vec<f64> = (0..n * D_OUT)
        .map(|k| {
            let (r, o) = (k / D_OUT, k % D_OUT);
            (0..D_IN).map(|i| x[r * D_IN + i] * true_w[i * D_OUT + o]).sum::<f64>() + 0.2 + noise[k]
        })
        .collect();
    let all: Vec<usize> = (0..n).collect();
    let (w, b) = least_squares(&x, &y, &all);

    // The fitted model, at the optimum.
    let mut layer = TapLinear::new(D_IN, D_OUT, &mut stream(0, 0, 0), &d);
    layer.inner = Linear {
        weight: Param::from_tensor(Tensor::<2>::from_data(TensorData::new(w.clone(), [D_IN, D_OUT]), &d)),
        bias: Some(Param::from_tensor(Tensor::<1>::from_data(TensorData::new(b.clone(), [D_OUT]), &d))),
    };
    let xs = Tensor::<2>::from_data(TensorData::new(x.clone(), [n, D_IN]), &d);
    let ys = Tensor::<2>::from_data(TensorData::new(y.clone(), [n, D_OUT]), &d);
    let batch = Batch { layer: &layer, x: xs.clone(), y: ys.clone() };
    let curv = fit_factors(
        [batch],
        KfacApprox::Expand,
        GgnKind::ModelExact,
        &mut stream(1, 0, 0),
        &|_| "layer".into(),
        |_| {},
    )
    .eigendecompose();

    // Per-example gradients of the training loss (1/D)||y - f(x)||^2, and of the query's loss.
    let per_example = |xr: Tensor<2>, yr: Tensor<2>| {
        let mut tap = Tap::recording();
        let out = layer.forward(xr, &mut tap);
        let grads = (yr - out).square().sum().div_scalar(D_OUT as f64).backward();
        per_datum_gradients(tap.records(), &grads)
    };
    let u = per_example(xs, ys);
    let (xq, yq) = ([0.8, -0.4, 1.5], [1.0, -2.0]);
    let q = per_example(
        Tensor::<2>::from_data(TensorData::new(xq.to_vec(), [1, D_IN]), &d),
        Tensor::<2>::from_data(TensorData::new(yq.to_vec(), [1, D_OUT]), &d),
    );
    let tau = to_f64(curv.inverse_apply(q, 1e-12).matmul(u.transpose()));
    let base = query_loss(&w, &b, &xq, &yq);

    let mut worst = 0.0f64;
    for trial in 0..20u64 {
        // Remove k = 4 random examples.
        let mut idx: Vec<usize> = all.clone();
        let mut r = stream(trial, 9, 0);
        let removed: Vec<usize> =
            (0..4).map(|_| idx.swap_remove(rand::Rng::gen_range(&mut r, 0..idx.len()))).collect();
        let (w2, b2) = least_squares(&x, &y, &idx);
        let actual = query_loss(&w2, &b2, &xq, &yq) - base;
        let predicted: f64 = removed.iter().map(|&k| tau[k]).sum::<f64>() / n as f64;
        let err = (predicted - actual).abs() / actual.abs().max(1e-12);
        eprintln!("trial {trial}: predicted {predicted:+.3e}, actual {actual:+.3e}");
        // First order: the error is O(k/N) relative, plus the second-order term when the first nearly cancels.
        assert!(
            (predicted - actual).abs() < 0.05 * actual.abs() + 1e-4,
            "trial {trial}: predicted {predicted} vs actual {actual}"
        );
        worst = worst.max(err);
    }
    eprintln!("worst relative error {worst:.3}");
}
