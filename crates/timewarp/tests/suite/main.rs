//! The timewarp crate's tests, in one binary.

mod accept;
mod flow;
mod forces;
mod md;
mod mh;
mod reference;
mod stats;
mod support;
