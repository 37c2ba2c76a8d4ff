//! The experiments: one data set (rotated MNIST, plain MNIST, or MNIST with noise features), the
//! partitioned method and its baselines trained through the same code with the same step budget,
//! and a report (`report.md`, `results.json`, PNGs) in one directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ::data::{load_mnist, Split};
use burn::prelude::*;
use foundation::plot::{write_bar_chart, Bar};
use foundation::progress::Progress;
use serde::{Deserialize, Serialize};

use crate::data::{validation_split, Inputs};
use crate::federated::{train_federated, FederatedConfig};
use crate::hpo::{accuracy, train, PsiInit, PsiOptimizer, PsiSignal, RunConfig, TracePoint};
use crate::model::PsiUse;
use crate::plot::{write_lines, write_map, COLOURS};
use crate::HpoError;

/// Which data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Task {
    /// Every image (training and test) rotated by its own angle from U(-180, 180) degrees.
    Rotated,
    /// MNIST as it is.
    Plain,
    /// MNIST with `noise_features` uniform noise features appended to every image.
    Noise,
}

/// A method compared in an experiment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Method {
    /// Partitioned training, psi from the out-of-training-sample loss (then retrained with psi).
    Partitioned,
    /// No augmentation and no mask.
    None,
    /// psi from the training loss of the full network.
    TrainLoss,
    /// psi from the training loss minus the width regulariser (Augerino).
    Augerino,
    /// Training on 80 %, psi from the loss on the other 20 %.
    ValSplit,
    /// A grid of fixed rotation ranges trained on 80 %, the best on the other 20 % retrained on all.
    Grid,
    /// psi from the Laplace marginal likelihood with a K-FAC GGN (Immer et al. 2022), weights the
    /// MAP on all rows (then retrained with psi, like the partitioned method).
    Laplace,
}

impl Method {
    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Method::Partitioned => "partitioned (OOTS)",
            Method::None => "no augmentation",
            Method::TrainLoss => "train-loss psi",
            Method::Augerino => "Augerino",
            Method::ValSplit => "20 % validation psi",
            Method::Grid => "grid search + validation",
            Method::Laplace => "Laplace marglik (K-FAC)",
        }
    }
}

/// Settings of an experiment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExperimentConfig {
    /// Data set.
    pub task: Task,
    /// MNIST directory (`None`: the embedded 5 000 / 1 000 subset).
    pub data: Option<PathBuf>,
    /// Training images (a seeded subset; at most what the source holds).
    pub n_train: usize,
    /// Test images (a seeded subset).
    pub n_test: usize,
    /// Noise features appended in [`Task::Noise`].
    pub noise_features: usize,
    /// Methods to run, in order.
    pub methods: Vec<Method>,
    /// Parts of psi used (`None`: rotation for rotated/plain, the mask for noise).
    pub psi_use: Option<PsiUse>,
    /// Settings shared by every run (partition count and proportions apply to the partitioned run;
    /// the others train one partition).
    pub run: RunConfig,
    /// Rotation ranges of the grid, degrees.
    pub grid_deg: Vec<f64>,
    /// Augerino's regulariser weight.
    pub augerino_lambda: f64,
    /// Prior precision delta of the Laplace method (weights and biases).
    #[serde(default = "default_laplace_prior")]
    pub laplace_prior_precision: f64,
    /// Share of the training rows held out by the validation-split methods.
    pub val_fraction: f64,
    /// Retrain the partitioned method's full network with the learned psi (the deployed model).
    pub retrain: bool,
    /// Federated training over label-skewed clients (FedAvg) instead of one central run; the
    /// methods that need no validation rows (partitioned, none, train-loss, augerino) only.
    #[serde(default)]
    pub federated: Option<FederatedConfig>,
    /// Output directory.
    pub out: PathBuf,
}

/// The default prior precision of the Laplace method: 1, a Gaussian prior of unit variance; at
/// N = 5 000 rows its per-example weight `delta / N = 2e-4` is the usual weight-decay scale.
pub fn default_laplace_prior() -> f64 {
    1.0
}

