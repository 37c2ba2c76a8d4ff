//! Training: the classifier's cross-entropy as an [`Objective`] on the workspace's one training
//! loop ([`foundation::train::Trainer`]: AdamW with epsilon 1e-8 and no weight decay, cosine
//! decay per step, no warmup, no clipping, no EMA).

use std::ops::Range;
use std::time::Instant;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::TensorData;
use data::Dataset;
use foundation::loss::softmax_cross_entropy;
use foundation::progress::Progress;
use foundation::rng::{epoch_order, stream_for, Purpose};
use foundation::train::{Objective, OptimConfig, Trainer};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::infer::accuracy;
use crate::model::{MnistClassifier, MnistClassifierConfig};
use crate::{ClassifierError, CLASSIFIER_SIDE, NUM_CLASSES};

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
    /// Peak learning rate (cosine-decayed per step to `lr * final_lr_fraction`).
    #[config(default = 2e-3)]
    pub lr: f64,
    /// Final learning rate as a fraction of `lr`.
    #[config(default = 0.02)]
    pub final_lr_fraction: f64,
    /// Augmentation: each training image is shifted by a random integer offset in
    /// `-max_shift..=max_shift` pixels along each axis (background filled with -1). 0 disables
    /// augmentation.
    #[config(default = 2)]
    pub max_shift: usize,
}

impl ClassifierTrainConfig {
    /// Steps of one pass over `n` training images (the last batch may be short).
    pub fn steps_per_epoch(&self, n: usize) -> usize {
        n.div_ceil(self.batch_size)
    }

    /// The trainer's settings for `n` training images and `seed`.
    pub fn optim(&self, n: usize, seed: u64) -> OptimConfig {
        OptimConfig {
            steps: self.steps_per_epoch(n) * self.epochs,
            lr: self.lr,
            warmup_steps: 0,
            min_lr_ratio: self.final_lr_fraction,
            weight_decay: 0.0,
            grad_clip: None,
            ema_decay: 0.0,
            seed,
            microbatches: 1,
        }
    }
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

/// A minibatch: images `[B, 1, 28, 28]` and one-hot labels `[B, 10]`.
#[derive(Clone, Debug)]
pub struct ClassifierBatch {
    /// Images.
    pub x: Tensor<4>,
    /// One-hot labels.
    pub y: Tensor<2>,
}

/// Softmax cross-entropy on shifted training images. Step `s` of epoch `e = s / steps_per_epoch`
/// takes the next `batch_size` images of the permutation drawn from
/// `stream_for(seed, Purpose::TrainOrder, e)`, each shifted by offsets drawn from
/// `stream_for(seed, Purpose::TrainNoise, s)`.
pub struct ClassifierObjective<'a> {
    /// Training images (28×28).
    pub train: &'a Dataset,
    /// Settings.
    pub config: &'a ClassifierTrainConfig,
    /// Seed of the order and the shifts.
    pub seed: u64,
}

impl Objective<MnistClassifier> for ClassifierObjective<'_> {
    type Batch = ClassifierBatch;

    fn batch(&self, step: usize, device: &Device) -> ClassifierBatch {
        let n = self.train.n;
        let per_epoch = self.config.steps_per_epoch(n);
        let (epoch, pos) = (step / per_epoch, step % per_epoch);
        let order = epoch_order(self.seed, epoch, n);
        let chunk = &order[pos * self.config.batch_size..((pos + 1) * self.config.batch_size).min(n)];
        let mut rng = stream_for(self.seed, Purpose::TrainNoise, step as u64);
        let side = CLASSIFIER_SIDE;
        let mut x = Vec::with_capacity(chunk.len() * side * side);
        let mut y = vec![0.0f32; chunk.len() * NUM_CLASSES];
        for (k, &i) in chunk.iter().enumerate() {
            let s = self.config.max_shift as i64;
            let (dy, dx) = if s > 0 { (rng.gen_range(-s..=s), rng.gen_range(-s..=s)) } else { (0, 0) };
            push_shifted(&mut x, self.train.image(i), side, dy, dx);
            y[k * NUM_CLASSES + self.train.labels[i] as usize] = 1.0;
        }
        let b = chunk.len();
        ClassifierBatch {
            x: Tensor::from_data(TensorData::new(x, [b, 1, side, side]), device),
            y: Tensor::from_data(TensorData::new(y, [b, NUM_CLASSES]), device),
        }
    }

    fn batch_len(&self, batch: &ClassifierBatch) -> usize {
        batch.y.dims()[0]
    }

    fn slice(&self, batch: &ClassifierBatch, range: Range<usize>) -> ClassifierBatch {
        let len = range.end - range.start;
        ClassifierBatch {
            x: batch.x.clone().narrow(0, range.start, len),
            y: batch.y.clone().narrow(0, range.start, len),
        }
    }

    fn loss(&self, model: &MnistClassifier, batch: ClassifierBatch) -> Tensor<1> {
        softmax_cross_entropy(model.forward(batch.x), batch.y)
    }

    fn draws_randomness(&self, model: &MnistClassifier) -> bool {
        model.dropout.prob > 0.0
    }
}

