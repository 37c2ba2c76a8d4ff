//! `ddpm`: train, sample, score and benchmark DDPMs on MNIST.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use burn::prelude::*;
use clap::{Args, Parser, Subcommand};
use diffusion::bench::{table, BenchConfig};
use diffusion::checkpoint::write_atomic;
use diffusion::jobs::{model_kind, ElboJob, SampleJob, TrainJob};
use diffusion::run::{DataArgs, DataSpec, RunConfig};
use diffusion::{
    DiffusionConfig, LossWeighting, ModelConfig, Parametrisation, ReverseVariance, Sampler, ScheduleConfig,
    ScheduleKind, TrainConfig, UNetConfig,
};
use foundation::cli::{exit_code, Bar};

const EXAMPLES: &str = "\
Examples:
  ddpm train                                   # embedded MNIST subset, 14x14, writes runs/ddpm/samples.png
  ddpm train --data ../shared/data/mnist --size 28 --steps 3000 --out runs/mnist28
  ddpm train --out runs/mnist28 --resume       # continue from the last checkpoint
  ddpm sample --run runs/mnist28 --n 1000 --eval --data ../shared/data/mnist
  ddpm elbo --run runs/mnist28 --n 500 --data ../shared/data/mnist
  ddpm bench                                   # steps/s at 28x28 and 14x14 vs the JAX reference";

#[derive(Parser)]
#[command(name = "ddpm", version, about = "Denoising diffusion models built the six-simple-steps way", after_help = EXAMPLES)]
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
    /// Train a model (resumable), then write a grid of samples.
    Train(TrainArgs),
    /// Draw samples from a trained run; optionally score them with the MNIST classifier.
    Sample(SampleArgs),
    /// Test-set negative ELBO in bits/dim.
    Elbo(ElboArgs),
    /// Training steps per second of the U-Net, side by side with the JAX reference.
    Bench(BenchArgs),
}

#[derive(Args)]
struct TrainArgs {
    /// Run directory (config, checkpoints, samples).
    #[arg(long, default_value = "runs/ddpm")]
    out: PathBuf,
    /// Continue the run in --out from its last checkpoint, with its stored settings.
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    data: DataArgs,
    /// Optimisation steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Batch size.
    #[arg(long)]
    batch: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Warmup steps.
    #[arg(long)]
    warmup: Option<usize>,
    /// EMA decay.
    #[arg(long)]
    ema: Option<f64>,
    /// U-Net channels per level, e.g. 32,64.
    #[arg(long, value_delimiter = ',')]
    channels: Option<Vec<usize>>,
    /// Residual blocks per level.
    #[arg(long)]
    blocks: Option<usize>,
    /// The upsampling conv outputs the channels of the level it upsamples into (cheaper net).
    #[arg(long)]
    upsample_to_level_channels: bool,
    /// Dropout in residual blocks.
    #[arg(long)]
    dropout: Option<f64>,
    /// Noise schedule.
    #[arg(long, value_enum)]
    schedule: Option<ScheduleKind>,
    /// Network output.
    #[arg(long, value_enum)]
    parametrisation: Option<Parametrisation>,
    /// Loss weighting over timesteps.
    #[arg(long, value_enum)]
    weighting: Option<LossWeighting>,
    /// Seed of every random draw.
    #[arg(long)]
    seed: Option<u64>,
    /// Split each batch into this many microbatches whose passes run concurrently (fills the
    /// serial stretches of the CPU ops; needs --dropout 0). Default: 2, or 1 with --dropout.
    #[arg(long)]
    microbatches: Option<usize>,
    /// Write a checkpoint every this many steps.
    #[arg(long, default_value_t = 250)]
    checkpoint_every: usize,
    /// Samples in the final grid.
    #[arg(long, default_value_t = 64)]
    samples: usize,
}

impl TrainArgs {
    fn any_setting(&self) -> bool {
        self.data.any()
            || self.steps.is_some()
            || self.batch.is_some()
            || self.lr.is_some()
            || self.warmup.is_some()
            || self.ema.is_some()
            || self.channels.is_some()
            || self.blocks.is_some()
            || self.upsample_to_level_channels
            || self.dropout.is_some()
            || self.schedule.is_some()
            || self.parametrisation.is_some()
            || self.weighting.is_some()
            || self.seed.is_some()
            || self.microbatches.is_some()
    }

