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
    // The content reaches the disk before the rename makes it visible, so a power loss cannot
    // leave a renamed but empty file.
    if let Err(e) = sync_file(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_error(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_error(path, e)
    })?;
    // Best effort: make the rename itself durable (not every file system lets a directory be
    // opened and synced).
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = sync_dir(parent);
    }
    Ok(value)
}

/// Writes `bytes` to `path` atomically; I/O failures are reported as [`IoError`].
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    write_atomic_with(path, |tmp| std::fs::write(tmp, bytes).map_err(|e| IoError::new(tmp, e)), IoError::new)
}

/// Flushes a file's content to disk.
pub fn sync_file(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

/// Flushes a directory's entries (renames, new files) to disk.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The workspace's one I/O error: what failed, on which path.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct IoError {
    /// The file or directory involved.
    pub path: PathBuf,
    /// The underlying error.
    pub source: std::io::Error,
}

impl IoError {
    /// An error on `path`.
    pub fn new(path: &Path, source: std::io::Error) -> Self {
        Self { path: path.to_path_buf(), source }
    }
}
