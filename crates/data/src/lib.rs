//! Shared data loading for the workspace: MNIST and Fashion-MNIST from IDX
//! files (raw or gzip), a small MNIST subset embedded in the binary so that
//! everything runs on a fresh clone, dataset manipulation (subsets, class
//! filters, exact area resampling), PNG grid output and atomic (temp file +
//! rename) writes used by every crate.
//!
//! Pixels are `f32` in [-1, 1] (`x / 255 * 2 - 1`), row-major, one channel.

#![warn(missing_docs)]

mod dataset;
mod error;
mod idx;
mod png;

use std::path::{Path, PathBuf};

pub use dataset::Dataset;
pub use error::DataError;
pub use idx::{
    encode_idx_images, encode_idx_labels, gzip, parse_idx_images, parse_idx_labels, read_idx_images,
    read_idx_labels, RawImages,
};
pub use png::{to_u8, write_png_grid};

/// Which half of MNIST to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training set (60 000 images; 5 000 in the embedded subset).
    Train,
    /// The test set (10 000 images; 1 000 in the embedded subset).
    Test,
}

const EMBEDDED_TRAIN_IMAGES: &[u8] = include_bytes!("../embedded/mnist-train-subset-images.idx.gz");
const EMBEDDED_TRAIN_LABELS: &[u8] = include_bytes!("../embedded/mnist-train-subset-labels.idx.gz");
const EMBEDDED_TEST_IMAGES: &[u8] = include_bytes!("../embedded/mnist-test-subset-images.idx.gz");
const EMBEDDED_TEST_LABELS: &[u8] = include_bytes!("../embedded/mnist-test-subset-labels.idx.gz");

/// Reads an IDX file `dir/<stem>.gz`, or `dir/<stem>` if only the
/// uncompressed file exists.
fn idx_path(dir: &Path, stem: &str) -> PathBuf {
    let gz = dir.join(format!("{stem}.gz"));
    let plain = dir.join(stem);
    if !gz.exists() && plain.exists() {
        plain
    } else {
        gz
    }
}

/// Loads MNIST.
///
/// With `None`, parses the subset embedded in the binary: 500 images of
/// every digit from the training set (5 000) or 100 of every digit from the
/// test set (1 000), chosen by [`Dataset::balanced_subset`] with seed 0 and in
/// the original order (see `examples/make_embedded.rs`).
///
/// With `Some(dir)`, reads the four standard files from `dir`
/// (`train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`,
/// `t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`; the names
/// without `.gz` are accepted too), e.g. `shared_data_dir()/mnist`.
pub fn load_mnist(dir: Option<&Path>, split: Split) -> Result<Dataset, DataError> {
    let (images, labels) = match dir {
        None => match split {
            Split::Train => (
                parse_idx_images(EMBEDDED_TRAIN_IMAGES, "embedded mnist-train-subset-images.idx.gz")?,
                parse_idx_labels(EMBEDDED_TRAIN_LABELS, "embedded mnist-train-subset-labels.idx.gz")?,
            ),
            Split::Test => (
                parse_idx_images(EMBEDDED_TEST_IMAGES, "embedded mnist-test-subset-images.idx.gz")?,
                parse_idx_labels(EMBEDDED_TEST_LABELS, "embedded mnist-test-subset-labels.idx.gz")?,
            ),
        },
        Some(dir) => {
            let prefix = match split {
                Split::Train => "train",
                Split::Test => "t10k",
            };
            (
                read_idx_images(&idx_path(dir, &format!("{prefix}-images-idx3-ubyte")))?,
                read_idx_labels(&idx_path(dir, &format!("{prefix}-labels-idx1-ubyte")))?,
            )
        }
    };
    Dataset::from_raw(images, labels)
}

/// Loads Fashion-MNIST from `dir/all-images-idx3-ubyte.gz` and
/// `dir/all-labels-idx1-ubyte.gz` (all 70 000 images, as stored; the
/// uncompressed names are accepted too), e.g. `shared_data_dir()/fashion-mnist`.
pub fn load_fashion_mnist(dir: &Path) -> Result<Dataset, DataError> {
    let images = read_idx_images(&idx_path(dir, "all-images-idx3-ubyte"))?;
    let labels = read_idx_labels(&idx_path(dir, "all-labels-idx1-ubyte"))?;
    Dataset::from_raw(images, labels)
}

pub use foundation::paths::shared_data_dir;

/// Test-set size of the seeded Fashion-MNIST split ([`load_fashion_mnist_split`]): 10 000 of
/// the 70 000 images (1/7), the sizes of the usual 60 000 / 10 000 split.
pub const FASHION_TEST_IMAGES: usize = 10_000;

/// Seed of the Fashion-MNIST split.
pub const FASHION_SPLIT_SEED: u64 = 0;

/// One half of Fashion-MNIST under the project's seeded split: the shared files hold all 70 000
/// images sorted by class and record no official split, so [`Dataset::seeded_split`] with
/// [`FASHION_TEST_IMAGES`] and [`FASHION_SPLIT_SEED`] makes one (training 60 000, test
/// 10 000, each in the stored order).
pub fn load_fashion_mnist_split(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let (train, test) = load_fashion_mnist(dir)?.seeded_split(FASHION_TEST_IMAGES, FASHION_SPLIT_SEED);
    Ok(match split {
        Split::Train => train,
        Split::Test => test,
    })
}
