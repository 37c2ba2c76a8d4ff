//! Figures as PNG: the learned rotation range over training (a line chart; the colours are named
//! in the report) and the learned input mask as an image; bar charts and the PNG writer come from
//! `foundation::plot`.

use std::path::Path;

use foundation::plot::write_png;
use image::{Rgb, RgbImage};

use crate::HpoError;

/// Line colours, in the order of the series.
pub const COLOURS: [(&str, [u8; 3]); 6] = [
    ("blue", [40, 90, 200]),
    ("red", [210, 50, 40]),
    ("green", [40, 160, 60]),
    ("orange", [240, 150, 20]),
    ("purple", [140, 60, 170]),
    ("grey", [110, 110, 110]),
];

/// Writes a line chart of `series` (points `(x, y)`) with y from 0 to `y_max`, light grid lines
/// every `y_grid`, x from 0 to the largest x.
pub fn write_lines(path: &Path, series: &[Vec<(f64, f64)>], y_max: f64, y_grid: f64) -> Result<(), HpoError> {
    let (w, h, pad) = (640u32, 360u32, 20u32);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let x_max = series.iter().flatten().map(|p| p.0).fold(1.0f64, f64::max);
    let px = |x: f64| pad as f64 + x / x_max * (w - 2 * pad) as f64;
    let py = |y: f64| (h - pad) as f64 - (y / y_max).clamp(0.0, 1.0) * (h - 2 * pad) as f64;
    let mut g = 0.0;
    while g <= y_max + 1e-9 {
        let y = py(g) as u32;
        for x in pad..w - pad {
            img.put_pixel(x, y, Rgb([220, 220, 220]));
        }
        g += y_grid;
    }
    for y in pad..=h - pad {
        img.put_pixel(pad, y, Rgb([0, 0, 0]));
    }
    for x in pad..w - pad {
        img.put_pixel(x, h - pad, Rgb([0, 0, 0]));
    }
    for (i, s) in series.iter().enumerate() {
        let colour = Rgb(COLOURS[i % COLOURS.len()].1);
        for pair in s.windows(2) {
            let (x0, y0, x1, y1) = (px(pair[0].0), py(pair[0].1), px(pair[1].0), py(pair[1].1));
            let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
            for t in 0..=steps {
                let f = t as f64 / steps as f64;
                let (x, y) = (x0 + f * (x1 - x0), y0 + f * (y1 - y0));
                for (dx, dy) in [(0i64, 0i64), (1, 0), (0, 1)] {
                    let (xx, yy) = (x as i64 + dx, y as i64 + dy);
                    if xx >= 0 && yy >= 0 && (xx as u32) < w && (yy as u32) < h {
                        img.put_pixel(xx as u32, yy as u32, colour);
                    }
                }
            }
        }
    }
    Ok(write_png(path, &img)?)
}

/// Writes `values` in [0, 1] (row-major `rows x cols`) as a grey image, `scale` pixels per value
/// (white = 1).
pub fn write_map(path: &Path, values: &[f32], rows: usize, cols: usize, scale: u32) -> Result<(), HpoError> {
    let mut img = RgbImage::new(cols as u32 * scale, rows as u32 * scale);
    for (y, x, p) in img.enumerate_pixels_mut() {
        let (r, c) = ((y / scale) as usize, (x / scale) as usize);
        let v = values.get(r * cols + c).copied().unwrap_or(0.5);
        let g = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        *p = Rgb([g, g, g]);
    }
    Ok(write_png(path, &img)?)
}