/// Trains a classifier on `train` (28×28 images) and returns it (in validation mode, on the plain
/// non-autodiff flex device) together with its accuracy on `test`.
///
/// Deterministic given `seed`, whatever else runs in the process: initialisation, order,
/// augmentation shifts and dropout masks come from seeded streams
/// ([`ClassifierObjective`]). Errors if the datasets are empty, are not 28×28, or contain labels
/// ≥ 10.
pub fn train_classifier(
    train: &Dataset,
    test: &Dataset,
    cfg: &ClassifierTrainConfig,
    seed: u64,
) -> Result<(MnistClassifier, f64), ClassifierError> {
    let (model, report) =
        train_classifier_with_report(train, test, cfg, seed, &foundation::progress::NoProgress)?;
    Ok((model, report.accuracy))
}

/// Like [`train_classifier`], but returns a full [`ClassifierTrainingReport`] and reports each
/// step to `progress`.
pub fn train_classifier_with_report(
    train: &Dataset,
    test: &Dataset,
    cfg: &ClassifierTrainConfig,
    seed: u64,
    progress: &dyn Progress,
) -> Result<(MnistClassifier, ClassifierTrainingReport), ClassifierError> {
    check_dataset(train, "training set", true)?;
    check_dataset(test, "test set", false)?;
    if cfg.batch_size == 0 || cfg.epochs == 0 {
        return Err(ClassifierError::Invalid(format!(
            "batch_size and epochs must be positive (got {cfg:?})"
        )));
    }
    let start = Instant::now();
    let optim = cfg.optim(train.n, seed);
    let steps = optim.steps;
    let trainer = Trainer::new(optim, ClassifierObjective { train, config: cfg, seed }, &Device::flex());
    let mut state = trainer.init_state(|rng, device| cfg.model.init_with(rng, device));
    trainer
        .run(&mut state, steps, None, progress, |_| Ok(()))
        .map_err(|e| ClassifierError::Invalid(e.to_string()))?;
    let seconds = start.elapsed().as_secs_f64();
    let model = state.model.valid();
    let accuracy = accuracy(&model, test, &Device::flex());
    let report = ClassifierTrainingReport {
        accuracy,
        epochs: cfg.epochs,
        seed,
        seconds,
        train_size: train.n,
        test_size: test.n,
        num_params: model.num_params(),
        config: serde_json::to_value(cfg).map_err(|e| ClassifierError::Invalid(e.to_string()))?,
    };
    Ok((model, report))
}

/// Validates a dataset for training/evaluation.
fn check_dataset(d: &Dataset, what: &str, require_28: bool) -> Result<(), ClassifierError> {
    let invalid = |m: String| Err(ClassifierError::Invalid(m));
    if d.n == 0 {
        return invalid(format!("the {what} is empty"));
    }
    if require_28 && (d.height != CLASSIFIER_SIDE || d.width != CLASSIFIER_SIDE) {
        return invalid(format!(
            "the {what} has {}x{} images; the classifier trains on {CLASSIFIER_SIDE}x{CLASSIFIER_SIDE}",
            d.height, d.width
        ));
    }
    if d.images.len() != d.n * d.height * d.width || d.labels.len() != d.n {
        return invalid(format!("the {what} has inconsistent sizes"));
    }
    if d.labels.iter().any(|&l| l as usize >= NUM_CLASSES) {
        return invalid(format!("the {what} has a label >= {NUM_CLASSES}"));
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
