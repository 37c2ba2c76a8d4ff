//! IDX parsing: round trips and every error path.

use std::io::Write;

use data::{parse_idx_images, parse_idx_labels, read_idx_images, read_idx_labels, DataError};

/// A hand-built IDX image file: 2 images of 3 rows x 2 cols.
fn images_buf() -> Vec<u8> {
    let mut b = vec![0x00, 0x00, 0x08, 0x03]; // magic
    b.extend_from_slice(&[0, 0, 0, 2]); // n
    b.extend_from_slice(&[0, 0, 0, 3]); // rows
    b.extend_from_slice(&[0, 0, 0, 2]); // cols
    b.extend_from_slice(&[0, 1, 2, 3, 4, 5, 250, 251, 252, 253, 254, 255]);
    b
}

/// A hand-built IDX label file with 2 labels.
fn labels_buf() -> Vec<u8> {
    vec![0x00, 0x00, 0x08, 0x01, 0, 0, 0, 2, 7, 3]
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn check_images(raw: &data::RawImages) {
    assert_eq!((raw.n, raw.rows, raw.cols), (2, 3, 2));
    assert_eq!(raw.pixels, vec![0, 1, 2, 3, 4, 5, 250, 251, 252, 253, 254, 255]);
}

#[test]
fn round_trip_raw_and_gzip() {
    check_images(&parse_idx_images(&images_buf(), "imgs").unwrap());
    check_images(&parse_idx_images(&gz(&images_buf()), "imgs.gz").unwrap());
    assert_eq!(parse_idx_labels(&labels_buf(), "lbls").unwrap(), vec![7, 3]);
    assert_eq!(parse_idx_labels(&gz(&labels_buf()), "lbls.gz").unwrap(), vec![7, 3]);
}

#[test]
fn encoders_round_trip() {
    let raw = parse_idx_images(&images_buf(), "imgs").unwrap();
    assert_eq!(data::encode_idx_images(&raw), images_buf());
    assert_eq!(data::encode_idx_labels(&[7, 3]), labels_buf());
    let back = parse_idx_images(&data::gzip(&data::encode_idx_images(&raw)), "x").unwrap();
    assert_eq!(back, raw);
}

#[test]
fn read_from_disk() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("data-idx-read");
    std::fs::create_dir_all(&dir).unwrap();
    let ip = dir.join("imgs.idx.gz");
    let lp = dir.join("lbls.idx");
    std::fs::write(&ip, gz(&images_buf())).unwrap();
    std::fs::write(&lp, labels_buf()).unwrap();
    check_images(&read_idx_images(&ip).unwrap());
    assert_eq!(read_idx_labels(&lp).unwrap(), vec![7, 3]);

    let missing = dir.join("does-not-exist.gz");
    let err = read_idx_images(&missing).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("does-not-exist.gz"), "{err}");
}

#[test]
fn bad_magic() {
    // A label file handed to the image parser.
    let err = parse_idx_images(&labels_buf(), "train-images-idx3-ubyte.gz").unwrap_err();
    assert!(matches!(err, DataError::BadMagic { found: 0x801, expected: 0x803, .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "train-images-idx3-ubyte.gz: bad magic number 0x00000801, expected 0x00000803 (IDX images)"
    );

    let err = parse_idx_labels(&gz(&images_buf()), "labels.gz").unwrap_err();
    assert!(matches!(err, DataError::BadMagic { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with("labels.gz: bad magic number 0x00000803, expected 0x00000801"), "{msg}");
    assert!(!msg.contains('\n'));
}

#[test]
fn wrong_dims() {
    let mut b = images_buf();
    b[8..12].copy_from_slice(&[0, 0, 0, 0]); // rows = 0
    let err = parse_idx_images(&b, "zero-rows").unwrap_err();
    assert!(matches!(err, DataError::BadDims { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with("zero-rows: bad dimensions:") && msg.contains("zero"), "{msg}");

    // Sizes whose product overflows (only possible to detect on 32-bit) or is
    // absurdly large must give an error, never a panic or a huge allocation.
    let mut b = images_buf();
    b[4..16].copy_from_slice(&[0xff; 12]);
    let err = parse_idx_images(&b, "huge").unwrap_err();
    assert!(matches!(err, DataError::BadDims { .. } | DataError::Truncated { .. }), "{err:?}");
}

#[test]
fn truncated() {
    // Pixels cut short.
    let b = images_buf();
    let err = parse_idx_images(&b[..b.len() - 5], "short").unwrap_err();
    assert!(matches!(err, DataError::Truncated { what: "pixels", expected: 12, found: 7, .. }), "{err:?}");
    assert_eq!(err.to_string(), "short: truncated: header says 12 bytes of pixels, found 7");

    // Header cut short (also through gzip).
    let err = parse_idx_images(&gz(&b[..10]), "hdr").unwrap_err();
    assert!(matches!(err, DataError::Truncated { what: "header", .. }), "{err:?}");
    assert!(err.to_string().contains("truncated"), "{err}");
    let err = parse_idx_labels(&[0, 0], "tiny").unwrap_err();
    assert!(matches!(err, DataError::Truncated { .. }), "{err:?}");

    // Labels cut short.
    let l = labels_buf();
    let err = parse_idx_labels(&l[..l.len() - 1], "lbl").unwrap_err();
    assert_eq!(err.to_string(), "lbl: truncated: header says 2 bytes of labels, found 1");

    // A gzip stream cut short is a gzip error, not a panic.
    let z = gz(&b);
    let err = parse_idx_images(&z[..z.len() / 2], "cut.gz").unwrap_err();
    assert!(matches!(err, DataError::Gzip { .. }), "{err:?}");
    assert!(err.to_string().starts_with("cut.gz: gzip"), "{err}");
}

#[test]
fn trailing_bytes() {
    let mut b = images_buf();
    b.extend_from_slice(&[9, 9, 9]);
    let err = parse_idx_images(&b, "long").unwrap_err();
    assert!(matches!(err, DataError::TrailingBytes { extra: 3, .. }), "{err:?}");
    assert!(err.to_string().contains("3 trailing bytes"), "{err}");
}
