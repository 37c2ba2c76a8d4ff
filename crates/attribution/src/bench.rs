//! `attribute bench`: median seconds per batch of a factor pass and of scoring on a U-Net with
//! synthetic data, side by side with the JAX reference (`bench/jax_kfac_bench.py`, which
//! installs JAX when missing).

use std::path::Path;
use std::time::Instant;

use crate::error::{bail, Result};
use burn::module::{Module, ParamId};
use burn::prelude::*;
use curvature::diffusion_batch::DiffusionBatch;
use curvature::fit::{fit_factors, GgnKind};
use curvature::KfacApprox;
use diffusion::{ModelConfig, UNetConfig};
use foundation::progress::Progress;
use foundation::rng::{stream_for, Purpose};
use foundation::tap::layer_names;
use serde::{Deserialize, Serialize};

use crate::{DiffusionTask, Measurement, Role, Scorer};

/// What to time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchConfig {
    /// Image side.
    pub size: usize,
    /// U-Net base channels (levels: base, 2 x base).
    pub base: usize,
    /// Data per factor-pass batch.
    pub batch: usize,
    /// Training images per scoring batch.
    pub images_per_batch: usize,
    /// Draws per training gradient.
    pub draws: u64,
    /// Queries scored against.
    pub queries: usize,
    /// Timed repetitions (after 2 warm-up ones).
    pub steps: usize,
    /// Also run the JAX reference.
    pub jax: bool,
}

/// The timings.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    /// Parameters of the U-Net.
    pub params: usize,
    /// Parameters covered by the curvature.
    pub covered: usize,
    /// Median seconds of one factor pass over `batch` data.
    pub fit: f64,
    /// Median seconds of scoring `images_per_batch` training images.
    pub score: f64,
    /// The JAX reference's (fit, score) medians, when it ran.
    pub jax: Option<(f64, f64)>,
    /// Why the JAX reference has no times, when it was asked for and did not run.
    pub jax_note: Option<String>,
}

/// Synthetic training images of the benchmark.
const N_DATA: usize = 512;

