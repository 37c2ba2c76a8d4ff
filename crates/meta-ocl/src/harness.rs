//! The seed sweep: stage 0 once per world, then for each stage-1 seed its protocol, stage 1 and
//! for each stage-2 seed stage 2, each evaluated by exact match per subset; the paired gaps with
//! bootstrap CIs; `report.md`, `summary.json` and plots.
//!
//! Layout of a run directory `out/`: `config.json`; `stage0/` (checkpoint generations,
//! `model.safetensors`, `stage0.json`); `seeds/s{s}/stage1.safetensors`, `stage1.json` and
//! `t{t}.json` (one per stage-2 seed). A result file present means that unit of work is done:
//! a rerun skips it, so an interrupted sweep resumes where it stopped.
//!
//! With [`SweepConfig::eval_every`] `k > 0`, stages 1 and 2 are also evaluated at epoch 0 and
//! every `k` epochs ([`crate::train::EvalSchedule`]); the points are in each result's
//! `train.em_over_training`, and the report adds their mean over seeds as a table and
//! `em_over_training.png`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use burn::prelude::Device;
use foundation::plot::{write_bar_chart, Bar};
use foundation::progress::{NoProgress, Progress};
use foundation::stats::{bootstrap_ci, mean_se, Interval};
use foundation::train::Checkpoints;
use serde::{Deserialize, Serialize};

use crate::model::ModelConfig;
use crate::train::{
    em_by_subset, em_by_subset_prefixed, save_model, train_stage, EvalSchedule, StageConfig, StageReport,
    Start,
};
use crate::world::{AliasGroup, Protocol, ProtocolConfig, TestItem, World, WorldConfig, SUBSETS};
use crate::MetaOclError;

/// Everything a sweep depends on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepConfig {
    /// The world.
    pub world: WorldConfig,
    /// The LM.
    pub model: ModelConfig,
    /// Stage 0: every fact, from a fresh model.
    pub stage0: StageConfig,
    /// Stage 1 (the spec: 20 epochs).
    pub stage1: StageConfig,
    /// Stage 2 (the spec: 10 epochs, half of stage 1).
    pub stage2: StageConfig,
    /// Number of stage-1 seeds.
    pub stage1_seeds: usize,
    /// Number of stage-2 seeds per stage-1 seed.
    pub stage2_seeds: usize,
    /// Stage-0 facts checked for recall after stage 0.
    pub recall_items: usize,
    /// Bootstrap resamples of each CI.
    pub resamples: usize,
    /// The protocol's controls (swapped tag roles, tag–consistency correlation); absent in a
    /// `config.json` written before they existed, which means the authors' protocol.
    #[serde(default)]
    pub protocol: ProtocolConfig,
    /// Epochs between evaluations during stages 1 and 2 (EM over training; 0: only at the end).
    #[serde(default = "default_eval_every")]
    pub eval_every: usize,
    /// Share in [0, 1] of the stage-0 sequences replayed in stage 2 beside its definitions
    /// ([`crate::world::spread_share`]; 0, the authors' protocol: definitions only). A variant
    /// against the drift of every answer while stage 2 trains definitions alone.
    #[serde(default)]
    pub stage2_replay: f64,
}

fn default_eval_every() -> usize {
    5
}

impl Default for SweepConfig {
    fn default() -> Self {
        let stage = |epochs: usize, lr: f64| StageConfig {
            epochs,
            batch_size: 64,
            lr,
            warmup_steps: 20,
            weight_decay: 0.01,
        };
        Self {
            world: WorldConfig::default(),
            model: ModelConfig::default(),
            stage0: stage(40, 2e-3),
            stage1: stage(20, 1e-3),
            stage2: StageConfig { batch_size: 16, ..stage(10, 1e-3) },
            stage1_seeds: 8,
            stage2_seeds: 2,
            recall_items: 600,
            resamples: 10_000,
            protocol: ProtocolConfig::default(),
            eval_every: default_eval_every(),
            stage2_replay: 0.0,
        }
    }
}

impl SweepConfig {
    /// Checks every setting.
    pub fn validate(&self) -> Result<(), MetaOclError> {
        self.world.validate()?;
        self.model.validate()?;
        self.stage0.validate("stage 0")?;
        self.stage1.validate("stage 1")?;
        self.stage2.validate("stage 2")?;
        self.protocol.validate()?;
        if !(0.0..=1.0).contains(&self.stage2_replay) {
            return Err(MetaOclError::Invalid(format!(
                "stage2_replay must be in [0, 1] (got {})",
                self.stage2_replay
            )));
        }
        if self.stage1_seeds == 0 || self.stage2_seeds == 0 || self.resamples == 0 {
            return Err(MetaOclError::Invalid("seed counts and resamples must be positive".into()));
        }
        if self.model.block < 7 {
            return Err(MetaOclError::Invalid(format!(
                "the block must hold 7 tokens (got {})",
                self.model.block
            )));
        }
        Ok(())
    }
}