    fn config(&self) -> RunConfig {
        // The default run: the embedded data at 14x14, settings chosen by measurement so that a
        // newcomer gets recognisable digits of every class in under 5 minutes on 2 cores
        // (docs/ddpm.md, "The default run"): three levels (14 -> 7 -> 4, the receptive field
        // two levels lack), narrow channels, the cosine schedule, learning rate 2e-3, two
        // concurrent microbatches.
        let mut data = DataSpec { size: 14, ..DataSpec::default() };
        self.data.apply(&mut data);
        let size = data.size;
        let model = ModelConfig::Unet(UNetConfig {
            height: size,
            width: size,
            channels: self.channels.clone().unwrap_or_else(|| vec![16, 32, 32]),
            blocks_per_level: self.blocks.unwrap_or(1),
            dropout: self.dropout.unwrap_or(0.0),
            upsample_to_level_channels: self.upsample_to_level_channels,
            ..UNetConfig::default()
        });
        let diffusion = DiffusionConfig {
            schedule: ScheduleConfig {
                kind: self.schedule.unwrap_or(ScheduleKind::Cosine),
                ..ScheduleConfig::default()
            },
            parametrisation: self.parametrisation.unwrap_or(Parametrisation::Epsilon),
            weighting: self.weighting.unwrap_or(LossWeighting::Simple),
        };
        let defaults = TrainConfig::default();
        let train = TrainConfig {
            steps: self.steps.unwrap_or(4000),
            batch_size: self.batch.unwrap_or(64),
            lr: self.lr.unwrap_or(2e-3),
            warmup_steps: self.warmup.unwrap_or(defaults.warmup_steps),
            ema_decay: self.ema.unwrap_or(0.995),
            seed: self.seed.unwrap_or(0),
            microbatches: self.microbatches.unwrap_or(if self.dropout.unwrap_or(0.0) > 0.0 { 1 } else { 2 }),
            ..defaults
        };
        RunConfig { model, diffusion, train, data }
    }
}

/// Sampler flags; with none given they select `Sampler::default()` (a test checks that).
#[derive(Args)]
struct SamplerArgs {
    /// ancestral (T steps) or ddim (--sample-steps steps).
    #[arg(long, default_value = "ddim")]
    sampler: String,
    /// Reverse variance of the ancestral sampler.
    #[arg(long, value_enum, default_value = "beta-tilde")]
    variance: ReverseVariance,
    /// DDIM steps.
    #[arg(long, default_value_t = 100)]
    sample_steps: usize,
    /// DDIM eta (0 = deterministic, 1 = fresh noise at every step).
    #[arg(long, default_value_t = 1.0)]
    eta: f64,
}

impl SamplerArgs {
    fn sampler(&self) -> Result<Sampler> {
        Sampler::from_name(&self.sampler, self.variance, self.sample_steps, self.eta)
            .map_err(anyhow::Error::msg)
    }
}

#[derive(Args)]
struct SampleArgs {
    /// Run directory of a trained model.
    #[arg(long, default_value = "runs/ddpm")]
    run: PathBuf,
    /// Number of samples (256 by default: the Fréchet distance of --eval is too noisy with fewer).
    #[arg(long, default_value_t = 256)]
    n: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output PNG grid (default: RUN/samples-SEED.png; at most 256 images are drawn).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Score the samples with the project's MNIST classifier (Frechet distance, confident share,
    /// class histogram); writes RUN/quality.json.
    #[arg(long)]
    eval: bool,
    /// MNIST directory for the reference statistics of --eval (default: embedded subset).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Images drawn per batch.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    #[command(flatten)]
    sampler: SamplerArgs,
}