/// The result of one method.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MethodResult {
    /// Which method.
    pub method: Method,
    /// Test accuracy of its model (for the partitioned method: the full network of the run).
    pub test_accuracy: f64,
    /// Test accuracy after retraining with the learned psi (partitioned and Laplace methods).
    pub retrained_accuracy: Option<f64>,
    /// Final rotation range, degrees (`None` if rotation is off).
    pub theta_max_deg: Option<f64>,
    /// Gaussian dropout sigma (`None` if off).
    pub sigma: Option<f64>,
    /// Share of image pixels with keep probability > 0.5 (`None` if the mask is off).
    pub pixels_kept: Option<f64>,
    /// Share of noise features with keep probability > 0.5.
    pub noise_dropped: Option<f64>,
    /// Training wall time, seconds (grid: all grid runs and the final retraining).
    pub seconds: f64,
    /// Retraining wall time (partitioned and Laplace methods), seconds.
    pub retrain_seconds: Option<f64>,
    /// psi over training.
    pub trace: Vec<TracePoint>,
    /// Grid points (theta degrees, validation accuracy), grid method only.
    pub grid: Vec<(f64, f64)>,
    /// The learned keep probabilities (mask on only).
    pub keep: Option<Vec<f32>>,
}

/// Loads the task's data: (training rows, test rows).
pub fn load_task(config: &ExperimentConfig) -> Result<(Inputs, Inputs), HpoError> {
    let dir = config.data.as_deref();
    let train = load_mnist(dir, Split::Train)?;
    let test = load_mnist(dir, Split::Test)?;
    let seed = config.run.seed;
    let train = if config.n_train < train.n { train.subset(config.n_train, seed) } else { train };
    let test = if config.n_test < test.n { test.subset(config.n_test, seed) } else { test };
    let (train, test) = (Inputs::from_dataset(&train), Inputs::from_dataset(&test));
    Ok(match config.task {
        Task::Plain => (train, test),
        Task::Rotated => (train.rotated(seed, 0), test.rotated(seed, 1)),
        Task::Noise => (
            train.with_noise_features(config.noise_features, seed, 0),
            test.with_noise_features(config.noise_features, seed, 1),
        ),
    })
}

fn psi_use(config: &ExperimentConfig) -> PsiUse {
    config.psi_use.unwrap_or(match config.task {
        Task::Rotated | Task::Plain => PsiUse { rotation: true, mask: false, dropout: false },
        Task::Noise => PsiUse { rotation: false, mask: true, dropout: false },
    })
}

fn single(run: &RunConfig) -> RunConfig {
    RunConfig { partitions: 1, weight_proportions: vec![1.0], data_proportions: vec![1.0], ..run.clone() }
}

fn with_theta(run: &RunConfig, theta: f64) -> RunConfig {
    let init = match &run.init {
        PsiInit::Uniform { mask_keep, sigma, .. } => {
            PsiInit::Uniform { theta_deg: theta, mask_keep: *mask_keep, sigma: *sigma }
        }
        PsiInit::Values(v) => PsiInit::Values(crate::model::PsiValues { theta_max_deg: theta, ..v.clone() }),
    };
    RunConfig { init, signal: None, ..run.clone() }
}

