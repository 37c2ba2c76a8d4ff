//! The in-memory dataset and the operations on it.

use foundation::rng::{stream_for, Purpose};
use rand::seq::index::sample;
use rand::seq::SliceRandom;

use crate::{DataError, RawImages};

/// Number of classes in MNIST and Fashion-MNIST; labels are `0..NUM_CLASSES`.
const NUM_CLASSES: usize = 10;

/// Images as f32 in [-1, 1] (x/255*2-1), row-major, one channel, plus labels.
///
/// Image `i` occupies `images[i * height * width..(i + 1) * height * width]`
/// and has label `labels[i]`, always in `0..=9`.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// All pixels, `n * height * width` of them, image after image, row-major, in [-1, 1].
    pub images: Vec<f32>,
    /// One label per image, each in `0..=9`.
    pub labels: Vec<u8>,
    /// Number of images.
    pub n: usize,
    /// Height of each image in pixels.
    pub height: usize,
    /// Width of each image in pixels.
    pub width: usize,
}

impl Dataset {
    /// Builds a dataset from raw `u8` images and their labels, mapping each
    /// pixel `x` to `x / 255 * 2 - 1`.
    ///
    /// Errors: [`DataError::LabelCountMismatch`] if `labels.len() != raw.n`,
    /// [`DataError::UnknownClass`] if a label is 10 or more, and
    /// [`DataError::BadDims`] if `raw.pixels.len() != raw.n * raw.rows * raw.cols`.
    pub fn from_raw(raw: RawImages, labels: Vec<u8>) -> Result<Dataset, DataError> {
        let expected = raw.n.checked_mul(raw.rows).and_then(|v| v.checked_mul(raw.cols));
        if expected != Some(raw.pixels.len()) {
            return Err(DataError::BadDims {
                name: "raw images".to_string(),
                detail: format!(
                    "{} x {} x {} images but {} pixels",
                    raw.n,
                    raw.rows,
                    raw.cols,
                    raw.pixels.len()
                ),
            });
        }
        if labels.len() != raw.n {
            return Err(DataError::LabelCountMismatch { images: raw.n, labels: labels.len() });
        }
        if let Some((index, &label)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= NUM_CLASSES) {
            return Err(DataError::UnknownClass { label, index });
        }
        let images = raw.pixels.iter().map(|&x| x as f32 / 255.0 * 2.0 - 1.0).collect();
        Ok(Dataset { images, labels, n: raw.n, height: raw.rows, width: raw.cols })
    }

    /// The pixels of image `i` (`height * width` values, row-major).
    ///
    /// Panics if `i >= self.n`.
    pub fn image(&self, i: usize) -> &[f32] {
        assert!(i < self.n, "image index {i} out of range for {} images", self.n);
        let p = self.pixels_per_image();
        &self.images[i * p..(i + 1) * p]
    }

    /// `height * width`.
    pub fn pixels_per_image(&self) -> usize {
        self.height * self.width
    }

