//! Analytic checks of the forward process (pure f64, no networks).

use diffusion::rng::{normals, stream};
use diffusion::{NoiseSchedule, ScheduleConfig, ScheduleKind};

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
    // ELBO weight at t: beta / (2 alpha (1 - ab)).
    let t = 10;
    assert!((s.elbo_weight(t) - s.beta[t] / (2.0 * s.alpha[t] * (1.0 - s.alpha_bar[t]))).abs() < 1e-15);
}
