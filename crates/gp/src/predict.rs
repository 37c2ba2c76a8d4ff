//! Predictions and test metrics.
//!
//! - Pathwise ("free") predictions reuse the last solve `[α | U]` of a pathwise run: posterior
//!   samples are `f_j(x*) + K(x*, X)(α − u_j)`, so the mean is `K(x*, X) α` and the variance is
//!   `(1/s) Σ_j (f_j(x*) − K(x*, X) u_j)² + σ²`; one kernel product with the test points, no solve.
//! - Exact predictions by dense Cholesky, for small n and as the oracle.

use faer::linalg::solvers::Solve;
use faer::linalg::triangular_solve::solve_lower_triangular_in_place;
use faer::{Accum, Mat, MatRef, Par};
use serde::{Deserialize, Serialize};

use crate::error::{GpError, Result};
use crate::features::RandomFeatures;
use crate::kernel::{kernel_matrix, KernelSystem};
use crate::solvers::{cholesky_with_jitter, MAX_RELATIVE_JITTER};

/// Predictive mean and variance (of y, i.e. including the noise σ²) at test points.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Predictions {
    /// Predictive means.
    pub mean: Vec<f64>,
    /// Predictive variances of the noisy targets.
    pub variance: Vec<f64>,
}

/// Test metrics on the z-scored targets.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Root mean squared error of the predictive mean.
    pub rmse: f64,
    /// Mean Gaussian predictive log-likelihood `mean_i log N(y_i | μ_i, v_i)`.
    pub log_likelihood: f64,
}

/// RMSE and mean log-likelihood of `predictions` against `targets`.
pub fn metrics(predictions: &Predictions, targets: &[f64]) -> Result<Metrics> {
    if predictions.mean.len() != targets.len() {
        return Err(GpError::DimensionMismatch {
            what: "predictions vs test targets".into(),
            expected: targets.len(),
            found: predictions.mean.len(),
        });
    }
    let m = targets.len().max(1) as f64;
    let mut sq = 0.0;
    let mut ll = 0.0;
    for ((&mu, &var), &y) in predictions.mean.iter().zip(&predictions.variance).zip(targets) {
        let err = y - mu;
        sq += err * err;
        ll += -0.5 * (2.0 * std::f64::consts::PI * var).ln() - 0.5 * err * err / var;
    }
    Ok(Metrics { rmse: (sq / m).sqrt(), log_likelihood: ll / m })
}

/// Pathwise predictions from a pathwise solve: `system` at the θ of that solve, `solution` its
/// `[α | U]` (n × (s+1)), `features` the RFF randomness that built its probes.
pub fn predict_pathwise(
    system: &KernelSystem,
    solution: MatRef<'_, f64>,
    features: &RandomFeatures,
    x_test: MatRef<'_, f64>,
) -> Result<Predictions> {
    system.check_test_inputs(x_test)?;
    let s = solution.ncols() - 1;
    let test_pts = system.scale_points(x_test);
    let m = test_pts.len();
    let mut products = Mat::<f64>::zeros(m, s + 1);
    system.cross_matmul(test_pts.view(), solution, products.as_mut(), Accum::Replace, 1.0);
    let prior = features.sample_functions(test_pts.view(), system.hyper().signal_scale);
    let noise = system.noise_variance();
    let mean = (0..m).map(|i| products[(i, 0)]).collect();
    let variance = (0..m)
        .map(|i| {
            (0..s).map(|j| (prior[(i, j)] - products[(i, j + 1)]).powi(2)).sum::<f64>() / s as f64 + noise
        })
        .collect();
    Ok(Predictions { mean, variance })
}

/// Exact GP predictions by dense Cholesky of `K + σ²I` (O(n³); the oracle).
pub fn predict_exact(system: &KernelSystem, y: &[f64], x_test: MatRef<'_, f64>) -> Result<Predictions> {
    let n = system.n();
    system.check_targets(y)?;
    system.check_test_inputs(x_test)?;
    let llt = cholesky_with_jitter(&system.system_matrix(), "K + σ²I", MAX_RELATIVE_JITTER)?;
    let mut alpha = Mat::from_fn(n, 1, |i, _| y[i]);
    llt.solve_in_place(alpha.as_mut());
    let test_pts = system.scale_points(x_test);
    let signal = system.signal_variance();
    // K(X, X*), n × m.
    let mut cross = kernel_matrix(system.kind(), signal, system.points().view(), test_pts.view());
    let m = test_pts.len();
    let mean = (0..m).map(|t| (0..n).map(|i| cross[(i, t)] * alpha[(i, 0)]).sum()).collect();
    solve_lower_triangular_in_place(llt.L(), cross.as_mut(), Par::rayon(0));
    let noise = system.noise_variance();
    let variance = (0..m)
        .map(|t| {
            let explained: f64 = (0..n).map(|i| cross[(i, t)].powi(2)).sum();
            (signal - explained).max(0.0) + noise
        })
        .collect();
    Ok(Predictions { mean, variance })
}
