//! The pictures: heat maps of an uncertainty over the input plane side by side, and histograms of
//! an uncertainty in- and out-of-distribution. Plain pixels (captions are in the report); written
//! with `foundation::plot::write_png`.

use image::{Rgb, RgbImage};

/// Colour of `v` in [0, 1] on a dark-blue → teal → yellow ramp (viridis-like).
pub fn colour(v: f64) -> Rgb<u8> {
    const STOPS: [[f64; 3]; 5] = [
        [68.0, 1.0, 84.0],
        [59.0, 82.0, 139.0],
        [33.0, 145.0, 140.0],
        [94.0, 201.0, 98.0],
        [253.0, 231.0, 37.0],
    ];
    let v = if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 };
    let pos = v * (STOPS.len() - 1) as f64;
    let i = (pos.floor() as usize).min(STOPS.len() - 2);
    let f = pos - i as f64;
    let mix = |c: usize| (STOPS[i][c] * (1.0 - f) + STOPS[i + 1][c] * f).round() as u8;
    Rgb([mix(0), mix(1), mix(2)])
}

/// Heat maps of `side × side` grids (row-major, top row first), side by side with a 6-pixel white
/// gap, coloured by `sqrt(value / max)` with each panel's own `max` (returned per panel).
pub fn heatmaps(panels: &[&[f64]], side: usize) -> (RgbImage, Vec<f64>) {
    let gap = 6u32;
    let w = panels.len() as u32 * side as u32 + gap * (panels.len() as u32).saturating_sub(1);
    let mut img = RgbImage::from_pixel(w, side as u32, Rgb([255, 255, 255]));
    let mut maxes = Vec::new();
    for (k, values) in panels.iter().enumerate() {
        let max = values.iter().cloned().filter(|v| v.is_finite()).fold(0.0, f64::max).max(1e-12);
        maxes.push(max);
        let x0 = k as u32 * (side as u32 + gap);
        for (i, &v) in values.iter().enumerate() {
            img.put_pixel(x0 + (i % side) as u32, (i / side) as u32, colour((v / max).sqrt()));
        }
    }
    (img, maxes)
}

/// Overlaid histograms of `ln(value)` for in-distribution (blue) and out-of-distribution (orange)
/// values, each normalised to its own peak; overlaps are drawn darker. Returns the image and the
/// `ln` range of the horizontal axis.
pub fn histogram(ind: &[f64], ood: &[f64], bins: usize) -> (RgbImage, (f64, f64)) {
    let logs = |v: &[f64]| v.iter().map(|&x| x.max(1e-12).ln()).collect::<Vec<f64>>();
    let (a, b) = (logs(ind), logs(ood));
    let lo = a.iter().chain(&b).cloned().fold(f64::INFINITY, f64::min);
    let hi = a.iter().chain(&b).cloned().fold(f64::NEG_INFINITY, f64::max).max(lo + 1e-9);
    let count = |v: &[f64]| {
        let mut c = vec![0usize; bins];
        for &x in v {
            c[(((x - lo) / (hi - lo) * bins as f64) as usize).min(bins - 1)] += 1;
        }
        c
    };
    let (ca, cb) = (count(&a), count(&b));
    let (bw, h) = (4u32, 160u32);
    let mut img = RgbImage::from_pixel(bins as u32 * bw, h, Rgb([255, 255, 255]));
    let peak = |c: &[usize]| *c.iter().max().unwrap_or(&1).max(&1) as f64;
    let (pa, pb) = (peak(&ca), peak(&cb));
    for i in 0..bins {
        let ha = (ca[i] as f64 / pa * (h - 1) as f64) as u32;
        let hb = (cb[i] as f64 / pb * (h - 1) as f64) as u32;
        for y in 0..h {
            let from_bottom = h - 1 - y;
            let (ina, inb) = (from_bottom < ha, from_bottom < hb);
            let c = match (ina, inb) {
                (true, true) => Rgb([90, 60, 40]),
                (true, false) => Rgb([60, 110, 200]),
                (false, true) => Rgb([240, 150, 40]),
                _ => continue,
            };
            for x in 0..bw {
                img.put_pixel(i as u32 * bw + x, y, c);
            }
        }
    }
    (img, (lo, hi))
}
