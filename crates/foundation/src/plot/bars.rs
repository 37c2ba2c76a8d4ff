//! Horizontal bar charts with error bars (values, +-1 s.e.), labelled with a 3x5 pixel font.

use std::path::Path;

use image::{Rgb, RgbImage};

use super::{write_png, PngError};

/// One bar: label, value, standard error (drawn as +-1 s.e.).
#[derive(Clone, Debug)]
pub struct Bar {
    /// Text left of the bar (upper-cased; letters, digits and `-.%()+/=:` are drawn).
    pub label: String,
    /// Bar length.
    pub value: f64,
    /// Half-width of the error bar.
    pub se: f64,
}

const SCALE: u32 = 2;
const ROW: u32 = 22;
const LABEL_W: u32 = 260;
const PLOT_W: u32 = 420;
const VALUE_W: u32 = 130;

fn glyph(c: char) -> [&'static str; 5] {
    match c {
        'A' => ["010", "101", "111", "101", "101"],
        'B' => ["110", "101", "110", "101", "110"],
        'C' => ["011", "100", "100", "100", "011"],
        'D' => ["110", "101", "101", "101", "110"],
        'E' => ["111", "100", "110", "100", "111"],
        'F' => ["111", "100", "110", "100", "100"],
        'G' => ["011", "100", "101", "101", "011"],
        'H' => ["101", "101", "111", "101", "101"],
        'I' => ["111", "010", "010", "010", "111"],
        'J' => ["001", "001", "001", "101", "010"],
        'K' => ["101", "101", "110", "101", "101"],
        'L' => ["100", "100", "100", "100", "111"],
        'M' => ["101", "111", "111", "101", "101"],
        'N' => ["110", "101", "101", "101", "101"],
        'O' => ["010", "101", "101", "101", "010"],
        'P' => ["110", "101", "110", "100", "100"],
        'Q' => ["010", "101", "101", "110", "011"],
        'R' => ["110", "101", "110", "101", "101"],
        'S' => ["011", "100", "010", "001", "110"],
        'T' => ["111", "010", "010", "010", "010"],
        'U' => ["101", "101", "101", "101", "111"],
        'V' => ["101", "101", "101", "101", "010"],
        'W' => ["101", "101", "111", "111", "101"],
        'X' => ["101", "101", "010", "101", "101"],
        'Y' => ["101", "101", "010", "010", "010"],
        'Z' => ["111", "001", "010", "100", "111"],
        '0' => ["111", "101", "101", "101", "111"],
        '1' => ["010", "110", "010", "010", "111"],
        '2' => ["110", "001", "010", "100", "111"],
        '3' => ["110", "001", "010", "001", "110"],
        '4' => ["101", "101", "111", "001", "001"],
        '5' => ["111", "100", "110", "001", "110"],
        '6' => ["011", "100", "111", "101", "111"],
        '7' => ["111", "001", "010", "010", "010"],
        '8' => ["111", "101", "111", "101", "111"],
        '9' => ["111", "101", "111", "001", "110"],
        '-' => ["000", "000", "111", "000", "000"],
        '+' => ["000", "010", "111", "010", "000"],
        '.' => ["000", "000", "000", "000", "010"],
        ':' => ["000", "010", "000", "010", "000"],
        '=' => ["000", "111", "000", "111", "000"],
        '%' => ["101", "001", "010", "100", "101"],
        '/' => ["001", "001", "010", "100", "100"],
        '(' => ["001", "010", "010", "010", "001"],
        ')' => ["100", "010", "010", "010", "100"],
        _ => ["000", "000", "000", "000", "000"],
    }
}

fn text(img: &mut RgbImage, x: u32, y: u32, s: &str, color: Rgb<u8>) {
    for (i, c) in s.to_uppercase().chars().enumerate() {
        for (r, row) in glyph(c).iter().enumerate() {
            for (k, bit) in row.chars().enumerate() {
                if bit == '1' {
                    for dy in 0..SCALE {
                        for dx in 0..SCALE {
                            let px = x + (i as u32 * 4 + k as u32) * SCALE + dx;
                            let py = y + r as u32 * SCALE + dy;
                            if px < img.width() && py < img.height() {
                                img.put_pixel(px, py, color);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn rect(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, color: Rgb<u8>) {
    for y in y0.min(y1).max(0)..=y0.max(y1).min(img.height() as i64 - 1) {
        for x in x0.min(x1).max(0)..=x0.max(x1).min(img.width() as i64 - 1) {
            img.put_pixel(x as u32, y as u32, color);
        }
    }
}

/// Renders a titled bar chart: one row per bar, its label, the bar from zero, the +-1 s.e. error
/// bar (when finite and positive) and the value formatted by `fmt(value, se)`.
pub fn bar_chart(title: &str, bars: &[Bar], fmt: impl Fn(f64, f64) -> String) -> RgbImage {
    let h = ROW * (bars.len() as u32 + 2);
    let w = LABEL_W + PLOT_W + VALUE_W;
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let black = Rgb([0, 0, 0]);
    text(&mut img, 8, 6, title, black);
    let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
    let lo = bars.iter().map(|b| finite(b.value) - finite(b.se)).fold(0.0f64, f64::min);
    let hi = bars.iter().map(|b| finite(b.value) + finite(b.se)).fold(0.0f64, f64::max);
    let span = if hi > lo { hi - lo } else { 1.0 };
    let px = |v: f64| LABEL_W as i64 + ((finite(v) - lo) / span * (PLOT_W - 20) as f64) as i64 + 10;
    let zero = px(0.0);
    rect(&mut img, zero, ROW as i64, zero, (h - ROW / 2) as i64, Rgb([120, 120, 120]));
    for (i, b) in bars.iter().enumerate() {
        let y = (ROW * (i as u32 + 1) + 4) as i64;
        text(&mut img, 8, y as u32 + 2, &b.label, black);
        rect(&mut img, zero, y, px(b.value), y + ROW as i64 - 9, Rgb([70, 110, 180]));
        if b.se.is_finite() && b.se > 0.0 {
            let mid = y + (ROW as i64 - 9) / 2;
            let (a, c) = (px(b.value - b.se), px(b.value + b.se));
            rect(&mut img, a, mid, c, mid, black);
            rect(&mut img, a, mid - 4, a, mid + 4, black);
            rect(&mut img, c, mid - 4, c, mid + 4, black);
        }
        text(&mut img, LABEL_W + PLOT_W + 4, y as u32 + 2, &fmt(b.value, b.se), black);
    }
    img
}

/// Writes a bar chart (see [`bar_chart`]) as PNG through [`write_png`] (atomic).
pub fn write_bar_chart(
    path: &Path,
    title: &str,
    bars: &[Bar],
    fmt: impl Fn(f64, f64) -> String,
) -> Result<(), PngError> {
    write_png(path, &bar_chart(title, bars, fmt))
}
