//! Seeded random draws. Every draw in the crate comes from a ChaCha8 stream derived from a
//! user seed and a purpose/step counter, so results do not depend on call order elsewhere.

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// Derive an independent RNG from a base seed and up to two stream labels (e.g. step, purpose).
pub fn stream(seed: u64, a: u64, b: u64) -> ChaCha8Rng {
    // SplitMix-style mixing so that nearby (seed, a, b) give unrelated streams.
    let mut z = seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ChaCha8Rng::seed_from_u64(z ^ (z >> 31))
}

/// A 64-bit seed derived from `(seed, a, b)`, e.g. to seed burn's device RNG.
pub fn derived_seed(seed: u64, a: u64, b: u64) -> u64 {
    stream(seed, a, b).next_u64()
}

/// `n` standard normal draws.
pub fn normals(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.sample::<f32, _>(StandardNormal)).collect()
}

/// `n` uniform timesteps in `0..steps`.
pub fn timesteps(rng: &mut impl Rng, n: usize, steps: usize) -> Vec<usize> {
    (0..n).map(|_| rng.gen_range(0..steps)).collect()
}

/// Purpose labels for [`stream`].
pub mod purpose {
    /// Minibatch order.
    pub const ORDER: u64 = 1;
    /// Timesteps and noise of a training step.
    pub const TRAIN_NOISE: u64 = 2;
    /// Sampling noise.
    pub const SAMPLE: u64 = 3;
    /// ELBO estimation.
    pub const ELBO: u64 = 4;
    /// Dropout (burn's device RNG is reseeded from this each step).
    pub const DROPOUT: u64 = 5;
    /// Model initialisation.
    pub const INIT: u64 = 6;
}
