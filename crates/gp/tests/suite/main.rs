//! The gp crate's integration tests as one test binary: each test binary is a full
//! link of the workspace's dependencies, so one per crate keeps the release build short.

mod checkpoint;
mod common;
mod data_and_errors;
mod gradients;
mod solvers;
mod sources_and_streams;
