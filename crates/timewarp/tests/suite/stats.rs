//! ESS, block bootstrap and Jensen–Shannon against closed forms.

use rand::Rng;
use rand_distr::StandardNormal;
use timewarp::rng;
use timewarp::stats::{block_bootstrap_sd, ess, histogram2d, integrated_time, jensen_shannon};

fn ar1(phi: f64, n: usize, seed: u64) -> Vec<f64> {
    let mut r = rng::stream(seed, rng::CHAIN, 0);
    let mut x = 0.0;
    (0..n)
        .map(|_| {
            x = phi * x + r.sample::<f64, _>(StandardNormal);
            x
        })
        .collect()
}

#[test]
fn integrated_time_of_ar1_matches_the_closed_form() {
    let phi = 0.8;
    let x = ar1(phi, 200_000, 1);
    let tau = integrated_time(&x);
    let exact = (1.0 + phi) / (1.0 - phi);
    assert!((tau - exact).abs() < 0.1 * exact, "τ {tau} vs {exact}");
    let iid = ar1(0.0, 50_000, 2);
    assert!((ess(&iid) / 50_000.0 - 1.0).abs() < 0.1);
    assert_eq!(ess(&[1.0; 10]), 0.0);
}

#[test]
fn block_bootstrap_sd_matches_the_ar1_standard_error() {
    let phi = 0.8;
    let n = 100_000;
    let x = ar1(phi, n, 3);
    let sd = block_bootstrap_sd(&x, 200, 400, 5);
    // Var(mean) ≈ σ² τ / n with σ² = 1/(1 − φ²).
    let exact = (1.0 / (1.0 - phi * phi) * (1.0 + phi) / (1.0 - phi) / n as f64).sqrt();
    assert!((sd / exact - 1.0).abs() < 0.2, "bootstrap sd {sd} vs {exact}");
}

#[test]
fn jensen_shannon_bounds() {
    let p = histogram2d(&[[0.1, 0.1], [0.9, 0.9]], [0.0; 2], [1.0; 2], 2);
    assert!(jensen_shannon(&p, &p).abs() < 1e-15);
    let q = histogram2d(&[[0.1, 0.9], [0.9, 0.1]], [0.0; 2], [1.0; 2], 2);
    assert!((jensen_shannon(&p, &q) - 2f64.ln()).abs() < 1e-12);
}
