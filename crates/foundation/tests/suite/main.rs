//! The foundation crate's integration tests as one test binary: each test binary is a full
//! link of the workspace's dependencies, so one per crate keeps the release build short.

mod atomic;
mod fused_adamw;
mod layers;
mod loss;
mod plot;
mod stats;
mod tensor_file_and_fingerprint;
mod train;
