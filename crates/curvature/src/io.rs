//! Saving and loading eigendecomposed curvature (safetensors, f64) with JSON metadata that is
//! checked against the model on load.

use std::path::{Path, PathBuf};

use foundation::tensor_file::{self, NamedTensor, TensorFileError};
use serde::{Deserialize, Serialize};

use crate::factors::{EigenCurvature, KfacApprox, LayerEigen, LayerInfo};
use crate::fit::GgnKind;
use crate::loss::LossKind;

/// The settings a curvature was fitted with, recorded in the factor file's header next to the
/// approximation (expand / reduce) and whether the EK-FAC correction was applied. Files written
/// before 2026-11-29 have none: they read as MSE with the other fields unknown (`None`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurvatureMeta {
    /// The output loss (its GGN).
    #[serde(default)]
    pub loss: LossKind,
    /// Which Gauss-Newton matrix.
    #[serde(default)]
    pub ggn: Option<GgnKind>,
    /// Draws per example per pass (diffusion: (t, noise) draws; classifier: label draws).
    #[serde(default)]
    pub draws: Option<u64>,
    /// Seed of the draws and pseudo-gradients.
    #[serde(default)]
    pub seed: Option<u64>,
}

impl CurvatureMeta {
    /// Refuses factors fitted for another output loss, or (when `expected` is given) with other
    /// settings; unknown fields (older files) pass.
    pub fn check(
        &self,
        path: &Path,
        loss: LossKind,
        expected: Option<&CurvatureMeta>,
    ) -> Result<(), CurvatureIoError> {
        let mismatch =
            |message: String| Err(CurvatureIoError::Settings { path: path.to_path_buf(), message });
        if self.loss != loss {
            return mismatch(format!("fitted with output loss {}, this model's loss is {loss}", self.loss));
        }
        let Some(e) = expected else { return Ok(()) };
        if let (Some(a), Some(b)) = (self.ggn, e.ggn) {
            if a != b {
                return mismatch(format!("fitted with GGN {a:?}, expected {b:?}"));
            }
        }
        if let (Some(a), Some(b)) = (self.draws, e.draws) {
            if a != b {
                return mismatch(format!("fitted with {a} draws per example, expected {b}"));
            }
        }
        if let (Some(a), Some(b)) = (self.seed, e.seed) {
            if a != b {
                return mismatch(format!("fitted with seed {a}, expected {b}"));
            }
        }
        Ok(())
    }
}

/// Errors reading or writing curvature files.
#[derive(Debug, thiserror::Error)]
pub enum CurvatureIoError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Not a valid curvature file (the message says what is wrong).
    #[error("{}: {message}", path.display())]
    Format {
        /// File.
        path: PathBuf,
        /// Cause.
        message: String,
    },
    /// The factors were fitted with other settings (output loss, GGN, draws, seed).
    #[error("{path}: factors fitted with other settings: {message}")]
    Settings {
        /// File.
        path: PathBuf,
        /// Which setting differs.
        message: String,
    },
    /// The factors were fitted for another model.
    #[error("{path}: factors belong to another model: {message}")]
    Mismatch {
        /// File.
        path: PathBuf,
        /// Which layer differs.
        message: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Header {
    approx: KfacApprox,
    corrected: bool,
    num_data: usize,
    layers: Vec<LayerInfo>,
    #[serde(default, skip_serializing_if = "is_unknown")]
    settings: CurvatureMeta,
}

fn is_unknown(m: &CurvatureMeta) -> bool {
    *m == CurvatureMeta::default()
}

/// Key of the JSON header in the safetensors metadata (the format is unchanged since files were
/// first written: tensors `{k}.q_a`, `{k}.q_b`, `{k}.lambda_w`, `{k}.lambda_b`, header under
/// `curvature`).
const KEY: &str = "curvature";

fn from_tensor_file(e: TensorFileError) -> CurvatureIoError {
    match e {
        TensorFileError::Io(e) => CurvatureIoError::Io { path: e.path, source: e.source },
        TensorFileError::Format { path, message } => CurvatureIoError::Format { path, message },
    }
}

impl EigenCurvature {
    /// Write to `path` (atomically: temp file + fsync + rename).
    pub fn save(&self, path: &Path) -> Result<(), CurvatureIoError> {
        let header = Header {
            approx: self.approx,
            corrected: self.corrected,
            num_data: self.num_data,
            layers: self.infos(),
            settings: self.meta.clone(),
        };
        let mut tensors = Vec::new();
        for (k, l) in self.layers.iter().enumerate() {
            let (di, d_o) = (l.info.d_in, l.info.d_out);
            if !l.info.diagonal_input {
                tensors.push(NamedTensor::f64(format!("{k}.q_a"), vec![di, di], l.q_a.clone()));
            }
            tensors.push(NamedTensor::f64(format!("{k}.q_b"), vec![d_o, d_o], l.q_b.clone()));
            tensors.push(NamedTensor::f64(format!("{k}.lambda_w"), vec![d_o, di], l.lambda_w.clone()));
            tensors.push(NamedTensor::f64(format!("{k}.lambda_b"), vec![d_o], l.lambda_b.clone()));
        }
        tensor_file::save(path, KEY, &header, &tensors).map_err(from_tensor_file)
    }

    /// The same curvature with `meta` as its recorded settings.
    pub fn with_meta(mut self, meta: CurvatureMeta) -> Self {
        self.meta = meta;
        self
    }

    /// Read from `path`; if `expected` is given, every layer's name and shape must match it.
    pub fn load(path: &Path, expected: Option<&[LayerInfo]>) -> Result<Self, CurvatureIoError> {
        let file = tensor_file::load::<Header>(path, KEY).map_err(from_tensor_file)?;
        let header = &file.header;
        if let Some(exp) = expected {
            if exp.len() != header.layers.len() {
                return Err(CurvatureIoError::Mismatch {
                    path: path.to_path_buf(),
                    message: format!(
                        "{} layers in the file, {} in the model",
                        header.layers.len(),
                        exp.len()
                    ),
                });
            }
            for (a, b) in header.layers.iter().zip(exp) {
                if (&a.name, a.d_in, a.d_out, a.has_bias) != (&b.name, b.d_in, b.d_out, b.has_bias) {
                    return Err(CurvatureIoError::Mismatch {
                        path: path.to_path_buf(),
                        message: format!(
                            "layer {} is {}x{} in the file, model has {} {}x{}",
                            a.name, a.d_out, a.d_in, b.name, b.d_out, b.d_in
                        ),
                    });
                }
            }
        }
        let get = |name: String, shape: &[usize]| file.f64(&name, Some(shape)).map_err(from_tensor_file);
        let mut layers = Vec::new();
        for (k, info) in header.layers.iter().cloned().enumerate() {
            let (di, d_o) = (info.d_in, info.d_out);
            layers.push(LayerEigen {
                q_a: if info.diagonal_input { Vec::new() } else { get(format!("{k}.q_a"), &[di, di])? },
                q_b: get(format!("{k}.q_b"), &[d_o, d_o])?,
                lambda_w: get(format!("{k}.lambda_w"), &[d_o, di])?,
                lambda_b: get(format!("{k}.lambda_b"), &[d_o])?,
                info,
            });
        }
        let header = &file.header;
        Ok(EigenCurvature {
            approx: header.approx,
            corrected: header.corrected,
            num_data: header.num_data,
            layers,
            meta: header.settings.clone(),
        })
    }
}
