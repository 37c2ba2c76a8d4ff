//! `timewarp`: MD references, a conditional flow trained on MD pairs, MH-Timewarp and
//! exploration on 2-D Lennard-Jones clusters. Argument parsing and printing only: the work is in
//! [`timewarp::run`].

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use foundation::cli::Bar;
use timewarp::accept::AcceptanceConfig;
use timewarp::flow::FlowConfig;
use timewarp::md::Langevin;
use timewarp::reference::MdConfig;
use timewarp::run::{self, FlowStage, MixStage, RunConfig, TransferConfig};
use timewarp::train::FlowTrainConfig;

#[derive(Parser, Debug)]
#[command(
    name = "timewarp",
    version,
    about = "Timewarp in miniature on 2-D Lennard-Jones clusters: Langevin MD references, isomer \
             populations, training pairs, a conditional normalising flow, auxiliary-velocity \
             Metropolis-Hastings with batched proposals, exploration",
    after_help = "Examples:\n  timewarp                      # = timewarp run: LJ-7 at kT 0.15, everything, into timewarp-out/\n  \
        timewarp run --composition A4B3 --train-steps 0 --out-dir out/a4b3   # MD, pairs, MH checks only\n  \
        timewarp run --composition A6 --lag 5 --permute-align --mh-trials 1000000 --out-dir out/a6   # MH-Timewarp over all 3 isomers of LJ-6\n  \
        timewarp run --kt 0.12 --explore-train-kt 0.15 --explore-md-frames 1000000 --mh-trials 100   # explore at kT 0.12 with a hop flow trained at 0.15\n  \
        timewarp run --composition A6 --lag 5 --permute-align --kt 0.10 --train-kt 0.15 --mix-weight 0.1 --runs 20 --frames 10000 --mh-trials 200000   # MH-Timewarp at kT 0.10, flows trained at 0.15\n  \
        timewarp transfer --train A7,A6B1,A5B2,A3B4,A2B5 --test A4B3,A1B6 --out-dir out/transfer"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The double-well MH check, the MD reference, training pairs, the flow, MH-Timewarp and
    /// exploration on one composition; writes report.md, report.json, pairs.safetensors and
    /// free_energy.png into --out-dir.
    Run(RunArgs),
    /// One flow trained on several compositions, MH-Timewarp on held-out ones; writes
    /// transfer.md and transfer.json into --out-dir.
    Transfer(TransferArgs),
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Temperature k_B T (units of the A atom's ε).
    #[arg(long, default_value_t = 0.15)]
    kt: f64,
    /// Time step.
    #[arg(long, default_value_t = 0.005)]
    dt: f64,
    /// Langevin friction.
    #[arg(long, default_value_t = 1.0)]
    gamma: f64,
    /// Steps between saved frames.
    #[arg(long, default_value_t = 100)]
    stride: usize,
    /// Saved frames per MD run.
    #[arg(long, default_value_t = 20_000)]
    frames: usize,
    /// Independent MD runs.
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// Lag of the training pairs in frames (τ = lag × stride steps).
    #[arg(long, default_value_t = 50)]
    lag: usize,
    /// Flow training steps (`run`: 0 skips the flow stage).
    #[arg(long, default_value_t = 3000)]
    train_steps: usize,
    /// Pairs per training step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Proposals per MH batch (B).
    #[arg(long, default_value_t = 32)]
    mh_batch: usize,
    /// Adapt B to the smoothed acceptance rate (P(an acceptance in a batch) ≈ 0.9), at most
    /// --mh-batch.
    #[arg(long)]
    adapt_batch: bool,
    /// MH-Timewarp trials.
    #[arg(long, default_value_t = 10_000)]
    mh_trials: usize,
    /// Exploration steps per chain at most.
    #[arg(long, default_value_t = 500)]
    explore_steps: usize,
    /// Exploration energy cap in units of kT (116 kT: the authors' 300 kJ/mol at their 310 K).
    #[arg(long, default_value_t = 116.0)]
    explore_cap_kt: f64,
    /// Parallel exploration chains (one batched flow call per step).
    #[arg(long, default_value_t = 32)]
    explore_chains: usize,
    /// Hop fraction of a separate exploration flow (1: trained on the pairs that change isomer
    /// only); a negative value: exploration uses the MH flow.
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    explore_hop_fraction: f64,
    /// `run`: train the exploration flow on the pairs of an MD reference at this kT (same
    /// lengths, lag and seed) instead of the run's; exploration, its cap (in units of --kt) and
    /// MD's time to visit every isomer stay at --kt, the isomer table joins both references'
    /// isomers (default: --kt, the run's own pairs).
    #[arg(long)]
    explore_train_kt: Option<f64>,
    /// `run`: train the MH flows (likelihood flow, fine-tuning, the mixture's hop flow) on the
    /// pairs of an MD reference at this kT (same lengths, lag and seed) instead of the run's;
    /// MH, the MD reference, populations, ESS and the speed-up stay at --kt, the isomer table
    /// joins both references' isomers (default: --kt, the run's own pairs).
    #[arg(long)]
    train_kt: Option<f64>,
    /// `run`: train the mixture's hop flow on the pairs of an MD reference at this kT instead
    /// of the MH flows' (default: --train-kt, else --kt); needs --mix-weight > 0.
    #[arg(long)]
    mix_train_kt: Option<f64>,
    /// `run`: measure MD's time to visit every isomer on run 0 of the reference continued up to
    /// this many frames (dynamics timed, quench not); up to --frames: run 0 of the reference.
    #[arg(long, default_value_t = 0)]
    explore_md_frames: usize,
    /// Start the exploration chains from the first MD frames (their MD time counted) instead
    /// of the hexagon geometry.
    #[arg(long)]
    explore_from_md: bool,
    /// Fraction of every training batch drawn from the pairs that change isomer (0: the MD
    /// pairs as they come; above their own hop fraction the flow fits a hop-enriched mixture,
    /// which MH keeps exact).
    #[arg(long, default_value_t = 0.0)]
    hop_fraction: f64,
    /// Affine coupling layers of the flow.
    #[arg(long, default_value_t = 4)]
    couplings: usize,
    /// Hidden width of the flow's input MLP and feed-forward block.
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    /// Acceptance-loss fine-tuning steps after the likelihood training (0: none).
    #[arg(long, default_value_t = 0)]
    finetune_steps: usize,
    /// Peak learning rate of the fine-tuning.
    #[arg(long, default_value_t = 3e-4)]
    finetune_lr: f64,
    /// Weight λ of the acceptance term in the fine-tuning loss (1 − λ)·NLL + λ·acceptance.
    #[arg(long, default_value_t = 0.5)]
    acceptance_weight: f64,
    /// β of the acceptance loss's entropy term.
    #[arg(long, default_value_t = 0.2)]
    acceptance_beta: f64,
    /// Proposals raising U by more than this many kT are left out of the acceptance term.
    #[arg(long, default_value_t = 20.0)]
    acceptance_cap_kt: f64,
    /// MH-Timewarp with an exact mixture proposal: this probability w of a move from a second
    /// flow trained with --mix-hop-fraction, otherwise from the likelihood flow; the mixture's
    /// density is evaluated both ways (0: the likelihood flow alone).
    #[arg(long, default_value_t = 0.0)]
    mix_weight: f64,
    /// Hop fraction of the mixture's hop flow (the exploration flow is reused when
    /// --explore-hop-fraction is the same).
    #[arg(long, default_value_t = 1.0)]
    mix_hop_fraction: f64,
    /// Align the training pairs by permutation too (atoms of x(t + tau) relabelled within types
    /// to the labelling closest to x(t), then rigidly), not only rigidly.
    #[arg(long)]
    permute_align: bool,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder.
    #[arg(long, default_value = "timewarp-out")]
    out_dir: PathBuf,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Composition: `lj7` or counts of the two atom types, e.g. `A4B3`.
    #[arg(long, default_value = "lj7")]
    composition: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct TransferArgs {
    /// Training compositions (same atom count), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "A7,A6B1,A5B2,A3B4,A2B5")]
    train: Vec<String>,
    /// Held-out compositions, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "A4B3,A1B6")]
    test: Vec<String>,
    #[command(flatten)]
    common: Common,
}

fn md(c: &Common, composition: String) -> MdConfig {
    MdConfig {
        composition,
        langevin: Langevin { dt: c.dt, gamma: c.gamma, kt: c.kt },
        stride: c.stride,
        frames: c.frames,
        runs: c.runs,
        burn_in: 10 * c.stride,
        seed: c.seed,
    }
}

fn stage(c: &Common) -> FlowStage {
    FlowStage {
        train: FlowTrainConfig {
            flow: FlowConfig { couplings: c.couplings, hidden: c.hidden, ..FlowConfig::default() },
            steps: c.train_steps,
            batch_size: c.batch_size,
            lr: c.lr,
            seed: c.seed,
            hop_fraction: c.hop_fraction,
        },
        mh_batch: c.mh_batch,
        adapt_batch: c.adapt_batch,
        mh_trials: c.mh_trials,
        explore_steps: c.explore_steps,
        explore_cap_kt: c.explore_cap_kt,
        explore_chains: c.explore_chains,
        explore_from_md: c.explore_from_md,
        explore_hop_fraction: (c.explore_hop_fraction >= 0.0).then_some(c.explore_hop_fraction),
        finetune: (c.finetune_steps > 0).then_some(AcceptanceConfig {
            steps: c.finetune_steps,
            lr: c.finetune_lr,
            batch_size: c.batch_size,
            weight: c.acceptance_weight,
            beta: c.acceptance_beta,
            energy_cap_kt: c.acceptance_cap_kt,
            kt: c.kt,
        }),
        align_permutations: c.permute_align,
        explore_train_kt: c.explore_train_kt,
        explore_md_frames: c.explore_md_frames,
        train_kt: c.train_kt,
        mix_train_kt: c.mix_train_kt,
        mix: (c.mix_weight > 0.0)
            .then_some(MixStage { weight: c.mix_weight, hop_fraction: c.mix_hop_fraction }),
    }
}

fn main() -> std::process::ExitCode {
    foundation::cli::keep_freed_memory();
    foundation::cli::exit_code(real_main())
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let command = match cli.command {
        Some(c) => c,
        None => match Cli::parse_from(["timewarp", "run"]).command {
            Some(c) => c,
            None => anyhow::bail!("no command"),
        },
    };
    let bar = Bar::new();
    let mut log = |line: &str| bar.suspend(|| eprintln!("{line}"));
    let text = match command {
        Command::Run(a) => {
            let cfg = RunConfig {
                md: md(&a.common, a.composition),
                lag: a.common.lag,
                out_dir: a.common.out_dir.clone(),
                flow: (a.common.train_steps > 0).then(|| stage(&a.common)),
            };
            run::run(&cfg, &bar, &mut log)?
        }
        Command::Transfer(a) => {
            let cfg = TransferConfig {
                md: md(&a.common, String::new()),
                train: a.train,
                test: a.test,
                lag: a.common.lag,
                flow: stage(&a.common),
                out_dir: a.common.out_dir.clone(),
            };
            run::transfer(&cfg, &bar, &mut log)?
        }
    };
    println!("{text}");
    Ok(())
}
