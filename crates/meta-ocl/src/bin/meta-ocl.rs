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
use meta_ocl::controls::{controls, run_controls, ControlSettings};
use meta_ocl::harness::{prepare, report, stage0, sweep, Shard, SweepConfig};
use meta_ocl::numeric::{numeric_report, numeric_sweep, NumericSweepConfig};
use meta_ocl::train::StageConfig;
use meta_ocl::vision::{vision_report, vision_sweep, VisionConfig};
use meta_ocl::world::World;

const EXAMPLES: &str = "\
Examples:
  meta-ocl run                                   # reduced world, 8 x 2 seeds, writes runs/meta-ocl/report.md
  meta-ocl run --stage1-seeds 20 --stage2-seeds 5 --jobs 2
  meta-ocl run --out runs/big --stage0-only      # then, on n machines:
  meta-ocl run --out runs/big --shard 3/8        # seeds s with s % 8 == 3
  meta-ocl report --out runs/big                 # report of whatever has finished
  meta-ocl vision                                # MNIST analogue, 20 x 3 seeds, runs/meta-ocl-vision/report.md
  meta-ocl run --swap-tags --tag-consistency 0.5 # a control as its own run
  meta-ocl controls                              # base + 3 controls, 8 x 1 seeds each, runs/meta-ocl-controls/controls.md
  meta-ocl controls --control-batch 32/8 --control-batch 256/64   # two batch-size controls
  meta-ocl numeric                               # numeric set-inclusion task, 4 x 2 seeds
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
    /// The MNIST analogue: two-digit numbers, glyph variables, corner-patch tags, a small CNN.
    Vision(VisionArgs),
    /// Run (or resume) the base settings and the controls (swapped tag roles, 50 % tag–consistency
    /// correlation, another batch size) as sibling run directories under --out, then write
    /// controls.md and controls.png.
    Controls(ControlsArgs),
    /// The numeric set-inclusion task from scratch (q-only stage, stage 1, stage 2 per seed;
    /// resumable), then its report.md and em.png.
    Numeric(NumericArgs),
    /// Time training steps of the transformer (tokens per second; the JAX reference is
    /// bench/meta_ocl_jax.py with the same flags).
    Bench(BenchArgs),
}