#[derive(Args)]
struct ElboArgs {
    /// Run directory of a trained model.
    #[arg(long, default_value = "runs/ddpm")]
    run: PathBuf,
    /// MNIST directory (default: embedded test subset).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Number of test images.
    #[arg(long, default_value_t = 500)]
    n: usize,
    /// Stratified timesteps per image for the KL sum.
    #[arg(long, default_value_t = 100)]
    t_samples: usize,
    /// Reverse variance of the model.
    #[arg(long, value_enum, default_value = "beta")]
    variance: ReverseVariance,
    /// Seed of the dequantisation and noise draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct BenchArgs {
    /// Image sizes to benchmark.
    #[arg(long, value_delimiter = ',', default_value = "28,14")]
    sizes: Vec<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Timed steps per size (after 2 warm-up steps).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Skip the JAX reference.
    #[arg(long)]
    no_jax: bool,
    /// Write the markdown table here as well.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    foundation::cli::keep_freed_memory();
    let cli = Cli::parse();
    let result = foundation::cli::device(&cli.device).and_then(|dev| match cli.command {
        Command::Train(a) => train(a, &dev),
        Command::Sample(a) => sample_cmd(a, &dev),
        Command::Elbo(a) => elbo_cmd(a, &dev),
        Command::Bench(a) => bench(a, &dev),
    });
    exit_code(result)
}

fn train(args: TrainArgs, dev: &Device) -> Result<()> {
    let config = if args.resume {
        if args.any_setting() {
            bail!(
                "--resume takes every setting from {}; drop the other training flags",
                RunConfig::path(&args.out).display()
            );
        }
        None
    } else {
        Some(args.config())
    };
    let job =
        TrainJob { out: args.out, config, checkpoint_every: args.checkpoint_every, samples: args.samples };
    let r = job.run(dev, &Bar::new())?;
    let (c, side) = (&r.config, r.config.data.size);
    eprintln!(
        "trained {} on {} images {side}x{side} ({} params) from step {} to {} in {:.1} s",
        model_kind(&c.model),
        r.images,
        r.params,
        r.first_step,
        c.train.steps,
        r.seconds
    );
    if let Some(png) = r.samples_png {
        println!("{}", png.display());
    }
    Ok(())
}

fn sample_cmd(args: SampleArgs, dev: &Device) -> Result<()> {
    let job = SampleJob {
        sampler: args.sampler.sampler()?,
        run: args.run,
        n: args.n,
        seed: args.seed,
        out: args.out,
        eval: args.eval,
        data: args.data,
        batch: args.batch,
    };
    let r = job.run(dev, &Bar::new())?;
    println!("{} ({} samples in {:.1} s)", r.png.display(), r.n, r.seconds);
    if let Some(q) = r.quality {
        println!("{}", serde_json::to_string_pretty(&q)?);
    }
    Ok(())
}

fn elbo_cmd(args: ElboArgs, dev: &Device) -> Result<()> {
    let job = ElboJob {
        run: args.run,
        data: args.data,
        n: args.n,
        t_samples: args.t_samples,
        variance: args.variance,
        seed: args.seed,
    };
    let r = job.run(dev, &Bar::new())?;
    println!(
        "{{\"images\":{},\"bits_per_dim\":{:.4},\"standard_error\":{:.4},\"t_samples\":{}}}",
        r.images, r.bits_per_dim, r.standard_error, r.t_samples
    );
    Ok(())
}

fn bench(args: BenchArgs, dev: &Device) -> Result<()> {
    let config = BenchConfig { sizes: args.sizes, batch: args.batch, steps: args.steps, jax: !args.no_jax };
    let rows = config.run(dev, &Bar::new())?;
    for r in &rows {
        if let Some(note) = &r.jax_note {
            eprintln!("{note}");
        }
        let jax = r.jax.map_or("n/a".to_string(), |j| format!("{j:.3}"));
        eprintln!(
            "size {}: rust {:.3} s/step (2 microbatches {:.3}), jax {jax}",
            r.size, r.rust, r.rust_microbatches
        );
    }
    let table = table(&rows);
    println!("{table}");
    if let Some(out) = args.out {
        write_atomic(&out, format!("{table}\n").as_bytes())?;
    }
    Ok(())
}
