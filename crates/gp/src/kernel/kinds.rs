//! The stationary kernel families and their hyperparameters θ.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{GpError, Result};

/// The stationary kernel family. All use ARD length scales: `r = ‖(x − x')/ℓ‖`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelKind {
    /// Matérn-1/2 (exponential): `s² exp(−r)`.
    Matern12,
    /// Matérn-3/2 (the reference default): `s² (1 + √3 r) exp(−√3 r)`.
    Matern32,
    /// Matérn-5/2: `s² (1 + √5 r + 5r²/3) exp(−√5 r)`.
    Matern52,
    /// Squared exponential: `s² exp(−r²/2)`.
    Rbf,
}

impl KernelKind {
    /// Kernel value divided by `s²` and the derivative weight `−k'(r)/(r s²)`, at squared scaled
    /// distance `r2` (already clipped). The weight turns length-scale derivatives into
    /// `∂k/∂ℓ_d = s² · weight · (Δ_d/ℓ_d)² / ℓ_d`, which is what makes them a GEMM.
    #[inline(always)]
    pub fn unit_value_and_weight(self, r2: f64) -> (f64, f64) {
        match self {
            KernelKind::Matern12 => {
                let r = r2.sqrt();
                let e = (-r).exp();
                (e, e / r)
            }
            KernelKind::Matern32 => {
                let sr = (3.0 * r2).sqrt();
                let e = (-sr).exp();
                ((1.0 + sr) * e, 3.0 * e)
            }
            KernelKind::Matern52 => {
                let sr = (5.0 * r2).sqrt();
                let e = (-sr).exp();
                ((1.0 + sr + 5.0 * r2 / 3.0) * e, 5.0 / 3.0 * (1.0 + sr) * e)
            }
            KernelKind::Rbf => {
                let e = (-0.5 * r2).exp();
                (e, e)
            }
        }
    }

    /// Kernel value divided by `s²` at squared scaled distance `r2` (already clipped).
    #[inline(always)]
    pub fn unit_value(self, r2: f64) -> f64 {
        match self {
            KernelKind::Matern12 => (-r2.sqrt()).exp(),
            KernelKind::Matern32 => {
                let sr = (3.0 * r2).sqrt();
                (1.0 + sr) * (-sr).exp()
            }
            KernelKind::Matern52 => {
                let sr = (5.0 * r2).sqrt();
                (1.0 + sr + 5.0 * r2 / 3.0) * (-sr).exp()
            }
            KernelKind::Rbf => (-0.5 * r2).exp(),
        }
    }

    /// `2ν` of the Matérn family (degrees of freedom of the chi-square in its spectral density),
    /// `None` for the RBF kernel (Gaussian spectral density).
    pub fn matern_two_nu(self) -> Option<f64> {
        match self {
            KernelKind::Matern12 => Some(1.0),
            KernelKind::Matern32 => Some(3.0),
            KernelKind::Matern52 => Some(5.0),
            KernelKind::Rbf => None,
        }
    }
}

impl FromStr for KernelKind {
    type Err = GpError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "matern12" | "matern-1/2" => Ok(KernelKind::Matern12),
            "matern32" | "matern-3/2" => Ok(KernelKind::Matern32),
            "matern52" | "matern-5/2" => Ok(KernelKind::Matern52),
            "rbf" => Ok(KernelKind::Rbf),
            other => Err(GpError::InvalidArgument(format!(
                "unknown kernel '{other}' (known: matern12, matern32, matern52, rbf)"
            ))),
        }
    }
}

impl fmt::Display for KernelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            KernelKind::Matern12 => "matern12",
            KernelKind::Matern32 => "matern32",
            KernelKind::Matern52 => "matern52",
            KernelKind::Rbf => "rbf",
        };
        f.write_str(name)
    }
}

/// GP hyperparameters θ = (σ, s, ℓ_1..ℓ_d), all standard deviations / scales (not variances).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hyperparameters {
    /// Observation noise standard deviation σ; the system matrix is `K + σ² I`.
    pub noise_scale: f64,
    /// Signal scale s; the kernel's variance is `s²`.
    pub signal_scale: f64,
    /// One length scale per input dimension.
    pub length_scales: Vec<f64>,
}

impl Hyperparameters {
    /// The reference initialisation: σ = s = ℓ_d = 1.
    pub fn ones(dim: usize) -> Self {
        Hyperparameters { noise_scale: 1.0, signal_scale: 1.0, length_scales: vec![1.0; dim] }
    }

    /// Flattens to `[σ, s, ℓ_1, …, ℓ_d]`, the order used by gradients and the optimiser.
    pub fn to_vec(&self) -> Vec<f64> {
        let mut v = vec![self.noise_scale, self.signal_scale];
        v.extend_from_slice(&self.length_scales);
        v
    }

    /// Inverse of [`Hyperparameters::to_vec`].
    pub fn from_slice(v: &[f64]) -> Result<Self> {
        if v.len() < 3 {
            return Err(GpError::InvalidArgument(format!(
                "hyperparameter vector needs at least 3 entries, got {}",
                v.len()
            )));
        }
        Ok(Hyperparameters { noise_scale: v[0], signal_scale: v[1], length_scales: v[2..].to_vec() })
    }

    /// Checks that every entry is finite and positive and that there is one length scale per input
    /// dimension.
    pub fn validate(&self, dim: usize) -> Result<()> {
        if self.length_scales.len() != dim {
            return Err(GpError::DimensionMismatch {
                what: "length scales vs input dimension".into(),
                expected: dim,
                found: self.length_scales.len(),
            });
        }
        for (name, value) in [("noise scale", self.noise_scale), ("signal scale", self.signal_scale)]
            .into_iter()
            .chain(self.length_scales.iter().map(|&l| ("length scale", l)))
        {
            if !value.is_finite() {
                return Err(GpError::NonFinite { what: format!("hyperparameters ({name})") });
            }
            if value <= 0.0 {
                return Err(GpError::InvalidArgument(format!("{name} must be positive, got {value}")));
            }
        }
        Ok(())
    }
}