#[derive(Args)]
struct VisionArgs {
    /// Run directory.
    #[arg(long, default_value = "runs/meta-ocl-vision")]
    out: PathBuf,
    /// Run only the stage-1 seeds s with s % n == i (`i/n`; stage 0 comes from shard 0).
    #[arg(long, default_value = "0/1")]
    shard: String,
    /// Only write report.md and the plots from the finished seeds in --out.
    #[arg(long)]
    report_only: bool,
    /// MNIST: `embedded` (the subset built into the data crate), `shared` (the shared data
    /// directory's mnist/) or a directory with the four IDX files.
    #[arg(long, default_value = "embedded")]
    mnist: String,
    /// Number of stage-1 seeds.
    #[arg(long, default_value_t = 20)]
    stage1_seeds: usize,
    /// Number of stage-2 seeds per stage-1 seed.
    #[arg(long, default_value_t = 3)]
    stage2_seeds: usize,
    /// Renderings of each number in stage 0.
    #[arg(long, default_value_t = 4)]
    renderings: usize,
    /// Stage-0 epochs.
    #[arg(long, default_value_t = 20)]
    stage0_epochs: usize,
    /// Stage-1 epochs.
    #[arg(long, default_value_t = 40)]
    stage1_epochs: usize,
    /// Stage-2 epochs.
    #[arg(long, default_value_t = 20)]
    stage2_epochs: usize,
    /// Batch size of stage 1.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Batch size of stage 2.
    #[arg(long, default_value_t = 4)]
    stage2_batch_size: usize,
    /// Peak learning rate of stage 1.
    #[arg(long, default_value_t = 1e-3)]
    stage1_lr: f64,
    /// Copies of each stage-1 definition per stage-1 epoch.
    #[arg(long, default_value_t = 1)]
    definition_repeats: usize,
    /// Width of the CNN's hidden layer.
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    /// World seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct NumericArgs {
    /// Run directory.
    #[arg(long, default_value = "runs/meta-ocl-numeric")]
    out: PathBuf,
    /// Run only the stage-1 seeds s with s % n == i (`i/n`; shard 0 trains the q-only stage).
    #[arg(long, default_value = "0/1")]
    shard: String,
    /// Only write report.md and em.png from the finished results in --out (its config.json).
    #[arg(long)]
    report_only: bool,
    /// Number of stage-1 seeds.
    #[arg(long, default_value_t = 4)]
    stage1_seeds: usize,
    /// Number of stage-2 seeds per stage-1 seed.
    #[arg(long, default_value_t = 2)]
    stage2_seeds: usize,
    /// Number of variables.
    #[arg(long, default_value_t = 2000)]
    num_x: usize,
    /// Epochs of the q-only stage.
    #[arg(long, default_value_t = 30)]
    stage0_epochs: usize,
    /// Stage-1 epochs.
    #[arg(long, default_value_t = 20)]
    stage1_epochs: usize,
    /// Stage-2 epochs.
    #[arg(long, default_value_t = 4)]
    stage2_epochs: usize,
    /// Tokens per variable name (2, or 1 with --syllables >= --num-x).
    #[arg(long, default_value_t = 2)]
    variable_tokens: usize,
    /// Syllable tokens variable names are made of.
    #[arg(long, default_value_t = 64)]
    syllables: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// World seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl VisionArgs {
    fn config(&self) -> Result<VisionConfig> {
        let mnist = match self.mnist.as_str() {
            "shared" => {
                data::shared_data_dir().map(|d| d.join("mnist").display().to_string()).ok_or_else(|| {
                    anyhow::anyhow!("--mnist shared: no shared data directory found (set SHARED_DATA_DIR)")
                })?
            }
            other => other.to_string(),
        };
        let d = VisionConfig::default();
        Ok(VisionConfig {
            mnist,
            seed: self.seed,
            renderings: self.renderings,
            stage0: StageConfig { epochs: self.stage0_epochs, ..d.stage0.clone() },
            stage1: StageConfig {
                epochs: self.stage1_epochs,
                batch_size: self.batch_size,
                lr: self.stage1_lr,
                ..d.stage1.clone()
            },
            stage2: StageConfig {
                epochs: self.stage2_epochs,
                batch_size: self.stage2_batch_size,
                ..d.stage2.clone()
            },
            definition_repeats: self.definition_repeats,
            hidden: self.hidden,
            stage1_seeds: self.stage1_seeds,
            stage2_seeds: self.stage2_seeds,
            ..d
        })
    }
}

fn vision(args: &VisionArgs, device: &Device) -> Result<()> {
    let out = &args.out;
    let cfg = if args.report_only {
        let path = out.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
    } else {
        args.config()?
    };
    let mut note = String::new();
    if !args.report_only {
        let clock = Instant::now();
        let outcome = vision_sweep(out, &cfg, Shard::parse(&args.shard)?, device, &Bar::new())?;
        note = format!(
            "Last `meta-ocl vision` call: trained {} stage-1 seeds, skipped {} finished ones, {:.0} s wall.",
            outcome.trained.len(),
            outcome.skipped.len(),
            clock.elapsed().as_secs_f64()
        );
    }
    let md = vision_report(out, &cfg, &note)?;
    println!("{md}");
    println!("wrote {}", out.join("report.md").display());
    Ok(())
}

#[derive(Args)]
struct ControlsArgs {
    /// Directory of the controls' run directories.
    #[arg(long, default_value = "runs/meta-ocl-controls")]
    out: PathBuf,
    /// Concurrent workers per run.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Number of stage-1 seeds of each run.
    #[arg(long, default_value_t = 8)]
    stage1_seeds: usize,
    /// Number of stage-2 seeds per stage-1 seed of each run.
    #[arg(long, default_value_t = 1)]
    stage2_seeds: usize,
    /// Stage-1 tag–consistency correlation of the correlation control.
    #[arg(long, default_value_t = 0.5)]
    control_tag_consistency: f64,
    /// Batch sizes `b1/b2` (stage 1 / stage 2) of a batch-size control; repeat for more than one.
    #[arg(long = "control-batch", default_value = "32/8")]
    control_batches: Vec<String>,
    /// Train nothing: write controls.md, controls.json and controls.png from the finished results
    /// (a run's own report.md: `meta-ocl report --out OUT/NAME`).
    #[arg(long)]
    report_only: bool,
    #[command(flatten)]
    settings: Settings,
}

