//! Small synthetic data and settings shared by the tests.

use burn::prelude::*;
use partition_hpo::data::Inputs;
use partition_hpo::hpo::{PsiInit, PsiOptimizer, RunConfig};
use partition_hpo::model::PsiUse;
use rand::{Rng, SeedableRng};

/// The CPU device.
pub fn device() -> Device {
    Device::flex()
}

/// `n` rows of 4x4 "images" plus `extra` features in [0, 1], labels from a fixed linear rule.
pub fn toy_inputs(n: usize, extra: usize, seed: u64) -> Inputs {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let d = 16 + extra;
    let x: Vec<f32> = (0..n * d).map(|_| rng.gen::<f32>()).collect();
    let y = (0..n)
        .map(|i| {
            let row = &x[i * d..(i + 1) * d];
            let s: f32 = row[..8].iter().sum::<f32>() - row[8..16].iter().sum::<f32>();
            (if s > 0.0 { 1 } else { 0 }) + 2 * ((row[0] > 0.5) as u8)
        })
        .collect();
    Inputs { x, y, n, d, image: (4, 4) }
}

/// A small partitioned run: C = 3, hidden [8], 24 steps, psi fixed unless a signal is set.
pub fn small_config() -> RunConfig {
    RunConfig {
        conv_channels: Vec::new(),
        hidden: vec![8],
        steps: 24,
        batch: 12,
        lr: 1e-2,
        seed: 7,
        partitions: 3,
        weight_proportions: vec![0.4, 0.3, 0.3],
        data_proportions: vec![0.5, 0.25, 0.25],
        psi_use: PsiUse { rotation: true, mask: true, dropout: true },
        signal: None,
        psi_every: 4,
        psi_lr: 0.05,
        psi_optimizer: PsiOptimizer::Adam,
        psi_batch: 8,
        samples: 2,
        init: PsiInit::Uniform { theta_deg: 30.0, mask_keep: 0.9, sigma: 0.2 },
        zero_defaults: false,
    }
}