/// Which part of the stage-1 seeds this process runs: the seeds it [`Shard::owns`].
pub use foundation::shard::Shard;

/// The result of one stage-1 seed after stage 1.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stage1Result {
    /// The stage-1 seed.
    pub seed: usize,
    /// Exact match per subset after stage 1.
    pub em: BTreeMap<String, f64>,
    /// Training summary.
    pub train: StageReport,
}

/// The result of one (stage-1 seed, stage-2 seed) pair after stage 2.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stage2Result {
    /// The stage-1 seed.
    pub seed: usize,
    /// The stage-2 seed.
    pub stage2_seed: usize,
    /// Exact match per subset after stage 2.
    pub em: BTreeMap<String, f64>,
    /// Training summary.
    pub train: StageReport,
}

/// What a sweep did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SweepOutcome {
    /// `(s, t)` pairs trained by this call (`t = None`: stage 1 of `s`).
    pub trained: Vec<(usize, Option<usize>)>,
    /// `(s, t)` pairs found finished and skipped.
    pub skipped: Vec<(usize, Option<usize>)>,
}

/// Reads a JSON result file; a missing or unparsable file is a [`MetaOclError::Read`] naming it.
pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, MetaOclError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| MetaOclError::Read { path: path.to_path_buf(), message: e.to_string() })?;
    serde_json::from_str(&text)
        .map_err(|e| MetaOclError::Read { path: path.to_path_buf(), message: e.to_string() })
}

/// Writes a JSON result file atomically (the one writer of every result of this crate).
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), MetaOclError> {
    let text = serde_json::to_string_pretty(value).expect("results serialise");
    Ok(foundation::atomic::write_bytes(path, text.as_bytes())?)
}

/// Seed of a stage's batch order: distinct for each (stage, stage-1 seed, stage-2 seed).
pub fn order_seed(world_seed: u64, stage: u64, s: usize, t: usize) -> u64 {
    world_seed.wrapping_mul(1_000_003) ^ (stage << 48) ^ ((s as u64) << 24) ^ t as u64
}

/// The directory of stage-1 seed `s`'s results (the text and numeric sweeps share the layout).
pub(crate) fn seed_dir(out: &Path, s: usize) -> PathBuf {
    out.join("seeds").join(format!("s{s}"))
}

/// Writes `config.json`, or checks that the one present matches `cfg` (a resumed run must use
/// the settings it started with).
pub fn prepare(out: &Path, cfg: &SweepConfig) -> Result<(), MetaOclError> {
    cfg.validate()?;
    // Seed counts may grow: more seeds extend a finished sweep.
    write_or_check_config(out, cfg, |old| SweepConfig {
        stage1_seeds: cfg.stage1_seeds,
        stage2_seeds: cfg.stage2_seeds,
        ..old
    })
}

/// Writes `cfg` as `out/config.json`, or, when one is there, checks that it equals `cfg` after
/// `with_allowed_changes` has copied into it what may differ between calls (the seed counts):
/// the one resume check of the text, numeric and vision sweeps.
pub(crate) fn write_or_check_config<C: Serialize + for<'de> Deserialize<'de> + PartialEq>(
    out: &Path,
    cfg: &C,
    with_allowed_changes: impl FnOnce(C) -> C,
) -> Result<(), MetaOclError> {
    let path = out.join("config.json");
    if path.exists() {
        let old: C = read_json(&path)?;
        if &with_allowed_changes(old) != cfg {
            return Err(MetaOclError::Invalid(format!(
                "{} holds other settings; use another --out or the same settings",
                path.display()
            )));
        }
    }
    write_json(&path, cfg)
}

/// Stage 0: trains (or resumes, or finds) the model that knows every fact, on `device`. Returns
/// the path of its weights.
pub fn stage0(
    out: &Path,
    cfg: &SweepConfig,
    world: &World,
    device: &Device,
    progress: &dyn Progress,
) -> Result<PathBuf, MetaOclError> {
    let dir = out.join("stage0");
    let weights = dir.join("model.safetensors");
    let report = dir.join("stage0.json");
    if weights.exists() && report.exists() {
        return Ok(weights);
    }
    let data = world.stage0();
    let checkpoints = Checkpoints::new(&dir.join("checkpoint"));
    let every = cfg.stage0.steps(data.len()).div_ceil(4).max(1);
    let (model, train) = train_stage(
        &cfg.model,
        world.vocab.len(),
        &data,
        &cfg.stage0,
        Start::Fresh,
        order_seed(world.config.seed, 0, 0, 0),
        Some((&checkpoints, every)),
        None,
        device,
        progress,
    )?;
    let mut em = em_by_subset(&model, &world.stage0_tests(cfg.recall_items));
    em.extend(alias_em(&model, world));
    save_model(&model, &weights)?;
    let params = burn::module::Module::num_params(&model);
    write_json(&report, &serde_json::json!({ "em": em, "train": train, "parameters": params }))?;
    Ok(weights)
}

