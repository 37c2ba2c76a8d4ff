//! The end-to-end run behind the `timewarp` command: the double-well check of the MH machinery
//! against quadrature, the MD reference of a cluster (isomer populations, CV free energies, ESS/s,
//! time to visit every isomer), the training pairs, and an MH chain on the cluster with the
//! closed-form drift proposal (the machinery the flow plugs into), all written to `report.md`,
//! `report.json`, `pairs.safetensors` and PNG free-energy maps.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use foundation::atomic::write_bytes;

use burn::prelude::Device;
use foundation::progress::Progress;

use crate::accept::{finetune_acceptance, AcceptanceConfig, AcceptanceReport};
use crate::error::TimewarpError;
use crate::isomers::IsomerTable;
use crate::lj::LjCluster;
use crate::mh::{explore, run_chain, GaussianDrift, MhConfig, Mixture, Proposal};
use crate::potential::{quadrature_marginal, DoubleWell, Potential};
use crate::reference::{
    describe, md_time_to_all, pairs, populations, run_md, slowest_cv_ess, write_pairs, FrameInfo, MdConfig,
    MdFrames, MdTimeToAll, Populations,
};
use crate::rng;
use crate::stats::{histogram2d, jensen_shannon};
use crate::train::{train_flow, FlowProposal, FlowTrainConfig, FlowTrainReport, PairSet};

/// Settings of a run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunConfig {
    /// The MD reference.
    pub md: MdConfig,
    /// Lag of the training pairs, in frames.
    pub lag: usize,
    /// Output folder.
    pub out_dir: PathBuf,
    /// The flow stage (None: MD, pairs and the drift-proposal chain only).
    pub flow: Option<FlowStage>,
}

/// Settings of the flow stage: training, the MH-Timewarp chain, exploration.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FlowStage {
    /// Training.
    pub train: FlowTrainConfig,
    /// Proposals per MH batch (B); with `adapt_batch`, the largest B.
    pub mh_batch: usize,
    /// Adapt B to the smoothed acceptance rate ([`crate::mh::adaptive_batch`]).
    pub adapt_batch: bool,
    /// MH trials.
    pub mh_trials: usize,
    /// Exploration steps (per chain; exploration stops once every isomer was seen).
    pub explore_steps: usize,
    /// Exploration energy cap, in units of kT.
    pub explore_cap_kt: f64,
    /// Parallel exploration chains, all from the global minimum's geometry (their proposals
    /// computed in one batch per step).
    #[serde(default = "one")]
    pub explore_chains: usize,
    /// Start the exploration chains from the first frames of MD run 0 (thermal states of the
    /// starting basin; the MD time of those frames is added to the exploration's wall time)
    /// instead of the hexagon geometry of [`LjCluster::initial_positions`].
    #[serde(default)]
    pub explore_from_md: bool,
    /// Train a second flow for exploration with this hop fraction
    /// ([`FlowTrainConfig::hop_fraction`]; None: exploration uses the MH flow). Exploration is
    /// not exact, so its flow may be a pure hop model that MH could not use.
    #[serde(default)]
    pub explore_hop_fraction: Option<f64>,
    /// Acceptance-loss fine-tuning after the likelihood training (None: none). Its kT is the
    /// run's.
    #[serde(default)]
    pub finetune: Option<AcceptanceConfig>,
    /// MH-Timewarp with the exact mixture proposal of [`Mixture`]: each move comes with
    /// probability `weight` from a second flow trained with hop fraction `hop_fraction`, otherwise
    /// from the likelihood flow (None: the likelihood flow alone).
    #[serde(default)]
    pub mix: Option<MixStage>,
    /// Align the training pairs by permutation too ([`PairSet::aligned_permuted`]: atoms of
    /// x(t + τ) relabelled within types to the labelling closest to x(t)), not only rigidly.
    #[serde(default)]
    pub align_permutations: bool,
    /// Train the separate exploration flow on the pairs of an MD reference at this kT (same
    /// composition, lengths, lag and seed) instead of the run's (None, or the run's kT: the
    /// run's own pairs). Exploration, its energy cap (in units of the run's kT) and MD's time to
    /// visit every isomer stay at the run's kT; the isomer table is the run's MD table joined
    /// with the isomers only the other reference found ([`IsomerTable::union`]). Needs a
    /// separate exploration flow (`explore_hop_fraction`).
    #[serde(default)]
    pub explore_train_kt: Option<f64>,
    /// Frames of MD (run 0 of the reference, continued past its `frames`) within which MD's
    /// time to visit every isomer is measured ([`md_time_to_all`]); up to the reference's own
    /// frames, run 0 of the reference alone.
    #[serde(default)]
    pub explore_md_frames: usize,
    /// Train the MH flows (the likelihood flow, its fine-tuning and the mixture's hop flow) on
    /// the pairs of an MD reference at this kT (same composition, lengths, lag and seed)
    /// instead of the run's (None, or the run's kT: the run's own pairs). MH, the MD reference,
    /// populations, ESS and the speed-up stay at the run's kT; the isomer table is the run's MD
    /// table joined with the isomers only the other reference found ([`IsomerTable::union`]).
    #[serde(default)]
    pub train_kt: Option<f64>,
    /// Train the mixture's hop flow on the pairs of an MD reference at this kT instead of the
    /// MH flows' (None: the kT of `train_kt`, or the run's); the likelihood flow stays on
    /// `train_kt`'s pairs. Needs a mixture (`mix`).
    #[serde(default)]
    pub mix_train_kt: Option<f64>,
}

/// The hop component of an exact mixture proposal for MH-Timewarp.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MixStage {
    /// Probability w of drawing a move from the hop flow.
    pub weight: f64,
    /// Hop fraction of the hop flow's training ([`FlowTrainConfig::hop_fraction`]).
    pub hop_fraction: f64,
}

fn one() -> usize {
    1
}

impl FlowStage {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), TimewarpError> {
        self.train.validate()?;
        if let Some(f) = &self.finetune {
            f.validate()?;
        }
        if let Some(f) = self.explore_hop_fraction {
            FlowTrainConfig { hop_fraction: f, ..self.train.clone() }.validate()?;
        }
        // A training kT, when given, is a temperature: finite and > 0.
        let check_kt = |kt: Option<f64>, whose: &str| match kt {
            Some(t) if !(t.is_finite() && t > 0.0) => {
                Err(TimewarpError::Input(format!("the {whose} training kT must be finite and > 0, got {t}")))
            }
            _ => Ok(()),
        };
        check_kt(self.train_kt, "MH flows'")?;
        check_kt(self.mix_train_kt, "mixture's hop flow's")?;
        check_kt(self.explore_train_kt, "exploration flow's")?;
        if self.mix_train_kt.is_some() && self.mix.is_none() {
            return Err(TimewarpError::Input(
                "a training kT for the mixture's hop flow needs a mixture (mix weight > 0)".into(),
            ));
        }
        if self.explore_train_kt.is_some() && self.explore_hop_fraction.is_none() {
            return Err(TimewarpError::Input(
                "an exploration training kT needs a separate exploration flow (explore hop fraction >= 0)"
                    .into(),
            ));
        }
        if let Some(m) = self.mix {
            FlowTrainConfig { hop_fraction: m.hop_fraction, ..self.train.clone() }.validate()?;
            if !(0.0..=1.0).contains(&m.weight) {
                return Err(TimewarpError::Input(format!(
                    "mixture weight must be in [0, 1], got {}",
                    m.weight
                )));
            }
        }
        if self.train.steps == 0
            || self.train.batch_size == 0
            || self.mh_batch == 0
            || self.mh_trials == 0
            || self.explore_chains == 0
        {
            return Err(TimewarpError::Input(format!(
                "flow stage needs train steps, batch size, MH batch, MH trials and exploration chains >= 1, got {}, {}, {}, {}, {}",
                self.train.steps, self.train.batch_size, self.mh_batch, self.mh_trials, self.explore_chains
            )));
        }
        let lr_ok = self.train.lr.is_finite() && self.train.lr > 0.0;
        if !lr_ok || self.explore_cap_kt.is_nan() || self.explore_cap_kt < 0.0 {
            return Err(TimewarpError::Input(format!(
                "learning rate must be > 0 and the exploration cap >= 0, got {} and {}",
                self.train.lr, self.explore_cap_kt
            )));
        }
        Ok(())
    }
}

