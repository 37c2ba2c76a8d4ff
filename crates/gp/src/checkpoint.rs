//! Checkpoints of a training run ([`crate::train::Trainer`]), so that long runs (a full-size
//! dataset takes hours on a laptop-class CPU) can stop and resume exactly.
//!
//! One [`foundation::tensor_file`]: every f64 state array is a tensor (bit-exact), and a JSON
//! header holds the configuration, the data fingerprint, the random streams' positions and the
//! per-step log. A save writes a temp file, syncs it and renames it onto the path, so the
//! checkpoint at the path is at every instant the last complete one (or absent before the first
//! save): a crash at any step of a save ([`TrainCheckpoint::save_with`] and a
//! [`SaveFault`] fail each step in tests) leaves the previous checkpoint to resume from.

use std::path::Path;

use faer::{Mat, MatRef};
use foundation::tensor_file::{self, NamedTensor, NoFault, SaveFault, TensorFile};
use serde::{Deserialize, Serialize};

use crate::error::{GpError, Result};
use crate::estimator::ProbeDraws;
use crate::features::RandomFeatures;
use crate::train::{Adam, StepRecord, TrainConfig};

/// Identifies the training data a checkpoint belongs to: sizes and the workspace fingerprint
/// ([`foundation::fingerprint`]) of the inputs (column by column) then the targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFingerprint {
    /// Training points.
    pub n: usize,
    /// Input dimension.
    pub dim: usize,
    /// [`foundation::fingerprint::Fingerprint`] over the inputs' columns then the targets, for n
    /// rows.
    pub hash: u64,
}

impl DataFingerprint {
    /// The fingerprint of `(x, y)`.
    pub fn of(x: MatRef<'_, f64>, y: &[f64]) -> Self {
        let mut hash = foundation::fingerprint::Fingerprint::new();
        for j in 0..x.ncols() {
            for i in 0..x.nrows() {
                hash.f64(x[(i, j)]);
            }
        }
        hash.f64s(y);
        DataFingerprint { n: x.nrows(), dim: x.ncols(), hash: hash.finish(x.nrows()) }
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

/// Format tag in the header; version 2 uses the workspace data fingerprint.
const FORMAT: &str = "igp-train-checkpoint-2";
/// Key of the header in the safetensors metadata.
const KEY: &str = "igp";

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

fn vector(name: &str, v: &[f64]) -> NamedTensor {
    NamedTensor::f64(name, vec![v.len()], v.to_vec())
}

/// A matrix stored column-major with shape `[ncols, nrows]` (so that the safetensors row-major
/// layout is the faer column-major one).
fn matrix(name: &str, m: MatRef<'_, f64>) -> NamedTensor {
    let mut values = Vec::with_capacity(m.nrows() * m.ncols());
    for j in 0..m.ncols() {
        for i in 0..m.nrows() {
            values.push(m[(i, j)]);
        }
    }
    NamedTensor::f64(name, vec![m.ncols(), m.nrows()], values)
}

impl TrainCheckpoint {
    /// Writes the checkpoint to `path` (temp file + fsync + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.save_with(path, &mut NoFault)
    }

    /// [`TrainCheckpoint::save`] with a fault hook before every step of the save (tests use
    /// [`foundation::tensor_file::FailAt`] to fail each step in turn).
    pub fn save_with(&self, path: &Path, fault: &mut dyn SaveFault) -> Result<()> {
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
        Ok(tensor_file::save_with(path, KEY, &header, &arrays, fault)?)
    }

    /// Reads a checkpoint written by [`TrainCheckpoint::save`]; a file that is not one, or is
    /// truncated or inconsistent, is an error naming the problem.
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |message: String| GpError::Parse { what: path.display().to_string(), line: 0, message };
        let file: TensorFile<Header> = tensor_file::load(path, KEY)?;
        if file.header.format != FORMAT {
            return Err(bad(format!("checkpoint format '{}', expected '{FORMAT}'", file.header.format)));
        }
        let required_vector = |name: &str| -> Result<Vec<f64>> {
            match file.shape(name) {
                Some(shape) if shape.len() != 1 => Err(bad(format!("tensor {name} is not a vector"))),
                _ => Ok(file.f64(name, None)?),
            }
        };
        let optional_matrix = |name: &str| -> Result<Option<Mat<f64>>> {
            match file.shape(name).map(|s| s.to_vec()) {
                None => Ok(None),
                Some(shape) if shape.len() == 2 => {
                    let v = file.f64(name, None)?;
                    let (cols, rows) = (shape[0], shape[1]);
                    Ok(Some(Mat::from_fn(rows, cols, |i, j| v[j * rows + i])))
                }
                Some(_) => Err(bad(format!("tensor {name} is not a matrix"))),
            }
        };
        let required_matrix = |name: &str| -> Result<Mat<f64>> {
            optional_matrix(name)?.ok_or_else(|| bad(format!("tensor {name} is missing")))
        };
        let params = required_vector("params")?;
        let first_moment = required_vector("adam.first_moment")?;
        let second_moment = required_vector("adam.second_moment")?;
        let p = params.len();
        if first_moment.len() != p || second_moment.len() != p || p != file.header.data.dim + 2 {
            return Err(bad(format!(
                "{p} hyperparameters, {} and {} Adam moments, for input dimension {}",
                first_moment.len(),
                second_moment.len(),
                file.header.data.dim
            )));
        }
        let header = &file.header;
        let mut records = header.records.clone();
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
        let config = header.config.clone();
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
