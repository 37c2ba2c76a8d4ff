//! Linear datamodelling score (spec p1 §3.2): does an attribution method rank the outcomes of
//! retraining on random subsets the way retraining actually ranks them?
//!
//! For query q and subset `S_j` the prediction is the sum of the scores of the *removed*
//! examples, `sum_{n not in S_j} score[q][n]` (positive score = removing n raises the
//! measurement); the LDS of q is the Spearman correlation over subsets between predictions and
//! the measured values (averaged over retraining seeds).

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use foundation::rng::{stream_for, Purpose};
use foundation::stats::{bootstrap_ci, Interval};

/// `m` random subsets of `0..n`, each of size `round(alpha * n)`, sorted; subset j depends only on
/// `(seed, j)`, so growing `m` keeps the earlier subsets.
pub fn random_subsets(n: usize, m: usize, alpha: f64, seed: u64) -> Vec<Vec<usize>> {
    let size = ((alpha * n as f64).round() as usize).clamp(1, n);
    (0..m)
        .map(|j| {
            let mut idx: Vec<usize> = (0..n).collect();
            idx.shuffle(&mut stream_for(seed, Purpose::LdsSubsets, j as u64));
            let mut s = idx[..size].to_vec();
            s.sort_unstable();
            s
        })
        .collect()
}

pub use foundation::stats::{mean_se, pearson, ranks, spearman};

/// Predicted measurement change of every (subset, query): `sum_{n not in S_j} scores[q][n]`,
/// as `[M][Q]`. `scores` is row-major `[Q, n_train]`.
pub fn removal_predictions(scores: &[f32], n_train: usize, subsets: &[Vec<usize>]) -> Vec<Vec<f64>> {
    let q = scores.len() / n_train;
    let totals: Vec<f64> =
        (0..q).map(|qi| scores[qi * n_train..(qi + 1) * n_train].iter().map(|&s| s as f64).sum()).collect();
    subsets
        .iter()
        .map(|s| {
            (0..q)
                .map(|qi| {
                    let row = &scores[qi * n_train..(qi + 1) * n_train];
                    totals[qi] - s.iter().map(|&n| row[n] as f64).sum::<f64>()
                })
                .collect()
        })
        .collect()
}

/// LDS of every query: Spearman over subsets between `predicted[j][q]` and `measured[j][q]`.
pub fn lds_per_query(predicted: &[Vec<f64>], measured: &[Vec<f64>]) -> Vec<f64> {
    assert_eq!(predicted.len(), measured.len(), "subset counts differ");
    let q = measured.first().map_or(0, |m| m.len());
    (0..q)
        .map(|qi| {
            let p: Vec<f64> = predicted.iter().map(|r| r[qi]).collect();
            let m: Vec<f64> = measured.iter().map(|r| r[qi]).collect();
            spearman(&p, &m)
        })
        .collect()
}

/// Element-wise mean over seeds of `[K][M][Q]` measurements -> `[M][Q]`.
pub fn seed_mean(per_seed: &[Vec<Vec<f64>>]) -> Vec<Vec<f64>> {
    let k = per_seed.len() as f64;
    let mut out = per_seed[0].clone();
    for s in &per_seed[1..] {
        for (o, r) in out.iter_mut().zip(s) {
            for (a, b) in o.iter_mut().zip(r) {
                *a += b;
            }
        }
    }
    out.iter_mut().flatten().for_each(|v| *v /= k);
    out
}

/// The "exact retraining" ceiling per query: Spearman over subsets between one seed's
/// measurements and the mean of the other seeds', averaged over seeds (spec p1 §2).
pub fn seed_ceiling(per_seed: &[Vec<Vec<f64>>]) -> Vec<f64> {
    let k = per_seed.len();
    assert!(k >= 2, "the ceiling needs at least two seeds");
    let q = per_seed[0][0].len();
    let mut out = vec![0.0; q];
    for s in 0..k {
        let others: Vec<Vec<Vec<f64>>> =
            per_seed.iter().enumerate().filter(|(i, _)| *i != s).map(|(_, v)| v.clone()).collect();
        for (o, r) in out.iter_mut().zip(lds_per_query(&per_seed[s], &seed_mean(&others))) {
            *o += r / k as f64;
        }
    }
    out
}

/// One method's LDS at one damping.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LdsResult {
    /// Method name.
    pub method: String,
    /// Damping (`None` for methods without one).
    pub lambda: Option<f64>,
    /// Mean Spearman over queries.
    pub mean: f64,
    /// Standard error over queries.
    pub se: f64,
    /// Per-query values.
    pub per_query: Vec<f64>,
}

impl LdsResult {
    /// Summarise per-query LDS values.
    pub fn new(method: &str, lambda: Option<f64>, per_query: Vec<f64>) -> Self {
        let (mean, se) = mean_se(&per_query);
        Self { method: method.to_string(), lambda, mean, se, per_query }
    }
}

/// The Spearman-Brown prophecy formula: the reliability of a mean of `n` times as many
/// independent, equally noisy repeats as a measurement whose reliability is `r`,
/// `n r / (1 + (n - 1) r)`. With `n = 2` it is the split-half correction `2 r / (1 + r)`.
/// Defined for `r > -1 / (n - 1)`; exact for Pearson correlations of signal plus independent
/// noise of equal variance per repeat. Below that range (a strongly negative `r`: no
/// reliability at all) it returns -1.
pub fn spearman_brown(r: f64, n: f64) -> f64 {
    let denominator = 1.0 + (n - 1.0) * r;
    if denominator <= 0.0 {
        return -1.0;
    }
    (n * r / denominator).max(-1.0)
}

