//! The partition-hpo crate's integration tests as one test binary.

mod common;
mod errors;
mod federated;
mod gate;
mod laplace;
mod masking;
mod resume;
mod rotation;
mod toy;
