//! Checkpoints of a training run ([`crate::train::Trainer`]), so that long runs (a full-size
//! dataset takes hours on a laptop-class CPU) can stop and resume exactly.
//!
//! One safetensors file: every f64 state array is a tensor (bit-exact), and a JSON header in the
//! file's metadata holds the configuration, the data fingerprint, the random streams' positions
//! and the per-step log. Writes go to a temp file and a rename, so a crash never leaves a torn
//! checkpoint.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use faer::{Mat, MatRef};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::error::{GpError, Result};
use crate::estimator::ProbeDraws;
use crate::features::RandomFeatures;
use crate::train::{Adam, StepRecord, TrainConfig};

/// Identifies the training data a checkpoint belongs to: sizes and a 64-bit FNV-1a hash of the
/// bits of every input and target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFingerprint {
    /// Training points.
    pub n: usize,
    /// Input dimension.
    pub dim: usize,
    /// FNV-1a over the inputs (column by column) then the targets.
    pub hash: u64,
}

impl DataFingerprint {
    /// The fingerprint of `(x, y)`.
    pub fn of(x: MatRef<'_, f64>, y: &[f64]) -> Self {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |v: f64| {
            for b in v.to_bits().to_le_bytes() {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        };
        for j in 0..x.ncols() {
            for i in 0..x.nrows() {
                eat(x[(i, j)]);
            }
        }
        y.iter().copied().for_each(&mut eat);
        DataFingerprint { n: x.nrows(), dim: x.ncols(), hash }
    }
}

/// The complete state of a [`crate::train::Trainer`] between two steps.
#[derive(Clone, Debug)]
pub struct TrainCheckpoint {
    /// Configuration of the run.
    pub config: TrainConfig,
    /// The training data it ran on.
    pub data: DataFingerprint,
    /// Softplus-space hyperparameters u (θ = softplus(u)).
    pub params: Vec<f64>,
    /// Optimiser state.
    pub adam: Adam,
    /// Position of the probe random stream.
    pub probe_rng_word_pos: u128,
    /// Position of the SGD mini-batch random stream.
    pub solver_rng_word_pos: u128,
    /// The current probe randomness.
    pub draws: Option<ProbeDraws>,
    /// The last step's solution `[α | U]`.
    pub previous_solution: Option<Mat<f64>>,
    /// Per-step log so far.
    pub records: Vec<StepRecord>,
}

/// Writes `bytes` to `path` through `<path>.tmp` and a rename, creating the parent directory, so
/// that a crash never leaves a torn file (checkpoints here, JSON results in `igp`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    fn io(path: &Path, source: std::io::Error) -> GpError {
        GpError::Io { path: path.to_path_buf(), source }
    }
    data::atomic::write_atomic_with(
        path,
        |tmp| {
            let mut file = std::fs::File::create(tmp).map_err(|e| io(tmp, e))?;
            file.write_all(bytes).map_err(|e| io(tmp, e))?;
            // Durability is a bonus; the rename is what keeps the old file safe.
            file.sync_all().ok();
            Ok(())
        },
        io,
    )
}

const FORMAT: &str = "igp-train-checkpoint-1";

/// The JSON part of the file (everything that is not an f64 array).
#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    config: TrainConfig,
    data: DataFingerprint,
    adam_step: i32,
    probe_rng_word_pos: String,
    solver_rng_word_pos: String,
    records: Vec<StepRecord>,
}

/// A tensor to be written: name, column-major values, shape `[ncols, nrows]` (so that the
/// safetensors row-major layout is the faer column-major one).
struct Array {
    name: &'static str,
    bytes: Vec<u8>,
    shape: Vec<usize>,
}

fn vector(name: &'static str, v: &[f64]) -> Array {
    Array { name, bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(), shape: vec![v.len()] }
}

fn matrix(name: &'static str, m: MatRef<'_, f64>) -> Array {
    let mut bytes = Vec::with_capacity(m.nrows() * m.ncols() * 8);
    for j in 0..m.ncols() {
        for i in 0..m.nrows() {
            bytes.extend_from_slice(&m[(i, j)].to_le_bytes());
        }
    }
    Array { name, bytes, shape: vec![m.ncols(), m.nrows()] }
}

