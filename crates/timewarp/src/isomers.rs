//! Isomers and collective variables of a cluster: quenching to the nearest local minimum by
//! steepest descent, isomer tables keyed by the quenched energy, and the coordination-number
//! moments μ₂, μ₃ (the CVs of Tribello et al. for 2-D LJ-7).

use crate::potential::Potential;

/// Steepest descent with an adaptive step from `x` until ‖∇U‖∞ < `tol` or `max_iter`
/// iterations. Returns the minimum's coordinates and energy.
pub fn quench(pot: &dyn Potential, x: &[f64], tol: f64, max_iter: usize) -> (Vec<f64>, f64) {
    let mut x = x.to_vec();
    let mut g = vec![0.0; x.len()];
    let mut u = pot.energy_grad(&x, &mut g);
    let mut step = 1e-3;
    let mut trial = x.clone();
    let mut g_trial = g.clone();
    for _ in 0..max_iter {
        if g.iter().all(|v| v.abs() < tol) {
            break;
        }
        for i in 0..x.len() {
            trial[i] = x[i] - step * g[i];
        }
        let u_trial = pot.energy_grad(&trial, &mut g_trial);
        if u_trial < u {
            std::mem::swap(&mut x, &mut trial);
            std::mem::swap(&mut g, &mut g_trial);
            u = u_trial;
            step *= 1.2;
        } else {
            step *= 0.5;
            if step < 1e-14 {
                break;
            }
        }
    }
    (x, u)
}

/// The distinct minima seen so far, by quenched energy (two minima are one isomer when their
/// energies differ by less than `tol`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IsomerTable {
    /// Minimum energies, ascending.
    pub energies: Vec<f64>,
    /// Energy tolerance.
    pub tol: f64,
}

impl IsomerTable {
    /// Builds a table from quenched energies: clusters the sorted energies at gaps ≥ `tol` and
    /// keeps clusters holding at least `min_fraction` of the values (dropping saddle points and
    /// rare high minima); each isomer's energy is its cluster's median.
    pub fn from_energies(energies: &[f64], tol: f64, min_fraction: f64) -> Self {
        let mut e: Vec<f64> = energies.iter().copied().filter(|v| v.is_finite()).collect();
        e.sort_by(f64::total_cmp);
        let mut out = Vec::new();
        let mut start = 0;
        for i in 1..=e.len() {
            if i == e.len() || e[i] - e[i - 1] >= tol {
                let cluster = &e[start..i];
                if cluster.len() as f64 >= min_fraction * e.len() as f64 {
                    out.push(cluster[cluster.len() / 2]);
                }
                start = i;
            }
        }
        Self { energies: out, tol }
    }

    /// The isomers of `self` and those of `other` that `self` does not classify (energy not
    /// within `self.tol` of any of its own), ascending; the tolerance stays `self`'s.
    pub fn union(&self, other: &IsomerTable) -> IsomerTable {
        let mut energies = self.energies.clone();
        energies.extend(other.energies.iter().copied().filter(|&e| self.classify(e).is_none()));
        energies.sort_by(f64::total_cmp);
        IsomerTable { energies, tol: self.tol }
    }

    /// The isomer whose energy is within `tol` of `energy`, if any.
    pub fn classify(&self, energy: f64) -> Option<usize> {
        self.energies.iter().position(|e| (e - energy).abs() < self.tol)
    }
}

/// Coordination numbers c_i = Σ_j (1 − (r_ij/r₀)⁸)/(1 − (r_ij/r₀)¹⁶) of flat 2-D coordinates.
pub fn coordination(x: &[f64], r0: f64) -> Vec<f64> {
    let n = x.len() / 2;
    let mut c = vec![0.0; n];
    for i in 0..n {
        for j in i + 1..n {
            let (dx, dy) = (x[2 * i] - x[2 * j], x[2 * i + 1] - x[2 * j + 1]);
            let q = ((dx * dx + dy * dy) / (r0 * r0)).powi(4);
            // (1 − q)/(1 − q²) = 1/(1 + q): the same switching function without the 0/0 at r = r₀.
            let s = 1.0 / (1.0 + q);
            c[i] += s;
            c[j] += s;
        }
    }
    c
}

/// The CVs (μ₂, μ₃): second and third central moments of the coordination numbers (r₀ = 1.5).
pub fn coordination_moments(x: &[f64]) -> [f64; 2] {
    let c = coordination(x, 1.5);
    let n = c.len() as f64;
    let mean = c.iter().sum::<f64>() / n;
    let m2 = c.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let m3 = c.iter().map(|v| (v - mean).powi(3)).sum::<f64>() / n;
    [m2, m3]
}
