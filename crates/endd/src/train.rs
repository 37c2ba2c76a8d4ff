//! Training on the workspace's one training loop ([`foundation::train::Trainer`]): ensemble
//! members (softmax cross-entropy, [`MemberObjective`]) and students (EnD or EnD²,
//! [`StudentObjective`]); the resumable, shardable ensemble; the teacher-output file; inference.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::TensorData;
use foundation::loss::{softmax_cross_entropy, softmax_cross_entropy_sum};
use foundation::progress::{NoProgress, Progress};
use foundation::rng::epoch_order;
use foundation::tensor_file::{self, NamedTensor};
use foundation::train::{load_module, save_module, Objective, OptimConfig, Trainer};
use serde::{Deserialize, Serialize};

use crate::loss::{dirichlet_nll, teacher_targets, Anneal, CENTRAL_SMOOTHING};
use crate::model::{Arch, Net};
use crate::EndError;

/// Unlabelled inputs: `n` rows of `dim` features, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Inputs {
    /// The features.
    pub x: Vec<f32>,
    /// Number of inputs.
    pub n: usize,
    /// Features per input.
    pub dim: usize,
}

impl Inputs {
    /// Inputs from rows of `dim` features; errors when the length is not a multiple of `dim`
    /// or a value is not finite.
    pub fn new(x: Vec<f32>, dim: usize) -> Result<Self, EndError> {
        if dim == 0 || !x.len().is_multiple_of(dim) {
            return Err(EndError::Invalid(format!("{} values are not rows of {dim} features", x.len())));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(EndError::Invalid(format!("input {} holds a non-finite value", i / dim)));
        }
        Ok(Self { n: x.len() / dim, x, dim })
    }

    /// Input `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.dim..(i + 1) * self.dim]
    }

    /// The concatenation of `self` and `other` (same `dim`).
    pub fn concat(&self, other: &Inputs) -> Inputs {
        let mut x = self.x.clone();
        x.extend_from_slice(&other.x);
        Inputs { x, n: self.n + other.n, dim: self.dim }
    }

    /// The rows `idx`, as a `[len, dim]` tensor on `device`.
    pub fn tensor(&self, idx: &[usize], device: &Device) -> Tensor<2> {
        let mut x = Vec::with_capacity(idx.len() * self.dim);
        for &i in idx {
            x.extend_from_slice(self.row(i));
        }
        Tensor::from_data(TensorData::new(x, [idx.len(), self.dim]), device)
    }
}

/// Inputs with class labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Labeled {
    /// The inputs.
    pub inputs: Inputs,
    /// One label per input, each `< classes`.
    pub labels: Vec<usize>,
}

/// Optimisation settings of a member or a student (AdamW, cosine decay per step, no warmup).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    /// Passes over the training inputs.
    pub epochs: usize,
    /// Minibatch size.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate as a fraction of `lr`.
    pub final_lr_fraction: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value (None: no clipping).
    #[serde(default)]
    pub grad_clip: Option<f64>,
}

impl TrainSettings {
    /// Steps of one epoch over `n` inputs (the last batch may be short).
    pub fn steps_per_epoch(&self, n: usize) -> usize {
        n.div_ceil(self.batch_size.max(1))
    }

    /// The trainer's settings for `n` training inputs and `seed`.
    pub fn optim(&self, n: usize, seed: u64) -> OptimConfig {
        OptimConfig {
            steps: self.steps_per_epoch(n) * self.epochs,
            lr: self.lr,
            warmup_steps: 0,
            min_lr_ratio: self.final_lr_fraction,
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
            ema_decay: 0.0,
            seed,
            microbatches: 1,
        }
    }

    fn check(&self) -> Result<(), EndError> {
        if self.epochs == 0 || self.batch_size == 0 || self.lr.is_nan() || self.lr <= 0.0 {
            return Err(EndError::Invalid(format!(
                "epochs, batch size and learning rate must be positive (got {self:?})"
            )));
        }
        Ok(())
    }
}

/// The inputs of `step`: the next `batch_size` indices of the epoch's permutation.
fn step_indices(n: usize, batch_size: usize, seed: u64, step: usize) -> (usize, Vec<usize>) {
    let per_epoch = n.div_ceil(batch_size);
    let (epoch, pos) = (step / per_epoch, step % per_epoch);
    let order = epoch_order(seed, epoch, n);
    (epoch, order[pos * batch_size..((pos + 1) * batch_size).min(n)].to_vec())
}

/// A minibatch of a member: inputs `[B, dim]` and one-hot labels `[B, K]`.
#[derive(Clone, Debug)]
pub struct MemberBatch {
    /// Inputs.
    pub x: Tensor<2>,
    /// One-hot labels.
    pub y: Tensor<2>,
}

