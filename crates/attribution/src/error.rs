//! The attribution library's error: what went wrong, with the path or stage it concerns, as one
//! message (the binaries print it on one line).

/// Errors of the attribution pipelines (scoring, benchmark, demo, bench).
#[derive(Debug, thiserror::Error)]
pub enum AttributionError {
    /// Settings or inputs that cannot work (the message names the flag or file).
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing a file through the workspace's atomic writer.
    #[error(transparent)]
    Io(#[from] foundation::atomic::IoError),
    /// Another I/O failure (the surrounding context names the file).
    #[error(transparent)]
    OtherIo(#[from] std::io::Error),
    /// A training run: its config, checkpoint or training.
    #[error(transparent)]
    Run(#[from] diffusion::checkpoint::CheckpointError),
    /// Loading images or writing PNGs.
    #[error(transparent)]
    Data(#[from] data::DataError),
    /// Rendering or writing a figure.
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
    /// Writing a PNG (a bar chart).
    #[error(transparent)]
    Png(#[from] foundation::plot::PngError),
    /// A curvature factor file.
    #[error(transparent)]
    Curvature(#[from] curvature::io::CurvatureIoError),
    /// A JSON file that does not parse, or a value that does not serialise.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// `what` failed because of `source`.
    #[error("{what}: {source}")]
    Context {
        /// What was being done (or the file involved).
        what: String,
        /// Why it failed.
        source: Box<AttributionError>,
    },
}

/// The attribution library's result.
pub type Result<T, E = AttributionError> = std::result::Result<T, E>;

/// Adds what was being done to an error, like `anyhow::Context` but typed.
pub trait Context<T> {
    /// Wraps the error with `what`.
    fn context(self, what: impl Into<String>) -> Result<T>;
    /// Wraps the error with the message `what()` (computed only on error).
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: Into<AttributionError>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|e| AttributionError::Context { what: what.into(), source: Box::new(e.into()) })
    }

    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| AttributionError::Context { what: what().into(), source: Box::new(e.into()) })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.ok_or_else(|| AttributionError::Invalid(what.into()))
    }

    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.ok_or_else(|| AttributionError::Invalid(what().into()))
    }
}

/// Returns early with [`AttributionError::Invalid`] and a formatted message.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::AttributionError::Invalid(format!($($arg)*)))
    };
}

pub use crate::bail;
