//! The attribution crate's integration tests as one test binary: each test binary is a full
//! link of the workspace's dependencies, so one per crate keeps the release build short. Tests
//! on an f64 device stay in binaries of their own (`tests/*.rs`): the CPU device's float type is
//! set once per process.

mod classifier;
mod cli;
mod lds;
mod plot_rows;
