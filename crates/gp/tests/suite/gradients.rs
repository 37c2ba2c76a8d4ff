//! Gradients: exact gradient vs finite differences, stochastic estimators vs exact as probes grow,
//! RFF covariance vs the kernel matrix, free pathwise predictions vs exact predictions.

use crate::common;

use faer::Mat;
use gp::estimator::{estimate_gradient, exact_gradient};
use gp::features::RandomFeatures;
use gp::kernel::{Hyperparameters, KernelKind, KernelSystem};
use gp::predict::{metrics, predict_exact, predict_pathwise};
use gp::solvers::{cholesky_with_jitter, SolveOptions, Solver};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

const KINDS: [KernelKind; 4] =
    [KernelKind::Matern12, KernelKind::Matern32, KernelKind::Matern52, KernelKind::Rbf];

#[test]
fn exact_gradient_matches_finite_differences_for_every_kernel() {
    let (x, y) = common::synthetic(80, 3, 3);
    for kind in KINDS {
        let theta = common::hyper(3, 0.4);
        let system = KernelSystem::new(x.as_ref(), kind, &theta).unwrap();
        let (_, gradient) = exact_gradient(&system, &y).unwrap();
        let analytic = gradient.to_vec();
        let base = theta.to_vec();
        for k in 0..base.len() {
            let h = 1e-5 * base[k];
            let mll_at = |delta: f64| {
                let mut v = base.clone();
                v[k] += delta;
                let t = Hyperparameters::from_slice(&v).unwrap();
                exact_gradient(&KernelSystem::new(x.as_ref(), kind, &t).unwrap(), &y).unwrap().0
            };
            let numeric = (mll_at(h) - mll_at(-h)) / (2.0 * h);
            let scale = numeric.abs().max(1.0);
            assert!(
                (analytic[k] - numeric).abs() < 1e-5 * scale,
                "{kind}: parameter {k}: analytic {} vs finite difference {numeric}",
                analytic[k]
            );
        }
    }
}

/// Where the probe vectors come from.
#[derive(Clone, Copy, Debug)]
enum Probes {
    /// Standard estimator: z ~ N(0, I), right-hand factor Z.
    Gaussian,
    /// Pathwise estimator with exact prior samples z = L_K ξ + σ e ~ N(0, H), right-hand factor U.
    PathwiseExactPrior,
    /// Pathwise estimator with RFF prior samples (m features, shared by all probes, as in the
    /// reference), right-hand factor U.
    PathwiseRff(usize),
}

/// Mean relative error of the gradient estimate over `repeats` seeds with `probes` probe vectors;
/// solves are exact (Cholesky) so only the estimator's error is measured.
fn estimator_error(
    system: &KernelSystem,
    y: &[f64],
    exact: &[f64],
    source: Probes,
    probes: usize,
    repeats: u64,
) -> f64 {
    let n = system.n();
    let sigma = system.hyper().noise_scale;
    let k_factor = cholesky_with_jitter(&system.kernel_matrix(), "K", 1e-6).unwrap();
    let mut total = 0.0;
    for seed in 0..repeats {
        let mut rng = ChaCha8Rng::seed_from_u64(100 + seed);
        let normal = |rng: &mut ChaCha8Rng| -> f64 { StandardNormal.sample(rng) };
        let probe_matrix = match source {
            Probes::Gaussian => Mat::from_fn(n, probes, |_, _| normal(&mut rng)),
            Probes::PathwiseExactPrior => {
                let xi = Mat::from_fn(n, probes, |_, _| normal(&mut rng));
                let prior = k_factor.L() * &xi;
                Mat::from_fn(n, probes, |i, j| prior[(i, j)] + sigma * normal(&mut rng))
            }
            Probes::PathwiseRff(m) => {
                let features =
                    RandomFeatures::draw(system.kind(), system.dim(), m, probes, &mut rng).unwrap();
                let prior = features.sample_functions(system.points().view(), system.hyper().signal_scale);
                Mat::from_fn(n, probes, |i, j| prior[(i, j)] + sigma * normal(&mut rng))
            }
        };
        let b = Mat::from_fn(n, probes + 1, |i, j| if j == 0 { y[i] } else { probe_matrix[(i, j - 1)] });
        let out =
            Solver::Cholesky.solve(system, b.as_ref(), None, &SolveOptions::default(), &mut rng).unwrap();
        // The two estimators differ only in the right-hand factor: Z or U.
        let right = match source {
            Probes::Gaussian => b.as_ref().subcols(1, probes),
            _ => out.solution.as_ref().subcols(1, probes),
        };
        let g = estimate_gradient(system, out.solution.as_ref(), right).to_vec();
        total += common::relative_error(&g, exact);
    }
    total / repeats as f64
}

#[test]
fn both_estimators_approach_the_exact_gradient_as_probes_grow() {
    let (system, y) = common::system(300, 3, KernelKind::Matern32, 0.3);
    let exact = exact_gradient(&system, &y).unwrap().1.to_vec();
    for source in [Probes::Gaussian, Probes::PathwiseExactPrior] {
        let few = estimator_error(&system, &y, &exact, source, 8, 3);
        let many = estimator_error(&system, &y, &exact, source, 512, 3);
        eprintln!("{source:?}: relative gradient error {few:.4} (8 probes) -> {many:.4} (512 probes)");
        // Monte Carlo error falls like 1/√s: 64× more probes, 8× less error; ask for 3×.
        assert!(many < few / 3.0, "{source:?}: {few} -> {many}");
        assert!(many < 0.02, "{source:?}: error {many} with 512 probes");
    }
    // With RFF prior samples the features are shared by all probes, so a bias of order 1/√m remains
    // (the reference's "negligible bias"); it must still be small.
    let rff = estimator_error(&system, &y, &exact, Probes::PathwiseRff(20_000), 512, 2);
    eprintln!("PathwiseRff(20000): relative gradient error {rff:.4} (512 probes)");
    assert!(rff < 0.05, "pathwise with RFF probes: error {rff}");
}

