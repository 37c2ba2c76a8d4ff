//! Crash-safe checkpoints: a save killed at any of its write steps leaves a complete checkpoint
//! that a resumed run continues from to bit-identical weights; a resume without a checkpoint is an
//! error, never a restart from step 0.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use burn::module::Module;
use burn::prelude::*;
use diffusion::checkpoint::{CheckpointError, Checkpoints};
use diffusion::ema::flat_params;
use diffusion::run::{resume_run, train_run, DataSpec, RunConfig};
use diffusion::train::checkpoint_dir;
use diffusion::{
    Diffusion, DiffusionConfig, MlpConfig, ModelConfig, TrainConfig, TrainData, Trainer, UNetConfig,
};
use foundation::progress::{NoProgress, Progress};
use foundation::rng::{normals, stream};

fn params<M: Module>(m: &M) -> Vec<Vec<f32>> {
    flat_params(m).into_iter().map(|t| t.into_data().try_into_vec::<f32>().unwrap()).collect()
}

fn fresh_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ddpm-ckpt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn setup() -> (TrainData, Diffusion, TrainConfig, MlpConfig) {
    let n = 40;
    let rows = normals(&mut stream(8, 0, 0), n * 2);
    let cfg = TrainConfig { steps: 6, batch_size: 8, warmup_steps: 2, lr: 1e-2, ..TrainConfig::default() };
    let model = MlpConfig { data_dim: 2, hidden: 16, layers: 1, time_dim: 8 };
    (TrainData::new(rows, n, 2), Diffusion::new(DiffusionConfig::default()), cfg, model)
}

/// Turns the generation of step 2 into the layout written before generations existed: a plain
/// `checkpoint/` directory.
fn make_legacy(run: &Path) {
    let pointer = checkpoint_dir(run);
    std::fs::remove_file(&pointer).unwrap();
    std::fs::rename(run.join("checkpoint-2"), &pointer).unwrap();
}

#[test]
fn a_save_killed_at_any_write_step_resumes_to_bit_identical_weights() {
    let (data, diff, cfg, mlp) = setup();
    let trainer = Trainer::new(cfg.clone(), &diff, &data, &Device::flex());
    let init = |rng: &mut _, d: &Device| mlp.init_with(rng, d);
    let mut straight = trainer.init_state(init);
    let losses: Vec<f32> = (0..6).map(|_| trainer.step(&mut straight)).collect();

    // Count the write steps of a save that replaces a generation (and of one that migrates the
    // old layout).
    for legacy in [false, true] {
        let count_dir = fresh_dir(&format!("count-{legacy}"));
        let ckpt = checkpoint_dir(&count_dir);
        let mut state = trainer.init_state(init);
        (0..2).for_each(|_| _ = trainer.step(&mut state));
        trainer.save(&state, &ckpt).unwrap();
        if legacy {
            make_legacy(&count_dir);
        }
        (0..2).for_each(|_| _ = trainer.step(&mut state));
        let mut steps = 0;
        trainer
            .save_with_hook(&state, &ckpt, &mut |_| {
                steps += 1;
                false
            })
            .unwrap();
        assert!(steps >= 10, "only {steps} write steps");
        std::fs::remove_dir_all(&count_dir).ok();

        for kill_at in 0..steps {
            let dir = fresh_dir(&format!("kill-{legacy}-{kill_at}"));
            let ckpt = checkpoint_dir(&dir);
            let mut state = trainer.init_state(init);
            (0..2).for_each(|_| _ = trainer.step(&mut state));
            trainer.save(&state, &ckpt).unwrap();
            if legacy {
                make_legacy(&dir);
            }
            (0..2).for_each(|_| _ = trainer.step(&mut state));
            let err = trainer.save_with_hook(&state, &ckpt, &mut |k| k == kill_at).unwrap_err();
            assert!(matches!(err, CheckpointError::Interrupted { at } if at == kill_at), "{err}");
            drop(state);

            let mut resumed = trainer.load(&ckpt, |d| mlp.init(d)).unwrap();
            assert!(resumed.step == 2 || resumed.step == 4, "kill at {kill_at}: resumed at {}", resumed.step);
            let start = resumed.step;
            let tail: Vec<f32> = (start..6).map(|_| trainer.step(&mut resumed)).collect();
            assert_eq!(tail, losses[start..], "kill at {kill_at} (legacy {legacy}): losses differ");
            assert_eq!(params(&resumed.model), params(&straight.model), "kill at {kill_at}: weights differ");
            assert_eq!(params(&resumed.ema), params(&straight.ema), "kill at {kill_at}: EMA differs");
            // The next save cleans up whatever the killed one left, and keeps one generation.
            trainer.save(&resumed, &ckpt).unwrap();
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            assert_eq!(names, ["checkpoint", "checkpoint-6"], "kill at {kill_at}");
            assert!(std::fs::symlink_metadata(&ckpt).unwrap().file_type().is_symlink());
            std::fs::remove_dir_all(&dir).ok();
        }
    }
}