/// Softmax cross-entropy of an ensemble member; step `s` of epoch `e` takes the next inputs of the
/// permutation [`epoch_order`]`(seed, e, n)`.
pub struct MemberObjective<'a> {
    /// Training data.
    pub data: &'a Labeled,
    /// Number of classes.
    pub classes: usize,
    /// Minibatch size.
    pub batch_size: usize,
    /// Seed of the order.
    pub seed: u64,
}

impl Objective<Net> for MemberObjective<'_> {
    type Batch = MemberBatch;

    fn batch(&self, step: usize, device: &Device) -> MemberBatch {
        let (_, idx) = step_indices(self.data.inputs.n, self.batch_size, self.seed, step);
        let mut y = vec![0.0f32; idx.len() * self.classes];
        for (k, &i) in idx.iter().enumerate() {
            y[k * self.classes + self.data.labels[i]] = 1.0;
        }
        MemberBatch {
            x: self.data.inputs.tensor(&idx, device),
            y: Tensor::from_data(TensorData::new(y, [idx.len(), self.classes]), device),
        }
    }

    fn batch_len(&self, batch: &MemberBatch) -> usize {
        batch.y.dims()[0]
    }

    fn slice(&self, batch: &MemberBatch, range: Range<usize>) -> MemberBatch {
        let len = range.end - range.start;
        MemberBatch {
            x: batch.x.clone().narrow(0, range.start, len),
            y: batch.y.clone().narrow(0, range.start, len),
        }
    }

    fn loss(&self, model: &Net, batch: MemberBatch) -> Tensor<1> {
        softmax_cross_entropy(model.forward(batch.x), batch.y)
    }
}

/// What a student is distilled to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StudentKind {
    /// EnD: cross-entropy to the ensemble's mean probabilities (a categorical student).
    End,
    /// EnD²: negative log-likelihood of the members' categoricals under `Dir(exp(z))` (a prior
    /// network).
    End2,
}

/// Teacher outputs: the logits of `members` ensemble members on `n` inputs, `[n, members, classes]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Teacher {
    /// The logits, input after input, member after member.
    pub logits: Vec<f32>,
    /// Number of inputs.
    pub n: usize,
    /// Ensemble size.
    pub members: usize,
    /// Number of classes.
    pub classes: usize,
}

impl Teacher {
    /// The logits of input `i`, `[members, classes]`.
    pub fn input(&self, i: usize) -> &[f32] {
        let w = self.members * self.classes;
        &self.logits[i * w..(i + 1) * w]
    }
}

/// The header of a teacher file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TeacherHeader {
    /// Ensemble size.
    pub members: usize,
    /// Number of classes.
    pub classes: usize,
    /// Number of inputs.
    pub inputs: usize,
}

/// The header key of teacher files.
pub const TEACHER_KEY: &str = "endd-teacher";

/// Writes teacher logits to `path` (atomically) with a header of their sizes.
pub fn save_teacher(path: &Path, teacher: &Teacher) -> Result<(), EndError> {
    let header = TeacherHeader { members: teacher.members, classes: teacher.classes, inputs: teacher.n };
    let tensor =
        NamedTensor::f32("logits", vec![teacher.n, teacher.members, teacher.classes], teacher.logits.clone());
    Ok(tensor_file::save(path, TEACHER_KEY, &header, &[tensor])?)
}

/// Reads a teacher file and refuses, in one line naming the file, one of another ensemble size,
/// class count or number of inputs than expected, or with non-finite logits.
pub fn load_teacher(path: &Path, members: usize, classes: usize, inputs: usize) -> Result<Teacher, EndError> {
    let file = tensor_file::load::<TeacherHeader>(path, TEACHER_KEY)?;
    let h = &file.header;
    let mismatch = |what: &str, got: usize, want: usize| {
        Err(EndError::Invalid(format!(
            "{}: teacher file holds {got} {what}, expected {want}",
            path.display()
        )))
    };
    if h.members != members {
        return mismatch("ensemble members", h.members, members);
    }
    if h.classes != classes {
        return mismatch("classes", h.classes, classes);
    }
    if h.inputs != inputs {
        return mismatch("inputs", h.inputs, inputs);
    }
    let logits = file.f32("logits", Some(&[inputs, members, classes]))?;
    Ok(Teacher { logits, n: inputs, members, classes })
}

