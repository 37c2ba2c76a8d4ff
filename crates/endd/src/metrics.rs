//! Evaluation: % error, NLL, expected calibration error, misclassification detection (AUROC,
//! AUPR, prediction-rejection ratio) and out-of-distribution detection AUROC.

pub use foundation::stats::{auroc, spearman};

/// Index of the largest value (the first one on ties).
pub fn argmax(p: &[f64]) -> usize {
    p.iter().enumerate().fold(0, |best, (i, &v)| if v > p[best] { i } else { best })
}

/// Percentage of inputs whose most probable class (`probs: [N, K]`) is not the label.
pub fn error_percent(probs: &[f64], classes: usize, labels: &[usize]) -> f64 {
    let wrong = probs.chunks_exact(classes).zip(labels).filter(|(p, &y)| argmax(p) != y).count();
    100.0 * wrong as f64 / labels.len().max(1) as f64
}

/// Mean negative log-probability of the label, with probabilities floored at 1e-12.
pub fn nll(probs: &[f64], classes: usize, labels: &[usize]) -> f64 {
    let total: f64 = probs.chunks_exact(classes).zip(labels).map(|(p, &y)| -p[y].max(1e-12).ln()).sum();
    total / labels.len().max(1) as f64
}

/// Expected calibration error (percent) over `bins` equal-width bins of the top probability:
/// `Σ_b (n_b / N) |accuracy_b − confidence_b|`.
pub fn ece_percent(probs: &[f64], classes: usize, labels: &[usize], bins: usize) -> f64 {
    let mut count = vec![0usize; bins];
    let mut conf = vec![0.0; bins];
    let mut correct = vec![0.0; bins];
    for (p, &y) in probs.chunks_exact(classes).zip(labels) {
        let c = argmax(p);
        let b = ((p[c] * bins as f64) as usize).min(bins - 1);
        count[b] += 1;
        conf[b] += p[c];
        correct[b] += (c == y) as u8 as f64;
    }
    let n = labels.len().max(1) as f64;
    100.0 * (0..bins).filter(|&b| count[b] > 0).map(|b| (correct[b] - conf[b]).abs() / n).sum::<f64>()
}

/// Average precision of `scores` for finding the positives of `labels` (the area under the
/// precision-recall curve as a step function, scikit-learn's `average_precision_score`; tied
/// scores enter together). `None` without positives or on a length mismatch.
pub fn aupr(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let pos = labels.iter().filter(|&&l| l).count();
    if scores.len() != labels.len() || pos == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut seen, mut ap, mut last_recall) = (0usize, 0usize, 0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            tp += labels[order[j]] as usize;
            seen += 1;
            j += 1;
        }
        let recall = tp as f64 / pos as f64;
        ap += (recall - last_recall) * tp as f64 / seen as f64;
        last_recall = recall;
        i = j;
    }
    Some(ap)
}

/// Prediction-rejection ratio (the authors' `rejection.py`): inputs are rejected in decreasing
/// order of `uncertainty` (a rejected input counts as corrected); the curve is the fraction of
/// all inputs still misclassified against the fraction rejected. With `AR` the area between the
/// random-rejection line and a curve, `PRR = AR(uncertainty) / AR(oracle)` (1: rejects errors
/// first, 0: no better than random, negative: worse). `None` when there is no error or every
/// input is an error.
pub fn prediction_rejection_ratio(uncertainty: &[f64], errors: &[bool]) -> Option<f64> {
    let n = errors.len();
    let e = errors.iter().filter(|&&x| x).count();
    if n == 0 || e == 0 || e == n || uncertainty.len() != n {
        return None;
    }
    // Area under a curve given the errors in rejection order (trapezoid over k/n, k = 0..=n).
    let area = |order: &[usize]| {
        let mut left = e as f64;
        let mut a = 0.0;
        for &i in order {
            let next = left - errors[i] as u8 as f64;
            a += (left + next) / 2.0 / n as f64 / n as f64;
            left = next;
        }
        a
    };
    let random = e as f64 / n as f64 / 2.0;
    let mut by_unc: Vec<usize> = (0..n).collect();
    by_unc.sort_by(|&a, &b| uncertainty[b].total_cmp(&uncertainty[a]));
    let mut oracle: Vec<usize> = (0..n).collect();
    oracle.sort_by_key(|&i| !errors[i]);
    Some((random - area(&by_unc)) / (random - area(&oracle)))
}
