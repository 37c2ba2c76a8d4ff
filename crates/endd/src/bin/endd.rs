//! `endd`: ensemble distribution distillation experiments. Argument parsing and printing only:
//! the work is in [`endd::experiment`].

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::prelude::Device;
use clap::{Args, Parser, Subcommand};
use endd::data::{self as ddata, SPIRAL_CLASSES};
use endd::experiment::{self, ExperimentConfig, ExperimentData, Summary};
use endd::loss::Anneal;
use endd::model::Arch;
use endd::train::{Shard, TrainSettings};
use foundation::cli::Bar;

#[derive(Parser, Debug)]
#[command(
    name = "endd",
    version,
    about = "Ensemble distribution distillation (EnD, EnD², EnD²+AUX): train an ensemble, distil it into one \
             network, compare uncertainties. Without a subcommand: the MNIST run on the embedded subset.",
    after_help = "Examples:\n  \
        endd                                  # MNIST, embedded 5000/1000 subset, into runs/endd-mnist\n  \
        endd spiral --out runs/endd-spiral    # the authors' spiral, 100 members, ring as AUX/OOD\n  \
        endd spiral --shard 0/4 --out DIR     # train a quarter of the ensemble (rerun without --shard after)\n  \
        endd mnist --mnist ../shared/data/mnist --train-size 20000 --jobs 2 --out runs/endd-mnist-20k"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Compute device: cpu (burn flex backend), cuda or wgpu (need the cargo features `cuda` /
    /// `wgpu`).
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Three-class spiral (MLPs), noisy ring of radius 410 as AUX and OOD; writes report.md and
    /// ku-grid.png.
    Spiral(SpiralArgs),
    /// MNIST (small CNNs), augmented/noised MNIST as AUX, Fashion-MNIST as OOD; writes report.md and
    /// KU histograms.
    Mnist(MnistArgs),
    /// Time a member step and an EnD² step of the same network here and in JAX
    /// (bench/endd_step.py, on CPU); prints the ratio JAX time / Rust time (>= 1: Rust is faster).
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Network: the spiral MLP or the MNIST CNN.
    #[arg(long, default_value = "cnn", value_parser = ["cnn", "mlp"])]
    arch: String,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Timed steps (median) after 3 warm-up steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Skip the JAX side.
    #[arg(long)]
    no_jax: bool,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Output directory (resumes a run found there).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Ensemble size M.
    #[arg(long)]
    members: Option<usize>,
    /// Seed of data, initialisation and order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Local worker threads training members.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Train only members m with m % n == i ("i/n"), then stop.
    #[arg(long)]
    shard: Option<String>,
    /// Member epochs.
    #[arg(long)]
    member_epochs: Option<usize>,
    /// Student epochs.
    #[arg(long)]
    student_epochs: Option<usize>,
    /// Member peak learning rate.
    #[arg(long)]
    member_lr: Option<f64>,
    /// Student peak learning rate.
    #[arg(long)]
    student_lr: Option<f64>,
    /// Clip the students' global gradient norm to this value (0: no clipping).
    #[arg(long)]
    student_clip: Option<f64>,
    /// Initial temperature T0 (1 switches annealing off).
    #[arg(long)]
    t0: Option<f64>,
    /// Epochs held at T0.
    #[arg(long)]
    hold_epochs: Option<usize>,
    /// Epochs of the linear decay from T0 to 1.
    #[arg(long)]
    decay_epochs: Option<usize>,
    /// Skip the no-annealing ablation student.
    #[arg(long)]
    no_ablation: bool,
}

#[derive(Args, Debug)]
struct SpiralArgs {
    #[command(flatten)]
    common: Common,
    /// Training points per class.
    #[arg(long, default_value_t = 1000)]
    per_class: usize,
    /// Test points per class.
    #[arg(long, default_value_t = 1000)]
    test_per_class: usize,
    /// Spiral noise (standard deviation per n^1.5).
    #[arg(long, default_value_t = 0.4)]
    noise: f64,
    /// Ring points used as AUX (the same number again is drawn as OOD test inputs).
    #[arg(long, default_value_t = 3000)]
    ring: usize,
    /// Scale applied to the points before the first layer.
    #[arg(long, default_value_t = 0.05)]
    input_scale: f64,
    /// Side of the input grid of the KU pictures and the Spearman correlation.
    #[arg(long, default_value_t = 200)]
    grid: usize,
}

#[derive(Args, Debug)]
struct MnistArgs {
    #[command(flatten)]
    common: Common,
    /// Directory with the four MNIST IDX files (default: the embedded 5000/1000 subset).
    #[arg(long)]
    mnist: Option<PathBuf>,
    /// Use this many training images (balanced subset of the full set; 0: all).
    #[arg(long, default_value_t = 0)]
    train_size: usize,
    /// Use this many test images (0: all).
    #[arg(long, default_value_t = 0)]
    test_size: usize,
    /// Fashion-MNIST directory (OOD); default `<shared data>/fashion-mnist` if found.
    #[arg(long)]
    fashion: Option<PathBuf>,
    /// Number of OOD images.
    #[arg(long, default_value_t = 1000)]
    ood_size: usize,
    /// Auxiliary images per training image.
    #[arg(long, default_value_t = 1.0)]
    aux_ratio: f64,
}

