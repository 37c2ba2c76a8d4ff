//! A small MNIST CNN classifier used as the feature extractor for the
//! in-project sample-quality metrics (Fréchet classifier distance,
//! recognisability, class balance).
//!
//! The network works on 28×28 single-channel images with pixels in [-1, 1]
//! (the convention of the `data` crate). Images of any other size, e.g. 14×14
//! diffusion samples, are resized to 28×28 with **bilinear interpolation**
//! (`burn::tensor::module::interpolate`, half-pixel centres, i.e.
//! `align_corners = false`) before they are classified; see
//! [`predict_proba_sized`] and [`features_sized`].
//!
//! Architecture ([`MnistClassifier`]):
//! conv3×3(1→32)+ReLU, conv3×3(32→32)+ReLU, maxpool2,
//! conv3×3(32→64)+ReLU, conv3×3(64→64)+ReLU, maxpool2, flatten,
//! Linear(3136→128)+ReLU (the penultimate features), dropout,
//! Linear(128→10) (logits).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::activation::{log_softmax, relu, softmax};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::TensorData;
use data::Dataset;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Side length (pixels) of the images the classifier works on.
pub const CLASSIFIER_SIDE: usize = 28;
/// Number of classes (digits 0–9).
pub const NUM_CLASSES: usize = 10;
/// Batch size used for inference in [`predict_proba`] / [`features`].
const INFERENCE_BATCH: usize = 250;
/// Key of the safetensors metadata entry holding the JSON model config.
const CONFIG_METADATA_KEY: &str = "mnist_classifier_config";

/// Architecture hyper-parameters of [`MnistClassifier`].
#[derive(Config, Debug)]
pub struct MnistClassifierConfig {
    /// Channels of the two 28×28 convolutions.
    #[config(default = 32)]
    pub channels_1: usize,
    /// Channels of the two 14×14 convolutions.
    #[config(default = 64)]
    pub channels_2: usize,
    /// Width of the penultimate (feature) layer.
    #[config(default = 128)]
    pub feature_dim: usize,
    /// Dropout probability applied to the features during training.
    #[config(default = 0.3)]
    pub dropout: f64,
}

impl MnistClassifierConfig {
    /// Builds a freshly initialised classifier on `device`.
    pub fn init(&self, device: &Device) -> MnistClassifier {
        let conv = |cin: usize, cout: usize| {
            Conv2dConfig::new([cin, cout], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        let pooled = CLASSIFIER_SIDE / 4;
        MnistClassifier {
            conv1: conv(1, self.channels_1),
            conv2: conv(self.channels_1, self.channels_1),
            conv3: conv(self.channels_1, self.channels_2),
            conv4: conv(self.channels_2, self.channels_2),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            fc1: LinearConfig::new(self.channels_2 * pooled * pooled, self.feature_dim).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            fc2: LinearConfig::new(self.feature_dim, NUM_CLASSES).init(device),
        }
    }
}

/// The MNIST CNN classifier (see the module documentation for the layers).
///
/// Inputs are `[N, 1, 28, 28]` tensors with pixels in [-1, 1].
#[derive(Module, Debug)]
pub struct MnistClassifier {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    conv4: Conv2d,
    pool: MaxPool2d,
    fc1: Linear,
    dropout: Dropout,
    fc2: Linear,
}

impl MnistClassifier {
    /// Penultimate features, `[N, 1, 28, 28] -> [N, feature_dim]` (after the ReLU,
    /// before dropout).
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let x = relu(self.conv1.forward(x));
        let x = relu(self.conv2.forward(x));
        let x = self.pool.forward(x);
        let x = relu(self.conv3.forward(x));
        let x = relu(self.conv4.forward(x));
        let x = self.pool.forward(x);
        let x: Tensor<2> = x.flatten(1, 3);
        relu(self.fc1.forward(x))
    }

    /// Class logits, `[N, 1, 28, 28] -> [N, 10]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.head(self.features(x))
    }

    /// Maps penultimate features to logits (dropout is active only while training
    /// on an autodiff device).
    fn head(&self, features: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(self.dropout.forward(features))
    }

