//! The paper's counterfactual evaluation at CPU scale (spec p1 §3, §6): a benchmark directory
//! holds the full model, generated queries, the retrained subset models with their
//! measurements, every method's score matrices, and the reports. Every stage skips what is
//! already on disk, so an interrupted run (or a job array with `--shard i/n`) just reruns.
//!
//! ```text
//! DIR/benchmark.json                    settings (a rerun with other settings is refused)
//! DIR/base/                             the model trained on all N images (a `ddpm` run dir)
//! DIR/queries.npy                       [Q, D] generated samples, 8-bit quantised
//! DIR/retrain/subset-JJJ-seed-S/        models trained on subset J with seed S (+ measure.json)
//! DIR/scores/METHOD[.lambda-L].npy      [Q, N] score matrices, scores/meta.json
//! DIR/lds.json, lds.md, lds.png         LDS report
//! DIR/top/qQQ-METHOD-kK/                retrained without the top-k of query Q (+ measure.json)
//! DIR/retrain-top.json, .md, .png       retraining-without-top-influences report
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use attribution::baselines::{grad_dot, pixel_cosine, RandomProjection, TrakScorer};
use attribution::fit::{fit_curvature, CurvatureSettings};
use attribution::lds::{
    lds_per_query, mean_se, random_subsets, removal_predictions, seed_ceiling, seed_mean, LdsResult,
};
use attribution::measure::measure_loss;
use attribution::npy::{read_matrix, write_matrix};
use attribution::plot::{write_bar_chart, Bar};
use attribution::{DiffusionTask, Measurement, Role, Scorer};
use burn::prelude::*;
use curvature::fit::GgnKind;
use curvature::KfacApprox;
use diffusion::checkpoint::write_atomic;
use diffusion::run::{is_finished, load_trained, train_run, DataSpec, RunConfig};
use diffusion::{
    sample, Denoiser, DiffusionConfig, ModelConfig, ReverseVariance, Sampler, TrainConfig, UNetConfig,
};
use serde::{Deserialize, Serialize};

/// Everything that defines a benchmark.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchmarkConfig {
    /// Training images (the full set; subsets index into it).
    pub data: DataSpec,
    /// Network.
    pub model: ModelConfig,
    /// Diffusion process.
    pub diffusion: DiffusionConfig,
    /// Training of the full model (and of the retrain-top models: the full schedule).
    pub train: TrainConfig,
    /// Steps of the subset models (the paper halves them).
    pub subset_steps: usize,
    /// M, random subsets.
    pub subsets: usize,
    /// K, seeds per subset (seed s is shared across subsets).
    pub seeds: usize,
    /// Subset fraction alpha.
    pub alpha: f64,
    /// Q, generated queries.
    pub queries: usize,
    /// (t, noise) draws of each ground-truth measurement (common to all models).
    pub measure_draws: usize,
    /// Draws per training gradient.
    pub train_draws: u64,
    /// Draws per query gradient.
    pub query_draws: u64,
    /// Draws per example per curvature pass.
    pub factor_draws: u64,
    /// TRAK / D-TRAK projection dimension.
    pub trak_dim: usize,
    /// Damping grid (mean-loss GGN scale, also used for TRAK's kernel divided by N).
    pub lambdas: Vec<f64>,
    /// Seed of subsets, queries, draws and projections.
    pub seed: u64,
}

impl BenchmarkConfig {
    /// The run of the model trained on all images.
    pub fn base_run(&self) -> RunConfig {
        RunConfig {
            model: self.model.clone(),
            diffusion: self.diffusion.clone(),
            train: self.train.clone(),
            data: self.data.clone(),
        }
    }

    /// The damping grid of `method` (the configured grid plus the method's default), ascending;
    /// empty for methods without damping.
    pub fn method_lambdas(&self, method: &str, n: usize) -> Vec<f64> {
        if PLAIN_METHODS.contains(&method) {
            return vec![];
        }
        let mut l = self.lambdas.clone();
        if let Some(d) = default_lambda(method, n) {
            if !l.contains(&d) {
                l.push(d);
            }
        }
        l.sort_by(f64::total_cmp);
        l
    }

