//! `timewarp`: MD references, MH sampling and reports for 2-D Lennard-Jones clusters.
//! Argument parsing and printing only: the work is in [`timewarp::run`].

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use foundation::cli::Bar;
use timewarp::flow::FlowConfig;
use timewarp::md::Langevin;
use timewarp::reference::MdConfig;
use timewarp::run::{self, FlowStage, RunConfig};
use timewarp::train::FlowTrainConfig;

#[derive(Parser, Debug)]
#[command(
    name = "timewarp",
    version,
    about = "Timewarp in miniature on 2-D Lennard-Jones clusters: Langevin MD references, isomer \
             populations, training pairs, auxiliary-velocity Metropolis-Hastings",
    after_help = "Examples:\n  timewarp                      # the default run: LJ-7 reference, pairs, MH check, report\n  \
        timewarp run --composition A4B3 --frames 20000 --out-dir out/a4b3"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// MD reference, training pairs, the double-well MH check and the MH chain on the cluster;
    /// writes report.md, report.json, pairs.safetensors and the CV free-energy plots.
    Run(RunArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Composition: `lj7` or counts of the two atom types, e.g. `A4B3`.
    #[arg(long, default_value = "lj7")]
    composition: String,
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
    #[arg(long, default_value_t = 10)]
    lag: usize,
    /// Flow training steps (0: no flow stage).
    #[arg(long, default_value_t = 1500)]
    train_steps: usize,
    /// Pairs per training step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Proposals per MH batch (B).
    #[arg(long, default_value_t = 16)]
    mh_batch: usize,
    /// MH-Timewarp trials.
    #[arg(long, default_value_t = 20_000)]
    mh_trials: usize,
    /// Exploration steps at most.
    #[arg(long, default_value_t = 2_000)]
    explore_steps: usize,
    /// Exploration energy cap in units of kT.
    #[arg(long, default_value_t = 20.0)]
    explore_cap_kt: f64,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder.
    #[arg(long, default_value = "timewarp-out")]
    out_dir: PathBuf,
}

impl Default for RunArgs {
    fn default() -> Self {
        Cli::parse_from(["timewarp", "run"]).command.map_or_else(|| unreachable!(), |Command::Run(a)| a)
    }
}

fn main() -> std::process::ExitCode {
    foundation::cli::keep_freed_memory();
    foundation::cli::exit_code(real_main())
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Run(a)) => a,
        None => RunArgs::default(),
    };
    let cfg = RunConfig {
        md: MdConfig {
            composition: args.composition,
            langevin: Langevin { dt: args.dt, gamma: args.gamma, kt: args.kt },
            stride: args.stride,
            frames: args.frames,
            runs: args.runs,
            burn_in: 10 * args.stride,
            seed: args.seed,
        },
        lag: args.lag,
        out_dir: args.out_dir,
        flow: (args.train_steps > 0).then(|| FlowStage {
            train: FlowTrainConfig {
                flow: FlowConfig::default(),
                steps: args.train_steps,
                batch_size: args.batch_size,
                lr: args.lr,
                seed: args.seed,
            },
            mh_batch: args.mh_batch,
            mh_trials: args.mh_trials,
            explore_steps: args.explore_steps,
            explore_cap_kt: args.explore_cap_kt,
        }),
    };
    let bar = Bar::new();
    let summary = run::run(&cfg, &bar, &mut |line: &str| bar.suspend(|| eprintln!("{line}")))?;
    println!("{summary}");
    Ok(())
}
