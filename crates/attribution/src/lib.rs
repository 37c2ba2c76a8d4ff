//! Data attribution for diffusion models with influence functions (Mlodozeniec et al. 2025), and
//! the same for classifiers ([`classifier`]).
//!
//! Read it like kronfluence: a [`DiffusionTask`] says what the training loss and the
//! measurement are; the curvature crate turns the model and the task's training data into
//! (EK-)FAC factors; [`Scorer`] preconditions query gradients once and streams the training set,
//! scoring every training example against every query for a whole damping grid.
//!
//! **Sign convention**: `score[q][n] = grad m(x_q)^T (G + lambda I)^-1 grad l(x_n)`. A positive
//! score means removing training image n is predicted to *raise* query q's measurement (for the
//! loss measurement: make the sample less likely) — n is a proponent, a "top influence". The
//! predicted change after removing a set R is `(1/N) sum_{n in R} score[q][n]`.

use burn::prelude::*;
use curvature::precondition::per_datum_gradients;
use curvature::EigenCurvature;
use diffusion::model::Denoiser;
use diffusion::Diffusion;
use foundation::progress::Progress;
use foundation::rng::{normals, stream_for, timesteps, Purpose};
use foundation::tap::Tap;
use serde::{Deserialize, Serialize};

pub mod baselines;
pub mod bench;
pub mod benchmark;
pub mod classifier;
pub mod demo;
pub mod error;
pub mod fit;
pub mod lds;
pub mod measure;
pub mod meta;
pub mod npy;
pub mod plot;
pub mod scoring;

/// The function of the model whose change is attributed (spec p1 §1.3). Every variant is a
/// per-draw quantity of the network output defined by a [`Diffusion`] helper; a measurement is
/// its average over (t, noise) draws.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Measurement {
    /// The run's own training loss, [`Diffusion::per_example_loss`] (whatever its
    /// parametrisation and weighting), uniform t (the default).
    Loss,
    /// "ELBO*": the epsilon error weighted by `beta_t / (2 alpha_t (1 - alpha_bar_t))` per t,
    /// [`Diffusion::simplified_elbo_from_output`].
    SimplifiedElbo,
    /// D-TRAK's output function: `(1/D) ||eps_theta(x_t, t)||^2`, uniform t
    /// ([`Diffusion::eps_square_norm_from_output`]).
    SquareNorm,
    /// The training loss ([`Diffusion::per_example_loss`]) at one fixed timestep.
    LossAtTime(usize),
}

impl Measurement {
    /// The timestep of a draw whose uniform timestep is `drawn`: `drawn`, except for
    /// [`Measurement::LossAtTime`].
    pub fn timestep(self, drawn: usize) -> usize {
        match self {
            Measurement::LossAtTime(fixed) => fixed,
            _ => drawn,
        }
    }

    /// The measurement of each draw `[N]`, from the network outputs `out` at `x_t`
    /// (`Diffusion::forward_draw`) of the draws `(x0, t, eps)`.
    pub fn per_draw(
        self,
        diffusion: &Diffusion,
        out: Tensor<2>,
        xt: Tensor<2>,
        x0: Tensor<2>,
        t: &[usize],
        eps: Tensor<2>,
    ) -> Tensor<1> {
        match self {
            Measurement::Loss | Measurement::LossAtTime(_) => {
                diffusion.per_example_loss_from_output(out, x0, t, eps)
            }
            Measurement::SimplifiedElbo => diffusion.simplified_elbo_from_output(out, xt, t, eps),
            Measurement::SquareNorm => diffusion.eps_square_norm_from_output(out, xt, t),
        }
    }
}

/// Training loss + measurement of a diffusion model, with the Monte-Carlo draw budgets.
#[derive(Clone, Debug)]
pub struct DiffusionTask {
    /// The diffusion process.
    pub diffusion: Diffusion,
    /// What is measured on queries.
    pub measurement: Measurement,
    /// The output function of training examples: [`Measurement::Loss`] for influence functions
    /// (their gradient is the training-loss gradient); D-TRAK uses [`Measurement::SquareNorm`].
    pub train_output: Measurement,
    /// (t, noise) draws averaged per training gradient.
    pub train_draws: u64,
    /// (t, noise) draws averaged per query gradient.
    pub query_draws: u64,
    /// Seed of all draws. Draw r of image n depends only on (seed, role, n, r) (the streams of
    /// `Purpose::TrainGradient` / `Purpose::QueryGradient`): common random numbers across models
    /// and runs.
    pub seed: u64,
}

/// Whether gradients are of the training loss or of the measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Training examples: gradient of the training loss.
    Train,
    /// Queries: gradient of the measurement.
    Query,
}

impl DiffusionTask {
    /// Per-image gradients `[n, P]` (layer space, see `curvature::precondition`) of the training
    /// loss or the measurement, each averaged over the role's draws. `rows` is `[n, D]`; `ids`
    /// are the images' global indices (they seed the draws). The images are split into two
    /// halves whose passes run concurrently, each on its own copy of the model with untracked
    /// parameters (only the layer outputs' gradients are needed, so no weight gradients are
    /// computed); an image's gradient depends on its own draws only.
    pub fn gradients<M: Denoiser>(
        &self,
        model: &M,
        rows: &[f32],
        ids: &[usize],
        role: Role,
        device: &Device,
    ) -> Tensor<2> {
        let (d, n) = (model.data_dim(), ids.len());
        let pass = |m: M, rows: &[f32], ids: &[usize]| self.gradients_one_pass(&m, rows, ids, role, device);
        if n < 2 {
            return pass(model.clone().no_grad(), rows, ids);
        }
        let h = n / 2;
        let (ma, mb) = (model.clone().no_grad(), model.clone().no_grad());
        let (a, b) =
            rayon::join(|| pass(ma, &rows[..h * d], &ids[..h]), || pass(mb, &rows[h * d..n * d], &ids[h..]));
        Tensor::cat(vec![a, b], 0)
    }

