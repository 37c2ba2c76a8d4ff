//! The crate's random streams: every draw comes from [`foundation::rng::stream_for`] with
//! [`Purpose::Timewarp`] and one of the stream numbers below.

use foundation::rng::{stream_for, Purpose};
use rand_chacha::ChaCha8Rng;

/// Langevin noise of an MD run (index: run or replica).
pub const LANGEVIN: u64 = 1;
/// MH proposals, velocities and uniforms (index: chain).
pub const CHAIN: u64 = 2;
/// Moving-block bootstrap resamples.
pub const BOOTSTRAP: u64 = 3;
/// Initial velocities and states (index: run).
pub const INIT: u64 = 4;
/// Exploration chains (index: chain).
pub const EXPLORE: u64 = 5;
/// Acceptance-loss fine-tuning: the flow's own proposal noise and the starts' velocities
/// (index: step).
pub const FINETUNE: u64 = 6;

/// The stream `stream` (one of the constants above) for `index` under `seed`.
pub fn stream(seed: u64, stream: u64, index: u64) -> ChaCha8Rng {
    stream_for(seed, Purpose::Timewarp { stream }, index)
}
