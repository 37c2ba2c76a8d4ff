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
