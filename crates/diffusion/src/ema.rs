//! Exponential moving average of model weights (defined in [`foundation::train`]).

pub use foundation::train::{ema_update, flat_params};
