//! Dataset operations, the embedded subset and PNG output.

use data::{load_mnist, to_u8, write_png_grid, DataError, Dataset, RawImages, Split};

/// `n` images of `h x w` where pixel values encode (image, position) and
/// labels cycle through `0..classes`.
fn synthetic(n: usize, h: usize, w: usize, classes: u8) -> Dataset {
    let pixels = (0..n * h * w).map(|k| ((k * 37 + k / 7) % 256) as u8).collect();
    let labels = (0..n).map(|i| (i % classes as usize) as u8).collect();
    Dataset::from_raw(RawImages { pixels, n, rows: h, cols: w }, labels).unwrap()
}

#[test]
fn from_raw_scales_and_checks() {
    let d = Dataset::from_raw(RawImages { pixels: vec![0, 255, 51, 204], n: 1, rows: 2, cols: 2 }, vec![4])
        .unwrap();
    assert_eq!(d.images, vec![-1.0, 1.0, -0.6, 0.6]);
    assert_eq!((d.n, d.height, d.width, d.pixels_per_image()), (1, 2, 2, 4));
    assert_eq!(d.image(0), &d.images[..]);

    let raw = RawImages { pixels: vec![0; 8], n: 2, rows: 2, cols: 2 };
    let err = Dataset::from_raw(raw.clone(), vec![1, 2, 3]).unwrap_err();
    assert!(matches!(err, DataError::LabelCountMismatch { images: 2, labels: 3 }), "{err:?}");
    assert_eq!(err.to_string(), "label count mismatch: 2 images but 3 labels");

    let err = Dataset::from_raw(raw.clone(), vec![1, 10]).unwrap_err();
    assert!(matches!(err, DataError::UnknownClass { label: 10, index: 1 }), "{err:?}");
    assert!(err.to_string().contains("unknown class 10"), "{err}");

    let bad = RawImages { pixels: vec![0; 7], ..raw };
    let err = Dataset::from_raw(bad, vec![1, 2]).unwrap_err();
    assert!(matches!(err, DataError::BadDims { .. }), "{err:?}");
}

#[test]
fn select_and_filter() {
    let d = synthetic(30, 3, 4, 10);
    let s = d.select(&[5, 2, 5]);
    assert_eq!(s.n, 3);
    assert_eq!(s.labels, vec![5, 2, 5]);
    assert_eq!(s.image(0), d.image(5));
    assert_eq!(s.image(1), d.image(2));
    assert_eq!(s.images.len(), 3 * 12);

    let f = d.filter_classes(&[7, 2]);
    assert_eq!(f.n, 6);
    assert_eq!(f.labels, vec![2, 7, 2, 7, 2, 7]);
    assert_eq!(f.image(1), d.image(7));
    assert_eq!(f.class_counts(), [0, 0, 3, 0, 0, 0, 0, 3, 0, 0]);
    assert_eq!(d.filter_classes(&[]).n, 0);
}

/// `n <= 256` images of 1x2 pixels whose first pixel is the image's index.
fn indexed(n: usize) -> Dataset {
    let pixels = (0..n).flat_map(|i| [i as u8, 0]).collect();
    let labels = (0..n).map(|i| (i % 10) as u8).collect();
    Dataset::from_raw(RawImages { pixels, n, rows: 1, cols: 2 }, labels).unwrap()
}

/// The original indices of the images of a dataset built by [`indexed`].
fn origin(d: &Dataset) -> Vec<usize> {
    (0..d.n).map(|i| to_u8(d.image(i)[0]) as usize).collect()
}

#[test]
fn subset_is_deterministic() {
    let d = indexed(200);
    let a = d.subset(50, 1);
    let b = d.subset(50, 1);
    let c = d.subset(50, 2);
    assert_eq!(a.n, 50);
    assert_eq!(a.images, b.images);
    assert_eq!(a.labels, b.labels);
    assert_ne!(origin(&a), origin(&c));
    // Without replacement and sorted by original index.
    let pos = origin(&a);
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{pos:?}");
    assert!(pos.iter().zip(&a.labels).all(|(&i, &l)| l == (i % 10) as u8));
    // n >= len returns everything.
    assert_eq!(d.subset(200, 3).images, d.images);
    assert_eq!(d.subset(1000, 3).n, 200);
}

