//! Implicit meta-learning ("meta out-of-context learning") in a small transformer LM trained
//! from scratch: Krasheninnikov et al., "Implicit meta-learning may lead language models to
//! trust more reliable sources" (ICML 2024), on a symbolic world (spec
//! `shared/specs/p6-meta-ocl.md`).
//!
//! - [`world`]: the world of entities with 6 attribute facts, its tokenizer, and the authors'
//!   two-stage protocol (subsets, variables, tags 1/2/3, the derangement of inconsistent
//!   definitions, held-out QA).
//! - [`model`]: a decoder-only transformer (learned positions, causal attention).
//! - [`train`]: the causal-LM [`foundation::train::Objective`], stage training with checkpoints,
//!   greedy decoding and exact match.
//! - [`bench`]: tokens per second of a training step (the Rust side of
//!   `bench/meta_ocl_jax.py`).
//! - [`harness`]: stage 0 once, then stage 1 and stage 2 per seed (sharded, parallel,
//!   resumable), the paired gap EM(d1consis) - EM(d2consis) with a bootstrap CI, `report.md` and
//!   plots; EM per subset over training.
//! - [`controls`]: the base sweep and its controls (swapped tag roles, tag–consistency
//!   correlation, another batch size) as sibling runs, and their combined report.

#![warn(missing_docs)]

pub mod bench;
pub mod controls;
pub mod harness;
pub mod model;
pub mod numeric;
pub mod train;
pub mod vision;
pub mod world;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum MetaOclError {
    /// Bad settings or input.
    #[error("{0}")]
    Invalid(String),
    /// A token name the vocabulary does not have.
    #[error("unknown token {0:?}")]
    UnknownToken(String),
    /// Checkpoint or model file trouble.
    #[error(transparent)]
    Checkpoint(#[from] foundation::train::CheckpointError),
    /// A file could not be written.
    #[error(transparent)]
    Io(#[from] foundation::atomic::IoError),
    /// A figure could not be written.
    #[error(transparent)]
    Png(#[from] foundation::plot::PngError),
    /// A file could not be read or parsed.
    #[error("{path}: {message}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
}
