//! The end-to-end run behind the `timewarp` command: the double-well check of the MH machinery
//! against quadrature, the MD reference of a cluster (isomer populations, CV free energies, ESS/s,
//! time to visit every isomer), the training pairs, and an MH chain on the cluster with the
//! closed-form drift proposal (the machinery the flow plugs into), all written to `report.md`,
//! `report.json`, `pairs.safetensors` and PNG free-energy maps.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use foundation::atomic::write_bytes;

use crate::error::TimewarpError;
use crate::isomers::IsomerTable;
use crate::mh::{run_chain, GaussianDrift, MhConfig};
use crate::potential::{quadrature_marginal, DoubleWell};
use crate::reference::{describe, populations, run_md, slowest_cv_ess, write_pairs, MdConfig, Populations};
use crate::rng;
use crate::stats::{histogram2d, jensen_shannon};

/// Settings of a run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunConfig {
    /// The MD reference.
    pub md: MdConfig,
    /// Lag of the training pairs, in frames.
    pub lag: usize,
    /// Output folder.
    pub out_dir: PathBuf,
}

/// The double-well check: MH with the closed-form drift proposal against quadrature.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SanityResult {
    /// Batch size B.
    pub batch: usize,
    /// Trials.
    pub trials: usize,
    /// Acceptance rate.
    pub acceptance: f64,
    /// Jensen–Shannon divergence of the x histogram (24 bins) from quadrature.
    pub js_vs_quadrature: f64,
    /// Fraction of trials with x > 0, and its quadrature value.
    pub right_well: (f64, f64),
}

/// A sampler's measurements on the cluster.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChainResult {
    /// What produced the chain.
    pub method: String,
    /// Frames (MD) or trials (MH).
    pub length: usize,
    /// Wall seconds, all of it counted (MD steps; proposals both ways and energies for MH).
    pub seconds: f64,
    /// Isomer populations.
    pub populations: Populations,
    /// ESS of the slowest CV and which (0: μ₂, 1: μ₃).
    pub ess_slowest: (f64, usize),
    /// ESS per wall second.
    pub ess_per_second: f64,
    /// Jensen–Shannon divergence of the (μ₂, μ₃) histogram from the MD reference's.
    pub js_vs_md: f64,
    /// MH acceptance rate (1 for MD).
    pub acceptance: f64,
    /// Wall seconds until every isomer had been visited (None: some never were).
    pub seconds_to_all_isomers: Option<f64>,
}

/// Everything a run measured.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunReport {
    /// The settings.
    pub config: RunConfig,
    /// The double-well checks (B = 1 and B = 8).
    pub sanity: Vec<SanityResult>,
    /// Isomers found by quenching the MD frames.
    pub isomers: IsomerTable,
    /// The MD reference and the MH chains.
    pub chains: Vec<ChainResult>,
    /// Training pairs written.
    pub pairs: usize,
}

const CV_LO: [f64; 2] = [0.0, -1.5];
const CV_HI: [f64; 2] = [2.0, 0.5];
const CV_BINS: usize = 20;

fn sanity(batch: usize, seed: u64) -> SanityResult {
    let pot = DoubleWell::default();
    let prop = GaussianDrift { pot: &pot, h: 0.1, s: 0.6, c: 0.5 };
    let cfg = MhConfig { kt: 1.0, batch };
    let trials = 200_000;
    let mut r = rng::stream(seed, rng::CHAIN, 1000 + batch as u64);
    let mut xs = Vec::with_capacity(trials);
    let (stats, _) = run_chain(&pot, &prop, &cfg, &[1.0, 0.0], trials, &mut r, |x| xs.push(x[0]));
    let bins = 24;
    let reference = quadrature_marginal(&pot, 1.0, [(-2.4, 2.4), (-4.0, 4.0)], bins * 40, 0, bins);
    let mut h = vec![0.0; bins];
    for &x in &xs {
        let b = ((x + 2.4) / 4.8 * bins as f64).floor().clamp(0.0, (bins - 1) as f64) as usize;
        h[b] += 1.0 / xs.len() as f64;
    }
    let right = xs.iter().filter(|&&x| x > 0.0).count() as f64 / xs.len() as f64;
    let right_ref: f64 = reference[bins / 2..].iter().sum();
    SanityResult {
        batch,
        trials,
        acceptance: stats.acceptance(),
        js_vs_quadrature: jensen_shannon(&h, &reference),
        right_well: (right, right_ref),
    }
}

