//! Checkpoints on disk: module weights as safetensors, and crash-safe generations.
//!
//! Layout of a checkpoint named `<dir>/checkpoint`:
//!
//! ```text
//! <dir>/checkpoint-<step>/   one complete generation (model, EMA, optimizer, state.json)
//! <dir>/checkpoint -> checkpoint-<step>   the pointer: a symbolic link, replaced atomically
//! ```
//!
//! A generation is written in `checkpoint-<step>.partial/`, every file is flushed to disk, and the
//! directory is renamed to `checkpoint-<step>/` only when complete; the pointer is then replaced by
//! one `rename` of a new link over it, and only after that are older generations deleted. At every
//! instant a complete generation exists, and [`Checkpoints::latest`] finds it: the pointer's
//! target, or (if the process died before the pointer existed, e.g. while migrating) the newest
//! complete `checkpoint-<step>/`. Paths through the pointer (`checkpoint/ema.safetensors`) keep
//! working for readers, and a plain directory `checkpoint/` written by older code is read as a
//! generation and migrated by the next save (so are the `checkpoint.old/` and `checkpoint.tmp/`
//! that older code could leave behind when killed mid-save).

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::prelude::*;
use burn::store::{ModuleSnapshot, SafetensorsStore};

use crate::atomic::{sync_dir, sync_file, write_atomic_with};

/// Errors from checkpoint I/O and from runs built on it.
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
    /// A file could not be written or parsed.
    #[error("{path}: {message}")]
    Format {
        /// File involved.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The file holds weights or settings of something else.
    #[error("{path}: does not match this model: {message}")]
    Mismatch {
        /// File involved.
        path: PathBuf,
        /// Which tensors or settings disagree.
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
    /// Resuming was asked for but there is no complete checkpoint.
    #[error("{path}: no complete checkpoint to resume from")]
    NoCheckpoint {
        /// The checkpoint pointer looked for.
        path: PathBuf,
    },
    /// A save was stopped by a fault-injection hook ([`Checkpoints::save_with_hook`]).
    #[error("checkpoint save interrupted at step {at} of the write")]
    Interrupted {
        /// Index of the write step that did not run.
        at: usize,
    },
    /// A run could not go on: its training data did not load, or training diverged.
    #[error("{0}")]
    Run(String),
}

fn io_error(path: &Path, source: std::io::Error) -> CheckpointError {
    CheckpointError::Io { path: path.to_path_buf(), source }
}

/// Write bytes to `path` atomically (temp file, fsync, rename; creates the parent directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    write_atomic_with(path, |tmp| std::fs::write(tmp, bytes).map_err(|e| io_error(tmp, e)), io_error)
}