/// The flow stage's measurements.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FlowResult {
    /// Training.
    pub train: FlowTrainReport,
    /// Learned prior log-scales (positions, velocities).
    pub prior_log_scales: [f32; 2],
    /// Training of the separate exploration flow, if one was trained.
    #[serde(default)]
    pub explore_train: Option<FlowTrainReport>,
    /// Exploration: moves proposed (over all chains).
    pub explore_steps: usize,
    /// Wall seconds of the exploration (proposals and energies, not the quench).
    #[serde(default)]
    pub explore_seconds: f64,
    /// Fraction of exploration moves accepted (below the cap).
    pub explore_accepted: f64,
    /// Wall seconds until exploration had seen every isomer (None: not within the steps).
    pub explore_seconds_to_all: Option<f64>,
    /// Isomers exploration found.
    pub explore_found: usize,
    /// Mean potential energy of the exploration chains' final states, and of the MD frames.
    #[serde(default)]
    pub explore_final_energy: (f64, f64),
    /// How the flow treats the rare isomer changes of the training pairs.
    pub hops: HopDiagnostics,
    /// The acceptance-loss fine-tuning, if run (the hop diagnostics and chains use the
    /// fine-tuned flow).
    #[serde(default)]
    pub finetune: Option<AcceptanceReport>,
    /// Training of the mixture's hop flow, if one was trained (not shared with exploration).
    #[serde(default)]
    pub mix_train: Option<FlowTrainReport>,
    /// The hop diagnostics of the mixture proposal MH-Timewarp used, if it used one.
    #[serde(default)]
    pub mix_hops: Option<HopDiagnostics>,
    /// The MD reference the exploration flow was trained on, when at another kT than the run's.
    #[serde(default)]
    pub explore_train_md: Option<ExploreTrainMd>,
    /// MD's time to visit every isomer at the run's kT, the exploration is compared with.
    #[serde(default)]
    pub explore_md: Option<MdTimeToAll>,
    /// MD's seconds to visit every isomer over exploration's, and whether it is a lower bound
    /// (MD never visited them all within its frames); None where exploration did not find all.
    #[serde(default)]
    pub explore_ratio: Option<(f64, bool)>,
    /// The MD reference the MH flows were trained on, when at another kT than the run's (the
    /// hop diagnostics are then those of its pairs).
    #[serde(default)]
    pub mh_train_md: Option<ExploreTrainMd>,
}

/// An MD reference at another kT than the run's whose pairs trained a flow (the exploration
/// flow, or the MH flows).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExploreTrainMd {
    /// Its kT.
    pub kt: f64,
    /// Wall seconds of its dynamics (summed over runs; not counted in the exploration).
    pub md_seconds: f64,
    /// Isomers its own MD table holds.
    pub isomers: usize,
    /// Isomers the run's own MD table holds (the run's table is the union of the two).
    pub run_isomers: usize,
    /// Its training pairs, and how many of them change isomer.
    pub pairs: (usize, usize),
}

impl ExploreTrainMd {
    /// The report's account of this reference beside a run at `run_kt` whose joined isomer table
    /// holds `isomers`: `after_cost` follows "not counted" and `after_pairs` the pair counts.
    fn describe(&self, after_cost: &str, after_pairs: &str, run_kt: f64, isomers: usize) -> String {
        format!(
            "an MD reference at kT {} ({:.1} s of MD, not counted{after_cost}), {} pairs of which {} change isomer{after_pairs}; its MD found {} isomers, the run's own MD at kT {run_kt} found {}; the isomer table is their union ({isomers} isomers)",
            self.kt, self.md_seconds, self.pairs.0, self.pairs.1, self.isomers, self.run_isomers
        )
    }
}

/// The MD settings whose pairs train the exploration flow when they are not the run's own: `md`
/// at `stage.explore_train_kt`, None when that is unset or equals the run's kT.
pub fn explore_training_md(md: &MdConfig, stage: &FlowStage) -> Option<MdConfig> {
    md_at_kt(md, stage.explore_train_kt)
}

/// The MD settings whose pairs train the MH flows (likelihood flow, fine-tuning, the
/// mixture's hop flow) when they are not the run's own: `md` at `stage.train_kt`, None when
/// that is unset or equals the run's kT.
pub fn mh_training_md(md: &MdConfig, stage: &FlowStage) -> Option<MdConfig> {
    md_at_kt(md, stage.train_kt)
}

/// The MD settings whose pairs train the mixture's hop flow when they are not the run's own:
/// `md` at `stage.mix_train_kt`, else at `stage.train_kt`; None without a mixture, or when that
/// kT is unset or the run's.
pub fn mix_training_md(md: &MdConfig, stage: &FlowStage) -> Option<MdConfig> {
    md_at_kt(md, stage.mix.and(stage.mix_train_kt.or(stage.train_kt)))
}

/// `md` at kT `kt`, None when that is unset or `md`'s own.
fn md_at_kt(md: &MdConfig, kt: Option<f64>) -> Option<MdConfig> {
    let t = kt.filter(|&t| t != md.langevin.kt)?;
    let mut c = md.clone();
    c.langevin.kt = t;
    Some(c)
}

/// The training pairs at one kT and the quenched frames they come from; `report` describes the
/// MD reference when it is not the run's own.
struct PairSource {
    kt: f64,
    set: PairSet,
    quenched: Vec<Vec<f64>>,
    report: Option<ExploreTrainMd>,
}

/// The training pairs at lag `lag` frames of an MD reference, each flagged by whether its two
/// frames quench to different isomers of `table` (`quenched`: per run, every frame's quenched
/// energy), aligned rigidly or, with `permute`, by permutation too.
pub fn hop_pair_set(
    frames: &MdFrames,
    quenched: &[Vec<f64>],
    table: &IsomerTable,
    lag: usize,
    permute: bool,
) -> PairSet {
    let (x0, x1) = pairs(frames, lag);
    let hop = pair_isomers(table, quenched, lag).into_iter().map(|(a, b)| a != b).collect();
    let raw = PairSet { types: frames.cluster.types.clone(), x0, x1, hop };
    if permute {
        raw.aligned_permuted()
    } else {
        raw.aligned()
    }
}

/// The exploration's speed ratio over MD: MD's seconds to visit every isomer over
/// exploration's, flagged as a lower bound (MD's whole budget over exploration's time) when MD
/// never visited them all; None when exploration did not find them all.
pub fn exploration_ratio(md: &MdTimeToAll, explore_seconds_to_all: Option<f64>) -> Option<(f64, bool)> {
    let e = explore_seconds_to_all?;
    Some(match md.seconds {
        Some(m) => (m / e, false),
        None => (md.md_seconds / e, true),
    })
}

/// How often the training pairs change isomer, how likely the flow finds those pairs, and how
/// often its own proposals change isomer.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HopDiagnostics {
    /// Fraction of training pairs whose two frames quench to different isomers.
    pub md_hop_fraction: f64,
    /// Mean −log q per pair over the pairs that change isomer (NaN if none).
    pub nll_hop: f64,
    /// Mean −log q per pair over the pairs that stay.
    pub nll_stay: f64,
    /// Fraction of flow proposals (one from each of up to 2000 pair starts) that quench to
    /// another isomer than their start.
    pub flow_hop_fraction: f64,
    /// Fraction of those proposals that quench to another isomer of the table (not to an
    /// unlisted minimum).
    #[serde(default)]
    pub flow_hop_known_fraction: f64,
    /// Of the pairs starting in the global minimum (isomer 0), the fraction ending in another
    /// isomer.
    #[serde(default)]
    pub md_escape_fraction: f64,
    /// Of the flow's proposals from those starts, the fraction quenching to another listed isomer.
    #[serde(default)]
    pub flow_escape_fraction: f64,
}

