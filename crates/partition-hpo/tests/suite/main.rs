//! The partition-hpo crate's integration tests as one test binary.

mod common;
mod errors;
mod masking;
mod rotation;
mod toy;