/// Seconds from the start of a chain until every isomer of `table` has been seen, given the
/// quenched energy of each frame and the wall seconds per frame.
fn time_to_all(table: &IsomerTable, quenched: &[f64], seconds_per_frame: f64) -> Option<f64> {
    let mut seen = vec![false; table.energies.len()];
    for (i, &e) in quenched.iter().enumerate() {
        if let Some(k) = table.classify(e) {
            seen[k] = true;
        }
        if seen.iter().all(|&s| s) {
            return Some((i + 1) as f64 * seconds_per_frame);
        }
    }
    None
}

/// Runs everything of `cfg`, reporting progress lines to `log`; returns a one-paragraph summary.
pub fn run(cfg: &RunConfig, log: &mut dyn FnMut(&str)) -> Result<String, TimewarpError> {
    cfg.md.validate()?;
    if cfg.lag == 0 || cfg.lag >= cfg.md.frames {
        return Err(TimewarpError::Input(format!("lag must be in 1..frames, got {}", cfg.lag)));
    }
    log("double-well check of the MH sampler (B = 1, 8) ...");
    let sanity_results: Vec<SanityResult> = [1, 8].iter().map(|&b| sanity(b, cfg.md.seed)).collect();

    log(&format!(
        "MD reference of {} ({} runs x {} frames) ...",
        cfg.md.composition, cfg.md.runs, cfg.md.frames
    ));
    let frames = run_md(&cfg.md)?;
    let cluster = frames.cluster.clone();
    let t = Instant::now();
    let infos: Vec<_> = frames.runs.iter().map(|r| describe(&cluster, r)).collect();
    log(&format!("quenched {} frames in {:.1} s", cfg.md.runs * cfg.md.frames, t.elapsed().as_secs_f64()));
    let all_q: Vec<f64> = infos.iter().flat_map(|i| i.quenched.iter().copied()).collect();
    let all_cv: Vec<[f64; 2]> = infos.iter().flat_map(|i| i.cvs.iter().copied()).collect();
    let table = IsomerTable::from_energies(&all_q, 0.02, 0.002);
    let md_hist = histogram2d(&all_cv, CV_LO, CV_HI, CV_BINS);
    let md_pops = populations(&table, &all_q, cfg.md.seed);
    let ess_runs: Vec<(f64, usize)> = infos.iter().map(|i| slowest_cv_ess(&i.cvs)).collect();
    let md_ess: f64 = ess_runs.iter().map(|e| e.0).sum();
    let per_frame = frames.md_seconds / (cfg.md.runs * cfg.md.frames) as f64;
    let md = ChainResult {
        method: format!("MD (BAOAB, dt {}, {} runs)", cfg.md.langevin.dt, cfg.md.runs),
        length: cfg.md.runs * cfg.md.frames,
        seconds: frames.md_seconds,
        populations: md_pops,
        ess_slowest: (md_ess, ess_runs[0].1),
        ess_per_second: md_ess / frames.md_seconds,
        js_vs_md: 0.0,
        acceptance: 1.0,
        seconds_to_all_isomers: time_to_all(&table, &infos[0].quenched, per_frame),
    };

    log("writing training pairs ...");
    let pairs = write_pairs(&cfg.out_dir.join("pairs.safetensors"), &cfg.md, &frames, cfg.lag)?;

    // The MH chain on the cluster with the drift proposal (MALA-like step ε: h = ε²/(2kT)).
    log("MH chain with the drift proposal ...");
    let kt = cfg.md.langevin.kt;
    let eps = 0.04;
    let prop = GaussianDrift { pot: &cluster, h: eps * eps / (2.0 * kt), s: eps, c: 0.0 };
    let trials = cfg.md.frames * 10;
    let thin = 10;
    let mut r = rng::stream(cfg.md.seed, rng::CHAIN, 0);
    let x0 = frames.runs[0][..2 * cluster.n_atoms()].to_vec();
    let mut kept = Vec::with_capacity(trials / thin * x0.len());
    let mut i = 0usize;
    let t = Instant::now();
    let (stats, _) = run_chain(&cluster, &prop, &MhConfig { kt, batch: 1 }, &x0, trials, &mut r, |x| {
        if i.is_multiple_of(thin) {
            kept.extend_from_slice(x);
        }
        i += 1;
    });
    let mh_seconds = t.elapsed().as_secs_f64();
    let info = describe(&cluster, &kept);
    let mh_ess = slowest_cv_ess(&info.cvs);
    let mh = ChainResult {
        method: format!("MH, drift proposal (eps {eps}, every {thin}th trial kept)"),
        length: trials,
        seconds: mh_seconds,
        populations: populations(&table, &info.quenched, cfg.md.seed),
        ess_slowest: mh_ess,
        ess_per_second: mh_ess.0 / mh_seconds,
        js_vs_md: jensen_shannon(&histogram2d(&info.cvs, CV_LO, CV_HI, CV_BINS), &md_hist),
        acceptance: stats.acceptance(),
        seconds_to_all_isomers: time_to_all(&table, &info.quenched, mh_seconds / info.quenched.len() as f64),
    };

    let report = RunReport {
        config: cfg.clone(),
        sanity: sanity_results,
        isomers: table,
        chains: vec![md, mh],
        pairs,
    };
    let md_text = markdown(&report);
    let json = serde_json::to_string_pretty(&report).map_err(|e| TimewarpError::Input(e.to_string()))?;
    write_bytes(&cfg.out_dir.join("report.json"), json.as_bytes())?;
    write_bytes(&cfg.out_dir.join("report.md"), md_text.as_bytes())?;
    Ok(md_text)
}

