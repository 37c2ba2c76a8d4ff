//! Regenerates the MNIST subset embedded in the `data` crate.
//!
//! Reads the full MNIST from `shared_data_dir()/mnist` and writes, under
//! `crates/data/embedded/`, gzip IDX files holding 500 images of every
//! digit from the training set and 100 of every digit from the test set
//! (`Dataset::balanced_subset` with seed 0, original order kept).
//!
//! Run with `cargo run --release -p data --example make_embedded`.
//! (On a fresh checkout the embedded files already exist; `include_bytes!`
//! needs them to compile. Empty placeholder files suffice to bootstrap.)

use std::path::Path;

use data::{encode_idx_images, encode_idx_labels, gzip, load_mnist, shared_data_dir, Split};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mnist_dir =
        shared_data_dir().ok_or("no shared data directory found (set SHARED_DATA_DIR)")?.join("mnist");
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("embedded");
    std::fs::create_dir_all(&out_dir)?;

    for (split, name, per_class) in [(Split::Train, "train", 500), (Split::Test, "test", 100)] {
        let full = load_mnist(Some(&mnist_dir), split)?;
        let sub = full.balanced_subset(per_class, 0);
        let counts = sub.class_counts();
        if counts.iter().any(|&c| c != per_class) {
            return Err(format!("{name}: class counts {counts:?}, expected {per_class} each").into());
        }
        // Back from [-1, 1] to the original bytes (exact: x/255*2-1 round-trips).
        let raw = data::RawImages {
            pixels: sub.images.iter().map(|&v| ((v + 1.0) / 2.0 * 255.0).round() as u8).collect(),
            n: sub.n,
            rows: sub.height,
            cols: sub.width,
        };
        for (kind, bytes) in
            [("images", gzip(&encode_idx_images(&raw))), ("labels", gzip(&encode_idx_labels(&sub.labels)))]
        {
            let path = out_dir.join(format!("mnist-{name}-subset-{kind}.idx.gz"));
            let tmp = path.with_extension("gz.tmp");
            std::fs::write(&tmp, &bytes)?;
            std::fs::rename(&tmp, &path)?;
            println!("{}: {} bytes", path.display(), bytes.len());
        }
        println!("{name}: {} of {} images, counts {counts:?}", sub.n, full.n);
    }
    Ok(())
}
