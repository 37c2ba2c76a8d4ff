//! 2-D Lennard-Jones clusters with per-type σ and ε (Lorentz–Berthelot mixing) and a flat-bottom
//! harmonic confinement about the centroid, which keeps an evaporated atom from drifting away
//! without touching the bound cluster. Coordinates are flat: `[x0, y0, x1, y1, ...]`.

use crate::error::TimewarpError;
use crate::potential::Potential;

/// σ and ε of one atom type.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AtomType {
    /// Size.
    pub sigma: f64,
    /// Well depth.
    pub epsilon: f64,
}

/// The two atom types of the binary mixtures: A (σ = 1, ε = 1), the LJ-7 atom, and B, a larger,
/// weaker-binding atom (σ = 1.12, ε = 0.8).
pub const TYPES: [AtomType; 2] =
    [AtomType { sigma: 1.0, epsilon: 1.0 }, AtomType { sigma: 1.12, epsilon: 0.8 }];

/// A cluster: the type of every atom plus the confinement.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LjCluster {
    /// Index into [`TYPES`] of each atom.
    pub types: Vec<usize>,
    /// Radius (from the centroid) beyond which the confinement acts.
    pub confine_radius: f64,
    /// Spring constant of the confinement.
    pub confine_k: f64,
    /// Pair σ, row-major N × N.
    sigma: Vec<f64>,
    /// Pair ε, row-major N × N.
    epsilon: Vec<f64>,
}