    /// A run on a subset of the training images, with the given step count and seed.
    pub fn subset_run(&self, keep: &[usize], steps: usize, seed: u64) -> RunConfig {
        let mut run = self.base_run();
        run.data.indices = Some(keep.to_vec());
        run.train.steps = steps;
        run.train.seed = seed;
        run
    }
}

/// The damping each method is reported at "untuned" (spec p1 §1.6, §2): 1e-8 for the K-FAC
/// family, TRAK's 1e-6 on the summed kernel (1e-6 / N in our mean scale) for TRAK and D-TRAK.
pub fn default_lambda(method: &str, n: usize) -> Option<f64> {
    match method {
        "trak" | "dtrak" => Some(1e-6 / n as f64),
        "grad-dot" | "pixel" | "same-class" => None,
        _ => Some(1e-8),
    }
}

/// Methods with a damping grid, in report order.
pub const DAMPED_METHODS: [&str; 6] = ["ekfac", "kfac", "ekfac-reduce", "ekfac-ggn-loss", "trak", "dtrak"];
/// Methods without damping.
pub const PLAIN_METHODS: [&str; 3] = ["grad-dot", "pixel", "same-class"];

fn describe(method: &str) -> &'static str {
    match method {
        "ekfac" => "EK-FAC influence (GGN^model, expand)",
        "kfac" => "K-FAC influence (no eigenvalue correction)",
        "ekfac-reduce" => "EK-FAC, K-FAC-reduce",
        "ekfac-ggn-loss" => "EK-FAC, GGN^loss (empirical Fisher)",
        "trak" => "TRAK (projected loss gradients)",
        "dtrak" => "D-TRAK (projected square-norm gradients)",
        "grad-dot" => "gradient dot product (identity curvature)",
        "pixel" => "pixel cosine similarity (CLIP stand-in)",
        "same-class" => "same-class indicator (diagnostic: class of the query's pixel nearest neighbour)",
        "random" => "random removal (control)",
        _ => "",
    }
}

#[derive(Serialize, Deserialize)]
struct MeasureFile {
    draws: usize,
    seed: u64,
    loss: Vec<f64>,
}