/// EM per [`crate::world::AliasGroup`] (by its name) of the held-out questions about the stage-0
/// aliases; empty without aliases.
pub fn alias_em(model: &crate::model::Transformer, world: &World) -> BTreeMap<String, f64> {
    let (groups, items): (Vec<_>, Vec<TestItem>) = world.alias_tests().into_iter().unzip();
    let labels: Vec<&str> = groups.iter().map(|g| g.name()).collect();
    crate::train::em_by_label(model, &items, &labels)
}

/// EM per subset of the held-out questions `tests` and, prefixed `def_`, of the definition recall
/// items `definitions`.
fn evaluate(
    model: &crate::model::Transformer,
    tests: &[TestItem],
    definitions: &[TestItem],
) -> BTreeMap<String, f64> {
    let mut em = em_by_subset(model, tests);
    em.extend(em_by_subset_prefixed(model, definitions, "def_"));
    em
}

/// Stage 2's training sequences: the protocol's definitions, then the replayed share
/// [`SweepConfig::stage2_replay`] of the stage-0 sequences.
pub fn stage2_data(cfg: &SweepConfig, world: &World, protocol: &Protocol) -> Vec<Vec<u32>> {
    let mut data = protocol.stage2.clone();
    if cfg.stage2_replay > 0.0 {
        data.extend(crate::world::spread_share(&world.stage0(), cfg.stage2_replay));
    }
    data
}

/// Runs stage 1 and stage 2 of stage-1 seed `s` (what is not finished yet).
fn run_seed(
    out: &Path,
    cfg: &SweepConfig,
    world: &World,
    stage0_weights: &Path,
    s: usize,
    outcome: &Mutex<SweepOutcome>,
    device: &Device,
) -> Result<(), MetaOclError> {
    let dir = seed_dir(out, s);
    let (w1, r1) = (dir.join("stage1.safetensors"), dir.join("stage1.json"));
    let pending: Vec<usize> =
        (0..cfg.stage2_seeds).filter(|t| !dir.join(format!("t{t}.json")).exists()).collect();
    {
        let mut o = outcome.lock().expect("no poisoned lock");
        o.skipped.extend((0..cfg.stage2_seeds).filter(|t| !pending.contains(t)).map(|t| (s, Some(t))));
        if w1.exists() && r1.exists() {
            o.skipped.push((s, None));
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    let protocol = Protocol::with(world, s as u64, &cfg.protocol);
    let vocab = world.vocab.len();
    let definition_tests = protocol.definition_tests(world);
    let evaluate = |model: &crate::model::Transformer| evaluate(model, &protocol.tests, &definition_tests);
    let schedule = EvalSchedule { every_epochs: cfg.eval_every, evaluate: &evaluate };
    let eval = (cfg.eval_every > 0).then_some(&schedule);
    // The EM after a stage: its last evaluation during training, or one now.
    let final_em =
        |model: &crate::model::Transformer, train: &StageReport| match train.em_over_training.last() {
            Some(p) => p.em.clone(),
            None => evaluate(model),
        };
    if !(w1.exists() && r1.exists()) {
        let (model, train) = train_stage(
            &cfg.model,
            vocab,
            &protocol.stage1,
            &cfg.stage1,
            Start::Weights(stage0_weights),
            order_seed(world.config.seed, 1, s, 0),
            None,
            eval,
            device,
            &NoProgress,
        )?;
        let em = final_em(&model, &train);
        save_model(&model, &w1)?;
        write_json(&r1, &Stage1Result { seed: s, em, train })?;
        outcome.lock().expect("no poisoned lock").trained.push((s, None));
    }
    let stage2_data = stage2_data(cfg, world, &protocol);
    for t in pending {
        let (model, train) = train_stage(
            &cfg.model,
            vocab,
            &stage2_data,
            &cfg.stage2,
            Start::Weights(&w1),
            order_seed(world.config.seed, 2, s, t),
            None,
            eval,
            device,
            &NoProgress,
        )?;
        let em = final_em(&model, &train);
        write_json(&dir.join(format!("t{t}.json")), &Stage2Result { seed: s, stage2_seed: t, em, train })?;
        outcome.lock().expect("no poisoned lock").trained.push((s, Some(t)));
    }
    Ok(())
}

/// Runs this shard's seeds of the sweep in `out` on `jobs` concurrent workers, all on `device`
/// (not part of `cfg`: `config.json`, compared on resume, does not name a device), skipping
/// finished work. Stage 0 runs first if it is missing (only an unsharded run or shard 0 trains
/// it; other shards need it finished). `progress` sees one unit per stage-1 seed.
pub fn sweep(
    out: &Path,
    cfg: &SweepConfig,
    shard: Shard,
    jobs: usize,
    device: &Device,
    progress: &dyn Progress,
) -> Result<SweepOutcome, MetaOclError> {
    prepare(out, cfg)?;
    let world = World::new(&cfg.world)?;
    let s0 = out.join("stage0").join("stage0.json");
    if shard.index != 0 && !s0.exists() {
        return Err(MetaOclError::Invalid(format!(
            "stage 0 is not finished in {}; run shard 0 (or `meta-ocl run --stage0-only`) first",
            out.display()
        )));
    }
    let weights = stage0(out, cfg, &world, device, progress)?;
    let seeds: Vec<usize> = (0..cfg.stage1_seeds).filter(|&s| shard.owns(s)).collect();
    let next = AtomicUsize::new(0);
    let outcome = Mutex::new(SweepOutcome::default());
    let first_error: Mutex<Option<MetaOclError>> = Mutex::new(None);
    progress.start("seeds", seeds.len() as u64);
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                if first_error.lock().expect("no poisoned lock").is_some() {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&s) = seeds.get(i) else { return };
                if let Err(e) = run_seed(out, cfg, &world, &weights, s, &outcome, device) {
                    first_error.lock().expect("no poisoned lock").get_or_insert(e);
                    return;
                }
                progress.advance(1);
            });
        }
    });
    progress.finish();
    if let Some(e) = first_error.into_inner().expect("no poisoned lock") {
        return Err(e);
    }
    let mut o = outcome.into_inner().expect("no poisoned lock");
    o.trained.sort();
    o.skipped.sort();
    Ok(o)
}