/// The no-subcommand run: `endd mnist` with every default.
#[derive(Parser, Debug)]
struct DefaultRun {
    #[command(flatten)]
    args: MnistArgs,
}

fn settings(epochs: usize, batch_size: usize, lr: f64) -> TrainSettings {
    TrainSettings { epochs, batch_size, lr, final_lr_fraction: 0.02, weight_decay: 0.0, grad_clip: None }
}

fn config(
    c: &Common,
    arch: Arch,
    members: usize,
    member: TrainSettings,
    student: TrainSettings,
    anneal: Anneal,
) -> Result<ExperimentConfig> {
    let shard = c.shard.as_deref().map(Shard::parse).transpose()?;
    let t0 = c.t0.unwrap_or(anneal.t0);
    Ok(ExperimentConfig {
        arch,
        members: c.members.unwrap_or(members),
        member_train: TrainSettings {
            epochs: c.member_epochs.unwrap_or(member.epochs),
            lr: c.member_lr.unwrap_or(member.lr),
            ..member
        },
        student_train: TrainSettings {
            epochs: c.student_epochs.unwrap_or(student.epochs),
            lr: c.student_lr.unwrap_or(student.lr),
            grad_clip: c.student_clip.map_or(student.grad_clip, |v| (v > 0.0).then_some(v)),
            ..student
        },
        anneal: Anneal {
            t0,
            hold_epochs: c.hold_epochs.unwrap_or(anneal.hold_epochs),
            decay_epochs: c.decay_epochs.unwrap_or(anneal.decay_epochs),
        },
        seed: c.seed,
        ablation: !c.no_ablation,
        jobs: c.jobs,
        shard,
    })
}

fn print(summary: &Option<Summary>, out: &std::path::Path) {
    match summary {
        None => println!("shard trained; run the other shards, then the same command without --shard"),
        Some(s) => {
            // A single model (and EnD) has no knowledge uncertainty: its KU AUROC is undefined.
            let pct = |v: f64| if v.is_finite() { format!("{v:5.1} %") } else { "    – ".to_string() };
            for r in &s.rows {
                println!(
                    "{:<24} error {:6.2} %  NLL {:.3}  OOD AUROC KU {}  TU {}",
                    r.model,
                    r.error,
                    r.nll,
                    pct(r.ood_auroc[2]),
                    pct(r.ood_auroc[0])
                );
            }
            if let Some([a, b]) = s.grid_spearman {
                println!("Spearman KU over the grid: ensemble vs EnD²+AUX {a:.3}, vs EnD² {b:.3}");
            }
            println!("wrote {}", out.join("report.md").display());
        }
    }
}

fn spiral(a: SpiralArgs, device: &Device) -> Result<()> {
    let arch = Arch::Mlp {
        input_dim: 2,
        hidden: vec![100, 100],
        classes: SPIRAL_CLASSES,
        input_scale: a.input_scale,
    };
    let cfg = config(
        &a.common,
        arch,
        100,
        settings(300, 100, 3e-3),
        settings(300, 100, 1e-3),
        Anneal { t0: 2.5, hold_epochs: 50, decay_epochs: 150 },
    )?;
    let out = a.common.out.clone().unwrap_or_else(|| PathBuf::from("runs/endd-spiral"));
    let seed = cfg.seed;
    let train = ddata::spiral(a.per_class, a.noise, seed, ddata::SET_SPIRAL_TRAIN);
    let data = ExperimentData {
        name: format!("spiral (3 classes, noise {}), ring of radius 410 as AUX and OOD", a.noise),
        test: ddata::spiral(a.test_per_class, a.noise, seed, ddata::SET_SPIRAL_TEST),
        train,
        aux: ddata::ring(a.ring, 20.0, seed, ddata::SET_RING_AUX),
        ood: Some(("noisy ring, radius 410".into(), ddata::ring(a.ring, 20.0, seed, ddata::SET_RING_OOD))),
        grid: Some((a.grid, ddata::grid(a.grid, 500.0))),
    };
    let bar = Bar::new();
    let summary = experiment::run(&out, &cfg, &data, device, &bar)?;
    bar.suspend(|| print(&summary, &out));
    Ok(())
}

