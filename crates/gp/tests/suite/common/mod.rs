//! Shared fixtures of the gp integration tests.
#![allow(dead_code)]

use faer::Mat;
use gp::kernel::{Hyperparameters, KernelKind, KernelSystem};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A smooth synthetic regression problem: x ~ U(−2, 2)^d, y = sin(x₀) + ½ x₁ − x₂²/4 + 0.1 ε.
pub fn synthetic(n: usize, d: usize, seed: u64) -> (Mat<f64>, Vec<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = Mat::from_fn(n, d, |_, _| rng.gen_range(-2.0..2.0));
    let y = (0..n)
        .map(|i| {
            let x0: f64 = x[(i, 0)];
            let x1: f64 = if d > 1 { x[(i, 1)] } else { 0.0 };
            let x2: f64 = if d > 2 { x[(i, 2)] } else { 0.0 };
            x0.sin() + 0.5 * x1 - 0.25 * x2 * x2 + 0.1 * rng.gen_range(-1.0f64..1.0)
        })
        .collect();
    (x, y)
}

/// Hyperparameters away from the all-ones initialisation, so no derivative vanishes by symmetry.
pub fn hyper(d: usize, noise: f64) -> Hyperparameters {
    Hyperparameters {
        noise_scale: noise,
        signal_scale: 1.3,
        length_scales: (0..d).map(|j| 0.8 + 0.3 * j as f64).collect(),
    }
}

/// A system on synthetic data.
pub fn system(n: usize, d: usize, kind: KernelKind, noise: f64) -> (KernelSystem, Vec<f64>) {
    let (x, y) = synthetic(n, d, 7);
    (KernelSystem::new(x.as_ref(), kind, &hyper(d, noise)).unwrap(), y)
}

/// Frobenius-style relative error ‖a − b‖ / ‖b‖ of two vectors.
pub fn relative_error(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

/// Relative error of two matrices.
pub fn mat_relative_error(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    let mut num = 0.0;
    let mut den = 0.0;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            num += (a[(i, j)] - b[(i, j)]).powi(2);
            den += b[(i, j)].powi(2);
        }
    }
    (num / den).sqrt()
}
