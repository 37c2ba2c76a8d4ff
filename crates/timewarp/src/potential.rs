//! Potential energy surfaces: the [`Potential`] trait (energy and gradient of a flat coordinate
//! vector), the 2-D sanity systems ([`DoubleWell`], [`MuellerBrown`]) and Boltzmann references
//! by grid quadrature ([`quadrature_marginal`]).

/// A potential energy U(x) on R^dim, in units where k_B T is given separately.
pub trait Potential: Sync {
    /// Number of coordinates.
    fn dim(&self) -> usize;
    /// U(x).
    fn energy(&self, x: &[f64]) -> f64;
    /// U(x), with ∇U(x) written into `grad` (of length [`Potential::dim`]).
    fn energy_grad(&self, x: &[f64], grad: &mut [f64]) -> f64;
}

/// A tilted double well in 2-D: U(x, y) = a (x² − 1)² + tilt·x + ½ k_y y². Barrier ≈ a at x = 0,
/// minima near x = ±1; the tilt makes the two wells unequal so that a symmetric error cannot hide.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DoubleWell {
    /// Barrier height.
    pub a: f64,
    /// Linear tilt along x.
    pub tilt: f64,
    /// Spring constant along y.
    pub ky: f64,
}

impl Default for DoubleWell {
    fn default() -> Self {
        Self { a: 2.0, tilt: 0.5, ky: 2.0 }
    }
}

impl Potential for DoubleWell {
    fn dim(&self) -> usize {
        2
    }
    fn energy(&self, x: &[f64]) -> f64 {
        let s = x[0] * x[0] - 1.0;
        self.a * s * s + self.tilt * x[0] + 0.5 * self.ky * x[1] * x[1]
    }
    fn energy_grad(&self, x: &[f64], grad: &mut [f64]) -> f64 {
        let s = x[0] * x[0] - 1.0;
        grad[0] = 4.0 * self.a * s * x[0] + self.tilt;
        grad[1] = self.ky * x[1];
        self.energy(x)
    }
}

/// The Müller–Brown potential, multiplied by `scale` (the classic surface has wells ~100 units
/// deep; `scale` = 0.05 gives barriers of a few k_B T at k_B T = 1).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MuellerBrown {
    /// Factor on the classic energies.
    pub scale: f64,
}

impl Default for MuellerBrown {
    fn default() -> Self {
        Self { scale: 0.05 }
    }
}

const MB_A: [f64; 4] = [-200.0, -100.0, -170.0, 15.0];
const MB_LA: [f64; 4] = [-1.0, -1.0, -6.5, 0.7];
const MB_B: [f64; 4] = [0.0, 0.0, 11.0, 0.6];
const MB_C: [f64; 4] = [-10.0, -10.0, -6.5, 0.7];
const MB_X0: [f64; 4] = [1.0, 0.0, -0.5, -1.0];
const MB_Y0: [f64; 4] = [0.0, 0.5, 1.5, 1.0];

impl Potential for MuellerBrown {
    fn dim(&self) -> usize {
        2
    }
    fn energy(&self, x: &[f64]) -> f64 {
        let mut g = [0.0; 2];
        self.energy_grad(x, &mut g)
    }
    fn energy_grad(&self, x: &[f64], grad: &mut [f64]) -> f64 {
        let (mut u, mut gx, mut gy) = (0.0, 0.0, 0.0);
        for k in 0..4 {
            let (dx, dy) = (x[0] - MB_X0[k], x[1] - MB_Y0[k]);
            let e = MB_A[k] * (MB_LA[k] * dx * dx + MB_B[k] * dx * dy + MB_C[k] * dy * dy).exp();
            u += e;
            gx += e * (2.0 * MB_LA[k] * dx + MB_B[k] * dy);
            gy += e * (MB_B[k] * dx + 2.0 * MB_C[k] * dy);
        }
        grad[0] = self.scale * gx;
        grad[1] = self.scale * gy;
        self.scale * u
    }
}

/// Boltzmann probabilities exp(−U/kT)/Z of `bins` equal bins of coordinate `axis` over
/// `[lo, hi]` of that axis, integrated over the box `bounds` of a 2-D potential by the midpoint
/// rule on a `fine` × `fine` grid per unit box. The box must hold essentially all the mass (the
/// probabilities are normalised over the box).
pub fn quadrature_marginal(
    pot: &dyn Potential,
    kt: f64,
    bounds: [(f64, f64); 2],
    fine: usize,
    axis: usize,
    bins: usize,
) -> Vec<f64> {
    let (nx, ny) = (fine, fine);
    let hx = (bounds[0].1 - bounds[0].0) / nx as f64;
    let hy = (bounds[1].1 - bounds[1].0) / ny as f64;
    let (lo, hi) = bounds[axis];
    let mut p = vec![0.0; bins];
    let mut total = 0.0;
    // Shift by the minimum over the grid for numerical range.
    let mut umin = f64::INFINITY;
    let mut us = Vec::with_capacity(nx * ny);
    for i in 0..nx {
        for j in 0..ny {
            let pt = [bounds[0].0 + (i as f64 + 0.5) * hx, bounds[1].0 + (j as f64 + 0.5) * hy];
            let u = pot.energy(&pt);
            umin = umin.min(u);
            us.push((pt, u));
        }
    }
    for (pt, u) in us {
        let w = (-(u - umin) / kt).exp();
        total += w;
        let b = ((pt[axis] - lo) / (hi - lo) * bins as f64).floor();
        if b >= 0.0 && (b as usize) < bins {
            p[b as usize] += w;
        }
    }
    p.iter_mut().for_each(|v| *v /= total);
    p
}
