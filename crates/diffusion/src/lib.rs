//! Denoising diffusion probabilistic models, built the way "DDPM in six simple steps"
//! (Turner et al. 2024) explains them: a Gaussian AR(1) noising process used as data
//! augmentation, a reverse chain fitted by regression with shared parameters (FiLM time
//! conditioning), Rao-Blackwellised denoising targets (epsilon or x0 parametrisation), a choice
//! of loss weighting over t, and ancestral sampling.
//!
//! Every `Linear` and `Conv2d` of the networks is called through [`foundation::tap::Tap`], the hook point the
//! curvature/attribution crates use to record layer inputs and output gradients.

pub mod bench;
pub mod checkpoint;
pub mod diffusion;
pub mod elbo;
pub mod ema;
pub mod eval;
pub mod jobs;
pub mod model;
pub mod progress;
pub mod run;
pub mod sample;
pub mod schedule;
pub mod train;
pub mod unet;

pub use diffusion::{Diffusion, DiffusionConfig, LossWeighting, Parametrisation};
pub use foundation::tap::{Tap, TapRecord};
pub use model::{AnyDenoiser, Denoiser, Mlp, MlpConfig, ModelConfig};
pub use sample::{sample, sample_batched, ReverseVariance, Sampler};
pub use schedule::{NoiseSchedule, ScheduleConfig, ScheduleKind};
pub use train::{TrainConfig, TrainData, TrainState, Trainer};
pub use unet::{UNet, UNetConfig};
