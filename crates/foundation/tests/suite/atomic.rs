//! Atomic writes: a failed write never touches the final path and leaves no temp file; a
//! successful one creates missing directories and replaces the old content in one rename.

use std::path::{Path, PathBuf};

use foundation::atomic::{tmp_path, write_atomic_with};

/// A fresh scratch directory for one test (removed first, so reruns start clean).
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("data-atomic-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn io_error(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

#[test]
fn tmp_path_is_a_sibling_with_tmp_appended() {
    assert_eq!(
        tmp_path(Path::new("runs/a/model.safetensors")),
        PathBuf::from("runs/a/model.safetensors.tmp")
    );
    assert_eq!(tmp_path(Path::new("x")), PathBuf::from("x.tmp"));
}

#[test]
fn success_creates_parents_replaces_content_and_leaves_no_temp_file() {
    let dir = scratch("ok");
    let path = dir.join("nested/deeper/out.txt");
    let written = write_atomic_with(
        &path,
        |tmp| {
            assert_eq!(tmp, tmp_path(&path));
            std::fs::write(tmp, b"first").map_err(|e| io_error(tmp, e))?;
            Ok(5)
        },
        io_error,
    )
    .unwrap();
    assert_eq!(written, 5, "the writer's value is passed through");
    assert_eq!(std::fs::read(&path).unwrap(), b"first");
    write_atomic_with(&path, |tmp| std::fs::write(tmp, b"second").map_err(|e| io_error(tmp, e)), io_error)
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"second");
    assert!(!tmp_path(&path).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failed_write_keeps_the_old_file_and_removes_the_partial_temp_file() {
    let dir = scratch("fail");
    let path = dir.join("out.txt");
    write_atomic_with(&path, |tmp| std::fs::write(tmp, b"precious").map_err(|e| io_error(tmp, e)), io_error)
        .unwrap();
    let err = write_atomic_with(
        &path,
        |tmp| -> Result<(), String> {
            // Half a file, then a failure (a serialiser error, a full disk, ...).
            std::fs::write(tmp, b"torn").map_err(|e| io_error(tmp, e))?;
            Err("serialiser failed".to_string())
        },
        io_error,
    )
    .unwrap_err();
    assert_eq!(err, "serialiser failed");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious", "the old file is untouched");
    assert!(!tmp_path(&path).exists(), "the partial temp file is removed");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_parent_that_is_a_file_gives_an_error_naming_it() {
    let dir = scratch("parent");
    std::fs::create_dir_all(&dir).unwrap();
    let blocker = dir.join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let err = write_atomic_with(&blocker.join("out.txt"), |_| Ok(()), io_error).unwrap_err();
    assert!(err.contains("not-a-dir"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