    /// Width of the feature vector returned by [`MnistClassifier::features`].
    pub fn feature_dim(&self) -> usize {
        self.fc2.weight.val().dims()[0]
    }
}

/// Training hyper-parameters for [`train_classifier`].
#[derive(Config, Debug)]
pub struct ClassifierTrainConfig {
    /// Architecture of the model to train.
    #[config(default = "MnistClassifierConfig::new()")]
    pub model: MnistClassifierConfig,
    /// Number of passes over the training set.
    #[config(default = 3)]
    pub epochs: usize,
    /// Mini-batch size.
    #[config(default = 128)]
    pub batch_size: usize,
    /// Peak Adam learning rate (cosine-decayed per step to `lr * final_lr_fraction`).
    #[config(default = 2e-3)]
    pub lr: f64,
    /// Final learning rate as a fraction of `lr`.
    #[config(default = 0.02)]
    pub final_lr_fraction: f64,
    /// Augmentation: each training image is shifted by a random integer offset
    /// in `-max_shift..=max_shift` pixels along each axis (background filled
    /// with -1). 0 disables augmentation.
    #[config(default = 2)]
    pub max_shift: usize,
    /// Print progress to stderr every this many steps (0 = silent).
    #[config(default = 0)]
    pub log_every: usize,
}

/// Summary of a classifier training run (written next to cached weights as JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClassifierTrainingReport {
    /// Accuracy on the test set passed to [`train_classifier`].
    pub accuracy: f64,
    /// Number of epochs trained.
    pub epochs: usize,
    /// Seed used for initialisation, shuffling, augmentation and dropout.
    pub seed: u64,
    /// Wall-clock training time in seconds (excluding the final evaluation).
    pub seconds: f64,
    /// Number of training images.
    pub train_size: usize,
    /// Number of test images the accuracy was measured on.
    pub test_size: usize,
    /// Number of model parameters.
    pub num_params: usize,
    /// The training configuration (JSON).
    pub config: serde_json::Value,
}

/// Trains a classifier on `train` (28×28 images) and returns it (in validation
/// mode, on the plain non-autodiff flex device) together with its accuracy on
/// `test`.
///
/// Deterministic given `seed`: parameters are initialised after seeding the
/// device, the data are shuffled with a `ChaCha8Rng`, and augmentation shifts
/// are drawn from the same generator. Uses Adam with a per-step cosine learning
/// rate decay and softmax cross-entropy.
///
/// Errors if the datasets are empty, are not 28×28, or contain labels ≥ 10.
pub fn train_classifier(
    train: &Dataset,
    test: &Dataset,
    cfg: &ClassifierTrainConfig,
    seed: u64,
) -> Result<(MnistClassifier, f64)> {
    let (model, report) = train_classifier_with_report(train, test, cfg, seed)?;
    Ok((model, report.accuracy))
}

