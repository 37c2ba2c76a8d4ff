//! The gradient of the rotated image with respect to theta_max against finite differences.

use burn::module::Param;
use burn::prelude::*;
use partition_hpo::augment::{rotate, rotate_tensor};
use rand::{Rng, SeedableRng};

#[test]
fn rotation_gradient_matches_finite_differences() {
    let dev = Device::flex().autodiff();
    let (h, w) = (9, 9);
    let n = 3;
    // Smooth images (bilinear resampling is piecewise linear, so smooth inputs keep finite
    // differences away from kinks) and a fixed random readout.
    let img: Vec<f32> = (0..n)
        .flat_map(|k| {
            (0..h * w).map(move |p| {
                let (i, j) = ((p / w) as f32, (p % w) as f32);
                ((0.4 * i + 0.3 * j * (k + 1) as f32).sin() + 0.5 * (0.2 * i * j).cos()) * 0.5 + 0.5
            })
        })
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let readout: Vec<f32> = (0..n * h * w).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let u = [0.8f32, -0.35, 0.6];
    let loss_at = |theta: f64| -> f64 {
        (0..n)
            .map(|k| {
                let r = rotate(&img[k * h * w..(k + 1) * h * w], h, w, (u[k] as f64 * theta) as f32);
                r.iter().zip(&readout[k * h * w..]).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>()
            })
            .sum()
    };
    for &theta in &[0.3f64, 1.1, 2.4] {
        let param: Param<Tensor<1>> = Param::from_data(TensorData::new(vec![theta as f32], [1]), &dev);
        let x = rotate_tensor(&img, n, h * w, (h, w), &u, param.val(), &dev);
        let r = Tensor::<2>::from_data(TensorData::new(readout.clone(), [n, h * w]), &dev);
        let loss = (x * r).sum();
        let value: f32 = loss.clone().into_scalar();
        let grads = loss.backward();
        let g: f32 = param.val().grad(&grads).expect("gradient of theta_max").into_scalar();
        let eps = 1e-3;
        let fd = (loss_at(theta + eps) - loss_at(theta - eps)) / (2.0 * eps);
        assert!((value as f64 - loss_at(theta)).abs() < 1e-3, "value {value} vs {}", loss_at(theta));
        let tol = 2e-2 * fd.abs().max(1.0);
        assert!((g as f64 - fd).abs() < tol, "theta {theta}: autodiff {g} vs finite differences {fd}");
    }
}

#[test]
fn zero_angle_is_the_identity_and_quarter_turn_is_exact() {
    let (h, w) = (5, 5);
    let img: Vec<f32> = (0..25).map(|p| p as f32).collect();
    assert_eq!(rotate(&img, h, w, 0.0), img);
    let r = rotate(&img, h, w, std::f32::consts::FRAC_PI_2);
    // A quarter turn permutes the pixels (up to sin/cos rounding).
    let mut sorted = r.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    for (a, b) in sorted.iter().zip(&img) {
        assert!((a - b).abs() < 1e-3, "{a} vs {b}");
    }
}