/// The report as markdown.
pub fn markdown(r: &RunReport) -> String {
    let mut s = String::new();
    let c = &r.config.md;
    let _ = writeln!(s, "# Timewarp miniature: {}\n", c.composition);
    let _ = writeln!(
        s,
        "kT {}, dt {}, gamma {}, stride {} steps, {} runs x {} frames; pairs at tau = {} steps: {}\n",
        c.langevin.kt,
        c.langevin.dt,
        c.langevin.gamma,
        c.stride,
        c.runs,
        c.frames,
        r.config.lag * c.stride,
        r.pairs
    );
    let _ = writeln!(s, "## MH sampler on the tilted double well (exact drift proposal vs quadrature)\n");
    let _ = writeln!(s, "| B | trials | acceptance | JS(x histogram, quadrature) | P(x > 0) | quadrature |");
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for q in &r.sanity {
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {:.2e} | {:.4} | {:.4} |",
            q.batch, q.trials, q.acceptance, q.js_vs_quadrature, q.right_well.0, q.right_well.1
        );
    }
    let _ = writeln!(s, "\n## Isomers (quenched energies)\n");
    for (k, e) in r.isomers.energies.iter().enumerate() {
        let _ = writeln!(s, "- isomer {k}: U = {e:.4}");
    }
    let _ = writeln!(s, "\n## Chains\n");
    let _ = writeln!(
        s,
        "| method | length | wall s | populations (± block-bootstrap sigma) | ESS slowest CV | ESS/s | JS vs MD | acceptance | s to all isomers |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for ch in &r.chains {
        let pops: Vec<String> = ch
            .populations
            .fractions
            .iter()
            .zip(&ch.populations.sigma)
            .map(|(f, sg)| format!("{f:.3}±{sg:.3}"))
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {} | {:.0} ({}) | {:.1} | {:.4} | {:.4} | {} |",
            ch.method,
            ch.length,
            ch.seconds,
            pops.join(", "),
            ch.ess_slowest.0,
            ["mu2", "mu3"][ch.ess_slowest.1],
            ch.ess_per_second,
            ch.js_vs_md,
            ch.acceptance,
            ch.seconds_to_all_isomers.map_or("never".into(), |t| format!("{t:.2}"))
        );
    }
    s
}
