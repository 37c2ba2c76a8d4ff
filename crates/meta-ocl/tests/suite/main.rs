//! Integration tests of meta-ocl (one test binary: see the workspace's testing notes).

mod bench;
mod controls;
mod harness;
mod model;
mod numeric;
mod vision;
mod world;
