//! `ddpm`: train, sample, score and benchmark DDPMs on MNIST.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Result};
use burn::prelude::*;
use clap::{Args, Parser, Subcommand};
use data::{load_mnist, write_png_grid, Split};
use diffusion::checkpoint::{write_atomic, CheckpointError};
use diffusion::elbo::elbo_bits_per_dim;
use diffusion::eval::{default_classifier_path, evaluate_samples};
use diffusion::progress::{bar, exit_code};
use diffusion::run::{load_trained, train_run, DataArgs, DataSpec, RunConfig, TrainEvent};
use diffusion::train::checkpoint_dir;
use diffusion::{
    sample, AnyDenoiser, DiffusionConfig, LossWeighting, ModelConfig, Parametrisation, ReverseVariance,
    Sampler, ScheduleConfig, ScheduleKind, TrainConfig, TrainData, Trainer, UNetConfig,
};
use indicatif::ProgressBar;

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
    /// Compute device: cpu (burn flex backend) or cuda (needs the `cuda` feature).
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
    /// serial stretches of the CPU ops; needs --dropout 0).
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
        // The default run: the embedded data at 14x14.
        let mut data = DataSpec { size: 14, ..DataSpec::default() };
        self.data.apply(&mut data);
        let size = data.size;
        let model = ModelConfig::Unet(UNetConfig {
            height: size,
            width: size,
            channels: self.channels.clone().unwrap_or_else(|| vec![16, 32]),
            blocks_per_level: self.blocks.unwrap_or(1),
            dropout: self.dropout.unwrap_or(0.0),
            upsample_to_level_channels: self.upsample_to_level_channels,
            ..UNetConfig::default()
        });
        let diffusion = DiffusionConfig {
            schedule: ScheduleConfig {
                kind: self.schedule.unwrap_or(ScheduleKind::Linear),
                ..ScheduleConfig::default()
            },
            parametrisation: self.parametrisation.unwrap_or(Parametrisation::Epsilon),
            weighting: self.weighting.unwrap_or(LossWeighting::Simple),
        };
        let defaults = TrainConfig::default();
        let train = TrainConfig {
            steps: self.steps.unwrap_or(1500),
            batch_size: self.batch.unwrap_or(64),
            lr: self.lr.unwrap_or(1e-3),
            warmup_steps: self.warmup.unwrap_or(defaults.warmup_steps),
            ema_decay: self.ema.unwrap_or(0.995),
            seed: self.seed.unwrap_or(0),
            microbatches: self.microbatches.unwrap_or(1),
            ..defaults
        };
        RunConfig { model, diffusion, train, data }
    }
}

#[derive(Args)]
struct SamplerArgs {
    /// ancestral (T steps) or ddim (--sample-steps steps).
    #[arg(long, default_value = "ancestral")]
    sampler: String,
    /// Reverse variance of the ancestral sampler.
    #[arg(long, value_enum, default_value = "beta-tilde")]
    variance: ReverseVariance,
    /// DDIM steps.
    #[arg(long, default_value_t = 100)]
    sample_steps: usize,
    /// DDIM eta (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
}

impl SamplerArgs {
    fn sampler(&self) -> Result<Sampler> {
        Ok(match self.sampler.as_str() {
            "ancestral" => Sampler::Ancestral { variance: self.variance },
            "ddim" => Sampler::Ddim { steps: self.sample_steps, eta: self.eta },
            other => bail!("unknown sampler '{other}' (expected ancestral or ddim)"),
        })
    }
}

#[derive(Args)]
struct SampleArgs {
    /// Run directory of a trained model.
    #[arg(long, default_value = "runs/ddpm")]
    run: PathBuf,
    /// Number of samples.
    #[arg(long, default_value_t = 64)]
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

fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0)),
        other => bail!(
            "unknown or unavailable device '{other}' (built with: cpu{})",
            if cfg!(feature = "cuda") { ", cuda" } else { "" }
        ),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = device(&cli.device).and_then(|dev| match cli.command {
        Command::Train(a) => train(a, &dev),
        Command::Sample(a) => sample_cmd(a, &dev),
        Command::Elbo(a) => elbo_cmd(a, &dev),
        Command::Bench(a) => bench(a, &dev),
    });
    exit_code(result)
}

