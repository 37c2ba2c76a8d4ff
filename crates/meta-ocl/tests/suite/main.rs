//! Integration tests of meta-ocl (one test binary: see the workspace's testing notes).

mod bench;
mod controls;
mod harness;
mod model;
mod numeric;
mod vision;
mod world;

use meta_ocl::harness::SweepConfig;
use meta_ocl::model::ModelConfig;
use meta_ocl::train::StageConfig;
use meta_ocl::world::WorldConfig;

/// A sweep small enough for a test: a 50-entity world, a one-layer d = 16 model, one epoch per
/// stage, two stage-2 seeds per stage-1 seed.
pub fn tiny_sweep(stage1_seeds: usize) -> SweepConfig {
    let stage = |epochs| StageConfig { epochs, batch_size: 64, lr: 3e-3, warmup_steps: 1, weight_decay: 0.0 };
    SweepConfig {
        world: WorldConfig { entities: 50, syllables: 10, ..WorldConfig::default() },
        model: ModelConfig { d_model: 16, layers: 1, heads: 2, d_mlp: 32, block: 8, tie_embeddings: false },
        stage0: stage(1),
        stage1: stage(1),
        stage2: stage(1),
        stage1_seeds,
        stage2_seeds: 2,
        recall_items: 50,
        resamples: 200,
        ..SweepConfig::default()
    }
}
