//! A small MNIST CNN classifier, the feature extractor of the in-project sample-quality metrics
//! (Fréchet classifier distance, recognisability, class balance; see `diffusion::eval`).
//!
//! The network works on 28×28 single-channel images with pixels in [-1, 1] (the convention of the
//! `data` crate). Images of any other size, e.g. 14×14 diffusion samples, are resized to 28×28
//! with **bilinear interpolation** (`burn::tensor::module::interpolate`, half-pixel centres, i.e.
//! `align_corners = false`) before they are classified; see [`predict_proba_sized`] and
//! [`features_sized`].
//!
//! Architecture ([`MnistClassifier`]):
//! conv3×3(1→32)+ReLU, conv3×3(32→32)+ReLU, maxpool2,
//! conv3×3(32→64)+ReLU, conv3×3(64→64)+ReLU, maxpool2, flatten,
//! Linear(3136→128)+ReLU (the penultimate features), dropout,
//! Linear(128→10) (logits).
//!
//! Training ([`train_classifier`]) is an [`foundation::train::Objective`] on the workspace's one
//! training loop; the committed weights (`assets/mnist-classifier.safetensors`) load with
//! [`load_classifier`].

#![warn(missing_docs)]

mod infer;
mod io;
mod model;
mod train;

use std::path::{Path, PathBuf};

pub use infer::{
    accuracy, argmax, features, features_and_proba, features_sized, predict_proba, predict_proba_sized,
};
pub use io::{load_classifier, load_or_train_classifier, save_classifier};
pub use model::{MnistClassifier, MnistClassifierConfig};
pub use train::{
    train_classifier, train_classifier_with_report, ClassifierBatch, ClassifierObjective,
    ClassifierTrainConfig, ClassifierTrainingReport,
};

/// Side length (pixels) of the images the classifier works on.
pub const CLASSIFIER_SIDE: usize = 28;
/// Number of classes (digits 0–9).
pub const NUM_CLASSES: usize = 10;

/// Where the trained classifier weights live, relative to the workspace root (see
/// [`default_classifier_path`] for the absolute path).
pub const DEFAULT_CLASSIFIER_PATH: &str = "assets/mnist-classifier.safetensors";

/// Seed used by [`load_or_train_classifier`] when it has to train.
pub const DEFAULT_CLASSIFIER_SEED: u64 = 0;

/// Absolute path of [`DEFAULT_CLASSIFIER_PATH`], resolved from this crate's manifest directory
/// at compile time (`<crate>/../../assets/...`).
pub fn default_classifier_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(DEFAULT_CLASSIFIER_PATH)
}

/// Errors of the classifier: bad input data or settings, and weight files that cannot be
/// written or read (every message names the file).
#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    /// Training or test data, or the training settings, are unusable.
    #[error("{0}")]
    Invalid(String),
    /// The training data could not be loaded.
    #[error("loading MNIST: {0}")]
    Data(#[from] data::DataError),
    /// A weight or report file could not be written or read.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}
