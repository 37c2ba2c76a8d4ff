//! Tests for the sample-quality metrics in `diffusion::eval` (the classifier's own tests,
//! including the ignored one that retrains the committed weights, are in
//! `crates/mnist-classifier/tests/`).

use burn::prelude::*;
use data::{load_mnist, Split};
use diffusion::eval::classifier::{accuracy, predict_proba, predict_proba_sized};
use diffusion::eval::frechet::{frechet_distance_from_stats, GaussianStats};
use diffusion::eval::{
    default_classifier_path, evaluate_samples, frechet_distance, kl_from_uniform, load_classifier,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// Draws `n` vectors from N(mean, diag(sd²)).
fn gaussian_set(n: usize, mean: &[f64], sd: &[f64], seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let z = Normal::new(0.0, 1.0).unwrap();
    let mut out = Vec::with_capacity(n * mean.len());
    for _ in 0..n {
        for (m, s) in mean.iter().zip(sd) {
            let v: f64 = z.sample(&mut rng);
            out.push((m + s * v) as f32);
        }
    }
    out
}

/// Closed form for diagonal Gaussians: ‖μa − μb‖² + Σ (σa − σb)².
fn closed_form(ma: &[f64], sa: &[f64], mb: &[f64], sb: &[f64]) -> f64 {
    let m: f64 = ma.iter().zip(mb).map(|(a, b)| (a - b).powi(2)).sum();
    let s: f64 = sa.iter().zip(sb).map(|(a, b)| (a - b).powi(2)).sum();
    m + s
}

/// A point set whose sample mean is exactly `mean` and whose unbiased sample
/// covariance is exactly `diag(sd²)`: the 2·dim points `mean ± c·sd_i·e_i` with
/// `c² = (2·dim − 1) / 2`.
fn exact_diag_set(mean: &[f64], sd: &[f64]) -> (Vec<f32>, usize) {
    let d = mean.len();
    let c = ((2 * d - 1) as f64 / 2.0).sqrt();
    let mut out = Vec::new();
    for i in 0..d {
        for sign in [1.0, -1.0] {
            for j in 0..d {
                let v = if i == j { mean[j] + sign * c * sd[j] } else { mean[j] };
                out.push(v as f32);
            }
        }
    }
    (out, 2 * d)
}

#[test]
fn frechet_of_identical_sets_is_exactly_zero() {
    let a = gaussian_set(500, &[0.0, 1.0, -2.0], &[1.0, 0.5, 2.0], 1);
    assert_eq!(frechet_distance(&a, 500, &a, 500, 3), 0.0);
    // A copy in another order has the same statistics up to round-off.
    let mut rows: Vec<&[f32]> = a.chunks_exact(3).collect();
    rows.reverse();
    let b: Vec<f32> = rows.concat();
    let d = frechet_distance(&a, 500, &b, 500, 3);
    assert!(d.abs() < 1e-9, "permuted copy gave {d}");
}

#[test]
fn frechet_matches_closed_form_for_exact_diagonal_statistics() {
    let (ma, sa) = ([0.5, -1.0, 2.0, 0.0], [1.0, 2.0, 0.5, 3.0]);
    let (mb, sb) = ([1.5, -1.0, 0.0, 0.25], [2.0, 1.0, 0.5, 0.1]);
    let (a, na) = exact_diag_set(&ma, &sa);
    let (b, nb) = exact_diag_set(&mb, &sb);
    let stats = GaussianStats::from_samples(&a, na, 4);
    for i in 0..4 {
        assert!((stats.mean[i] - ma[i]).abs() < 1e-6);
        for j in 0..4 {
            let want = if i == j { sa[i] * sa[i] } else { 0.0 };
            assert!((stats.cov[(i, j)] - want).abs() < 1e-5, "cov[{i},{j}]");
        }
    }
    let want = closed_form(&ma, &sa, &mb, &sb);
    let got = frechet_distance(&a, na, &b, nb, 4);
    // Inputs are rounded to f32, so allow f32-level relative error.
    assert!((got - want).abs() < 1e-5 * want.max(1.0), "got {got}, closed form {want}");
}

#[test]
fn frechet_matches_closed_form_for_sampled_gaussians_and_is_symmetric() {
    let (ma, sa) = (vec![0.0, 1.0, -1.0, 0.5, 0.0], vec![1.0, 0.5, 2.0, 1.0, 1.5]);
    let (mb, sb) = (vec![0.5, 1.0, 0.0, 0.5, -0.5], vec![1.5, 0.5, 1.0, 2.0, 1.5]);
    let n = 40_000;
    let a = gaussian_set(n, &ma, &sa, 11);
    let b = gaussian_set(n, &mb, &sb, 12);
    let want = closed_form(&ma, &sa, &mb, &sb); // = 3.0
    let ab = frechet_distance(&a, n, &b, n, 5);
    let ba = frechet_distance(&b, n, &a, n, 5);
    assert_eq!(ab, ba, "not symmetric");
    // Sampling error of the estimate is about 0.03 here.
    assert!((ab - want).abs() < 0.1, "got {ab}, closed form {want}");
    // Different sample sizes work too and agree with the stats-level API.
    let sa_stats = GaussianStats::from_samples(&a[..5 * 1000], 1000, 5);
    let sb_stats = GaussianStats::from_samples(&b, n, 5);
    let direct = frechet_distance(&a[..5 * 1000], 1000, &b, n, 5);
    assert_eq!(direct, frechet_distance_from_stats(&sa_stats, &sb_stats));
    assert!((direct - want).abs() < 0.5, "n=1000 gave {direct}");
}

#[test]
fn frechet_with_correlated_covariances_matches_1d_rotation_invariance() {
    // Rotating both sets by the same orthogonal matrix leaves the distance
    // unchanged; the rotated covariances are non-diagonal.
    let n = 2000;
    let a = gaussian_set(n, &[0.0, 1.0], &[1.0, 3.0], 21);
    let b = gaussian_set(n, &[1.0, 0.0], &[2.0, 0.5], 22);
    let (c, s) = (0.6f32, 0.8f32);
    let rot = |x: &[f32]| -> Vec<f32> {
        x.chunks_exact(2).flat_map(|p| [c * p[0] - s * p[1], s * p[0] + c * p[1]]).collect()
    };
    let d0 = frechet_distance(&a, n, &b, n, 2);
    let d1 = frechet_distance(&rot(&a), n, &rot(&b), n, 2);
    assert!((d0 - d1).abs() < 1e-4 * d0, "{d0} vs {d1}");
}

#[test]
fn kl_from_uniform_values() {
    assert_eq!(kl_from_uniform(&[7; 10]), 0.0);
    let mut one = [0usize; 10];
    one[3] = 5;
    assert!((kl_from_uniform(&one) - 10f64.ln()).abs() < 1e-12);
    let mut two = [0usize; 10];
    two[0] = 1;
    two[1] = 1;
    assert!((kl_from_uniform(&two) - 5f64.ln()).abs() < 1e-12);
}

#[test]
fn committed_classifier_is_accurate_and_confident_on_real_digits() {
    let path = default_classifier_path();
    assert!(path.exists(), "{} (committed) is missing", path.display());
    let device = Device::flex();
    let model = load_classifier(&path, &device).unwrap();
    let test = load_mnist(None, Split::Test).unwrap();
    let train = load_mnist(None, Split::Train).unwrap();
    let acc = accuracy(&model, &test, &device);
    eprintln!("embedded test subset accuracy {acc:.4}");
    assert!(acc >= 0.97, "accuracy {acc}");

    // Real test digits scored as "samples" against real training images.
    let reference = train.subset(test.n, 1);
    let q = evaluate_samples(&model, &test.images, test.n, 28, 28, &test, &reference, &device);
    eprintln!("{}", serde_json::to_string(&q).unwrap());
    assert_eq!(q.n, test.n);
    assert!(q.confident_share > 0.9, "{q:?}");
    assert_eq!(q.class_histogram.iter().sum::<usize>(), test.n);
    // The embedded test subset is balanced (100 per class).
    assert!(q.class_kl_from_uniform < 0.01, "{q:?}");
    assert_eq!(q.frechet_to_test, 0.0);
    assert!(q.frechet_real_train_to_test > 0.0);

    // A different real subset is close to the test set; noise images are far.
    let other = train.subset(test.n, 2);
    let q_other = evaluate_samples(&model, &other.images, other.n, 28, 28, &test, &reference, &device);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let unif = rand_distr::Uniform::new(-1.0f32, 1.0);
    let noise: Vec<f32> = (0..test.n * 28 * 28).map(|_| unif.sample(&mut rng)).collect();
    let q_noise = evaluate_samples(&model, &noise, test.n, 28, 28, &test, &reference, &device);
    eprintln!(
        "FCD real {:.3}, noise {:.3}, ref {:.3}",
        q_other.frechet_to_test, q_noise.frechet_to_test, q_other.frechet_real_train_to_test
    );
    assert!(q_other.frechet_to_test < 3.0 * q_other.frechet_real_train_to_test);
    assert!(q_noise.frechet_to_test > 10.0 * q_other.frechet_to_test);
    assert!(q_noise.confident_share < q_other.confident_share);

    // 14x14 samples are bilinearly upsampled to 28x28 before classification.
    let small = test.resize_area(14, 14);
    let p = predict_proba_sized(&model, &small.images, small.n, 14, 14, &device);
    let p_square = predict_proba(&model, &small.images, small.n, &device);
    assert_eq!(p, p_square);
    let acc14 = accuracy(&model, &small, &device);
    eprintln!("accuracy on 14x14 (area-downsampled, bilinear-upsampled) digits {acc14:.4}");
    assert!(acc14 > 0.9, "accuracy on 14x14 digits {acc14}");
}

/// `--eval` of 14x14 samples compares them with real images that went through 14x14: the
/// references are the embedded test set and a training subset, area-downsampled to the samples'
/// side (pixel for pixel `resize_area`), and left as they are at 28x28.
#[test]
fn real_references_have_the_samples_resolution() {
    let (test, train_ref) = diffusion::eval::real_references(None, 14, 20).unwrap();
    assert_eq!((test.height, test.width, train_ref.height, train_ref.width), (14, 14, 14, 14));
    assert_eq!(train_ref.n, 20);
    let full_test = load_mnist(None, Split::Test).unwrap();
    assert_eq!(test.n, full_test.n);
    assert_eq!(test.images, full_test.resize_area(14, 14).images);
    let (test28, train28) = diffusion::eval::real_references(None, 28, 20).unwrap();
    assert_eq!(test28.images, full_test.images);
    assert_eq!((train28.height, train28.width, train28.n), (28, 28, 20));
}