/// Mean, standard error and percentile-bootstrap CI of paired differences.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairedGap {
    /// Number of pairs.
    pub n: usize,
    /// Mean of `a - b`.
    pub mean: f64,
    /// Standard error of the mean (NaN for one pair).
    pub se: f64,
    /// Bootstrap CI of the mean.
    pub ci: Interval,
}

impl PairedGap {
    /// Whether the interval excludes 0 (`"excludes 0"`, `"includes 0"`, or no interval for
    /// fewer than two pairs): the one verdict of every report of this crate.
    pub fn verdict(&self) -> &'static str {
        if self.n < 2 {
            "n < 2: no interval"
        } else if self.ci.low > 0.0 || self.ci.high < 0.0 {
            "excludes 0"
        } else {
            "includes 0"
        }
    }

    /// The report-table cells `mean ± s.e. | [low, high] | n | verdict`.
    pub fn table_cells(&self) -> String {
        format!(
            "{:+.4} ± {:.4} | [{:+.4}, {:+.4}] | {} | {}",
            self.mean,
            self.se,
            self.ci.low,
            self.ci.high,
            self.n,
            self.verdict()
        )
    }
}

/// The paired gap `a[i] - b[i]` (one pair per seed): mean, s.e. and a `level` percentile
/// bootstrap CI of the mean over `resamples` resamples of the pairs
/// ([`foundation::stats::bootstrap_ci`], seeded by `seed`).
pub fn paired_gap(
    a: &[f64],
    b: &[f64],
    resamples: usize,
    level: f64,
    seed: u64,
) -> Result<PairedGap, MetaOclError> {
    if a.len() != b.len() || a.is_empty() {
        return Err(MetaOclError::Invalid(format!(
            "a paired gap needs two equally long non-empty lists (got {} and {})",
            a.len(),
            b.len()
        )));
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let (mean, se) = mean_se(&d);
    let ci = bootstrap_ci(&d, |v| v.iter().sum::<f64>() / v.len() as f64, resamples, level, seed)
        .ok_or_else(|| {
            MetaOclError::Invalid(format!("no bootstrap CI at level {level} with {resamples} resamples"))
        })?;
    Ok(PairedGap { n: d.len(), mean, se, ci })
}

/// The confidence level of every interval in this crate's reports.
pub const REPORT_LEVEL: f64 = 0.95;

/// A subset's per-seed results summarised for a report: the mean over seeds, its s.e. and the
/// [`REPORT_LEVEL`] percentile-bootstrap CI of the mean (none for fewer than two seeds).
#[derive(Clone, Copy, Debug)]
pub struct SeedMean {
    /// Mean over seeds.
    pub mean: f64,
    /// Standard error of the mean.
    pub se: f64,
    /// Bootstrap CI of the mean.
    pub ci: Option<Interval>,
}

impl SeedMean {
    /// The summary of `per_seed` with `resamples` bootstrap resamples (stream 0).
    pub fn of(per_seed: &[f64], resamples: usize) -> Self {
        let (mean, se) = mean_se(per_seed);
        let ci =
            bootstrap_ci(per_seed, |x| x.iter().sum::<f64>() / x.len() as f64, resamples, REPORT_LEVEL, 0);
        Self { mean, se, ci }
    }

    /// Half the CI's width (0 without one): the whisker of a report's bar.
    pub fn half_width(&self) -> f64 {
        self.ci.map_or(0.0, |i| (i.high - i.low) / 2.0)
    }

    /// The CI as report text, `[low, high]` (`-` without one).
    pub fn ci_text(&self) -> String {
        self.ci.map_or("-".into(), |i| format!("[{:.4}, {:.4}]", i.low, i.high))
    }

    /// The summary and the values it came from, as a report's JSON entry.
    pub fn json(&self, per_seed: &[f64]) -> serde_json::Value {
        serde_json::json!({ "mean": self.mean, "se": self.se, "ci": self.ci, "per_seed": per_seed })
    }
}

/// The paired gaps (per stage-1 seed, [`REPORT_LEVEL`] CIs, stream 0) of the pairs in `gaps`
/// whose two subsets both have results in `em`, in the order of `gaps`.
pub fn report_gaps<'a>(
    em: &BTreeMap<String, Vec<f64>>,
    gaps: &[(&'a str, &'a str)],
    resamples: usize,
) -> Result<Vec<(&'a str, &'a str, PairedGap)>, MetaOclError> {
    gaps.iter()
        .filter_map(|&(a, b)| Some((a, b, em.get(a)?, em.get(b)?)))
        .map(|(a, b, va, vb)| Ok((a, b, paired_gap(va, vb, resamples, REPORT_LEVEL, 0)?)))
        .collect()
}

