#![warn(missing_docs)]
//! Iterative Gaussian processes in f64: marginal-likelihood optimisation whose linear systems are
//! solved by conjugate gradients, alternating projections or stochastic gradient descent, with the
//! standard (Hutchinson) and pathwise gradient estimators, warm starts and early stopping
//! (Lin et al., NeurIPS 2024, arXiv 2405.18457; Lin et al., AABI 2024, arXiv 2405.18328).
//!
//! Layout:
//! - [`kernel`]: Matérn-1/2, 3/2, 5/2 and RBF kernels with ARD length scales, tiled matrix-free
//!   kernel-matrix products, and the gradient of a bilinear form `½ Σ M_ij ∂H_ij/∂θ`;
//! - [`features`]: random Fourier features, used to draw prior function samples;
//! - [`solvers`]: the solvers, all with one signature ([`solvers::Solver::solve`]);
//! - [`estimator`]: exact, standard and pathwise gradient estimators and their warm-start state;
//! - [`train`]: the outer loop (Adam on softplus-parametrised hyperparameters), resumable from a
//!   [`checkpoint`];
//! - [`predict`]: predictive mean and variance (pathwise samples or exact Cholesky) and metrics;
//! - [`uci`]: the UCI loader, z-scoring and centred nearest-neighbour subsampling.

pub mod checkpoint;
pub mod error;
pub mod estimator;
pub mod experiment;
pub mod features;
pub mod kernel;
pub mod predict;
pub mod rng;
pub mod solvers;
pub mod train;
pub mod uci;

pub use error::{GpError, Result};
