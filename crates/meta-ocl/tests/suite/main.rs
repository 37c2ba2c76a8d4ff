//! Integration tests of meta-ocl (one test binary: see the workspace's testing notes).

mod harness;
mod model;
mod numeric;
mod world;