impl PairedGap {
    /// Half the CI's width: the whisker of a report's bar.
    pub fn half_width(&self) -> f64 {
        (self.ci.high - self.ci.low) / 2.0
    }
}

/// The report sentence on the model, the three stages (the first named `first`, then "stage 1"
/// and "stage 2") and the seeds requested.
pub fn setup_text(
    model: &ModelConfig,
    stages: [&StageConfig; 3],
    first: &str,
    stage1_seeds: usize,
    stage2_seeds: usize,
) -> String {
    let [s0, s1, s2] = stages;
    format!(
        "Model: {} layers, d = {}, {} heads, MLP {}, block {}{}. Epochs: {first} {}, stage 1 {}, stage 2 {} \
         (batch {}, {}, {}; AdamW, lr {}, {}, {}, weight decay {}, {}, {}). Seeds: {stage1_seeds} stage-1 x {stage2_seeds} stage-2 requested.",
        model.layers,
        model.d_model,
        model.heads,
        model.d_mlp,
        model.block,
        if model.tie_embeddings { ", output layer tied to the embedding" } else { "" },
        s0.epochs,
        s1.epochs,
        s2.epochs,
        s0.batch_size,
        s1.batch_size,
        s2.batch_size,
        s0.lr,
        s1.lr,
        s2.lr,
        s0.weight_decay,
        s1.weight_decay,
        s2.weight_decay,
    )
}

/// Per-subset EM of the finished seeds: after stage 1 (one value per stage-1 seed) and after
/// stage 2 (averaged over each stage-1 seed's stage-2 seeds, one value per stage-1 seed).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Collected {
    /// Stage-1 seeds with a stage-1 result.
    pub stage1_seeds: Vec<usize>,
    /// `stage1[subset][i]`: EM of stage-1 seed `stage1_seeds[i]`.
    pub stage1: BTreeMap<String, Vec<f64>>,
    /// Stage-1 seeds with every stage-2 result.
    pub stage2_seeds: Vec<usize>,
    /// `stage2[subset][i]`: mean EM over the stage-2 seeds of `stage2_seeds[i]`.
    pub stage2: BTreeMap<String, Vec<f64>>,
    /// Stage-0 recall EM, if stage 0 finished.
    pub stage0_recall: Option<f64>,
    /// Stage-0 EM on the held-out alias questions per alias group (empty without aliases).
    #[serde(default)]
    pub stage0_aliases: BTreeMap<String, f64>,
    /// EM over training: every evaluation point of every finished stage result, by stage and
    /// epoch, in that order.
    pub over_training: Vec<OverTraining>,
}

/// The evaluations at one epoch of one stage, over every finished result that has one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OverTraining {
    /// The stage (1 or 2).
    pub stage: usize,
    /// Epochs of that stage trained.
    pub epoch: usize,
    /// `em[subset]`: one value per result (per stage-1 seed in stage 1, per (stage-1, stage-2)
    /// seed pair in stage 2).
    pub em: BTreeMap<String, Vec<f64>>,
}

