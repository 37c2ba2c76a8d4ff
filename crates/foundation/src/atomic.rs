//! Atomic file output, shared by every crate: the content goes to a sibling `<path>.tmp` first and
//! is renamed onto `path` only once it is complete, so a crash or an error never leaves a torn file
//! at `path` and never destroys the file that was there.

use std::path::{Path, PathBuf};

/// `path` with `.tmp` appended: a sibling in the same directory, so the final rename is atomic.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Writes `path` atomically: creates its parent directory, lets `write` fill [`tmp_path`]`(path)`,
/// then renames the temp file onto `path`.
///
/// If `write` or the rename fails, the temp file is removed and `path` keeps its old content (or
/// stays absent). `io_error` turns an I/O failure on the path it names (the parent directory or
/// `path`) into the caller's error type, so each crate keeps its own error enum.
pub fn write_atomic_with<T, E>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<T, E>,
    io_error: impl Fn(&Path, std::io::Error) -> E,
) -> Result<T, E> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
    }
    let tmp = tmp_path(path);
    let value = match write(&tmp) {
        Ok(value) => value,
        Err(e) => {
            // Best effort: the error being returned matters more than a leftover temp file.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_error(path, e)
    })?;
    Ok(value)
}
