//! Saving and loading module weights (safetensors), written atomically.

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::prelude::*;
use burn::store::{ModuleSnapshot, SafetensorsStore};

/// Errors from checkpoint I/O.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The safetensors file could not be written or parsed.
    #[error("{path}: {message}")]
    Format {
        /// File involved.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The file holds weights for a different model.
    #[error("{path}: does not match this model: {message}")]
    Mismatch {
        /// File involved.
        path: PathBuf,
        /// Which tensors disagree.
        message: String,
    },
    /// A JSON file could not be parsed.
    #[error("{path}: {message}")]
    Json {
        /// File involved.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A run could not go on: its training data did not load, or training diverged.
    #[error("{0}")]
    Run(String),
}

fn io_error(path: &Path, source: std::io::Error) -> CheckpointError {
    CheckpointError::Io { path: path.to_path_buf(), source }
}

/// Write bytes to `path` atomically (temp file + rename; creates the parent directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    data::atomic::write_atomic_with(
        path,
        |tmp| std::fs::write(tmp, bytes).map_err(|e| io_error(tmp, e)),
        io_error,
    )
}

/// Save a module's parameters to a safetensors file, atomically.
pub fn save_module<M: Module>(module: &M, path: &Path) -> Result<(), CheckpointError> {
    data::atomic::write_atomic_with(
        path,
        |tmp| {
            let mut store = SafetensorsStore::from_file(tmp).overwrite(true);
            module
                .save_into(&mut store)
                .map_err(|e| CheckpointError::Format { path: tmp.to_path_buf(), message: e.to_string() })
        },
        io_error,
    )
}

/// Load parameters from a safetensors file into `module`; every tensor must match by name and
/// shape, and the file must hold no extra tensors.
pub fn load_module<M: Module>(mut module: M, path: &Path) -> Result<M, CheckpointError> {
    if !path.exists() {
        return Err(CheckpointError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let mut store = SafetensorsStore::from_file(path);
    let result = module.load_from(&mut store).map_err(|e| CheckpointError::Format {
        path: path.to_path_buf(),
        message: first_line(&e.to_string()),
    })?;
    let mut problems = Vec::new();
    if !result.errors.is_empty() {
        problems.push(format!(
            "{} tensor(s) failed to load ({})",
            result.errors.len(),
            first_line(&format!("{:?}", result.errors[0]))
        ));
    }
    if !result.missing.is_empty() {
        problems.push(format!("{} tensor(s) missing (first: {})", result.missing.len(), result.missing[0].0));
    }
    if !result.unused.is_empty() {
        problems.push(format!("{} unexpected tensor(s) (first: {})", result.unused.len(), result.unused[0]));
    }
    if !problems.is_empty() {
        return Err(CheckpointError::Mismatch { path: path.to_path_buf(), message: problems.join("; ") });
    }
    Ok(module)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// Renumber parameter ids 0, 1, 2, ... in visiting order. Applied to every freshly built model,
/// so that optimizer state (keyed by parameter id) can be saved and restored across processes.
pub fn stable_param_ids<M: Module>(module: M) -> M {
    struct Renumber(u64);
    impl ModuleMapper for Renumber {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (_, value, mapper) = param.consume();
            self.0 += 1;
            Param::from_mapped_value(ParamId::from(self.0), value, mapper)
        }
    }
    module.map(&mut Renumber(0))
}