impl MeasureFile {
    /// The measurements stored in a model's run directory, if any.
    fn read(run_dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(run_dir.join("measure.json")).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// A benchmark directory on a device.
pub struct Benchmark {
    /// Directory.
    pub dir: PathBuf,
    /// Settings.
    pub config: BenchmarkConfig,
    device: Device,
    started: Instant,
    /// N, loaded once at open (every stage needs it).
    n_train: usize,
}

impl Benchmark {
    /// Open (or create) `dir` with `config`; refuses a directory made with other settings.
    pub fn open(dir: &Path, config: BenchmarkConfig, device: &Device) -> Result<Self> {
        let path = dir.join("benchmark.json");
        if path.exists() {
            let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
            let existing: BenchmarkConfig = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a benchmark file", path.display()))?;
            if existing != config {
                bail!(
                    "{} holds a benchmark with other settings; use the same flags or another --out",
                    dir.display()
                );
            }
        } else {
            std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
            write_atomic(&path, serde_json::to_string_pretty(&config)?.as_bytes())?;
        }
        let n_train = config.base_run().train_data().context("loading training data")?.0.n;
        Ok(Self { dir: dir.to_path_buf(), config, device: device.clone(), started: Instant::now(), n_train })
    }

    fn log(&self, msg: &str) {
        eprintln!("[{:7.1} s] {msg}", self.started.elapsed().as_secs_f64());
    }

    /// Number of training images.
    pub fn n_train(&self) -> usize {
        self.n_train
    }

    /// The M random subsets.
    pub fn subsets(&self) -> Vec<Vec<usize>> {
        random_subsets(self.n_train(), self.config.subsets, self.config.alpha, self.config.seed)
    }

    fn train(&self, run: &RunConfig, dir: &Path, what: &str) -> Result<()> {
        if is_finished(dir, run) {
            return Ok(());
        }
        let t = Instant::now();
        train_run(run, dir, 500, &self.device, |_| Ok(())).with_context(|| format!("training {what}"))?;
        self.log(&format!(
            "trained {what} ({} steps) in {:.1} s",
            run.train.steps,
            t.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// Measure the queries on the model in `run_dir` once (kept in `run_dir/measure.json`).
    fn measure(&self, run_dir: &Path, queries: &[f32], ids: &[usize]) -> Result<Vec<f64>> {
        let path = run_dir.join("measure.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(m) = serde_json::from_str::<MeasureFile>(&text) {
                if m.draws == self.config.measure_draws
                    && m.seed == self.config.seed
                    && m.loss.len() == ids.len()
                {
                    return Ok(m.loss);
                }
            }
        }
        let trained = load_trained(run_dir, &self.device)?;
        let loss = measure_loss(
            &trained.model,
            &trained.diffusion,
            queries,
            ids,
            self.config.measure_draws,
            self.config.seed,
            4096,
            &self.device,
        );
        let file =
            MeasureFile { draws: self.config.measure_draws, seed: self.config.seed, loss: loss.clone() };
        write_atomic(&path, serde_json::to_string(&file)?.as_bytes())?;
        Ok(loss)
    }

    fn base_dir(&self) -> PathBuf {
        self.dir.join("base")
    }

    /// Train the full model and generate the queries (skipped when present).
    pub fn prepare(&self) -> Result<Vec<f32>> {
        self.train(&self.config.base_run(), &self.base_dir(), "the full model")?;
        let path = self.dir.join("queries.npy");
        if let Ok((q, rows, _)) = read_matrix(&path) {
            if rows == self.config.queries {
                return Ok(q);
            }
        }
        let t = Instant::now();
        let trained = load_trained(&self.base_dir(), &self.device)?;
        let sampler = Sampler::Ancestral { variance: ReverseVariance::BetaTilde };
        let x = sample(
            &trained.model,
            &trained.diffusion,
            &sampler,
            self.config.queries,
            self.config.seed + 2024,
            &self.device,
            None,
        );
        let q = crate::quantise(&x);
        let d = trained.model.data_dim();
        write_matrix(&path, &q, self.config.queries, d)?;
        let side = self.config.data.size;
        data::write_png_grid(&self.dir.join("queries.png"), &q, self.config.queries, side, side, 16)?;
        self.log(&format!("sampled {} queries in {:.1} s", self.config.queries, t.elapsed().as_secs_f64()));
        Ok(q)
    }

    fn retrain_dir(&self, subset: usize, seed: usize) -> PathBuf {
        self.dir.join("retrain").join(format!("subset-{subset:03}-seed-{seed}"))
    }

    /// Train and measure the subset models of shard `i` of `n` (jobs are (subset, seed) pairs,
    /// dealt round-robin), skipping finished ones.
    pub fn retrain(&self, queries: &[f32], shard: (usize, usize)) -> Result<()> {
        let subsets = self.subsets();
        let ids: Vec<usize> = (0..self.config.queries).collect();
        let jobs: Vec<(usize, usize)> =
            (0..subsets.len()).flat_map(|j| (0..self.config.seeds).map(move |s| (j, s))).collect();
        for (k, &(j, s)) in jobs.iter().enumerate() {
            if k % shard.1 != shard.0 {
                continue;
            }
            let dir = self.retrain_dir(j, s);
            let run = self.config.subset_run(&subsets[j], self.config.subset_steps, s as u64);
            self.train(&run, &dir, &format!("subset {j} seed {s} ({}/{})", k + 1, jobs.len()))?;
            self.measure(&dir, queries, &ids)?;
        }
        Ok(())
    }

    /// Measurements `[K][M][Q]` of all subset models (all must be finished).
    pub fn measurements(&self) -> Result<Vec<Vec<Vec<f64>>>> {
        let mut out = vec![Vec::new(); self.config.seeds];
        let mut missing = 0;
        for j in 0..self.config.subsets {
            for (s, per_seed) in out.iter_mut().enumerate() {
                match MeasureFile::read(&self.retrain_dir(j, s)) {
                    Some(m) => per_seed.push(m.loss),
                    None => missing += 1,
                }
            }
        }
        if missing > 0 {
            bail!(
                "{missing} of {} subset models are not trained and measured yet (run `attribute lds` on {} without --shard, or finish the shards)",
                self.config.subsets * self.config.seeds,
                self.dir.display()
            );
        }
        Ok(out)
    }

    fn score_path(&self, method: &str, lambda: Option<f64>) -> PathBuf {
        let name = match lambda {
            Some(l) => format!("{method}.lambda-{l:e}.npy"),
            None => format!("{method}.npy"),
        };
        self.dir.join("scores").join(name)
    }

    /// Compute every method's score matrices (skipped when `scores/meta.json` exists; the cheap
    /// data-only baselines are written whenever missing).
    pub fn scores(&self, queries: &[f32]) -> Result<()> {
        self.data_only_scores(queries)?;
        let meta = self.dir.join("scores").join("meta.json");
        if meta.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(self.dir.join("scores"))?;
        let c = &self.config;
        let trained = load_trained(&self.base_dir(), &self.device)?;
        let (ds, data) = trained.config.train_data()?;
        let n = ds.n;
        let d = trained.model.data_dim();
        let q = queries.len() / d;
        let ad = self.device.clone().autodiff();
        let model = trained.model.clone().fork(&ad);
        let mut timing = serde_json::Map::new();
        let mut time = |name: &str, t: Instant| {
            timing.insert(name.to_string(), serde_json::json!(t.elapsed().as_secs_f64()));
        };

        // Gradients: training loss and D-TRAK's square norm, averaged over the same draws.
        let t = Instant::now();
        let task = |measurement, train_output| DiffusionTask {
            diffusion: trained.diffusion.clone(),
            measurement,
            train_output,
            train_draws: c.train_draws,
            query_draws: c.query_draws,
            seed: c.seed + 1,
        };
        let loss_task = task(Measurement::Loss, Measurement::Loss);
        let sq_task = task(Measurement::SquareNorm, Measurement::SquareNorm);
        let gradients = |task: &DiffusionTask| -> Tensor<2> {
            let ids: Vec<usize> = (0..n).collect();
            let parts: Vec<Tensor<2>> = ids
                .chunks(8)
                .map(|chunk| {
                    let rows: Vec<f32> = chunk.iter().flat_map(|&i| ds.image(i).iter().copied()).collect();
                    task.gradients(&model, &rows, chunk, Role::Train, &ad).inner()
                })
                .collect();
            Tensor::cat(parts, 0)
        };
        let qids: Vec<usize> = (0..q).collect();
        let g_loss = gradients(&loss_task);
        let q_loss = loss_task.gradients(&model, queries, &qids, Role::Query, &ad).inner();
        time("gradients (loss)", t);
        let t = Instant::now();
        let g_sq = gradients(&sq_task);
        let q_sq = sq_task.gradients(&model, queries, &qids, Role::Query, &ad).inner();
        time("gradients (square norm)", t);
        self.log("gradients done");

        let write = |method: &str, lambda: Option<f64>, s: &[f32]| -> Result<()> {
            write_matrix(&self.score_path(method, lambda), s, q, n).map_err(Into::into)
        };
        let write_grid = |method: &str, lambdas: &[f64], s: Vec<Vec<f32>>| -> Result<()> {
            for (l, sc) in lambdas.iter().zip(&s) {
                write(method, Some(*l), sc)?;
            }
            Ok(())
        };

        // K-FAC family.
        let fits = [
            ("ekfac", KfacApprox::Expand, GgnKind::Model),
            ("ekfac-reduce", KfacApprox::Reduce, GgnKind::Model),
            ("ekfac-ggn-loss", KfacApprox::Expand, GgnKind::Loss),
        ];
        for (name, approx, ggn) in fits {
            let t = Instant::now();
            let settings = CurvatureSettings {
                factor_draws: c.factor_draws,
                approx,
                ggn,
                seed: c.seed + 3,
                ..Default::default()
            };
            let fitted =
                fit_curvature(&trained.model, &trained.diffusion, &data, &settings, &self.device, |_| {});
            time(&format!("fit {name}"), t);
            let t = Instant::now();
            if name == "ekfac" {
                let grid = c.method_lambdas("kfac", n);
                let scorer = Scorer::new(&fitted.kfac, q_loss.clone(), grid.clone());
                write_grid("kfac", &grid, scorer.score(g_loss.clone()))?;
            }
            let ekfac = fitted.ekfac.expect("EK-FAC fitted");
            let grid = c.method_lambdas(name, n);
            let scorer = Scorer::new(&ekfac, q_loss.clone(), grid.clone());
            write_grid(name, &grid, scorer.score(g_loss.clone()))?;
            time(&format!("score {name}"), t);
            self.log(&format!("{name} scored"));
        }

        // TRAK and D-TRAK: projected gradients, kernel inverse for the whole grid.
        for (name, g, qg) in [("trak", &g_loss, &q_loss), ("dtrak", &g_sq, &q_sq)] {
            let t = Instant::now();
            let proj = RandomProjection { dim: c.trak_dim, seed: c.seed + 4 };
            let grid = c.method_lambdas(name, n);
            let scorer = TrakScorer::new(proj.project(g.clone()), grid.clone());
            write_grid(name, &grid, scorer.score(proj.project(qg.clone())))?;
            time(&format!("score {name}"), t);
        }
        write("grad-dot", None, &grad_dot(q_loss, g_loss))?;
        self.log("baselines scored");
        write_atomic(&meta, serde_json::to_string_pretty(&serde_json::Value::Object(timing))?.as_bytes())?;
        Ok(())
    }

    /// Baselines that look only at pixels and labels: pixel cosine similarity, and a diagnostic
    /// same-class indicator (1 for training images of the class of the query's most
    /// pixel-similar training image), which tells how much of the LDS class composition alone
    /// explains.
    fn data_only_scores(&self, queries: &[f32]) -> Result<()> {
        if self.score_path("pixel", None).exists() && self.score_path("same-class", None).exists() {
            return Ok(());
        }
        let (ds, _) = self.config.base_run().train_data()?;
        let d = ds.pixels_per_image();
        let q = queries.len() / d;
        std::fs::create_dir_all(self.dir.join("scores"))?;
        let pixel = pixel_cosine(queries, &ds.images, d);
        if !self.score_path("pixel", None).exists() {
            write_matrix(&self.score_path("pixel", None), &pixel, q, ds.n)?;
        }
        if !self.score_path("same-class", None).exists() {
            let mut same = vec![0f32; q * ds.n];
            for qi in 0..q {
                let row = &pixel[qi * ds.n..(qi + 1) * ds.n];
                let nn = (0..ds.n).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap_or(0);
                for (n, v) in same[qi * ds.n..(qi + 1) * ds.n].iter_mut().enumerate() {
                    *v = (ds.labels[n] == ds.labels[nn]) as u8 as f32;
                }
            }
            write_matrix(&self.score_path("same-class", None), &same, q, ds.n)?;
        }
        Ok(())
    }

    /// Every method's LDS over the damping grid, plus the seed-versus-seed ceiling.
    pub fn lds(&self) -> Result<(Vec<LdsResult>, LdsResult)> {
        let per_seed = self.measurements()?;
        let measured = seed_mean(&per_seed);
        let subsets = self.subsets();
        let n = self.n_train();
        let mut results = Vec::new();
        let grid = |m: &str| -> Vec<Option<f64>> {
            if PLAIN_METHODS.contains(&m) {
                vec![None]
            } else {
                self.config.method_lambdas(m, n).into_iter().map(Some).collect()
            }
        };
        for method in DAMPED_METHODS.iter().chain(PLAIN_METHODS.iter()) {
            for lambda in grid(method) {
                let path = self.score_path(method, lambda);
                let (scores, _, cols) = read_matrix(&path).with_context(|| path.display().to_string())?;
                if cols != n {
                    bail!("{}: {cols} columns, expected {n}", path.display());
                }
                let predicted = removal_predictions(&scores, n, &subsets);
                results.push(LdsResult::new(method, lambda, lds_per_query(&predicted, &measured)));
            }
        }
        let ceiling = LdsResult::new("exact retraining", None, seed_ceiling(&per_seed));
        Ok((results, ceiling))
    }

    /// Best-lambda result of a method.
    pub fn best<'r>(results: &'r [LdsResult], method: &str) -> Option<&'r LdsResult> {
        results.iter().filter(|r| r.method == method).max_by(|a, b| a.mean.total_cmp(&b.mean))
    }

    /// Write lds.json, lds.md and lds.png; returns the markdown.
    pub fn lds_report(&self, results: &[LdsResult], ceiling: &LdsResult, timing: &str) -> Result<String> {
        let n = self.n_train();
        let c = &self.config;
        write_atomic(
            &self.dir.join("lds.json"),
            serde_json::to_string_pretty(&serde_json::json!({"results": results, "ceiling": ceiling}))?
                .as_bytes(),
        )?;
        let pct = |r: &LdsResult| format!("{:.1} ± {:.1}", 100.0 * r.mean, 100.0 * r.se);
        let mut md = String::new();
        md.push_str(&format!(
            "# Linear datamodelling score\n\nMNIST classes {:?}, {}x{}, N = {n} training images; {} ({} params); \
             M = {} subsets (alpha = {}) x K = {} seeds, subset models {} steps, full model {} steps; \
             Q = {} generated queries; ground truth: query loss over {} common (t, noise) draws, averaged over seeds. \
             Gradients: {} draws per training image, {} per query; curvature: {} draws per image per pass; \
             TRAK dimension {}. LDS in % (Spearman, mean ± s.e. over queries).\n\n",
            c.data.classes,
            c.data.size,
            c.data.size,
            describe_model(&c.model),
            load_trained(&self.base_dir(), &self.device).map(|t| t.model.num_params()).unwrap_or(0),
            c.subsets,
            c.alpha,
            c.seeds,
            c.subset_steps,
            c.train.steps,
            c.queries,
            c.measure_draws,
            c.train_draws,
            c.query_draws,
            c.factor_draws,
            c.trak_dim,
        ));
        md.push_str(
            "| method | best λ | LDS at best λ | default λ | LDS at default λ |\n|---|---|---|---|---|\n",
        );
        let mut bars = Vec::new();
        for method in DAMPED_METHODS.iter().chain(PLAIN_METHODS.iter()) {
            let Some(best) = Self::best(results, method) else { continue };
            let default = default_lambda(method, n);
            let at_default = results.iter().find(|r| r.method == *method && r.lambda == default);
            let fmt_l = |l: Option<f64>| l.map_or("–".to_string(), |l| format!("{l:.0e}"));
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                describe(method),
                fmt_l(best.lambda),
                pct(best),
                fmt_l(default),
                at_default.map_or("–".to_string(), pct)
            ));
            bars.push(Bar { label: method.to_string(), value: 100.0 * best.mean, se: 100.0 * best.se });
        }
        md.push_str(&format!(
            "| exact retraining (seed vs seed ceiling) | – | {} | – | – |\n\n",
            pct(ceiling)
        ));
        bars.push(Bar { label: "exact retrain".into(), value: 100.0 * ceiling.mean, se: 100.0 * ceiling.se });
        // Paired over queries (the same queries and subsets for every method), so the standard
        // error of a difference is much smaller than either method's own.
        if let Some(reference) = Self::best(results, "ekfac") {
            md.push_str("Paired difference to EK-FAC (per query, each method at its best λ; % points, mean ± s.e.):\n\n| method | LDS(method) - LDS(EK-FAC) |\n|---|---|\n");
            for method in DAMPED_METHODS.iter().chain(PLAIN_METHODS.iter()).filter(|m| **m != "ekfac") {
                if let Some(b) = Self::best(results, method) {
                    let d: Vec<f64> =
                        b.per_query.iter().zip(&reference.per_query).map(|(x, y)| x - y).collect();
                    let (m, se) = mean_se(&d);
                    md.push_str(&format!("| {method} | {:+.1} ± {:.1} |\n", 100.0 * m, 100.0 * se));
                }
            }
            md.push('\n');
        }
        md.push_str("LDS (%) over the damping grid:\n\n| method |");
        for l in &c.lambdas {
            md.push_str(&format!(" {l:.0e} |"));
        }
        md.push_str("\n|---|");
        md.push_str(&"---|".repeat(c.lambdas.len()));
        md.push('\n');
        for method in DAMPED_METHODS {
            md.push_str(&format!("| {method} |"));
            for l in &c.lambdas {
                let r = results.iter().find(|r| r.method == method && r.lambda == Some(*l));
                md.push_str(&format!(" {} |", r.map_or("–".into(), |r| format!("{:.1}", 100.0 * r.mean))));
            }
            md.push('\n');
        }
        md.push_str(&format!("\n{timing}\n"));
        write_bar_chart(&self.dir.join("lds.png"), "LDS (%) at best damping, +-1 s.e.", &bars, |v, s| {
            format!("{v:.1}+-{s:.1}")
        })?;
        write_atomic(&self.dir.join("lds.md"), md.as_bytes())?;
        Ok(md)
    }