/// A minibatch of a student: inputs, the targets at the step's temperature, the temperature.
#[derive(Clone, Debug)]
pub struct StudentBatch {
    /// Inputs `[B, dim]`.
    pub x: Tensor<2>,
    /// EnD: mean teacher probabilities `[B, K]`.
    pub mean_p: Tensor<2>,
    /// EnD²: mean teacher log-probabilities, row-major `[B, K]`.
    pub mean_logp: Vec<f64>,
    /// The temperature of the step.
    pub temperature: f64,
}

/// A student's loss: EnD or EnD² towards the teacher's outputs on `inputs`, at the temperature of
/// the step's epoch (see [`Anneal`]), teacher probabilities centrally smoothed.
pub struct StudentObjective<'a> {
    /// The distillation inputs (training inputs, and auxiliary ones for +AUX).
    pub inputs: &'a Inputs,
    /// The teacher's logits on `inputs`.
    pub teacher: &'a Teacher,
    /// EnD or EnD².
    pub kind: StudentKind,
    /// Temperature schedule.
    pub anneal: Anneal,
    /// Minibatch size.
    pub batch_size: usize,
    /// Seed of the order.
    pub seed: u64,
}

impl Objective<Net> for StudentObjective<'_> {
    type Batch = StudentBatch;

    fn batch(&self, step: usize, device: &Device) -> StudentBatch {
        let (epoch, idx) = step_indices(self.inputs.n, self.batch_size, self.seed, step);
        let t = self.anneal.temperature(epoch);
        let k = self.teacher.classes;
        let mut mean_p = Vec::with_capacity(idx.len() * k);
        let mut mean_logp = Vec::with_capacity(idx.len() * k);
        for &i in &idx {
            let targets =
                teacher_targets(self.teacher.input(i), self.teacher.members, k, t, CENTRAL_SMOOTHING);
            mean_p.extend(targets.mean_p.iter().map(|&v| v as f32));
            mean_logp.extend(targets.mean_logp);
        }
        StudentBatch {
            x: self.inputs.tensor(&idx, device),
            mean_p: Tensor::from_data(TensorData::new(mean_p, [idx.len(), k]), device),
            mean_logp,
            temperature: t,
        }
    }

    fn batch_len(&self, batch: &StudentBatch) -> usize {
        batch.mean_p.dims()[0]
    }

    fn slice(&self, batch: &StudentBatch, range: Range<usize>) -> StudentBatch {
        let len = range.end - range.start;
        let k = self.teacher.classes;
        StudentBatch {
            x: batch.x.clone().narrow(0, range.start, len),
            mean_p: batch.mean_p.clone().narrow(0, range.start, len),
            mean_logp: batch.mean_logp[range.start * k..range.end * k].to_vec(),
            temperature: batch.temperature,
        }
    }

    fn loss(&self, model: &Net, batch: StudentBatch) -> Tensor<1> {
        let b = batch.mean_p.dims()[0];
        let t = batch.temperature;
        let z = model.forward(batch.x);
        match self.kind {
            StudentKind::End => {
                softmax_cross_entropy_sum(z.div_scalar(t), batch.mean_p).mul_scalar(t * t / b as f64)
            }
            StudentKind::End2 => end2_loss(z, &batch.mean_logp, t),
        }
    }
}

/// The mean EnD² loss of logits `z: [B, K]` (with their graph) as a tensor whose value is the loss
/// and whose gradient is the closed form of [`dirichlet_nll`]: burn has no `ln Γ`, so the loss is
/// `Σ g ⊙ z + (L − Σ g ⊙ z)` with `g = ∂L/∂z` and the bracket held constant.
pub fn end2_loss(z: Tensor<2>, mean_logp: &[f64], t: f64) -> Tensor<1> {
    let [b, k] = z.dims();
    let device = z.device();
    let values: Vec<f32> = z.clone().into_data().try_into_vec::<f32>().expect("f32 logits");
    let mut total = 0.0;
    let mut grad = Vec::with_capacity(b * k);
    let mut dot = 0.0;
    for i in 0..b {
        let zi: Vec<f64> = values[i * k..(i + 1) * k].iter().map(|&v| v as f64).collect();
        let (l, g) = dirichlet_nll(&zi, &mean_logp[i * k..(i + 1) * k], t);
        total += l / b as f64;
        for (gc, zc) in g.iter().zip(&zi) {
            grad.push((gc / b as f64) as f32);
            dot += gc / b as f64 * zc;
        }
    }
    let g = Tensor::<2>::from_data(TensorData::new(grad, [b, k]), &device);
    let constant = Tensor::<1>::from_data(TensorData::new(vec![(total - dot) as f32], [1]), &device);
    (z * g).sum() + constant
}