/// The isomers (start, end) of every pair at lag `lag` frames, in the order
/// [`crate::reference::pairs`] walks them, from the quenched energy of every frame (per run).
pub fn pair_isomers(
    table: &IsomerTable,
    quenched: &[Vec<f64>],
    lag: usize,
) -> Vec<(Option<usize>, Option<usize>)> {
    quenched
        .iter()
        .flat_map(|q| {
            (0..q.len().saturating_sub(lag)).map(move |t| (table.classify(q[t]), table.classify(q[t + lag])))
        })
        .collect()
}

/// The hop diagnostics of `prop` on the (aligned) training pairs `set` at lag `lag` frames,
/// given the quenched energy of every MD frame (`quenched`, per run, in the order
/// [`crate::reference::pairs`] walks them).
fn hop_diagnostics(
    cluster: &LjCluster,
    table: &IsomerTable,
    quenched: &[Vec<f64>],
    set: &PairSet,
    prop: &dyn Proposal,
    lag: usize,
    seed: u64,
) -> HopDiagnostics {
    let labels = pair_isomers(table, quenched, lag);
    let dim = 2 * cluster.n_atoms();
    let n = set.len().min(labels.len());
    let mut r = rng::stream(seed, rng::CHAIN, 7777);
    let (mut hop, mut stay) = (Vec::new(), Vec::new());
    let chunk = 256;
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        let vs: Vec<Vec<f64>> = (start..end)
            .map(|_| {
                (0..dim).map(|_| rand::Rng::sample::<f64, _>(&mut r, rand_distr::StandardNormal)).collect()
            })
            .collect();
        let cases: Vec<(&[f64], &[f64], &[f64])> = (start..end)
            .zip(&vs)
            .map(|(i, v)| (&set.x0[i * dim..(i + 1) * dim], &set.x1[i * dim..(i + 1) * dim], v.as_slice()))
            .collect();
        for (i, lq) in (start..end).zip(prop.log_density(&cases)) {
            if labels[i].0 != labels[i].1 {
                hop.push(-lq);
            } else {
                stay.push(-lq);
            }
        }
    }
    let step = (n / 2000).max(1);
    let (mut moved, mut known, mut tried) = (0usize, 0usize, 0usize);
    let (mut escaped, mut from_min) = (0usize, 0usize);
    for i in (0..n).step_by(step) {
        let x = &set.x0[i * dim..(i + 1) * dim];
        let m = prop.propose(x, 1, &mut r).pop();
        if let Some(m) = m {
            let e = crate::isomers::quench(cluster, &m.x, 1e-5, 20_000).1;
            tried += 1;
            let to = table.classify(e);
            if to != labels[i].0 {
                moved += 1;
                known += usize::from(to.is_some());
            }
            if labels[i].0 == Some(0) {
                from_min += 1;
                escaped += usize::from(to.is_some_and(|k| k != 0));
            }
        }
    }
    let mean = |v: &[f64]| if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
    HopDiagnostics {
        md_hop_fraction: hop.len() as f64 / n.max(1) as f64,
        nll_hop: mean(&hop),
        nll_stay: mean(&stay),
        flow_hop_fraction: moved as f64 / tried.max(1) as f64,
        flow_hop_known_fraction: known as f64 / tried.max(1) as f64,
        md_escape_fraction: {
            let starts = labels[..n].iter().filter(|l| l.0 == Some(0));
            let (k, e) = starts
                .fold((0usize, 0usize), |(k, e), l| (k + 1, e + usize::from(l.1.is_some_and(|j| j != 0))));
            e as f64 / k.max(1) as f64
        },
        flow_escape_fraction: escaped as f64 / from_min.max(1) as f64,
    }
}

/// The double-well check: MH with the closed-form drift proposal against quadrature.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SanityResult {
    /// The proposal.
    pub proposal: String,
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
    /// Standard error of the fraction, √(p(1−p)/ESS) with the ESS of the indicator series.
    pub right_well_se: f64,
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
    /// The normalised (μ₂, μ₃) histogram (20 × 20 bins over [`ChainResult::cv_box`]).
    pub histogram: Vec<f64>,
    /// The histogram's box (lower corner, upper corner), the MD reference's.
    pub cv_box: ([f64; 2], [f64; 2]),
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
    /// The flow stage, if run.
    pub flow: Option<FlowResult>,
}

const CV_BINS: usize = 20;

/// The box of the CV histograms: the range of the MD reference's (μ₂, μ₃), widened by 5 % on
/// each side (points of other chains outside it count in the border bins).
pub fn cv_box(cvs: &[[f64; 2]]) -> ([f64; 2], [f64; 2]) {
    let mut lo = [f64::INFINITY; 2];
    let mut hi = [f64::NEG_INFINITY; 2];
    for c in cvs {
        for k in 0..2 {
            lo[k] = lo[k].min(c[k]);
            hi[k] = hi[k].max(c[k]);
        }
    }
    for k in 0..2 {
        let w = (hi[k] - lo[k]).max(1e-6);
        lo[k] -= 0.05 * w;
        hi[k] += 0.05 * w;
    }
    (lo, hi)
}

fn sanity(batch: usize, seed: u64) -> SanityResult {
    let pot = DoubleWell::default();
    let prop = GaussianDrift { pot: &pot, h: 0.1, s: 0.6, c: 0.5 };
    double_well_check("exact drift proposal", &prop, batch, 200_000, seed)
}

/// MH-Timewarp on the double well: a one-atom flow trained on BAOAB pairs (τ = 50 steps of
/// dt 0.02, kT = 1) proposes the moves. With one atom the centred conditioning is zero, so the
/// flow learns a displacement distribution; the check is that its exact density keeps the chain
/// on the quadrature reference.
fn flow_sanity(seed: u64, progress: &dyn Progress) -> Result<SanityResult, TimewarpError> {
    let pot = DoubleWell::default();
    let lang = crate::md::Langevin { dt: 0.02, gamma: 1.0, kt: 1.0 };
    let mut r = rng::stream(seed, rng::LANGEVIN, 999);
    let mut state = crate::md::MdState::new(&pot, vec![-1.0, 0.0], 1.0, &mut r);
    let traj = crate::md::trajectory(&pot, &lang, &mut state, 20_001, 50, &mut r);
    let set = PairSet {
        types: vec![0],
        x0: traj[..traj.len() - 2].to_vec(),
        x1: traj[2..].to_vec(),
        hop: Vec::new(),
    };
    let train = FlowTrainConfig {
        flow: crate::flow::FlowConfig::default(),
        steps: 300,
        batch_size: 64,
        lr: 3e-3,
        seed,
        hop_fraction: 0.0,
    };
    let (flow, _) = train_flow(&[set], &train, progress)?;
    let prop = FlowProposal { flow, types: vec![0], n_types: 2, device: Device::flex() };
    Ok(double_well_check("MH-Timewarp (one-atom flow)", &prop, 8, 20_000, seed))
}