fn mnist(a: MnistArgs, device: &Device) -> Result<()> {
    let load = |split| data::load_mnist(a.mnist.as_deref(), split).context("loading MNIST");
    let mut train = load(data::Split::Train)?;
    let mut test = load(data::Split::Test)?;
    let seed = a.common.seed;
    if a.train_size > 0 && a.train_size < train.n {
        train = train.balanced_subset(a.train_size / 10, seed);
    }
    if a.test_size > 0 && a.test_size < test.n {
        test = test.subset(a.test_size, seed);
    }
    if let Some(dir) = a.fashion.as_ref().filter(|d| !d.is_dir()) {
        anyhow::bail!("--fashion {}: no such directory", dir.display());
    }
    let fashion = a.fashion.clone().or_else(|| data::shared_data_dir().map(|d| d.join("fashion-mnist")));
    let ood = match fashion.filter(|d| d.is_dir()) {
        Some(dir) => {
            let f = data::load_fashion_mnist(&dir).context("loading Fashion-MNIST")?;
            Some((
                "Fashion-MNIST".to_string(),
                endd::data::from_dataset(&f.subset(a.ood_size.min(f.n), seed)).inputs,
            ))
        }
        None => {
            eprintln!("Fashion-MNIST not found (--fashion DIR): no OOD figures");
            None
        }
    };
    let side = train.height;
    let arch = Arch::Cnn { side, channels: vec![16, 32], hidden: 100, classes: 10 };
    let cfg = config(
        &a.common,
        arch,
        10,
        settings(8, 128, 2e-3),
        settings(16, 128, 2e-3),
        Anneal { t0: 2.5, hold_epochs: 2, decay_epochs: 6 },
    )?;
    let out = a.common.out.clone().unwrap_or_else(|| PathBuf::from("runs/endd-mnist"));
    let train = ddata::from_dataset(&train);
    let n_aux = ((train.inputs.n as f64) * a.aux_ratio).round() as usize;
    let aux = ddata::augmented_mnist(&train.inputs, side, n_aux.max(1), seed);
    let shown = aux.n.min(24);
    data::write_png_grid(&out.join("aux-samples.png"), &aux.x[..shown * side * side], shown, side, side, 12)
        .context("writing aux-samples.png")?;
    let data = ExperimentData {
        name: format!("MNIST ({} training images), augmented/noised MNIST as AUX", train.inputs.n),
        train,
        test: ddata::from_dataset(&test),
        aux,
        ood,
        grid: None,
    };
    let bar = Bar::new();
    let summary = experiment::run(&out, &cfg, &data, device, &bar)?;
    bar.suspend(|| print(&summary, &out));
    Ok(())
}

fn bench(a: BenchArgs, device: &Device) -> Result<()> {
    let arch = if a.arch == "mlp" {
        Arch::Mlp { input_dim: 2, hidden: vec![100, 100], classes: 3, input_scale: 0.05 }
    } else {
        Arch::Cnn { side: 28, channels: vec![16, 32], hidden: 100, classes: 10 }
    };
    let rust = endd::bench::bench_steps(&arch, a.batch, a.steps, 3, device);
    println!(
        "rust {} batch {}: member {:.2} ms/step, EnD² {:.2} ms/step (EnD {:.2} ms/step)",
        a.arch,
        a.batch,
        rust.member_sec * 1e3,
        rust.end2_sec * 1e3,
        rust.end_sec * 1e3
    );
    if a.no_jax {
        return Ok(());
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/endd_step.py");
    let output = std::process::Command::new("python3")
        .arg(&script)
        .args(["--arch", &a.arch, "--batch", &a.batch.to_string(), "--steps", &a.steps.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    anyhow::ensure!(output.status.success(), "{} failed", script.display());
    let text = String::from_utf8_lossy(&output.stdout);
    let last = text.lines().last().context("no output from the JAX script")?;
    let json: serde_json::Value = serde_json::from_str(last).context("JAX script output is not JSON")?;
    let get = |k: &str| json[k].as_f64().with_context(|| format!("JAX output lacks {k}"));
    let (jm, je) = (get("member_sec")?, get("end2_sec")?);
    println!(
        "jax  {} batch {}: member {:.2} ms/step, EnD² {:.2} ms/step",
        a.arch,
        a.batch,
        jm * 1e3,
        je * 1e3
    );
    println!(
        "ratio JAX / Rust (>= 1: Rust faster): member {:.2}x, EnD² {:.2}x; EnD² / member step: Rust {:.2}, JAX {:.2}",
        jm / rust.member_sec,
        je / rust.end2_sec,
        rust.end2_sec / rust.member_sec,
        je / jm
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    foundation::cli::keep_freed_memory();
    let cli = Cli::parse();
    foundation::cli::exit_code(run(cli))
}

fn run(cli: Cli) -> Result<()> {
    let device = foundation::cli::device(&cli.device)?;
    match cli.command {
        Some(Command::Spiral(a)) => spiral(a, &device),
        Some(Command::Mnist(a)) => mnist(a, &device),
        Some(Command::Bench(a)) => bench(a, &device),
        None => mnist(DefaultRun::parse_from(["endd"]).args, &device),
    }
}