    /// A new dataset holding the images at `idx`, in that order (repeats allowed).
    ///
    /// Panics if an index is `>= self.n`.
    pub fn select(&self, idx: &[usize]) -> Dataset {
        let p = self.pixels_per_image();
        let mut images = Vec::with_capacity(idx.len() * p);
        let mut labels = Vec::with_capacity(idx.len());
        for &i in idx {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Dataset { images, labels, n: idx.len(), height: self.height, width: self.width }
    }

    /// The images whose label is in `classes`, in their original order.
    pub fn filter_classes(&self, classes: &[u8]) -> Dataset {
        let idx: Vec<usize> = (0..self.n).filter(|&i| classes.contains(&self.labels[i])).collect();
        self.select(&idx)
    }

    /// `n` images drawn at random without replacement, deterministically from
    /// `seed` (stream [`Purpose::DataSubset`]), returned in their original order.
    ///
    /// If `n >= self.n` the whole dataset is returned.
    pub fn subset(&self, n: usize, seed: u64) -> Dataset {
        if n >= self.n {
            return self.clone();
        }
        let mut rng = stream_for(seed, Purpose::DataSubset, 0);
        let mut idx = sample(&mut rng, self.n, n).into_vec();
        idx.sort_unstable();
        self.select(&idx)
    }

    /// A seeded split into `(train, test)` for data without an official split: a permutation
    /// of all images from `seed` (stream [`Purpose::DataSplit`]) whose first `test` images form
    /// the test set and the rest the training set, each kept in the original order. `test` is
    /// clamped to the number of images.
    pub fn seeded_split(&self, test: usize, seed: u64) -> (Dataset, Dataset) {
        let test = test.min(self.n);
        let mut idx: Vec<usize> = (0..self.n).collect();
        idx.shuffle(&mut stream_for(seed, Purpose::DataSplit, 0));
        let (mut te, mut tr) = (idx[..test].to_vec(), idx[test..].to_vec());
        te.sort_unstable();
        tr.sort_unstable();
        (self.select(&tr), self.select(&te))
    }

    /// Up to `per_class` images of every class present, drawn at random
    /// without replacement, deterministically from `seed`; a class with fewer
    /// images contributes all of them. The result keeps the original order.
    ///
    /// Each class's draw uses its own ChaCha8 stream (seed `seed`, stream =
    /// class), so which images of one class are chosen does not depend on
    /// the other classes.
    pub fn balanced_subset(&self, per_class: usize, seed: u64) -> Dataset {
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); NUM_CLASSES];
        for (i, &l) in self.labels.iter().enumerate() {
            by_class[l as usize].push(i);
        }
        let mut idx = Vec::new();
        for (class, members) in by_class.iter().enumerate() {
            if members.len() <= per_class {
                idx.extend_from_slice(members);
            } else {
                let mut rng = stream_for(seed, Purpose::DataClassSubset, class as u64);
                idx.extend(sample(&mut rng, members.len(), per_class).into_iter().map(|k| members[k]));
            }
        }
        idx.sort_unstable();
        self.select(&idx)
    }

    /// Resamples every image to `out_h x out_w` by exact area averaging.
    ///
    /// Each output pixel is the mean of the input over the rectangle it
    /// covers, with partially covered input pixels weighted by their
    /// fractional overlap (weights are computed exactly in integers). So
    /// 28 -> 14 is the mean of each 2x2 block, 28 -> 8 works with fractional
    /// overlaps, and the mean of every image is preserved. Upsampling
    /// replicates pixels (with blending where the grids do not align).
    ///
    /// Panics if `out_h` or `out_w` is zero.
    pub fn resize_area(&self, out_h: usize, out_w: usize) -> Dataset {
        assert!(out_h > 0 && out_w > 0, "resize_area to a zero size");
        let wy = area_weights(self.height, out_h);
        let wx = area_weights(self.width, out_w);
        let (h, w) = (self.height, self.width);
        let mut images = Vec::with_capacity(self.n * out_h * out_w);
        let mut tmp = vec![0f64; h * out_w];
        for i in 0..self.n {
            let img = self.image(i);
            // Horizontal pass: h x w -> h x out_w.
            for y in 0..h {
                let row = &img[y * w..(y + 1) * w];
                for (ox, taps) in wx.iter().enumerate() {
                    tmp[y * out_w + ox] = taps.iter().map(|&(x, c)| c * row[x] as f64).sum();
                }
            }
            // Vertical pass: h x out_w -> out_h x out_w.
            for taps in &wy {
                for ox in 0..out_w {
                    let v: f64 = taps.iter().map(|&(y, c)| c * tmp[y * out_w + ox]).sum();
                    images.push(v as f32);
                }
            }
        }
        Dataset { images, labels: self.labels.clone(), n: self.n, height: out_h, width: out_w }
    }

    /// How many images there are of each class 0..=9.
    pub fn class_counts(&self) -> [usize; 10] {
        let mut counts = [0usize; 10];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }
}

/// For each output cell of a 1-d resampling from `n_in` to `n_out` cells,
/// the input cells it overlaps and their weights (summing to 1).
///
/// In units where each input cell has length `n_out` and each output cell
/// length `n_in`, output `o` covers `[o * n_in, (o + 1) * n_in)` and input `i`
/// covers `[i * n_out, (i + 1) * n_out)`; the overlaps are integers.
fn area_weights(n_in: usize, n_out: usize) -> Vec<Vec<(usize, f64)>> {
    (0..n_out)
        .map(|o| {
            let (lo, hi) = (o * n_in, (o + 1) * n_in);
            let first = lo / n_out;
            let last = (hi - 1) / n_out;
            (first..=last)
                .filter_map(|i| {
                    let overlap = hi.min((i + 1) * n_out) - lo.max(i * n_out);
                    (overlap > 0).then(|| (i, overlap as f64 / n_in as f64))
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::area_weights;

    #[test]
    fn area_weights_sum_to_one() {
        for (a, b) in [(28, 8), (28, 14), (8, 28), (5, 3), (7, 7), (1, 4)] {
            for taps in area_weights(a, b) {
                let s: f64 = taps.iter().map(|t| t.1).sum();
                assert!((s - 1.0).abs() < 1e-12, "{a}->{b}: {taps:?}");
            }
        }
    }
}