impl NumericArgs {
    fn config(&self) -> NumericSweepConfig {
        let mut c = NumericSweepConfig::default();
        c.world.num_x = self.num_x;
        c.world.variable_tokens = self.variable_tokens;
        c.world.syllables = self.syllables;
        c.world.seed = self.seed;
        c.model.block = c.world.block();
        c.model.layers = self.layers;
        c.stage0.epochs = self.stage0_epochs;
        c.stage1.epochs = self.stage1_epochs;
        c.stage2.epochs = self.stage2_epochs;
        c.stage1_seeds = self.stage1_seeds;
        c.stage2_seeds = self.stage2_seeds;
        c
    }
}

fn numeric(args: &NumericArgs, device: &Device) -> Result<()> {
    let out = &args.out;
    if args.report_only {
        let path = out.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let cfg: NumericSweepConfig =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        println!("{}", numeric_report(out, &cfg, "")?);
        return Ok(());
    }
    let cfg = args.config();
    let clock = Instant::now();
    let outcome = numeric_sweep(out, &cfg, Shard::parse(&args.shard)?, device, &Bar::new())?;
    let note = format!(
        "Last `meta-ocl numeric` call: trained {} units, skipped {} finished ones, {:.0} s wall.",
        outcome.trained.len(),
        outcome.skipped.len(),
        clock.elapsed().as_secs_f64()
    );
    println!("{}", numeric_report(out, &cfg, &note)?);
    println!("wrote {}", out.join("report.md").display());
    Ok(())
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
    /// Run each batch as this many concurrent microbatches (same loss and gradient; 1: one pass;
    /// the default is the stage trainers' setting).
    #[arg(long, default_value_t = meta_ocl::train::STAGE_MICROBATCHES)]
    microbatches: usize,
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
    #[command(flatten)]
    settings: Settings,
}

/// The settings `run` and `controls` share (everything in config.json but the seed counts).
#[derive(Args)]
struct Settings {
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
    /// Alias pretraining: alias names per entity taught in stage 0 (0: the spec's stage 0 of
    /// facts only).
    #[arg(long, default_value_t = 0)]
    aliases: usize,
    /// Peak learning rate of stage 1.
    #[arg(long, default_value_t = 1e-3)]
    stage1_lr: f64,
    /// Peak learning rate of stage 2.
    #[arg(long, default_value_t = 1e-3)]
    stage2_lr: f64,
    /// AdamW weight decay of every stage.
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// World seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Control: exchange the tag tokens of the reliable (tag 1) and unreliable (tag 2) roles.
    #[arg(long)]
    swap_tags: bool,
    /// Control: stage-1 P(consistent | tag 1) = P(inconsistent | tag 2), in [0, 1] (0.5: the
    /// tags carry no information).
    #[arg(long, default_value_t = 1.0)]
    tag_consistency: f64,
    /// Epochs between EM evaluations during stages 1 and 2 (0: only at the end).
    #[arg(long, default_value_t = 5)]
    eval_every: usize,
    /// Share in [0, 1] of the stage-0 sequences replayed in stage 2 beside its definitions
    /// (0: the authors' definitions only).
    #[arg(long, default_value_t = 0.0)]
    stage2_replay: f64,
}

