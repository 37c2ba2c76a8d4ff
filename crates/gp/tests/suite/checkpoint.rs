//! Checkpoint and resume of the outer loop: a run stopped and resumed takes exactly the steps of
//! the uninterrupted run; a checkpoint refuses other data, other settings and corrupt files.

use crate::common;

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
    // Only this test's files: other tests of this binary share the directory and may run at once.
    for p in [&path, &truncated] {
        std::fs::remove_file(p).ok();
    }
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
    for p in [&ckpt, &straight, &resumed, &temp_path("half.json")] {
        std::fs::remove_file(p).ok();
    }
}

/// Fails the save after step 3 of a 5-step run at each step of the save sequence in turn (through
/// the library's save hook, not timing): the checkpoint on disk is always the last complete one
/// (step 2 before the rename, step 3 after), a stale temp file left by the crash is ignored, and
/// resuming from it ends bit-exactly where the uninterrupted run ends.
#[test]
fn a_save_failed_at_any_step_resumes_from_the_last_complete_checkpoint() {
    use foundation::progress::NoProgress;
    use foundation::tensor_file::{FailAt, SaveFault, SaveStep};
    use gp::experiment::{self, CheckpointPlan, DataConfig, FitConfig};

    /// Passes `inner` to the `save`-th save (0-based) only.
    struct OnSave {
        save: usize,
        seen: usize,
        inner: FailAt,
    }
    impl SaveFault for OnSave {
        fn before(&mut self, step: SaveStep) -> std::io::Result<()> {
            if step == SaveStep::Encode {
                self.seen += 1;
            }
            if self.seen == self.save + 1 {
                self.inner.before(step)
            } else {
                Ok(())
            }
        }
    }

    let ckpt = temp_path("faults.safetensors");
    let config = |resume: bool| FitConfig {
        dataset: "pol".into(),
        data: DataConfig { embedded: true, ..DataConfig::default() },
        subsample: Some(100),
        train: TrainConfig { steps: 5, ..config(Solver::cg(), EstimatorKind::Pathwise, true) },
        exact_metrics_max_n: 0,
        checkpoint: Some(CheckpointPlan { path: ckpt.clone(), every: 1, resume }),
    };
    let straight = FitConfig { checkpoint: None, ..config(false) };
    let whole = experiment::fit(&straight, &NoProgress, &mut |_| {}, &mut |_| {}).unwrap();
    let renamed = SaveStep::ALL.iter().position(|&s| s == SaveStep::Renamed).unwrap();
    for k in 0..SaveStep::ALL.len() {
        std::fs::remove_file(&ckpt).ok();
        let mut fault = OnSave { save: 2, seen: 0, inner: FailAt(k) };
        let err = experiment::fit_with(&config(false), &NoProgress, &mut |_| {}, &mut |_| {}, &mut fault)
            .expect_err("the injected fault must stop the run");
        assert!(err.to_string().contains("injected fault"), "step {k}: {err}");
        // A killed process would leave its torn temp file behind; nothing may read it.
        let tmp = foundation::atomic::tmp_path(&ckpt);
        if k < renamed {
            std::fs::write(&tmp, b"torn").unwrap();
        }
        let stored = TrainCheckpoint::load(&ckpt).unwrap();
        assert_eq!(stored.records.len(), if k == renamed { 3 } else { 2 }, "step {k}");
        let resumed = experiment::fit(&config(true), &NoProgress, &mut |_| {}, &mut |_| {}).unwrap();
        assert_eq!(resumed.records.len(), 5);
        assert_eq!(resumed.final_hyper, whole.final_hyper, "step {k}: final θ");
        for (a, b) in resumed.records.iter().zip(&whole.records) {
            assert_eq!(a.hyper, b.hyper, "step {k}, record {}", a.step);
            assert_eq!(a.solver_iterations, b.solver_iterations, "step {k}, record {}", a.step);
        }
        assert_eq!(resumed.pathwise_metrics, whole.pathwise_metrics, "step {k}");
        std::fs::remove_file(&tmp).ok();
    }
    std::fs::remove_file(&ckpt).ok();
}

/// `igp fit --resume` with no checkpoint at the path stops with one line instead of starting over.
#[test]
fn igp_fit_resume_without_a_checkpoint_says_so() {
    let exe = env!("CARGO_BIN_EXE_igp");
    let ckpt = temp_path("never-written.safetensors");
    std::fs::remove_file(&ckpt).ok();
    let out = std::process::Command::new(exe)
        .args([
            "fit",
            "--embedded",
            "--subsample",
            "100",
            "--steps",
            "2",
            "--quiet",
            "--resume",
            "--checkpoint",
        ])
        .arg(&ckpt)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a resume without a checkpoint started over");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    let expected = format!("no checkpoint at {}; run without --resume to start fresh", ckpt.display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!ckpt.exists(), "a checkpoint was written");
}
