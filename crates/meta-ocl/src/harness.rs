//! The seed sweep: stage 0 once per world, then for each stage-1 seed its protocol, stage 1 and
//! for each stage-2 seed stage 2, each evaluated by exact match per subset; the paired gaps with
//! bootstrap CIs; `report.md`, `summary.json` and plots.
//!
//! Layout of a run directory `out/`: `config.json`; `stage0/` (checkpoint generations,
//! `model.safetensors`, `stage0.json`); `seeds/s{s}/stage1.safetensors`, `stage1.json` and
//! `t{t}.json` (one per stage-2 seed). A result file present means that unit of work is done:
//! a rerun skips it, so an interrupted sweep resumes where it stopped.

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
    em_by_subset, em_by_subset_prefixed, save_model, train_stage, StageConfig, StageReport, Start,
};
use crate::world::{Protocol, World, WorldConfig, SUBSETS};
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

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, MetaOclError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| MetaOclError::Read { path: path.to_path_buf(), message: e.to_string() })?;
    serde_json::from_str(&text)
        .map_err(|e| MetaOclError::Read { path: path.to_path_buf(), message: e.to_string() })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), MetaOclError> {
    let text = serde_json::to_string_pretty(value).expect("results serialise");
    Ok(foundation::atomic::write_bytes(path, text.as_bytes())?)
}

/// Seed of a stage's batch order: distinct for each (stage, stage-1 seed, stage-2 seed).
pub fn order_seed(world_seed: u64, stage: u64, s: usize, t: usize) -> u64 {
    world_seed.wrapping_mul(1_000_003) ^ (stage << 48) ^ ((s as u64) << 24) ^ t as u64
}

fn seed_dir(out: &Path, s: usize) -> PathBuf {
    out.join("seeds").join(format!("s{s}"))
}