    fn top_dir(&self, query: usize, method: &str, k: usize) -> PathBuf {
        self.dir.join("top").join(format!("q{query:03}-{method}-k{k}"))
    }

    /// Training indices to remove for (query, method, k): the k highest scores at the method's
    /// best LDS damping, or k random ones (`method == "random"`, seeded by the query).
    fn removal(
        &self,
        results: &[LdsResult],
        query: usize,
        method: &str,
        k: usize,
        n: usize,
    ) -> Result<Vec<usize>> {
        if method == "random" {
            use rand::seq::SliceRandom;
            let mut idx: Vec<usize> = (0..n).collect();
            idx.shuffle(&mut diffusion::rng::stream(self.config.seed, 0x7A4D, query as u64));
            return Ok(idx[..k].to_vec());
        }
        let best = Self::best(results, method).with_context(|| format!("unknown method '{method}'"))?;
        let path = self.score_path(method, best.lambda);
        let (scores, _, cols) = read_matrix(&path).with_context(|| path.display().to_string())?;
        let row = &scores[query * cols..(query + 1) * cols];
        let mut order: Vec<usize> = (0..cols).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        Ok(order[..k].to_vec())
    }

    /// Retrain without the top-k influences of each of the first `n_queries` queries, for each
    /// method and removal fraction (shard `i` of `n` of the jobs); returns the report when all are
    /// done.
    pub fn retrain_top(
        &self,
        queries: &[f32],
        n_queries: usize,
        methods: &[String],
        fractions: &[f64],
        shard: (usize, usize),
    ) -> Result<Option<String>> {
        let (results, _) = self.lds()?;
        let n = self.n_train();
        let d = queries.len() / self.config.queries;
        let n_queries = n_queries.min(self.config.queries);
        let base_ids: Vec<usize> = (0..n_queries).collect();
        let base = self.measure(&self.base_dir(), &queries[..n_queries * d], &base_ids)?;
        let ks: Vec<usize> =
            fractions.iter().map(|f| ((f * n as f64).round() as usize).clamp(1, n - 1)).collect();
        let mut jobs = Vec::new();
        for qi in 0..n_queries {
            for &k in &ks {
                for m in methods {
                    jobs.push((qi, m.clone(), k));
                }
            }
        }
        for (j, (qi, m, k)) in jobs.iter().enumerate() {
            if j % shard.1 != shard.0 {
                continue;
            }
            let removed = self.removal(&results, *qi, m, *k, n)?;
            let keep: Vec<usize> = (0..n).filter(|i| !removed.contains(i)).collect();
            let run = self.config.subset_run(&keep, self.config.train.steps, self.config.train.seed);
            let dir = self.top_dir(*qi, m, *k);
            self.train(
                &run,
                &dir,
                &format!("without top-{k} of query {qi} by {m} ({}/{})", j + 1, jobs.len()),
            )?;
            self.measure(&dir, &queries[qi * d..(qi + 1) * d], &[*qi])?;
        }
        // Report (only when every job is measured).
        let mut md = format!(
            "# Retraining without top influences\n\nFor each of {n_queries} queries, the k training images with the highest \
             score (each method at its best LDS damping) are removed and the model is retrained from scratch with the \
             full schedule ({} steps, same seed as the full model); the table shows the increase of the query's loss \
             (common draws, {} of them) over the full model, mean ± s.e. over queries. Higher is better; random removal \
             is the control.\n\n| method |",
            self.config.train.steps, self.config.measure_draws
        );
        for (f, k) in fractions.iter().zip(&ks) {
            md.push_str(&format!(" k = {k} ({:.0} %) |", 100.0 * f));
        }
        md.push_str("\n|---|");
        md.push_str(&"---|".repeat(ks.len()));
        md.push('\n');
        let mut bars = Vec::new();
        let mut json = Vec::new();
        for m in methods {
            md.push_str(&format!("| {} |", describe(m)));
            for &k in &ks {
                let mut inc = Vec::new();
                for (qi, b) in base.iter().enumerate() {
                    match MeasureFile::read(&self.top_dir(qi, m, k)) {
                        Some(f) => inc.push(f.loss[0] - b),
                        None => return Ok(None),
                    }
                }
                let (mean, se) = mean_se(&inc);
                md.push_str(&format!(" {mean:.5} ± {se:.5} |"));
                bars.push(Bar { label: format!("{m} k={k}"), value: 1e3 * mean, se: 1e3 * se });
                json.push(serde_json::json!({"method": m, "k": k, "mean": mean, "se": se, "per_query": inc}));
            }
            md.push('\n');
        }
        write_atomic(&self.dir.join("retrain-top.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
        write_bar_chart(
            &self.dir.join("retrain-top.png"),
            "loss increase x 1000, +-1 s.e.",
            &bars,
            |v, s| format!("{v:.2}+-{s:.2}"),
        )?;
        write_atomic(&self.dir.join("retrain-top.md"), md.as_bytes())?;
        Ok(Some(md))
    }
}

fn describe_model(m: &ModelConfig) -> String {
    match m {
        ModelConfig::Unet(u) => format!("U-Net channels {:?}", u.channels),
        ModelConfig::Mlp(_) => "MLP".to_string(),
    }
}

/// The default benchmark: MNIST {0, 1} at 8x8 from the embedded subset (N = 1000), a ~28k-param
/// U-Net, M = 32 subsets x K = 2 seeds, Q = 64 queries (spec p1 §6).
pub fn default_config() -> BenchmarkConfig {
    BenchmarkConfig {
        data: DataSpec { classes: vec![0, 1], size: 8, per_class: Some(500), ..DataSpec::default() },
        model: ModelConfig::Unet(UNetConfig {
            height: 8,
            width: 8,
            channels: vec![8, 16],
            ..UNetConfig::default()
        }),
        diffusion: DiffusionConfig::default(),
        train: TrainConfig {
            steps: 2000,
            batch_size: 64,
            lr: 1e-3,
            ema_decay: 0.999,
            ..TrainConfig::default()
        },
        subset_steps: 1000,
        subsets: 32,
        seeds: 2,
        alpha: 0.5,
        queries: 64,
        measure_draws: 1000,
        train_draws: 64,
        query_draws: 128,
        factor_draws: 32,
        trak_dim: 2048,
        lambdas: (-9..=0).map(|e| 10f64.powi(e)).collect(),
        seed: 0,
    }
}
