//! Figures as PNG, drawn with the `image` crate and built-in pixel fonts, so reports need no
//! plotting toolkit: the one PNG writer ([`write_png`], through [`crate::atomic`]), horizontal bar
//! charts with error bars ([`bar_chart`], [`write_bar_chart`]; a 3x5 font) and a 5x7 bitmap font
//! for figure labels ([`font`]).

use std::path::{Path, PathBuf};

use image::{EncodableLayout, ImageBuffer, ImageError, ImageFormat, PixelWithColorType};

use crate::atomic::{write_atomic_with, IoError};

mod bars;
pub mod font;

pub use bars::{bar_chart, write_bar_chart, Bar};

/// Why a PNG could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PngError {
    /// Creating the directory, writing, syncing or renaming the file failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The encoder rejected the image.
    #[error("{}: cannot encode PNG: {source}", path.display())]
    Encode {
        /// The file being written.
        path: PathBuf,
        /// The encoder's error.
        #[source]
        source: ImageError,
    },
}

/// Writes `img` (any pixel type the PNG encoder takes: `RgbImage`, `GrayImage`, ...) as PNG to
/// `path` atomically (temp file + fsync + rename; parent directories created). The workspace's
/// one PNG writer.
pub fn write_png<P>(path: &Path, img: &ImageBuffer<P, Vec<P::Subpixel>>) -> Result<(), PngError>
where
    P: PixelWithColorType,
    [P::Subpixel]: EncodableLayout,
{
    write_atomic_with(
        path,
        |tmp| {
            img.save_with_format(tmp, ImageFormat::Png).map_err(|e| match e {
                ImageError::IoError(source) => PngError::Io(IoError::new(tmp, source)),
                source => PngError::Encode { path: path.to_path_buf(), source },
            })
        },
        |p, e| PngError::Io(IoError::new(p, e)),
    )
}