/// Save a module's parameters to a safetensors file, atomically.
pub fn save_module<M: Module>(module: &M, path: &Path) -> Result<(), CheckpointError> {
    write_atomic_with(
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
        return Err(io_error(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")));
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

/// The file whose presence marks a generation as complete (written last).
pub const STATE_FILE: &str = "state.json";

/// Writes one file of a generation into the directory it is given.
pub type FileWriter<'a> = Box<dyn FnOnce(&Path) -> Result<(), CheckpointError> + 'a>;

/// The generations of one checkpoint (see the module documentation for the layout).
#[derive(Clone, Debug)]
pub struct Checkpoints {
    pointer: PathBuf,
}

impl Checkpoints {
    /// The checkpoint whose pointer is `pointer` (e.g. `run/checkpoint`).
    pub fn new(pointer: &Path) -> Self {
        Self { pointer: pointer.to_path_buf() }
    }

    /// The pointer path.
    pub fn pointer(&self) -> &Path {
        &self.pointer
    }

    fn parent(&self) -> PathBuf {
        match self.pointer.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    fn name(&self) -> String {
        self.pointer
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "checkpoint".into())
    }

    /// Directory of the generation of `step`.
    pub fn generation(&self, step: usize) -> PathBuf {
        self.parent().join(format!("{}-{step}", self.name()))
    }

    /// Complete generations present on disk, `(step, directory)`, oldest first.
    pub fn generations(&self) -> Vec<(usize, PathBuf)> {
        let prefix = format!("{}-", self.name());
        let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(self.parent())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let step = name.strip_prefix(&prefix)?.parse::<usize>().ok()?;
                let dir = e.path();
                dir.join(STATE_FILE).is_file().then_some((step, dir))
            })
            .collect();
        out.sort();
        out
    }

    /// The newest complete generation: the pointer's target if it is complete (or the pointer
    /// itself when it is a directory written by older code), else the newest complete
    /// `checkpoint-<step>/`; `None` when there is none.
    pub fn latest(&self) -> Option<PathBuf> {
        if let Ok(meta) = std::fs::symlink_metadata(&self.pointer) {
            if meta.file_type().is_symlink() {
                if let Ok(target) = std::fs::read_link(&self.pointer) {
                    let dir = self.parent().join(target);
                    if dir.join(STATE_FILE).is_file() {
                        return Some(dir);
                    }
                }
            } else if meta.is_dir() && self.pointer.join(STATE_FILE).is_file() {
                return Some(self.pointer.clone());
            }
        }
        self.generations().pop().map(|(_, dir)| dir).or_else(|| self.leftovers().pop().map(|(_, dir)| dir))
    }

    /// Complete checkpoints left by the older save (rename `checkpoint/` to `checkpoint.old/`,
    /// then `checkpoint.tmp/` to `checkpoint/`): a process killed between the two renames left
    /// no `checkpoint/` but one or two complete copies here. Oldest step first.
    fn leftovers(&self) -> Vec<(usize, PathBuf)> {
        let mut out: Vec<(usize, PathBuf)> = ["old", "tmp"]
            .iter()
            .map(|ext| self.parent().join(format!("{}.{ext}", self.name())))
            .filter_map(|dir| read_step(&dir.join(STATE_FILE)).map(|step| (step, dir)))
            .collect();
        out.sort();
        out
    }

    /// Whether anything of this checkpoint is on disk (complete or not).
    pub fn any_trace(&self) -> bool {
        std::fs::symlink_metadata(&self.pointer).is_ok()
            || !self.generations().is_empty()
            || !self.leftovers().is_empty()
    }

    /// Writes the generation of `step` with `files` (in order; the last should write
    /// [`STATE_FILE`]) and points the checkpoint at it (see the module documentation).
    pub fn save(&self, step: usize, files: Vec<(&str, FileWriter<'_>)>) -> Result<PathBuf, CheckpointError> {
        self.save_with_hook(step, files, &mut |_| false)
    }

    /// [`save`](Self::save) with a fault-injection hook: `stop(k)` is asked before write step `k`
    /// (0, 1, 2, ...: each file, each flush, each rename, each deletion) and, if it says yes, the
    /// save returns [`CheckpointError::Interrupted`] at once, without cleaning up, as a killed
    /// process would leave things.
    pub fn save_with_hook(
        &self,
        step: usize,
        files: Vec<(&str, FileWriter<'_>)>,
        stop: &mut dyn FnMut(usize) -> bool,
    ) -> Result<PathBuf, CheckpointError> {
        let mut at = 0usize;
        let mut point = || {
            let k = at;
            at += 1;
            if stop(k) {
                Err(CheckpointError::Interrupted { at: k })
            } else {
                Ok(())
            }
        };
        let parent = self.parent();
        let target = self.generation(step);
        let mut partial = target.clone().into_os_string();
        partial.push(".partial");
        let partial = PathBuf::from(partial);

        point()?;
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(|e| io_error(&partial, e))?;
        }
        point()?;
        std::fs::create_dir_all(&partial).map_err(|e| io_error(&partial, e))?;
        let mut written = Vec::new();
        for (name, write) in files {
            point()?;
            let path = partial.join(name);
            write(&path)?;
            written.push(path);
        }
        for path in &written {
            point()?;
            sync_file(path).map_err(|e| io_error(path, e))?;
        }
        point()?;
        let _ = sync_dir(&partial);
        if target.exists() {
            // A generation of this step exists already: the pointer may name it, so it stays
            // (training is deterministic, the state of a step is the same).
            point()?;
            std::fs::remove_dir_all(&partial).map_err(|e| io_error(&partial, e))?;
        } else {
            point()?;
            std::fs::rename(&partial, &target).map_err(|e| io_error(&target, e))?;
            point()?;
            let _ = sync_dir(&parent);
        }
        // A plain directory at the pointer (older layout) becomes a generation of its own first:
        // its data stays complete at every instant, and `latest` finds it by name meanwhile.
        if let Ok(meta) = std::fs::symlink_metadata(&self.pointer) {
            if meta.is_dir() {
                point()?;
                let old_step = read_step(&self.pointer.join(STATE_FILE));
                let dest = match old_step {
                    Some(s) if !self.generation(s).exists() => self.generation(s),
                    _ => parent.join(format!("{}.legacy", self.name())),
                };
                std::fs::rename(&self.pointer, &dest).map_err(|e| io_error(&dest, e))?;
            }
        }
        let mut next = self.pointer.clone().into_os_string();
        next.push(".next");
        let next = PathBuf::from(next);
        point()?;
        if std::fs::symlink_metadata(&next).is_ok() {
            std::fs::remove_file(&next).map_err(|e| io_error(&next, e))?;
        }
        point()?;
        let link_target = PathBuf::from(target.file_name().expect("a generation has a name"));
        make_link(&link_target, &next).map_err(|e| io_error(&next, e))?;
        point()?;
        std::fs::rename(&next, &self.pointer).map_err(|e| io_error(&self.pointer, e))?;
        point()?;
        let _ = sync_dir(&parent);
        // Only now, with the pointer on the new generation, go the old ones.
        let name = self.name();
        let stale: Vec<PathBuf> = std::fs::read_dir(&parent)
            .map_err(|e| io_error(&parent, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                *p != target
                    && (n.strip_prefix(&format!("{name}-")).is_some_and(|rest| {
                        let digits = rest.strip_suffix(".partial").unwrap_or(rest);
                        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
                    }) || n == format!("{name}.legacy")
                        || n == format!("{name}.tmp")
                        || n == format!("{name}.old"))
            })
            .collect();
        for dir in stale {
            point()?;
            std::fs::remove_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        }
        Ok(target)
    }
}

/// The `step` field of a state file, if it can be read.
pub fn read_step(state_file: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(state_file).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value.get("step")?.as_u64().map(|s| s as usize)
}

#[cfg(unix)]
fn make_link(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn make_link(_target: &Path, _link: &Path) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "checkpoint pointers need symbolic links"))
}
