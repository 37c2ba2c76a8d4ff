//! The controls of the issue: the base sweep and its variants as sibling run directories under
//! one directory, and one combined report of their paired gaps.
//!
//! - `base`: the settings as given.
//! - `swap_tags`: the tag roles exchanged ([`ProtocolConfig::swap_tags`]): the token that plays
//!   tag 1 in `base` plays tag 2 and vice versa, so a gap that follows the role keeps its sign.
//! - `tag_consistency_{c}`: stage-1 tag–consistency correlation `c`
//!   ([`ProtocolConfig::tag_consistency`]); at 0.5 the tags carry no information about
//!   consistency and the gap should vanish.
//! - `batch_{b1}_{b2}` (one per pair given): stage-1 and stage-2 batch sizes `b1`, `b2` (the
//!   paper: a smaller batch gives a larger gap).
//!
//! Each variant is an ordinary run directory (`config.json`, resumable, its own `report.md`).
//! Variants that share the base's world, model and stage-0 settings get a copy of the base's
//! finished stage 0 instead of training their own (the same weights a fresh stage 0 would give:
//! stage 0 depends on nothing else). `controls.md`, `controls.json` and `controls.png` compare the
//! variants: per variant the paired gaps EM(qd1consis) − EM(qd2incons) (stage 1) and
//! EM(d1consis) − EM(d2consis) (stage 2) with 95 % bootstrap CIs, and the per-seed difference of
//! the stage-2 gap from the base's (paired on the common stage-1 seeds).

use std::path::Path;

use burn::prelude::Device;
use foundation::plot::{write_bar_chart, Bar};
use foundation::progress::Progress;
use serde::{Deserialize, Serialize};

use crate::harness::{collect, paired_gap, report, sweep, Collected, PairedGap, Shard, SweepConfig};
use crate::MetaOclError;

/// One variant of the controls: a name (also its directory under the controls' directory), what
/// it changes, and its settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Control {
    /// Directory name and label.
    pub name: String,
    /// What differs from the base, in words.
    pub change: String,
    /// Its settings.
    pub config: SweepConfig,
}

/// Settings of the control variants besides the base.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlSettings {
    /// Stage-1 tag–consistency correlation of the correlation control (the authors' 0.5).
    pub tag_consistency: f64,
    /// `(stage 1, stage 2)` batch sizes of the batch controls, one control each.
    pub batch_sizes: Vec<(usize, usize)>,
}

impl Default for ControlSettings {
    fn default() -> Self {
        Self { tag_consistency: 0.5, batch_sizes: vec![(32, 8)] }
    }
}

/// The base and its variants: `base`, `swap_tags`, `tag_consistency_{c}` and one
/// `batch_{b1}_{b2}` per pair of batch sizes, in that order.
pub fn controls(base: &SweepConfig, settings: &ControlSettings) -> Vec<Control> {
    let mut swap = base.clone();
    swap.protocol.swap_tags = !base.protocol.swap_tags;
    let mut corr = base.clone();
    corr.protocol.tag_consistency = settings.tag_consistency;
    let mut list = vec![
        Control { name: "base".into(), change: "the settings as given".into(), config: base.clone() },
        Control { name: "swap_tags".into(), change: "tag 1 and tag 2 tokens exchanged".into(), config: swap },
        Control {
            name: format!("tag_consistency_{}", settings.tag_consistency),
            change: format!(
                "stage-1 P(consistent given tag) = {} (base {})",
                settings.tag_consistency, base.protocol.tag_consistency
            ),
            config: corr,
        },
    ];
    for &(b1, b2) in &settings.batch_sizes {
        let mut batch = base.clone();
        batch.stage1.batch_size = b1;
        batch.stage2.batch_size = b2;
        list.push(Control {
            name: format!("batch_{b1}_{b2}"),
            change: format!(
                "batch {b1} / {b2} (base {} / {})",
                base.stage1.batch_size, base.stage2.batch_size
            ),
            config: batch,
        });
    }
    list
}

