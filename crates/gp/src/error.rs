//! Error type of the `gp` library.

use std::path::PathBuf;

/// Everything that can go wrong in the `gp` library. Each variant's message is one line that names
/// the problem, so the binary can print it as is.
#[derive(Debug, thiserror::Error)]
pub enum GpError {
    /// An input (features, targets, hyperparameters) contains NaN or infinity.
    #[error("non-finite value in {what}")]
    NonFinite {
        /// Which input held the bad value.
        what: String,
    },
    /// Two inputs disagree in size.
    #[error("dimension mismatch in {what}: expected {expected}, found {found}")]
    DimensionMismatch {
        /// Which inputs disagree.
        what: String,
        /// The size implied by the other input.
        expected: usize,
        /// The size found.
        found: usize,
    },
    /// A dataset name that the loader does not find (the message says where it looked).
    #[error("unknown dataset {0}")]
    UnknownDataset(String),
    /// A Cholesky factorisation failed even after adding the largest allowed jitter.
    #[error(
        "{what} is not positive definite (Cholesky failed even with jitter {jitter:e} added to the diagonal)"
    )]
    NotPositiveDefinite {
        /// Which matrix failed.
        what: String,
        /// The largest diagonal jitter that was tried.
        jitter: f64,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A data file is malformed.
    #[error("{what}, line {line}: {message}")]
    Parse {
        /// The file (or embedded resource) being parsed.
        what: String,
        /// One-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// A checkpoint or other tensor file that is not what it should be (I/O failures on it are
    /// [`GpError::Io`]).
    #[error(transparent)]
    TensorFile(foundation::tensor_file::TensorFileError),
    /// `--resume` (or [`crate::experiment`]'s resume) found no checkpoint to continue.
    #[error("no checkpoint at {}; run without --resume to start fresh", .0.display())]
    NoCheckpoint(PathBuf),
    /// An argument outside its valid range (e.g. a zero block size or split index 10).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl From<foundation::atomic::IoError> for GpError {
    fn from(e: foundation::atomic::IoError) -> Self {
        GpError::Io { path: e.path, source: e.source }
    }
}

impl From<foundation::tensor_file::TensorFileError> for GpError {
    fn from(e: foundation::tensor_file::TensorFileError) -> Self {
        match e {
            foundation::tensor_file::TensorFileError::Io(e) => e.into(),
            other => GpError::TensorFile(other),
        }
    }
}

/// Result alias of the `gp` library.
pub type Result<T> = std::result::Result<T, GpError>;
