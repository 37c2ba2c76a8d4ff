//! What every system of the workspace stands on: seeded random streams with one registry of
//! purposes ([`rng`]), the one atomic (temp file + fsync + rename) writer and I/O error
//! ([`atomic`]), progress reporting as a trait ([`progress`]), summary statistics ([`stats`]),
//! f64/f32 safetensors files with a checked JSON header ([`tensor_file`]), the one data
//! fingerprint ([`fingerprint`]), the one softmax cross-entropy ([`loss`]), PNG figures through the one PNG writer
//! ([`plot`]), the hook point of curvature code, the [`tap::Tap`] and the tapped layers
//! ([`layers`]), and the one training loop ([`train`]), and the f64 CPU device of exactness tests ([`device`]).

#![warn(missing_docs)]

pub mod atomic;
#[cfg(feature = "cli")]
pub mod cli;
pub mod device;
pub mod fingerprint;
pub mod layers;
pub mod loss;
pub mod paths;
pub mod plot;
pub mod progress;
pub mod rng;
pub mod shard;
pub mod stats;
pub mod tap;
pub mod tensor_file;
pub mod train;