impl Settings {
    fn config(&self, stage1_seeds: usize, stage2_seeds: usize) -> SweepConfig {
        let mut c = SweepConfig::default();
        c.world.entities = self.entities;
        c.world.seed = self.seed;
        c.world.variable_tokens = self.variable_tokens;
        c.world.syllables = self.syllables;
        c.model.tie_embeddings = self.tie_embeddings;
        c.world.aliases = self.aliases;
        for stage in [&mut c.stage0, &mut c.stage1, &mut c.stage2] {
            stage.weight_decay = self.weight_decay;
        }
        c.model.layers = self.layers;
        c.model.d_model = self.d_model;
        c.model.d_mlp = 4 * self.d_model;
        c.stage0.epochs = self.stage0_epochs;
        c.stage1.epochs = self.stage1_epochs;
        c.stage2.epochs = self.stage2_epochs;
        c.stage1.batch_size = self.batch_size;
        c.stage1.lr = self.stage1_lr;
        c.stage2.lr = self.stage2_lr;
        c.stage2.batch_size = self.stage2_batch_size;
        c.stage1_seeds = stage1_seeds;
        c.stage2_seeds = stage2_seeds;
        c.protocol.swap_tags = self.swap_tags;
        c.protocol.tag_consistency = self.tag_consistency;
        c.eval_every = self.eval_every;
        c.stage2_replay = self.stage2_replay;
        c
    }
}

fn run(args: &RunArgs, device: &Device) -> Result<()> {
    let cfg = args.settings.config(args.stage1_seeds, args.stage2_seeds);
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

/// `b1/b2` as two positive batch sizes.
fn parse_batches(text: &str) -> Result<(usize, usize)> {
    let bad = || anyhow::anyhow!("--control-batch takes b1/b2, two positive batch sizes (got {text:?})");
    let (a, b) = text.split_once('/').ok_or_else(bad)?;
    let (a, b): (usize, usize) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
    if a == 0 || b == 0 {
        return Err(bad());
    }
    Ok((a, b))
}

fn run_all_controls(args: &ControlsArgs, device: &Device) -> Result<()> {
    let base = args.settings.config(args.stage1_seeds, args.stage2_seeds);
    let batch_sizes = args.control_batches.iter().map(|b| parse_batches(b)).collect::<Result<_>>()?;
    let settings = ControlSettings { tag_consistency: args.control_tag_consistency, batch_sizes };
    let list = controls(&base, &settings);
    if args.report_only {
        let note = "Report of the finished results (`meta-ocl controls --report-only`).";
        println!("{}", meta_ocl::controls::controls_report(&args.out, &list, note)?);
        return Ok(());
    }
    let clock = Instant::now();
    let bar = Bar::new();
    let seconds = run_controls(&args.out, &list, args.jobs, device, &bar)?;
    let per_run: Vec<String> =
        list.iter().zip(&seconds).map(|(c, s)| format!("{} {s:.0} s", c.name)).collect();
    let note = format!(
        "Last `meta-ocl controls` call: {:.0} s wall ({}; {} runs of {} x {} seeds, --jobs {}).",
        clock.elapsed().as_secs_f64(),
        per_run.join(", "),
        list.len(),
        args.stage1_seeds,
        args.stage2_seeds,
        args.jobs
    );
    let md = meta_ocl::controls::controls_report(&args.out, &list, &note)?;
    println!("{md}");
    println!("wrote {}", args.out.join("controls.md").display());
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
        microbatches: args.microbatches,
    };
    let r = meta_ocl::bench::bench(&cfg, device)?;
    println!(
        "burn: {} layers, d {}, block {}, batch {}{} ({}{} tokens/step, {} params): {:.2} ms/step (median of {}; CPU {}), batch {:.2} ms, forward {:.2} ms, backward {:.2} ms apart, {:.0} tokens/s, {} threads",
        cfg.layers,
        cfg.d_model,
        cfg.block,
        cfg.batch,
        if cfg.microbatches > 1 { format!(" in {} microbatches", cfg.microbatches) } else { String::new() },
        r.tokens_per_step,
        if r.packed { " packed" } else { "" },
        r.params,
        r.sec_per_step_median * 1e3,
        cfg.steps,
        r.cpu_sec_per_step_median.map_or("n/a".to_string(), |c| format!("{:.2} ms", c * 1e3)),
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
        Command::Vision(a) => vision(a, &device),
        Command::Controls(a) => run_all_controls(a, &device),
        Command::Numeric(a) => numeric(a, &device),
        Command::Bench(a) => bench(a, &device),
    });
    exit_code(result)
}