/// Runs every method of `config` and writes the report; returns the results.
pub fn run_experiment(
    config: &ExperimentConfig,
    device: &Device,
    progress: &dyn Progress,
    log: &dyn Fn(&str),
) -> Result<Vec<MethodResult>, HpoError> {
    if let Some(fed) = &config.federated {
        fed.validate(&config.run)?;
        let central = [Method::ValSplit, Method::Grid, Method::Laplace];
        if let Some(m) = config.methods.iter().find(|m| central.contains(m)) {
            return Err(HpoError::InvalidArgument(format!(
                "method {} has no federated form; federated runs take partitioned, none, train-loss and augerino",
                m.name()
            )));
        }
    }
    let (train_rows, test) = load_task(config)?;
    let use_ = psi_use(config);
    let base = RunConfig { psi_use: use_, ..config.run.clone() };
    base.validate()?;
    let (tr_idx, val_idx) = validation_split(train_rows.n, config.val_fraction, base.seed)?;
    let (tr80, val20) = (train_rows.select(&tr_idx), train_rows.select(&val_idx));
    let image_pixels = train_rows.image.0 * train_rows.image.1;
    // One central run, or FedAvg over the clients.
    let fit = |run: &RunConfig| match &config.federated {
        Some(fed) => train_federated(run, fed, &train_rows, device, progress),
        None => train(run, &train_rows, None, device, progress),
    };
    let acc = |m: &crate::model::PartitionedNet, u: PsiUse| accuracy(m, &test, u, base.samples, base.seed);
    let previous = finished_methods(config)?;
    // The deployed model of a method that learns psi in one run: a standard network (C = 1)
    // retrained on all rows with psi fixed at the learned values (test accuracy, seconds).
    let retrain = |psi: &crate::model::PsiValues| -> Result<(Option<f64>, Option<f64>), HpoError> {
        if !config.retrain {
            return Ok((None, None));
        }
        let rerun = RunConfig { signal: None, init: PsiInit::Values(psi.clone()), ..single(&base) };
        let again = fit(&rerun)?;
        Ok((Some(acc(&again.model, use_)), Some(again.seconds)))
    };
    let mut results = Vec::new();
    for &method in &config.methods {
        if let Some(done) = previous.iter().find(|r| r.method == method) {
            log(&format!("{}: finished earlier in {}, kept", method.name(), config.out.display()));
            results.push(done.clone());
            write_report(config, &results, &train_rows, &test)?;
            continue;
        }
        log(&format!("{}: training", method.name()));
        let started = Instant::now();
        let result = match method {
            Method::Partitioned => {
                let run = RunConfig { signal: Some(PsiSignal::Oots), ..base.clone() };
                let out = fit(&run)?;
                let test_accuracy = acc(&out.model, use_);
                let (retrained_accuracy, retrain_seconds) = retrain(&out.psi)?;
                summarise(method, use_, image_pixels, test_accuracy, &out.psi, out.trace, out.seconds)
                    .with_retrain(retrained_accuracy, retrain_seconds)
            }
            Method::None => {
                let none = PsiUse { rotation: false, mask: false, dropout: false };
                let run = RunConfig { psi_use: none, signal: None, ..single(&base) };
                let out = fit(&run)?;
                summarise(method, none, image_pixels, acc(&out.model, none), &out.psi, out.trace, out.seconds)
            }
            Method::TrainLoss | Method::Augerino => {
                let signal = if method == Method::TrainLoss {
                    PsiSignal::TrainLoss
                } else {
                    PsiSignal::Augerino { lambda: config.augerino_lambda }
                };
                let run = RunConfig { signal: Some(signal), ..single(&base) };
                let out = fit(&run)?;
                summarise(method, use_, image_pixels, acc(&out.model, use_), &out.psi, out.trace, out.seconds)
            }
            Method::Laplace => {
                let signal = PsiSignal::Laplace { prior_precision: config.laplace_prior_precision };
                let run = RunConfig { signal: Some(signal), ..single(&base) };
                let out = fit(&run)?;
                let test_accuracy = acc(&out.model, use_);
                let (retrained_accuracy, retrain_seconds) = retrain(&out.psi)?;
                summarise(method, use_, image_pixels, test_accuracy, &out.psi, out.trace, out.seconds)
                    .with_retrain(retrained_accuracy, retrain_seconds)
            }
            Method::ValSplit => {
                let run = RunConfig { signal: Some(PsiSignal::Validation), ..single(&base) };
                let out = train(&run, &tr80, Some(&val20), device, progress)?;
                summarise(method, use_, image_pixels, acc(&out.model, use_), &out.psi, out.trace, out.seconds)
            }
            Method::Grid => {
                let rot = PsiUse { rotation: true, ..use_ };
                let mut grid = Vec::new();
                let mut seconds = 0.0;
                for &theta in &config.grid_deg {
                    let run = RunConfig { psi_use: rot, ..with_theta(&single(&base), theta) };
                    let out = train(&run, &tr80, None, device, progress)?;
                    seconds += out.seconds;
                    let v = accuracy(&out.model, &val20, rot, base.samples, base.seed);
                    log(&format!("  grid theta_max {theta} deg: validation accuracy {:.4}", v));
                    grid.push((theta, v));
                }
                let best = grid.iter().copied().fold((f64::NAN, -1.0), |b, g| if g.1 > b.1 { g } else { b });
                let run = RunConfig { psi_use: rot, ..with_theta(&single(&base), best.0) };
                let out = fit(&run)?;
                seconds += out.seconds;
                let mut r =
                    summarise(method, rot, image_pixels, acc(&out.model, rot), &out.psi, out.trace, seconds);
                r.grid = grid;
                r
            }
        };
        log(&format!(
            "{}: test accuracy {:.4}{} theta_max {} ({:.1} s, {:.1} s with evaluation)",
            method.name(),
            result.test_accuracy,
            result.retrained_accuracy.map(|a| format!(" (retrained {a:.4})")).unwrap_or_default(),
            result.theta_max_deg.map(|t| format!("{t:.1} deg")).unwrap_or_else(|| "-".into()),
            result.seconds,
            started.elapsed().as_secs_f64()
        ));
        results.push(result);
        write_report(config, &results, &train_rows, &test)?;
    }
    Ok(results)
}

