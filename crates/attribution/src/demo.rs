//! The attribution demo as one library call: train a small DDPM on the embedded two-class data
//! (reused when already trained with the same settings), sample queries, fit EK-FAC, score the
//! training set for a damping grid, and write `report.md` and `rows.png` (query | top
//! proponents | top opponents).

use std::path::PathBuf;
use std::time::Instant;

use crate::error::{bail, Context, Result};
use burn::prelude::*;
use diffusion::run::{is_finished, load_trained, train_run, DataSpec, RunConfig, TrainEvent};
use diffusion::{sample, Denoiser, ModelConfig, ReverseVariance, Sampler, TrainConfig, UNetConfig};
use foundation::atomic::write_bytes;
use foundation::progress::Progress;
use serde::{Deserialize, Serialize};

use crate::fit::CurvatureSettings;
use crate::npy::write_matrix;
use crate::scoring::{fit, quantise, score_range, write_score_grid, ScoreSettings};

/// Everything the demo does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DemoConfig {
    /// Output directory.
    pub out: PathBuf,
    /// Generated queries.
    pub queries: usize,
    /// Proponents and opponents shown per query.
    pub top_k: usize,
    /// Training steps of the demo model.
    pub steps: usize,
    /// Curvature fitting.
    pub curvature: CurvatureSettings,
    /// Scoring.
    pub scoring: ScoreSettings,
}