impl BenchConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.size < 4 || self.base == 0 || self.batch == 0 || self.images_per_batch == 0 {
            bail!("--size must be at least 4 and --base, --batch, --images-per-batch at least 1");
        }
        if self.draws == 0 || self.queries == 0 || self.steps == 0 {
            bail!("--draws, --queries and --steps must be at least 1");
        }
        if self.queries > N_DATA {
            bail!("--queries {}: at most {N_DATA}", self.queries);
        }
        Ok(())
    }

    /// Times both computations; `progress` sees the stages `factors` and `score`, counted in
    /// repetitions.
    pub fn run(&self, dev: &Device, progress: &dyn Progress) -> Result<BenchResult> {
        self.validate()?;
        let a = self;
        let d = a.size * a.size;
        let ad = dev.clone().autodiff();
        let config = ModelConfig::Unet(UNetConfig {
            height: a.size,
            width: a.size,
            channels: vec![a.base, 2 * a.base],
            ..UNetConfig::default()
        });
        ad.seed(0);
        let model = config.init(&ad);
        let diffusion = diffusion::Diffusion::new(Default::default());
        let n = N_DATA;
        let mut rng = stream_for(0, Purpose::AttributeBenchData, 0);
        let rows: Vec<f32> = (0..n * d).map(|_| rand::Rng::gen_range(&mut rng, -1.0f32..1.0)).collect();
        let data = diffusion::TrainData::new(rows, n, d);
        let examples: Vec<usize> = (0..n).collect();
        let names = layer_names(&model);
        let name = |id: u64| names.get(&ParamId::from(id)).cloned().unwrap_or_default();

        // Factor pass: one batch of `batch` data per repetition.
        let mut fit_times = Vec::new();
        let mut curv = None;
        progress.start("factors", (a.steps + 2) as u64);
        for rep in 0..a.steps + 2 {
            let batches = DiffusionBatch::batches(
                &model,
                &diffusion,
                &data,
                &examples[..a.batch.min(n)],
                1,
                0,
                rep as u64,
                a.batch,
                &ad,
            );
            let t = Instant::now();
            let f = fit_factors(batches, KfacApprox::Expand, GgnKind::Model, &mut rng, &name, |_| {});
            if rep >= 2 {
                fit_times.push(t.elapsed().as_secs_f64());
            }
            curv = Some(f.eigendecompose());
            progress.advance(1);
        }
        progress.finish();
        let curv = curv.expect("at least one repetition");
        let covered = curvature::precondition::flat_len(&curv.infos());

        // Scoring: per-example gradients of `images_per_batch` images x `draws`, rotated,
        // dotted with the preconditioned queries.
        let task = DiffusionTask {
            diffusion: diffusion.clone(),
            measurement: Measurement::Loss,
            train_output: Measurement::Loss,
            train_draws: a.draws,
            query_draws: a.draws,
            seed: 0,
        };
        let qids: Vec<usize> = (0..a.queries).collect();
        let qg = task.gradients(&model, &data.rows[..a.queries * d], &qids, Role::Query, &ad).inner();
        let scorer = Scorer::new(&curv, qg, vec![1e-6]);
        let mut score_times = Vec::new();
        progress.start("score", (a.steps + 2) as u64);
        for rep in 0..a.steps + 2 {
            let ids: Vec<usize> =
                (0..a.images_per_batch).map(|i| (rep * a.images_per_batch + i) % n).collect();
            let rows: Vec<f32> =
                ids.iter().flat_map(|&i| data.rows[i * d..(i + 1) * d].iter().copied()).collect();
            let t = Instant::now();
            let g = task.gradients(&model, &rows, &ids, Role::Train, &ad).inner();
            let s = scorer.score(g);
            debug_assert_eq!(s[0].len(), a.queries * ids.len());
            if rep >= 2 {
                score_times.push(t.elapsed().as_secs_f64());
            }
            progress.advance(1);
        }
        progress.finish();
        let (jax, jax_note) = match a.jax.then(|| run_jax_bench(a)) {
            Some(Ok(j)) => (Some(j), None),
            Some(Err(note)) => (None, Some(note)),
            None => (None, None),
        };
        Ok(BenchResult {
            params: model.num_params(),
            covered,
            fit: diffusion::bench::median(fit_times),
            score: diffusion::bench::median(score_times),
            jax,
            jax_note,
        })
    }

    /// The markdown report of a result.
    pub fn report(&self, r: &BenchResult) -> String {
        let a = self;
        let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{x:.3}"));
        let ratio = |rust: f64, j: Option<f64>| j.map_or("n/a".to_string(), |j| format!("{:.2}x", j / rust));
        let (jf, js) = (r.jax.map(|j| j.0), r.jax.map(|j| j.1));
        let mut s = format!(
            "U-Net {}x{} base {} ({} params, {} covered)\n\n",
            a.size, a.size, a.base, r.params, r.covered
        );
        s.push_str("| computation | Rust s/batch | JAX s/batch | Rust/JAX throughput |\n|---|---|---|---|\n");
        s.push_str(&format!(
            "| factor pass, {} data (GGN^model, expand) | {:.3} | {} | {} |\n",
            a.batch,
            r.fit,
            fmt(jf),
            ratio(r.fit, jf)
        ));
        s.push_str(&format!(
            "| scoring, {} train images x {} draws vs {} queries | {:.3} | {} | {} |",
            a.images_per_batch,
            a.draws,
            a.queries,
            r.score,
            fmt(js),
            ratio(r.score, js)
        ));
        s
    }
}

/// (fit, score) median seconds per batch of `bench/jax_kfac_bench.py`.
fn run_jax_bench(a: &BenchConfig) -> std::result::Result<(f64, f64), String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/jax_kfac_bench.py");
    let args = [
        ("--size", a.size.to_string()),
        ("--base", a.base.to_string()),
        ("--batch", a.batch.to_string()),
        ("--images-per-batch", a.images_per_batch.to_string()),
        ("--draws", a.draws.to_string()),
        ("--queries", a.queries.to_string()),
        ("--steps", a.steps.to_string()),
        ("--warmup", "2".to_string()),
    ]
    .into_iter()
    .flat_map(|(flag, v)| [flag.to_string(), v])
    .collect::<Vec<_>>();
    let v = diffusion::bench::run_reference(&script, &args)?;
    let get = |k: &str| v.get(k).and_then(|x| x.as_f64()).ok_or_else(|| format!("JAX reference: no {k}"));
    Ok((get("fit_sec_per_batch_median")?, get("score_sec_per_batch_median")?))
}
