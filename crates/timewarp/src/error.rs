//! The crate's one error type.

use foundation::atomic::IoError;

/// Errors of the timewarp library. Every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum TimewarpError {
    /// Bad input: a configuration value, a composition, a file's content.
    #[error("{0}")]
    Input(String),
    /// File-system error.
    #[error(transparent)]
    Io(#[from] IoError),
}
