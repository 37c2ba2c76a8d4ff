//! Inputs as the networks see them, the split into shards, and the derived data sets of the
//! experiments (rotated MNIST, MNIST with appended noise features).

use foundation::rng::{stream_for, Purpose};
use rand::seq::SliceRandom;
use rand::Rng;

use crate::HpoError;

/// Rows of features in [0, 1] (the first `image.0 * image.1` of each row are an image, row-major)
/// and labels in `0..10`.
#[derive(Clone, Debug)]
pub struct Inputs {
    /// `n * d` features, row after row.
    pub x: Vec<f32>,
    /// One label per row.
    pub y: Vec<u8>,
    /// Number of rows.
    pub n: usize,
    /// Features per row.
    pub d: usize,
    /// Height and width of the image part.
    pub image: (usize, usize),
}

impl Inputs {
    /// MNIST-style images in [-1, 1] mapped to [0, 1] (background 0, so that rotating in zeros
    /// and masking a pixel to 0 both mean "background").
    pub fn from_dataset(ds: &::data::Dataset) -> Self {
        Self {
            x: ds.images.iter().map(|&v| (v + 1.0) * 0.5).collect(),
            y: ds.labels.clone(),
            n: ds.n,
            d: ds.height * ds.width,
            image: (ds.height, ds.width),
        }
    }

    /// The rows `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> Self {
        let mut x = Vec::with_capacity(idx.len() * self.d);
        for &i in idx {
            x.extend_from_slice(&self.x[i * self.d..(i + 1) * self.d]);
        }
        Self { x, y: idx.iter().map(|&i| self.y[i]).collect(), n: idx.len(), d: self.d, image: self.image }
    }

    /// Every image rotated by its own angle drawn uniformly from (-180, 180) degrees, from
    /// `stream_for(seed, HpoDataTransform, index)`.
    pub fn rotated(&self, seed: u64, index: u64) -> Self {
        let mut rng = stream_for(seed, Purpose::HpoDataTransform, index);
        let (h, w) = self.image;
        let p = h * w;
        let mut x = Vec::with_capacity(self.x.len());
        for i in 0..self.n {
            let row = &self.x[i * self.d..(i + 1) * self.d];
            let angle = rng.gen_range(-std::f32::consts::PI..std::f32::consts::PI);
            x.extend(crate::augment::rotate(&row[..p], h, w, angle));
            x.extend_from_slice(&row[p..]);
        }
        Self { x, ..self.clone() }
    }

    /// `extra` features uniform on [0, 1] appended to every row, from
    /// `stream_for(seed, HpoDataTransform, index)`.
    pub fn with_noise_features(&self, extra: usize, seed: u64, index: u64) -> Self {
        let mut rng = stream_for(seed, Purpose::HpoDataTransform, index);
        let d = self.d + extra;
        let mut x = Vec::with_capacity(self.n * d);
        for i in 0..self.n {
            x.extend_from_slice(&self.x[i * self.d..(i + 1) * self.d]);
            x.extend((0..extra).map(|_| rng.gen::<f32>()));
        }
        Self { x, d, ..self.clone() }
    }
}

/// Checks that `proportions` has `c` positive entries summing to 1 (within 1e-6); `what` names
/// them in the error.
pub fn check_proportions(proportions: &[f64], c: usize, what: &str) -> Result<(), HpoError> {
    if c == 0 {
        return Err(HpoError::InvalidArgument("the number of partitions C must be at least 1".into()));
    }
    if proportions.len() != c {
        return Err(HpoError::InvalidArgument(format!(
            "{what} proportions have {} entries for C = {c} partitions",
            proportions.len()
        )));
    }
    let sum: f64 = proportions.iter().sum();
    if proportions.iter().any(|&p| !(p.is_finite() && p > 0.0)) || (sum - 1.0).abs() > 1e-6 {
        return Err(HpoError::BadProportions { what: what.to_string(), values: proportions.to_vec(), sum });
    }
    Ok(())
}

/// The split of `n` training rows into shards `D_1..D_C` with the given proportions: a seeded
/// permutation (`stream_for(seed, HpoDataShards, 0)`) cut into consecutive pieces of
/// `round(proportion * n)` rows (the last takes the rest). Errors when a shard would be empty
/// (in particular when C exceeds `n`) or the proportions are not C positive numbers summing to 1.
pub fn shards(n: usize, proportions: &[f64], seed: u64) -> Result<Vec<Vec<usize>>, HpoError> {
    let c = proportions.len();
    check_proportions(proportions, c, "data")?;
    if c > n {
        return Err(HpoError::TooFewExamples { partitions: c, examples: n });
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut stream_for(seed, Purpose::HpoDataShards, 0));
    let mut out = Vec::with_capacity(c);
    let (mut start, mut cum) = (0, 0.0);
    for (k, &p) in proportions.iter().enumerate() {
        cum += p;
        let end = if k + 1 == c { n } else { ((cum * n as f64).round() as usize).min(n) };
        if end <= start {
            return Err(HpoError::TooFewExamples { partitions: c, examples: n });
        }
        out.push(order[start..end].to_vec());
        start = end;
    }
    Ok(out)
}

/// A label-skewed split of the rows with labels `y` over `clients` clients, the classic non-i.i.d.
/// FedAvg split (McMahan et al. 2017): the rows sorted by label (ties in row order) are cut into
/// `2 * clients` equal chunks, and each client gets two chunks drawn at random
/// (`stream_for(seed, HpoDataShards, 2)`), so most clients see two classes.
pub fn label_skewed_clients(y: &[u8], clients: usize, seed: u64) -> Result<Vec<Vec<usize>>, HpoError> {
    let chunks = 2 * clients;
    if clients == 0 || chunks > y.len() {
        return Err(HpoError::InvalidArgument(format!(
            "{clients} clients need at least one row per half-client ({chunks} rows); there are {}",
            y.len()
        )));
    }
    let mut sorted: Vec<usize> = (0..y.len()).collect();
    sorted.sort_by_key(|&i| y[i]);
    let mut order: Vec<usize> = (0..chunks).collect();
    order.shuffle(&mut stream_for(seed, Purpose::HpoDataShards, 2));
    let bounds = |c: usize| (c * y.len() / chunks, (c + 1) * y.len() / chunks);
    Ok(order
        .chunks(2)
        .map(|pair| {
            pair.iter()
                .flat_map(|&c| {
                    let (a, b) = bounds(c);
                    sorted[a..b].iter().copied()
                })
                .collect()
        })
        .collect())
}

/// A seeded split of `n` rows into (training, validation) with `val_fraction` of them in the
/// validation part (`stream_for(seed, HpoDataShards, 1)`).
pub fn validation_split(
    n: usize,
    val_fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>), HpoError> {
    let n_val = (val_fraction * n as f64).round() as usize;
    if !(0.0..1.0).contains(&val_fraction) || n_val == 0 || n_val >= n {
        return Err(HpoError::InvalidArgument(format!(
            "a validation fraction of {val_fraction} leaves no training or no validation rows of {n}"
        )));
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut stream_for(seed, Purpose::HpoDataShards, 1));
    let val = order[..n_val].to_vec();
    let train = order[n_val..].to_vec();
    Ok((train, val))
}
