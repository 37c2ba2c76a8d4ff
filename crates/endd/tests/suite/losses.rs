//! Special functions, the EnD² loss and its gradient, EnD, smoothing and the annealing schedule.

use burn::prelude::*;
use burn::tensor::TensorData;
use endd::loss::{dirichlet_nll, end_cross_entropy, smooth, teacher_targets, Anneal, CENTRAL_SMOOTHING};
use endd::special::{digamma, ln_gamma};
use endd::train::end2_loss;
use endd::uncertainty::dirichlet_log_density;
use foundation::rng::stream;
use rand::Rng;

#[test]
fn ln_gamma_and_digamma_match_known_values() {
    assert!(ln_gamma(1.0).abs() < 1e-13);
    assert!(ln_gamma(2.0).abs() < 1e-13);
    assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
    assert!((ln_gamma(10.0) - 362_880f64.ln()).abs() < 1e-11);
    assert!((ln_gamma(1e-8) + 1e-8f64.ln()).abs() < 1e-7, "ln Γ(x) ≈ −ln x near 0");
    let euler = 0.577_215_664_901_532_9;
    assert!((digamma(1.0) + euler).abs() < 1e-12);
    assert!((digamma(0.5) + euler + 2.0 * 2f64.ln()).abs() < 1e-12);
    for &x in &[0.03f64, 0.7, 3.3, 12.0, 250.0] {
        let h = 1e-5 * x.max(1.0);
        let fd = (ln_gamma(x + h) - ln_gamma(x - h)) / (2.0 * h);
        assert!((fd - digamma(x)).abs() < 1e-6 * digamma(x).abs().max(1.0), "ψ({x})");
    }
    assert!(ln_gamma(0.0).is_nan() && digamma(-1.0).is_nan());
}

/// The EnD² loss at T = 1 is the mean negative log-density of the members' categoricals.
#[test]
fn end2_loss_is_the_dirichlet_nll_of_the_members() {
    let mut rng = stream(1, 2, 3);
    let (m, k) = (5, 4);
    let logits: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-3.0..3.0)).collect();
    let targets = teacher_targets(&logits, m, k, 1.0, CENTRAL_SMOOTHING);
    let z: Vec<f64> = (0..k).map(|_| rng.gen_range(-1.0..2.0)).collect();
    let alpha: Vec<f64> = z.iter().map(|v| v.exp()).collect();
    let mut direct = 0.0;
    for j in 0..m {
        let mut p = endd::loss::softmax_t(&logits[j * k..(j + 1) * k], 1.0);
        smooth(&mut p, CENTRAL_SMOOTHING);
        direct -= dirichlet_log_density(&p, &alpha) / m as f64;
    }
    let (loss, _) = dirichlet_nll(&z, &targets.mean_logp, 1.0);
    assert!((loss - direct).abs() < 1e-10 * direct.abs().max(1.0), "{loss} vs {direct}");
}

#[test]
fn end2_gradient_matches_finite_differences() {
    let mut rng = stream(4, 5, 6);
    for &t in &[1.0, 3.7, 10.0] {
        for _ in 0..5 {
            let k = 3 + rng.gen_range(0..5);
            let z: Vec<f64> = (0..k).map(|_| rng.gen_range(-4.0..6.0)).collect();
            let logits: Vec<f32> = (0..4 * k).map(|_| rng.gen_range(-5.0..5.0)).collect();
            let l = teacher_targets(&logits, 4, k, t, CENTRAL_SMOOTHING).mean_logp;
            let (_, grad) = dirichlet_nll(&z, &l, t);
            for c in 0..k {
                let h = 1e-6;
                let (mut zp, mut zm) = (z.clone(), z.clone());
                zp[c] += h;
                zm[c] -= h;
                let fd = (dirichlet_nll(&zp, &l, t).0 - dirichlet_nll(&zm, &l, t).0) / (2.0 * h);
                let tol = 1e-5 * fd.abs().max(1.0);
                assert!((fd - grad[c]).abs() < tol, "T={t} c={c}: fd {fd} vs {}", grad[c]);
            }
        }
    }
}

