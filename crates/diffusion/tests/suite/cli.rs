//! The `ddpm` binary on bad input: a one-line error naming the problem, a non-zero exit, no
//! panic, and nothing destroyed.

use std::path::PathBuf;
use std::process::Command;

use diffusion::sample::Sampler;

fn ddpm(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ddpm")).args(args).output().expect("run ddpm");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
}

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("ddpm-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// Trains a tiny run into `run` (a few images, `steps` steps) with `extra` flags; panics on failure.
fn tiny_run(run: &std::path::Path, steps: &str, extra: &[&str]) {
    let mut args = vec!["train", "--steps", steps, "--per-class", "2", "--out", run.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (ok, err) = ddpm(&args);
    assert!(ok, "{err}");
}

fn assert_clean_error(ok: bool, err: &str, needle: &str) {
    assert!(!ok, "expected failure");
    assert!(err.starts_with("error: "), "not a one-line error: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "more than one line: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.contains(needle), "error does not name the problem ({needle}): {err}");
}

#[test]
fn missing_data_directory_is_a_clear_error() {
    let out = tmp("missing");
    let (ok, err) =
        ddpm(&["train", "--data", "/nonexistent/mnist", "--steps", "1", "--out", out.to_str().unwrap()]);
    assert_clean_error(ok, &err, "/nonexistent/mnist");
}

#[test]
fn corrupt_idx_file_is_a_clear_error() {
    let dir = tmp("corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        std::fs::write(dir.join(f), b"\x00\x00\x08\x03\x00\x00\x00\x05garbage").unwrap();
    }
    let out = dir.join("run");
    let (ok, err) =
        ddpm(&["train", "--data", dir.to_str().unwrap(), "--steps", "1", "--out", out.to_str().unwrap()]);
    assert_clean_error(ok, &err, "train-images-idx3-ubyte");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sampling_from_a_mismatched_checkpoint_is_a_clear_error_and_existing_runs_are_kept() {
    let run = tmp("mismatch");
    tiny_run(&run, "2", &["--samples", "1", "--checkpoint-every", "1"]);
    // Training again into the same directory must refuse rather than overwrite.
    let before = std::fs::read(run.join("checkpoint/ema.safetensors")).unwrap();
    let (ok, err) = ddpm(&["train", "--steps", "2", "--out", run.to_str().unwrap()]);
    assert_clean_error(ok, &err, "--resume");
    assert_eq!(before, std::fs::read(run.join("checkpoint/ema.safetensors")).unwrap());
    // A config that no longer matches the weights.
    let cfg = std::fs::read_to_string(run.join("config.json")).unwrap();
    std::fs::write(run.join("config.json"), cfg.replacen("16", "8", 1)).unwrap();
    let (ok, err) = ddpm(&["sample", "--run", run.to_str().unwrap(), "--n", "1"]);
    assert_clean_error(ok, &err, "ema.safetensors");
    std::fs::remove_dir_all(&run).ok();
}

#[test]
fn unknown_sampler_is_a_clear_error_that_names_it() {
    // A real (tiny) run, so the only thing wrong is the sampler.
    let run = tmp("sampler");
    tiny_run(&run, "1", &["--classes", "0,1", "--size", "8", "--channels", "8,8", "--samples", "0"]);
    let (ok, err) = ddpm(&["sample", "--run", run.to_str().unwrap(), "--n", "1", "--sampler", "euler"]);
    assert_clean_error(ok, &err, "unknown sampler 'euler'");
    // The same run samples with a known sampler: the failure above was the sampler's alone.
    let sample =
        ["sample", "--run", run.to_str().unwrap(), "--n", "1", "--sampler", "ddim", "--sample-steps", "2"];
    let (ok, err) = ddpm(&sample);
    assert!(ok, "{err}");
    std::fs::remove_dir_all(&run).ok();
}

#[test]
fn resume_without_a_checkpoint_says_so() {
    let run = tmp("resume");
    std::fs::create_dir_all(&run).unwrap();
    tiny_run(&run, "1", &["--samples", "0"]);
    // Every checkpoint generation and the pointer go: only config.json is left.
    for entry in std::fs::read_dir(&run).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_str().unwrap().starts_with("checkpoint") {
            if path.is_symlink() || path.is_file() {
                std::fs::remove_file(&path).unwrap();
            } else {
                std::fs::remove_dir_all(&path).unwrap();
            }
        }
    }
    let (ok, err) = ddpm(&["train", "--resume", "--out", run.to_str().unwrap()]);
    assert_clean_error(ok, &err, "nothing to resume");
    std::fs::remove_dir_all(&run).ok();
}

#[test]
fn channels_that_groupnorm_cannot_split_are_a_clear_error() {
    let out = tmp("groups");
    let (ok, err) = ddpm(&["train", "--channels", "4,8", "--steps", "1", "--out", out.to_str().unwrap()]);
    assert_clean_error(ok, &err, "GroupNorm");
    assert!(!out.exists(), "a refused run must write nothing");
}

/// `ddpm sample` without sampler flags draws with the library's one default sampler
/// (`Sampler::default()`, also the sampler of the grid `ddpm train` writes): the same images as
/// the flags spelling that sampler out, and other images than a different eta.
#[test]
fn sample_without_sampler_flags_uses_the_library_default() {
    let Sampler::Ddim { steps, eta } = Sampler::default() else { panic!("the default is a DDIM sampler") };
    let run = tmp("default-sampler");
    tiny_run(&run, "2", &["--samples", "0"]);
    let draw = |name: &str, extra: &[&str]| {
        let png = run.join(name);
        let mut args =
            vec!["sample", "--run", run.to_str().unwrap(), "--n", "4", "--out", png.to_str().unwrap()];
        args.extend_from_slice(extra);
        let (ok, err) = ddpm(&args);
        assert!(ok, "{err}");
        std::fs::read(png).unwrap()
    };
    let (steps, eta, other_eta) = (steps.to_string(), eta.to_string(), (1.0 - eta).to_string());
    let default = draw("default.png", &[]);
    let spelled = draw("spelled.png", &["--sampler", "ddim", "--sample-steps", &steps, "--eta", &eta]);
    let other = draw("other.png", &["--sampler", "ddim", "--sample-steps", &steps, "--eta", &other_eta]);
    assert_eq!(default, spelled, "no flags must mean Sampler::default()");
    assert_ne!(default, other, "the check must be able to fail");
    std::fs::remove_dir_all(&run).ok();
}
