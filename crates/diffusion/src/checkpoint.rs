//! Saving and loading module weights (safetensors), written atomically, and crash-safe checkpoint
//! generations: all of it lives in [`foundation::train::checkpoint`], re-exported here.

pub use foundation::train::checkpoint::{
    load_module, read_step, save_module, stable_param_ids, write_atomic, CheckpointError, Checkpoints,
    STATE_FILE,
};
