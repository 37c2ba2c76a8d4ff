//! The methods K-FAC influence is compared with (spec p1 §2), all producing `[Q, N]` score
//! matrices with the same sign convention (positive = proponent).

use burn::prelude::*;
use curvature::factors::eigh;
use curvature::layer::to_f64;
use rand::RngCore;

use foundation::rng::{stream_for, Purpose};

/// Gradient dot product (identity curvature): `grad m(x_q)^T grad l(x_n)`, `[Q, N]` row-major.
pub fn grad_dot(query_grads: Tensor<2>, train_grads: Tensor<2>) -> Vec<f32> {
    query_grads.matmul(train_grads.transpose()).into_data().try_to_vec::<f32>().expect("f32 scores")
}

/// Cosine similarity of pixel vectors (mapped to `[0, 1]`, so that it measures shared ink), a
/// CPU stand-in for the paper's CLIP-embedding similarity. `queries` `[Q, D]`, `train` `[N, D]`.
pub fn pixel_cosine(queries: &[f32], train: &[f32], d: usize) -> Vec<f32> {
    let unit = |x: &[f32]| -> Vec<Vec<f32>> {
        x.chunks(d)
            .map(|r| {
                let v: Vec<f32> = r.iter().map(|&p| (p + 1.0) / 2.0).collect();
                let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
                v.into_iter().map(|a| a / norm).collect()
            })
            .collect()
    };
    let (q, t) = (unit(queries), unit(train));
    q.iter().flat_map(|a| t.iter().map(move |b| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>())).collect()
}

/// A fixed random projection `R` (`[P, k]`, Rademacher entries `+-1/sqrt(k)`) of gradients to
/// `k` dimensions, TRAK's feature map. `R` is regenerated in row blocks from `(seed, block)`, so it
/// is never stored whole and train and query features see the same matrix.
#[derive(Clone, Copy, Debug)]
pub struct RandomProjection {
    /// Output dimension k.
    pub dim: usize,
    /// Seed of the entries.
    pub seed: u64,
}

impl RandomProjection {
    const BLOCK: usize = 2048;

    /// `g R` for gradients `[N, P]` -> features `[N, k]`.
    pub fn project(&self, g: Tensor<2>) -> Tensor<2> {
        let [n, p] = g.dims();
        let device = g.device();
        let scale = 1.0 / (self.dim as f32).sqrt();
        let mut out = Tensor::<2>::zeros([n, self.dim], &device);
        for (b, start) in (0..p).step_by(Self::BLOCK).enumerate() {
            let rows = Self::BLOCK.min(p - start);
            let mut rng = stream_for(self.seed, Purpose::RandomProjection, b as u64);
            let mut r = Vec::with_capacity(rows * self.dim);
            while r.len() < rows * self.dim {
                let bits = rng.next_u64();
                for k in 0..64.min(rows * self.dim - r.len()) {
                    r.push(if (bits >> k) & 1 == 1 { scale } else { -scale });
                }
            }
            let r = Tensor::<2>::from_data(TensorData::new(r, [rows, self.dim]), &device);
            out = out + g.clone().narrow(1, start, rows).matmul(r);
        }
        out
    }
}

/// TRAK scores for a damping grid: `phi_q^T (Phi^T Phi / N + lambda I)^-1 phi_n`. The kernel is
/// taken in the mean scale (divided by N) so that lambda has the units K-FAC's damping has;
/// TRAK's own lambda on the sum is `N` times larger.
pub struct TrakScorer {
    /// Damping values (mean scale).
    pub lambdas: Vec<f64>,
    eigvecs: Tensor<2>,
    eigvals: Vec<f64>,
    train_rotated: Tensor<2>,
}

impl TrakScorer {
    /// Eigendecompose the feature kernel of the training features `[N, k]` once.
    pub fn new(train_features: Tensor<2>, lambdas: Vec<f64>) -> Self {
        let [n, k] = train_features.dims();
        let device = train_features.device();
        let gram = to_f64(train_features.clone().transpose().matmul(train_features.clone()));
        let gram: Vec<f64> = gram.into_iter().map(|v| v / n as f64).collect();
        let (q, eigvals) = eigh(&gram, k);
        let q: Vec<f32> = q.into_iter().map(|v| v as f32).collect();
        let eigvecs = Tensor::<2>::from_data(TensorData::new(q, [k, k]), &device);
        let train_rotated = train_features.matmul(eigvecs.clone());
        Self { lambdas, eigvecs, eigvals, train_rotated }
    }

    /// Mean eigenvalue of the kernel (a scale for the damping grid).
    pub fn mean_eigenvalue(&self) -> f64 {
        self.eigvals.iter().sum::<f64>() / self.eigvals.len() as f64
    }

    /// Scores `[L][Q * N]` of query features `[Q, k]`.
    pub fn score(&self, query_features: Tensor<2>) -> Vec<Vec<f32>> {
        let device = query_features.device();
        let k = self.eigvals.len();
        let q = query_features.matmul(self.eigvecs.clone());
        self.lambdas
            .iter()
            .map(|&l| {
                let inv: Vec<f32> = self.eigvals.iter().map(|e| (1.0 / (e + l)) as f32).collect();
                let inv = Tensor::<1>::from_floats(inv.as_slice(), &device).reshape([1, k]);
                (q.clone() * inv)
                    .matmul(self.train_rotated.clone().transpose())
                    .into_data()
                    .try_to_vec::<f32>()
                    .expect("f32 scores")
            })
            .collect()
    }
}
