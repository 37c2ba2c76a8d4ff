//! `foundation::stats` against hand-computed values.

use foundation::stats::{auroc, bootstrap_ci, mean_se, pearson, ranks, spearman};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn mean_and_standard_error_match_the_hand_computation() {
    // mean 2, sample variance ((1 + 0 + 1) / 2) = 1, s.e. = 1 / sqrt(3).
    let (m, se) = mean_se(&[1.0, 2.0, 3.0]);
    assert!(close(m, 2.0) && close(se, 1.0 / 3f64.sqrt()));
    // mean 5, deviations -3,-1,1,3 -> variance 20/3, s.e. sqrt(20/3/4).
    let (m, se) = mean_se(&[2.0, 4.0, 6.0, 8.0]);
    assert!(close(m, 5.0) && close(se, (20.0f64 / 12.0).sqrt()));
    let (m, se) = mean_se(&[7.0]);
    assert!(close(m, 7.0) && se.is_nan());
}

#[test]
fn ranks_average_ties() {
    assert_eq!(ranks(&[10.0, 20.0, 20.0, 5.0, 20.0]), vec![2.0, 4.0, 4.0, 1.0, 4.0]);
    assert_eq!(ranks(&[3.0, 1.0, 2.0]), vec![3.0, 1.0, 2.0]);
}

#[test]
fn spearman_perfect_inverse_and_tied_rankings() {
    let a = [1.0, 2.0, 3.0, 4.0, 5.0];
    // Any increasing transform ranks the same: +1; decreasing: -1.
    assert!(close(spearman(&a, &[2.0, 4.0, 8.0, 16.0, 1000.0]), 1.0));
    assert!(close(spearman(&a, &[5.0, 4.0, 3.0, 2.0, 1.0]), -1.0));
    // No ties: 1 - 6 sum d^2 / (n (n^2 - 1)); ranks of b are 2,1,4,3,5: sum d^2 = 4.
    let b = [2.0, 1.0, 4.0, 3.0, 5.0];
    assert!(close(spearman(&a, &b), 1.0 - 6.0 * 4.0 / (5.0 * 24.0)));
    // Ties: b = [1, 1, 2] has ranks [1.5, 1.5, 3]; against [1, 2, 3] the Pearson of ranks is
    // cov = ((-1)(-0.5) + 0(-0.5) + 1(1)) = 1.5, var_a = 2, var_b = 0.25 + 0.25 + 1 = 1.5,
    // rho = 1.5 / sqrt(2 * 1.5) = sqrt(3) / 2.
    assert!(close(spearman(&[1.0, 2.0, 3.0], &[1.0, 1.0, 2.0]), 3f64.sqrt() / 2.0));
    // A constant side correlates with nothing.
    assert_eq!(pearson(&[1.0, 2.0, 3.0], &[4.0, 4.0, 4.0]), 0.0);
}

#[test]
fn auroc_of_separable_inverse_and_tied_data() {
    let labels = [false, false, true, true, false, true];
    assert_eq!(auroc(&[0.1, 0.2, 0.8, 0.9, 0.3, 0.7], &labels), Some(1.0));
    assert_eq!(auroc(&[0.9, 0.8, 0.2, 0.1, 0.7, 0.3], &labels), Some(0.0));
    assert_eq!(auroc(&[0.5; 6], &labels), Some(0.5));
    // Positives {0.4, 0.6}, negatives {0.5, 0.1}: pairs above: (0.4 > 0.1), (0.6 > 0.5),
    // (0.6 > 0.1) = 3 of 4.
    assert_eq!(auroc(&[0.4, 0.6, 0.5, 0.1], &[true, true, false, false]), Some(0.75));
    assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
}

#[test]
fn bootstrap_interval_is_seeded_and_brackets_the_mean() {
    let v: Vec<f64> = (0..50).map(|i| (i % 7) as f64).collect();
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    let a = bootstrap_ci(&v, mean, 2000, 0.95, 3).unwrap();
    assert_eq!(Some(a), bootstrap_ci(&v, mean, 2000, 0.95, 3));
    let m = mean(&v);
    assert!(a.low < m && m < a.high, "{a:?} vs {m}");
    // The width is about 2 x 1.96 standard errors.
    let (_, se) = mean_se(&v);
    let width = a.high - a.low;
    assert!((width / (2.0 * 1.96 * se) - 1.0).abs() < 0.2, "width {width}, s.e. {se}");
    // A constant sample has a degenerate interval.
    let c = bootstrap_ci(&[2.0; 10], mean, 100, 0.9, 0).unwrap();
    assert_eq!((c.low, c.high), (2.0, 2.0));
    assert!(bootstrap_ci(&[], mean, 100, 0.9, 0).is_none());
}
