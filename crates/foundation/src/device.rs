//! Devices shared by tests and tools that need more than the default f32 CPU device.

use std::sync::OnceLock;

use burn::prelude::Device;
use burn::tensor::FloatDType;

/// The CPU (`flex`) device with f64 as its float type, configured once per process.
///
/// Exactness tests (finite differences, exact Gauss-Newton matrices, closed forms) use it so
/// that their tolerances measure the method, not f32 rounding. The float type is chosen on the
/// first call, before any tensor exists on the device, and holds for the whole process: a
/// process that calls this must not also expect f32 tensors on `Device::flex()`, which is why
/// such tests live in their own test binaries.
///
/// # Panics
///
/// If the backend refuses the configuration, i.e. a tensor was created on the device before the
/// first call: a programming error in the test binary, not bad input.
pub fn f64_flex() -> Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE
        .get_or_init(|| {
            let mut device = Device::flex();
            device
                .configure(FloatDType::F64)
                .expect("f64 is configured before any tensor exists on the device");
            device
        })
        .clone()
}
