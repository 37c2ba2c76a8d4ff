//! The evaluation machinery on cases with known answers: rank statistics, the LDS of exact
//! influence on a model whose retraining is linear in the subset, the LDS of exact and random
//! scores on an additive datamodel with retraining noise (closed form), the seed ceiling, TRAK's
//! kernel solve against a Cholesky solve, and the random projection.

use attribution::baselines::{grad_dot, pixel_cosine, RandomProjection, TrakScorer};
use attribution::lds::{
    lds_per_query, mean_se, random_subsets, ranks, removal_predictions, seed_ceiling, seed_mean, spearman,
    LdsResult,
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
