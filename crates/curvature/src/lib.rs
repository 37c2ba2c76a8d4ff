//! Curvature for influence functions: K-FAC and EK-FAC approximations of the Gauss-Newton
//! matrix over every tapped `Linear`, `Conv2d` and `Embedding` layer (rows, images or sequences
//! `[N, T, d]`), recorded through `foundation::tap::Tap`, for any output loss ([`loss`]: the MSE
//! of diffusion models, softmax cross-entropy of classifiers).
//!
//! The pieces read as in curvlinops: fit Kronecker factors ([`fit::fit_factors`]), eigendecompose
//! them ([`factors::KfacFactors::eigendecompose`]), optionally correct the eigenvalues
//! ([`fit::fit_correction`], EK-FAC), then apply `(G + lambda I)^-1` exactly in the eigenbasis
//! ([`precondition`]). [`exact`] builds the full GGN of small models for tests; [`io`] saves the
//! result with the settings it was fitted with.

pub mod diffusion_batch;
pub mod exact;
pub mod factors;
pub mod fit;
pub mod io;
pub mod layer;
pub mod loss;
pub mod precondition;

pub use factors::{EigenCurvature, KfacApprox, KfacFactors, LayerInfo};
pub use fit::{CurvatureBatch, GgnKind};
pub use io::CurvatureMeta;
pub use loss::{LossKind, Mse, OutputLoss, SoftmaxCrossEntropy};
