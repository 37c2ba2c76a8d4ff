//! Writing image grids as PNG.

use std::path::Path;

use foundation::plot::PngError;

use crate::DataError;

/// Gap between tiles in a grid, in pixels.
const GAP: usize = 1;
/// Grey level of the gaps (and of empty cells in the last row).
const GAP_VALUE: u8 = 128;

/// Maps a value in [-1, 1] to a grey level 0..=255: `round((x + 1) * 127.5)`,
/// with `x` clamped to [-1, 1] first (NaN maps to 0).
pub fn to_u8(x: f32) -> u8 {
    if x.is_nan() {
        return 0;
    }
    ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
}

/// Writes `n` single-channel images of `height x width` (values in [-1, 1],
/// clamped; see [`to_u8`]) as one greyscale PNG grid with `ncols` columns.
///
/// Tiles are separated by a 1-pixel mid-grey gap (no outer border), so the
/// PNG is `c * width + (c - 1)` wide and `r * height + (r - 1)` high, where
/// `c = min(ncols, n)` and `r = ceil(n / ncols)`; unused cells of the last
/// row are mid-grey. The file is written through the one PNG writer
/// (`foundation::plot::write_png`: temp file + fsync + rename), so readers
/// never see a partial file; missing parent directories are created.
///
/// Errors: [`DataError::InvalidArgument`] if `n`, `height`, `width` or
/// `ncols` is zero or `images.len() != n * height * width`;
/// [`DataError::Io`] / [`DataError::Png`] if writing fails.
pub fn write_png_grid(
    path: &Path,
    images: &[f32],
    n: usize,
    height: usize,
    width: usize,
    ncols: usize,
) -> Result<(), DataError> {
    if n == 0 || height == 0 || width == 0 || ncols == 0 {
        return Err(DataError::InvalidArgument(format!(
            "write_png_grid {}: n={n}, height={height}, width={width}, ncols={ncols} must all be positive",
            path.display()
        )));
    }
    if images.len() != n * height * width {
        return Err(DataError::InvalidArgument(format!(
            "write_png_grid {}: {} values given for {n} images of {height}x{width} ({} expected)",
            path.display(),
            images.len(),
            n * height * width
        )));
    }
    let cols = ncols.min(n);
    let rows = n.div_ceil(ncols);
    let gw = cols * width + (cols - 1) * GAP;
    let gh = rows * height + (rows - 1) * GAP;
    let (gw32, gh32) = match (u32::try_from(gw), u32::try_from(gh)) {
        (Ok(a), Ok(b)) => (a, b),
        _ => {
            return Err(DataError::InvalidArgument(format!(
                "write_png_grid {}: grid of {gw}x{gh} pixels is too large",
                path.display()
            )))
        }
    };
    let mut buf = vec![GAP_VALUE; gw * gh];
    for (k, img) in images.chunks_exact(height * width).enumerate() {
        let (r, c) = (k / ncols, k % ncols);
        let (y0, x0) = (r * (height + GAP), c * (width + GAP));
        for y in 0..height {
            let dst = &mut buf[(y0 + y) * gw + x0..(y0 + y) * gw + x0 + width];
            for (d, &v) in dst.iter_mut().zip(&img[y * width..(y + 1) * width]) {
                *d = to_u8(v);
            }
        }
    }

    let img = image::GrayImage::from_raw(gw32, gh32, buf).expect("the buffer holds gw x gh grey levels");
    foundation::plot::write_png(path, &img).map_err(|e| match e {
        PngError::Io(e) => DataError::Io { path: e.path, source: e.source },
        PngError::Encode { path, source } => DataError::Png { path, source },
    })
}