fn double_well_check(
    proposal: &str,
    prop: &dyn Proposal,
    batch: usize,
    trials: usize,
    seed: u64,
) -> SanityResult {
    let pot = DoubleWell::default();
    let cfg = MhConfig { kt: 1.0, batch, adapt: false };
    let mut r = rng::stream(seed, rng::CHAIN, 1000 + batch as u64);
    let mut xs = Vec::with_capacity(trials);
    let (stats, _) = run_chain(&pot, prop, &cfg, &[1.0, 0.0], trials, &mut r, |x| xs.push(x[0]));
    let bins = 24;
    let reference = quadrature_marginal(&pot, 1.0, [(-2.4, 2.4), (-4.0, 4.0)], bins * 40, 0, bins);
    let mut h = vec![0.0; bins];
    for &x in &xs {
        let b = ((x + 2.4) / 4.8 * bins as f64).floor().clamp(0.0, (bins - 1) as f64) as usize;
        h[b] += 1.0 / xs.len() as f64;
    }
    let ind: Vec<f64> = xs.iter().map(|&x| f64::from(u8::from(x > 0.0))).collect();
    let right = ind.iter().sum::<f64>() / ind.len() as f64;
    let right_well_se = (right * (1.0 - right) / crate::stats::ess(&ind).max(1.0)).sqrt();
    let right_ref: f64 = reference[bins / 2..].iter().sum();
    SanityResult {
        proposal: proposal.into(),
        batch,
        trials,
        acceptance: stats.acceptance(),
        js_vs_quadrature: jensen_shannon(&h, &reference),
        right_well: (right, right_ref),
        right_well_se,
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

/// What every MH chain on the cluster is measured against.
struct ChainContext<'a> {
    cluster: &'a LjCluster,
    table: &'a IsomerTable,
    md: &'a ChainResult,
    kt: f64,
    seed: u64,
}

/// Runs an MH chain of `trials` trials with `prop` and measures it; every trial's state is
/// analysed (repeats of a rejected trial reuse the quench of the state they repeat). The wall
/// time counts the whole chain (proposals both ways and energies), not the analysis.
#[allow(clippy::too_many_arguments)]
fn mh_chain(
    ctx: &ChainContext,
    prop: &dyn Proposal,
    method: String,
    x0: &[f64],
    trials: usize,
    batch: usize,
    adapt: bool,
    chain: u64,
) -> ChainResult {
    let mut r = rng::stream(ctx.seed, rng::CHAIN, chain);
    // Distinct states visited and, per trial, the index of its state.
    let mut states: Vec<f64> = Vec::new();
    let mut which: Vec<usize> = Vec::with_capacity(trials);
    let dim = x0.len();
    let t = Instant::now();
    let (stats, _) =
        run_chain(ctx.cluster, prop, &MhConfig { kt: ctx.kt, batch, adapt }, x0, trials, &mut r, |x| {
            let n = states.len() / dim;
            if n == 0 || states[(n - 1) * dim..] != *x {
                states.extend_from_slice(x);
            }
            which.push(states.len() / dim - 1);
        });
    let seconds = t.elapsed().as_secs_f64();
    let info = describe(ctx.cluster, &states);
    let quenched: Vec<f64> = which.iter().map(|&i| info.quenched[i]).collect();
    let cvs: Vec<[f64; 2]> = which.iter().map(|&i| info.cvs[i]).collect();
    let ess_slowest = slowest_cv_ess(&cvs);
    let (lo, hi) = ctx.md.cv_box;
    let histogram = histogram2d(&cvs, lo, hi, CV_BINS);
    ChainResult {
        method,
        length: trials,
        seconds,
        populations: populations(ctx.table, &quenched, ctx.seed),
        ess_slowest,
        ess_per_second: ess_slowest.0 / seconds,
        js_vs_md: jensen_shannon(&histogram, &ctx.md.histogram),
        acceptance: stats.acceptance(),
        seconds_to_all_isomers: time_to_all(ctx.table, &quenched, seconds / trials as f64),
        histogram,
        cv_box: (lo, hi),
    }
}

/// An MD reference: its frames, isomer table, measurements as a chain, and the quenched energy
/// of every frame (per run).
type MdReference = (MdFrames, IsomerTable, ChainResult, Vec<Vec<f64>>);

/// The MD reference of `md`: its frames, the isomers found by quenching them, and its
/// measurements as a chain.
fn md_reference(md: &MdConfig, log: &mut dyn FnMut(&str)) -> Result<MdReference, TimewarpError> {
    let (frames, infos) = md_described(md, log)?;
    let table = md_table(&infos);
    let result = md_result(md, &frames, &infos, &table);
    let quenched = infos.into_iter().map(|i| i.quenched).collect();
    Ok((frames, table, result, quenched))
}

/// The frames of the MD reference of `md` and every run's quenched energies and CVs.
fn md_described(
    md: &MdConfig,
    log: &mut dyn FnMut(&str),
) -> Result<(MdFrames, Vec<FrameInfo>), TimewarpError> {
    let frames = run_md(md)?;
    let cluster = frames.cluster.clone();
    let t = Instant::now();
    let infos: Vec<_> = frames.runs.iter().map(|r| describe(&cluster, r)).collect();
    log(&format!(
        "{} at kT {}: {} frames of MD in {:.1} s, quenched in {:.1} s",
        cluster.name(),
        md.langevin.kt,
        md.runs * md.frames,
        frames.md_seconds,
        t.elapsed().as_secs_f64()
    ));
    Ok((frames, infos))
}

/// The isomer table of an MD reference's quenched frames (clustered at 0.02, clusters under
/// 0.2 % of the frames dropped).
fn md_table(infos: &[FrameInfo]) -> IsomerTable {
    let all_q: Vec<f64> = infos.iter().flat_map(|i| i.quenched.iter().copied()).collect();
    IsomerTable::from_energies(&all_q, 0.02, 0.002)
}

/// The MD reference measured as a chain against `table`.
fn md_result(md: &MdConfig, frames: &MdFrames, infos: &[FrameInfo], table: &IsomerTable) -> ChainResult {
    let all_q: Vec<f64> = infos.iter().flat_map(|i| i.quenched.iter().copied()).collect();
    let all_cv: Vec<[f64; 2]> = infos.iter().flat_map(|i| i.cvs.iter().copied()).collect();
    let (lo, hi) = cv_box(&all_cv);
    let md_hist = histogram2d(&all_cv, lo, hi, CV_BINS);
    let md_pops = populations(table, &all_q, md.seed);
    let ess_runs: Vec<(f64, usize)> = infos.iter().map(|i| slowest_cv_ess(&i.cvs)).collect();
    let md_ess: f64 = ess_runs.iter().map(|e| e.0).sum();
    let per_frame = frames.md_seconds / (md.runs * md.frames) as f64;
    ChainResult {
        method: format!("MD (BAOAB, dt {}, {} runs)", md.langevin.dt, md.runs),
        length: md.runs * md.frames,
        seconds: frames.md_seconds,
        populations: md_pops,
        ess_slowest: (md_ess, ess_runs[0].1),
        ess_per_second: md_ess / frames.md_seconds,
        js_vs_md: 0.0,
        acceptance: 1.0,
        seconds_to_all_isomers: time_to_all(table, &infos[0].quenched, per_frame),
        histogram: md_hist,
        cv_box: (lo, hi),
    }
}

/// Speed-up of `chain` over `md` in ESS/s of the slowest CV, set to 0 when the chain missed a
/// state (an isomer holding at least 1 % of the MD frames that the chain never visited), as in
/// the paper.
pub fn speedup(chain: &ChainResult, md: &ChainResult) -> f64 {
    let missed = md
        .populations
        .fractions
        .iter()
        .zip(&chain.populations.fractions)
        .any(|(m, c)| *m >= 0.01 && *c == 0.0);
    if missed {
        0.0
    } else {
        chain.ess_per_second / md.ess_per_second
    }
}

/// The largest distance, over the isomers, between `chain`'s population and `md`'s in units of
/// their combined block-bootstrap σ, √(σ² + σ_MD²) (the line "within 2σ" is this below 2), and
/// the same in units of the MD reference's σ alone (infinite where that σ is 0 and the two
/// differ).
pub fn population_z(chain: &ChainResult, md: &ChainResult) -> (f64, f64) {
    let (c, m) = (&chain.populations, &md.populations);
    let mut z = (0.0f64, 0.0f64);
    for k in 0..m.fractions.len() {
        let (p, sp) = (c.fractions.get(k).copied().unwrap_or(0.0), c.sigma.get(k).copied().unwrap_or(0.0));
        let d = (p - m.fractions[k]).abs();
        let ratio = |s: f64| if d == 0.0 { 0.0 } else { d / s };
        z.0 = z.0.max(ratio((sp * sp + m.sigma[k] * m.sigma[k]).sqrt()));
        z.1 = z.1.max(ratio(m.sigma[k]));
    }
    z
}

/// Runs everything of `cfg`, reporting progress lines to `log`; returns a one-paragraph summary.
pub fn run(
    cfg: &RunConfig,
    progress: &dyn Progress,
    log: &mut dyn FnMut(&str),
) -> Result<String, TimewarpError> {
    cfg.md.validate()?;
    LjCluster::parse(&cfg.md.composition)?;
    if cfg.lag == 0 || cfg.lag >= cfg.md.frames {
        return Err(TimewarpError::Input(format!("lag must be in 1..frames, got {}", cfg.lag)));
    }
    if let Some(stage) = &cfg.flow {
        stage.validate()?;
    }
    log("double-well check of the MH sampler (B = 1, 8) ...");
    let mut sanity_results: Vec<SanityResult> = [1, 8].iter().map(|&b| sanity(b, cfg.md.seed)).collect();
    if cfg.flow.is_some() {
        log("double-well check of MH-Timewarp ...");
        sanity_results.push(flow_sanity(cfg.md.seed, progress)?);
    }

    log(&format!(
        "MD reference of {} ({} runs x {} frames) ...",
        cfg.md.composition, cfg.md.runs, cfg.md.frames
    ));
    let (frames, infos) = md_described(&cfg.md, log)?;
    let own_table = md_table(&infos);
    // The MD references at other kTs for the flows' pairs, if asked for (the MH flows' first,
    // then the exploration flow's, one per kT); the isomer table then also holds the isomers
    // only they found.
    let mut other_md: Vec<(MdConfig, MdFrames, Vec<FrameInfo>)> = Vec::new();
    if let Some(stage) = &cfg.flow {
        let wanted = [
            ("MH flows'", mh_training_md(&cfg.md, stage)),
            ("mixture's hop flow's", mix_training_md(&cfg.md, stage)),
            ("exploration flow's", explore_training_md(&cfg.md, stage)),
        ];
        for (what, c) in wanted {
            let Some(c) = c else { continue };
            if other_md.iter().any(|(o, _, _)| o.langevin.kt == c.langevin.kt) {
                continue;
            }
            log(&format!("MD reference at kT {} for the {what} pairs ...", c.langevin.kt));
            let (f, i) = md_described(&c, log)?;
            other_md.push((c, f, i));
        }
    }
    let table = other_md.iter().fold(own_table.clone(), |t, (_, _, i)| t.union(&md_table(i)));
    // The reference at kT `t` among the other ones.
    let other_at = |t: f64| other_md.iter().find(|(c, _, _)| c.langevin.kt == t);
    let md = md_result(&cfg.md, &frames, &infos, &table);
    let quenched: Vec<Vec<f64>> = infos.into_iter().map(|i| i.quenched).collect();
    let cluster = frames.cluster.clone();

    log("writing training pairs ...");
    let n_pairs = write_pairs(&cfg.out_dir.join("pairs.safetensors"), &cfg.md, &frames, cfg.lag)?;

    // The MH chain on the cluster with the drift proposal (MALA-like step ε: h = ε²/(2kT)).
    log("MH chain with the drift proposal ...");
    let kt = cfg.md.langevin.kt;
    let eps = 0.04;
    let drift = GaussianDrift { pot: &cluster, h: eps * eps / (2.0 * kt), s: eps, c: 0.0 };
    let x0 = frames.runs[0][..2 * cluster.n_atoms()].to_vec();
    let md_chain = md.clone();
    let ctx = ChainContext { cluster: &cluster, table: &table, md: &md_chain, kt, seed: cfg.md.seed };
    let mut chains = vec![md];
    chains.push(mh_chain(
        &ctx,
        &drift,
        format!("MH, drift proposal (eps {eps}, B = 1)"),
        &x0,
        cfg.md.frames * 10,
        1,
        false,
        0,
    ));

    let mut flow_result = None;
    if let Some(stage) = &cfg.flow {
        // The training pairs at every kT a flow trains at, each built once (the permutation
        // alignment is costly): the run's own reference, or one at another kT as pairs flagged by
        // the run's table, with the description of its training MD.
        let kt_of = |t: Option<f64>| t.unwrap_or(kt);
        let mix_kt = kt_of(stage.mix_train_kt.or(stage.train_kt));
        let mut wanted = vec![kt_of(stage.train_kt)];
        wanted.extend(stage.explore_hop_fraction.map(|_| kt_of(stage.explore_train_kt)));
        wanted.extend(stage.mix.map(|_| mix_kt));
        let mut sources: Vec<PairSource> = Vec::new();
        for t in wanted {
            if sources.iter().any(|s| s.kt == t) {
                continue;
            }
            sources.push(if t == kt {
                let set = hop_pair_set(&frames, &quenched, &table, cfg.lag, stage.align_permutations);
                PairSource { kt: t, set, quenched: quenched.clone(), report: None }
            } else {
                let (c, f, i) = other_at(t).expect("an MD reference was run for every training kT");
                let q: Vec<Vec<f64>> = i.iter().map(|i| i.quenched.clone()).collect();
                let set = hop_pair_set(f, &q, &table, cfg.lag, stage.align_permutations);
                let report = ExploreTrainMd {
                    kt: c.langevin.kt,
                    md_seconds: f.md_seconds,
                    isomers: md_table(i).energies.len(),
                    run_isomers: own_table.energies.len(),
                    pairs: (set.len(), set.hop.iter().filter(|&&h| h).count()),
                };
                PairSource { kt: t, set, quenched: q, report: Some(report) }
            });
        }
        let source = |t: f64| sources.iter().find(|s| s.kt == t).expect("pairs built for every training kT");
        // The MH flows' pairs (and the quenched frames they come from).
        let mh_source = source(kt_of(stage.train_kt));
        let set = std::slice::from_ref(&mh_source.set);
        let mh_train_md = mh_source.report.clone();
        if let Some(rep) = &mh_train_md {
            log(&format!(
                "the MH flows train on {} pairs at kT {} ({} change isomer)",
                rep.pairs.0, rep.kt, rep.pairs.1
            ));
        }
        log(&format!(
            "training the flow ({} steps, batch {}) ...",
            stage.train.steps, stage.train.batch_size
        ));
        let (flow, train_report) = train_flow(set, &stage.train, progress)?;
        log(&format!(
            "NLL {:.2} -> {:.2} in {:.1} s",
            train_report.nll_first_last.0, train_report.nll_first_last.1, train_report.seconds
        ));
        let (flow, finetune) = match &stage.finetune {
            None => (flow, None),
            Some(f) => {
                let f = AcceptanceConfig { kt, ..f.clone() };
                log(&format!(
                    "acceptance-loss fine-tuning ({} steps, weight {}, beta {}) ...",
                    f.steps, f.weight, f.beta
                ));
                let pots: Vec<&dyn Potential> = vec![&cluster];
                let (flow, rep) = finetune_acceptance(
                    &flow,
                    set,
                    pots,
                    stage.train.flow.n_types,
                    stage.train.hop_fraction,
                    &f,
                    stage.train.seed,
                    progress,
                )?;
                log(&format!(
                    "acceptance of own proposals {:.4} -> {:.4}, loss {:.2} -> {:.2} in {:.1} s",
                    rep.acceptance_before_after.0,
                    rep.acceptance_before_after.1,
                    rep.loss_first_last.0,
                    rep.loss_first_last.1,
                    rep.seconds
                ));
                (flow, Some(rep))
            }
        };
        let prior_log_scales = flow.prior_log_scales();
        let prop = FlowProposal {
            flow,
            types: cluster.types.clone(),
            n_types: stage.train.flow.n_types,
            device: Device::flex(),
        };
        log("hop diagnostics ...");
        let hops =
            hop_diagnostics(&cluster, &table, &mh_source.quenched, &set[0], &prop, cfg.lag, cfg.md.seed);
        // A second flow trained with `hop_fraction` of every batch on the isomer-changing pairs
        // (of `pairs`).
        let mut train_hop_flow = |what: &str, hop_fraction: f64, pairs: &[PairSet]| {
            log(&format!("training the {what} (hop fraction {hop_fraction}) ..."));
            let train = FlowTrainConfig { hop_fraction, ..stage.train.clone() };
            let (flow, rep) = train_flow(pairs, &train, progress)?;
            let p = FlowProposal {
                flow,
                types: cluster.types.clone(),
                n_types: stage.train.flow.n_types,
                device: Device::flex(),
            };
            Ok::<_, TimewarpError>((p, rep))
        };
        // The exploration flow's pairs: the run's own, or those of the reference at its kT.
        let explore_source = stage.explore_hop_fraction.map(|_| source(kt_of(stage.explore_train_kt)));
        let explore_own = stage
            .explore_hop_fraction
            .zip(explore_source)
            .map(|(f, src)| train_hop_flow("exploration flow", f, std::slice::from_ref(&src.set)))
            .transpose()?;
        // The mixture's hop flow (on the pairs at `mix_kt`): the exploration flow when both use
        // the same hop fraction and pairs at the same kT.
        let same_pairs = mix_kt == kt_of(stage.explore_train_kt);
        let mix_own = match stage.mix {
            Some(m) if stage.explore_hop_fraction != Some(m.hop_fraction) || !same_pairs => {
                let pairs = std::slice::from_ref(&source(mix_kt).set);
                Some(train_hop_flow("mixture's hop flow", m.hop_fraction, pairs)?)
            }
            _ => None,
        };
        let mixture = stage.mix.and_then(|m| {
            let hop = mix_own.as_ref().or(explore_own.as_ref())?;
            Some(Mixture { a: &hop.0, b: &prop, weight: m.weight })
        });
        let mix_hops = mixture.as_ref().map(|m| {
            log("hop diagnostics of the mixture ...");
            hop_diagnostics(&cluster, &table, &mh_source.quenched, &set[0], m, cfg.lag, cfg.md.seed)
        });
        let mh_prop: &dyn Proposal = match &mixture {
            Some(m) => m,
            None => &prop,
        };
        log(&format!("MH-Timewarp chain ({} trials, B = {}) ...", stage.mh_trials, stage.mh_batch));
        chains.push(mh_chain(
            &ctx,
            mh_prop,
            format!(
                "MH-Timewarp{}{} (tau {} steps, B {} {})",
                stage.mix.map_or(String::new(), |m| format!(
                    ", mixture w {} of a hop flow ({})",
                    m.weight, m.hop_fraction
                )),
                mh_train_md.as_ref().map_or(String::new(), |r| format!(", flows trained at kT {}", r.kt))
                    + &if stage.mix.is_some() && mix_kt != kt_of(stage.train_kt) {
                        format!(", hop flow trained at kT {mix_kt}")
                    } else {
                        String::new()
                    },
                cfg.lag * cfg.md.stride,
                if stage.adapt_batch { "<=" } else { "=" },
                stage.mh_batch
            ),
            &x0,
            stage.mh_trials,
            stage.mh_batch,
            stage.adapt_batch,
            1,
        ));
        let explore_prop = explore_own.as_ref().map_or(&prop, |(p, _)| p);
        log("exploration ...");
        let mut r = rng::stream(cfg.md.seed, rng::EXPLORE, 0);
        let dim = 2 * cluster.n_atoms();
        let mut seen = vec![false; table.energies.len()];
        let (starts, md_start_s) = if stage.explore_from_md {
            // The first frames of MD run 0, their isomers, and the MD time they took.
            let k = stage.explore_chains.min(cfg.md.frames);
            let starts: Vec<Vec<f64>> =
                (0..k).map(|i| frames.runs[0][i * dim..(i + 1) * dim].to_vec()).collect();
            for &q in &quenched[0][..k] {
                if let Some(j) = table.classify(q) {
                    seen[j] = true;
                }
            }
            (starts, k as f64 * frames.md_seconds / (cfg.md.runs * cfg.md.frames) as f64)
        } else {
            let x = cluster.initial_positions();
            if let Some(j) = table.classify(crate::isomers::quench(&cluster, &x, 1e-5, 20_000).1) {
                seen[j] = true;
            }
            (vec![x; stage.explore_chains], 0.0)
        };
        let mut steps = 0usize;
        let mut quench_s = 0.0;
        let t = Instant::now();
        let (accepted, finals) = explore(
            &cluster,
            explore_prop,
            stage.explore_cap_kt * kt,
            &starts,
            stage.explore_steps,
            &mut r,
            |_, x, moved| {
                steps += 1;
                // A rejected move leaves a state already quenched.
                if moved {
                    let q = Instant::now();
                    let e = crate::isomers::quench(&cluster, x, 1e-5, 20_000).1;
                    quench_s += q.elapsed().as_secs_f64();
                    if let Some(k) = table.classify(e) {
                        seen[k] = true;
                    }
                }
                !seen.iter().all(|&s| s)
            },
        );
        let wall = t.elapsed().as_secs_f64() - quench_s + md_start_s;
        let found = seen.iter().filter(|&&s| s).count();
        let explore_seconds_to_all = (found == table.energies.len()).then_some(wall);
        // MD's time to visit every isomer at the run's kT: run 0 of the reference, or that run
        // continued up to `explore_md_frames` frames.
        let explore_md = if stage.explore_md_frames > cfg.md.frames {
            log(&format!("MD's time to visit every isomer (up to {} frames) ...", stage.explore_md_frames));
            md_time_to_all(&cfg.md, &table, stage.explore_md_frames)?
        } else {
            let per_frame = md_chain.seconds / (cfg.md.runs * cfg.md.frames) as f64;
            let frames_to_all = md_chain.seconds_to_all_isomers.map(|s| (s / per_frame).round() as usize);
            MdTimeToAll {
                seconds: md_chain.seconds_to_all_isomers,
                frames_to_all,
                frames: cfg.md.frames,
                md_seconds: per_frame * cfg.md.frames as f64,
            }
        };
        let explore_ratio = exploration_ratio(&explore_md, explore_seconds_to_all);
        let mean_u = |xs: &mut dyn Iterator<Item = &[f64]>| {
            let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + cluster.energy(x), n + 1));
            sum / n.max(1) as f64
        };
        let explore_final_energy = (
            mean_u(&mut finals.iter().map(|x| x.as_slice())),
            mean_u(&mut frames.runs.iter().flat_map(|r| r.chunks_exact(dim))),
        );
        flow_result = Some(FlowResult {
            train: train_report,
            prior_log_scales,
            explore_train: explore_own.map(|(_, rep)| rep),
            explore_steps: steps,
            explore_seconds: wall,
            explore_accepted: accepted as f64 / steps.max(1) as f64,
            explore_seconds_to_all,
            explore_found: found,
            explore_final_energy,
            hops,
            finetune,
            mix_train: mix_own.map(|(_, rep)| rep),
            mix_hops,
            explore_train_md: explore_source.and_then(|src| src.report.clone()),
            explore_md: Some(explore_md),
            explore_ratio,
            mh_train_md,
        });
    }

    let report = RunReport {
        config: cfg.clone(),
        sanity: sanity_results,
        isomers: table,
        chains,
        pairs: n_pairs,
        flow: flow_result,
    };
    let md_text = markdown(&report);
    let json = serde_json::to_string_pretty(&report).map_err(|e| TimewarpError::Input(e.to_string()))?;
    write_bytes(&cfg.out_dir.join("report.json"), json.as_bytes())?;
    write_bytes(&cfg.out_dir.join("report.md"), md_text.as_bytes())?;
    let hists: Vec<Vec<f64>> = report.chains.iter().map(|c| c.histogram.clone()).collect();
    crate::plot::free_energy_png(&cfg.out_dir.join("free_energy.png"), &hists, CV_BINS)?;
    Ok(md_text)
}

