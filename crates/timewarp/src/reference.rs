//! Long MD references and training pairs: independent BAOAB runs of a cluster (one per rayon
//! task), the quench of every saved frame to its isomer, populations with moving-block bootstrap
//! standard errors, the coordination CVs, and the pairs (x(t), x(t + τ)) written to a tensor
//! file.

use std::path::Path;
use std::time::Instant;

use foundation::tensor_file::{self, NamedTensor};
use rayon::prelude::*;

use crate::error::TimewarpError;
use crate::isomers::{coordination_moments, quench, IsomerTable};
use crate::lj::LjCluster;
use crate::md::{baoab, trajectory, Langevin, MdState};
use crate::rng;
use crate::stats::{block_bootstrap_sd, ess, integrated_time};

/// Settings of an MD reference.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MdConfig {
    /// The cluster's composition (`lj7`, `A4B3`, ...).
    pub composition: String,
    /// Integrator.
    pub langevin: Langevin,
    /// Steps between saved frames.
    pub stride: usize,
    /// Saved frames per run.
    pub frames: usize,
    /// Independent runs (run in parallel).
    pub runs: usize,
    /// Steps discarded at the start of each run.
    pub burn_in: usize,
    /// Seed of every stream.
    pub seed: u64,
}

impl MdConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), TimewarpError> {
        self.langevin.validate()?;
        if self.stride == 0 || self.frames < 2 || self.runs == 0 {
            return Err(TimewarpError::Input(format!(
                "MD needs stride >= 1, frames >= 2 and runs >= 1, got {}, {}, {}",
                self.stride, self.frames, self.runs
            )));
        }
        Ok(())
    }
}

/// Frames of the runs of an MD reference and the wall time the dynamics took.
#[derive(Clone, Debug)]
pub struct MdFrames {
    /// The cluster simulated.
    pub cluster: LjCluster,
    /// One `frames × dim` row-major block per run.
    pub runs: Vec<Vec<f64>>,
    /// Wall seconds of the dynamics alone, summed over runs (CPU-seconds of MD).
    pub md_seconds: f64,
}

/// Runs the MD reference of `cfg`.
pub fn run_md(cfg: &MdConfig) -> Result<MdFrames, TimewarpError> {
    cfg.validate()?;
    let cluster = LjCluster::parse(&cfg.composition)?;
    let out: Vec<(Vec<f64>, f64)> = (0..cfg.runs)
        .into_par_iter()
        .map(|run| {
            let mut r = rng::stream(cfg.seed, rng::LANGEVIN, run as u64);
            let mut init = rng::stream(cfg.seed, rng::INIT, run as u64);
            let t = Instant::now();
            let mut state = MdState::new(&cluster, cluster.initial_positions(), cfg.langevin.kt, &mut init);
            baoab(&cluster, &cfg.langevin, &mut state, cfg.burn_in, &mut r);
            let frames = trajectory(&cluster, &cfg.langevin, &mut state, cfg.frames, cfg.stride, &mut r);
            (frames, t.elapsed().as_secs_f64())
        })
        .collect();
    let md_seconds = out.iter().map(|o| o.1).sum();
    Ok(MdFrames { cluster, runs: out.into_iter().map(|o| o.0).collect(), md_seconds })
}

/// MD's time to visit every isomer of a table along run 0 of a reference, continued past the
/// reference's frames.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MdTimeToAll {
    /// Wall seconds of the dynamics (start, burn-in and steps; the quench of each frame is
    /// analysis, not counted) until the frame after which every isomer had been seen (None: some
    /// isomer was not seen within the frames simulated).
    pub seconds: Option<f64>,
    /// Frames until every isomer had been seen (None: not within the frames simulated).
    pub frames_to_all: Option<usize>,
    /// Frames simulated.
    pub frames: usize,
    /// Wall seconds of the dynamics of all frames simulated (the budget, when `seconds` is None).
    pub md_seconds: f64,
}