/// The results already in `config.out/results.json` (none if there is no such file), so that an
/// interrupted experiment resumes at the first unfinished method. Every setting but the method
/// list must match the earlier run's: a directory holding other settings is refused, never
/// overwritten.
pub fn finished_methods(config: &ExperimentConfig) -> Result<Vec<MethodResult>, HpoError> {
    let Some((stored, results)) = read_results(&config.out, true)? else {
        return Ok(Vec::new());
    };
    // Compare the settings as JSON, without the fields that may change between resumptions;
    // through the settings type, so fields added since (with serde defaults) compare equal.
    let settings = |c: &ExperimentConfig| {
        let mut v = serde_json::to_value(c).expect("settings serialise");
        if let Some(o) = v.as_object_mut() {
            o.remove("methods");
            o.remove("out");
        }
        v
    };
    if settings(&stored) != settings(config) {
        return Err(HpoError::InvalidArgument(format!(
            "{} holds results of other settings; choose another --out or remove it",
            config.out.display()
        )));
    }
    Ok(results)
}

/// The settings and results in `out/results.json`; `None` if there is no such file and
/// `missing_ok` (otherwise a missing file is an error).
fn read_results(
    out: &Path,
    missing_ok: bool,
) -> Result<Option<(ExperimentConfig, Vec<MethodResult>)>, HpoError> {
    let path = out.join("results.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if missing_ok && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(foundation::atomic::IoError::new(&path, e).into()),
    };
    let bad = |e: serde_json::Error| HpoError::InvalidArgument(format!("{}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).map_err(bad)?;
    let config = serde_json::from_value(json["config"].clone()).map_err(bad)?;
    let results = serde_json::from_value(json["results"].clone()).map_err(bad)?;
    Ok(Some((config, results)))
}

impl MethodResult {
    fn with_retrain(mut self, acc: Option<f64>, seconds: Option<f64>) -> Self {
        self.retrained_accuracy = acc;
        self.retrain_seconds = seconds;
        self
    }
}

fn summarise(
    method: Method,
    use_: PsiUse,
    image_pixels: usize,
    test_accuracy: f64,
    psi: &crate::model::PsiValues,
    trace: Vec<TracePoint>,
    seconds: f64,
) -> MethodResult {
    let share = |v: &[f32], f: &dyn Fn(f32) -> bool| {
        v.iter().filter(|&&k| f(k)).count() as f64 / v.len().max(1) as f64
    };
    let (pixels_kept, noise_dropped) = if use_.mask {
        let (pix, noise) = psi.keep.split_at(image_pixels.min(psi.keep.len()));
        (
            Some(share(pix, &|k| k > 0.5)),
            if noise.is_empty() { None } else { Some(share(noise, &|k| k <= 0.5)) },
        )
    } else {
        (None, None)
    };
    MethodResult {
        method,
        test_accuracy,
        retrained_accuracy: None,
        theta_max_deg: use_.rotation.then_some(psi.theta_max_deg),
        sigma: use_.dropout.then_some(psi.sigma),
        pixels_kept,
        noise_dropped,
        seconds,
        retrain_seconds: None,
        trace,
        grid: Vec::new(),
        keep: use_.mask.then(|| psi.keep.clone()),
    }
}

fn shares(v: &[f64]) -> String {
    format!("[{}]", v.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", "))
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "–".into())
}