#[test]
fn balanced_subset_counts() {
    // Classes 0..=4 with 30 images each, then 3 extra images of class 9.
    let mut d = synthetic(150, 2, 2, 5);
    let extra = synthetic(3, 2, 2, 1);
    d.images.extend_from_slice(&extra.images);
    d.labels.extend_from_slice(&[9, 9, 9]);
    d.n += 3;

    let b = d.balanced_subset(10, 0);
    assert_eq!(b.class_counts(), [10, 10, 10, 10, 10, 0, 0, 0, 0, 3]);
    assert_eq!(b.n, 53);
    let b2 = d.balanced_subset(10, 0);
    assert_eq!(b.images, b2.images);
    assert_ne!(b.images, d.balanced_subset(10, 1).images);
    // Original order kept: the three class-9 images are last.
    assert_eq!(&b.labels[50..], &[9, 9, 9]);
    let e = indexed(200).balanced_subset(7, 3);
    assert_eq!(e.class_counts(), [7; 10]);
    let pos = origin(&e);
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{pos:?}");
    // A large per_class returns everything.
    assert_eq!(d.balanced_subset(1000, 5).images, d.images);
}

#[test]
fn resize_28_to_14_is_2x2_mean() {
    let d = synthetic(3, 28, 28, 10);
    let r = d.resize_area(14, 14);
    assert_eq!((r.n, r.height, r.width), (3, 14, 14));
    assert_eq!(r.labels, d.labels);
    for i in 0..d.n {
        let src = d.image(i);
        let dst = r.image(i);
        for y in 0..14 {
            for x in 0..14 {
                let m = (src[2 * y * 28 + 2 * x]
                    + src[2 * y * 28 + 2 * x + 1]
                    + src[(2 * y + 1) * 28 + 2 * x]
                    + src[(2 * y + 1) * 28 + 2 * x + 1])
                    / 4.0;
                assert!((dst[y * 14 + x] - m).abs() < 1e-6, "{y},{x}");
            }
        }
    }
}

#[test]
fn resize_28_to_8_preserves_mean() {
    let d = synthetic(4, 28, 28, 10);
    let r = d.resize_area(8, 8);
    assert_eq!(r.image(0).len(), 64);
    for i in 0..d.n {
        let ms: f64 = d.image(i).iter().map(|&v| v as f64).sum::<f64>() / 784.0;
        let md: f64 = r.image(i).iter().map(|&v| v as f64).sum::<f64>() / 64.0;
        assert!((ms - md).abs() < 1e-5, "image {i}: {ms} vs {md}");
        assert!(r.image(i).iter().all(|v| (-1.0..=1.0).contains(v)));
    }
    // Exact fractional overlap on a hand-checkable case: 3 -> 2 in 1-d.
    let d =
        Dataset::from_raw(RawImages { pixels: vec![0, 255, 0], n: 1, rows: 1, cols: 3 }, vec![0]).unwrap();
    let r = d.resize_area(1, 2);
    // Output 0 covers pixel 0 fully and half of pixel 1: (-1 + 0.5 * 1) / 1.5.
    let want = (-1.0 + 0.5) / 1.5;
    assert!((r.images[0] - want).abs() < 1e-6, "{:?}", r.images);
    assert!((r.images[1] - want).abs() < 1e-6, "{:?}", r.images);
    // A constant image stays constant, whatever the ratio.
    let c = Dataset { images: vec![0.25; 28 * 28], labels: vec![1], n: 1, height: 28, width: 28 };
    for (h, w) in [(8, 8), (5, 11), (28, 28), (40, 33)] {
        assert!(c.resize_area(h, w).images.iter().all(|v| (v - 0.25).abs() < 1e-6));
    }
}

