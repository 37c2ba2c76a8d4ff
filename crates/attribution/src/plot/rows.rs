//! The attribution figure: one row per query, showing the query, its top proponents and its top
//! opponents, readable as it is.
//!
//! Every image is magnified by an integer factor (nearest neighbour, so pixels stay crisp; see
//! [`magnification`]); cells are separated by [`CELL_GAP`] pixels and rows by [`ROW_GAP`]; the
//! three groups (query | proponents | opponents) by the wider [`GROUP_GAP`]. A header strip names
//! the groups ("query", "proponents (top k)", "opponents") above a rule in the group's colour, and an
//! optional label per row (for example the query's index and its classifier label) sits left of
//! the query.

use std::path::Path;

use foundation::plot::font::{draw_text, text_height, text_width};
use foundation::plot::{write_png, PngError};
use image::{Rgb, RgbImage};

/// Blank space around the figure, in pixels.
pub const MARGIN: u32 = 8;
/// Gap between two cells of one group, in pixels.
pub const CELL_GAP: u32 = 4;
/// Gap between two rows, in pixels.
pub const ROW_GAP: u32 = 8;
/// Gap between the groups (query | proponents | opponents), in pixels.
pub const GROUP_GAP: u32 = 24;
/// Gap between the row labels and the query column, in pixels.
pub const LABEL_GAP: u32 = 12;
/// Height of the header strip (group names and their coloured rules) below the top margin.
pub const HEADER_HEIGHT: u32 = 32;
/// Size of one font pixel of the header and row labels, in image pixels.
pub const TEXT_SCALE: u32 = 2;
/// Colour of the margins and of every gap.
pub const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);

/// Cells are magnified to about this many pixels on their longer side.
const TARGET_CELL: usize = 56;
/// Vertical offset of a group's rule below the top of the header text.
const RULE_OFFSET: u32 = 20;
/// Thickness of a group's rule.
const RULE_THICKNESS: u32 = 2;
/// Vertical distance between two lines of a row label.
const LINE_STEP: u32 = 20;

const LABEL_COLOR: Rgb<u8> = Rgb([30, 30, 30]);
const QUERY_COLOR: Rgb<u8> = Rgb([30, 30, 30]);
const PROPONENT_COLOR: Rgb<u8> = Rgb([0, 120, 60]);
const OPPONENT_COLOR: Rgb<u8> = Rgb([190, 30, 30]);

/// What a figure shows: `rows` rows, each the query followed by its `k` top proponents and its
/// `k` top opponents, every image `height x width` single-channel with values in [-1, 1].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowsLayout {
    /// Number of rows (queries); at least 1.
    pub rows: usize,
    /// Proponents and opponents shown per row (each); 0 shows the queries alone.
    pub k: usize,
    /// Image height in pixels; at least 1.
    pub height: usize,
    /// Image width in pixels; at least 1.
    pub width: usize,
}

impl RowsLayout {
    /// Images per row: the query, `k` proponents, `k` opponents.
    pub fn columns(&self) -> usize {
        1 + 2 * self.k
    }
}

/// Where everything lies in a rendered figure (pixel coordinates, origin top-left).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowsGeometry {
    /// Integer magnification of every image.
    pub magnify: u32,
    /// Width of one magnified cell.
    pub cell_width: u32,
    /// Height of one magnified cell.
    pub cell_height: u32,
    /// Left edge of each column: the query, then the proponents, then the opponents.
    pub column_x: Vec<u32>,
    /// Top edge of each row's cells.
    pub row_y: Vec<u32>,
    /// Left edge and width of each group's header text (query, proponents, opponents; groups
    /// without cells are left out).
    pub headers: Vec<(u32, u32)>,
    /// Width of the whole figure.
    pub width: u32,
    /// Height of the whole figure.
    pub height: u32,
}

/// Errors of the figure renderer.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Inputs that do not describe a figure (sizes, counts).
    #[error("attribution rows: {0}")]
    InvalidArgument(String),
    /// Writing or encoding the PNG failed.
    #[error(transparent)]
    Png(#[from] PngError),
}

/// Integer magnification for images of `height x width`: the largest factor that keeps the
/// longer side within 56 pixels, at least 1 (14x14 -> 4, 28x28 -> 2, 8x8 -> 7, 64x64 -> 1).
pub fn magnification(height: usize, width: usize) -> u32 {
    (TARGET_CELL / height.max(width).max(1)).max(1) as u32
}

/// The group names of the header, with the number of cells of each group.
fn groups(k: usize) -> [(String, usize, Rgb<u8>); 3] {
    [
        ("query".to_string(), 1, QUERY_COLOR),
        (format!("proponents (top {k})"), k, PROPONENT_COLOR),
        ("opponents".to_string(), k, OPPONENT_COLOR),
    ]
}