fn train(args: TrainArgs, dev: &Device) -> Result<()> {
    let ckpt = checkpoint_dir(&args.out);
    let config = if args.resume {
        if args.any_setting() {
            bail!(
                "--resume takes every setting from {}; drop the other training flags",
                RunConfig::path(&args.out).display()
            );
        }
        RunConfig::load(&args.out)?
    } else {
        if ckpt.exists() {
            bail!(
                "{} already holds a checkpoint; pass --resume to continue it or choose another --out",
                args.out.display()
            );
        }
        let c = args.config();
        c.save(&args.out)?;
        c
    };
    let pb = bar(config.train.steps as u64, "train");
    let started = Instant::now();
    let mut smoothed = None::<f32>;
    let mut log = String::new();
    let log_path = args.out.join("train_log.jsonl");
    let state = train_run(&config, &args.out, args.checkpoint_every, dev, |event| {
        match event {
            TrainEvent::Started { step, params, images } => {
                let side = config.data.size;
                let kind = match &config.model {
                    ModelConfig::Unet(_) => "U-Net",
                    ModelConfig::Mlp(_) => "MLP",
                };
                let last = config.train.steps;
                eprintln!(
                    "training {kind} on {images} images {side}x{side} ({params} params) from step {step} to {last}"
                );
                pb.set_position(step as u64);
            }
            TrainEvent::Step { step, loss } => {
                let s = smoothed.map_or(loss, |s| 0.98 * s + 0.02 * loss);
                smoothed = Some(s);
                pb.set_message(format!("loss {s:.4}"));
                pb.inc(1);
                if step % 50 == 0 {
                    log.push_str(&format!("{{\"step\":{step},\"loss\":{s:.6}}}\n"));
                }
            }
            TrainEvent::Checkpoint { .. } => append(&log_path, &std::mem::take(&mut log))?,
        }
        Ok(())
    })?;
    pb.finish();
    eprintln!("trained in {:.1} s", started.elapsed().as_secs_f64());
    if args.samples == 0 {
        return Ok(());
    }
    let model: AnyDenoiser = state.ema;
    let diffusion = config.diffusion();
    let sampler = Sampler::Ancestral { variance: ReverseVariance::BetaTilde };
    let pb = bar(0, "sample");
    let x = sample(&model, &diffusion, &sampler, args.samples, 1, dev, Some(&pb));
    pb.finish();
    let png = args.out.join("samples.png");
    let side = config.data.size;
    write_png_grid(&png, &x, args.samples, side, side, (args.samples as f64).sqrt().ceil() as usize)?;
    println!("{}", png.display());
    Ok(())
}

/// Append `text` to the file at `path` (the training log, written at each checkpoint).
fn append(path: &Path, text: &str) -> Result<(), CheckpointError> {
    use std::io::Write;
    let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)
}

fn sample_cmd(args: SampleArgs, dev: &Device) -> Result<()> {
    let trained = load_trained(&args.run, dev)?;
    let sampler = args.sampler.sampler()?;
    let side = trained.config.data.size;
    let pb = bar(args.n as u64, "sample");
    let mut x = Vec::with_capacity(args.n * side * side);
    let started = Instant::now();
    for (chunk, start) in (0..args.n).step_by(args.batch.max(1)).enumerate() {
        let b = args.batch.min(args.n - start);
        let inner = ProgressBar::hidden();
        x.extend(sample(
            &trained.model,
            &trained.diffusion,
            &sampler,
            b,
            args.seed.wrapping_add(chunk as u64 * 7919),
            dev,
            Some(&inner),
        ));
        pb.inc(b as u64);
    }
    pb.finish();
    let secs = started.elapsed().as_secs_f64();
    let out = args.out.unwrap_or_else(|| args.run.join(format!("samples-{}.png", args.seed)));
    let shown = args.n.min(256);
    write_png_grid(
        &out,
        &x[..shown * side * side],
        shown,
        side,
        side,
        (shown as f64).sqrt().ceil() as usize,
    )?;
    println!("{} ({} samples in {:.1} s)", out.display(), args.n, secs);
    if args.eval {
        let classifier = diffusion::eval::classifier::load_classifier(&default_classifier_path(), dev)?;
        let test = load_mnist(args.data.as_deref(), Split::Test)?;
        let train_ref = load_mnist(args.data.as_deref(), Split::Train)?.subset(args.n.max(2), 12345);
        let q = evaluate_samples(&classifier, &x, args.n, side, side, &test, &train_ref, dev);
        let json = serde_json::to_string_pretty(&q)?;
        write_atomic(&args.run.join("quality.json"), json.as_bytes())?;
        println!("{json}");
    }
    Ok(())
}

