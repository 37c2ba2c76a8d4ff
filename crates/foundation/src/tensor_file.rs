//! f64 and f32 arrays in one safetensors file with a checked JSON header: the project's format for
//! checkpoints and fitted factors.
//!
//! The header is any serde-serialisable value, stored as JSON under one key (the file's kind, e.g.
//! `"curvature"`) of the safetensors `__metadata__`. [`load`] refuses, in one line naming the
//! file, anything that is not a safetensors file, lacks the key, or whose header does not
//! deserialise into the expected type; [`TensorFile::f64`] and [`TensorFile::f32`] refuse a
//! missing tensor, another dtype, another shape or non-finite values. Writes go through the one
//! atomic writer ([`crate::atomic`]), so a crash never leaves a torn file at the path; the steps
//! of a save can be failed one by one ([`SaveFault`]) to test that.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::atomic::{write_atomic_with, IoError};

/// Errors reading or writing a tensor file. Every message is one line that names the file.
#[derive(Debug, thiserror::Error)]
pub enum TensorFileError {
    /// File-system error.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The file is not what was expected (not safetensors, no or another header, a tensor
    /// missing or of another dtype or shape, non-finite values).
    #[error("{}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The values of one tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    /// 64-bit floats.
    F64(Vec<f64>),
    /// 32-bit floats.
    F32(Vec<f32>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::F64(v) => v.len(),
            Values::F32(v) => v.len(),
        }
    }

    fn dtype(&self) -> Dtype {
        match self {
            Values::F64(_) => Dtype::F64,
            Values::F32(_) => Dtype::F32,
        }
    }

    fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            Values::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Values::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// A named tensor: row-major values and their shape.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// Name in the file.
    pub name: String,
    /// Shape (row-major; the product is the number of values).
    pub shape: Vec<usize>,
    /// The values.
    pub values: Values,
}

impl NamedTensor {
    /// An f64 tensor.
    pub fn f64(name: impl Into<String>, shape: Vec<usize>, values: Vec<f64>) -> Self {
        Self { name: name.into(), shape, values: Values::F64(values) }
    }

    /// An f32 tensor.
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, values: Vec<f32>) -> Self {
        Self { name: name.into(), shape, values: Values::F32(values) }
    }
}

/// The bytes of a tensor file: `tensors` and `header` as JSON under `__metadata__[key]`.
/// A tensor whose shape does not match its number of values, or two tensors of one name, are an
/// error message.
pub fn encode<H: Serialize>(key: &str, header: &H, tensors: &[NamedTensor]) -> Result<Vec<u8>, String> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|t| t.values.to_le_bytes()).collect();
    let mut seen = std::collections::HashSet::new();
    let mut views = Vec::with_capacity(tensors.len());
    for (t, b) in tensors.iter().zip(&bytes) {
        if !seen.insert(t.name.as_str()) {
            return Err(format!("tensor {} written twice", t.name));
        }
        if t.shape.iter().product::<usize>() != t.values.len() {
            return Err(format!("tensor {}: shape {:?} for {} values", t.name, t.shape, t.values.len()));
        }
        let view = TensorView::new(t.values.dtype(), t.shape.clone(), b)
            .map_err(|e| format!("tensor {}: {e}", t.name))?;
        views.push((t.name.clone(), view));
    }
    let json = serde_json::to_string(header).map_err(|e| format!("{key} header: {e}"))?;
    let meta = HashMap::from([(key.to_string(), json)]);
    safetensors::serialize(views, &Some(meta)).map_err(|e| e.to_string())
}

/// The steps of [`save_with`], in order. A crash at any of them leaves the previous file at the
/// path intact (at worst a stale `<path>.tmp` beside it, which nothing reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveStep {
    /// Serialising header and tensors (nothing on disk yet).
    Encode,
    /// Creating the temp file.
    CreateTemp,
    /// Writing the first half of the bytes.
    WriteFirstHalf,
    /// Writing the rest.
    WriteRest,
    /// The temp file is complete; next the atomic writer syncs it and renames it onto the path.
    Commit,
    /// The rename is done: the new file is in place.
    Renamed,
}

impl SaveStep {
    /// All steps, in order.
    pub const ALL: [SaveStep; 6] = [
        SaveStep::Encode,
        SaveStep::CreateTemp,
        SaveStep::WriteFirstHalf,
        SaveStep::WriteRest,
        SaveStep::Commit,
        SaveStep::Renamed,
    ];
}

/// A hook called before each [`SaveStep`] of a save; returning an error aborts the save there as a
/// crash would. Production code passes [`NoFault`]; tests pass [`FailAt`].
pub trait SaveFault {
    /// Called just before `step` (for [`SaveStep::Renamed`]: just after the rename).
    fn before(&mut self, step: SaveStep) -> std::io::Result<()>;
}

/// Lets every step run.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoFault;

impl SaveFault for NoFault {
    fn before(&mut self, _step: SaveStep) -> std::io::Result<()> {
        Ok(())
    }
}

/// Fails at the `k`-th step (0-based, in [`SaveStep::ALL`] order) of every save it is passed to;
/// `FailAt(SaveStep::ALL.len())` never fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailAt(pub usize);

impl SaveFault for FailAt {
    fn before(&mut self, step: SaveStep) -> std::io::Result<()> {
        let k = SaveStep::ALL.iter().position(|&s| s == step).expect("every step is listed");
        if k == self.0 {
            Err(std::io::Error::other(format!("injected fault at {step:?}")))
        } else {
            Ok(())
        }
    }
}

