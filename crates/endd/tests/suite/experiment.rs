//! One small experiment end to end: report, summary and pictures written; a second run resumes
//! everything from the directory and gives the same figures.

use burn::prelude::Device;
use endd::data::{grid, ring, spiral, SET_RING_AUX, SET_RING_OOD, SET_SPIRAL_TEST, SET_SPIRAL_TRAIN};
use endd::experiment::{run, ExperimentConfig, ExperimentData};
use endd::loss::Anneal;
use endd::model::Arch;
use endd::train::TrainSettings;
use foundation::progress::NoProgress;

#[test]
fn spiral_experiment_writes_report_and_pictures_and_resumes() {
    let dir = std::env::temp_dir().join(format!("endd-experiment-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let settings = TrainSettings {
        epochs: 2,
        batch_size: 32,
        lr: 3e-3,
        final_lr_fraction: 0.1,
        weight_decay: 0.0,
        grad_clip: None,
    };
    let cfg = ExperimentConfig {
        arch: Arch::Mlp { input_dim: 2, hidden: vec![16], classes: 3, input_scale: 0.05 },
        members: 3,
        member_train: settings.clone(),
        student_train: settings,
        anneal: Anneal { t0: 2.5, hold_epochs: 1, decay_epochs: 1 },
        seed: 3,
        ablation: true,
        jobs: 2,
        shard: None,
    };
    let data = ExperimentData {
        name: "test spiral".into(),
        train: spiral(40, 0.4, 3, SET_SPIRAL_TRAIN),
        test: spiral(20, 0.4, 3, SET_SPIRAL_TEST),
        aux: ring(60, 20.0, 3, SET_RING_AUX),
        ood: Some(("ring".into(), ring(60, 20.0, 3, SET_RING_OOD))),
        grid: Some((12, grid(12, 500.0))),
    };
    let first = run(&dir, &cfg, &data, &Device::flex(), &NoProgress).expect("run").expect("whole ensemble");
    for f in ["report.md", "summary.json", "ku-grid.png", "ku-hist-ensemble.png", "ku-hist-end2-aux.png"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let report = std::fs::read_to_string(dir.join("report.md")).expect("report");
    assert!(report.contains("| EnD²+AUX |") && report.contains("Spearman"), "{report}");
    assert_eq!(first.rows.len(), 6);
    assert!(first.rows.iter().all(|r| r.error.is_finite() && r.nll.is_finite()));
    let again = run(&dir, &cfg, &data, &Device::flex(), &NoProgress).expect("rerun").expect("whole ensemble");
    let errors = |s: &endd::experiment::Summary| s.rows.iter().map(|r| (r.error, r.nll)).collect::<Vec<_>>();
    assert_eq!(errors(&first), errors(&again), "a resumed run reuses members and students");
    let _ = std::fs::remove_dir_all(&dir);
}
