//! Data: the authors' three-class spiral and the noisy ring (`datasets/toy/classification/
//! spiral.py`, `create_circle_data`), the input-plane grid, MNIST as [`Labeled`] data, and the
//! heavily augmented / noised MNIST used as auxiliary distillation inputs. Every draw comes from
//! `stream_for(seed, Purpose::EnddData, set)` with `set` one of the `SET_*` constants.

use foundation::rng::{stream_for, Purpose};
use rand::Rng;
use rand_distr::StandardNormal;

use crate::train::{Inputs, Labeled};

/// Stream index of the spiral training points.
pub const SET_SPIRAL_TRAIN: u64 = 0;
/// Stream index of the spiral test points.
pub const SET_SPIRAL_TEST: u64 = 1;
/// Stream index of the ring used for distillation (AUX).
pub const SET_RING_AUX: u64 = 2;
/// Stream index of the ring used as out-of-distribution test inputs.
pub const SET_RING_OOD: u64 = 3;
/// Stream index of the augmented MNIST auxiliary images.
pub const SET_MNIST_AUX: u64 = 4;

/// Number of spiral arms (classes).
pub const SPIRAL_CLASSES: usize = 3;
/// Radius of the ring (the authors' value).
pub const RING_RADIUS: f64 = 410.0;

/// `per_class` points of each of the three arms: `n = sqrt(U) · 6π`, angle offset `2πk/3`,
/// `(x, y) = (−cos(n + o) n², sin(n + o) n²) + noise · n^{1.5} · N(0, I)`. Labels are the arms.
pub fn spiral(per_class: usize, noise: f64, seed: u64, set: u64) -> Labeled {
    let mut rng = stream_for(seed, Purpose::EnddData, set);
    let mut x = Vec::with_capacity(per_class * SPIRAL_CLASSES * 2);
    let mut labels = Vec::with_capacity(per_class * SPIRAL_CLASSES);
    for k in 0..SPIRAL_CLASSES {
        let offset = 2.0 * std::f64::consts::PI * k as f64 / SPIRAL_CLASSES as f64;
        for _ in 0..per_class {
            let n = rng.gen::<f64>().sqrt() * 6.0 * std::f64::consts::PI;
            let sd = noise * n * n.sqrt();
            let ex: f64 = rng.sample(StandardNormal);
            let ey: f64 = rng.sample(StandardNormal);
            x.push((-(n + offset).cos() * n * n + sd * ex) as f32);
            x.push(((n + offset).sin() * n * n + sd * ey) as f32);
            labels.push(k);
        }
    }
    Labeled { inputs: Inputs { n: labels.len(), x, dim: 2 }, labels }
}

/// `n` points of a noisy ring: uniform angle, radius `RING_RADIUS + noise · N(0, 1)`.
pub fn ring(n: usize, noise: f64, seed: u64, set: u64) -> Inputs {
    let mut rng = stream_for(seed, Purpose::EnddData, set);
    let mut x = Vec::with_capacity(2 * n);
    for _ in 0..n {
        let a = rng.gen::<f64>() * 2.0 * std::f64::consts::PI;
        let e: f64 = rng.sample(StandardNormal);
        let r = RING_RADIUS + noise * e;
        x.push((r * a.cos()) as f32);
        x.push((r * a.sin()) as f32);
    }
    Inputs { x, n, dim: 2 }
}

/// A `side × side` grid over `[-half, half]²`, row after row from the top (y = +half) down, x
/// increasing along a row: the pixels of the uncertainty pictures.
pub fn grid(side: usize, half: f64) -> Inputs {
    let mut x = Vec::with_capacity(2 * side * side);
    let at = |i: usize| -half + 2.0 * half * (i as f64 + 0.5) / side as f64;
    for r in 0..side {
        for c in 0..side {
            x.push(at(c) as f32);
            x.push(at(side - 1 - r) as f32);
        }
    }
    Inputs { x, n: side * side, dim: 2 }
}