fn fmt2(v: f64) -> String {
    format!("{v:.2}")
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
    let _ = writeln!(s, "## MH on the tilted double well, against quadrature\n");
    let _ = writeln!(
        s,
        "| proposal | B | trials | acceptance | JS(x histogram, quadrature) | P(x > 0) ± se | quadrature |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for q in &r.sanity {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.3} | {:.2e} | {:.4} ± {:.4} | {:.4} |",
            q.proposal,
            q.batch,
            q.trials,
            q.acceptance,
            q.js_vs_quadrature,
            q.right_well.0,
            q.right_well_se,
            q.right_well.1
        );
    }
    let _ = writeln!(s, "\n## Isomers (quenched energies)\n");
    for (k, e) in r.isomers.energies.iter().enumerate() {
        let _ = writeln!(s, "- isomer {k}: U = {e:.4}");
    }
    let _ = writeln!(s, "\n## Chains\n");
    let _ = writeln!(
        s,
        "`free_energy.png`: F(mu2, mu3) = -ln p in kT, one panel per row below, left to right (mu2 in [{}, {}] downwards, mu3 in [{}, {}] rightwards, white F = 0, black F >= 6 or empty).\n",
        fmt2(r.chains[0].cv_box.0[0]), fmt2(r.chains[0].cv_box.1[0]), fmt2(r.chains[0].cv_box.0[1]), fmt2(r.chains[0].cv_box.1[1])
    );
    let _ = writeln!(
        s,
        "| method | length | wall s | populations (± block-bootstrap sigma) | max z vs MD (combined sigma; MD sigma) | ESS slowest CV | ESS/s | speed-up (missed state = 0) | JS vs MD | acceptance | s to all isomers |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
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
            "| {} | {} | {:.2} | {} | {:.2}; {:.2} | {:.0} ({}) | {:.1} | {:.3} | {:.4} | {:.4} | {} |",
            ch.method,
            ch.length,
            ch.seconds,
            pops.join(", "),
            population_z(ch, &r.chains[0]).0,
            population_z(ch, &r.chains[0]).1,
            ch.ess_slowest.0,
            ["mu2", "mu3"][ch.ess_slowest.1],
            ch.ess_per_second,
            speedup(ch, &r.chains[0]),
            ch.js_vs_md,
            ch.acceptance,
            ch.seconds_to_all_isomers.map_or("never".into(), |t| format!("{t:.2}"))
        );
    }
    if let Some(f) = &r.flow {
        let _ = writeln!(s, "\n## Flow\n");
        let _ = writeln!(
            s,
            "- training: NLL per pair {:.2} (first tenth of steps) -> {:.2} (last tenth), {:.1} s, {} parameters; learned prior log-scales (positions, velocities) {:.3}, {:.3}",
            f.train.nll_first_last.0,
            f.train.nll_first_last.1,
            f.train.seconds,
            f.train.num_params,
            f.prior_log_scales[0],
            f.prior_log_scales[1]
        );
        let _ = writeln!(
            s,
            "- exploration (accept unless U rises by more than the cap, {} chains): {} moves in {:.3} s, {:.3} accepted, found {} of {} isomers, {}",
            r.config.flow.as_ref().map_or(1, |s| s.explore_chains),
            f.explore_steps,
            f.explore_seconds,
            f.explore_accepted,
            f.explore_found,
            r.isomers.energies.len(),
            f.explore_seconds_to_all.map_or("not all within the step budget".into(), |t| format!("all in {t:.3} s"))
        );
        if let Some(t) = &f.mh_train_md {
            let _ = writeln!(
                s,
                "- MH flows' pairs: {}; MH, populations, ESS and the speed-up are at kT {}",
                t.describe(
                    "; nor is the training",
                    " (the hop diagnostics below are on these pairs)",
                    c.langevin.kt,
                    r.isomers.energies.len()
                ),
                c.langevin.kt
            );
        }
        if let Some(t) = &f.explore_train {
            let _ = writeln!(
                s,
                "- exploration flow: trained separately with hop fraction {}, NLL per pair {:.2} -> {:.2}, {:.1} s",
                r.config.flow.as_ref().and_then(|s| s.explore_hop_fraction).unwrap_or(f64::NAN),
                t.nll_first_last.0,
                t.nll_first_last.1,
                t.seconds
            );
        }
        if let Some(t) = &f.explore_train_md {
            let _ = writeln!(
                s,
                "- exploration flow's pairs: {}; the cap is in units of the run's kT ({} = {:.2} energy units)",
                t.describe("", "", c.langevin.kt, r.isomers.energies.len()),
                r.config.flow.as_ref().map_or(f64::NAN, |s| s.explore_cap_kt),
                r.config.flow.as_ref().map_or(f64::NAN, |s| s.explore_cap_kt) * c.langevin.kt
            );
        }
        if let Some(m) = &f.explore_md {
            let _ = writeln!(
                s,
                "- MD at kT {} (run 0, dynamics only): {}; exploration ratio (MD s / exploration s): {}",
                c.langevin.kt,
                match (m.seconds, m.frames_to_all) {
                    (Some(t), Some(n)) => format!("all isomers in {t:.3} s ({n} frames)"),
                    _ => format!("not all isomers within {} frames ({:.2} s)", m.frames, m.md_seconds),
                },
                match f.explore_ratio {
                    Some((x, false)) => format!("{x:.1}"),
                    Some((x, true)) => format!("> {x:.1} (lower bound: MD's whole budget)"),
                    None => "none (exploration did not find all)".into(),
                }
            );
        }
        let _ = writeln!(
            s,
            "- exploration chains start from {}; mean U of their final states {:.3} against {:.3} over the MD frames",
            if r.config.flow.as_ref().is_some_and(|s| s.explore_from_md) { "the first MD frames (their MD time counted)" } else { "the hexagon geometry" },
            f.explore_final_energy.0,
            f.explore_final_energy.1
        );
        let _ = writeln!(
            s,
            "- isomer changes: {:.3} of the training pairs change isomer, {:.3} of the flow's proposals from the same starts do ({:.3} to a listed isomer); mean -log q per pair {:.2} on the pairs that change, {:.2} on those that stay",
            f.hops.md_hop_fraction, f.hops.flow_hop_fraction, f.hops.flow_hop_known_fraction, f.hops.nll_hop, f.hops.nll_stay
        );
        let _ = writeln!(
            s,
            "- escapes from the global minimum: {:.3} of the pairs starting there end in another isomer, {:.3} of the flow's proposals from those starts do",
            f.hops.md_escape_fraction, f.hops.flow_escape_fraction
        );
        if let (Some(m), Some(h)) = (r.config.flow.as_ref().and_then(|s| s.mix), &f.mix_hops) {
            let _ = writeln!(
                s,
                "- MH-Timewarp proposal: the exact mixture w q_hop + (1 - w) q_likelihood, w = {}, q_hop a flow trained with hop fraction {}{}; its mean -log q per pair {:.2} on the pairs that change isomer, {:.2} on those that stay; {:.3} of its proposals change isomer, escapes from the global minimum {:.3}",
                m.weight,
                m.hop_fraction,
                f.mix_train.as_ref().map_or(" (the exploration flow)".into(), |t| format!(
                    " (NLL per pair {:.2} -> {:.2}, {:.1} s)",
                    t.nll_first_last.0, t.nll_first_last.1, t.seconds
                )),
                h.nll_hop,
                h.nll_stay,
                h.flow_hop_fraction,
                h.flow_escape_fraction
            );
        }
        if let Some(a) = &f.finetune {
            let _ = writeln!(
                s,
                "- acceptance-loss fine-tuning ({} steps, lr {}, weight {}, beta {}, cap {} kT): loss {:.2} -> {:.2}; mean acceptance probability of the flow's own proposals from training starts {:.4} -> {:.4} ({:.3} -> {:.3} within the cap), {:.1} s",
                a.config.steps,
                a.config.lr,
                a.config.weight,
                a.config.beta,
                a.config.energy_cap_kt,
                a.loss_first_last.0,
                a.loss_first_last.1,
                a.acceptance_before_after.0,
                a.acceptance_before_after.1,
                a.within_cap_before_after.0,
                a.within_cap_before_after.1,
                a.seconds
            );
        }
    }
    s
}