/// Writes `report.md`, `results.json` and the PNGs for the results so far.
pub fn write_report(
    config: &ExperimentConfig,
    results: &[MethodResult],
    train_rows: &Inputs,
    test: &Inputs,
) -> Result<(), HpoError> {
    let out = &config.out;
    let json = serde_json::json!({ "config": config, "results": results });
    foundation::atomic::write_bytes(
        &out.join("results.json"),
        serde_json::to_string_pretty(&json).expect("JSON values serialise").as_bytes(),
    )?;
    let mut md = String::new();
    let run = &config.run;
    let _ = writeln!(md, "# Partition-based HPO: {:?} MNIST\n", config.task);
    let _ = writeln!(
        md,
        "{} training images ({}), {} test images, {} input features; {}MLP {} -> {:?} -> 10; {} steps of {} examples, \
         lr {}, seed {}; partitioned: C = {}, weight shares {}, data shares {}; psi step every {} steps \
         (Adam lr {}, {} rows per shard, {} augmentation samples averaged; the same samples at test time).\n",
        train_rows.n,
        config.data.as_ref().map(|d| d.display().to_string()).unwrap_or_else(|| "embedded subset".into()),
        test.n,
        train_rows.d,
        if run.conv_channels.is_empty() {
            String::new()
        } else {
            format!("3x3 stride-2 convolutions with channels {:?}, then ", run.conv_channels)
        },
        if run.conv_channels.is_empty() { train_rows.d.to_string() } else { "features".to_string() },
        run.hidden,
        run.steps,
        run.batch,
        run.lr,
        run.seed,
        run.partitions,
        shares(&run.weight_proportions),
        shares(&run.data_proportions),
        run.psi_every,
        run.psi_lr,
        run.psi_batch,
        run.samples,
    );
    if let Some(fed) = &config.federated {
        let _ = writeln!(
            md,
            "**Federated** (FedAvg): {} label-skewed clients (two label-sorted chunks of the training rows each), {} rounds of {} local steps per client; \
             weights, biases and psi logits averaged by client rows after every round; the steps above are a client's over all rounds, \
             and the wall time is all clients' training one after another (the cost table compares like with like).\n",
            fed.clients,
            fed.rounds,
            run.steps / fed.rounds,
        );
    }
    let _ = writeln!(
        md,
        "| method | test accuracy | retrained with psi | theta_max (deg) | pixels kept | noise dropped | training s |\n|---|---|---|---|---|---|---|"
    );
    for r in results {
        let _ = writeln!(
            md,
            "| {} | {:.2} % | {} | {} | {} | {} | {:.1}{} |",
            r.method.name(),
            100.0 * r.test_accuracy,
            opt(r.retrained_accuracy, |a| format!("{:.2} %", 100.0 * a)),
            opt(r.theta_max_deg, |t| format!("{t:.1}")),
            opt(r.pixels_kept, |p| format!("{:.1} %", 100.0 * p)),
            opt(r.noise_dropped, |p| format!("{:.1} %", 100.0 * p)),
            r.seconds,
            r.retrain_seconds.map(|s| format!(" + {s:.1} retrain")).unwrap_or_default(),
        );
    }
    if let Some(g) = results.iter().find(|r| r.method == Method::Grid) {
        let _ = writeln!(md, "\nGrid (theta_max degrees: validation accuracy): {}", {
            g.grid.iter().map(|(t, a)| format!("{t}: {:.2} %", 100.0 * a)).collect::<Vec<_>>().join(", ")
        });
    }
    // Wall time side by side: the partitioned run against one standard run (C = 1, the same
    // steps, psi fixed at the learned values: the retraining) and against the grid search; and
    // the machine-independent cost: rows through a forward and backward pass.
    let part = results.iter().find(|r| r.method == Method::Partitioned);
    let laplace = results.iter().find(|r| r.method == Method::Laplace);
    if let Some(standard) = part.or(laplace).and_then(|p| p.retrain_seconds) {
        let u = psi_use(config);
        let samples = if u.rotation || u.dropout { run.samples } else { 1 };
        let one = (run.steps * run.batch) as f64;
        let _ = writeln!(
            md,
            "\n| cost | wall s | x one standard run | rows through forward + backward | x one standard run |\n|---|---|---|---|---|\n\
             | one standard run (C = 1, learned psi fixed) | {standard:.1} | 1.00 | {one:.0} | 1.00 |"
        );
        if let Some(p) = part {
            let hyper = ((run.steps / run.psi_every) * (run.partitions - 1) * run.psi_batch * samples) as f64;
            let _ = writeln!(
                md,
                "| partitioned run (psi learned) | {:.1} | {:.2} | {:.0} | {:.2} |",
                p.seconds,
                p.seconds / standard,
                one + hyper,
                (one + hyper) / one
            );
        }
        if let Some(l) = laplace {
            // The rows of the psi steps' forward pass; their K-FAC back-propagation (one pass per
            // class) and the factors' eigendecompositions come on top.
            let hyper = ((run.steps / run.psi_every) * run.psi_batch * samples) as f64;
            let _ = writeln!(
                md,
                "| Laplace run (psi learned; + K-FAC per psi step) | {:.1} | {:.2} | {:.0} | {:.2} |",
                l.seconds,
                l.seconds / standard,
                one + hyper,
                (one + hyper) / one
            );
        }
        if let Some(g) = results.iter().find(|r| r.method == Method::Grid) {
            let rows = (g.grid.len() + 1) as f64 * one;
            let _ = writeln!(
                md,
                "| grid search ({} ranges on 80 % + retraining on all) | {:.1} | {:.2} | {rows:.0} | {:.2} |",
                g.grid.len(),
                g.seconds,
                g.seconds / standard,
                rows / one
            );
        }
        if let Some(n) = results.iter().find(|r| r.method == Method::None) {
            let _ = writeln!(
                md,
                "| no augmentation (no resampling) | {:.1} | {:.2} | {one:.0} | 1.00 |",
                n.seconds,
                n.seconds / standard
            );
        }
    }
    // Theta over training.
    let traced: Vec<&MethodResult> =
        results.iter().filter(|r| r.theta_max_deg.is_some() && r.trace.len() > 1).collect();
    if !traced.is_empty() {
        let series: Vec<Vec<(f64, f64)>> = traced
            .iter()
            .map(|r| r.trace.iter().map(|p| (p.step as f64, p.theta_max_deg)).collect())
            .collect();
        write_lines(&out.join("theta_max.png"), &series, 180.0, 45.0)?;
        let legend = traced
            .iter()
            .enumerate()
            .map(|(i, r)| format!("{} = {}", COLOURS[i % COLOURS.len()].0, r.method.name()))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            md,
            "\n![theta_max over training](theta_max.png)\n\nLearned theta_max (0 to 180 degrees, grid every 45) over the parameter steps: {legend}."
        );
    }
    let bars: Vec<Bar> = results
        .iter()
        .map(|r| Bar {
            label: r.method.name().replace(['(', ')'], ""),
            value: 100.0 * r.test_accuracy,
            se: 0.0,
        })
        .chain(results.iter().filter_map(|r| {
            r.retrained_accuracy.map(|a| Bar {
                label: match r.method {
                    Method::Laplace => "Laplace retrained".into(),
                    _ => "partitioned retrained".into(),
                },
                value: 100.0 * a,
                se: 0.0,
            })
        }))
        .collect();
    write_bar_chart(&out.join("accuracy.png"), "test accuracy (%)", &bars, |v, _| format!("{v:.2}"))?;
    let _ = writeln!(md, "\n![test accuracy](accuracy.png)");
    // The learned mask of the partitioned method (or, without it, of the Laplace method).
    let masked = |m: Method| results.iter().find(|r| r.method == m && r.keep.is_some());
    if let Some(r) = masked(Method::Partitioned).or_else(|| masked(Method::Laplace)) {
        let keep = r.keep.as_ref().expect("mask");
        let (h, w) = train_rows.image;
        write_map(&out.join("mask.png"), &keep[..h * w], h, w, 8)?;
        let mut md_mask =
            "\n![learned input mask](mask.png)\n\nKeep probability of each pixel (white = 1)".to_string();
        if keep.len() > h * w {
            let extra = &keep[h * w..];
            let cols = 20;
            write_map(&out.join("mask_noise.png"), extra, extra.len().div_ceil(cols), cols, 8)?;
            md_mask.push_str(
                " and of the noise features (mask_noise.png, 20 per row): ![noise mask](mask_noise.png)",
            );
        }
        let _ = writeln!(md, "{md_mask}.");
    }
    let _ = writeln!(
        md,
        "\nTraining seconds exclude evaluation; the grid's time is all its runs plus the final retraining. \
         Wall times were measured on a shared machine."
    );
    foundation::atomic::write_bytes(&out.join("report.md"), md.as_bytes())?;
    Ok(())
}

