//! Closed-form Dirichlet uncertainties against Monte Carlo, and TU = DU + KU.

use endd::uncertainty::{dirichlet_log_density, dirichlet_uncertainty, ensemble_uncertainty, entropy};
use foundation::rng::stream;
use rand::Rng;
use rand_distr::{Distribution, Gamma};

/// `n` draws from `Dir(alpha)` (normalised Gamma draws).
fn draws(alpha: &[f64], n: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = stream(seed, 0xD1, 0);
    let gammas: Vec<Gamma<f64>> =
        alpha.iter().map(|&a| Gamma::new(a, 1.0).expect("positive shape")).collect();
    (0..n)
        .map(|_| {
            let g: Vec<f64> = gammas.iter().map(|d| d.sample(&mut rng).max(1e-300)).collect();
            let s: f64 = g.iter().sum();
            g.into_iter().map(|v| v / s).collect()
        })
        .collect()
}

/// Mean and a tolerance of 5 standard errors (a false failure about once in 1.7 million), plus
/// 1e-10 for rounding (a constant integrand has no spread).
fn mean_tol(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, 5.0 * (var / n).sqrt() + 1e-10)
}

fn check(name: &str, mc: &[f64], closed: f64) {
    let (mean, tol) = mean_tol(mc);
    assert!((mean - closed).abs() < tol, "{name}: Monte Carlo {mean} ± {tol} vs closed form {closed}");
}

#[test]
fn dirichlet_closed_forms_match_monte_carlo() {
    let cases: [&[f64]; 3] = [&[0.7, 2.0, 5.5], &[1.0, 1.0, 1.0, 1.0], &[3.0, 0.9, 12.0, 1.5, 0.6]];
    for (s, alpha) in cases.iter().enumerate() {
        let n = 40_000;
        let a = draws(alpha, n, 100 + s as u64);
        let b = draws(alpha, n, 200 + s as u64);
        let u = dirichlet_uncertainty(alpha);
        let a0: f64 = alpha.iter().sum();
        let mean: Vec<f64> = alpha.iter().map(|x| x / a0).collect();
        // Expected data uncertainty: E[H(π)].
        check("DU", &a.iter().map(|p| entropy(p)).collect::<Vec<_>>(), u.data);
        // Mutual information: E[KL(π || E π)] (= TU − DU, so this checks TU = DU + KU).
        let kl = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(x, y)| x * (x.ln() - y.ln())).sum::<f64>();
        check("MI", &a.iter().map(|p| kl(p, &mean)).collect::<Vec<_>>(), u.knowledge);
        assert!((u.total - u.data - u.knowledge).abs() < 1e-12);
        assert!((u.total - entropy(&mean)).abs() < 1e-12);
        // EPKL: E[KL(π || π')] over independent draws.
        check("EPKL", &a.iter().zip(&b).map(|(p, q)| kl(p, q)).collect::<Vec<_>>(), u.epkl);
        // Differential entropy: E[−ln Dir(π | α)].
        check(
            "differential entropy",
            &a.iter().map(|p| -dirichlet_log_density(p, alpha)).collect::<Vec<_>>(),
            u.diff_entropy,
        );
    }
}

#[test]
fn ensemble_total_is_data_plus_knowledge() {
    let mut rng = stream(3, 0xE5, 0);
    for _ in 0..20 {
        let (m, k) = (1 + rng.gen_range(0..8), 2 + rng.gen_range(0..6));
        let mut probs = Vec::new();
        for _ in 0..m {
            let raw: Vec<f64> = (0..k).map(|_| rng.gen_range(0.01..1.0f64).powi(3)).collect();
            let s: f64 = raw.iter().sum();
            probs.extend(raw.iter().map(|v| v / s));
        }
        let u = ensemble_uncertainty(&probs, m, k);
        let mut mean = vec![0.0; k];
        for j in 0..m {
            for c in 0..k {
                mean[c] += probs[j * k + c] / m as f64;
            }
        }
        // KU as the mean KL of the members from their mean: the mutual information.
        let mi: f64 = (0..m)
            .map(|j| (0..k).map(|c| probs[j * k + c] * (probs[j * k + c] / mean[c]).ln()).sum::<f64>())
            .sum::<f64>()
            / m as f64;
        assert!((u.total - u.data - u.knowledge).abs() < 1e-12);
        assert!((u.knowledge - mi).abs() < 1e-12, "{} vs {mi}", u.knowledge);
        // EPKL as the mean over ordered pairs of KL(π_j || π_l).
        let mut epkl = 0.0;
        for j in 0..m {
            for l in 0..m {
                epkl += (0..k)
                    .map(|c| probs[j * k + c] * (probs[j * k + c] / probs[l * k + c]).ln())
                    .sum::<f64>();
            }
        }
        epkl /= (m * m) as f64;
        assert!((u.epkl - epkl).abs() < 1e-10, "{} vs {epkl}", u.epkl);
        assert!(u.knowledge >= -1e-12 && u.epkl >= u.knowledge - 1e-12);
        if m == 1 {
            assert!(u.knowledge.abs() < 1e-12);
        }
    }
}
