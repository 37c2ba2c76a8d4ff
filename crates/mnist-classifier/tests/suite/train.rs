//! The classifier trains on the workspace's trainer: deterministic, and it learns.

use burn::prelude::*;
use data::{load_mnist, Split};
use mnist_classifier::{accuracy, train_classifier, ClassifierTrainConfig, MnistClassifierConfig};

#[test]
fn a_small_classifier_learns_deterministically() {
    let train = load_mnist(None, Split::Train).unwrap().subset(1024, 0);
    let test = load_mnist(None, Split::Test).unwrap().subset(200, 0);
    let cfg = ClassifierTrainConfig::new()
        .with_model(MnistClassifierConfig::new().with_channels_1(4).with_channels_2(8).with_feature_dim(16))
        .with_epochs(4)
        .with_batch_size(32)
        .with_lr(5e-3);
    let (model, acc) = train_classifier(&train, &test, &cfg, 7).unwrap();
    let (again, acc_again) = train_classifier(&train, &test, &cfg, 7).unwrap();
    assert_eq!(acc, acc_again);
    let device = Device::flex();
    assert_eq!(accuracy(&model, &test, &device), accuracy(&again, &test, &device));
    let untrained = cfg.model.init(&device);
    let before = accuracy(&untrained, &test, &device);
    eprintln!("accuracy {before:.3} untrained, {acc:.3} after 128 steps");
    assert!(acc > 0.5 && acc > before + 0.2, "accuracy {acc} (untrained {before})");
}

#[test]
fn bad_training_data_is_an_error() {
    let train = load_mnist(None, Split::Train).unwrap().subset(8, 0).resize_area(14, 14);
    let test = load_mnist(None, Split::Test).unwrap().subset(8, 0);
    let err = train_classifier(&train, &test, &ClassifierTrainConfig::new(), 0).expect_err("14x14 refused");
    assert!(err.to_string().contains("14x14"), "{err}");
}