/// Reads every finished result of the sweep in `out`.
pub fn collect(out: &Path, cfg: &SweepConfig) -> Result<Collected, MetaOclError> {
    let mut c = Collected::default();
    let mut points: BTreeMap<(usize, usize), BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    let mut add_points = |stage: usize, train: &StageReport| {
        for p in &train.em_over_training {
            let at = points.entry((stage, p.epoch)).or_default();
            for (k, v) in &p.em {
                at.entry(k.clone()).or_default().push(*v);
            }
        }
    };
    let s0 = out.join("stage0").join("stage0.json");
    if s0.exists() {
        let v: serde_json::Value = read_json(&s0)?;
        c.stage0_recall = v["em"]["stage0_recall"].as_f64();
        for group in AliasGroup::ALL.map(AliasGroup::name) {
            if let Some(x) = v["em"][group].as_f64() {
                c.stage0_aliases.insert(group.to_string(), x);
            }
        }
    }
    for s in 0..cfg.stage1_seeds {
        let dir = seed_dir(out, s);
        let r1 = dir.join("stage1.json");
        if r1.exists() {
            let r: Stage1Result = read_json(&r1)?;
            add_points(1, &r.train);
            c.stage1_seeds.push(s);
            for (k, v) in r.em {
                c.stage1.entry(k).or_default().push(v);
            }
        }
        let files: Vec<PathBuf> = (0..cfg.stage2_seeds).map(|t| dir.join(format!("t{t}.json"))).collect();
        if files.iter().all(|f| f.exists()) {
            let mut sums: BTreeMap<String, f64> = BTreeMap::new();
            for f in &files {
                let r: Stage2Result = read_json(f)?;
                add_points(2, &r.train);
                for (k, v) in r.em {
                    *sums.entry(k).or_default() += v / files.len() as f64;
                }
            }
            c.stage2_seeds.push(s);
            for (k, v) in sums {
                c.stage2.entry(k).or_default().push(v);
            }
        }
    }
    c.over_training =
        points.into_iter().map(|((stage, epoch), em)| OverTraining { stage, epoch, em }).collect();
    Ok(c)
}

/// The comparisons of the report: `(name, a, b)` means the paired gap EM(a) - EM(b).
pub const STAGE1_GAPS: [(&str, &str); 2] = [("qd1consis", "q"), ("q", "qd2incons")];
/// Stage-2 comparisons (the first is the IML signature).
pub const STAGE2_GAPS: [(&str, &str); 4] = [
    ("d1consis", "d2consis"),
    ("d1consis", "d3consis"),
    ("d3consis", "d2consis"),
    ("d2consis", "no_qd_baseline"),
];

