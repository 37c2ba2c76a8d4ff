//! Batched inference: class probabilities, penultimate features, accuracy.

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::TensorData;
use data::Dataset;

use crate::model::MnistClassifier;
use crate::{CLASSIFIER_SIDE, NUM_CLASSES};

/// Batch size used for inference in [`predict_proba`] / [`features`].
const INFERENCE_BATCH: usize = 250;

/// Fraction of `test` images whose arg-max class equals the label.
pub fn accuracy(model: &MnistClassifier, test: &Dataset, device: &Device) -> f64 {
    if test.n == 0 {
        return f64::NAN;
    }
    let probs = predict_proba_sized(model, &test.images, test.n, test.height, test.width, device);
    let correct = probs.iter().zip(&test.labels).filter(|(p, &l)| argmax(p) == l as usize).count();
    correct as f64 / test.n as f64
}

/// Index of the largest entry (first one on ties).
pub fn argmax(p: &[f32; NUM_CLASSES]) -> usize {
    let mut best = 0;
    for k in 1..NUM_CLASSES {
        if p[k] > p[best] {
            best = k;
        }
    }
    best
}

/// Infers the side of square images from the buffer length.
fn square_side(len: usize, n: usize) -> usize {
    assert!(n > 0, "need at least one image");
    assert!(len.is_multiple_of(n), "{len} pixels is not a multiple of {n} images");
    let pixels = len / n;
    let side = (pixels as f64).sqrt().round() as usize;
    assert_eq!(side * side, pixels, "images with {pixels} pixels are not square; use the *_sized variant");
    side
}

/// Class probabilities for `n` square images stored row-major in `images`
/// (pixels in [-1, 1]); the side is inferred from `images.len() / n`. Images
/// that are not 28×28 are bilinearly resized to 28×28 first.
///
/// Runs in batches without autodiff on the plain version of `device`.
///
/// # Panics
/// If `n == 0` or the images are not square with `images.len() / n` pixels.
pub fn predict_proba(
    model: &MnistClassifier,
    images: &[f32],
    n: usize,
    device: &Device,
) -> Vec<[f32; NUM_CLASSES]> {
    let side = square_side(images.len(), n);
    predict_proba_sized(model, images, n, side, side, device)
}

/// Like [`predict_proba`] for `h`×`w` images (bilinearly resized to 28×28 if
/// needed).
///
/// # Panics
/// If `images.len() != n * h * w`.
pub fn predict_proba_sized(
    model: &MnistClassifier,
    images: &[f32],
    n: usize,
    h: usize,
    w: usize,
    device: &Device,
) -> Vec<[f32; NUM_CLASSES]> {
    run_batched(model, images, n, h, w, device, false, true).1
}

/// Penultimate-layer features (`n * feature_dim` values, row-major) for `n`
/// square images; the side is inferred from `images.len() / n` and images that
/// are not 28×28 are bilinearly resized to 28×28 first.
///
/// # Panics
/// If `n == 0` or the images are not square with `images.len() / n` pixels.
pub fn features(model: &MnistClassifier, images: &[f32], n: usize, device: &Device) -> Vec<f32> {
    let side = square_side(images.len(), n);
    features_sized(model, images, n, side, side, device)
}

/// Like [`features`] for `h`×`w` images (bilinearly resized to 28×28 if needed).
///
/// # Panics
/// If `images.len() != n * h * w`.
pub fn features_sized(
    model: &MnistClassifier,
    images: &[f32],
    n: usize,
    h: usize,
    w: usize,
    device: &Device,
) -> Vec<f32> {
    run_batched(model, images, n, h, w, device, true, false).0
}

/// Features and class probabilities in one pass (see [`features_sized`] and
/// [`predict_proba_sized`]).
///
/// # Panics
/// If `images.len() != n * h * w`.
pub fn features_and_proba(
    model: &MnistClassifier,
    images: &[f32],
    n: usize,
    h: usize,
    w: usize,
    device: &Device,
) -> (Vec<f32>, Vec<[f32; NUM_CLASSES]>) {
    run_batched(model, images, n, h, w, device, true, true)
}

/// Batched inference returning (features, probabilities) as requested.
#[allow(clippy::too_many_arguments)]
fn run_batched(
    model: &MnistClassifier,
    images: &[f32],
    n: usize,
    h: usize,
    w: usize,
    device: &Device,
    want_features: bool,
    want_proba: bool,
) -> (Vec<f32>, Vec<[f32; NUM_CLASSES]>) {
    assert_eq!(
        images.len(),
        n * h * w,
        "expected {n} images of {h}x{w} = {} pixels, got {}",
        n * h * w,
        images.len()
    );
    let device = device.clone().without_autodiff();
    let model = model.valid().to_device(&device);
    let fdim = model.feature_dim();
    let mut feats = Vec::with_capacity(if want_features { n * fdim } else { 0 });
    let mut probs = Vec::with_capacity(if want_proba { n } else { 0 });
    let pixels = h * w;
    let mut start = 0;
    while start < n {
        let b = INFERENCE_BATCH.min(n - start);
        let chunk = images[start * pixels..(start + b) * pixels].to_vec();
        let mut x = Tensor::<4>::from_data(TensorData::new(chunk, [b, 1, h, w]), &device);
        if h != CLASSIFIER_SIDE || w != CLASSIFIER_SIDE {
            let mut opts = InterpolateOptions::new(InterpolateMode::Bilinear)
                .with_output_size([CLASSIFIER_SIDE, CLASSIFIER_SIDE]);
            opts.align_corners = false;
            x = interpolate(x, opts);
        }
        let f = model.features(x);
        if want_proba {
            let p = softmax(model.head(f.clone()), 1);
            let v: Vec<f32> = p.into_data().convert::<f32>().try_into_vec().expect("softmax output is f32");
            probs.extend(v.chunks_exact(NUM_CLASSES).map(|c| {
                let mut a = [0.0f32; NUM_CLASSES];
                a.copy_from_slice(c);
                a
            }));
        }
        if want_features {
            let v: Vec<f32> = f.into_data().convert::<f32>().try_into_vec().expect("features are f32");
            feats.extend_from_slice(&v);
        }
        start += b;
    }
    (feats, probs)
}
