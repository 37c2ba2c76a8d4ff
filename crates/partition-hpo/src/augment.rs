//! Differentiable rotation by bilinear resampling.
//!
//! The resampled image and its derivative with respect to the angle are computed together on the
//! CPU ([`rotate_with_derivative`]); [`rotate_tensor`] turns them into a tensor whose value is the
//! rotated image and whose gradient with respect to `theta_max` is exact (first order), through
//! `x = I(a) + dI/da * u * (theta_max - stopgrad(theta_max))` with the angle `a = u * theta_max`.
//! Pixels outside the image read as 0 (the background of images scaled to [0, 1]).

use burn::prelude::*;

/// Bilinear sample of `img` (`h x w`, row-major) at column `xs`, row `ys`, and its partial
/// derivatives `(value, d/dxs, d/dys)`; pixels outside the image are 0.
fn bilinear(img: &[f32], h: usize, w: usize, xs: f32, ys: f32) -> (f32, f32, f32) {
    let x0 = xs.floor();
    let y0 = ys.floor();
    let (fx, fy) = (xs - x0, ys - y0);
    let (x0, y0) = (x0 as i64, y0 as i64);
    let at = |y: i64, x: i64| -> f32 {
        if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w {
            img[y as usize * w + x as usize]
        } else {
            0.0
        }
    };
    let (a, b, c, d) = (at(y0, x0), at(y0, x0 + 1), at(y0 + 1, x0), at(y0 + 1, x0 + 1));
    let value = (1.0 - fx) * (1.0 - fy) * a + fx * (1.0 - fy) * b + (1.0 - fx) * fy * c + fx * fy * d;
    let dx = (1.0 - fy) * (b - a) + fy * (d - c);
    let dy = (1.0 - fx) * (c - a) + fx * (d - b);
    (value, dx, dy)
}

/// `img` (`h x w`) rotated by `angle` radians about its centre, and the derivative of every output
/// pixel with respect to the angle. Output pixel `(i, j)` reads the input at
/// `R(angle) (j - cx, i - cy) + (cx, cy)`.
pub fn rotate_with_derivative(img: &[f32], h: usize, w: usize, angle: f32) -> (Vec<f32>, Vec<f32>) {
    let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
    let (s, c) = angle.sin_cos();
    let mut out = Vec::with_capacity(h * w);
    let mut deriv = Vec::with_capacity(h * w);
    for i in 0..h {
        for j in 0..w {
            let (x, y) = (j as f32 - cx, i as f32 - cy);
            let xs = c * x + s * y + cx;
            let ys = -s * x + c * y + cy;
            let (v, dx, dy) = bilinear(img, h, w, xs, ys);
            // d xs / d angle and d ys / d angle.
            let dxs = -s * x + c * y;
            let dys = -c * x - s * y;
            out.push(v);
            deriv.push(dx * dxs + dy * dys);
        }
    }
    (out, deriv)
}

/// `img` rotated by `angle` radians (no derivative): the fixed rotations of rotated MNIST.
pub fn rotate(img: &[f32], h: usize, w: usize, angle: f32) -> Vec<f32> {
    rotate_with_derivative(img, h, w, angle).0
}

/// Rotates the first `h * w` features of every row of `x` (`[n, d]`, row-major, `d >= h * w`) by
/// `u[i] * theta_max` and returns the rows as a tensor on `device` whose gradient with respect to
/// `theta_max` (a `[1]` tensor, possibly carrying a graph) is exact. Features after `h * w` pass
/// through unchanged. With `theta_max` at 0 the result is `x` bit for bit.
pub fn rotate_tensor(
    x: &[f32],
    n: usize,
    d: usize,
    (h, w): (usize, usize),
    u: &[f32],
    theta_max: Tensor<1>,
    device: &Device,
) -> Tensor<2> {
    let theta: f32 = theta_max.clone().detach().into_scalar();
    let p = h * w;
    let mut value = Vec::with_capacity(n * d);
    let mut deriv = Vec::with_capacity(n * d);
    for i in 0..n {
        let row = &x[i * d..(i + 1) * d];
        let angle = u[i] * theta;
        if angle == 0.0 {
            // Exactly the input (bilinear sampling at integer positions would also give it, up to
            // the derivative, which is still needed).
            let (_, dv) = rotate_with_derivative(&row[..p], h, w, 0.0);
            value.extend_from_slice(&row[..p]);
            deriv.extend(dv.iter().map(|g| g * u[i]));
        } else {
            let (v, dv) = rotate_with_derivative(&row[..p], h, w, angle);
            value.extend(v);
            deriv.extend(dv.iter().map(|g| g * u[i]));
        }
        value.extend_from_slice(&row[p..]);
        deriv.extend(std::iter::repeat_n(0.0, d - p));
    }
    let value = Tensor::<2>::from_data(TensorData::new(value, [n, d]), device);
    let deriv = Tensor::<2>::from_data(TensorData::new(deriv, [n, d]), device);
    // Zero in value, gradient 1 with respect to theta_max.
    let delta = theta_max.clone() - theta_max.detach();
    value + deriv * delta.unsqueeze::<2>()
}
