//! The evaluation machinery on cases with known answers: rank statistics, the LDS of exact
//! influence on a model whose retraining is linear in the subset, the LDS of exact and random
//! scores on an additive datamodel with retraining noise (closed form), the seed ceiling, TRAK's
//! kernel solve against a Cholesky solve, the random projection, and the split-half reliability
//! of a K-seed mean on signal plus independent noise (closed form).

use attribution::baselines::{grad_dot, pixel_cosine, RandomProjection, TrakScorer};
use attribution::benchmark::BinnedCurve;
use attribution::lds::{
    lds_per_query, mean_se, random_subsets, ranks, removal_predictions, seed_ceiling, seed_mean, seed_splits,
    spearman, spearman_brown, split_half_reliability, LdsResult, PairedDifference, Verdict,
};
use burn::prelude::*;
use faer::Mat;
use foundation::rng::{normals, stream};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn dev() -> Device {
    Device::flex()
}

#[test]
fn ranks_average_ties_and_spearman_matches_the_closed_form() {
    assert_eq!(ranks(&[3.0, 1.0, 2.0, 2.0]), vec![4.0, 1.0, 2.5, 2.5]);
    let a = [1.0, 2.0, 3.0, 4.0, 5.0];
    assert!((spearman(&a, &[2.0, 4.0, 6.0, 8.0, 100.0]) - 1.0).abs() < 1e-12);
    assert!((spearman(&a, &[5.0, 4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
    // Without ties Spearman = 1 - 6 sum d^2 / (n (n^2 - 1)).
    let b = [2.0, 1.0, 4.0, 3.0, 5.0];
    let d2: f64 = ranks(&a).iter().zip(ranks(&b)).map(|(x, y)| (x - y).powi(2)).sum();
    assert!((spearman(&a, &b) - (1.0 - 6.0 * d2 / (5.0 * 24.0))).abs() < 1e-12);
    let (m, se) = mean_se(&[1.0, 2.0, 3.0]);
    assert!((m - 2.0).abs() < 1e-12 && (se - (1.0f64 / 3.0).sqrt()).abs() < 1e-12);
}

#[test]
fn subsets_are_seeded_sorted_and_prefix_stable() {
    let s = random_subsets(100, 8, 0.5, 3);
    assert_eq!(s.len(), 8);
    for sub in &s {
        assert_eq!(sub.len(), 50);
        assert!(sub.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
    }
    assert_eq!(random_subsets(100, 4, 0.5, 3), s[..4].to_vec());
    assert_ne!(random_subsets(100, 4, 0.5, 4), s[..4].to_vec());
}

/// Mean estimation: theta(S) = mean of x_n over S, loss 1/2 ||x - theta||^2 (H = I), measurement
/// m_q(theta) = w_q . theta. With |S| fixed, retraining is exactly linear in the removed set, so
/// exact influence tau(q, n) = w_q . (theta* - x_n) must give LDS = 1 for every query, and the
/// opposite sign must give -1.
#[test]
fn exact_influence_has_lds_one_on_a_model_linear_in_the_subset() {
    let (n, dim, q, m) = (60, 3, 5, 16);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let x: Vec<Vec<f64>> = (0..n).map(|_| (0..dim).map(|_| rng.gen_range(-1.0..1.0)).collect()).collect();
    let w: Vec<Vec<f64>> = (0..q).map(|_| (0..dim).map(|_| rng.gen_range(-1.0..1.0)).collect()).collect();
    let mean = |idx: &[usize]| -> Vec<f64> {
        (0..dim).map(|k| idx.iter().map(|&i| x[i][k]).sum::<f64>() / idx.len() as f64).collect()
    };
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(u, v)| u * v).sum::<f64>();
    let theta = mean(&(0..n).collect::<Vec<_>>());
    let scores: Vec<f32> = (0..q)
        .flat_map(|qi| {
            let w = &w[qi];
            let theta = &theta;
            x.iter().map(move |xn| {
                let g: Vec<f64> = theta.iter().zip(xn).map(|(t, v)| t - v).collect();
                dot(w, &g) as f32
            })
        })
        .collect();
    let subsets = random_subsets(n, m, 0.5, 7);
    // "Retraining": the exact minimiser on each subset, measured.
    let measured: Vec<Vec<f64>> =
        subsets.iter().map(|s| (0..q).map(|qi| dot(&w[qi], &mean(s))).collect()).collect();
    let predicted = removal_predictions(&scores, n, &subsets);
    let lds = LdsResult::new("exact", None, lds_per_query(&predicted, &measured));
    for v in &lds.per_query {
        assert!((v - 1.0).abs() < 1e-9, "LDS {v}");
    }
    let flipped: Vec<f32> = scores.iter().map(|s| -s).collect();
    let lds = lds_per_query(&removal_predictions(&flipped, n, &subsets), &measured);
    assert!(lds.iter().all(|v| (v + 1.0).abs() < 1e-9), "sign convention: {lds:?}");
    // Identical seeds reach the ceiling exactly; independent noise lowers it.
    assert!(seed_ceiling(&[measured.clone(), measured.clone()]).iter().all(|v| (v - 1.0).abs() < 1e-12));
    let noisy: Vec<Vec<f64>> =
        measured.iter().map(|r| r.iter().map(|v| v + rng.gen_range(-0.5..0.5)).collect()).collect();
    let c = seed_ceiling(&[measured.clone(), noisy]);
    assert!(c.iter().all(|v| *v < 1.0) && mean_se(&c).0 > 0.0);
}

/// The LDS chain (subsets, removal predictions, seed mean, Spearman, the seed ceiling) on an
/// additive datamodel with retraining noise, where the answer is known in closed form. Query q's
/// outcome of training on S is `f_q(S) = sum_{n in S} a_qn + noise` with independent Gaussian
/// noise per (seed, subset, query), scaled so that the correlation between the true effect
/// `sum_{n in S} a_qn` (variance `k (N - k) / (N (N - 1)) sum_n (a_qn - mean_q)^2` over random
/// k-subsets) and the two-seed mean outcome is exactly `rho = 0.8`. The exact scores
/// `-a_qn` (removing n lowers f_q by a_qn) must then reach the Spearman correlation of a
/// bivariate normal, `(6/pi) asin(rho/2) = 0.7859`; the seed ceiling (one seed against the other,
/// correlation `1 / (1 + 2 (1/rho^2 - 1)) = 0.4706`) `(6/pi) asin(0.2353) = 0.4536`; random scores
/// 0. With 300 subsets and 24 queries the standard errors of these means are 0.005 to 0.012
/// (measured: 0.7838 +- 0.0046 and 0.4393 +- 0.0082), and the bounds are 4 to 5 of them.
#[test]
fn lds_of_an_additive_datamodel_with_retraining_noise_matches_its_closed_form() {
    let (n, q, m, rho) = (100usize, 24usize, 300usize, 0.8f64);
    let effects: Vec<Vec<f64>> = (0..q)
        .map(|qi| normals(&mut stream(21, 0, qi as u64), n).into_iter().map(f64::from).collect())
        .collect();
    let subsets = random_subsets(n, m, 0.5, 5);
    let k = subsets[0].len() as f64;
    let noise_sd: Vec<f64> = effects
        .iter()
        .map(|a| {
            let mean = a.iter().sum::<f64>() / n as f64;
            let ss: f64 = a.iter().map(|v| (v - mean).powi(2)).sum();
            let signal_var = k * (n as f64 - k) / (n as f64 * (n as f64 - 1.0)) * ss;
            // Two seeds average the noise: var(mean noise) = sd^2 / 2 = signal_var (1/rho^2 - 1).
            (2.0 * signal_var * (1.0 / (rho * rho) - 1.0)).sqrt()
        })
        .collect();
    let per_seed: Vec<Vec<Vec<f64>>> = (0..2u64)
        .map(|seed| {
            subsets
                .iter()
                .enumerate()
                .map(|(j, s)| {
                    let z = normals(&mut stream(22, seed, j as u64), q);
                    (0..q)
                        .map(|qi| {
                            s.iter().map(|&i| effects[qi][i]).sum::<f64>() + noise_sd[qi] * z[qi] as f64
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    let measured = seed_mean(&per_seed);
    let exact: Vec<f32> = effects.iter().flat_map(|a| a.iter().map(|&v| -v as f32)).collect();
    let lds =
        LdsResult::new("exact", None, lds_per_query(&removal_predictions(&exact, n, &subsets), &measured));
    let want = 6.0 / std::f64::consts::PI * (rho / 2.0).asin();
    assert!((lds.mean - want).abs() < 0.02, "exact scores: LDS {} +- {} vs {want}", lds.mean, lds.se);
    let r2 = 1.0 / (1.0 + 2.0 * (1.0 / (rho * rho) - 1.0));
    let want_ceiling = 6.0 / std::f64::consts::PI * (r2 / 2.0).asin();
    let (ceiling, se) = mean_se(&seed_ceiling(&per_seed));
    assert!((ceiling - want_ceiling).abs() < 0.04, "seed ceiling {ceiling} +- {se} vs {want_ceiling}");
    let random: Vec<f32> = normals(&mut stream(23, 0, 0), q * n);
    let lds =
        LdsResult::new("random", None, lds_per_query(&removal_predictions(&random, n, &subsets), &measured));
    assert!(lds.mean.abs() < 0.05, "random scores: LDS {} +- {}", lds.mean, lds.se);
}

#[test]
fn trak_scores_match_a_cholesky_solve_of_the_damped_kernel() {
    let (n, k, q, lambda) = (40, 6, 3, 0.05);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let phi: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let phq: Vec<f32> = (0..q * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let t = |v: &[f32], r, c| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [r, c]), &dev());
    let scorer = TrakScorer::new(t(&phi, n, k), vec![lambda]);
    let got = &scorer.score(t(&phq, q, k))[0];
    let phi_m = Mat::<f64>::from_fn(n, k, |i, j| phi[i * k + j] as f64);
    let kernel = Mat::<f64>::from_fn(k, k, |a, b| {
        (0..n).map(|i| phi_m[(i, a)] * phi_m[(i, b)]).sum::<f64>() / n as f64
            + if a == b { lambda } else { 0.0 }
    });
    let chol = kernel.llt(faer::Side::Lower).expect("SPD");
    let rhs = Mat::<f64>::from_fn(k, q, |a, j| phq[j * k + a] as f64);
    let sol = faer::linalg::solvers::Solve::solve(&chol, &rhs);
    for j in 0..q {
        for i in 0..n {
            let want: f64 = (0..k).map(|a| sol[(a, j)] * phi_m[(i, a)]).sum();
            let g = got[j * n + i] as f64;
            assert!((g - want).abs() < 1e-4 * (1.0 + want.abs()), "q{j} n{i}: {g} vs {want}");
        }
    }
}

#[test]
fn random_projection_is_seeded_and_preserves_inner_products() {
    let (n, p) = (4, 5000); // crosses the 2048-row block boundary
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let g: Vec<f32> = (0..n * p).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let g = Tensor::<2>::from_data(TensorData::new(g, [n, p]), &dev());
    let proj = RandomProjection { dim: 4096, seed: 9 };
    let a = proj.project(g.clone()).into_data().try_to_vec::<f32>().unwrap();
    let b = proj.project(g.clone()).into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(a, b, "same seed, same features");
    // Johnson-Lindenstrauss: Gram matrices agree to a few percent of the norms.
    let exact = grad_dot(g.clone(), g.clone());
    let pf = proj.project(g);
    let approx = grad_dot(pf.clone(), pf);
    for i in 0..n {
        let norm = exact[i * n + i];
        for j in 0..n {
            let (e, a) = (exact[i * n + j], approx[i * n + j]);
            assert!((e - a).abs() < 0.1 * norm, "({i},{j}): {a} vs {e}");
        }
    }
}

#[test]
fn pixel_cosine_is_one_on_itself_and_symmetric() {
    let d = 16;
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let x: Vec<f32> = (0..3 * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let s = pixel_cosine(&x, &x, d);
    for i in 0..3 {
        assert!((s[i * 3 + i] - 1.0).abs() < 1e-5);
        for j in 0..3 {
            assert!((s[i * 3 + j] - s[j * 3 + i]).abs() < 1e-6 && s[i * 3 + j] <= 1.0 + 1e-6);
        }
    }
}

#[test]
fn seed_splits_are_disjoint_halves_each_pair_once() {
    for (k, count) in [(2, 1), (3, 3), (4, 3), (5, 15), (6, 10)] {
        let splits = seed_splits(k, usize::MAX);
        assert_eq!(splits.len(), count, "K = {k}");
        for (a, b) in &splits {
            assert_eq!((a.len(), b.len()), (k / 2, k / 2));
            assert!(a.iter().all(|s| !b.contains(s) && *s < k) && b.iter().all(|s| *s < k));
            assert!(a[0] < b[0], "each unordered pair once, lowest seed first");
        }
    }
    assert_eq!(seed_splits(5, 4).len(), 4);
    assert!(seed_splits(1, 8).is_empty());
}

/// Spearman-Brown on Pearson reliabilities is exact: for signal (variance 1) plus independent
/// noise (variance s2) per seed, a mean of h seeds has reliability `1 / (1 + s2 / h)`, and
/// stepping it up by `K / h` gives `1 / (1 + s2 / K)`; `n = 2` is `2r / (1 + r)`.
#[test]
fn spearman_brown_steps_a_mean_of_h_seeds_up_to_k_seeds() {
    for s2 in [0.1, 1.0, 4.0] {
        for (h, k) in [(1usize, 2usize), (2, 4), (2, 5), (3, 7)] {
            let rel = |n: usize| 1.0 / (1.0 + s2 / n as f64);
            let got = spearman_brown(rel(h), k as f64 / h as f64);
            assert!((got - rel(k)).abs() < 1e-12, "s2 {s2}, {h} -> {k}: {got} vs {}", rel(k));
        }
    }
    assert!((spearman_brown(0.6, 2.0) - 1.2 / 1.6).abs() < 1e-15);
    assert_eq!(spearman_brown(-0.9, 3.0), -1.0, "no reliability: clamped, not a pole");
}

/// The known answer: outcome of (seed, subset, query) = signal (N(0, 1) per subset and query)
/// plus independent noise (N(0, s2) per seed). The two half-means (h seeds each) are bivariate
/// normal with correlation `rho_h = 1 / (1 + s2 / h)`, so their Spearman correlation is
/// `(6/pi) asin(rho_h / 2)`, and the reported reliability must be that value stepped up by
/// `K / h`. With M = 3000 subsets and 6 queries the standard error of the mean is about 0.005;
/// the bound is 0.02. The seed-vs-seed figure (one seed against the mean of the others) is
/// lower, as its closed form says.
#[test]
fn split_half_reliability_of_signal_plus_seed_noise_matches_its_closed_form() {
    let (m, q, s2) = (3000usize, 6usize, 1.5f64);
    let signal: Vec<Vec<f64>> = (0..m)
        .map(|j| normals(&mut stream(31, 0, j as u64), q).into_iter().map(f64::from).collect())
        .collect();
    let spearman_of_normals = |rho: f64| 6.0 / std::f64::consts::PI * (rho / 2.0).asin();
    for k in [4usize, 5] {
        let per_seed: Vec<Vec<Vec<f64>>> = (0..k as u64)
            .map(|seed| {
                signal
                    .iter()
                    .enumerate()
                    .map(|(j, sig)| {
                        let z = normals(&mut stream(32, seed, j as u64), q);
                        sig.iter().zip(z).map(|(s, z)| s + s2.sqrt() * z as f64).collect()
                    })
                    .collect()
            })
            .collect();
        let h = k / 2;
        let want = spearman_brown(spearman_of_normals(1.0 / (1.0 + s2 / h as f64)), k as f64 / h as f64);
        let (got, se) = mean_se(&split_half_reliability(&per_seed));
        assert!((got - want).abs() < 0.02, "K = {k}: reliability {got} +- {se} vs {want}");
        // One seed against the mean of the other K - 1: Pearson sqrt(rel(1) rel(K - 1)).
        let rel = |n: usize| 1.0 / (1.0 + s2 / n as f64);
        let want_seed = spearman_of_normals((rel(1) * rel(k - 1)).sqrt());
        let (seed_vs_seed, _) = mean_se(&seed_ceiling(&per_seed));
        assert!(
            (seed_vs_seed - want_seed).abs() < 0.02,
            "K = {k}: seed vs seed {seed_vs_seed} vs {want_seed}"
        );
        assert!(seed_vs_seed < got - 0.1, "the seed-vs-seed figure sits below the K-seed reliability");
    }
    // No noise: every half agrees exactly.
    let exact = vec![signal.clone(); 4];
    assert!(split_half_reliability(&exact).iter().all(|r| (r - 1.0).abs() < 1e-12));
}

#[test]
fn paired_differences_give_intervals_and_verdicts_both_ways() {
    let a: Vec<f64> = (0..40).map(|i| 0.3 + 0.01 * (i % 7) as f64).collect();
    let b: Vec<f64> = a.iter().map(|x| x - 0.05).collect();
    let d = PairedDifference::new(&a, &b, 0);
    assert!((d.mean - 0.05).abs() < 1e-12 && d.se < 1e-12);
    assert!((d.ci.low - 0.05).abs() < 1e-12 && (d.ci.high - 0.05).abs() < 1e-12, "a constant shift: {d:?}");
    assert_eq!(d.verdict(), Verdict::AAbove);
    assert_eq!(PairedDifference::new(&b, &a, 0).verdict(), Verdict::BAbove);
    // Differences of +-0.1 around 0: the interval straddles 0 and contains the mean.
    let c: Vec<f64> = a.iter().enumerate().map(|(i, x)| x + if i % 2 == 0 { 0.1 } else { -0.1 }).collect();
    let d = PairedDifference::new(&c, &a, 0);
    assert_eq!(d.verdict(), Verdict::Unresolved);
    assert!(d.ci.low < 0.0 && d.ci.high > 0.0 && d.ci.low <= d.mean && d.mean <= d.ci.high);
}

#[test]
fn binned_loss_curve_averages_models_and_ranges() {
    // Two models, 100 steps: loss 1/step and 3/step; their mean is 2/step.
    let curves: Vec<Vec<f32>> =
        [1.0f32, 3.0].iter().map(|c| (1..=100).map(|t| c / t as f32).collect()).collect();
    let b = BinnedCurve::new(&curves, 4).unwrap();
    assert_eq!(b.models, 2);
    assert_eq!((b.bins[0].first, b.bins[0].last, b.bins[3].first, b.bins[3].last), (1, 25, 76, 100));
    let want: f64 = (76..=100).map(|t| 2.0 / t as f64).sum::<f64>() / 25.0;
    assert!((b.bins[3].mean - want).abs() < 1e-6);
    assert!((b.bins[3].se - want / 2.0).abs() < 1e-6, "s.e. of two models at 1x and 3x the mean");
    let last: f64 = (91..=100).map(|t| 2.0 / t as f64).sum::<f64>() / 10.0;
    assert!((b.last_tenth - last).abs() < 1e-6 && b.tenth_before > b.last_tenth);
    assert!(BinnedCurve::new(&[vec![1.0; 5]], 4).is_none(), "too few steps");
    assert!(BinnedCurve::new(&[vec![1.0; 50], vec![1.0; 40]], 4).is_none(), "unequal lengths");
}
