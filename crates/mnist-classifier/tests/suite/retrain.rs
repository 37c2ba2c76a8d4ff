//! Retrains the committed classifier weights on full MNIST (ignored: minutes of CPU):
//! `cargo test --release -p mnist-classifier --test retrain -- --ignored --nocapture`.

use std::path::PathBuf;

use data::{load_mnist, shared_data_dir, Split};
use foundation::progress::NoProgress;
use mnist_classifier::{
    default_classifier_path, save_classifier, train_classifier_with_report, ClassifierTrainConfig,
};

/// Trains the classifier on full MNIST and writes
/// `assets/mnist-classifier.safetensors` and `assets/mnist-classifier.json`.
#[test]
#[ignore = "trains on full MNIST for several minutes"]
fn train_and_cache_full_mnist_classifier() {
    let dir = std::env::var_os("MNIST_DIR")
        .map(PathBuf::from)
        .or_else(|| shared_data_dir().map(|d| d.join("mnist")))
        .expect("no MNIST directory (set MNIST_DIR or SHARED_DATA_DIR)");
    let train = load_mnist(Some(&dir), Split::Train).unwrap();
    let test = load_mnist(Some(&dir), Split::Test).unwrap();
    let mut cfg = ClassifierTrainConfig::new();
    if let Some(e) = std::env::var("CLASSIFIER_EPOCHS").ok().and_then(|s| s.parse().ok()) {
        cfg = cfg.with_epochs(e);
    }
    let seed = mnist_classifier::DEFAULT_CLASSIFIER_SEED;
    let (model, report) = train_classifier_with_report(&train, &test, &cfg, seed, &NoProgress).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert!(report.accuracy >= 0.99, "test accuracy {}", report.accuracy);
    let path = default_classifier_path();
    save_classifier(&model, &path).unwrap();
    std::fs::write(path.with_extension("json"), serde_json::to_string_pretty(&report).unwrap() + "\n")
        .unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    eprintln!("wrote {} ({size} bytes)", path.display());
    assert!(size < 2_000_000);
}
