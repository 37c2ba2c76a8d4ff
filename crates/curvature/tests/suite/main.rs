//! The curvature crate's integration tests as one test binary, on an f64 CPU device (the
//! device's float type is set once per process).

mod kfac;
mod output_loss;
mod sequence;
