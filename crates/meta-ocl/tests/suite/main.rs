//! Integration tests of meta-ocl (one test binary: see the workspace's testing notes).

mod bench;
mod harness;
mod model;
mod world;
