//! The mnist-classifier crate's integration tests as one test binary: each test binary is a full
//! link of the workspace's dependencies, so one per crate keeps the release build short.

mod io;
mod retrain;
mod train;