/// A classifier's logits on `inputs`, `[n, classes]` row-major (inference in chunks, on the
/// device of `net`'s weights).
pub fn logits(net: &Net, inputs: &Inputs, classes: usize) -> Vec<f32> {
    let device = net.device();
    let mut out = Vec::with_capacity(inputs.n * classes);
    let idx: Vec<usize> = (0..inputs.n).collect();
    for chunk in idx.chunks(1024) {
        let z = net.forward(inputs.tensor(chunk, &device));
        out.extend(z.into_data().try_into_vec::<f32>().expect("f32 logits"));
    }
    out
}

/// Everything that defines an ensemble: architecture, member training, size, seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnsembleSpec {
    /// Architecture of every member.
    pub arch: Arch,
    /// Member training settings.
    pub train: TrainSettings,
    /// Ensemble size `M`.
    pub members: usize,
    /// Base seed; member `m` uses [`member_seed`]`(seed, m)`.
    pub seed: u64,
}

/// The seed of member `m`: initialisation and data order of each member are independent.
pub fn member_seed(seed: u64, m: usize) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(m as u64 + 1)
}

/// Which members a job trains: those it [`Shard::owns`] (`m % count == index`).
pub use foundation::shard::Shard;

/// The file of member `m` in an ensemble directory.
pub fn member_path(dir: &Path, m: usize) -> PathBuf {
    dir.join(format!("member-{m:03}.safetensors"))
}

/// Writes `value` to `path` as JSON if absent; if present, refuses another value (a directory
/// reused with other settings).
pub fn check_or_write_settings<T: Serialize>(path: &Path, value: &T) -> Result<(), EndError> {
    let json = serde_json::to_value(value).map_err(|e| EndError::Invalid(e.to_string()))?;
    if path.exists() {
        let text = std::fs::read_to_string(path).map_err(|e| EndError::file(path, e))?;
        let stored: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| EndError::file(path, format!("not JSON: {e}")))?;
        if stored != json {
            return Err(EndError::file(
                path,
                "was written with other settings; use another output directory or delete it",
            ));
        }
        return Ok(());
    }
    let text = serde_json::to_string_pretty(&json).expect("JSON values serialise");
    foundation::atomic::write_bytes(path, text.as_bytes())?;
    Ok(())
}

/// Trains the members of `shard` that are not finished yet (a finished member is one whose file
/// exists) on `jobs` local worker threads, each on `device`; returns the members trained now.
/// Each member is saved atomically as soon as it is done, so an interrupted run resumes with the
/// rest.
pub fn train_ensemble(
    dir: &Path,
    spec: &EnsembleSpec,
    data: &Labeled,
    shard: Shard,
    jobs: usize,
    device: &Device,
    progress: &dyn Progress,
) -> Result<Vec<usize>, EndError> {
    spec.train.check()?;
    check_data(data, spec.arch.input_dim(), spec.arch.classes())?;
    check_or_write_settings(&dir.join("ensemble.json"), spec)?;
    let todo: Vec<usize> =
        (0..spec.members).filter(|&m| shard.owns(m) && !member_path(dir, m).exists()).collect();
    progress.start("ensemble", todo.len() as u64);
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<EndError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1).min(todo.len().max(1)) {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                if k >= todo.len() || failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                    return;
                }
                let m = todo[k];
                let result = train_member(spec, data, m, device)
                    .and_then(|net| save_module(&net, &member_path(dir, m)).map_err(EndError::from));
                match result {
                    Ok(()) => progress.advance(1),
                    Err(e) => {
                        if let Ok(mut f) = failure.lock() {
                            f.get_or_insert(e);
                        }
                        return;
                    }
                }
            });
        }
    });
    progress.finish();
    if let Some(e) = failure.into_inner().unwrap_or(None) {
        return Err(e);
    }
    Ok(todo)
}

/// Trains member `m` of `spec` on `device`; returns it in validation mode (on the plain device,
/// without autodiff).
pub fn train_member(spec: &EnsembleSpec, data: &Labeled, m: usize, device: &Device) -> Result<Net, EndError> {
    let seed = member_seed(spec.seed, m);
    let optim = spec.train.optim(data.inputs.n, seed);
    let steps = optim.steps;
    let objective =
        MemberObjective { data, classes: spec.arch.classes(), batch_size: spec.train.batch_size, seed };
    let trainer = Trainer::new(optim, objective, device);
    let mut state = trainer.init_state(|rng, device| spec.arch.init_with(rng, device));
    trainer
        .run(&mut state, steps, None, &NoProgress, |_| Ok(()))
        .map_err(|e| EndError::Invalid(format!("member {m}: {e}")))?;
    Ok(state.model.valid())
}

