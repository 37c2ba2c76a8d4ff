//! The partition-hpo crate's integration tests as one test binary.

mod common;
mod errors;
mod laplace;
mod masking;
mod rotation;
mod toy;
