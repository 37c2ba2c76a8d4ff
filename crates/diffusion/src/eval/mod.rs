//! In-project sample-quality metrics for MNIST diffusion samples (spec
//! `p4-ddpm.md`, "Metrics"):
//!
//! * (a) Fréchet classifier distance (FCD) on the penultimate features of a
//!   small MNIST CNN (the `mnist-classifier` crate, re-exported as [`classifier`],
//!   ≥ 99 % test accuracy),
//!   reported for samples vs test and, as the reference, real training images
//!   vs test;
//! * (b) recognisability: the share of samples whose top class probability
//!   exceeds 0.9;
//! * (c) class balance: KL divergence from the predicted (arg-max) class
//!   histogram to the uniform distribution.
//!
//! Samples that are not 28×28 (e.g. 14×14) are bilinearly resized to 28×28
//! before classification; so are the test and reference images if they are not
//! 28×28. For comparable FCDs, pass test/reference images that went through the
//! same resolution as the samples ([`real_references`] does, and `ddpm sample
//! --eval` uses it), and a reference set with as many images as there are
//! samples (the Fréchet distance is biased upwards for small sets).

//!
//! The Fréchet distance stays here, next to the metrics that use it: it is a
//! statement about two feature sets, independent of the network that made them.

pub mod frechet;

use burn::prelude::*;
use data::Dataset;
use serde::Serialize;

pub use frechet::{frechet_distance, GaussianStats};
/// The MNIST classifier (the `mnist-classifier` crate), kept at its old path.
pub use mnist_classifier as classifier;
pub use mnist_classifier::{
    default_classifier_path, features, load_classifier, load_or_train_classifier, predict_proba,
    save_classifier, train_classifier, ClassifierTrainConfig, MnistClassifier, MnistClassifierConfig,
    DEFAULT_CLASSIFIER_PATH, DEFAULT_CLASSIFIER_SEED,
};

use frechet::frechet_distance_from_stats;
use mnist_classifier::{argmax, features_and_proba, features_sized, NUM_CLASSES};

/// Probability threshold above which a sample counts as recognisable.
pub const CONFIDENCE_THRESHOLD: f32 = 0.9;

/// Sample-quality metrics for a set of generated MNIST images.
#[derive(Clone, Debug, Serialize)]
pub struct SampleQuality {
    /// Number of samples evaluated.
    pub n: usize,
    /// Fréchet classifier distance between the samples and the test images.
    pub frechet_to_test: f64,
    /// Fréchet classifier distance between the real reference (training)
    /// images and the test images: the floor to compare `frechet_to_test` with.
    pub frechet_real_train_to_test: f64,
    /// Share of samples whose largest class probability is above 0.9.
    pub confident_share: f64,
    /// Number of samples per predicted (arg-max) class.
    pub class_histogram: [usize; 10],
    /// `KL(hist ‖ uniform) = Σ_k p_k ln(10 p_k)` in nats, with `p` the
    /// normalised `class_histogram` (0 for perfectly balanced classes, at
    /// most ln 10 ≈ 2.303).
    pub class_kl_from_uniform: f64,
}

/// KL divergence (nats) from a class histogram to the uniform distribution.
pub fn kl_from_uniform(hist: &[usize; NUM_CLASSES]) -> f64 {
    let total: usize = hist.iter().sum();
    if total == 0 {
        return f64::NAN;
    }
    hist.iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total as f64;
            p * (p * NUM_CLASSES as f64).ln()
        })
        .sum::<f64>()
        .max(0.0)
}

/// The real images `--eval` compares `side x side` samples with: the MNIST test set and `n`
/// training images (seeded subset), both area-downsampled to the samples' resolution when it is
/// not 28x28. Real images then go through the same path as the samples (down to `side`, back up to
/// 28x28 for the classifier), so the ratio of the samples' FCD to the real reference's means the
/// same at every size.
pub fn real_references(
    dir: Option<&std::path::Path>,
    side: usize,
    n: usize,
) -> Result<(Dataset, Dataset), data::DataError> {
    let mut test = data::load_mnist(dir, data::Split::Test)?;
    let mut train_ref = data::load_mnist(dir, data::Split::Train)?.subset(n.max(2), 12345);
    if test.height != side || test.width != side {
        test = test.resize_area(side, side);
    }
    if train_ref.height != side || train_ref.width != side {
        train_ref = train_ref.resize_area(side, side);
    }
    Ok((test, train_ref))
}

/// Computes [`SampleQuality`] for `n` generated `h`×`w` images (`samples`,
/// row-major, pixels in [-1, 1]) against the `test` set, with
/// `train_reference` (real images) giving the real-vs-real reference FCD.
///
/// All images that are not 28×28 are bilinearly resized to 28×28 before they
/// go through the classifier. Inference runs in batches without autodiff on
/// `device`.
///
/// # Panics
/// If `samples.len() != n * h * w`, or `n`, `test.n` or `train_reference.n`
/// is below 2.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_samples(
    model: &MnistClassifier,
    samples: &[f32],
    n: usize,
    h: usize,
    w: usize,
    test: &Dataset,
    train_reference: &Dataset,
    device: &Device,
) -> SampleQuality {
    let (sample_feats, probs) = features_and_proba(model, samples, n, h, w, device);
    let dim = model.feature_dim();
    let feats_of = |d: &Dataset| features_sized(model, &d.images, d.n, d.height, d.width, device);
    let test_stats = GaussianStats::from_samples(&feats_of(test), test.n, dim);
    let ref_stats = GaussianStats::from_samples(&feats_of(train_reference), train_reference.n, dim);
    let sample_stats = GaussianStats::from_samples(&sample_feats, n, dim);

    let mut class_histogram = [0usize; NUM_CLASSES];
    let mut confident = 0usize;
    for p in &probs {
        class_histogram[argmax(p)] += 1;
        if p.iter().cloned().fold(f32::MIN, f32::max) > CONFIDENCE_THRESHOLD {
            confident += 1;
        }
    }
    SampleQuality {
        n,
        frechet_to_test: frechet_distance_from_stats(&sample_stats, &test_stats),
        frechet_real_train_to_test: frechet_distance_from_stats(&ref_stats, &test_stats),
        confident_share: confident as f64 / n as f64,
        class_histogram,
        class_kl_from_uniform: kl_from_uniform(&class_histogram),
    }
}
