//! Attribution tests on the f64 CPU device (`foundation::device::f64_flex`), which configures the
//! device's float type for the whole process and so cannot share a binary with the f32 suite.

mod linear_gaussian;
mod one_loss;
