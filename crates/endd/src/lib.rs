//! Ensemble distribution distillation (Malinin, Mlodozeniec, Gales, ICLR 2020): an ensemble of `M`
//! classifiers tells knowledge uncertainty (members disagree) from data uncertainty (the input is
//! ambiguous); EnD distils its mean into one network and loses that, EnD² distils its
//! *distribution* into a Dirichlet prior network `Dir(exp(z(x)))` and keeps it; "+AUX" distils on
//! extra inputs where the ensemble disagrees.
//!
//! - [`loss`]: central smoothing, the temperature schedule, the EnD² negative log-likelihood with
//!   its gradient, EnD's target;
//! - [`uncertainty`]: total / data / knowledge uncertainty and EPKL of an ensemble, and of a
//!   Dirichlet in closed form (plus its differential entropy);
//! - [`metrics`]: % error, NLL, ECE, misclassification AUROC / AUPR / prediction-rejection ratio,
//!   OOD AUROC;
//! - [`model`]: the MLP and small CNN; [`train`]: members and students as objectives of the
//!   workspace's one training loop, the resumable sharded ensemble, the teacher file;
//! - [`data`]: the authors' spiral and ring, augmented MNIST; [`experiment`]: the runs that write
//!   `report.md` and PNGs; [`plot`]: the pictures.

#![warn(missing_docs)]

pub mod bench;
pub mod data;
pub mod experiment;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod special;
pub mod train;
pub mod uncertainty;

use std::path::{Path, PathBuf};

/// Errors of the crate; every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum EndError {
    /// Unusable settings or data.
    #[error("{0}")]
    Invalid(String),
    /// A file could not be read or written, or holds something else.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A tensor file (teacher outputs) is missing or malformed.
    #[error(transparent)]
    TensorFile(#[from] foundation::tensor_file::TensorFileError),
    /// A checkpoint (member or student weights) could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] foundation::train::CheckpointError),
    /// An atomic write failed.
    #[error(transparent)]
    Io(#[from] foundation::atomic::IoError),
    /// A PNG could not be written or encoded.
    #[error(transparent)]
    Png(#[from] foundation::plot::PngError),
    /// MNIST or Fashion-MNIST could not be loaded.
    #[error("loading data: {0}")]
    Data(#[from] ::data::DataError),
}

impl EndError {
    /// An error about `path`.
    pub fn file(path: &Path, message: impl std::fmt::Display) -> Self {
        EndError::File { path: path.to_path_buf(), message: message.to_string() }
    }
}
