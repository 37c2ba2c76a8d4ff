//! The diffusion training objective as curvature data: every (example, timestep, noise) draw is
//! one regression datum with input `(x_t, t)`, the network's output, its target
//! ([`Diffusion::target`]) and the loss weight `w_t` ([`Diffusion::loss_weights`]), so that the
//! per-datum loss of [`CurvatureOutput`] is [`Diffusion::per_example_loss`].

use burn::prelude::*;
use diffusion::model::Denoiser;
use diffusion::{Diffusion, TrainData};
use foundation::rng::{normals, stream_for, timesteps, Purpose};
use foundation::tap::Tap;

use crate::fit::{CurvatureBatch, CurvatureOutput};

/// A batch of (example, draw) data of the diffusion loss. The halves of
/// [`CurvatureBatch::split`] hold copies of the model with every parameter untracked
/// (`no_grad`): the curvature needs gradients at the layer outputs only (the tap's probes), so
/// their backward passes skip the weight gradients, and the two halves build disjoint autodiff
/// graphs that run concurrently.
pub struct DiffusionBatch<'m, M: Denoiser> {
    model: M,
    diffusion: &'m Diffusion,
    x0: Tensor<2>,
    t: Vec<usize>,
    eps: Tensor<2>,
}

impl<'m, M: Denoiser> DiffusionBatch<'m, M> {
    /// The data `(example, draw)` of `pairs`, for draw set `pass` (passes use independent draws).
    /// Draw `r` of example `n` depends only on `(seed, pass, n, r)` (common random numbers): it
    /// comes from the stream of [`Purpose::CurvatureDraw`].
    pub fn new(
        model: &'m M,
        diffusion: &'m Diffusion,
        data: &TrainData,
        pairs: &[(usize, u64)],
        seed: u64,
        pass: u64,
        device: &Device,
    ) -> Self {
        let d = data.dim;
        let mut t = Vec::with_capacity(pairs.len());
        let mut eps = Vec::with_capacity(pairs.len() * d);
        for &(n, draw) in pairs {
            let mut rng = stream_for(seed, Purpose::CurvatureDraw { pass, draw }, n as u64);
            t.push(timesteps(&mut rng, 1, diffusion.steps())[0]);
            eps.extend(normals(&mut rng, d));
        }
        let idx: Vec<usize> = pairs.iter().map(|p| p.0).collect();
        let x0 = data.batch(&idx, device);
        let eps = Tensor::from_data(TensorData::new(eps, [pairs.len(), d]), device);
        Self { model: model.clone(), diffusion, x0, t, eps }
    }

    /// All `examples x draws` data of one pass, in batches of `batch_size`, built lazily.
    #[allow(clippy::too_many_arguments)]
    pub fn batches(
        model: &'m M,
        diffusion: &'m Diffusion,
        data: &'m TrainData,
        examples: &'m [usize],
        draws: u64,
        seed: u64,
        pass: u64,
        batch_size: usize,
        device: &'m Device,
    ) -> impl Iterator<Item = Self> + 'm {
        let pairs: Vec<(usize, u64)> =
            examples.iter().flat_map(|&n| (0..draws).map(move |r| (n, r))).collect();
        let chunks: Vec<Vec<(usize, u64)>> = pairs.chunks(batch_size.max(1)).map(|c| c.to_vec()).collect();
        chunks.into_iter().map(move |c| Self::new(model, diffusion, data, &c, seed, pass, device))
    }
}

impl<M: Denoiser> CurvatureBatch for DiffusionBatch<'_, M> {
    fn forward(&self, tap: &mut Tap) -> CurvatureOutput {
        let (_, output) =
            self.diffusion.forward_draw(&self.model, self.x0.clone(), &self.t, self.eps.clone(), tap);
        CurvatureOutput {
            output,
            target: self.diffusion.target(self.x0.clone(), self.eps.clone()),
            weight: self.diffusion.loss_weights(&self.t, &self.x0.device()),
        }
    }

    fn len(&self) -> usize {
        self.t.len()
    }

    fn split(&self) -> Option<[Box<dyn CurvatureBatch + Send + '_>; 2]> {
        let n = self.t.len();
        if n < 2 {
            return None;
        }
        let h = n / 2;
        let half = |start: usize, len: usize| -> Box<dyn CurvatureBatch + Send + '_> {
            Box::new(Self {
                model: self.model.clone().no_grad(),
                diffusion: self.diffusion,
                x0: self.x0.clone().narrow(0, start, len),
                t: self.t[start..start + len].to_vec(),
                eps: self.eps.clone().narrow(0, start, len),
            })
        };
        Some([half(0, h), half(h, n - h)])
    }
}