/// Copies the finished stage 0 of `from` into `to` when both runs share the world, model and
/// stage-0 settings and `to` has none yet. Returns whether it copied.
fn share_stage0(
    from: &Path,
    from_cfg: &SweepConfig,
    to: &Path,
    to_cfg: &SweepConfig,
) -> Result<bool, MetaOclError> {
    let same =
        from_cfg.world == to_cfg.world && from_cfg.model == to_cfg.model && from_cfg.stage0 == to_cfg.stage0;
    let files = ["model.safetensors", "stage0.json"];
    let have = |dir: &Path| files.iter().all(|f| dir.join("stage0").join(f).exists());
    if !same || !have(from) || have(to) {
        return Ok(false);
    }
    // The weights first: stage 0 counts as finished once stage0.json exists.
    for f in files {
        let src = from.join("stage0").join(f);
        let bytes = std::fs::read(&src)
            .map_err(|e| MetaOclError::Read { path: src.clone(), message: e.to_string() })?;
        foundation::atomic::write_bytes(&to.join("stage0").join(f), &bytes)?;
    }
    Ok(true)
}

/// Runs (or resumes) every control in `out/{name}` with `jobs` workers on `device`, writing each
/// one's `report.md` (the combined report is [`controls_report`]). `progress` sees each run's
/// seeds. Returns each control's wall seconds in this call.
pub fn run_controls(
    out: &Path,
    controls: &[Control],
    jobs: usize,
    device: &Device,
    progress: &dyn Progress,
) -> Result<Vec<f64>, MetaOclError> {
    if controls.is_empty() {
        return Err(MetaOclError::Invalid("no controls to run".into()));
    }
    for c in controls {
        c.config.validate()?;
    }
    let base = &controls[0];
    let mut seconds = Vec::new();
    for c in controls {
        let dir = out.join(&c.name);
        if c.name != base.name {
            share_stage0(&out.join(&base.name), &base.config, &dir, &c.config)?;
        }
        let clock = std::time::Instant::now();
        let outcome = sweep(&dir, &c.config, Shard::ALL, jobs, device, progress)?;
        let run_note = format!(
            "Control `{}` ({}) of `meta-ocl controls`: trained {} units, skipped {} finished ones, {:.0} s wall.",
            c.name,
            c.change,
            outcome.trained.len(),
            outcome.skipped.len(),
            clock.elapsed().as_secs_f64()
        );
        report(&dir, &c.config, &run_note)?;
        seconds.push(clock.elapsed().as_secs_f64());
    }
    Ok(seconds)
}

/// One row of the combined report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControlRow {
    /// The control's name.
    pub name: String,
    /// What it changes.
    pub change: String,
    /// Stage-1 seeds with finished stage-2 results.
    pub seeds: Vec<usize>,
    /// EM(qd1consis) − EM(qd2incons) after stage 1.
    pub stage1_gap: Option<PairedGap>,
    /// EM(d1consis) − EM(d2consis) after stage 2.
    pub stage2_gap: Option<PairedGap>,
    /// Its stage-2 gap minus the base's, paired on the stage-1 seeds both finished (none for the
    /// base itself).
    pub versus_base: Option<PairedGap>,
    /// Mean EM after stage 2 of d1consis, d2consis, d3consis and no_qd_baseline.
    pub stage2_means: Vec<(String, f64)>,
}

fn gap(
    em: &std::collections::BTreeMap<String, Vec<f64>>,
    a: &str,
    b: &str,
    resamples: usize,
) -> Option<PairedGap> {
    paired_gap(em.get(a)?, em.get(b)?, resamples, 0.95, 0).ok()
}

/// Per-seed stage-2 gap EM(d1consis) − EM(d2consis) of the finished seeds, by seed.
fn stage2_gaps(c: &Collected) -> Vec<(usize, f64)> {
    match (c.stage2.get("d1consis"), c.stage2.get("d2consis")) {
        (Some(a), Some(b)) => {
            c.stage2_seeds.iter().zip(a.iter().zip(b)).map(|(&s, (x, y))| (s, x - y)).collect()
        }
        _ => Vec::new(),
    }
}

