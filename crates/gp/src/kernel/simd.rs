//! Kernel-value passes over buffers of squared distances, built for several vector widths and
//! chosen at run time.

use super::KernelKind;

/// 1.5 · 2⁵²: adding and subtracting it rounds an f64 of magnitude < 2⁵¹ to the nearest integer,
/// with plain additions that vectorise (unlike `f64::round`).
const ROUNDING_SHIFTER: f64 = 6_755_399_441_055_744.0;
// ln 2 split as in fdlibm: the high part has trailing zero bits so that k·LN2_HI is exact.
const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000); // 6.93147180369123816490e-01
const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76); // 1.90821492927058770002e-10

/// `exp(x)` for `x ≤ 0`, branch-free so that the kernel loops vectorise: Cody–Waite reduction
/// `x = k ln2 + r`, |r| ≤ ln2/2, degree-12 Taylor polynomial for `e^r` (truncation error below
/// 2e-16 relative), and `2^k` built from its bits. Arguments below −700 return `exp(−700)` (≈1e-304),
/// which is zero for every purpose here.
#[inline(always)]
fn exp_nonpositive(x: f64) -> f64 {
    let x = if x < -700.0 { -700.0 } else { x };
    let shifted = x * std::f64::consts::LOG2_E + ROUNDING_SHIFTER;
    let k = shifted - ROUNDING_SHIFTER;
    let r = x - k * LN2_HI - k * LN2_LO;
    let mut p = 1.0 / 479_001_600.0;
    p = p * r + 1.0 / 39_916_800.0;
    p = p * r + 1.0 / 3_628_800.0;
    p = p * r + 1.0 / 362_880.0;
    p = p * r + 1.0 / 40_320.0;
    p = p * r + 1.0 / 5_040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    let k_int = (shifted.to_bits() as i64).wrapping_sub(ROUNDING_SHIFTER.to_bits() as i64);
    p * f64::from_bits(((k_int + 1023) << 52) as u64)
}

/// Replaces squared distances by kernel values `s² k(r)`, one loop per kernel so each vectorises.
#[inline(always)]
fn values_in_place_generic(kind: KernelKind, signal_variance: f64, buf: &mut [f64]) {
    let s2 = signal_variance;
    match kind {
        KernelKind::Matern12 => buf.iter_mut().for_each(|v| *v = s2 * exp_nonpositive(-v.sqrt())),
        KernelKind::Matern32 => buf.iter_mut().for_each(|v| {
            let sr = (3.0 * *v).sqrt();
            *v = s2 * (1.0 + sr) * exp_nonpositive(-sr);
        }),
        KernelKind::Matern52 => buf.iter_mut().for_each(|v| {
            let sr = (5.0 * *v).sqrt();
            *v = s2 * (1.0 + sr + 5.0 / 3.0 * *v) * exp_nonpositive(-sr);
        }),
        KernelKind::Rbf => buf.iter_mut().for_each(|v| *v = s2 * exp_nonpositive(-0.5 * *v)),
    }
}

/// Replaces squared distances by unit kernel values `k(r)/s²` and writes the derivative weights
/// `−k'(r)/(r s²)` (see [`KernelKind::unit_value_and_weight`]) into `weights`.
#[inline(always)]
fn values_and_weights_generic(kind: KernelKind, buf: &mut [f64], weights: &mut [f64]) {
    let pairs = buf.iter_mut().zip(weights.iter_mut());
    match kind {
        KernelKind::Matern12 => pairs.for_each(|(v, w)| {
            let r = v.sqrt();
            let e = exp_nonpositive(-r);
            *v = e;
            *w = e / r;
        }),
        KernelKind::Matern32 => pairs.for_each(|(v, w)| {
            let sr = (3.0 * *v).sqrt();
            let e = exp_nonpositive(-sr);
            *v = (1.0 + sr) * e;
            *w = 3.0 * e;
        }),
        KernelKind::Matern52 => pairs.for_each(|(v, w)| {
            let sr = (5.0 * *v).sqrt();
            let e = exp_nonpositive(-sr);
            *v = (1.0 + sr + 5.0 / 3.0 * *v) * e;
            *w = 5.0 / 3.0 * (1.0 + sr) * e;
        }),
        KernelKind::Rbf => pairs.for_each(|(v, w)| {
            let e = exp_nonpositive(-0.5 * *v);
            *v = e;
            *w = e;
        }),
    }
}

// The build targets baseline x86-64 (SSE2); these copies let LLVM use 256- or 512-bit vectors when
// the CPU has them (checked at run time, the check is a cached atomic load).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn values_in_place_avx512(kind: KernelKind, signal_variance: f64, buf: &mut [f64]) {
    values_in_place_generic(kind, signal_variance, buf)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn values_in_place_avx2(kind: KernelKind, signal_variance: f64, buf: &mut [f64]) {
    values_in_place_generic(kind, signal_variance, buf)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn values_and_weights_avx512(kind: KernelKind, buf: &mut [f64], weights: &mut [f64]) {
    values_and_weights_generic(kind, buf, weights)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn values_and_weights_avx2(kind: KernelKind, buf: &mut [f64], weights: &mut [f64]) {
    values_and_weights_generic(kind, buf, weights)
}

/// The widest vector extension the CPU has, among those the kernel passes are built for.
#[derive(Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum SimdLevel {
    Avx512,
    Avx2,
    Baseline,
}

fn simd_level() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512dq") {
            return SimdLevel::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Baseline
}

/// Kernel values `s² k(r)` from clipped squared distances, in place (SIMD when available).
pub fn kernel_values_in_place(kind: KernelKind, signal_variance: f64, buf: &mut [f64]) {
    match simd_level() {
        // SAFETY: `simd_level` detected the CPU features each copy is compiled for.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { values_in_place_avx512(kind, signal_variance, buf) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { values_in_place_avx2(kind, signal_variance, buf) },
        _ => values_in_place_generic(kind, signal_variance, buf),
    }
}

/// Unit kernel values (in place of the squared distances) and derivative weights.
pub fn kernel_values_and_weights(kind: KernelKind, buf: &mut [f64], weights: &mut [f64]) {
    assert_eq!(buf.len(), weights.len());
    match simd_level() {
        // SAFETY: `simd_level` detected the CPU features each copy is compiled for.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { values_and_weights_avx512(kind, buf, weights) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { values_and_weights_avx2(kind, buf, weights) },
        _ => values_and_weights_generic(kind, buf, weights),
    }
}