/// Writes `report.md`, `summary.json`, `em.png` (per-subset EM with 95 % CIs) and `gaps.png`
/// (the paired gaps with their CIs) from the finished results in `out`. `note` is added under
/// the title (e.g. the machine and wall time).
pub fn report(out: &Path, cfg: &SweepConfig, note: &str) -> Result<String, MetaOclError> {
    let c = collect(out, cfg)?;
    let mut md = String::new();
    md.push_str("# Implicit meta-learning in a small transformer LM (meta-ocl)\n\n");
    if !note.is_empty() {
        md.push_str(note);
        md.push_str("\n\n");
    }
    md.push_str(&format!(
        "World: {} entities x 6 attributes (values {:?}), {}-token variables from {} syllables, tags from a pool of {}, world seed {}. {}\n\n",
        cfg.world.entities,
        cfg.world.values_per_attribute,
        cfg.world.variable_tokens,
        cfg.world.syllables,
        cfg.world.tag_pool,
        cfg.world.seed,
        setup_text(&cfg.model, [&cfg.stage0, &cfg.stage1, &cfg.stage2], "stage 0", cfg.stage1_seeds, cfg.stage2_seeds),
    ));
    if cfg.protocol != ProtocolConfig::default() {
        md.push_str(&format!(
            "Protocol controls: swapped tag roles {}; stage-1 tag–consistency correlation {} (the authors': no swap, 1.0).\n\n",
            if cfg.protocol.swap_tags { "yes" } else { "no" },
            cfg.protocol.tag_consistency
        ));
    }
    if cfg.stage2_replay > 0.0 {
        md.push_str(&format!(
            "Stage 2 replays {} of the stage-0 sequences beside its definitions (the authors': definitions only).\n\n",
            cfg.stage2_replay
        ));
    }
    let chance = World::new(&cfg.world)?.chance_em();
    md.push_str(&format!(
        "Chance EM (uniform guess among an attribute's values, averaged over the 6 attributes): {chance:.4}.\n\n"
    ));
    if let Some(r) = c.stage0_recall {
        md.push_str(&format!("Stage-0 recall (EM on the first {} facts): {:.4}\n\n", cfg.recall_items, r));
    }
    if !c.stage0_aliases.is_empty() {
        let g = |k: &str| c.stage0_aliases.get(k).map_or("–".to_string(), |x| format!("{x:.4}"));
        md.push_str(&format!(
            "Alias pretraining ({} aliases per entity): stage-0 EM on held-out alias questions: definition and QA {}, QA only {}, definition only {}.\n\n",
            cfg.world.aliases,
            g(AliasGroup::DefinitionAndQa.name()),
            g(AliasGroup::QaOnly.name()),
            g(AliasGroup::DefinitionOnly.name())
        ));
    }
    let mut bars = Vec::new();
    let mut summary = serde_json::Map::new();
    for (stage, seeds, em, gaps) in [
        ("Stage 1", &c.stage1_seeds, &c.stage1, &STAGE1_GAPS[..]),
        ("Stage 2", &c.stage2_seeds, &c.stage2, &STAGE2_GAPS[..]),
    ] {
        md.push_str(&format!("## {stage} ({} stage-1 seeds finished: {:?})\n\n", seeds.len(), seeds));
        if seeds.is_empty() {
            md.push_str("No finished seeds.\n\n");
            continue;
        }
        md.push_str("| subset | EM mean ± s.e. | 95 % bootstrap CI |\n|---|---|---|\n");
        let mut stage_json = serde_json::Map::new();
        for (subset, _) in SUBSETS.iter() {
            let Some(v) = em.get(subset.name()) else { continue };
            let sm = SeedMean::of(v, cfg.resamples);
            md.push_str(&format!(
                "| {} | {:.4} ± {:.4} | {} |\n",
                subset.name(),
                sm.mean,
                sm.se,
                sm.ci_text()
            ));
            stage_json.insert(subset.name().into(), sm.json(v));
            bars.push(Bar {
                label: format!("{} {}", if stage == "Stage 1" { "s1" } else { "s2" }, subset.name()),
                value: sm.mean,
                se: sm.half_width(),
            });
        }
        md.push_str("\nDefinition recall (EM of the defined entity after `<bos> tag var`; qd2incons: the deranged entity):\n\n| subset | EM mean ± s.e. |\n|---|---|\n");
        for (subset, _) in SUBSETS.iter() {
            let Some(v) = em.get(&format!("def_{}", subset.name())) else { continue };
            let (m, se) = mean_se(v);
            md.push_str(&format!("| {} | {:.4} ± {:.4} |\n", subset.name(), m, se));
        }
        md.push_str("\n| paired gap (per stage-1 seed) | mean ± s.e. | 95 % bootstrap CI | n | CI |\n|---|---|---|---|---|\n");
        let mut gap_bars = Vec::new();
        for (a, b, g) in report_gaps(em, gaps, cfg.resamples)? {
            md.push_str(&format!("| EM({a}) - EM({b}) | {} |\n", g.table_cells()));
            stage_json.insert(format!("{a}-{b}"), serde_json::to_value(g).expect("serialises"));
            gap_bars.push(Bar { label: format!("{a}-{b}"), value: g.mean, se: g.half_width() });
        }
        md.push('\n');
        summary.insert(stage.to_lowercase().replace(' ', ""), serde_json::Value::Object(stage_json));
        let name = if stage == "Stage 1" { "gaps_stage1.png" } else { "gaps_stage2.png" };
        write_bar_chart(&out.join(name), &format!("{stage} paired gaps, 95% CI"), &gap_bars, |v, h| {
            format!("{v:+.3} +-{h:.3}")
        })?;
    }
    if !bars.is_empty() {
        write_bar_chart(&out.join("em.png"), "EM per subset, 95% CI", &bars, |v, h| {
            format!("{v:.3} +-{h:.3}")
        })?;
    }
    if !c.over_training.is_empty() {
        md.push_str(&over_training_section(&c.over_training, cfg.stage1.epochs));
        write_em_over_training(
            &out.join("em_over_training.png"),
            &c.over_training,
            cfg.stage1.epochs,
            chance,
        )?;
    }
    md.push_str(
        "Gaps are paired per stage-1 seed (stage-2 EMs averaged over that seed's stage-2 seeds); CIs are \
         percentile bootstraps of the mean over seeds (10 000 resamples by default). Plots: `em.png`, \
         `gaps_stage1.png`, `gaps_stage2.png` (bars: mean; whiskers: half the CI width), \
         `em_over_training.png` (when evaluated during training).\n",
    );
    write_json(&out.join("summary.json"), &serde_json::Value::Object(summary))?;
    foundation::atomic::write_bytes(&out.join("report.md"), md.as_bytes())?;
    Ok(md)
}

/// The report's table of EM over training: one row per (stage, epoch), the mean over results of
/// each subset's EM.
fn over_training_section(points: &[OverTraining], stage1_epochs: usize) -> String {
    let mut md = String::from(
        "## EM over training (mean over seeds)\n\nStage 2 epochs continue from the last stage-1 epoch \
         (stage-2 epoch 0 is the stage-1 model).\n\n| stage | epoch | results |",
    );
    for (subset, _) in SUBSETS.iter() {
        md.push_str(&format!(" {} |", subset.name()));
    }
    md.push_str(&format!("\n|---|---|---|{}\n", "---|".repeat(SUBSETS.len())));
    for p in points {
        let n = p.em.values().map(Vec::len).max().unwrap_or(0);
        let shown = if p.stage == 2 { stage1_epochs + p.epoch } else { p.epoch };
        md.push_str(&format!("| {} | {} | {} |", p.stage, shown, n));
        for (subset, _) in SUBSETS.iter() {
            match p.em.get(subset.name()) {
                Some(v) if !v.is_empty() => md.push_str(&format!(" {:.3} |", mean_se(v).0)),
                _ => md.push_str(" - |"),
            }
        }
        md.push('\n');
    }
    md.push('\n');
    md
}

