//! Chain statistics: autocorrelation and effective sample size (Timewarp's truncation at the first
//! non-positive lag), block-bootstrap standard errors, histograms and the Jensen–Shannon
//! divergence.

use foundation::rng::{stream_for, Purpose};
use rand::Rng;

use crate::rng;

/// Normalised autocorrelation ρ(k) for k = 0, 1, ... up to (excluding) the first non-positive
/// lag, or `max_lag`. Empty for a constant or empty series.
pub fn autocorrelation_positive(x: &[f64], max_lag: usize) -> Vec<f64> {
    let n = x.len();
    if n < 2 {
        return Vec::new();
    }
    let mean = x.iter().sum::<f64>() / n as f64;
    let d: Vec<f64> = x.iter().map(|v| v - mean).collect();
    let c0 = d.iter().map(|v| v * v).sum::<f64>() / n as f64;
    if c0 <= 0.0 {
        return Vec::new();
    }
    let mut rho = vec![1.0];
    for k in 1..max_lag.min(n - 1) {
        let ck = d[..n - k].iter().zip(&d[k..]).map(|(a, b)| a * b).sum::<f64>() / n as f64;
        let r = ck / c0;
        if r <= 0.0 {
            break;
        }
        rho.push(r);
    }
    rho
}

/// Integrated autocorrelation time τ = −1 + 2 Σ_{k≥0} ρ(k), the sum truncated at the first
/// non-positive lag (at least 1). A constant series gives +∞ (no information).
pub fn integrated_time(x: &[f64]) -> f64 {
    let rho = autocorrelation_positive(x, x.len());
    if rho.is_empty() {
        return f64::INFINITY;
    }
    (-1.0 + 2.0 * rho.iter().sum::<f64>()).max(1.0)
}

/// Effective sample size n / τ ([`integrated_time`]); 0 for a constant series.
pub fn ess(x: &[f64]) -> f64 {
    let t = integrated_time(x);
    if t.is_finite() {
        x.len() as f64 / t
    } else {
        0.0
    }
}

/// Standard deviation over `resamples` moving-block bootstrap resamples (blocks of `block`
/// consecutive values, drawn with replacement) of the mean of `x`. Seeded from
/// [`Purpose::Timewarp`]'s bootstrap stream.
pub fn block_bootstrap_sd(x: &[f64], block: usize, resamples: usize, seed: u64) -> f64 {
    let n = x.len();
    if n == 0 || resamples < 2 {
        return f64::NAN;
    }
    let block = block.clamp(1, n);
    let n_blocks = n.div_ceil(block);
    let mut r = stream_for(seed, Purpose::Timewarp { stream: rng::BOOTSTRAP }, 0);
    let means: Vec<f64> = (0..resamples)
        .map(|_| {
            let mut s = 0.0;
            let mut count = 0;
            for _ in 0..n_blocks {
                let start = r.gen_range(0..=n - block);
                s += x[start..start + block].iter().sum::<f64>();
                count += block;
            }
            s / count as f64
        })
        .collect();
    let m = means.iter().sum::<f64>() / resamples as f64;
    (means.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (resamples - 1) as f64).sqrt()
}

/// A normalised 2-D histogram over the box `[lo, hi]²` (per axis) with `bins` × `bins` cells;
/// points outside are clamped to the border cells.
pub fn histogram2d(points: &[[f64; 2]], lo: [f64; 2], hi: [f64; 2], bins: usize) -> Vec<f64> {
    let mut h = vec![0.0; bins * bins];
    for p in points {
        let idx = |a: usize| {
            let t = ((p[a] - lo[a]) / (hi[a] - lo[a]) * bins as f64).floor();
            (t.max(0.0) as usize).min(bins - 1)
        };
        h[idx(0) * bins + idx(1)] += 1.0;
    }
    let total = points.len().max(1) as f64;
    h.iter_mut().for_each(|v| *v /= total);
    h
}

/// Jensen–Shannon divergence (natural log, in [0, ln 2]) of two distributions on the same bins.
pub fn jensen_shannon(p: &[f64], q: &[f64]) -> f64 {
    let kl = |a: &[f64], m: &[f64]| -> f64 {
        a.iter().zip(m).filter(|(x, _)| **x > 0.0).map(|(x, y)| x * (x / y).ln()).sum()
    };
    let m: Vec<f64> = p.iter().zip(q).map(|(a, b)| 0.5 * (a + b)).collect();
    0.5 * kl(p, &m) + 0.5 * kl(q, &m)
}
