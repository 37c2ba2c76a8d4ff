//! The data crate's integration tests as one test binary: each test binary is a full
//! link of the workspace's dependencies, so one per crate keeps the release build short.

mod dataset;
mod idx;
mod real_data;
