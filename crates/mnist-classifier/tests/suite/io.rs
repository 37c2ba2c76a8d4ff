//! Weight files: round trips, and bad files are one-line errors naming the file.

use std::path::PathBuf;

use burn::prelude::*;
use data::{load_mnist, Split};
use mnist_classifier::{
    features_sized, load_classifier, predict_proba, save_classifier, MnistClassifierConfig,
};

/// A fresh temporary directory unique to this test process and `name`.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mnist-classifier-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn save_load_round_trip_and_bad_files_are_errors() {
    let dir = temp_dir("roundtrip");
    let device = Device::flex();
    let model = MnistClassifierConfig::new()
        .with_channels_1(4)
        .with_channels_2(8)
        .with_feature_dim(16)
        .init_with(&mut foundation::rng::stream_for(5, foundation::rng::Purpose::Init, 0), &device);
    let path = dir.join("small.safetensors");
    save_classifier(&model, &path).unwrap();
    let loaded = load_classifier(&path, &device).unwrap();
    let test = load_mnist(None, Split::Test).unwrap().subset(64, 0);
    let p0 = predict_proba(&model, &test.images, test.n, &device);
    let p1 = predict_proba(&loaded, &test.images, test.n, &device);
    assert_eq!(p0, p1);
    let f = features_sized(&loaded, &test.images, test.n, 28, 28, &device);
    assert_eq!(f.len(), 64 * 16);
    for p in &p0 {
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "small.safetensors")
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    // Saving again overwrites.
    save_classifier(&model, &path).unwrap();

    let bytes = std::fs::read(&path).unwrap();
    let mut bad_files: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"this is not a safetensors file at all".to_vec()),
        ("empty", Vec::new()),
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
    ];
    // Header intact, data corrupted to the wrong length.
    let mut short_data = bytes.clone();
    short_data.truncate(bytes.len() - 4);
    bad_files.push(("short-data", short_data));
    // Valid safetensors with unrelated tensors (mismatched model).
    let foo: Vec<u8> = [1.0f32, 2.0, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3], &foo).unwrap();
    let other = safetensors::serialize([("foo.weight", view)], &None).unwrap();
    bad_files.push(("mismatched", other));
    for (name, content) in bad_files {
        let p = dir.join(format!("{name}.safetensors"));
        std::fs::write(&p, content).unwrap();
        let err = load_classifier(&p, &device).expect_err(name);
        let msg = format!("{err:#}");
        assert!(msg.contains(&p.display().to_string()), "{name}: {msg}");
    }
    // Right tensor names but wrong shapes: the small model's file with its
    // stored config removed, so the default (larger) architecture is expected.
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    header.as_object_mut().unwrap().remove("__metadata__");
    let mut new_header = serde_json::to_vec(&header).unwrap();
    while !new_header.len().is_multiple_of(8) {
        new_header.push(b' ');
    }
    let mut no_config = (new_header.len() as u64).to_le_bytes().to_vec();
    no_config.extend_from_slice(&new_header);
    no_config.extend_from_slice(&bytes[8 + header_len..]);
    let p = dir.join("wrong-shapes.safetensors");
    std::fs::write(&p, no_config).unwrap();
    let err = load_classifier(&p, &device).expect_err("wrong shapes");
    let msg = format!("{err:#}");
    assert!(msg.contains("wrong-shapes.safetensors"), "{msg}");

    let missing = dir.join("does-not-exist.safetensors");
    let err = load_classifier(&missing, &device).unwrap_err();
    assert!(format!("{err:#}").contains("does-not-exist.safetensors"));
    let _ = std::fs::remove_dir_all(&dir);
}
