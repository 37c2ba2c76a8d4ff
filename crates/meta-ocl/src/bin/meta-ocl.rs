//! `meta-ocl`: the implicit meta-learning sweep (stage 0, then stage 1 and stage 2 per seed) and
//! its report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use burn::prelude::Device;
use clap::{Args, Parser, Subcommand};
use foundation::cli::{exit_code, Bar};
use meta_ocl::bench::BenchConfig;
use meta_ocl::harness::{prepare, report, stage0, sweep, Shard, SweepConfig};
use meta_ocl::world::World;

const EXAMPLES: &str = "\
Examples:
  meta-ocl run                                   # reduced world, 8 x 2 seeds, writes runs/meta-ocl/report.md
  meta-ocl run --stage1-seeds 20 --stage2-seeds 5 --jobs 2
  meta-ocl run --out runs/big --stage0-only      # then, on n machines:
  meta-ocl run --out runs/big --shard 3/8        # seeds s with s % 8 == 3
  meta-ocl report --out runs/big                 # report of whatever has finished
  meta-ocl bench                                 # tokens/s of a training step (compare bench/meta_ocl_jax.py)
  meta-ocl bench --block 48 --json bench.json    # packed rows of 48 tokens";

#[derive(Parser)]
#[command(name = "meta-ocl", version, about = "Implicit meta-learning in a small transformer LM trained from scratch", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Compute device: cpu (burn flex backend), cuda or wgpu (need the cargo features `cuda` /
    /// `wgpu`).
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run (or resume) the sweep, then write report.md and the plots.
    Run(RunArgs),
    /// Write report.md and the plots from the finished results in --out.
    Report(OutArgs),
    /// Time training steps of the transformer (tokens per second; the JAX reference is
    /// bench/meta_ocl_jax.py with the same flags).
    Bench(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// Sequences per batch (the stage-1 default).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Residual width (4 heads, MLP 4 d).
    #[arg(long, default_value_t = 128)]
    d_model: usize,
    /// Tokens per row (rows are packed token streams from twice the longest sequence on).
    #[arg(long, default_value_t = 8)]
    block: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Also write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct OutArgs {
    /// Run directory.
    #[arg(long, default_value = "runs/meta-ocl")]
    out: PathBuf,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    out: OutArgs,
    /// Run only the stage-1 seeds s with s % n == i (`i/n`).
    #[arg(long, default_value = "0/1")]
    shard: String,
    /// Concurrent workers (each takes the next unfinished stage-1 seed).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Train stage 0 only (before starting shards).
    #[arg(long)]
    stage0_only: bool,
    /// Number of stage-1 seeds.
    #[arg(long, default_value_t = 8)]
    stage1_seeds: usize,
    /// Number of stage-2 seeds per stage-1 seed.
    #[arg(long, default_value_t = 2)]
    stage2_seeds: usize,
    /// Number of entities.
    #[arg(long, default_value_t = 400)]
    entities: usize,
    /// Stage-0 epochs.
    #[arg(long, default_value_t = 40)]
    stage0_epochs: usize,
    /// Stage-1 epochs (the spec: 20).
    #[arg(long, default_value_t = 20)]
    stage1_epochs: usize,
    /// Stage-2 epochs (the spec: 10).
    #[arg(long, default_value_t = 10)]
    stage2_epochs: usize,
    /// Batch size of stage 1.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Batch size of stage 2 (its data is only the d1/d2/d3 definitions).
    #[arg(long, default_value_t = 16)]
    stage2_batch_size: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Residual width.
    #[arg(long, default_value_t = 128)]
    d_model: usize,
    /// Syllable tokens variable names are made of (at least the number of entities for 1-token
    /// variables).
    #[arg(long, default_value_t = 48)]
    syllables: usize,
    /// Tokens per variable name (the spec: 2; 1 is an exploratory variant).
    #[arg(long, default_value_t = 2)]
    variable_tokens: usize,
    /// Tie the output layer to the token embedding (exploratory).
    #[arg(long)]
    tie_embeddings: bool,
    /// World seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl RunArgs {
    fn config(&self) -> SweepConfig {
        let mut c = SweepConfig::default();
        c.world.entities = self.entities;
        c.world.seed = self.seed;
        c.world.variable_tokens = self.variable_tokens;
        c.world.syllables = self.syllables;
        c.model.tie_embeddings = self.tie_embeddings;
        c.model.layers = self.layers;
        c.model.d_model = self.d_model;
        c.model.d_mlp = 4 * self.d_model;
        c.stage0.epochs = self.stage0_epochs;
        c.stage1.epochs = self.stage1_epochs;
        c.stage2.epochs = self.stage2_epochs;
        c.stage1.batch_size = self.batch_size;
        c.stage2.batch_size = self.stage2_batch_size;
        c.stage1_seeds = self.stage1_seeds;
        c.stage2_seeds = self.stage2_seeds;
        c
    }
}

fn run(args: &RunArgs, device: &Device) -> Result<()> {
    let cfg = args.config();
    let out = &args.out.out;
    let clock = Instant::now();
    if args.stage0_only {
        prepare(out, &cfg)?;
        let world = World::new(&cfg.world)?;
        stage0(out, &cfg, &world, device, &Bar::new())?;
        println!("stage 0 done in {:.0} s: {}", clock.elapsed().as_secs_f64(), out.join("stage0").display());
        return Ok(());
    }
    let shard = Shard::parse(&args.shard)?;
    let outcome = sweep(out, &cfg, shard, args.jobs, device, &Bar::new())?;
    let note = format!(
        "Last `meta-ocl run` call: trained {} units, skipped {} finished ones, {:.0} s wall.",
        outcome.trained.len(),
        outcome.skipped.len(),
        clock.elapsed().as_secs_f64()
    );
    let md = report(out, &cfg, &note)?;
    println!("{md}");
    println!("wrote {}", out.join("report.md").display());
    Ok(())
}

fn report_only(args: &OutArgs) -> Result<()> {
    let path = args.out.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let cfg: SweepConfig =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let md = report(&args.out, &cfg, "")?;
    println!("{md}");
    Ok(())
}

fn bench(args: &BenchArgs, device: &Device) -> Result<()> {
    let cfg = BenchConfig {
        batch: args.batch,
        layers: args.layers,
        d_model: args.d_model,
        block: args.block,
        steps: args.steps,
        warmup: args.warmup,
    };
    let r = meta_ocl::bench::bench(&cfg, device)?;
    println!(
        "burn: {} layers, d {}, block {}, batch {} ({}{} tokens/step, {} params): {:.2} ms/step (median of {}), batch {:.2} ms, forward {:.2} ms, backward {:.2} ms apart, {:.0} tokens/s, {} threads",
        cfg.layers,
        cfg.d_model,
        cfg.block,
        cfg.batch,
        r.tokens_per_step,
        if r.packed { " packed" } else { "" },
        r.params,
        r.sec_per_step_median * 1e3,
        cfg.steps,
        r.batch_sec_median * 1e3,
        r.forward_sec_median * 1e3,
        r.backward_sec_median * 1e3,
        r.tokens_per_sec,
        r.threads
    );
    if let Some(path) = &args.json {
        foundation::atomic::write_bytes(path, serde_json::to_string_pretty(&r)?.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    foundation::cli::keep_freed_memory();
    let cli = Cli::parse();
    let result = foundation::cli::device(&cli.device).and_then(|device| match &cli.command {
        Command::Run(a) => run(a, &device),
        Command::Report(a) => report_only(a),
        Command::Bench(a) => bench(a, &device),
    });
    exit_code(result)
}