/// Loads every member of a finished ensemble onto `device`; errors naming the first missing
/// member.
pub fn load_ensemble(dir: &Path, spec: &EnsembleSpec, device: &Device) -> Result<Vec<Net>, EndError> {
    check_or_write_settings(&dir.join("ensemble.json"), spec)?;
    (0..spec.members)
        .map(|m| {
            let path = member_path(dir, m);
            if !path.exists() {
                return Err(EndError::file(
                    &path,
                    "missing: the ensemble is not finished (train the remaining shards first)",
                ));
            }
            Ok(load_module(
                spec.arch.init_with(
                    &mut foundation::rng::stream_for(0, foundation::rng::Purpose::Init, 0),
                    device,
                ),
                &path,
            )?)
        })
        .collect()
}

/// The teacher logits of `members` on `inputs`; errors naming a member with non-finite logits.
pub fn teacher_logits(members: &[Net], inputs: &Inputs, classes: usize) -> Result<Teacher, EndError> {
    let per: Vec<Vec<f32>> = members.iter().map(|net| logits(net, inputs, classes)).collect();
    if let Some(m) = per.iter().position(|z| z.iter().any(|v| !v.is_finite())) {
        return Err(EndError::Invalid(format!("member {m} gives non-finite logits")));
    }
    let mut out = Vec::with_capacity(inputs.n * members.len() * classes);
    for i in 0..inputs.n {
        for z in &per {
            out.extend_from_slice(&z[i * classes..(i + 1) * classes]);
        }
    }
    Ok(Teacher { logits: out, n: inputs.n, members: members.len(), classes })
}

/// A student's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudentSpec {
    /// Architecture (the members').
    pub arch: Arch,
    /// Optimisation settings.
    pub train: TrainSettings,
    /// EnD or EnD².
    pub kind: StudentKind,
    /// Temperature schedule.
    pub anneal: Anneal,
    /// Seed of initialisation and order.
    pub seed: u64,
    /// Number of distillation inputs (training plus auxiliary).
    pub inputs: usize,
}

/// Trains a student on `teacher`'s outputs on `inputs` on `device`, or loads it from `path` onto
/// `device` when a previous run finished it with the same settings (stored next to it as
/// `<path>.json`; the device is not a setting).
pub fn train_student(
    path: &Path,
    spec: &StudentSpec,
    inputs: &Inputs,
    teacher: &Teacher,
    device: &Device,
    progress: &dyn Progress,
) -> Result<Net, EndError> {
    spec.train.check()?;
    if teacher.n != inputs.n || teacher.classes != spec.arch.classes() {
        return Err(EndError::Invalid(format!(
            "teacher outputs for {} inputs of {} classes do not match {} inputs of {} classes",
            teacher.n,
            teacher.classes,
            inputs.n,
            spec.arch.classes()
        )));
    }
    let mut meta = path.as_os_str().to_owned();
    meta.push(".json");
    check_or_write_settings(Path::new(&meta), spec)?;
    let fresh = || {
        spec.arch.init_with(&mut foundation::rng::stream_for(0, foundation::rng::Purpose::Init, 0), device)
    };
    if path.exists() {
        return Ok(load_module(fresh(), path)?);
    }
    let optim = spec.train.optim(inputs.n, spec.seed);
    let steps = optim.steps;
    let objective = StudentObjective {
        inputs,
        teacher,
        kind: spec.kind,
        anneal: spec.anneal,
        batch_size: spec.train.batch_size,
        seed: spec.seed,
    };
    let trainer = Trainer::new(optim, objective, device);
    let mut state = trainer.init_state(|rng, device| spec.arch.init_with(rng, device));
    trainer
        .run(&mut state, steps, None, progress, |_| Ok(()))
        .map_err(|e| EndError::Invalid(format!("{}: {e}", path.display())))?;
    let net = state.model.valid();
    save_module(&net, path)?;
    Ok(net)
}

/// Checks that labelled data fits an architecture.
pub fn check_data(data: &Labeled, dim: usize, classes: usize) -> Result<(), EndError> {
    if data.inputs.n == 0 || data.inputs.dim != dim || data.labels.len() != data.inputs.n {
        return Err(EndError::Invalid(format!(
            "training data of {} inputs of {} features with {} labels does not fit a network of {dim} inputs",
            data.inputs.n,
            data.inputs.dim,
            data.labels.len()
        )));
    }
    if let Some(&l) = data.labels.iter().find(|&&l| l >= classes) {
        return Err(EndError::Invalid(format!("label {l} is not below the {classes} classes")));
    }
    Ok(())
}