/// Re-renders the report of a finished experiment from its `results.json` (after a change of the
/// report's format); the data are loaded again for their sizes.
pub fn rewrite_report(out: &Path) -> Result<(), HpoError> {
    let (mut config, results) = read_results(out, false)?.expect("a missing file is an error here");
    config.out = out.to_path_buf();
    let (train_rows, test) = load_task(&config)?;
    write_report(&config, &results, &train_rows, &test)
}

/// Initial keep probability of every input feature. Just above the 0.5 at which a feature
/// counts as dropped: every feature starts undecided. From keep 0.9 the gate's noise term,
/// whose variance `p (1 - p)` falls towards either end, pulls a feature the network leans on up
/// to 1 as readily as its out-of-sample harm pulls it down, and noise features split both ways
/// (docs/partition-hpo.md). Features that never vary (the always-blank border pixels) get no
/// gradient and keep this value.
pub const DEFAULT_MASK_KEEP: f64 = 0.55;

/// The defaults of an experiment on `task` writing to `out` (sized for the embedded subset).
pub fn default_config(task: Task, out: &Path) -> ExperimentConfig {
    ExperimentConfig {
        task,
        data: None,
        n_train: 5000,
        n_test: 1000,
        noise_features: 200,
        methods: match task {
            Task::Noise => vec![Method::Partitioned, Method::None, Method::ValSplit, Method::Laplace],
            _ => vec![
                Method::Partitioned,
                Method::None,
                Method::TrainLoss,
                Method::Augerino,
                Method::ValSplit,
                Method::Grid,
                Method::Laplace,
            ],
        },
        psi_use: None,
        run: RunConfig {
            conv_channels: Vec::new(),
            hidden: vec![256, 256],
            steps: 1500,
            batch: 128,
            lr: 1e-3,
            seed: 0,
            partitions: 3,
            weight_proportions: vec![1.0 / 3.0; 3],
            data_proportions: vec![1.0 / 3.0; 3],
            psi_use: PsiUse { rotation: true, mask: false, dropout: false },
            signal: None,
            psi_every: 10,
            psi_lr: 0.05,
            psi_optimizer: PsiOptimizer::Adam,
            psi_batch: 64,
            samples: 4,
            init: PsiInit::Uniform { theta_deg: 10.0, mask_keep: DEFAULT_MASK_KEEP, sigma: 0.1 },
            zero_defaults: false,
        },
        grid_deg: vec![0.0, 45.0, 90.0, 135.0, 180.0],
        augerino_lambda: 0.1,
        laplace_prior_precision: default_laplace_prior(),
        val_fraction: 0.2,
        retrain: true,
        federated: None,
        out: out.to_path_buf(),
    }
}
