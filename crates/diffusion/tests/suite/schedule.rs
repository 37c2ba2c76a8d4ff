//! Analytic checks of the forward process (pure f64, no networks).

use diffusion::{NoiseSchedule, ScheduleConfig, ScheduleKind};
use foundation::rng::{normals, stream};

fn schedules() -> Vec<NoiseSchedule> {
    vec![
        NoiseSchedule::new(ScheduleConfig::default()),
        NoiseSchedule::new(ScheduleConfig { kind: ScheduleKind::Cosine, ..ScheduleConfig::default() }),
    ]
}

/// Simulating the AR(1) chain x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps step by step gives
/// the closed-form marginal q(x_t | x_0) = N(sqrt(ab_t) x0, 1 - ab_t).
#[test]
fn simulated_chain_matches_closed_form_marginal() {
    for s in schedules() {
        let x0 = 0.7;
        let paths = 20_000;
        let checkpoints = [0usize, 10, 100, 500, 999];
        let mut rng = stream(7, 0, 0);
        let mut x = vec![x0; paths];
        let mut sums = vec![(0.0f64, 0.0f64); checkpoints.len()];
        for t in 0..s.steps() {
            let eps = normals(&mut rng, paths);
            for (xi, e) in x.iter_mut().zip(&eps) {
                *xi = s.alpha[t].sqrt() * *xi + s.beta[t].sqrt() * *e as f64;
            }
            if let Some(k) = checkpoints.iter().position(|&c| c == t) {
                let m = x.iter().sum::<f64>() / paths as f64;
                let v = x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (paths - 1) as f64;
                sums[k] = (m, v);
            }
        }
        for (k, &t) in checkpoints.iter().enumerate() {
            let (m, v) = sums[k];
            let (m_true, v_true) = (s.sqrt_alpha_bar[t] * x0, 1.0 - s.alpha_bar[t]);
            // Standard errors: sqrt(v/n) for the mean, v*sqrt(2/n) for the variance; 5 sigma.
            let se_m = (v_true / paths as f64).sqrt();
            let se_v = v_true * (2.0 / paths as f64).sqrt();
            assert!(
                (m - m_true).abs() < 5.0 * se_m + 1e-12,
                "{:?} t={t}: mean {m} vs {m_true}",
                s.config.kind
            );
            assert!(
                (v - v_true).abs() < 5.0 * se_v + 1e-12,
                "{:?} t={t}: var {v} vs {v_true}",
                s.config.kind
            );
        }
        assert!(s.alpha_bar[s.steps() - 1] < 1e-4, "SNR(T) must be close to 0");
    }
}

/// The posterior q(x_{t-1} | x_t, x_0) from Bayes' rule (prior N(sqrt(ab_{t-1}) x0, 1 - ab_{t-1}),
/// likelihood N(sqrt(alpha_t) x_{t-1}, beta_t)) equals the precomputed coefficients.
#[test]
fn posterior_mean_and_variance_match_bayes_rule() {
    for s in schedules() {
        for &t in &[1usize, 2, 50, 300, 999] {
            let (x0, xt) = (0.3, -1.2);
            let prior_var = 1.0 - s.alpha_bar[t - 1];
            let prec = 1.0 / prior_var + s.alpha[t] / s.beta[t];
            let var = 1.0 / prec;
            let mean =
                var * (s.alpha_bar[t - 1].sqrt() * x0 / prior_var + s.alpha[t].sqrt() * xt / s.beta[t]);
            let mean_coef = s.posterior_coef_x0[t] * x0 + s.posterior_coef_xt[t] * xt;
            assert!(
                (var - s.beta_tilde[t]).abs() < 1e-12 * var.max(1.0),
                "t={t}: {var} vs {}",
                s.beta_tilde[t]
            );
            assert!((mean - mean_coef).abs() < 1e-10, "t={t}: {mean} vs {mean_coef}");
        }
        // At t = 0 the previous state is the data: zero posterior variance, mean = x0.
        assert_eq!(s.beta_tilde[0], 0.0);
        assert!((s.posterior_coef_x0[0] - 1.0).abs() < 1e-12 && s.posterior_coef_xt[0].abs() < 1e-12);
    }
}

#[test]
fn linear_schedule_endpoints_and_snr_monotone() {
    let s = NoiseSchedule::new(ScheduleConfig::default());
    assert_eq!(s.steps(), 1000);
    assert!((s.beta[0] - 1e-4).abs() < 1e-15 && (s.beta[999] - 0.02).abs() < 1e-15);
    assert!(s.snr.windows(2).all(|w| w[1] < w[0]), "SNR must decrease in t");
}

fn assert_rel(got: f64, want: f64, tol: f64, what: &str) {
    assert!((got - want).abs() <= tol * want.abs(), "{what}: {got} vs reference {want}");
}

/// Linear schedule (Ho et al.: `beta_i = 1e-4 + i (0.02 - 1e-4) / 999`) against values computed
/// independently in 40-digit decimal arithmetic (Python `decimal`):
/// `alpha_bar_i = prod_{j <= i} (1 - beta_j)`, `elbo_weight = beta / (2 alpha (1 - alpha_bar))`,
/// `snr = alpha_bar / (1 - alpha_bar)`.
#[test]
fn linear_schedule_matches_independently_computed_values() {
    let s = NoiseSchedule::new(ScheduleConfig::default());
    for (i, want) in [
        (0usize, 0.9999),
        (9, 0.998_105_204_785_834_6),
        (99, 0.897_018_145_674_960_4),
        (499, 0.078_587_242_881_778_24),
        (999, 4.035_829_765_375_683e-5),
    ] {
        assert_rel(s.alpha_bar[i], want, 1e-12, &format!("alpha_bar[{i}]"));
    }
    assert_rel(s.beta[99], 0.002_072_072_072_072_072, 1e-14, "beta[99]");
    assert_rel(s.elbo_weight(99), 0.010_081_263_748_990_76, 1e-12, "elbo_weight(99)");
    assert_rel(s.snr[99], 8.710_448_569_353_97, 1e-12, "snr[99]");
}

/// Cosine schedule (Nichol & Dhariwal 2021, eq. 17, s = 0.008, T = 1000) against the closed
/// form computed independently in Python: with `f(t) = cos^2((t/T + s)/(1 + s) pi/2)`,
/// `alpha_bar` at zero-based step i is `f(i+1)/f(0)` (the product of `1 - beta` telescopes) as
/// long as no beta is clipped; only the last beta exceeds 0.999, so
/// `alpha_bar[999] = 0.001 f(999)/f(0)`.
#[test]
fn cosine_schedule_matches_the_closed_form_of_nichol_and_dhariwal() {
    let s = NoiseSchedule::new(ScheduleConfig { kind: ScheduleKind::Cosine, ..ScheduleConfig::default() });
    for (i, want) in [
        (0usize, 0.999_958_715_775_178),
        (9, 0.999_368_718_401_658_3),
        (99, 0.972_092_737_113_969),
        (499, 0.493_843_590_440_637_75),
        (899, 0.024_091_724_140_085_854),
        (989, 0.000_242_857_227_935_005_94),
        (998, 2.428_766_907_034_851e-6),
        (999, 2.428_766_907_034_851e-9),
    ] {
        assert_rel(s.alpha_bar[i], want, 1e-9, &format!("cosine alpha_bar[{i}]"));
    }
    assert_eq!(s.beta[999], 0.999, "the last beta is clipped");
    assert!(s.beta[..999].iter().all(|&b| b < 0.999), "no other beta is clipped");
}