/// Settings of the transfer experiment: one flow trained on the pairs of several compositions
/// (all with the same atom count), then MH-Timewarp on held-out compositions.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TransferConfig {
    /// MD settings (the composition field is replaced by each composition in turn).
    pub md: MdConfig,
    /// Training compositions.
    pub train: Vec<String>,
    /// Held-out compositions.
    pub test: Vec<String>,
    /// Lag of the pairs, in frames.
    pub lag: usize,
    /// Flow training and sampling.
    pub flow: FlowStage,
    /// Output folder.
    pub out_dir: PathBuf,
}

/// One composition's row of the transfer table.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TransferRow {
    /// Composition.
    pub composition: String,
    /// Whether the flow was trained on it.
    pub trained_on: bool,
    /// Isomers found by the MD reference.
    pub isomers: usize,
    /// The MD reference.
    pub md: ChainResult,
    /// MH-Timewarp.
    pub mh: ChainResult,
    /// ESS/s speed-up on the slowest CV (missed state = 0).
    pub speedup: f64,
}

/// What the transfer experiment measured.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TransferReport {
    /// The settings.
    pub config: TransferConfig,
    /// Training.
    pub train: FlowTrainReport,
    /// One row per composition (training compositions first).
    pub rows: Vec<TransferRow>,
}