/// Checks `layout` and `labels` (empty, or one per row; `\n` separates lines) and lays the figure
/// out.
pub fn rows_geometry(layout: &RowsLayout, labels: &[String]) -> Result<RowsGeometry, PlotError> {
    let RowsLayout { rows, k, height, width } = *layout;
    if rows == 0 || height == 0 || width == 0 {
        return Err(PlotError::InvalidArgument(format!(
            "rows={rows}, height={height}, width={width} must all be positive"
        )));
    }
    if !labels.is_empty() && labels.len() != rows {
        return Err(PlotError::InvalidArgument(format!(
            "{} row labels for {rows} rows (give one per row or none)",
            labels.len()
        )));
    }
    let too_large = || {
        PlotError::InvalidArgument(format!(
            "{rows} rows of {} {height}x{width} images are too large to draw",
            layout.columns()
        ))
    };
    let magnify = magnification(height, width);
    let cell_width = u32::try_from(width).ok().and_then(|w| w.checked_mul(magnify)).ok_or_else(too_large)?;
    let cell_height =
        u32::try_from(height).ok().and_then(|h| h.checked_mul(magnify)).ok_or_else(too_large)?;
    const MAX_SIDE: u64 = 1 << 15;
    if k as u64 > MAX_SIDE || rows as u64 > MAX_SIDE {
        return Err(too_large());
    }

    let label_width =
        labels.iter().flat_map(|l| l.lines()).map(|line| text_width(line, TEXT_SCALE)).max().unwrap_or(0);
    // Computed in u64, checked once at the end.
    let mut x = MARGIN as u64 + if label_width > 0 { (label_width + LABEL_GAP) as u64 } else { 0 };
    let mut column_x = Vec::with_capacity(layout.columns());
    let mut headers = Vec::new();
    for (name, count, _) in groups(k) {
        if count == 0 {
            continue;
        }
        if !headers.is_empty() {
            x += GROUP_GAP as u64;
        }
        let count = count as u64;
        let cells = count * cell_width as u64 + (count - 1) * CELL_GAP as u64;
        let text = text_width(&name, TEXT_SCALE) as u64;
        headers.push((x, text));
        for c in 0..count {
            column_x.push(x + c * (cell_width + CELL_GAP) as u64);
        }
        x += cells.max(text);
    }
    let total_width = x + MARGIN as u64;
    let top = (MARGIN + HEADER_HEIGHT) as u64;
    let row_y: Vec<u64> = (0..rows as u64).map(|r| top + r * (cell_height + ROW_GAP) as u64).collect();
    let total_height = row_y[rows - 1] + cell_height as u64 + MARGIN as u64;
    if total_width > MAX_SIDE || total_height > MAX_SIDE {
        return Err(too_large());
    }
    Ok(RowsGeometry {
        magnify,
        cell_width,
        cell_height,
        column_x: column_x.into_iter().map(|v| v as u32).collect(),
        row_y: row_y.into_iter().map(|v| v as u32).collect(),
        headers: headers.into_iter().map(|(a, b)| (a as u32, b as u32)).collect(),
        width: total_width as u32,
        height: total_height as u32,
    })
}

/// Renders the figure. `images` holds, row after row, the query, its `k` proponents (strongest
/// first) and its `k` opponents (most negative first), each `height x width` row-major with values
/// in [-1, 1] (grey levels as in [`data::to_u8`]); `labels` is empty or one label per row.
///
/// Errors: [`PlotError::InvalidArgument`] for a zero size, a wrong number of values or labels, or
/// a figure too large to draw.
pub fn attribution_rows(
    images: &[f32],
    layout: &RowsLayout,
    labels: &[String],
) -> Result<RgbImage, PlotError> {
    let g = rows_geometry(layout, labels)?;
    let (h, w) = (layout.height, layout.width);
    let expected = layout.rows.checked_mul(layout.columns()).and_then(|n| n.checked_mul(h * w));
    if expected != Some(images.len()) {
        return Err(PlotError::InvalidArgument(format!(
            "{} values given for {} rows of {} images of {h}x{w} ({} expected)",
            images.len(),
            layout.rows,
            layout.columns(),
            expected.map_or("more than fit in memory".to_string(), |e| e.to_string())
        )));
    }
    let mut img = RgbImage::from_pixel(g.width, g.height, BACKGROUND);

    // Header: each group's name above a rule in its colour spanning the group's cells.
    let mut first_column = 0;
    for ((name, count, color), &(hx, _)) in groups(layout.k).iter().filter(|(_, n, _)| *n > 0).zip(&g.headers)
    {
        draw_text(&mut img, hx, MARGIN, name, TEXT_SCALE, *color);
        let last = first_column + count - 1;
        let x1 = g.column_x[last] + g.cell_width;
        for y in MARGIN + RULE_OFFSET..MARGIN + RULE_OFFSET + RULE_THICKNESS {
            for x in g.column_x[first_column]..x1 {
                img.put_pixel(x, y, *color);
            }
        }
        first_column += count;
    }

    // Row labels, vertically centred on their row.
    for (label, &y) in labels.iter().zip(&g.row_y) {
        let lines: Vec<&str> = label.lines().collect();
        let block = (lines.len() as u32).saturating_sub(1) * LINE_STEP + text_height(TEXT_SCALE);
        let y0 = y + g.cell_height.saturating_sub(block) / 2;
        for (i, line) in lines.iter().enumerate() {
            draw_text(&mut img, MARGIN, y0 + i as u32 * LINE_STEP, line, TEXT_SCALE, LABEL_COLOR);
        }
    }

    // Cells, magnified by pixel replication.
    let m = g.magnify as usize;
    for (n, pixels) in images.chunks_exact(h * w).enumerate() {
        let (x0, y0) = (g.column_x[n % layout.columns()], g.row_y[n / layout.columns()]);
        for y in 0..h * m {
            for x in 0..w * m {
                let v = data::to_u8(pixels[(y / m) * w + x / m]);
                img.put_pixel(x0 + x as u32, y0 + y as u32, Rgb([v, v, v]));
            }
        }
    }
    Ok(img)
}

/// Renders the figure (see [`attribution_rows`]) and writes it as PNG through the one atomic
/// writer (temp file + fsync + rename; parent directories created).
pub fn write_attribution_rows(
    path: &Path,
    images: &[f32],
    layout: &RowsLayout,
    labels: &[String],
) -> Result<(), PlotError> {
    let img = attribution_rows(images, layout, labels)?;
    Ok(write_png(path, &img)?)
}