impl DemoConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.queries == 0 || self.steps == 0 {
            bail!("--queries and --steps must be at least 1");
        }
        if self.curvature.factor_draws == 0 || self.curvature.batch == 0 {
            bail!("--factor-draws and --batch must be at least 1");
        }
        self.scoring.validate(usize::MAX)
    }

    /// The demo model's run: a U-Net on MNIST {0, 1} at 14x14 from the embedded subset, trained
    /// in two concurrent microbatches (since 2026-11-29; the upsampling convs keep their width:
    /// narrowing them changed the demo's model and lowered its same-digit shares).
    pub fn run_config(&self) -> RunConfig {
        RunConfig {
            model: ModelConfig::Unet(UNetConfig {
                height: 14,
                width: 14,
                channels: vec![16, 32],
                ..UNetConfig::default()
            }),
            diffusion: Default::default(),
            train: TrainConfig {
                steps: self.steps,
                batch_size: 64,
                lr: 1e-3,
                ema_decay: 0.995,
                microbatches: 2,
                ..TrainConfig::default()
            },
            data: DataSpec { classes: vec![0, 1], size: 14, ..DataSpec::default() },
        }
    }

    /// Runs the demo; returns the path of `report.md`.
    pub fn run(&self, dev: &Device, progress: &dyn Progress) -> Result<PathBuf> {
        self.validate()?;
        let a = self;
        let started = Instant::now();
        std::fs::create_dir_all(&a.out).with_context(|| a.out.display().to_string())?;
        // 1. A small DDPM on the embedded MNIST {0, 1} subset at 14x14 (N = 1000).
        let run = a.out.join("model");
        let config = self.run_config();
        let t0 = Instant::now();
        let reuse = is_finished(&run, &config);
        if !reuse && RunConfig::load(&run).is_ok_and(|c| c != config) {
            // The demo's own model directory, made with other demo settings: start it afresh.
            std::fs::remove_dir_all(&run).with_context(|| run.display().to_string())?;
        }
        if !reuse {
            progress.start("train", config.train.steps as u64);
            train_run(&config, &run, 250, dev, |e| {
                match e {
                    TrainEvent::Started { step, .. } => progress.advance(step as u64),
                    TrainEvent::Step { .. } => progress.advance(1),
                    TrainEvent::Checkpoint { .. } => {}
                }
                Ok(())
            })?;
            progress.finish();
        }
        let train_secs = t0.elapsed().as_secs_f64();
        let trained = load_trained(&run, dev)?;
        a.scoring.validate(trained.diffusion.steps())?;
        let (ds, _) = trained.config.train_data()?;

        // 2. Queries: generated samples, 8-bit quantised.
        let t0 = Instant::now();
        let sampler = Sampler::Ancestral { variance: ReverseVariance::BetaTilde };
        let queries = quantise(&sample(
            &trained.model,
            &trained.diffusion,
            &sampler,
            a.queries,
            2024,
            dev,
            Some(progress),
        ));
        progress.finish();
        let d = trained.model.data_dim();
        write_matrix(&a.out.join("queries.npy"), &queries, a.queries, d)?;
        let sample_secs = t0.elapsed().as_secs_f64();

        // 3. EK-FAC on the training set.
        let t0 = Instant::now();
        let curv = fit(&trained, &a.curvature, dev, progress)?;
        curv.save(&a.out.join("ekfac.safetensors"))?;
        let fit_secs = t0.elapsed().as_secs_f64();
        let ev = curv.eigenvalues();
        let mean_ev = ev.iter().sum::<f64>() / ev.len() as f64;

        // 4. Scores for the whole damping grid.
        let t0 = Instant::now();
        let scores = score_range(&trained, &curv, &queries, 0..ds.n, &a.scoring, dev, progress)?;
        let score_secs = t0.elapsed().as_secs_f64();
        let lambda = a.scoring.lambdas[0];
        write_score_grid(&a.out.join("scores.npy"), &a.scoring.lambdas, &scores, a.queries, ds.n)?;
        // 5. Report and image rows: query | top-k proponents | top-k opponents.
        let k = a.top_k.min(ds.n / 2);
        let side = trained.config.data.size;
        let mut grid = Vec::new();
        let mut report = String::new();
        report.push_str("# Attribution demo\n\n");
        report.push_str(&format!(
            "A {}-parameter U-Net DDPM trained on N = {} MNIST images (classes 0 and 1, {side}x{side}); {} generated queries;\n\
             EK-FAC ({} draws per example per pass, GGN^model, expand) fitted on the training set; scores for damping lambda = {lambda:e}\n\
             (mean EK-FAC eigenvalue {mean_ev:.3e}). Positive score = removing the training image is predicted to raise the\n\
             query's loss (a proponent).\n\n",
            trained.model.num_params(), ds.n, a.queries, a.curvature.factor_draws
        ));
        report.push_str("| stage | seconds |\n|---|---|\n");
        report.push_str(&format!(
            "| train ({} steps{}) | {train_secs:.1} |\n",
            a.steps,
            if reuse { ", reused" } else { "" }
        ));
        report.push_str(&format!("| sample queries | {sample_secs:.1} |\n| fit EK-FAC | {fit_secs:.1} |\n| score | {score_secs:.1} |\n\n"));
        report.push_str(
            "Rows in `rows.png`: query, then its top proponents, then its top opponents (most negative).\n\n",
        );
        // Query labels from the project's MNIST classifier (if its weights are present), to check
        // that proponents share the query's digit.
        let labels: Option<Vec<usize>> =
            diffusion::eval::classifier::load_classifier(&diffusion::eval::default_classifier_path(), dev)
                .ok()
                .map(|c| {
                    diffusion::eval::classifier::predict_proba_sized(&c, &queries, a.queries, side, side, dev)
                        .iter()
                        .map(diffusion::eval::classifier::argmax)
                        .collect()
                });
        let top_order = |li: usize, qi: usize| -> Vec<usize> {
            let row = &scores[li][qi * ds.n..(qi + 1) * ds.n];
            let mut order: Vec<usize> = (0..ds.n).collect();
            order.sort_by(|&x, &y| row[y].partial_cmp(&row[x]).unwrap().then(x.cmp(&y)));
            order
        };
        if let Some(labels) = &labels {
            report.push_str("Share of each query's top-10 proponents that show the query's digit (classifier label), per damping:\n\n| lambda | same-digit share |\n|---|---|\n");
            for (li, l) in a.scoring.lambdas.iter().enumerate() {
                let hits: usize = (0..a.queries)
                    .map(|qi| {
                        top_order(li, qi)[..10.min(ds.n)]
                            .iter()
                            .filter(|&&i| ds.labels[i] as usize == labels[qi])
                            .count()
                    })
                    .sum();
                report.push_str(&format!("| {l:e} | {:.2} |\n", hits as f64 / (10 * a.queries) as f64));
            }
            report.push('\n');
        }
        report.push_str("| query | label | top proponents (index: label, score) |\n|---|---|---|\n");
        for qi in 0..a.queries {
            let row = &scores[0][qi * ds.n..(qi + 1) * ds.n];
            let order = top_order(0, qi);
            grid.extend_from_slice(&queries[qi * d..(qi + 1) * d]);
            for &i in &order[..k] {
                grid.extend_from_slice(ds.image(i));
            }
            for &i in order.iter().rev().take(k) {
                grid.extend_from_slice(ds.image(i));
            }
            let listed: Vec<String> =
                order[..3].iter().map(|&i| format!("{i}: {} ({:.3e})", ds.labels[i], row[i])).collect();
            let label = labels.as_ref().map_or("?".to_string(), |l| l[qi].to_string());
            report.push_str(&format!("| {qi} | {label} | {} |\n", listed.join(", ")));
        }
        let row_labels: Vec<String> = (0..a.queries)
            .map(|qi| labels.as_ref().map_or(format!("q{qi}"), |l| format!("q{qi}\ndigit {}", l[qi])))
            .collect();
        let layout = crate::plot::RowsLayout { rows: a.queries, k, height: side, width: side };
        crate::plot::write_attribution_rows(&a.out.join("rows.png"), &grid, &layout, &row_labels)?;
        report.push_str(&format!("\nTotal {:.1} s.\n", started.elapsed().as_secs_f64()));
        let path = a.out.join("report.md");
        write_bytes(&path, report.as_bytes())?;
        Ok(path)
    }
}
