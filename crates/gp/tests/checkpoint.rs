//! Checkpoint and resume of the outer loop: a run stopped and resumed takes exactly the steps of
//! the uninterrupted run; a checkpoint refuses other data, other settings and corrupt files.

mod common;

use gp::checkpoint::TrainCheckpoint;
use gp::estimator::EstimatorKind;
use gp::kernel::KernelKind;
use gp::solvers::{SolveOptions, Solver};
use gp::train::{train, TrainConfig, Trainer};
use gp::GpError;

fn config(solver: Solver, estimator: EstimatorKind, warm: bool) -> TrainConfig {
    TrainConfig {
        kernel: KernelKind::Matern32,
        solver,
        estimator,
        warm_start: warm,
        num_probes: 8,
        num_features: 200,
        learning_rate: 0.1,
        steps: 6,
        solve_options: SolveOptions::default(),
        seed: 99,
        min_noise_scale: 0.0,
        cache_kernel: false,
    }
}

fn temp_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("igp-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn resumed_run_matches_the_uninterrupted_one() {
    let (x, y) = common::synthetic(160, 3, 21);
    // Warm pathwise (frozen RFF draws and carried solution), cold standard with SGD (fresh probes
    // every step and the mini-batch stream), and warm standard with AP.
    let cases = [
        config(Solver::cg(), EstimatorKind::Pathwise, true),
        config(Solver::sgd(), EstimatorKind::Standard, false),
        config(Solver::ap(), EstimatorKind::Standard, true),
    ];
    for (k, cfg) in cases.into_iter().enumerate() {
        let whole = train(x.as_ref(), &y, &cfg, |_| {}).unwrap();

        let mut first = Trainer::new(x.as_ref(), &y, cfg.clone()).unwrap();
        for _ in 0..3 {
            first.step().unwrap();
        }
        let path = temp_path(&format!("case{k}.safetensors"));
        first.checkpoint().save(&path).unwrap();
        drop(first);
        let stored = TrainCheckpoint::load(&path).unwrap();
        let mut resumed = Trainer::resume(x.as_ref(), &y, cfg.clone(), stored).unwrap();
        assert_eq!(resumed.records().len(), 3);
        while !resumed.is_done() {
            resumed.step().unwrap();
        }
        let resumed = resumed.finish().unwrap();

        let name = format!("{} {} warm {}", cfg.solver.name(), cfg.estimator, cfg.warm_start);
        assert_eq!(resumed.final_hyper, whole.final_hyper, "{name}: final θ");
        assert_eq!(resumed.records.len(), whole.records.len());
        for (a, b) in resumed.records.iter().zip(&whole.records) {
            assert_eq!(a.hyper, b.hyper, "{name} step {}", a.step);
            assert_eq!(a.solver_iterations, b.solver_iterations, "{name} step {}", a.step);
            // Steps after the resume are recomputed: bit-identical. The residuals logged before
            // it went through the JSON header, whose float parsing may be one ulp off.
            let tolerance = if a.step < 3 { 1e-14 } else { 0.0 };
            for (ra, rb) in [(a.residual_y, b.residual_y), (a.residual_z, b.residual_z)] {
                assert!((ra - rb).abs() <= tolerance * rb.abs(), "{name} step {}: {ra} vs {rb}", a.step);
            }
        }
        let (a, b) = (resumed.last_solve.unwrap(), whole.last_solve.unwrap());
        assert_eq!(a.hyper, b.hyper);
        assert!(a.solution == b.solution, "{name}: last solution differs");
        assert_eq!(a.features.is_some(), cfg.estimator == EstimatorKind::Pathwise);
    }
}

#[test]
fn a_checkpoint_refuses_other_data_other_settings_and_corrupt_files() {
    let (x, y) = common::synthetic(120, 3, 5);
    let cfg = config(Solver::cg(), EstimatorKind::Pathwise, true);
    let mut trainer = Trainer::new(x.as_ref(), &y, cfg.clone()).unwrap();
    trainer.step().unwrap();
    let path = temp_path("refuse.safetensors");
    trainer.checkpoint().save(&path).unwrap();
    let load = || TrainCheckpoint::load(&path).unwrap();

    // More steps and the kernel cache are allowed to change; the rest is not.
    let longer = TrainConfig { steps: 9, cache_kernel: true, ..cfg.clone() };
    assert!(Trainer::resume(x.as_ref(), &y, longer, load()).is_ok());
    let other_seed = TrainConfig { seed: 1, ..cfg.clone() };
    let err = Trainer::resume(x.as_ref(), &y, other_seed, load()).err().expect("other seed accepted");
    assert!(err.to_string().contains("another configuration"), "{err}");

    let mut y2 = y.clone();
    y2[17] += 1e-9;
    let err = Trainer::resume(x.as_ref(), &y2, cfg.clone(), load()).err().expect("other data accepted");
    assert!(err.to_string().contains("other training data"), "{err}");

    // Truncated and non-checkpoint files name the problem.
    let bytes = std::fs::read(&path).unwrap();
    let truncated = temp_path("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = TrainCheckpoint::load(&truncated).unwrap_err();
    assert!(matches!(err, GpError::TensorFile(_)), "{err}");
    assert!(err.to_string().contains("not a tensor file of kind 'igp'"), "{err}");
    assert!(!err.to_string().contains('\n'), "{err}");
    let missing = TrainCheckpoint::load(&temp_path("nosuch.safetensors")).unwrap_err();
    assert!(matches!(missing, GpError::Io { .. }), "{missing}");
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
}

/// Through the binary: `--steps 2 --checkpoint F`, then `--resume --steps 4`, writes the same
/// per-step θ as a straight 4-step run; an existing checkpoint is not overwritten without
/// `--resume`.
#[test]
fn igp_fit_resumes_from_its_checkpoint() {
    let exe = env!("CARGO_BIN_EXE_igp");
    let ckpt = temp_path("fit.safetensors");
    let run = |steps: &str, extra: &[&str], out: &std::path::Path| {
        std::process::Command::new(exe)
            .args(["fit", "--embedded", "--subsample", "120", "--probes", "8", "--features", "100"])
            .args(["--solver", "cg", "--warm-start", "--quiet", "--steps", steps, "--out"])
            .arg(out)
            .args(extra)
            .output()
            .unwrap()
    };
    let ckpt_arg = ckpt.to_str().unwrap();
    let straight = temp_path("straight.json");
    let resumed = temp_path("resumed.json");
    assert!(run("4", &[], &straight).status.success());
    assert!(run("2", &["--checkpoint", ckpt_arg], &temp_path("half.json")).status.success());
    let again = run("2", &["--checkpoint", ckpt_arg], &temp_path("half.json"));
    assert!(!again.status.success(), "existing checkpoint overwritten");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.trim().lines().count() == 1 && stderr.contains("already exists"), "{stderr}");
    let out = run("4", &["--checkpoint", ckpt_arg, "--resume"], &resumed);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let read = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let (a, b) = (read(&straight), read(&resumed));
    let hypers = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        v["records"].as_array().unwrap().iter().map(|r| r["hyper"].clone()).collect()
    };
    assert_eq!(hypers(&a).len(), 4);
    assert_eq!(hypers(&a), hypers(&b));
    assert_eq!(a["final_hyper"], b["final_hyper"]);
    assert_eq!(a["total_solver_epochs"], b["total_solver_epochs"]);
    std::fs::remove_dir_all(ckpt.parent().unwrap()).ok();
}