/// Line colours of the subsets in [`SUBSETS`] order (named in the plot's legend).
const LINE_COLOURS: [[u8; 3]; 8] = [
    [40, 90, 200],
    [210, 50, 40],
    [40, 160, 60],
    [110, 110, 110],
    [20, 170, 200],
    [240, 150, 20],
    [140, 60, 170],
    [0, 0, 0],
];

/// Draws `em_over_training.png`: the mean EM of each subset against the epoch (stage 2
/// continuing after the `stage1_epochs` of stage 1, a vertical line between the stages), a dashed
/// line at `chance`, y from 0 to 1, and a legend.
fn write_em_over_training(
    path: &Path,
    points: &[OverTraining],
    stage1_epochs: usize,
    chance: f64,
) -> Result<(), MetaOclError> {
    use foundation::plot::font::{draw_text, text_height};
    use image::{Rgb, RgbImage};
    let (w, h) = (760u32, 420u32);
    let (left, right, top, bottom) = (50u32, 200u32, 30u32, 40u32);
    let (plot_w, plot_h) = ((w - left - right) as f64, (h - top - bottom) as f64);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let x_of = |p: &OverTraining| (if p.stage == 2 { stage1_epochs + p.epoch } else { p.epoch }) as f64;
    let x_max = points.iter().map(x_of).fold(1.0, f64::max);
    let px = |x: f64| left as f64 + x / x_max * plot_w;
    let py = |y: f64| top as f64 + (1.0 - y.clamp(0.0, 1.0)) * plot_h;
    let (grey, black) = (Rgb([215, 215, 215]), Rgb([0, 0, 0]));
    let put = |img: &mut RgbImage, x: f64, y: f64, c: Rgb<u8>| {
        if x >= 0.0 && y >= 0.0 && (x as u32) < w && (y as u32) < h {
            img.put_pixel(x as u32, y as u32, c);
        }
    };
    for k in 0..=4 {
        let y = py(k as f64 / 4.0);
        for x in left..w - right {
            put(&mut img, x as f64, y, grey);
        }
        draw_text(&mut img, 8, (y as u32).saturating_sub(7), &format!("{:.2}", k as f64 / 4.0), 1, black);
    }
    for x in left..w - right {
        if (x / 4) % 2 == 0 {
            put(&mut img, x as f64, py(chance), Rgb([150, 150, 150]));
        }
    }
    for y in top..=h - bottom {
        put(&mut img, left as f64, y as f64, black);
        put(&mut img, px(stage1_epochs as f64), y as f64, Rgb([120, 120, 120]));
    }
    for x in left..w - right {
        put(&mut img, x as f64, (h - bottom) as f64, black);
    }
    let mut ticks: Vec<f64> = points.iter().map(x_of).collect();
    ticks.dedup();
    for t in ticks {
        draw_text(&mut img, px(t) as u32, h - bottom + 6, &format!("{t}"), 1, black);
    }
    draw_text(&mut img, left, h - 16, "epoch (stage 1, then stage 2)", 1, black);
    draw_text(&mut img, left, 8, "EM per subset over training (mean over seeds, dashed: chance)", 1, black);
    for (i, (subset, _)) in SUBSETS.iter().enumerate() {
        let colour = Rgb(LINE_COLOURS[i]);
        let line: Vec<(f64, f64)> = points
            .iter()
            .filter_map(|p| {
                p.em.get(subset.name()).filter(|v| !v.is_empty()).map(|v| (x_of(p), mean_se(v).0))
            })
            .collect();
        for pair in line.windows(2) {
            let ((x0, y0), (x1, y1)) = ((px(pair[0].0), py(pair[0].1)), (px(pair[1].0), py(pair[1].1)));
            let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
            for t in 0..=n {
                let f = t as f64 / n as f64;
                for (dx, dy) in [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)] {
                    put(&mut img, x0 + f * (x1 - x0) + dx, y0 + f * (y1 - y0) + dy, colour);
                }
            }
        }
        let ly = top + i as u32 * (text_height(1) + 8);
        for dx in 0..16 {
            for dy in 0..3 {
                put(&mut img, (w - right + 12 + dx) as f64, (ly + 3 + dy) as f64, colour);
            }
        }
        draw_text(&mut img, w - right + 34, ly, subset.name(), 1, black);
    }
    Ok(foundation::plot::write_png(path, &img)?)
}