impl TrainCheckpoint {
    /// Writes the checkpoint to `path` (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let header = Header {
            format: FORMAT.into(),
            config: self.config.clone(),
            data: self.data,
            adam_step: self.adam.step,
            probe_rng_word_pos: self.probe_rng_word_pos.to_string(),
            solver_rng_word_pos: self.solver_rng_word_pos.to_string(),
            records: self.records.clone(),
        };
        let hypers: Vec<f64> = self.records.iter().flat_map(|r| r.hyper.to_vec()).collect();
        let mut arrays = vec![
            vector("params", &self.params),
            vector("adam.first_moment", &self.adam.first_moment),
            vector("adam.second_moment", &self.adam.second_moment),
            // The log's θ bit-exact: the last one is the θ of the solve used for predictions.
            vector("records.hyper", &hypers),
        ];
        match &self.draws {
            Some(ProbeDraws::Gaussian { probes }) => arrays.push(matrix("probes", probes.as_ref())),
            Some(ProbeDraws::Pathwise { features, unit_noise }) => {
                arrays.push(matrix("features.frequencies", features.frequencies.as_ref()));
                arrays.push(matrix("features.weights", features.weights.as_ref()));
                arrays.push(matrix("unit_noise", unit_noise.as_ref()));
            }
            None => {}
        }
        if let Some(v) = &self.previous_solution {
            arrays.push(matrix("previous_solution", v.as_ref()));
        }
        let views = arrays
            .iter()
            .map(|a| {
                TensorView::new(Dtype::F64, a.shape.clone(), &a.bytes)
                    .map(|view| (a.name.to_string(), view))
                    .map_err(|e| GpError::InvalidArgument(format!("checkpoint tensor {}: {e}", a.name)))
            })
            .collect::<Result<Vec<_>>>()?;
        let header = serde_json::to_string(&header)
            .map_err(|e| GpError::InvalidArgument(format!("checkpoint header: {e}")))?;
        let meta = HashMap::from([("igp".to_string(), header)]);
        let bytes = safetensors::serialize(views, &Some(meta))
            .map_err(|e| GpError::InvalidArgument(format!("checkpoint: {e}")))?;
        write_atomic(path, &bytes)
    }

    /// Reads a checkpoint written by [`TrainCheckpoint::save`]; a file that is not one, or is
    /// truncated or inconsistent, is an error naming the problem.
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |message: String| GpError::Parse { what: path.display().to_string(), line: 0, message };
        let raw = std::fs::read(path).map_err(|source| GpError::Io { path: path.to_path_buf(), source })?;
        let file = safetensors::SafeTensors::deserialize(&raw)
            .map_err(|e| bad(format!("not a checkpoint file ({e})")))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&raw)
            .map_err(|e| bad(format!("not a checkpoint file ({e})")))?;
        let header: Header = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("igp"))
            .ok_or_else(|| bad("not an igp checkpoint (no igp metadata)".into()))
            .and_then(|s| serde_json::from_str(s).map_err(|e| bad(format!("checkpoint header: {e}"))))?;
        if header.format != FORMAT {
            return Err(bad(format!("checkpoint format '{}', expected '{FORMAT}'", header.format)));
        }
        let array = |name: &str| -> Result<Option<(Vec<f64>, Vec<usize>)>> {
            let tensor = match file.tensor(name) {
                Ok(t) => t,
                Err(_) => return Ok(None),
            };
            if tensor.dtype() != Dtype::F64 {
                return Err(bad(format!("tensor {name} is not f64")));
            }
            let values: Vec<f64> = tensor
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8-byte chunk")))
                .collect();
            if values.iter().any(|v| !v.is_finite()) {
                return Err(bad(format!("tensor {name} holds non-finite values")));
            }
            Ok(Some((values, tensor.shape().to_vec())))
        };
        let required_vector = |name: &str| -> Result<Vec<f64>> {
            match array(name)? {
                Some((v, shape)) if shape.len() == 1 => Ok(v),
                Some(_) => Err(bad(format!("tensor {name} is not a vector"))),
                None => Err(bad(format!("tensor {name} is missing"))),
            }
        };
        let optional_matrix = |name: &str| -> Result<Option<Mat<f64>>> {
            match array(name)? {
                Some((v, shape)) if shape.len() == 2 => {
                    let (cols, rows) = (shape[0], shape[1]);
                    Ok(Some(Mat::from_fn(rows, cols, |i, j| v[j * rows + i])))
                }
                Some(_) => Err(bad(format!("tensor {name} is not a matrix"))),
                None => Ok(None),
            }
        };
        let required_matrix = |name: &str| -> Result<Mat<f64>> {
            optional_matrix(name)?.ok_or_else(|| bad(format!("tensor {name} is missing")))
        };
        let params = required_vector("params")?;
        let first_moment = required_vector("adam.first_moment")?;
        let second_moment = required_vector("adam.second_moment")?;
        let p = params.len();
        if first_moment.len() != p || second_moment.len() != p || p != header.data.dim + 2 {
            return Err(bad(format!(
                "{p} hyperparameters, {} and {} Adam moments, for input dimension {}",
                first_moment.len(),
                second_moment.len(),
                header.data.dim
            )));
        }
        let mut records = header.records;
        let hypers = required_vector("records.hyper")?;
        if hypers.len() != records.len() * p {
            return Err(bad(format!("{} logged θ values for {} steps", hypers.len(), records.len())));
        }
        for (record, theta) in records.iter_mut().zip(hypers.chunks_exact(p.max(1))) {
            record.hyper = crate::kernel::Hyperparameters::from_slice(theta)?;
        }
        let draws = if let Some(probes) = optional_matrix("probes")? {
            Some(ProbeDraws::Gaussian { probes })
        } else if let Some(unit_noise) = optional_matrix("unit_noise")? {
            let features = RandomFeatures {
                frequencies: required_matrix("features.frequencies")?,
                weights: required_matrix("features.weights")?,
            };
            Some(ProbeDraws::Pathwise { features, unit_noise })
        } else {
            None
        };
        let previous_solution = optional_matrix("previous_solution")?;
        let n = header.data.n;
        let rows_ok = |m: &Mat<f64>| m.nrows() == n;
        let draws_ok = match &draws {
            Some(ProbeDraws::Gaussian { probes }) => rows_ok(probes),
            Some(ProbeDraws::Pathwise { features, unit_noise }) => {
                rows_ok(unit_noise) && features.frequencies.nrows() == header.data.dim
            }
            None => true,
        };
        if !draws_ok || !previous_solution.as_ref().is_none_or(rows_ok) {
            return Err(bad(format!("probe or solution arrays do not have {n} rows")));
        }
        let position = |s: &str, what: &str| {
            s.parse::<u128>().map_err(|e| bad(format!("{what} random stream position '{s}': {e}")))
        };
        let config = header.config;
        let learning_rate = config.learning_rate;
        Ok(TrainCheckpoint {
            probe_rng_word_pos: position(&header.probe_rng_word_pos, "probe")?,
            solver_rng_word_pos: position(&header.solver_rng_word_pos, "solver")?,
            config,
            data: header.data,
            params,
            adam: Adam { learning_rate, first_moment, second_moment, step: header.adam_step },
            draws,
            previous_solution,
            records,
        })
    }
}
