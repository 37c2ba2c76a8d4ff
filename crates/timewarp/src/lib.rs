//! Timewarp in miniature (Klein et al., NeurIPS 2023): pure-Rust Langevin molecular dynamics of
//! 2-D Lennard-Jones clusters ([`lj`], [`md`]), the auxiliary-velocity Metropolis–Hastings sampler
//! with batched proposals and exploration mode ([`mh`]), isomers and collective variables
//! ([`isomers`]), chain statistics ([`stats`]) and the reference runs and training pairs
//! ([`reference`](mod@reference)), the conditional flow and its training by likelihood ([`flow`], [`train`]) and
//! by the acceptance loss ([`accept`]). Sanity systems with quadrature references are in
//! [`potential`].

#![warn(missing_docs)]

pub mod accept;
pub mod error;
pub mod flow;
pub mod isomers;
pub mod lj;
pub mod md;
pub mod mh;
pub mod plot;
pub mod potential;
pub mod reference;
pub mod rng;
pub mod run;
pub mod stats;
pub mod train;

pub use error::TimewarpError;