/// Writes `config.json`, or checks that the one present matches `cfg` (a resumed run must use
/// the settings it started with).
pub fn prepare(out: &Path, cfg: &SweepConfig) -> Result<(), MetaOclError> {
    cfg.validate()?;
    let path = out.join("config.json");
    if path.exists() {
        let old: SweepConfig = read_json(&path)?;
        // Seed counts may grow: more seeds extend a finished sweep.
        let same =
            SweepConfig { stage1_seeds: cfg.stage1_seeds, stage2_seeds: cfg.stage2_seeds, ..old.clone() };
        if &same != cfg {
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
        device,
        progress,
    )?;
    let em = em_by_subset(&model, &world.stage0_tests(cfg.recall_items));
    save_model(&model, &weights)?;
    let params = burn::module::Module::num_params(&model);
    write_json(&report, &serde_json::json!({ "em": em, "train": train, "parameters": params }))?;
    Ok(weights)
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
    let protocol = Protocol::new(world, s as u64);
    let vocab = world.vocab.len();
    if !(w1.exists() && r1.exists()) {
        let (model, train) = train_stage(
            &cfg.model,
            vocab,
            &protocol.stage1,
            &cfg.stage1,
            Start::Weights(stage0_weights),
            order_seed(world.config.seed, 1, s, 0),
            None,
            device,
            &NoProgress,
        )?;
        let mut em = em_by_subset(&model, &protocol.tests);
        em.extend(em_by_subset_prefixed(&model, &protocol.definition_tests(world), "def_"));
        save_model(&model, &w1)?;
        write_json(&r1, &Stage1Result { seed: s, em, train })?;
        outcome.lock().expect("no poisoned lock").trained.push((s, None));
    }
    for t in pending {
        let (model, train) = train_stage(
            &cfg.model,
            vocab,
            &protocol.stage2,
            &cfg.stage2,
            Start::Weights(&w1),
            order_seed(world.config.seed, 2, s, t),
            None,
            device,
            &NoProgress,
        )?;
        let mut em = em_by_subset(&model, &protocol.tests);
        em.extend(em_by_subset_prefixed(&model, &protocol.definition_tests(world), "def_"));
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
}

/// Reads every finished result of the sweep in `out`.
pub fn collect(out: &Path, cfg: &SweepConfig) -> Result<Collected, MetaOclError> {
    let mut c = Collected::default();
    let s0 = out.join("stage0").join("stage0.json");
    if s0.exists() {
        let v: serde_json::Value = read_json(&s0)?;
        c.stage0_recall = v["em"]["stage0_recall"].as_f64();
    }
    for s in 0..cfg.stage1_seeds {
        let dir = seed_dir(out, s);
        let r1 = dir.join("stage1.json");
        if r1.exists() {
            let r: Stage1Result = read_json(&r1)?;
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

fn fmt_gap(g: &PairedGap) -> String {
    format!("{:+.4} ± {:.4} | [{:+.4}, {:+.4}] | {}", g.mean, g.se, g.ci.low, g.ci.high, g.n)
}

fn excludes_zero(g: &PairedGap) -> &'static str {
    if g.n < 2 {
        "n < 2: no interval"
    } else if g.ci.low > 0.0 || g.ci.high < 0.0 {
        "excludes 0"
    } else {
        "includes 0"
    }
}

/// Writes `report.md`, `summary.json`, `em.png` (per-subset EM with 95 % CIs) and `gaps.png`
/// (the paired gaps with their CIs) from the finished results in `out`. `note` is added under
/// the title (e.g. the machine and wall time).
pub fn report(out: &Path, cfg: &SweepConfig, note: &str) -> Result<String, MetaOclError> {
    let c = collect(out, cfg)?;
    let level = 0.95;
    let ci_of = |v: &[f64]| -> Option<Interval> {
        bootstrap_ci(v, |x| x.iter().sum::<f64>() / x.len() as f64, cfg.resamples, level, 0)
    };
    let mut md = String::new();
    md.push_str("# Implicit meta-learning in a small transformer LM (meta-ocl)\n\n");
    if !note.is_empty() {
        md.push_str(note);
        md.push_str("\n\n");
    }
    md.push_str(&format!(
        "World: {} entities x 6 attributes (values {:?}), 2-token variables from {} syllables, tags from a pool of {}, world seed {}. \
         Model: {} layers, d = {}, {} heads, MLP {}, block {}. Stage 0: {} epochs; stage 1: {} epochs; stage 2: {} epochs \
         (batch {}, {}, {}; AdamW, lr {}, {}, {}). Seeds: {} stage-1 x {} stage-2 requested.\n\n",
        cfg.world.entities,
        cfg.world.values_per_attribute,
        cfg.world.syllables,
        cfg.world.tag_pool,
        cfg.world.seed,
        cfg.model.layers,
        cfg.model.d_model,
        cfg.model.heads,
        cfg.model.d_mlp,
        cfg.model.block,
        cfg.stage0.epochs,
        cfg.stage1.epochs,
        cfg.stage2.epochs,
        cfg.stage0.batch_size,
        cfg.stage1.batch_size,
        cfg.stage2.batch_size,
        cfg.stage0.lr,
        cfg.stage1.lr,
        cfg.stage2.lr,
        cfg.stage1_seeds,
        cfg.stage2_seeds,
    ));
    let chance = World::new(&cfg.world)?.chance_em();
    md.push_str(&format!(
        "Chance EM (uniform guess among an attribute's values, averaged over the 6 attributes): {chance:.4}.\n\n"
    ));
    if let Some(r) = c.stage0_recall {
        md.push_str(&format!("Stage-0 recall (EM on the first {} facts): {:.4}\n\n", cfg.recall_items, r));
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
            let (m, se) = mean_se(v);
            let ci = ci_of(v);
            let ci_text = ci.map_or("-".into(), |i| format!("[{:.4}, {:.4}]", i.low, i.high));
            md.push_str(&format!("| {} | {:.4} ± {:.4} | {} |\n", subset.name(), m, se, ci_text));
            stage_json.insert(
                subset.name().into(),
                serde_json::json!({ "mean": m, "se": se, "ci": ci, "per_seed": v }),
            );
            let half = ci.map_or(0.0, |i| (i.high - i.low) / 2.0);
            bars.push(Bar {
                label: format!("{} {}", if stage == "Stage 1" { "s1" } else { "s2" }, subset.name()),
                value: m,
                se: half,
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
        for (a, b) in gaps {
            let (Some(va), Some(vb)) = (em.get(*a), em.get(*b)) else { continue };
            let g = paired_gap(va, vb, cfg.resamples, level, 0)?;
            md.push_str(&format!("| EM({a}) - EM({b}) | {} | {} |\n", fmt_gap(&g), excludes_zero(&g)));
            stage_json.insert(format!("{a}-{b}"), serde_json::to_value(g).expect("serialises"));
            gap_bars.push(Bar { label: format!("{a}-{b}"), value: g.mean, se: (g.ci.high - g.ci.low) / 2.0 });
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
    md.push_str(
        "Gaps are paired per stage-1 seed (stage-2 EMs averaged over that seed's stage-2 seeds); CIs are \
         percentile bootstraps of the mean over seeds (10 000 resamples by default). Plots: `em.png`, \
         `gaps_stage1.png`, `gaps_stage2.png` (bars: mean; whiskers: half the CI width).\n",
    );
    write_json(&out.join("summary.json"), &serde_json::Value::Object(summary))?;
    foundation::atomic::write_bytes(&out.join("report.md"), md.as_bytes())?;
    Ok(md)
}