/// Frames per chunk of [`md_time_to_all`] (the dynamics of a chunk is timed as a whole and its
/// time spread evenly over its frames).
const TIME_TO_ALL_CHUNK: usize = 2000;

/// MD's time to visit every isomer of `table` on run 0 of `cfg` (the same streams as
/// [`run_md`]'s run 0, so its first `cfg.frames` frames are that run's), continued for up to
/// `max_frames` frames and stopped once every isomer has been seen. Only the dynamics is timed;
/// each chunk of frames is quenched (in parallel, untimed) to its isomers between chunks.
pub fn md_time_to_all(
    cfg: &MdConfig,
    table: &IsomerTable,
    max_frames: usize,
) -> Result<MdTimeToAll, TimewarpError> {
    cfg.validate()?;
    let cluster = LjCluster::parse(&cfg.composition)?;
    let dim = 2 * cluster.n_atoms();
    let mut r = rng::stream(cfg.seed, rng::LANGEVIN, 0);
    let mut init = rng::stream(cfg.seed, rng::INIT, 0);
    let t = Instant::now();
    let mut state = MdState::new(&cluster, cluster.initial_positions(), cfg.langevin.kt, &mut init);
    baoab(&cluster, &cfg.langevin, &mut state, cfg.burn_in, &mut r);
    let mut md_seconds = t.elapsed().as_secs_f64();
    let mut seen = vec![false; table.energies.len()];
    let mut frames = 0;
    while frames < max_frames {
        let n = TIME_TO_ALL_CHUNK.min(max_frames - frames);
        let t = Instant::now();
        let chunk = trajectory(&cluster, &cfg.langevin, &mut state, n, cfg.stride, &mut r);
        let chunk_seconds = t.elapsed().as_secs_f64();
        let quenched: Vec<f64> =
            chunk.par_chunks_exact(dim).map(|x| quench(&cluster, x, 1e-5, 20_000).1).collect();
        for (i, &e) in quenched.iter().enumerate() {
            if let Some(k) = table.classify(e) {
                seen[k] = true;
            }
            if seen.iter().all(|&s| s) {
                let seconds = md_seconds + chunk_seconds * (i + 1) as f64 / n as f64;
                return Ok(MdTimeToAll {
                    seconds: Some(seconds),
                    frames_to_all: Some(frames + i + 1),
                    frames: frames + n,
                    md_seconds: md_seconds + chunk_seconds,
                });
            }
        }
        frames += n;
        md_seconds += chunk_seconds;
    }
    Ok(MdTimeToAll { seconds: None, frames_to_all: None, frames, md_seconds })
}

/// What each frame of a series is: its quenched energy, its CVs (μ₂, μ₃).
#[derive(Clone, Debug, Default)]
pub struct FrameInfo {
    /// Energy of the minimum each frame quenches to.
    pub quenched: Vec<f64>,
    /// (μ₂, μ₃) of each frame.
    pub cvs: Vec<[f64; 2]>,
}

/// Quenches every frame (rows of `frames`, `dim` wide) in parallel and computes its CVs.
pub fn describe(cluster: &LjCluster, frames: &[f64]) -> FrameInfo {
    let dim = 2 * cluster.n_atoms();
    let rows: Vec<(f64, [f64; 2])> = frames
        .par_chunks_exact(dim)
        .map(|x| (quench(cluster, x, 1e-5, 20_000).1, coordination_moments(x)))
        .collect();
    FrameInfo { quenched: rows.iter().map(|r| r.0).collect(), cvs: rows.iter().map(|r| r.1).collect() }
}

/// Isomer populations of a labelled series with moving-block bootstrap standard errors.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Populations {
    /// Fraction of frames in each isomer of the table (frames matching none are left out of
    /// every isomer, so the fractions can sum to less than 1).
    pub fractions: Vec<f64>,
    /// Block-bootstrap standard error of each fraction.
    pub sigma: Vec<f64>,
    /// Block length used (frames).
    pub block: usize,
}

