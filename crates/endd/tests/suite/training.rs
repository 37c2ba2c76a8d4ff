//! Ensemble training: sharded and resumable (finished members skipped), deterministic whatever the
//! number of workers, settings checked on reuse; a student trains and resumes from its file.

use burn::prelude::Device;
use endd::data::{ring, spiral, SET_RING_AUX, SET_SPIRAL_TRAIN};
use endd::loss::Anneal;
use endd::model::Arch;
use endd::train::{
    load_ensemble, logits, member_path, teacher_logits, train_ensemble, train_member, train_student,
    EnsembleSpec, Shard, StudentKind, StudentSpec, TrainSettings,
};
use foundation::progress::NoProgress;

fn spec(seed: u64) -> EnsembleSpec {
    EnsembleSpec {
        arch: Arch::Mlp { input_dim: 2, hidden: vec![16], classes: 3, input_scale: 1.0 / 200.0 },
        train: TrainSettings {
            epochs: 2,
            batch_size: 16,
            lr: 3e-3,
            final_lr_fraction: 0.1,
            weight_decay: 0.0,
            grad_clip: None,
        },
        members: 3,
        seed,
    }
}

#[test]
fn sharded_ensemble_resumes_and_skips_finished_members() {
    let dir = std::env::temp_dir().join(format!("endd-ensemble-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = spiral(20, 0.3, 0, SET_SPIRAL_TRAIN);
    let s = spec(5);
    let cpu = Device::flex();
    assert_eq!(Shard::parse("0/2").expect("shard"), Shard { index: 0, count: 2 });
    assert!(Shard::parse("2/2").is_err() && Shard::parse("x").is_err());

    let done = train_ensemble(&dir, &s, &data, Shard::parse("0/2").expect("shard"), 2, &cpu, &NoProgress)
        .expect("train");
    assert_eq!(done, vec![0, 2]);
    assert!(!member_path(&dir, 1).exists());
    let missing = load_ensemble(&dir, &s, &cpu).expect_err("unfinished").to_string();
    assert!(missing.contains("member-001") && missing.contains("not finished"), "{missing}");

    let done =
        train_ensemble(&dir, &s, &data, Shard { index: 1, count: 2 }, 1, &cpu, &NoProgress).expect("train");
    assert_eq!(done, vec![1]);
    let again = train_ensemble(&dir, &s, &data, Shard::ALL, 1, &cpu, &NoProgress).expect("train");
    assert!(again.is_empty(), "finished members are skipped");

    // Same members whatever the worker count: member 0 (trained beside member 2) retrained alone.
    let members = load_ensemble(&dir, &s, &cpu).expect("load");
    let alone = train_member(&s, &data, 0, &cpu).expect("train");
    assert_eq!(logits(&members[0], &data.inputs, 3), logits(&alone, &data.inputs, 3));
    assert_ne!(logits(&members[0], &data.inputs, 3), logits(&members[1], &data.inputs, 3));

    // The directory refuses other settings.
    let err = train_ensemble(&dir, &spec(6), &data, Shard::ALL, 1, &cpu, &NoProgress).expect_err("refused");
    assert!(err.to_string().contains("other settings"), "{err}");

    // A student trains on the teacher's outputs and resumes from its file.
    let aux = ring(30, 20.0, 0, SET_RING_AUX);
    let inputs = data.inputs.concat(&aux);
    let teacher = teacher_logits(&members, &inputs, 3).expect("teacher");
    let st = StudentSpec {
        arch: s.arch.clone(),
        train: s.train.clone(),
        kind: StudentKind::End2,
        anneal: Anneal { t0: 5.0, hold_epochs: 1, decay_epochs: 1 },
        seed: 9,
        inputs: inputs.n,
    };
    let path = dir.join("students").join("end2.safetensors");
    let a = train_student(&path, &st, &inputs, &teacher, &cpu, &NoProgress).expect("student");
    let z = logits(&a, &inputs, 3);
    assert!(z.iter().all(|v| v.is_finite()));
    let b = train_student(&path, &st, &inputs, &teacher, &cpu, &NoProgress).expect("resumed");
    assert_eq!(logits(&b, &inputs, 3), z);
    let _ = std::fs::remove_dir_all(&dir);
}
