//! Saving and loading eigendecomposed curvature (safetensors, f64) with JSON metadata that is
//! checked against the model on load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::factors::{EigenCurvature, KfacApprox, LayerEigen, LayerInfo};

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
    /// Not a valid curvature file.
    #[error("{path}: not a curvature file: {message}")]
    Format {
        /// File.
        path: PathBuf,
        /// Cause.
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
}

fn bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl EigenCurvature {
    /// Write to `path` (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<(), CurvatureIoError> {
        let header = Header {
            approx: self.approx,
            corrected: self.corrected,
            num_data: self.num_data,
            layers: self.infos(),
        };
        let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
        for (k, l) in self.layers.iter().enumerate() {
            let (di, d_o) = (l.info.d_in, l.info.d_out);
            data.push((format!("{k}.q_a"), bytes(&l.q_a), vec![di, di]));
            data.push((format!("{k}.q_b"), bytes(&l.q_b), vec![d_o, d_o]));
            data.push((format!("{k}.lambda_w"), bytes(&l.lambda_w), vec![d_o, di]));
            data.push((format!("{k}.lambda_b"), bytes(&l.lambda_b), vec![d_o]));
        }
        let views: Vec<(String, TensorView)> = data
            .iter()
            .map(|(n, b, s)| {
                (n.clone(), TensorView::new(Dtype::F64, s.clone(), b).expect("consistent tensor"))
            })
            .collect();
        let meta = HashMap::from([("curvature".to_string(), serde_json::to_string(&header).unwrap())]);
        let out = safetensors::serialize(views, &Some(meta))
            .map_err(|e| CurvatureIoError::Format { path: path.to_path_buf(), message: e.to_string() })?;
        let io = |p: &Path, source| CurvatureIoError::Io { path: p.to_path_buf(), source };
        data::atomic::write_atomic_with(path, |tmp| std::fs::write(tmp, &out).map_err(|e| io(tmp, e)), io)
    }

    /// Read from `path`; if `expected` is given, every layer's name and shape must match it.
    pub fn load(path: &Path, expected: Option<&[LayerInfo]>) -> Result<Self, CurvatureIoError> {
        let fmt = |m: String| CurvatureIoError::Format { path: path.to_path_buf(), message: m };
        let raw = std::fs::read(path)
            .map_err(|source| CurvatureIoError::Io { path: path.to_path_buf(), source })?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&raw).map_err(|e| fmt(e.to_string()))?;
        let header: Header = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("curvature"))
            .ok_or_else(|| fmt("no curvature metadata".into()))
            .and_then(|s| serde_json::from_str(s).map_err(|e| fmt(e.to_string())))?;
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
        let st = safetensors::SafeTensors::deserialize(&raw).map_err(|e| fmt(e.to_string()))?;
        let get = |name: String, len: usize| -> Result<Vec<f64>, CurvatureIoError> {
            let t = st.tensor(&name).map_err(|e| fmt(format!("{name}: {e}")))?;
            if t.dtype() != Dtype::F64 || t.data().len() != len * 8 {
                return Err(fmt(format!("{name}: wrong type or size")));
            }
            let v: Vec<f64> =
                t.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect();
            if v.iter().any(|x| !x.is_finite()) {
                return Err(fmt(format!("{name}: non-finite values")));
            }
            Ok(v)
        };
        let mut layers = Vec::new();
        for (k, info) in header.layers.into_iter().enumerate() {
            let (di, d_o) = (info.d_in, info.d_out);
            layers.push(LayerEigen {
                q_a: get(format!("{k}.q_a"), di * di)?,
                q_b: get(format!("{k}.q_b"), d_o * d_o)?,
                lambda_w: get(format!("{k}.lambda_w"), d_o * di)?,
                lambda_b: get(format!("{k}.lambda_b"), d_o)?,
                info,
            });
        }
        Ok(EigenCurvature {
            approx: header.approx,
            corrected: header.corrected,
            num_data: header.num_data,
            layers,
        })
    }
}
