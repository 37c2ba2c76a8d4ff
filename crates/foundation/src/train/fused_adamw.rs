//! AdamW in one pass over each parameter tensor.
//!
//! burn's [`AdamW`] updates a parameter with about a dozen tensor operations (two moment
//! updates, a square, two bias corrections, a square root, an add, a divide, the decay and the
//! step), each a pass over the tensor into a freshly allocated buffer. On small models that run
//! small batches (a step of a few hundred tokens), those passes weigh. [`FusedAdamW`] computes the
//! same expressions, in the same order and the same `f32` arithmetic, element by element in one
//! loop, on the rayon pool for large tensors: the same numbers as burn's AdamW (bit for bit on the
//! CPU backend), the same per-parameter state ([`AdamWState`], so checkpoints of either load into
//! the other), at a fraction of the memory traffic. Tensors that are not `f32` on the `flex` CPU
//! backend, and AMSGrad or cautious weight decay, go through burn's [`AdamW`] unchanged.

use burn::optim::{AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, LearningRate, Optimizer};
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

/// Elements per rayon task (smaller tensors run in one).
const CHUNK: usize = 1 << 14;

/// AdamW (decoupled weight decay, bias-corrected moments) fused into one pass per tensor; see the
/// module documentation.
#[derive(Clone)]
pub struct FusedAdamW {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    /// burn's AdamW with the same settings, for the tensors the fused loop does not take.
    fallback: AdamW,
}

impl FusedAdamW {
    /// The fused optimizer with moment decays `beta_1`, `beta_2`, `epsilon` added to the square
    /// root of the second moment, and decoupled weight decay `weight_decay` (burn's
    /// `AdamWConfig::new().with_beta_1(beta_1)...` without AMSGrad, cautious decay or per-tensor
    /// clipping; clip before the step, e.g. with [`clip_global_norm`](super::clip_global_norm)).
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32, weight_decay: f32) -> Self {
        let fallback = AdamWConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(epsilon)
            .with_weight_decay(weight_decay)
            .build();
        Self { beta_1, beta_2, epsilon, weight_decay, fallback }
    }
}

/// The `f32` values of `t` (a copy when its buffer is shared).
fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().expect("f32 tensor")
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let device = tensor.device();
        let fused = device == Device::flex()
            && tensor.dtype() == DType::F32
            && grad.dtype() == DType::F32
            && state.as_ref().is_none_or(|s| {
                s.momentum.max_moment_2.is_none()
                    && s.momentum.moment_1.dtype() == DType::F32
                    && s.momentum.moment_2.dtype() == DType::F32
            });
        if !fused {
            return self.fallback.step(lr, tensor, grad, state);
        }
        let shape = tensor.shape();
        let mut p = values(tensor);
        let g = values(grad);
        let (time, mut m, mut v, first) = match state {
            Some(s) => (s.momentum.time + 1, values(s.momentum.moment_1), values(s.momentum.moment_2), false),
            None => (1, vec![0.0f32; g.len()], vec![0.0f32; g.len()], true),
        };
        // The scalars exactly as burn's AdamW forms them: `f32` factors, `f32` bias corrections
        // from `powi`, the decay factor formed in `f64` and rounded, the learning rate rounded.
        let (b1, b2) = (self.beta_1, self.beta_2);
        let (f1, f2) = (1.0 - b1, 1.0 - b2);
        let time_i = time as i32;
        let c1 = 1f32 - b1.powi(time_i);
        let c2 = 1f32 - b2.powi(time_i);
        let eps = self.epsilon;
        let decay_rate = lr * f64::from(self.weight_decay);
        let keep = (decay_rate != 0.0).then_some((1.0 - decay_rate) as f32);
        let lr32 = lr as f32;
        let update = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                // First step: burn sets m = g (1 - b1) and v = g^2 (1 - b2) (the same numbers as
                // 0 b1 + ... with m = v = 0).
                if first {
                    *m = g * f1;
                    *v = (g * g) * f2;
                } else {
                    *m = *m * b1 + g * f1;
                    *v = *v * b2 + (g * g) * f2;
                }
                let delta = (*m / c1) / ((*v / c2).sqrt() + eps);
                let decayed = match keep {
                    Some(k) => *p * k,
                    None => *p,
                };
                *p = decayed - delta * lr32;
            }
        };
        if p.len() > CHUNK {
            p.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| update(p, g, m, v));
        } else {
            update(&mut p, &g, &mut m, &mut v);
        }
        let tensor = |x: Vec<f32>| Tensor::<D>::from_data(TensorData::new(x, shape.clone()), &device);
        let momentum =
            AdaptiveMomentumState { time, moment_1: tensor(m), moment_2: tensor(v), max_moment_2: None };
        (tensor(p), Some(AdamWState { momentum }))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}