/// Populations of the isomers of `table` along `quenched` (one chain, in order). The block
/// length is 10 × the largest integrated autocorrelation time of the isomer indicators, at
/// least 10 frames and at most a twentieth of the series.
pub fn populations(table: &IsomerTable, quenched: &[f64], seed: u64) -> Populations {
    let indicators: Vec<Vec<f64>> = (0..table.energies.len())
        .map(|k| quenched.iter().map(|&e| f64::from(u8::from(table.classify(e) == Some(k)))).collect())
        .collect();
    let tau = indicators.iter().map(|s| integrated_time(s)).filter(|t| t.is_finite()).fold(1.0, f64::max);
    let block = ((10.0 * tau) as usize).clamp(10, (quenched.len() / 20).max(10));
    let fractions = indicators.iter().map(|s| s.iter().sum::<f64>() / s.len().max(1) as f64).collect();
    let sigma = indicators.iter().map(|s| block_bootstrap_sd(s, block, 200, seed)).collect();
    Populations { fractions, sigma, block }
}

/// ESS of the slowest CV of a chain: the smaller ESS of μ₂ and μ₃, and which one it was.
pub fn slowest_cv_ess(cvs: &[[f64; 2]]) -> (f64, usize) {
    let e: Vec<f64> = (0..2).map(|k| ess(&cvs.iter().map(|c| c[k]).collect::<Vec<_>>())).collect();
    if e[0] <= e[1] {
        (e[0], 0)
    } else {
        (e[1], 1)
    }
}

/// The header of a pairs file.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PairsHeader {
    /// Composition of the cluster.
    pub composition: String,
    /// Atom types (indices into [`crate::lj::TYPES`]).
    pub types: Vec<usize>,
    /// Lag τ in integration steps.
    pub tau_steps: usize,
    /// The MD settings the frames came from.
    pub md: MdConfig,
}

/// The pairs (x(t), x(t + τ)) with τ = `lag` frames, from every run: `(x0, x1)`, each
/// `pairs × dim` row-major.
pub fn pairs(frames: &MdFrames, lag: usize) -> (Vec<f64>, Vec<f64>) {
    let dim = 2 * frames.cluster.n_atoms();
    let (mut x0, mut x1) = (Vec::new(), Vec::new());
    for run in &frames.runs {
        let n = run.len() / dim;
        for t in 0..n.saturating_sub(lag) {
            x0.extend_from_slice(&run[t * dim..(t + 1) * dim]);
            x1.extend_from_slice(&run[(t + lag) * dim..(t + lag + 1) * dim]);
        }
    }
    (x0, x1)
}

/// Writes the pairs at lag `lag` frames (τ = lag × stride steps) to a tensor file (key
/// `timewarp-pairs`, tensors `x0`, `x1` of shape pairs × atoms × 2).
pub fn write_pairs(
    path: &Path,
    cfg: &MdConfig,
    frames: &MdFrames,
    lag: usize,
) -> Result<usize, TimewarpError> {
    let (x0, x1) = pairs(frames, lag);
    let n_atoms = frames.cluster.n_atoms();
    let count = x0.len() / (2 * n_atoms);
    let header = PairsHeader {
        composition: frames.cluster.name(),
        types: frames.cluster.types.clone(),
        tau_steps: lag * cfg.stride,
        md: cfg.clone(),
    };
    let tensors = [
        NamedTensor::f64("x0", vec![count, n_atoms, 2], x0),
        NamedTensor::f64("x1", vec![count, n_atoms, 2], x1),
    ];
    tensor_file::save(path, "timewarp-pairs", &header, &tensors).map_err(|e| match e {
        tensor_file::TensorFileError::Io(io) => TimewarpError::Io(io),
        other => TimewarpError::Input(other.to_string()),
    })?;
    Ok(count)
}