/// Runs the transfer experiment of `cfg`; writes `transfer.md` and `transfer.json` into the
/// output folder and returns the markdown.
pub fn transfer(
    cfg: &TransferConfig,
    progress: &dyn Progress,
    log: &mut dyn FnMut(&str),
) -> Result<String, TimewarpError> {
    cfg.md.validate()?;
    cfg.flow.validate()?;
    if cfg.train.is_empty() || cfg.test.is_empty() {
        return Err(TimewarpError::Input(
            "transfer needs at least one training and one held-out composition".into(),
        ));
    }
    if cfg.lag == 0 || cfg.lag >= cfg.md.frames {
        return Err(TimewarpError::Input(format!("lag must be in 1..frames, got {}", cfg.lag)));
    }
    let all: Vec<(String, bool)> = cfg
        .train
        .iter()
        .map(|c| (c.clone(), true))
        .chain(cfg.test.iter().map(|c| (c.clone(), false)))
        .collect();
    let n_atoms = LjCluster::parse(&all[0].0)?.n_atoms();
    for (c, _) in &all {
        if LjCluster::parse(c)?.n_atoms() != n_atoms {
            return Err(TimewarpError::Input(format!(
                "transfer: {c} has another atom count than {}",
                all[0].0
            )));
        }
    }
    let mut refs = Vec::new();
    for (k, (c, _)) in all.iter().enumerate() {
        let md = MdConfig { composition: c.clone(), seed: cfg.md.seed + k as u64, ..cfg.md.clone() };
        refs.push(md_reference(&md, log)?);
    }
    let sets: Vec<PairSet> = refs
        .iter()
        .zip(&all)
        .filter(|(_, (_, tr))| *tr)
        .map(|((frames, table, _, quenched), _)| {
            hop_pair_set(frames, quenched, table, cfg.lag, cfg.flow.align_permutations)
        })
        .collect();
    log(&format!("training one flow on {} compositions ({} steps) ...", sets.len(), cfg.flow.train.steps));
    let (flow, train_report) = train_flow(&sets, &cfg.flow.train, progress)?;
    let flow = match &cfg.flow.finetune {
        None => flow,
        Some(f) => {
            let f = AcceptanceConfig { kt: cfg.md.langevin.kt, ..f.clone() };
            let clusters: Vec<&LjCluster> =
                refs.iter().zip(&all).filter(|(_, (_, tr))| *tr).map(|(r, _)| &r.0.cluster).collect();
            let pots: Vec<&dyn Potential> = clusters.iter().map(|c| *c as &dyn Potential).collect();
            log(&format!("acceptance-loss fine-tuning ({} steps) ...", f.steps));
            let (flow, rep) = finetune_acceptance(
                &flow,
                &sets,
                pots,
                cfg.flow.train.flow.n_types,
                cfg.flow.train.hop_fraction,
                &f,
                cfg.flow.train.seed,
                progress,
            )?;
            log(&format!(
                "acceptance of own proposals {:.4} -> {:.4}",
                rep.acceptance_before_after.0, rep.acceptance_before_after.1
            ));
            flow
        }
    };
    let mut rows = Vec::new();
    for (k, ((frames, table, md, _), (c, trained_on))) in refs.into_iter().zip(&all).enumerate() {
        let cluster = frames.cluster.clone();
        let prop = FlowProposal {
            flow: flow.clone(),
            types: cluster.types.clone(),
            n_types: cfg.flow.train.flow.n_types,
            device: Device::flex(),
        };
        let ctx = ChainContext {
            cluster: &cluster,
            table: &table,
            md: &md,
            kt: cfg.md.langevin.kt,
            seed: cfg.md.seed,
        };
        let x0 = frames.runs[0][..2 * n_atoms].to_vec();
        log(&format!("MH-Timewarp on {c} ..."));
        let mh = mh_chain(
            &ctx,
            &prop,
            format!("MH-Timewarp (B = {})", cfg.flow.mh_batch),
            &x0,
            cfg.flow.mh_trials,
            cfg.flow.mh_batch,
            cfg.flow.adapt_batch,
            100 + k as u64,
        );
        let s = speedup(&mh, &md);
        rows.push(TransferRow {
            composition: c.clone(),
            trained_on: *trained_on,
            isomers: table.energies.len(),
            md,
            mh,
            speedup: s,
        });
    }
    let report = TransferReport { config: cfg.clone(), train: train_report, rows };
    let mut s = String::new();
    let _ = writeln!(s, "# Timewarp miniature: transfer across compositions\n");
    let _ = writeln!(
        s,
        "kT {}, tau {} steps; one flow trained on {} ({} steps, NLL {:.2} -> {:.2}, {:.1} s); held out: {}.\n",
        cfg.md.langevin.kt,
        cfg.lag * cfg.md.stride,
        cfg.train.join(", "),
        cfg.flow.train.steps,
        report.train.nll_first_last.0,
        report.train.nll_first_last.1,
        report.train.seconds,
        cfg.test.join(", ")
    );
    let _ = writeln!(s, "| composition | trained on | isomers | MD ESS/s | MH-Timewarp ESS/s | acceptance | isomers visited by MH | max z of populations vs MD (combined sigma) | speed-up (missed = 0) | JS vs MD |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for r in &report.rows {
        let visited = r.mh.populations.fractions.iter().filter(|&&f| f > 0.0).count();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} | {:.1} | {:.4} | {} | {:.2} | {:.3} | {:.4} |",
            r.composition,
            if r.trained_on { "yes" } else { "no" },
            r.isomers,
            r.md.ess_per_second,
            r.mh.ess_per_second,
            r.mh.acceptance,
            visited,
            population_z(&r.mh, &r.md).0,
            r.speedup,
            r.mh.js_vs_md
        );
    }
    let held: Vec<&TransferRow> = report.rows.iter().filter(|r| !r.trained_on).collect();
    let above = held.iter().filter(|r| r.speedup > 1.0).count();
    let _ = writeln!(s, "\nHeld-out compositions with speed-up > 1: {above} of {}.", held.len());
    let json = serde_json::to_string_pretty(&report).map_err(|e| TimewarpError::Input(e.to_string()))?;
    write_bytes(&cfg.out_dir.join("transfer.json"), json.as_bytes())?;
    write_bytes(&cfg.out_dir.join("transfer.md"), s.as_bytes())?;
    Ok(s)
}
