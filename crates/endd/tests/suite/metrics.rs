//! Metrics against hand-computed small cases.

use endd::metrics::{aupr, auroc, ece_percent, error_percent, nll, prediction_rejection_ratio};

#[test]
fn auroc_and_aupr_hand_cases() {
    let scores = [0.1, 0.4, 0.35, 0.8];
    let labels = [false, false, true, true];
    // Pairs (pos, neg): (0.35, 0.1) yes, (0.35, 0.4) no, (0.8, ·) yes twice: 3 of 4.
    assert_eq!(auroc(&scores, &labels), Some(0.75));
    // Descending: 0.8 (+), 0.4 (−), 0.35 (+), 0.1 (−): AP = 0.5·1 + 0.5·(2/3).
    let ap = aupr(&scores, &labels).expect("positives");
    assert!((ap - (0.5 + 1.0 / 3.0)).abs() < 1e-12, "{ap}");
    // Ties enter together: all tied gives the positive rate.
    assert!((aupr(&[1.0; 4], &labels).expect("positives") - 0.5).abs() < 1e-12);
    assert_eq!(auroc(&[1.0; 4], &labels), Some(0.5));
    assert_eq!(aupr(&scores, &[false; 4]), None);
}

#[test]
fn prediction_rejection_ratio_hand_cases() {
    // Two inputs, one error: rejecting it first is the oracle (1), rejecting the other first -1.
    assert_eq!(prediction_rejection_ratio(&[0.9, 0.1], &[true, false]), Some(1.0));
    assert_eq!(prediction_rejection_ratio(&[0.1, 0.9], &[true, false]), Some(-1.0));
    // Four inputs, errors at 0 and 3, rejection order 0, 2, 3, 1: curve 2/4, 1/4, 1/4, 0, 0
    // (area 0.1875), oracle area 0.125, random 0.25: PRR = 0.0625 / 0.125.
    let prr =
        prediction_rejection_ratio(&[0.9, 0.1, 0.5, 0.3], &[true, false, false, true]).expect("defined");
    assert!((prr - 0.5).abs() < 1e-12, "{prr}");
    assert_eq!(prediction_rejection_ratio(&[0.3, 0.2], &[false, false]), None);
}

#[test]
fn error_nll_ece_hand_case() {
    let probs = [0.9, 0.1, 0.6, 0.4];
    let labels = [0, 1];
    assert_eq!(error_percent(&probs, 2, &labels), 50.0);
    assert!((nll(&probs, 2, &labels) - (-(0.9f64.ln()) - 0.4f64.ln()) / 2.0).abs() < 1e-12);
    // Bin of 0.9: accuracy 1, confidence 0.9; bin of 0.6: accuracy 0, confidence 0.6.
    assert!((ece_percent(&probs, 2, &labels, 10) - 35.0).abs() < 1e-9);
}