impl LjCluster {
    /// A cluster of the given atom types (indices into [`TYPES`]) with the default confinement
    /// (radius 2.5, k = 20).
    pub fn new(types: Vec<usize>) -> Result<Self, TimewarpError> {
        if types.len() < 2 {
            return Err(TimewarpError::Input(format!(
                "a cluster needs at least 2 atoms, got {}",
                types.len()
            )));
        }
        if let Some(t) = types.iter().find(|&&t| t >= TYPES.len()) {
            return Err(TimewarpError::Input(format!(
                "atom type {t} does not exist (types are 0..{})",
                TYPES.len()
            )));
        }
        let n = types.len();
        let mut sigma = vec![0.0; n * n];
        let mut epsilon = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                let (a, b) = (TYPES[types[i]], TYPES[types[j]]);
                sigma[i * n + j] = 0.5 * (a.sigma + b.sigma);
                epsilon[i * n + j] = (a.epsilon * b.epsilon).sqrt();
            }
        }
        Ok(Self { types, confine_radius: 2.5, confine_k: 20.0, sigma, epsilon })
    }

    /// Parses a composition: `lj7` (seven A atoms) or counts of the two types, e.g. `A4B3`.
    pub fn parse(spec: &str) -> Result<Self, TimewarpError> {
        let s = spec.trim();
        if s.eq_ignore_ascii_case("lj7") {
            return Self::new(vec![0; 7]);
        }
        let bad =
            || TimewarpError::Input(format!("composition `{spec}`: expected `lj7` or counts like `A4B3`"));
        let mut types = Vec::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            let t = match c {
                'A' | 'a' => 0,
                'B' | 'b' => 1,
                _ => return Err(bad()),
            };
            let mut digits = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(*d);
                chars.next();
            }
            let count: usize = if digits.is_empty() { 1 } else { digits.parse().map_err(|_| bad())? };
            types.extend(std::iter::repeat_n(t, count));
        }
        Self::new(types)
    }

    /// The composition as counts, e.g. `A4B3`.
    pub fn name(&self) -> String {
        let a = self.types.iter().filter(|&&t| t == 0).count();
        let b = self.types.len() - a;
        match (a, b) {
            (a, 0) => format!("A{a}"),
            (0, b) => format!("B{b}"),
            _ => format!("A{a}B{b}"),
        }
    }

    /// Number of atoms.
    pub fn n_atoms(&self) -> usize {
        self.types.len()
    }

    /// A compact starting configuration: atoms on a triangular lattice spiral about the origin
    /// at the pair spacing of the A atom's minimum, 2^(1/6).
    pub fn initial_positions(&self) -> Vec<f64> {
        let d = 2f64.powf(1.0 / 6.0) * 1.05;
        let mut pts = vec![(0.0, 0.0)];
        let mut ring = 1;
        while pts.len() < self.n_atoms() {
            for k in 0..6 * ring {
                let side = k / ring;
                let step = k % ring;
                let a0 = std::f64::consts::PI / 3.0 * side as f64;
                let a1 = std::f64::consts::PI / 3.0 * (side + 1) as f64;
                let (c0, c1) = ((a0.cos(), a0.sin()), (a1.cos(), a1.sin()));
                let t = step as f64 / ring as f64;
                let r = ring as f64 * d;
                pts.push((r * (c0.0 + t * (c1.0 - c0.0)), r * (c0.1 + t * (c1.1 - c0.1))));
            }
            ring += 1;
        }
        pts.truncate(self.n_atoms());
        pts.iter().flat_map(|&(x, y)| [x, y]).collect()
    }

    fn pair(&self, x: &[f64], grad: Option<&mut [f64]>) -> f64 {
        let n = self.n_atoms();
        let mut u = 0.0;
        let mut g = grad;
        if let Some(g) = g.as_deref_mut() {
            g.iter_mut().for_each(|v| *v = 0.0);
        }
        for i in 0..n {
            for j in i + 1..n {
                let (dx, dy) = (x[2 * i] - x[2 * j], x[2 * i + 1] - x[2 * j + 1]);
                let r2 = dx * dx + dy * dy;
                let s2 = self.sigma[i * n + j].powi(2) / r2;
                let s6 = s2 * s2 * s2;
                let eps = self.epsilon[i * n + j];
                u += 4.0 * eps * (s6 * s6 - s6);
                if let Some(g) = g.as_deref_mut() {
                    // dU/dr · 1/r = −24 ε (2 s^12 − s^6) / r².
                    let f = -24.0 * eps * (2.0 * s6 * s6 - s6) / r2;
                    g[2 * i] += f * dx;
                    g[2 * i + 1] += f * dy;
                    g[2 * j] -= f * dx;
                    g[2 * j + 1] -= f * dy;
                }
            }
        }
        // Flat-bottom confinement about the centroid.
        let (cx, cy) = centroid(x);
        let mut mean_force = (0.0, 0.0);
        let mut forces = Vec::new();
        for i in 0..n {
            let (dx, dy) = (x[2 * i] - cx, x[2 * i + 1] - cy);
            let d = (dx * dx + dy * dy).sqrt();
            if d > self.confine_radius {
                let over = d - self.confine_radius;
                u += 0.5 * self.confine_k * over * over;
                let f = self.confine_k * over / d;
                forces.push((i, f * dx, f * dy));
                mean_force.0 += f * dx / n as f64;
                mean_force.1 += f * dy / n as f64;
            }
        }
        if let Some(g) = g {
            for (i, fx, fy) in forces {
                g[2 * i] += fx;
                g[2 * i + 1] += fy;
            }
            for i in 0..n {
                g[2 * i] -= mean_force.0;
                g[2 * i + 1] -= mean_force.1;
            }
        }
        u
    }
}

/// The centroid (unweighted mean position) of flat 2-D coordinates.
pub fn centroid(x: &[f64]) -> (f64, f64) {
    let n = (x.len() / 2) as f64;
    let (mut cx, mut cy) = (0.0, 0.0);
    for p in x.chunks_exact(2) {
        cx += p[0];
        cy += p[1];
    }
    (cx / n, cy / n)
}

impl Potential for LjCluster {
    fn dim(&self) -> usize {
        2 * self.n_atoms()
    }
    fn energy(&self, x: &[f64]) -> f64 {
        self.pair(x, None)
    }
    fn energy_grad(&self, x: &[f64], grad: &mut [f64]) -> f64 {
        self.pair(x, Some(grad))
    }
}