/// Writes `controls.md`, `controls.json` and `controls.png` (the stage-1 and stage-2 gaps with
/// their 95 % CIs per control) from whatever the controls' run directories under `out` hold.
/// Returns the markdown.
pub fn controls_report(out: &Path, controls: &[Control], note: &str) -> Result<String, MetaOclError> {
    let collected: Vec<Collected> =
        controls.iter().map(|c| collect(&out.join(&c.name), &c.config)).collect::<Result<_, _>>()?;
    let base_gaps = collected.first().map(stage2_gaps).unwrap_or_default();
    let mut rows = Vec::new();
    for (c, col) in controls.iter().zip(&collected) {
        let resamples = c.config.resamples;
        let versus_base = if rows.is_empty() {
            None
        } else {
            let mine = stage2_gaps(col);
            let (a, b): (Vec<f64>, Vec<f64>) = mine
                .iter()
                .filter_map(|(s, g)| base_gaps.iter().find(|(t, _)| t == s).map(|(_, h)| (*g, *h)))
                .unzip();
            paired_gap(&a, &b, resamples, 0.95, 0).ok()
        };
        let stage2_means = ["d1consis", "d2consis", "d3consis", "no_qd_baseline"]
            .iter()
            .filter_map(|k| {
                let v = col.stage2.get(*k)?;
                Some((k.to_string(), v.iter().sum::<f64>() / v.len().max(1) as f64))
            })
            .collect();
        rows.push(ControlRow {
            name: c.name.clone(),
            change: c.change.clone(),
            seeds: col.stage2_seeds.clone(),
            stage1_gap: gap(&col.stage1, "qd1consis", "qd2incons", resamples),
            stage2_gap: gap(&col.stage2, "d1consis", "d2consis", resamples),
            versus_base,
            stage2_means,
        });
    }
    let cell = |g: &Option<PairedGap>| match g {
        Some(g) if g.n >= 2 => {
            format!("{:+.4} ± {:.4} [{:+.4}, {:+.4}] ({})", g.mean, g.se, g.ci.low, g.ci.high, g.verdict())
        }
        Some(g) => format!("{:+.4} (n = {})", g.mean, g.n),
        None => "-".into(),
    };
    let mut md = String::from("# meta-ocl controls\n\n");
    if !note.is_empty() {
        md.push_str(note);
        md.push_str("\n\n");
    }
    md.push_str(
        "Each control is its own run directory (its `report.md` has every subset, the definition recall \
         and EM over training). Gaps are paired per stage-1 seed: mean ± s.e. [95 % percentile bootstrap CI]. \
         \"vs base\" is the control's stage-2 gap minus the base's, paired on their common stage-1 seeds \
         (the same protocol draws up to the control's change).\n\n\
         | control | change | seeds | stage 1: EM(qd1consis) − EM(qd2incons) | stage 2: EM(d1consis) − EM(d2consis) | stage-2 gap vs base |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.change,
            r.seeds.len(),
            cell(&r.stage1_gap),
            cell(&r.stage2_gap),
            cell(&r.versus_base)
        ));
    }
    md.push_str("\nMean EM after stage 2:\n\n| control | d1consis | d2consis | d3consis | no_qd_baseline |\n|---|---|---|---|---|\n");
    for r in &rows {
        let v = |k: &str| {
            r.stage2_means.iter().find(|(n, _)| n == k).map_or("-".into(), |(_, m)| format!("{m:.4}"))
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.name,
            v("d1consis"),
            v("d2consis"),
            v("d3consis"),
            v("no_qd_baseline")
        ));
    }
    md.push_str("\nPlot: `controls.png` (bars: mean gap; whiskers: half the 95 % CI width).\n");
    let mut bars = Vec::new();
    for (label, pick) in [("s2", 1), ("s1", 0)] {
        for r in &rows {
            let g = if pick == 1 { &r.stage2_gap } else { &r.stage1_gap };
            if let Some(g) = g {
                let half = if g.n >= 2 { (g.ci.high - g.ci.low) / 2.0 } else { 0.0 };
                bars.push(Bar {
                    label: format!("{label} {}", r.name.replace('_', " ")),
                    value: g.mean,
                    se: half,
                });
            }
        }
    }
    if !bars.is_empty() {
        write_bar_chart(&out.join("controls.png"), "gap d1-d2 (s2), qd1-qd2 (s1), 95% CI", &bars, |v, h| {
            format!("{v:+.3} +-{h:.3}")
        })?;
    }
    let json = serde_json::to_string_pretty(&rows).expect("rows serialise");
    foundation::atomic::write_bytes(&out.join("controls.json"), json.as_bytes())?;
    foundation::atomic::write_bytes(&out.join("controls.md"), md.as_bytes())?;
    Ok(md)
}