/// Every split of `k` seeds into two disjoint halves of `k / 2` seeds each (rounded down; for
/// odd `k` one seed sits out, a different one in different splits), each unordered pair once, in
/// a fixed order; at most `max` of them (the first `max`).
pub fn seed_splits(k: usize, max: usize) -> Vec<(Vec<usize>, Vec<usize>)> {
    let h = k / 2;
    let mut out = Vec::new();
    if h == 0 {
        return out;
    }
    // Subsets of size h as bit masks, in increasing order.
    let halves: Vec<u64> = (0u64..1 << k).filter(|m| m.count_ones() as usize == h).collect();
    let seeds = |m: u64| (0..k).filter(|i| m >> i & 1 == 1).collect::<Vec<_>>();
    for &a in &halves {
        for &b in &halves {
            // Disjoint, and each unordered pair once: `a` holds the lowest seed of the two.
            if a & b == 0 && a.trailing_zeros() < b.trailing_zeros() {
                out.push((seeds(a), seeds(b)));
                if out.len() == max {
                    return out;
                }
            }
        }
    }
    out
}

/// The ceiling of an LDS whose target is the mean over `K` seeds, per query: how well that
/// K-seed mean agrees with itself, as the split-half reliability with the Spearman-Brown
/// correction. For every split of the seeds into two halves of `h = floor(K / 2)` seeds
/// ([`seed_splits`], at most 64 splits), `r` = Spearman over subsets between the two
/// half-means; `r` is averaged over the splits and stepped up from `h` to `K` seeds with
/// [`spearman_brown`]`(r, K / h)` (`2r / (1 + r)` for even `K`). `per_seed` is `[K][M][Q]`.
///
/// A perfect attribution (the noise-free outcome of every subset) would correlate with the
/// K-seed mean at about the square root of this reliability (the correlation of a measurement
/// with its true value), which is therefore the highest LDS any method can reach;
/// [`seed_ceiling`] (one seed against the mean of the others) is lower than both.
pub fn split_half_reliability(per_seed: &[Vec<Vec<f64>>]) -> Vec<f64> {
    let k = per_seed.len();
    assert!(k >= 2, "split-half reliability needs at least two seeds");
    let q = per_seed[0].first().map_or(0, |r| r.len());
    let splits = seed_splits(k, 64);
    let mut r = vec![0.0; q];
    for (a, b) in &splits {
        let mean_of =
            |half: &[usize]| seed_mean(&half.iter().map(|&s| per_seed[s].clone()).collect::<Vec<_>>());
        for (acc, v) in r.iter_mut().zip(lds_per_query(&mean_of(a), &mean_of(b))) {
            *acc += v / splits.len() as f64;
        }
    }
    let n = k as f64 / (k / 2) as f64;
    r.into_iter().map(|r| spearman_brown(r, n)).collect()
}

/// A paired comparison over queries: the per-query differences `a - b`, their mean, standard
/// error and a 95 % percentile-bootstrap confidence interval of the mean
/// (`foundation::stats::bootstrap_ci`, 2000 resamples, seeded).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairedDifference {
    /// Mean difference.
    pub mean: f64,
    /// Standard error over queries.
    pub se: f64,
    /// 95 % confidence interval of the mean.
    pub ci: Interval,
}

impl PairedDifference {
    /// Bootstrap resamples of the interval.
    pub const RESAMPLES: usize = 2000;

    /// Compares `a` with `b` query by query (equal lengths, at least one query).
    pub fn new(a: &[f64], b: &[f64], seed: u64) -> Self {
        assert_eq!(a.len(), b.len(), "paired values need the same queries");
        let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        let (mean, se) = mean_se(&d);
        let ci = bootstrap_ci(&d, |v| v.iter().sum::<f64>() / v.len() as f64, Self::RESAMPLES, 0.95, seed)
            .unwrap_or(Interval { low: f64::NAN, high: f64::NAN });
        Self { mean, se, ci }
    }

    /// Which way the comparison comes out: [`Verdict::AAbove`] when the whole interval is above
    /// zero, [`Verdict::BAbove`] when it is below, [`Verdict::Unresolved`] when it includes 0.
    pub fn verdict(&self) -> Verdict {
        if self.ci.low > 0.0 {
            Verdict::AAbove
        } else if self.ci.high < 0.0 {
            Verdict::BAbove
        } else {
            Verdict::Unresolved
        }
    }

    /// `+1.2 [+0.3, +2.1]`, in percentage points.
    pub fn format_points(&self) -> String {
        format!("{:+.1} [{:+.1}, {:+.1}]", 100.0 * self.mean, 100.0 * self.ci.low, 100.0 * self.ci.high)
    }
}

/// The outcome of a [`PairedDifference`] `a - b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// `a` is higher: the 95 % interval lies above 0.
    AAbove,
    /// `b` is higher: the interval lies below 0.
    BAbove,
    /// The interval includes 0.
    Unresolved,
}