/// Like [`train_classifier`], but returns a full [`ClassifierTrainingReport`].
pub fn train_classifier_with_report(
    train: &Dataset,
    test: &Dataset,
    cfg: &ClassifierTrainConfig,
    seed: u64,
) -> Result<(MnistClassifier, ClassifierTrainingReport)> {
    check_dataset(train, "training set", true)?;
    check_dataset(test, "test set", false)?;
    if cfg.batch_size == 0 || cfg.epochs == 0 {
        bail!("batch_size and epochs must be positive (got {cfg:?})");
    }
    let side = CLASSIFIER_SIDE;
    let pixels = side * side;
    let start = Instant::now();

    let device = Device::flex().autodiff();
    device.seed(seed);
    let mut model = cfg.model.init(&device);
    let mut optim = AdamConfig::new().init();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);

    let steps_per_epoch = train.n.div_ceil(cfg.batch_size);
    let total_steps = (steps_per_epoch * cfg.epochs) as f64;
    let mut order: Vec<usize> = (0..train.n).collect();
    let mut step = 0usize;
    let mut batch_x = Vec::with_capacity(cfg.batch_size * pixels);
    let mut batch_y = Vec::with_capacity(cfg.batch_size * NUM_CLASSES);
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0f64;
        let mut loss_count = 0usize;
        for chunk in order.chunks(cfg.batch_size) {
            let b = chunk.len();
            batch_x.clear();
            batch_y.clear();
            for &i in chunk {
                let (dy, dx) = if cfg.max_shift > 0 {
                    let s = cfg.max_shift as i64;
                    (rng.gen_range(-s..=s), rng.gen_range(-s..=s))
                } else {
                    (0, 0)
                };
                push_shifted(&mut batch_x, train.image(i), side, dy, dx);
                let mut onehot = [0.0f32; NUM_CLASSES];
                onehot[train.labels[i] as usize] = 1.0;
                batch_y.extend_from_slice(&onehot);
            }
            let x = Tensor::<4>::from_data(TensorData::new(batch_x.clone(), [b, 1, side, side]), &device);
            let y = Tensor::<2>::from_data(TensorData::new(batch_y.clone(), [b, NUM_CLASSES]), &device);
            let logits = model.forward(x);
            let loss = (log_softmax(logits, 1) * y).sum().neg() / (b as f64);
            let progress = step as f64 / total_steps;
            let lr = cfg.lr
                * (cfg.final_lr_fraction
                    + (1.0 - cfg.final_lr_fraction) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()));
            let log_now = cfg.log_every > 0 && step.is_multiple_of(cfg.log_every);
            if log_now {
                let l: f32 = loss.clone().into_scalar();
                loss_sum += l as f64;
                loss_count += 1;
                eprintln!(
                    "classifier epoch {epoch} step {step}/{total_steps} loss {l:.4} lr {lr:.2e} \
                     elapsed {:.0}s",
                    start.elapsed().as_secs_f64()
                );
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            step += 1;
        }
        if cfg.log_every > 0 && loss_count > 0 {
            eprintln!(
                "classifier epoch {epoch} done: mean logged loss {:.4}, elapsed {:.0}s",
                loss_sum / loss_count as f64,
                start.elapsed().as_secs_f64()
            );
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let model = model.valid();
    let accuracy = accuracy(&model, test, &Device::flex());
    let report = ClassifierTrainingReport {
        accuracy,
        epochs: cfg.epochs,
        seed,
        seconds,
        train_size: train.n,
        test_size: test.n,
        num_params: model.num_params(),
        config: serde_json::to_value(cfg).context("serialising the training config")?,
    };
    Ok((model, report))
}

/// Validates a dataset for training/evaluation.
fn check_dataset(d: &Dataset, what: &str, require_28: bool) -> Result<()> {
    if d.n == 0 {
        bail!("the {what} is empty");
    }
    if require_28 && (d.height != CLASSIFIER_SIDE || d.width != CLASSIFIER_SIDE) {
        bail!(
            "the {what} has {}x{} images; the classifier trains on {CLASSIFIER_SIDE}x{CLASSIFIER_SIDE}",
            d.height,
            d.width
        );
    }
    if d.images.len() != d.n * d.height * d.width || d.labels.len() != d.n {
        bail!("the {what} has inconsistent sizes");
    }
    if d.labels.iter().any(|&l| l as usize >= NUM_CLASSES) {
        bail!("the {what} has a label >= {NUM_CLASSES}");
    }
    Ok(())
}

/// Appends `img` (side×side) shifted by (dy, dx) pixels, filling with -1.
fn push_shifted(out: &mut Vec<f32>, img: &[f32], side: usize, dy: i64, dx: i64) {
    let s = side as i64;
    for r in 0..s {
        let sr = r - dy;
        for c in 0..s {
            let sc = c - dx;
            let v =
                if (0..s).contains(&sr) && (0..s).contains(&sc) { img[(sr * s + sc) as usize] } else { -1.0 };
            out.push(v);
        }
    }
}

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

