//! Free-energy maps as PNG: each panel is F(μ₂, μ₃) = −ln p (in units of kT, shifted so its
//! minimum is 0) of a 2-D CV histogram, white at F = 0 fading to black at F ≥ 6 kT; empty bins
//! are black. Written with the data crate's grid writer.

use std::path::Path;

use crate::error::TimewarpError;

/// Pixels per histogram bin.
const ZOOM: usize = 8;
/// F (kT) at which a bin turns black.
const F_MAX: f64 = 6.0;

/// Writes the histograms (each `bins × bins`, row = μ₂ bin, column = μ₃ bin) side by side,
/// μ₂ increasing downwards and μ₃ rightwards.
pub fn free_energy_png(path: &Path, hists: &[Vec<f64>], bins: usize) -> Result<(), TimewarpError> {
    let side = bins * ZOOM;
    let mut images = Vec::with_capacity(hists.len() * side * side);
    for h in hists {
        if h.len() != bins * bins {
            return Err(TimewarpError::Input(format!(
                "histogram of {} values for {bins}x{bins} bins",
                h.len()
            )));
        }
        let pmax = h.iter().copied().fold(0.0, f64::max);
        for y in 0..side {
            for x in 0..side {
                let p = h[(y / ZOOM) * bins + x / ZOOM];
                let v = if p > 0.0 && pmax > 0.0 {
                    let f = -(p / pmax).ln();
                    (1.0 - 2.0 * (f / F_MAX).min(1.0)) as f32
                } else {
                    -1.0
                };
                images.push(v);
            }
        }
    }
    data::write_png_grid(path, &images, hists.len(), side, side, hists.len().max(1))
        .map_err(|e| TimewarpError::Input(e.to_string()))
}
