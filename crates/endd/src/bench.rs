//! Timing of one training step of an ensemble member and of an EnD² student, the same network and
//! batch, on the workspace's trainer (the Rust side of `bench/endd_step.py`).

use std::time::Instant;

use burn::prelude::*;
use foundation::rng::stream;
use foundation::train::{TrainState, Trainer};
use rand::Rng;
use serde::Serialize;

use crate::loss::Anneal;
use crate::model::{Arch, Net};
use crate::train::{Inputs, Labeled, MemberObjective, StudentKind, StudentObjective, Teacher, TrainSettings};

/// Median seconds per step.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct StepTimes {
    /// Member step (softmax cross-entropy).
    pub member_sec: f64,
    /// EnD² student step (Dirichlet NLL at T = 2.5, M = 10 teacher members).
    pub end2_sec: f64,
    /// EnD student step (cross-entropy to the mean at T = 2.5).
    pub end_sec: f64,
}

/// Times `steps` steps (after `warmup`) of each objective on synthetic data: `batch` inputs
/// uniform on [-1, 1] (×300 for an MLP on points), random labels and N(0, 3²) teacher logits of 10
/// members. AdamW with epsilon 1e-8, no decay, one pass per step, on `device`. The JAX reference
/// (`bench/endd_step.py`) runs on CPU, so its ratio to these times compares like with like only
/// for a CPU `device`.
pub fn bench_steps(arch: &Arch, batch: usize, steps: usize, warmup: usize, device: &Device) -> StepTimes {
    let mut rng = stream(0, 0xBE, 0);
    let (dim, k, members) = (arch.input_dim(), arch.classes(), 10);
    let scale = if matches!(arch, Arch::Mlp { .. }) { 300.0 } else { 1.0 };
    let x: Vec<f32> = (0..batch * dim).map(|_| rng.gen_range(-1.0f32..1.0) * scale).collect();
    let inputs = Inputs { x, n: batch, dim };
    let labels: Vec<usize> = (0..batch).map(|_| rng.gen_range(0..k)).collect();
    let data = Labeled { inputs: inputs.clone(), labels };
    let teacher = Teacher {
        logits: (0..batch * members * k).map(|_| rng.gen_range(-5.0f32..5.0)).collect(),
        n: batch,
        members,
        classes: k,
    };
    let settings = TrainSettings {
        epochs: steps + warmup,
        batch_size: batch,
        lr: 1e-3,
        final_lr_fraction: 1.0,
        weight_decay: 0.0,
        grad_clip: None,
    };
    let time = |median: &mut Vec<f64>, step: &mut dyn FnMut()| {
        for i in 0..steps + warmup {
            let t = Instant::now();
            step();
            if i >= warmup {
                median.push(t.elapsed().as_secs_f64());
            }
        }
        median.sort_by(f64::total_cmp);
        median[median.len() / 2]
    };
    let member = Trainer::new(
        settings.optim(batch, 1),
        MemberObjective { data: &data, classes: k, batch_size: batch, seed: 1 },
        device,
    );
    let mut state: TrainState<Net> = member.init_state(|r, d| arch.init_with(r, d));
    let member_sec = time(&mut Vec::new(), &mut || {
        member.step(&mut state);
    });
    let student_sec = |kind| {
        let student = Trainer::new(
            settings.optim(batch, 2),
            StudentObjective {
                inputs: &inputs,
                teacher: &teacher,
                kind,
                anneal: Anneal { t0: 2.5, hold_epochs: usize::MAX, decay_epochs: 0 },
                batch_size: batch,
                seed: 2,
            },
            device,
        );
        let mut state: TrainState<Net> = student.init_state(|r, d| arch.init_with(r, d));
        time(&mut Vec::new(), &mut || {
            student.step(&mut state);
        })
    };
    let end2_sec = student_sec(StudentKind::End2);
    let end_sec = student_sec(StudentKind::End);
    StepTimes { member_sec, end2_sec, end_sec }
}