/// The temporary file a save goes through before it is renamed onto `path`.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|s| s.to_os_string()).unwrap_or_else(|| "classifier".into());
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Saves the classifier weights to `path` (safetensors, with the architecture
/// config stored as metadata). Writes to a temporary file in the same
/// directory, then renames it onto `path`; creates missing parent directories.
pub fn save_classifier(model: &MnistClassifier, path: &Path) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating directory {}", parent.display()))?;
    }
    let config = MnistClassifierConfig {
        channels_1: model.conv1.weight.val().dims()[0],
        channels_2: model.conv3.weight.val().dims()[0],
        feature_dim: model.feature_dim(),
        dropout: model.dropout.prob,
    };
    let tmp = temp_path(path);
    let _ = std::fs::remove_file(&tmp);
    let mut store = SafetensorsStore::from_file(&tmp).overwrite(true).metadata(
        CONFIG_METADATA_KEY,
        serde_json::to_string(&config).context("serialising classifier config")?,
    );
    let result = model.valid().save_into(&mut store).map_err(|e| anyhow::anyhow!("{e}")).and_then(|()| {
        // The store creates its file with mode 0600; make it readable like
        // an ordinary file (best effort).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644));
        }
        std::fs::rename(&tmp, path).map_err(anyhow::Error::from)
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("saving classifier weights to {}", path.display())));
    }
    Ok(())
}

/// Reads the architecture config stored in the safetensors header of `path`
/// (falls back to the default config if the file has none).
fn read_config(path: &Path) -> Result<MnistClassifierConfig> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).context("opening the file")?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).context("file too short for a safetensors header")?;
    let len = u64::from_le_bytes(len);
    let file_len = f.metadata().context("reading file metadata")?.len();
    if len == 0 || len > 100_000_000 || len + 8 > file_len {
        bail!("invalid safetensors header length {len} (file has {file_len} bytes)");
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).context("reading the safetensors header")?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).context("the safetensors header is not valid JSON")?;
    match header.get("__metadata__").and_then(|m| m.get(CONFIG_METADATA_KEY)).and_then(|c| c.as_str()) {
        Some(c) => serde_json::from_str(c).context("invalid classifier config in metadata"),
        None => Ok(MnistClassifierConfig::new()),
    }
}

/// Loads classifier weights saved by [`save_classifier`] onto `device` (the
/// returned model is in validation mode).
///
/// A missing, truncated, corrupt or mismatched file (wrong tensor names or
/// shapes) gives an error that names the file; this never panics.
pub fn load_classifier(path: &Path, device: &Device) -> Result<MnistClassifier> {
    let ctx = || format!("loading MNIST classifier weights from {}", path.display());
    if !path.is_file() {
        return Err(anyhow::anyhow!("file not found")).with_context(ctx);
    }
    let config = read_config(path).with_context(ctx)?;
    let device = device.clone().without_autodiff();
    let path_buf = path.to_path_buf();
    let loaded = std::panic::catch_unwind(move || -> Result<MnistClassifier> {
        let mut model = config.init(&device);
        let mut store = SafetensorsStore::from_file(&path_buf);
        let result = model.load_from(&mut store).map_err(|e| anyhow::anyhow!("{e}"))?;
        if !result.errors.is_empty() {
            bail!("tensor errors: {:?}", result.errors);
        }
        if !result.missing.is_empty() {
            bail!("missing tensors: {:?}", result.missing);
        }
        // Touch every parameter so lazy loading failures surface here.
        let mut ok = true;
        for t in [
            model.conv1.weight.val(),
            model.conv2.weight.val(),
            model.conv3.weight.val(),
            model.conv4.weight.val(),
        ] {
            ok &= t.is_finite().all().into_scalar::<bool>();
        }
        for t in [model.fc1.weight.val(), model.fc2.weight.val()] {
            ok &= t.is_finite().all().into_scalar::<bool>();
        }
        if !ok {
            bail!("weights contain non-finite values");
        }
        Ok(model.valid())
    });
    match loaded {
        Ok(r) => r.with_context(ctx),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(anyhow::anyhow!("panic while loading: {msg}")).with_context(ctx)
        }
    }
}