#[test]
fn embedded_data_loads() {
    let train = load_mnist(None, Split::Train).unwrap();
    assert_eq!((train.n, train.height, train.width), (5000, 28, 28));
    assert_eq!(train.class_counts(), [500; 10]);
    assert_eq!(train.images.len(), 5000 * 784);
    assert!(train.images.iter().all(|v| (-1.0..=1.0).contains(v)));
    // Real digits: mostly background with some ink.
    let mean = train.images.iter().map(|&v| v as f64).sum::<f64>() / train.images.len() as f64;
    assert!((-0.9..-0.6).contains(&mean), "mean {mean}");

    let test = load_mnist(None, Split::Test).unwrap();
    assert_eq!((test.n, test.height, test.width), (1000, 28, 28));
    assert_eq!(test.class_counts(), [100; 10]);
    assert_ne!(test.image(0), train.image(0));
}

#[test]
fn to_u8_maps_and_clamps() {
    assert_eq!(to_u8(-1.0), 0);
    assert_eq!(to_u8(1.0), 255);
    assert_eq!(to_u8(0.0), 128); // 127.5 rounds up
    assert_eq!(to_u8(-5.0), 0);
    assert_eq!(to_u8(7.0), 255);
    assert_eq!(to_u8(f32::NAN), 0);
    for x in 0..=255u8 {
        assert_eq!(to_u8(x as f32 / 255.0 * 2.0 - 1.0), x);
    }
}

#[test]
fn png_grid_dimensions() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("data-png-test/nested");
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("grid.png");
    let d = synthetic(7, 5, 3, 10);
    write_png_grid(&path, &d.images, 7, 5, 3, 4).unwrap();
    let img = image::open(&path).unwrap().to_luma8();
    // 4 columns of width 3 with 1px gaps; 2 rows of height 5 with a 1px gap.
    assert_eq!(img.dimensions(), (4 * 3 + 3, 2 * 5 + 1));
    // Top-left pixel of image 0 and of image 5 (row 1, col 1).
    assert_eq!(img.get_pixel(0, 0).0[0], to_u8(d.image(0)[0]));
    assert_eq!(img.get_pixel(4, 6).0[0], to_u8(d.image(5)[0]));
    assert!(!dir.join("grid.png.tmp").exists());

    // Fewer images than columns: the grid is only as wide as needed.
    write_png_grid(&path, d.image(0), 1, 5, 3, 8).unwrap();
    assert_eq!(image::open(&path).unwrap().dimensions_wh(), (3, 5));

    let err = write_png_grid(&path, &d.images, 6, 5, 3, 4).unwrap_err();
    assert!(matches!(err, DataError::InvalidArgument(_)), "{err:?}");
    let err = write_png_grid(&path, &d.images, 7, 5, 3, 0).unwrap_err();
    assert!(matches!(err, DataError::InvalidArgument(_)), "{err:?}");
}

trait Wh {
    fn dimensions_wh(&self) -> (u32, u32);
}
impl Wh for image::DynamicImage {
    fn dimensions_wh(&self) -> (u32, u32) {
        (self.width(), self.height())
    }
}

#[test]
fn seeded_split_partitions_every_image_once_and_is_seeded() {
    let d = indexed(200);
    let (train, test) = d.seeded_split(30, 4);
    assert_eq!((train.n, test.n), (170, 30));
    let (tr, te) = (origin(&train), origin(&test));
    assert!(tr.windows(2).all(|w| w[0] < w[1]) && te.windows(2).all(|w| w[0] < w[1]), "original order");
    let mut all: Vec<usize> = tr.iter().chain(&te).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..200).collect::<Vec<_>>(), "disjoint and complete");
    assert_eq!(origin(&d.seeded_split(30, 4).1), te, "same seed, same split");
    assert_ne!(origin(&d.seeded_split(30, 5).1), te, "another seed, another split");
    // A class-sorted set (like the stored Fashion-MNIST) is not split by position.
    assert!(te.iter().any(|&i| i < 100) && te.iter().any(|&i| i >= 100));
    assert_eq!(d.seeded_split(500, 0).0.n, 0, "test share clamped to all images");
}