fn elbo_cmd(args: ElboArgs, dev: &Device) -> Result<()> {
    let trained = load_trained(&args.run, dev)?;
    let spec = DataSpec { dir: args.data.clone(), ..trained.config.data.clone() };
    let test = spec.load(Split::Test)?.subset(args.n, 0);
    let pb = bar(test.n as u64, "elbo");
    let bpd = elbo_bits_per_dim(
        &trained.model,
        &trained.diffusion,
        &test.images,
        test.n,
        args.variance,
        args.t_samples,
        100,
        args.seed,
        dev,
        Some(&pb),
    );
    pb.finish();
    let mean = bpd.iter().sum::<f64>() / bpd.len() as f64;
    let se = (bpd.iter().map(|b| (b - mean).powi(2)).sum::<f64>() / (bpd.len() as f64 - 1.0).max(1.0)).sqrt()
        / (bpd.len() as f64).sqrt();
    println!(
        "{{\"images\":{},\"bits_per_dim\":{mean:.4},\"standard_error\":{se:.4},\"t_samples\":{}}}",
        test.n, args.t_samples
    );
    Ok(())
}

fn bench(args: BenchArgs, dev: &Device) -> Result<()> {
    let mut rows = vec![
        "| size | batch | params | Rust s/step, 1 pass | Rust s/step, 2 concurrent microbatches | JAX s/step | Rust/JAX throughput (1 pass) | Rust/JAX throughput (2 microbatches) |".to_string(),
        "|---|---|---|---|---|---|---|---|".to_string(),
    ];
    for &size in &args.sizes {
        let config = ModelConfig::Unet(UNetConfig { height: size, width: size, ..UNetConfig::default() });
        let diffusion = diffusion::Diffusion::new(DiffusionConfig::default());
        let n = args.batch * 4;
        let mut rng = diffusion::rng::stream(0, 99, size as u64);
        let rows_data: Vec<f32> = diffusion::rng::normals(&mut rng, n * size * size)
            .into_iter()
            .map(|v| v.clamp(-1.0, 1.0))
            .collect();
        let data = TrainData::new(rows_data, n, size * size);
        // Median seconds per step of the same network and data, one pass or concurrent passes.
        let time_steps = |microbatches: usize| {
            let train =
                TrainConfig { batch_size: args.batch, steps: 1000, microbatches, ..TrainConfig::default() };
            let trainer = Trainer::new(train, &diffusion, &data, dev);
            let mut state = trainer.init_state(|rng, d| config.init_with(rng, d));
            for _ in 0..2 {
                trainer.step(&mut state);
            }
            let mut times: Vec<f64> = (0..args.steps)
                .map(|_| {
                    let t = Instant::now();
                    trainer.step(&mut state);
                    t.elapsed().as_secs_f64()
                })
                .collect();
            times.sort_by(|a, b| a.total_cmp(b));
            (times[times.len() / 2], state.model.num_params())
        };
        let (rust, params) = time_steps(1);
        let (rust2, _) = time_steps(2);
        let jax = if args.no_jax { None } else { run_jax(size, args.batch, args.steps) };
        let (jax_s, ratio, ratio2) = match jax {
            Some(j) => (format!("{j:.3}"), format!("{:.2}x", j / rust), format!("{:.2}x", j / rust2)),
            None => ("n/a".into(), "n/a".into(), "n/a".into()),
        };
        eprintln!("size {size}: rust {rust:.3} s/step (2 microbatches {rust2:.3}), jax {jax_s}");
        rows.push(format!(
            "| {size}x{size} | {} | {params} | {rust:.3} | {rust2:.3} | {jax_s} | {ratio} | {ratio2} |",
            args.batch
        ));
    }
    let table = rows.join("\n");
    println!("{table}");
    if let Some(out) = args.out {
        write_atomic(&out, format!("{table}\n").as_bytes())?;
    }
    Ok(())
}

/// Median seconds per step of `bench/jax_unet_step.py` (which installs JAX if missing).
fn run_jax(size: usize, batch: usize, steps: usize) -> Option<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/jax_unet_step.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args([
            "--size",
            &size.to_string(),
            "--batch",
            &batch.to_string(),
            "--steps",
            &steps.to_string(),
            "--warmup",
            "2",
        ])
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            eprintln!(
                "JAX reference failed: {}",
                String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")
            );
            return None;
        }
        Err(e) => {
            eprintln!("JAX reference not run: {e}");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last()?;
    let v: serde_json::Value = serde_json::from_str(last).ok()?;
    v.get("sec_per_step_median")?.as_f64()
}