/// A `data` crate dataset as labelled inputs (pixels in [-1, 1], flattened).
pub fn from_dataset(d: &data::Dataset) -> Labeled {
    Labeled {
        inputs: Inputs { x: d.images.clone(), n: d.n, dim: d.height * d.width },
        labels: d.labels.iter().map(|&l| l as usize).collect(),
    }
}

/// `n` auxiliary images made from the 28×28 images of `source` (cycled), in three kinds by index
/// `i % 3`: (0) a heavy random affine map (rotation ±80°, scale 0.5–1.6, shear ±0.5, shift ±7
/// pixels) plus Gaussian pixel noise of standard deviation 0.3; (1) the image under Gaussian pixel
/// noise of standard deviation 0.9; (2) uniform noise on [-1, 1] averaged over 2×2 blocks. Pixels
/// are clamped to [-1, 1].
pub fn augmented_mnist(source: &Inputs, side: usize, n: usize, seed: u64) -> Inputs {
    let mut rng = stream_for(seed, Purpose::EnddData, SET_MNIST_AUX);
    let p = side * side;
    let mut x = Vec::with_capacity(n * p);
    for i in 0..n {
        let img = source.row(i % source.n);
        let mut out = vec![-1.0f32; p];
        match i % 3 {
            0 => {
                let th = (rng.gen::<f64>() * 2.0 - 1.0) * 80f64.to_radians();
                let s = 0.5 + 1.1 * rng.gen::<f64>();
                let sh = rng.gen::<f64>() - 0.5;
                let (tx, ty) = ((rng.gen::<f64>() * 2.0 - 1.0) * 7.0, (rng.gen::<f64>() * 2.0 - 1.0) * 7.0);
                // Inverse map: output pixel -> source coordinates.
                let (c, sn) = (th.cos() / s, th.sin() / s);
                let m = side as f64 / 2.0 - 0.5;
                for r in 0..side {
                    for col in 0..side {
                        let (u, v) = (col as f64 - m - tx, r as f64 - m - ty);
                        let u = u - sh * v;
                        let (sx, sy) = (c * u + sn * v + m, -sn * u + c * v + m);
                        out[r * side + col] = bilinear(img, side, sx, sy);
                    }
                }
                for v in out.iter_mut() {
                    let e: f64 = rng.sample(StandardNormal);
                    *v = (*v as f64 + 0.3 * e).clamp(-1.0, 1.0) as f32;
                }
            }
            1 => {
                for (o, &v) in out.iter_mut().zip(img) {
                    let e: f64 = rng.sample(StandardNormal);
                    *o = (v as f64 + 0.9 * e).clamp(-1.0, 1.0) as f32;
                }
            }
            _ => {
                let half = side.div_ceil(2);
                let blocks: Vec<f32> = (0..half * half).map(|_| rng.gen::<f32>() * 2.0 - 1.0).collect();
                for r in 0..side {
                    for col in 0..side {
                        out[r * side + col] = blocks[(r / 2) * half + col / 2];
                    }
                }
            }
        }
        x.extend(out);
    }
    Inputs { x, n, dim: p }
}

/// Bilinear sample of a `side × side` image at `(x, y)`; outside is background (-1).
fn bilinear(img: &[f32], side: usize, x: f64, y: f64) -> f32 {
    let at = |r: i64, c: i64| {
        if r < 0 || c < 0 || r >= side as i64 || c >= side as i64 {
            -1.0
        } else {
            img[r as usize * side + c as usize] as f64
        }
    };
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (c, r) = (x0 as i64, y0 as i64);
    let v = at(r, c) * (1.0 - fx) * (1.0 - fy)
        + at(r, c + 1) * fx * (1.0 - fy)
        + at(r + 1, c) * (1.0 - fx) * fy
        + at(r + 1, c + 1) * fx * fy;
    v as f32
}
