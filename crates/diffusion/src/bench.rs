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
                let mut state = trainer.init_state(|d| config.init(d));
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
            let jax = if self.jax { run_jax(size, self.batch, self.steps) } else { None };
            out.push(BenchRow { size, batch: self.batch, params, rust, rust_microbatches, jax });
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

/// Median seconds per step of `bench/jax_unet_step.py` (which installs JAX if missing); `None`
/// with a note on stderr when it cannot run.
fn run_jax(size: usize, batch: usize, steps: usize) -> Option<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/jax_unet_step.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args(["--size", &size.to_string(), "--batch", &batch.to_string(), "--steps", &steps.to_string()])
        .args(["--warmup", "2"])
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            eprintln!(
                "JAX reference failed: {}",
                String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")
            );
            return None;
        }
        Err(e) => {
            eprintln!("JAX reference not run: {e}");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.lines().last()?).ok()?;
    v.get("sec_per_step_median")?.as_f64()
}