#[test]
fn rff_covariance_approaches_the_kernel_matrix() {
    let (x, _) = common::synthetic(40, 3, 5);
    for kind in KINDS {
        let theta = common::hyper(3, 0.3);
        let system = KernelSystem::new(x.as_ref(), kind, &theta).unwrap();
        let k = system.kernel_matrix();
        let max_error = |m: usize| {
            let mut rng = ChaCha8Rng::seed_from_u64(9);
            let features = RandomFeatures::draw(kind, 3, m, 1, &mut rng).unwrap();
            let phi = features.feature_matrix(system.points().view(), theta.signal_scale);
            let cov = &phi * phi.transpose();
            let mut worst = 0.0f64;
            for j in 0..40 {
                for i in 0..40 {
                    worst = worst.max((cov[(i, j)] - k[(i, j)]).abs());
                }
            }
            worst / theta.signal_scale.powi(2)
        };
        let (coarse, fine) = (max_error(200), max_error(40_000));
        assert!(fine < coarse / 4.0, "{kind}: max error {coarse} (m=200) -> {fine} (m=40000)");
        assert!(fine < 0.05, "{kind}: max |ΦΦᵀ − K| / s² = {fine} with 40000 features");
    }
}

#[test]
fn pathwise_predictions_approach_exact_predictions() {
    let (x, y) = common::synthetic(300, 3, 21);
    let (x_test, y_test) = common::synthetic(50, 3, 22);
    let theta = common::hyper(3, 0.2);
    let system = KernelSystem::new(x.as_ref(), KernelKind::Matern32, &theta).unwrap();
    let exact = predict_exact(&system, &y, x_test.as_ref()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let probes = 256;
    let features = RandomFeatures::draw(KernelKind::Matern32, 3, 4000, probes, &mut rng).unwrap();
    let prior = features.sample_functions(system.points().view(), theta.signal_scale);
    let b = Mat::from_fn(300, probes + 1, |i, j| {
        if j == 0 {
            y[i]
        } else {
            prior[(i, j - 1)]
                + theta.noise_scale * {
                    let e: f64 = StandardNormal.sample(&mut rng);
                    e
                }
        }
    });
    let out = Solver::cg()
        .solve(
            &system,
            b.as_ref(),
            None,
            &SolveOptions { rtol_y: 1e-8, rtol_z: 1e-8, max_epochs: 1000.0 },
            &mut rng,
        )
        .unwrap();
    let sampled = predict_pathwise(&system, out.solution.as_ref(), &features, x_test.as_ref()).unwrap();
    assert!(common::relative_error(&sampled.mean, &exact.mean) < 1e-6, "means differ");
    // Variance from 256 samples: relative error of the average about 1/√128; ask for 25%.
    let ratio: f64 = sampled.variance.iter().zip(&exact.variance).map(|(a, b)| a / b).sum::<f64>() / 50.0;
    assert!((ratio - 1.0).abs() < 0.25, "mean variance ratio sampled/exact {ratio}");
    let (m_exact, m_sampled) = (metrics(&exact, &y_test).unwrap(), metrics(&sampled, &y_test).unwrap());
    assert!((m_exact.rmse - m_sampled.rmse).abs() < 1e-6);
    assert!((m_exact.log_likelihood - m_sampled.log_likelihood).abs() < 0.2, "{m_exact:?} vs {m_sampled:?}");
}

#[test]
fn vectorised_kernel_values_match_the_scalar_formulas() {
    // Squared distances from 0 to far in the tail, where the fast exp must still be accurate.
    let r2: Vec<f64> = (0..4000).map(|i| 1e-10 + (i as f64 / 40.0).powi(2)).collect();
    for kind in KINDS {
        let mut values = r2.clone();
        gp::kernel::kernel_values_in_place(kind, 1.7, &mut values);
        let mut unit = r2.clone();
        let mut weights = vec![0.0; r2.len()];
        gp::kernel::kernel_values_and_weights(kind, &mut unit, &mut weights);
        for (i, &d2) in r2.iter().enumerate() {
            let (v, w) = kind.unit_value_and_weight(d2);
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-14 * b.abs() + 1e-300;
            assert!(close(values[i], 1.7 * v), "{kind} value at r² = {d2}: {} vs {}", values[i], 1.7 * v);
            assert!(close(unit[i], v) && close(weights[i], w), "{kind} weight at r² = {d2}");
        }
    }
}

#[test]
fn vectorised_sin_cos_matches_std() {
    let x: Vec<f64> = (0..20_000).map(|i| (i as f64 - 10_000.0) * 0.0731).collect();
    let (mut s, mut c) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    gp::features::scaled_sin_cos(&x, 2.0, &mut s, &mut c);
    for (i, &v) in x.iter().enumerate() {
        assert!((s[i] - 2.0 * v.sin()).abs() < 1e-14, "sin({v}): {} vs {}", s[i] / 2.0, v.sin());
        assert!((c[i] - 2.0 * v.cos()).abs() < 1e-14, "cos({v}): {} vs {}", c[i] / 2.0, v.cos());
    }
}
