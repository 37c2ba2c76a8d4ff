//! IDX file parsing (the format MNIST and Fashion-MNIST ship in).

use std::borrow::Cow;
use std::io::{Read, Write};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::DataError;

/// Magic number of an IDX file holding a 3-d array of `u8` (images).
pub(crate) const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file holding a 1-d array of `u8` (labels).
pub(crate) const LABELS_MAGIC: u32 = 0x0000_0801;

/// Images exactly as stored in an IDX file: `n` images of `rows x cols`
/// `u8` pixels, row-major, one after the other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawImages {
    /// All pixels, `n * rows * cols` of them, image after image, row-major.
    pub pixels: Vec<u8>,
    /// Number of images.
    pub n: usize,
    /// Height of each image.
    pub rows: usize,
    /// Width of each image.
    pub cols: usize,
}

/// Returns the buffer decompressed if it starts with the gzip magic
/// `0x1f 0x8b`, else the buffer itself.
fn maybe_gunzip<'a>(bytes: &'a [u8], name: &str) -> Result<Cow<'a, [u8]>, DataError> {
    if bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b {
        let mut out = Vec::new();
        MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|source| DataError::Gzip { name: name.to_string(), source })?;
        Ok(Cow::Owned(out))
    } else {
        Ok(Cow::Borrowed(bytes))
    }
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Checks the header (magic plus `ndims` sizes) and the payload length;
/// returns the sizes and the payload.
fn parse_idx<'a>(
    data: &'a [u8],
    name: &str,
    magic: u32,
    kind: &'static str,
    what: &'static str,
) -> Result<(Vec<usize>, &'a [u8]), DataError> {
    let ndims = (magic & 0xff) as usize;
    let header_len = 4 + 4 * ndims;
    if data.len() < 4 {
        return Err(DataError::Truncated {
            name: name.to_string(),
            what: "header",
            expected: header_len,
            found: data.len(),
        });
    }
    let found = be_u32(data, 0);
    if found != magic {
        return Err(DataError::BadMagic { name: name.to_string(), found, expected: magic, kind });
    }
    if data.len() < header_len {
        return Err(DataError::Truncated {
            name: name.to_string(),
            what: "header",
            expected: header_len,
            found: data.len(),
        });
    }
    let dims: Vec<usize> = (0..ndims).map(|d| be_u32(data, 4 + 4 * d) as usize).collect();
    // Images must have a positive height and width; a count of zero is allowed.
    if dims.iter().skip(1).any(|&d| d == 0) {
        return Err(DataError::BadDims {
            name: name.to_string(),
            detail: format!("sizes {dims:?} include a zero image dimension"),
        });
    }
    let expected =
        dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| DataError::BadDims {
            name: name.to_string(),
            detail: format!("sizes {dims:?} overflow the address space"),
        })?;
    let payload = &data[header_len..];
    if payload.len() < expected {
        return Err(DataError::Truncated { name: name.to_string(), what, expected, found: payload.len() });
    }
    if payload.len() > expected {
        return Err(DataError::TrailingBytes {
            name: name.to_string(),
            what,
            expected,
            extra: payload.len() - expected,
        });
    }
    Ok((dims, payload))
}

/// Parses an IDX image file (magic `0x00000803`: `u8` values, 3 dimensions
/// `n, rows, cols`) from memory.
///
/// `bytes` may be raw IDX or gzip-compressed IDX (recognised by the gzip
/// header `0x1f 0x8b`). `name` is used only in error messages. The payload
/// must be exactly `n * rows * cols` bytes: short data gives
/// [`DataError::Truncated`], extra data [`DataError::TrailingBytes`].
pub fn parse_idx_images(bytes: &[u8], name: &str) -> Result<RawImages, DataError> {
    let data = maybe_gunzip(bytes, name)?;
    let (dims, payload) = parse_idx(&data, name, IMAGES_MAGIC, "IDX images", "pixels")?;
    Ok(RawImages { pixels: payload.to_vec(), n: dims[0], rows: dims[1], cols: dims[2] })
}

/// Parses an IDX label file (magic `0x00000801`: `u8` values, 1 dimension)
/// from memory; raw or gzip-compressed, as for [`parse_idx_images`].
///
/// Label values are not range-checked here; [`crate::Dataset::from_raw`] does that.
pub fn parse_idx_labels(bytes: &[u8], name: &str) -> Result<Vec<u8>, DataError> {
    let data = maybe_gunzip(bytes, name)?;
    let (_, payload) = parse_idx(&data, name, LABELS_MAGIC, "IDX labels", "labels")?;
    Ok(payload.to_vec())
}

fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })
}

fn display_name(path: &Path) -> String {
    path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

/// Reads and parses an IDX image file (raw or gzip) from disk; errors name
/// the file.
pub fn read_idx_images(path: &Path) -> Result<RawImages, DataError> {
    parse_idx_images(&read_file(path)?, &display_name(path))
}

/// Reads and parses an IDX label file (raw or gzip) from disk; errors name
/// the file.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    parse_idx_labels(&read_file(path)?, &display_name(path))
}

/// Encodes images as an IDX image file (raw, not compressed).
///
/// Panics if `images.pixels.len() != n * rows * cols` or a size exceeds `u32`.
pub fn encode_idx_images(images: &RawImages) -> Vec<u8> {
    assert_eq!(
        images.pixels.len(),
        images.n * images.rows * images.cols,
        "RawImages pixel count does not match n * rows * cols"
    );
    let mut out = Vec::with_capacity(16 + images.pixels.len());
    out.extend_from_slice(&IMAGES_MAGIC.to_be_bytes());
    for d in [images.n, images.rows, images.cols] {
        out.extend_from_slice(&u32::try_from(d).expect("IDX size exceeds u32").to_be_bytes());
    }
    out.extend_from_slice(&images.pixels);
    out
}

/// Encodes labels as an IDX label file (raw, not compressed).
///
/// Panics if there are more than `u32::MAX` labels.
pub fn encode_idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&u32::try_from(labels.len()).expect("IDX size exceeds u32").to_be_bytes());
    out.extend_from_slice(labels);
    out
}

/// Gzip-compresses a buffer at the best compression level.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::best());
    enc.write_all(bytes).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}