/// Writes a tensor file to `path` atomically (temp file + fsync + rename).
pub fn save<H: Serialize>(
    path: &Path,
    key: &str,
    header: &H,
    tensors: &[NamedTensor],
) -> Result<(), TensorFileError> {
    save_with(path, key, header, tensors, &mut NoFault)
}

/// [`save`] with a fault hook called before every [`SaveStep`].
pub fn save_with<H: Serialize>(
    path: &Path,
    key: &str,
    header: &H,
    tensors: &[NamedTensor],
    fault: &mut dyn SaveFault,
) -> Result<(), TensorFileError> {
    let io = |p: &Path, e: std::io::Error| TensorFileError::Io(IoError::new(p, e));
    fault.before(SaveStep::Encode).map_err(|e| io(path, e))?;
    let bytes = encode(key, header, tensors)
        .map_err(|message| TensorFileError::Format { path: path.into(), message })?;
    write_atomic_with(
        path,
        |tmp| {
            fault.before(SaveStep::CreateTemp).map_err(|e| io(tmp, e))?;
            let mut file = std::fs::File::create(tmp).map_err(|e| io(tmp, e))?;
            let half = bytes.len() / 2;
            fault.before(SaveStep::WriteFirstHalf).map_err(|e| io(tmp, e))?;
            file.write_all(&bytes[..half]).map_err(|e| io(tmp, e))?;
            fault.before(SaveStep::WriteRest).map_err(|e| io(tmp, e))?;
            file.write_all(&bytes[half..]).map_err(|e| io(tmp, e))?;
            fault.before(SaveStep::Commit).map_err(|e| io(tmp, e))
        },
        io,
    )?;
    fault.before(SaveStep::Renamed).map_err(|e| io(path, e))
}

/// A tensor file read back: its header and its tensors.
#[derive(Debug)]
pub struct TensorFile<H> {
    /// The checked header.
    pub header: H,
    path: PathBuf,
    tensors: HashMap<String, (Vec<usize>, Values)>,
}

/// Reads a tensor file whose header is stored under `key` and deserialises into `H`.
pub fn load<H: DeserializeOwned>(path: &Path, key: &str) -> Result<TensorFile<H>, TensorFileError> {
    let raw = std::fs::read(path).map_err(|e| IoError::new(path, e))?;
    decode(&raw, path, key)
}

/// [`load`] from bytes already read; `path` only names the file in errors.
pub fn decode<H: DeserializeOwned>(
    raw: &[u8],
    path: &Path,
    key: &str,
) -> Result<TensorFile<H>, TensorFileError> {
    let bad = |message: String| TensorFileError::Format { path: path.to_path_buf(), message };
    let (_, meta) = safetensors::SafeTensors::read_metadata(raw)
        .map_err(|e| bad(format!("not a tensor file of kind '{key}' (not safetensors: {e})")))?;
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(key))
        .ok_or_else(|| bad(format!("not a tensor file of kind '{key}' (no '{key}' header)")))?;
    let header: H = serde_json::from_str(json).map_err(|e| bad(format!("{key} header: {e}")))?;
    let file = safetensors::SafeTensors::deserialize(raw)
        .map_err(|e| bad(format!("not a tensor file of kind '{key}' (not safetensors: {e})")))?;
    let mut tensors = HashMap::new();
    for (name, view) in file.tensors() {
        let values = match view.dtype() {
            Dtype::F64 => Values::F64(
                view.data()
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            ),
            Dtype::F32 => Values::F32(
                view.data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect(),
            ),
            other => return Err(bad(format!("tensor {name} has dtype {other:?}, expected F64 or F32"))),
        };
        tensors.insert(name, (view.shape().to_vec(), values));
    }
    Ok(TensorFile { header, path: path.to_path_buf(), tensors })
}

impl<H> TensorFile<H> {
    fn bad(&self, message: String) -> TensorFileError {
        TensorFileError::Format { path: self.path.clone(), message }
    }

    /// Whether a tensor of this name is in the file.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The shape of tensor `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|(s, _)| s.as_slice())
    }

    fn entry(&self, name: &str, shape: Option<&[usize]>) -> Result<&Values, TensorFileError> {
        let (stored, values) =
            self.tensors.get(name).ok_or_else(|| self.bad(format!("tensor {name} is missing")))?;
        if let Some(shape) = shape {
            if stored.as_slice() != shape {
                return Err(self.bad(format!("tensor {name} has shape {stored:?}, expected {shape:?}")));
            }
        }
        Ok(values)
    }

    /// The f64 values of tensor `name`, which must have shape `shape` (`None`: any shape) and
    /// finite values.
    pub fn f64(&self, name: &str, shape: Option<&[usize]>) -> Result<Vec<f64>, TensorFileError> {
        match self.entry(name, shape)? {
            Values::F64(v) if v.iter().all(|x| x.is_finite()) => Ok(v.clone()),
            Values::F64(_) => Err(self.bad(format!("tensor {name} holds non-finite values"))),
            Values::F32(_) => Err(self.bad(format!("tensor {name} is f32, expected f64"))),
        }
    }

    /// The f32 values of tensor `name`, which must have shape `shape` (`None`: any shape) and
    /// finite values.
    pub fn f32(&self, name: &str, shape: Option<&[usize]>) -> Result<Vec<f32>, TensorFileError> {
        match self.entry(name, shape)? {
            Values::F32(v) if v.iter().all(|x| x.is_finite()) => Ok(v.clone()),
            Values::F32(_) => Err(self.bad(format!("tensor {name} holds non-finite values"))),
            Values::F64(_) => Err(self.bad(format!("tensor {name} is f64, expected f32"))),
        }
    }
}
