//! Training owns its randomness: two trainers on two threads of one process (and a third thread
//! drawing from burn's process-wide RNG) give exactly the weights each gives alone.

use crate::common;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::Distribution;
use diffusion::ema::flat_params;
use diffusion::{Diffusion, DiffusionConfig, ModelConfig, TrainConfig, TrainData, Trainer, UNetConfig};
use foundation::rng::{normals, stream};

fn params<M: Module>(m: &M) -> Vec<Vec<f32>> {
    flat_params(m).into_iter().map(|t| t.into_data().try_into_vec::<f32>().unwrap()).collect()
}

/// Three steps of a tiny U-Net with dropout (so initialisation and dropout masks both draw).
fn train(seed: u64) -> (Vec<f32>, Vec<Vec<f32>>) {
    let n = 32;
    let rows: Vec<f32> =
        normals(&mut stream(5, 0, 0), n * 64).into_iter().map(|v| v.clamp(-1.0, 1.0)).collect();
    let data = TrainData::new(rows, n, 64);
    let diff = Diffusion::new(DiffusionConfig::default());
    let cfg = TrainConfig { steps: 3, batch_size: 8, warmup_steps: 1, seed, ..TrainConfig::default() };
    let ModelConfig::Unet(unet) = common::tiny_unet() else { unreachable!() };
    let model = ModelConfig::Unet(UNetConfig { dropout: 0.2, ..unet });
    let trainer = Trainer::new(cfg, &diff, &data, &Device::flex());
    let mut state = trainer.init_state(|rng, d| model.init_with(rng, d));
    let losses = (0..3).map(|_| trainer.step(&mut state)).collect();
    (losses, params(&state.model))
}

#[test]
fn two_trainers_on_two_threads_match_each_run_alone() {
    let alone_a = train(1);
    let alone_b = train(2);
    assert_ne!(alone_a.1, alone_b.1, "different seeds, different weights");
    let (a, b) = std::thread::scope(|s| {
        let noise = s.spawn(|| {
            // Draws from burn's process-wide RNG meanwhile.
            for _ in 0..20 {
                let _ = Tensor::<2>::random([64, 64], Distribution::Default, &Device::flex())
                    .sum()
                    .into_scalar::<f32>();
            }
        });
        let a = s.spawn(|| train(1));
        let b = s.spawn(|| train(2));
        noise.join().unwrap();
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(a, alone_a, "seed 1 differs when run beside another trainer");
    assert_eq!(b, alone_b, "seed 2 differs when run beside another trainer");
}
