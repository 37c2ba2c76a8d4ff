//! Shared helpers: histogram checks against a reference with a tolerance from the effective
//! sample size of each bin's indicator series.

use timewarp::stats::ess;

/// Bins of `values` (equal bins over `[lo, hi]`; values outside count in no bin) compared with
/// `reference`: every bin's |p̂ − p| must be below `z` standard errors, the standard error being
/// √(p(1−p)/ESS) with the ESS of that bin's indicator series. Returns the largest |p̂ − p| / se.
pub fn check_histogram(values: &[f64], lo: f64, hi: f64, reference: &[f64], z: f64) -> f64 {
    let bins = reference.len();
    let mut worst: f64 = 0.0;
    for (b, &p) in reference.iter().enumerate() {
        let (a, c) = (lo + (hi - lo) * b as f64 / bins as f64, lo + (hi - lo) * (b + 1) as f64 / bins as f64);
        let ind: Vec<f64> = values.iter().map(|&v| if v >= a && v < c { 1.0 } else { 0.0 }).collect();
        let p_hat = ind.iter().sum::<f64>() / ind.len() as f64;
        if p < 1e-3 {
            assert!(p_hat < 5e-3, "bin {b}: reference {p:.2e}, sampled {p_hat:.2e}");
            continue;
        }
        let n_eff = ess(&ind).max(1.0);
        let se = (p * (1.0 - p) / n_eff).sqrt();
        let zb = (p_hat - p).abs() / se;
        assert!(
            zb < z,
            "bin {b} [{a:.2}, {c:.2}): sampled {p_hat:.4}, reference {p:.4}, {zb:.1} se (ESS {n_eff:.0})"
        );
        worst = worst.max(zb);
    }
    worst
}
