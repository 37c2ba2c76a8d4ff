//! Checks against the real MNIST / Fashion-MNIST files of the shared data directory
//! (`../shared/data` or `SHARED_DATA_DIR`). Missing data fails the test, naming what is missing:
//! a check that silently passes without its data proves nothing.

use data::{load_fashion_mnist, load_fashion_mnist_split, load_mnist, shared_data_dir, Split};

fn dir(sub: &str, probe: &str) -> std::path::PathBuf {
    match shared_data_dir().map(|d| d.join(sub)) {
        Some(d) if d.join(probe).exists() => d,
        other => panic!("{probe} not found (shared data dir: {other:?}); set SHARED_DATA_DIR"),
    }
}

#[test]
fn full_mnist_train() {
    let d = dir("mnist", "train-images-idx3-ubyte.gz");
    let train = load_mnist(Some(&d), Split::Train).unwrap();
    assert_eq!((train.n, train.height, train.width), (60000, 28, 28));
    assert_eq!(train.labels.len(), 60000);
    assert_eq!(train.images.len(), 60000 * 784);
    assert!(train.labels.iter().all(|&l| l < 10));
    assert!(train.class_counts().iter().all(|&c| c > 5000));
}

#[test]
fn full_mnist_test() {
    let d = dir("mnist", "t10k-images-idx3-ubyte.gz");
    let test = load_mnist(Some(&d), Split::Test).unwrap();
    assert_eq!((test.n, test.height, test.width), (10000, 28, 28));
    assert!(test.labels.iter().all(|&l| l < 10));
    assert_eq!(test.class_counts().iter().sum::<usize>(), 10000);
}

#[test]
fn embedded_is_subset_of_full() {
    let d = dir("mnist", "t10k-images-idx3-ubyte.gz");
    let full = load_mnist(Some(&d), Split::Test).unwrap();
    let emb = load_mnist(None, Split::Test).unwrap();
    let want = full.balanced_subset(100, 0);
    assert_eq!(emb.labels, want.labels);
    assert_eq!(emb.images, want.images);
}

#[test]
fn fashion_mnist() {
    let d = dir("fashion-mnist", "all-images-idx3-ubyte.gz");
    let f = load_fashion_mnist(&d).unwrap();
    assert_eq!((f.n, f.height, f.width), (70000, 28, 28));
    assert_eq!(f.class_counts(), [7000; 10]);
    // The seeded split: 60 000 / 10 000, every class in both, the same on every call.
    let train = load_fashion_mnist_split(&d, Split::Train).unwrap();
    let test = load_fashion_mnist_split(&d, Split::Test).unwrap();
    assert_eq!((train.n, test.n), (60000, 10000));
    let (tr, te) = (train.class_counts(), test.class_counts());
    for c in 0..10 {
        assert_eq!(tr[c] + te[c], 7000);
        assert!((800..1200).contains(&te[c]), "class {c}: {} test images", te[c]);
    }
    assert_eq!(load_fashion_mnist_split(&d, Split::Test).unwrap().images, test.images);
}
