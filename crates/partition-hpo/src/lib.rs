//! Hyperparameter optimisation through network partitioning (Mlodozeniec, Reisser, Louizos,
//! ICLR 2023): the training data are split into shards `D_1..D_C` and the weights into partitions
//! `w_1..w_C`; partition k is trained only on shards `1..k`, so subnetwork k-1 has never seen
//! shard k, and the loss of the subnetworks on their unseen shards (the out-of-training-sample
//! loss) is the objective of hyperparameters `psi` that enter the forward pass: a rotation range,
//! a sigmoid input mask and a Gaussian dropout rate, learned in the same run by Adam from the
//! gradient of the current forward pass (no unrolling).
//!
//! [`model`] holds the partitioned network and `psi`, [`hpo`] the objectives and the training
//! loop (parameter steps on `foundation::train`), [`augment`] the differentiable rotation,
//! [`data`] shards and derived data sets, [`laplace`] the Laplace marginal-likelihood baseline,
//! [`experiment`] the experiments with their baselines and reports.

#![warn(missing_docs)]

pub mod augment;
pub mod data;
pub mod experiment;
pub mod federated;
pub mod hpo;
pub mod laplace;
pub mod model;
pub mod plot;

use foundation::atomic::IoError;

/// Errors of this crate: one line naming the problem.
#[derive(Debug, thiserror::Error)]
pub enum HpoError {
    /// Proportions that are not positive or do not sum to 1.
    #[error("{what} proportions {values:?} must be positive and sum to 1 (they sum to {sum})")]
    BadProportions {
        /// Which proportions (weight or data).
        what: String,
        /// The values given.
        values: Vec<f64>,
        /// Their sum.
        sum: f64,
    },
    /// More partitions than training rows (or a shard that would be empty).
    #[error("C = {partitions} partitions need at least one training example per shard, but there are {examples} examples")]
    TooFewExamples {
        /// C.
        partitions: usize,
        /// Training rows.
        examples: usize,
    },
    /// Any other invalid setting.
    #[error("{0}")]
    InvalidArgument(String),
    /// A non-finite training loss.
    #[error("training diverged (loss {loss} at step {step}); lower the learning rate")]
    Diverged {
        /// Step.
        step: usize,
        /// Loss.
        loss: f32,
    },
    /// Reading data.
    #[error(transparent)]
    Data(#[from] ::data::DataError),
    /// Writing a file.
    #[error(transparent)]
    Io(#[from] IoError),
    /// Writing or encoding a PNG.
    #[error(transparent)]
    Png(#[from] foundation::plot::PngError),
}
