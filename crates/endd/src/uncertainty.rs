//! Uncertainty measures: of an ensemble of categoricals (total, expected data, knowledge =
//! mutual information, expected pairwise KL) and of a Dirichlet in closed form (the same four plus
//! its differential entropy). Natural logarithms throughout.

use serde::{Deserialize, Serialize};

use crate::special::{digamma, ln_gamma};

/// The uncertainties of one input.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Uncertainty {
    /// Total uncertainty: entropy of the predictive (mean) distribution.
    pub total: f64,
    /// Expected data uncertainty: mean entropy of the members (or expected entropy under the
    /// Dirichlet).
    pub data: f64,
    /// Knowledge uncertainty: the mutual information `total − data`.
    pub knowledge: f64,
    /// Expected pairwise KL divergence between members (or between two draws of the Dirichlet).
    pub epkl: f64,
    /// Differential entropy of the Dirichlet (NaN for an ensemble).
    pub diff_entropy: f64,
}

/// Entropy `−Σ p ln p` (terms with `p = 0` count 0).
pub fn entropy(p: &[f64]) -> f64 {
    -p.iter().filter(|&&v| v > 0.0).map(|&v| v * v.ln()).sum::<f64>()
}

/// The uncertainties of an ensemble from its members' probabilities `[M, K]` (row-major).
pub fn ensemble_uncertainty(probs: &[f64], members: usize, classes: usize) -> Uncertainty {
    let mut mean = vec![0.0; classes];
    let mut mean_log = vec![0.0; classes];
    let mut data = 0.0;
    for m in 0..members {
        let p = &probs[m * classes..(m + 1) * classes];
        data += entropy(p) / members as f64;
        for c in 0..classes {
            mean[c] += p[c] / members as f64;
            mean_log[c] += p[c].max(f64::MIN_POSITIVE).ln() / members as f64;
        }
    }
    let total = entropy(&mean);
    // E_{m,m'} KL(π_m || π_m') = −DU − Σ_c mean_c · meanlog_c.
    let epkl = -data - mean.iter().zip(&mean_log).map(|(p, l)| p * l).sum::<f64>();
    Uncertainty { total, data, knowledge: total - data, epkl, diff_entropy: f64::NAN }
}

/// The uncertainties of `Dir(alpha)` in closed form: `TU = H[α/α₀]`,
/// `DU = −Σ_c (α_c/α₀)(ψ(α_c+1) − ψ(α₀+1))`, `MI = TU − DU`, `EPKL = (K−1)/α₀`, and the
/// differential entropy `ln B(α) + (α₀ − K) ψ(α₀) − Σ_c (α_c − 1) ψ(α_c)`.
pub fn dirichlet_uncertainty(alpha: &[f64]) -> Uncertainty {
    let k = alpha.len() as f64;
    let a0: f64 = alpha.iter().sum();
    let mean: Vec<f64> = alpha.iter().map(|a| a / a0).collect();
    let total = entropy(&mean);
    let psi0 = digamma(a0 + 1.0);
    let data = -alpha.iter().zip(&mean).map(|(&a, &p)| p * (digamma(a + 1.0) - psi0)).sum::<f64>();
    let ln_b = alpha.iter().map(|&a| ln_gamma(a)).sum::<f64>() - ln_gamma(a0);
    let diff_entropy =
        ln_b + (a0 - k) * digamma(a0) - alpha.iter().map(|&a| (a - 1.0) * digamma(a)).sum::<f64>();
    Uncertainty { total, data, knowledge: total - data, epkl: (k - 1.0) / a0, diff_entropy }
}

/// `ln Dir(π | α)`, the log-density of the Dirichlet at a point of the simplex.
pub fn dirichlet_log_density(pi: &[f64], alpha: &[f64]) -> f64 {
    let a0: f64 = alpha.iter().sum();
    ln_gamma(a0) + alpha.iter().zip(pi).map(|(&a, &p)| (a - 1.0) * p.ln() - ln_gamma(a)).sum::<f64>()
}
