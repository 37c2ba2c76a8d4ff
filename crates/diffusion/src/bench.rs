//! `ddpm bench`: median seconds per training step of the default U-Net on synthetic data, with
//! one pass and with two concurrent microbatches, side by side with the JAX reference
//! (`bench/jax_unet_step.py`, which installs JAX if missing).

use std::path::Path;
use std::time::Instant;

use burn::prelude::*;
use foundation::progress::Progress;
use foundation::rng::{normals, stream_for, Purpose};
use serde::{Deserialize, Serialize};

use crate::diffusion::{Diffusion, DiffusionConfig};
use crate::jobs::JobError;
use crate::model::ModelConfig;
use crate::train::{TrainConfig, TrainData, Trainer};
use crate::unet::UNetConfig;

/// What to time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchConfig {
    /// Image sides.
    pub sizes: Vec<usize>,
    /// Batch size.
    pub batch: usize,
    /// Timed steps per size (after 2 warm-up steps).
    pub steps: usize,
    /// Also run the JAX reference.
    pub jax: bool,
}

/// One size's timings.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    /// Image side.
    pub size: usize,
    /// Batch size.
    pub batch: usize,
    /// Parameters of the network.
    pub params: usize,
    /// Median seconds per step, one pass.
    pub rust: f64,
    /// Median seconds per step, two concurrent microbatches.
    pub rust_microbatches: f64,
    /// Median seconds per step of the JAX reference (when it ran).
    pub jax: Option<f64>,
    /// Why the JAX reference has no time, when it was asked for and did not run.
    pub jax_note: Option<String>,
}

impl BenchConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), JobError> {
        if self.sizes.is_empty() || self.sizes.contains(&0) {
            return Err(JobError::Invalid("--sizes: give at least one positive size".into()));
        }
        if self.batch == 0 || self.steps == 0 {
            return Err(JobError::Invalid("--batch and --steps must be at least 1".into()));
        }
        Ok(())
    }

    /// Times every size; `progress` sees one stage per size, counted in timed runs.
    pub fn run(&self, device: &Device, progress: &dyn Progress) -> Result<Vec<BenchRow>, JobError> {
        self.validate()?;
        let mut out = Vec::new();
        for &size in &self.sizes {
            progress.start(&format!("{size}x{size}"), 2);
            let config = ModelConfig::Unet(UNetConfig { height: size, width: size, ..UNetConfig::default() });
            let diffusion = Diffusion::new(DiffusionConfig::default());
            let n = self.batch * 4;
            let mut rng = stream_for(0, Purpose::DdpmBenchData, size as u64);
            let rows: Vec<f32> =
                normals(&mut rng, n * size * size).into_iter().map(|v| v.clamp(-1.0, 1.0)).collect();
            let data = TrainData::new(rows, n, size * size);
            // Median seconds per step of the same network and data, one pass or concurrent passes.
            let time_steps = |microbatches: usize| {
                let train = TrainConfig {
                    batch_size: self.batch,
                    steps: 1000,
                    microbatches,
                    ..TrainConfig::default()
                };
                let trainer = Trainer::new(train, &diffusion, &data, device);
                let mut state = trainer.init_state(|rng, d| config.init_with(rng, d));
                for _ in 0..2 {
                    trainer.step(&mut state);
                }
                let times: Vec<f64> = (0..self.steps)
                    .map(|_| {
                        let t = Instant::now();
                        trainer.step(&mut state);
                        t.elapsed().as_secs_f64()
                    })
                    .collect();
                progress.advance(1);
                (median(times), state.model.num_params())
            };
            let (rust, params) = time_steps(1);
            let (rust_microbatches, _) = time_steps(2);
            progress.finish();
            let (jax, jax_note) = match self.jax.then(|| run_jax(size, self.batch, self.steps)) {
                Some(Ok(j)) => (Some(j), None),
                Some(Err(note)) => (None, Some(note)),
                None => (None, None),
            };
            out.push(BenchRow { size, batch: self.batch, params, rust, rust_microbatches, jax, jax_note });
        }
        Ok(out)
    }
}

/// The median (upper median for an even count) of non-empty `v`.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The markdown table of [`BenchConfig::run`]'s rows.
pub fn table(rows: &[BenchRow]) -> String {
    let mut lines = vec![
        "| size | batch | params | Rust s/step, 1 pass | Rust s/step, 2 concurrent microbatches | JAX s/step | Rust/JAX throughput (1 pass) | Rust/JAX throughput (2 microbatches) |".to_string(),
        "|---|---|---|---|---|---|---|---|".to_string(),
    ];
    for r in rows {
        let (jax_s, ratio, ratio2) = match r.jax {
            Some(j) => {
                (format!("{j:.3}"), format!("{:.2}x", j / r.rust), format!("{:.2}x", j / r.rust_microbatches))
            }
            None => ("n/a".into(), "n/a".into(), "n/a".into()),
        };
        lines.push(format!(
            "| {s}x{s} | {} | {} | {:.3} | {:.3} | {jax_s} | {ratio} | {ratio2} |",
            r.batch,
            r.params,
            r.rust,
            r.rust_microbatches,
            s = r.size
        ));
    }
    lines.join("\n")
}

/// Runs a reference script `python3 SCRIPT ARGS...` and parses the JSON object on the last line
/// of its output; the error says why there is none (python missing, the script failed: its last
/// line of stderr, or no JSON).
pub fn run_reference(script: &Path, args: &[String]) -> Result<serde_json::Value, String> {
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .map_err(|e| format!("JAX reference not run: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!("JAX reference failed: {}", stderr.lines().last().unwrap_or("")));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| "JAX reference printed no JSON result".to_string())
}

/// Median seconds per step of `bench/jax_unet_step.py` (which installs JAX if missing).
fn run_jax(size: usize, batch: usize, steps: usize) -> Result<f64, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/jax_unet_step.py");
    let args = [("--size", size), ("--batch", batch), ("--steps", steps), ("--warmup", 2)]
        .iter()
        .flat_map(|(flag, v)| [flag.to_string(), v.to_string()])
        .collect::<Vec<_>>();
    let v = run_reference(&script, &args)?;
    v.get("sec_per_step_median")
        .and_then(|x| x.as_f64())
        .ok_or_else(|| "JAX reference: no sec_per_step_median".into())
}
