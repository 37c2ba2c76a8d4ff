//! `foundation::tensor_file` (round trip, checked header, shapes, fault injection) and
//! `foundation::fingerprint` (the value diffusion has always stored, sensitivity).

use std::path::PathBuf;

use foundation::fingerprint::{self, Fingerprint};
use foundation::tensor_file::{self, FailAt, NamedTensor, SaveStep, TensorFileError};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Header {
    kind: String,
    steps: usize,
}

#[derive(Debug, Deserialize)]
struct OtherHeader {
    #[allow(dead_code)]
    learning_rate: f64,
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("foundation-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tensors(scale: f64) -> Vec<NamedTensor> {
    vec![
        NamedTensor::f64("a", vec![2, 3], (0..6).map(|i| scale * (i as f64 + 0.1).sqrt()).collect()),
        NamedTensor::f32("b", vec![4], vec![1.5, -2.25, f32::MIN_POSITIVE, 3e38]),
    ]
}

fn header() -> Header {
    Header { kind: "test".into(), steps: 7 }
}

#[test]
fn round_trip_is_bit_exact() {
    let path = temp_dir("round-trip").join("f.safetensors");
    tensor_file::save(&path, "test", &header(), &tensors(1.0)).unwrap();
    let file = tensor_file::load::<Header>(&path, "test").unwrap();
    assert_eq!(file.header, header());
    let a = file.f64("a", Some(&[2, 3])).unwrap();
    let expected = tensors(1.0);
    let foundation::tensor_file::Values::F64(want) = &expected[0].values else { unreachable!() };
    assert!(a.iter().zip(want).all(|(x, y)| x.to_bits() == y.to_bits()));
    assert_eq!(file.f32("b", None).unwrap(), vec![1.5, -2.25, f32::MIN_POSITIVE, 3e38]);
    assert_eq!(file.shape("a"), Some(&[2usize, 3][..]));
    assert!(!file.contains("c"));
}

fn one_line_format_error<T: std::fmt::Debug>(r: Result<T, TensorFileError>, needle: &str) {
    match r {
        Err(e @ TensorFileError::Format { .. }) => {
            let text = e.to_string();
            assert!(!text.contains('\n'), "{text}");
            assert!(text.contains(needle), "'{text}' lacks '{needle}'");
        }
        other => panic!("expected a format error containing '{needle}', got {other:?}"),
    }
}

#[test]
fn wrong_header_shape_dtype_and_corruption_are_one_line_errors() {
    let dir = temp_dir("errors");
    let path = dir.join("f.safetensors");
    tensor_file::save(&path, "test", &header(), &tensors(1.0)).unwrap();
    // Another kind of file (no header under this key), and a header of another type.
    one_line_format_error(tensor_file::load::<Header>(&path, "curvature"), "no 'curvature' header");
    one_line_format_error(tensor_file::load::<OtherHeader>(&path, "test"), "test header");
    let file = tensor_file::load::<Header>(&path, "test").unwrap();
    one_line_format_error(file.f64("a", Some(&[3, 2])), "shape [2, 3], expected [3, 2]");
    one_line_format_error(file.f64("b", None), "is f32");
    one_line_format_error(file.f64("missing", None), "missing");
    // A corrupt header: flip bytes inside the JSON, and a truncated file.
    let mut raw = std::fs::read(&path).unwrap();
    raw[10] = b'}';
    raw[11] = b'{';
    one_line_format_error(
        tensor_file::decode::<Header>(&raw, &path, "test"),
        "not a tensor file of kind 'test'",
    );
    let raw = std::fs::read(&path).unwrap();
    one_line_format_error(
        tensor_file::decode::<Header>(&raw[..raw.len() - 3], &path, "test"),
        "not a tensor file of kind 'test'",
    );
    // Non-finite values and inconsistent shapes are refused.
    let nan = vec![NamedTensor::f64("x", vec![1], vec![f64::NAN])];
    tensor_file::save(&path, "test", &header(), &nan).unwrap();
    let file = tensor_file::load::<Header>(&path, "test").unwrap();
    one_line_format_error(file.f64("x", None), "non-finite");
    let ragged = vec![NamedTensor::f64("x", vec![2, 2], vec![1.0; 3])];
    one_line_format_error(tensor_file::save(&path, "test", &header(), &ragged), "shape [2, 2] for 3 values");
}

#[test]
fn a_failed_save_at_any_step_leaves_a_complete_file() {
    let dir = temp_dir("faults");
    let path = dir.join("f.safetensors");
    tensor_file::save(&path, "test", &header(), &tensors(1.0)).unwrap();
    for k in 0..=SaveStep::ALL.len() {
        tensor_file::save(&path, "test", &header(), &tensors(1.0)).unwrap();
        let result = tensor_file::save_with(&path, "test", &header(), &tensors(2.0), &mut FailAt(k));
        assert_eq!(result.is_err(), k < SaveStep::ALL.len(), "step {k}");
        let file = tensor_file::load::<Header>(&path, "test").unwrap();
        let a = file.f64("a", Some(&[2, 3])).unwrap();
        // Before the rename the old content, from the rename on the new one; never a torn file.
        let renamed = k > SaveStep::ALL.iter().position(|&s| s == SaveStep::Commit).unwrap();
        let scale = if renamed { 2.0 } else { 1.0 };
        assert_eq!(a[5].to_bits(), (scale * 5.1f64.sqrt()).to_bits(), "step {k}");
    }
}

#[test]
fn fingerprint_of_f32_is_the_value_diffusion_stores() {
    // diffusion::train::TrainData::fingerprint as it was written (row-major f32 bits, then n).
    fn diffusion_fingerprint(rows: &[f32], n: usize) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for v in rows {
            for b in v.to_bits().to_le_bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x100_0000_01b3);
            }
        }
        h ^ (n as u64).rotate_left(32)
    }
    let values: Vec<f32> = (0..24).map(|i| (i as f32 * 0.37).sin()).collect();
    assert_eq!(fingerprint::of_f32(&values, 6), diffusion_fingerprint(&values, 6));
    // FNV-1a 64 of no bytes is the offset basis; of "a" the published test vector.
    assert_eq!(Fingerprint::new().finish(0), 0xcbf2_9ce4_8422_2325);
    assert_eq!(Fingerprint::new().bytes(b"a").finish(0), 0xaf63_dc4c_8601_ec8c);
}

#[test]
fn fingerprint_sees_values_order_and_shape() {
    let x: Vec<f64> = (0..12).map(|i| i as f64 * 0.5).collect();
    let base = fingerprint::of_f64(&x, 4);
    assert_eq!(base, fingerprint::of_f64(&x, 4));
    assert_ne!(base, fingerprint::of_f64(&x, 3), "shape");
    let mut y = x.clone();
    y.swap(0, 1);
    assert_ne!(base, fingerprint::of_f64(&y, 4), "order");
    let mut z = x.clone();
    z[7] = f64::from_bits(z[7].to_bits() ^ 1);
    assert_ne!(base, fingerprint::of_f64(&z, 4), "one bit");
    // Streaming equals one call; f32 and f64 of the same numbers differ.
    assert_eq!(Fingerprint::new().f64s(&x[..5]).f64s(&x[5..]).finish(4), base);
    let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    assert_ne!(fingerprint::of_f32(&xf, 4), base);
}