    /// [`gradients`](Self::gradients) in one forward/backward pass.
    fn gradients_one_pass<M: Denoiser>(
        &self,
        model: &M,
        rows: &[f32],
        ids: &[usize],
        role: Role,
        device: &Device,
    ) -> Tensor<2> {
        let d = model.data_dim();
        let (draws, output) = match role {
            Role::Train => (self.train_draws, self.train_output),
            Role::Query => (self.query_draws, self.measurement),
        };
        let n_img = ids.len();
        let total = n_img * draws as usize;
        let mut x0 = Vec::with_capacity(total * d);
        let mut eps = Vec::with_capacity(total * d);
        let mut t = Vec::with_capacity(total);
        for (k, &id) in ids.iter().enumerate() {
            for draw in 0..draws {
                let purpose = match role {
                    Role::Train => Purpose::TrainGradient { draw },
                    Role::Query => Purpose::QueryGradient { draw },
                };
                let mut rng = stream_for(self.seed, purpose, id as u64);
                t.push(output.timestep(timesteps(&mut rng, 1, self.diffusion.steps())[0]));
                eps.extend(normals(&mut rng, d));
                x0.extend_from_slice(&rows[k * d..(k + 1) * d]);
            }
        }
        let x0 = Tensor::<2>::from_data(TensorData::new(x0, [total, d]), device);
        let eps = Tensor::<2>::from_data(TensorData::new(eps, [total, d]), device);
        let mut tap = Tap::recording();
        let (xt, y) = self.diffusion.forward_draw(model, x0.clone(), &t, eps.clone(), &mut tap);
        let per_datum = output.per_draw(&self.diffusion, y, xt, x0, &t, eps);
        let grads = per_datum.sum().div_scalar(draws as f64).backward();
        let g = per_datum_gradients(tap.records(), &grads);
        let p = g.dims()[1];
        g.reshape([n_img, draws as usize, p]).sum_dim(1).reshape([n_img, p])
    }
}

/// Scores training examples against queries for a grid of dampings, with the query side
/// preconditioned once (rotated into the eigenbasis and divided by `Lambda + lambda`).
pub struct Scorer<'c> {
    curvature: &'c EigenCurvature,
    /// Damping values.
    pub lambdas: Vec<f64>,
    /// Per lambda: preconditioned rotated query gradients `[Q, P]`.
    preconditioned: Vec<Tensor<2>>,
}

impl<'c> Scorer<'c> {
    /// Precondition query gradients `[Q, P]` for every lambda.
    pub fn new(curvature: &'c EigenCurvature, query_grads: Tensor<2>, lambdas: Vec<f64>) -> Self {
        let device = query_grads.device();
        let rotated = curvature.rotate(query_grads);
        let ev = curvature.eigenvalues();
        let p = ev.len();
        let preconditioned = lambdas
            .iter()
            .map(|&l| {
                let inv: Vec<f32> = ev.iter().map(|e| (1.0 / (e + l)) as f32).collect();
                rotated.clone() * Tensor::<1>::from_floats(inv.as_slice(), &device).reshape([1, p])
            })
            .collect();
        Self { curvature, lambdas, preconditioned }
    }

    /// Scores `[L][Q * B]` (row-major `[Q, B]` per lambda) of a batch of training gradients `[B, P]`.
    pub fn score(&self, train_grads: Tensor<2>) -> Vec<Vec<f32>> {
        let rotated = self.curvature.rotate(train_grads).transpose();
        self.preconditioned
            .iter()
            .map(|pq| {
                pq.clone().matmul(rotated.clone()).into_data().try_into_vec_as::<f32>().expect("scores")
            })
            .collect()
    }

    /// Scores `[L][Q * n]` (row-major `[Q, n]` per lambda, `n = range.len()`) of the training
    /// examples in `range`, `per_batch` at a time: `gradients(ids)` gives the training gradients
    /// `[B, P]` of the examples `ids`. `progress` sees one stage, `score`, counted in examples.
    pub fn score_range<E>(
        &self,
        range: std::ops::Range<usize>,
        per_batch: usize,
        progress: &dyn Progress,
        mut gradients: impl FnMut(&[usize]) -> Result<Tensor<2>, E>,
    ) -> Result<Vec<Vec<f32>>, E> {
        let n = range.len();
        let q = self.preconditioned.first().map_or(0, |p| p.dims()[0]);
        let mut out = vec![vec![0f32; q * n]; self.lambdas.len()];
        progress.start("score", n as u64);
        let ids: Vec<usize> = range.clone().collect();
        for chunk in ids.chunks(per_batch.max(1)) {
            let g = gradients(chunk)?;
            let b = chunk.len();
            for (li, sc) in self.score(g).into_iter().enumerate() {
                for qi in 0..q {
                    for j in 0..b {
                        out[li][qi * n + (chunk[j] - range.start)] = sc[qi * b + j];
                    }
                }
            }
            progress.advance(b as u64);
        }
        progress.finish();
        Ok(out)
    }
}

/// Parse `i/n` (zero-based shard i of n; the one parser, `foundation::shard::Shard::parse`).
pub fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    foundation::shard::Shard::parse(s).map(|sh| (sh.index, sh.count)).map_err(|e| e.to_string())
}

/// The contiguous range of `0..len` that shard `i` of `n` owns (balanced; shards tile the range).
pub fn shard_range(len: usize, i: usize, n: usize) -> std::ops::Range<usize> {
    (i * len / n)..((i + 1) * len / n)
}
