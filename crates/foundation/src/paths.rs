//! Where the workspace's shared data lives.

use std::path::{Path, PathBuf};

/// Finds the shared data directory (the one holding `mnist/` and
/// `fashion-mnist/`).
///
/// Returns the value of the environment variable `SHARED_DATA_DIR` if it is
/// set and non-empty (whether or not it exists); otherwise the first
/// existing directory of `../shared/data` relative to the current directory
/// and `<workspace root>/../shared/data` (the workspace root being two levels
/// above this crate's manifest directory, fixed at compile time); otherwise
/// `None`. Found directories are returned canonicalized.
pub fn shared_data_dir() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os("SHARED_DATA_DIR").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(v));
    }
    let workspace_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    [PathBuf::from("../shared/data"), workspace_root.join("../shared/data")]
        .into_iter()
        .find(|p| p.is_dir())
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
}