#[test]
fn the_old_checkpoint_layout_still_loads() {
    let (data, diff, cfg, mlp) = setup();
    let trainer = Trainer::new(cfg, &diff, &data, &Device::flex());
    let mut state = trainer.init_state(|rng, d| mlp.init_with(rng, d));
    trainer.step(&mut state);
    trainer.step(&mut state);
    let dir = fresh_dir("legacy");
    let ckpt = checkpoint_dir(&dir);
    trainer.save(&state, &ckpt).unwrap();
    make_legacy(&dir);
    assert!(ckpt.join("state.json").is_file() && ckpt.join("ema.safetensors").is_file());
    assert_eq!(Checkpoints::new(&ckpt).latest(), Some(ckpt.clone()));
    let loaded = trainer.load(&ckpt, |d| mlp.init(d)).unwrap();
    assert_eq!(loaded.step, 2);
    assert_eq!(params(&loaded.model), params(&state.model));

    // The older save killed between its two renames left only `checkpoint.old/`: still found.
    std::fs::rename(&ckpt, dir.join("checkpoint.old")).unwrap();
    let mut loaded = trainer.load(&ckpt, |d| mlp.init(d)).unwrap();
    assert_eq!(loaded.step, 2);
    assert_eq!(params(&loaded.ema), params(&state.ema));
    trainer.step(&mut loaded);
    trainer.save(&loaded, &ckpt).unwrap();
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["checkpoint", "checkpoint-3"]);
    std::fs::remove_dir_all(&dir).ok();
}

/// Counts progress units.
#[derive(Default)]
struct Count {
    total: AtomicU64,
    done: AtomicU64,
}

impl Progress for Count {
    fn start(&self, _label: &str, total: u64) {
        self.total.store(total, SeqCst);
    }
    fn advance(&self, units: u64) {
        self.done.fetch_add(units, SeqCst);
    }
}

fn tiny_run_config() -> RunConfig {
    RunConfig {
        model: ModelConfig::Unet(UNetConfig {
            height: 8,
            width: 8,
            channels: vec![4],
            groups: 2,
            ..UNetConfig::default()
        }),
        diffusion: Default::default(),
        train: TrainConfig { steps: 2, batch_size: 4, warmup_steps: 1, ..TrainConfig::default() },
        data: DataSpec { classes: vec![0, 1], size: 8, per_class: Some(4), ..DataSpec::default() },
    }
}

#[test]
fn resuming_without_a_complete_checkpoint_is_a_one_line_error() {
    let dev = Device::flex();
    let (data, diff, cfg, mlp) = setup();
    let trainer = Trainer::new(cfg, &diff, &data, &dev);
    let dir = fresh_dir("nothing");
    let err = trainer.load(&checkpoint_dir(&dir), |d| mlp.init(d)).err().expect("nothing to load");
    assert!(matches!(err, CheckpointError::NoCheckpoint { .. }), "{err}");

    // `ddpm train --resume`: a run directory with its config but no checkpoint.
    let config = tiny_run_config();
    config.save(&dir).unwrap();
    let err = resume_run(&dir, 1, &dev, &NoProgress, |_| Ok(())).err().expect("must not start over");
    let msg = err.to_string();
    assert!(msg.contains("no complete checkpoint") && !msg.contains('\n'), "{msg}");
    // A pointer with nothing complete behind it: training refuses instead of starting over.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("checkpoint-1", checkpoint_dir(&dir)).unwrap();
        let err = train_run(&config, &dir, 1, &dev, |_| Ok(())).err().expect("must not start over");
        assert!(matches!(err, CheckpointError::NoCheckpoint { .. }), "{err}");
        std::fs::remove_file(checkpoint_dir(&dir)).unwrap();
    }
    // A run stopped after its checkpoint of step 1 resumes to the weights of an uninterrupted run.
    let err = train_run(&config, &dir, 1, &dev, |e| match e {
        diffusion::run::TrainEvent::Step { step: 2, .. } => Err(CheckpointError::Run("stop".into())),
        _ => Ok(()),
    })
    .err()
    .expect("stopped");
    assert_eq!(err.to_string(), "stop");
    let progress = Count::default();
    let resumed = resume_run(&dir, 1, &dev, &progress, |_| Ok(())).unwrap();
    // The bar starts at the resumed step and ends at the last.
    assert_eq!((progress.total.load(SeqCst), progress.done.load(SeqCst)), (2, 2));
    let other = fresh_dir("uninterrupted");
    let straight = train_run(&config, &other, 1, &dev, |_| Ok(())).unwrap();
    assert_eq!(resumed.step, 2);
    assert_eq!(params(&resumed.ema), params(&straight.ema));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(&other).ok();
}