#[test]
fn end_gradient_matches_finite_differences() {
    let mut rng = stream(7, 8, 9);
    let k = 5;
    let z: Vec<f64> = (0..k).map(|_| rng.gen_range(-3.0..3.0)).collect();
    let logits: Vec<f32> = (0..3 * k).map(|_| rng.gen_range(-5.0..5.0)).collect();
    for &t in &[1.0, 2.5] {
        let p = teacher_targets(&logits, 3, k, t, CENTRAL_SMOOTHING).mean_p;
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let (_, grad) = end_cross_entropy(&z, &p, t);
        for c in 0..k {
            let h = 1e-6;
            let (mut zp, mut zm) = (z.clone(), z.clone());
            zp[c] += h;
            zm[c] -= h;
            let fd = (end_cross_entropy(&zp, &p, t).0 - end_cross_entropy(&zm, &p, t).0) / (2.0 * h);
            assert!((fd - grad[c]).abs() < 1e-6, "T={t} c={c}");
        }
    }
}

/// The graph-side EnD² loss has the closed form's value and its gradient (divided by the batch).
#[test]
fn end2_loss_tensor_carries_value_and_gradient() {
    let mut rng = stream(10, 11, 12);
    let (b, k, t) = (6, 4, 2.0);
    let z: Vec<f32> = (0..b * k).map(|_| rng.gen_range(-2.0..3.0)).collect();
    let mean_logp: Vec<f64> = (0..b)
        .flat_map(|_| {
            let logits: Vec<f32> = (0..3 * k).map(|_| rng.gen_range(-4.0..4.0)).collect();
            teacher_targets(&logits, 3, k, t, CENTRAL_SMOOTHING).mean_logp
        })
        .collect();
    let device = Device::flex().autodiff();
    let zt = Tensor::<2>::from_data(TensorData::new(z.clone(), [b, k]), &device).require_grad();
    let loss = end2_loss(zt.clone(), &mean_logp, t);
    let value: f32 = loss.clone().into_scalar();
    let grads = loss.backward();
    let g: Vec<f32> = zt.grad(&grads).expect("gradient").into_data().try_into_vec::<f32>().expect("f32");
    let mut expect = 0.0;
    for i in 0..b {
        let zi: Vec<f64> = z[i * k..(i + 1) * k].iter().map(|&v| v as f64).collect();
        let (l, gi) = dirichlet_nll(&zi, &mean_logp[i * k..(i + 1) * k], t);
        expect += l / b as f64;
        for c in 0..k {
            assert!(
                (g[i * k + c] as f64 - gi[c] / b as f64).abs() < 1e-5 * (gi[c].abs() / b as f64).max(1.0)
            );
        }
    }
    assert!((value as f64 - expect).abs() < 1e-4 * expect.abs().max(1.0), "{value} vs {expect}");
}

#[test]
fn central_smoothing_keeps_a_distribution_away_from_zero() {
    let mut p = vec![1.0, 0.0, 0.0, 0.0];
    smooth(&mut p, CENTRAL_SMOOTHING);
    assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-15);
    assert!((p[1] - CENTRAL_SMOOTHING / 4.0).abs() < 1e-15);
    assert!((p[0] - (1.0 - CENTRAL_SMOOTHING) - CENTRAL_SMOOTHING / 4.0).abs() < 1e-15);
}

#[test]
fn annealing_holds_then_decays_linearly_to_one() {
    let a = Anneal { t0: 10.0, hold_epochs: 2, decay_epochs: 4 };
    let got: Vec<f64> = (0..8).map(|e| a.temperature(e)).collect();
    let want = [10.0, 10.0, 10.0, 7.75, 5.5, 3.25, 1.0, 1.0];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-12, "{got:?}");
    }
    assert_eq!(a.temperature(1000), 1.0);
    assert!((0..50).all(|e| Anneal::OFF.temperature(e) == 1.0));
    let jump = Anneal { t0: 5.0, hold_epochs: 3, decay_epochs: 0 };
    assert_eq!((jump.temperature(2), jump.temperature(3)), (5.0, 1.0));
}
