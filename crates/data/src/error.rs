//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while reading, checking or writing data.
///
/// Every message is a single line that names the file (or argument) and the
/// problem, e.g. `train-images-idx3-ubyte.gz: bad magic number 0x00000801,
/// expected 0x00000803 (IDX images)`.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be opened, read, written, renamed or a directory created.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The buffer starts like a gzip stream but does not decompress.
    #[error("{name}: gzip decompression failed: {source}")]
    Gzip {
        /// Name of the buffer (usually its file name).
        name: String,
        /// The underlying decoder error.
        #[source]
        source: std::io::Error,
    },

    /// The IDX magic number is not the one expected for this kind of file.
    #[error("{name}: bad magic number {found:#010x}, expected {expected:#010x} ({kind})")]
    BadMagic {
        /// Name of the buffer (usually its file name).
        name: String,
        /// The magic number read from the header.
        found: u32,
        /// The magic number this parser requires.
        expected: u32,
        /// What was expected, e.g. `"IDX images"`.
        kind: &'static str,
    },

    /// The header's dimensions are unusable (zero-sized, overflowing, or inconsistent).
    #[error("{name}: bad dimensions: {detail}")]
    BadDims {
        /// Name of the buffer, file, or argument.
        name: String,
        /// What is wrong with the dimensions.
        detail: String,
    },

    /// The buffer ends before the header or the data the header announces.
    #[error("{name}: truncated: header says {expected} bytes of {what}, found {found}")]
    Truncated {
        /// Name of the buffer (usually its file name).
        name: String,
        /// The part that is cut short: `"header"`, `"pixels"` or `"labels"`.
        what: &'static str,
        /// Bytes needed.
        expected: usize,
        /// Bytes present.
        found: usize,
    },

    /// The buffer holds more bytes than the header accounts for.
    #[error("{name}: {extra} trailing bytes after the {expected} bytes of {what} the header describes")]
    TrailingBytes {
        /// Name of the buffer (usually its file name).
        name: String,
        /// The part the header describes: `"pixels"` or `"labels"`.
        what: &'static str,
        /// Bytes the header accounts for (after the header).
        expected: usize,
        /// Bytes beyond that.
        extra: usize,
    },

    /// Images and labels disagree on how many examples there are.
    #[error("label count mismatch: {images} images but {labels} labels")]
    LabelCountMismatch {
        /// Number of images.
        images: usize,
        /// Number of labels.
        labels: usize,
    },

    /// A label is outside the ten classes 0..=9.
    #[error("unknown class {label} at index {index}: labels must be 0..=9")]
    UnknownClass {
        /// The offending label.
        label: u8,
        /// Its position in the label list.
        index: usize,
    },

    /// The PNG encoder failed.
    #[error("{}: PNG encoding failed: {source}", path.display())]
    Png {
        /// The file being written.
        path: PathBuf,
        /// The underlying encoder error.
        #[source]
        source: image::ImageError,
    },

    /// A function was called with arguments that cannot work (e.g. zero columns).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}
