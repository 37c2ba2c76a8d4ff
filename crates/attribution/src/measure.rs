//! Ground-truth measurements with common random numbers (spec p1 §3.2): every model is measured
//! on every query with the same fixed set of (t, noise) draws, so differences between models are
//! not drowned in Monte-Carlo noise.

use burn::prelude::*;

use diffusion::model::Denoiser;
use diffusion::Diffusion;
use foundation::rng::{normals, stream_for, timesteps, Purpose};
use foundation::tap::Tap;

use crate::Measurement;

/// The measurement `measurement` ([`Measurement::per_draw`]) of each query `[Q, D]`, averaged
/// over `draws` (t, noise) draws that depend only on `(seed, ids[q], draw)` (`ids` are the
/// queries' global indices); forward passes only, `batch` data at a time.
#[allow(clippy::too_many_arguments)]
pub fn measure<M: Denoiser>(
    model: &M,
    diffusion: &Diffusion,
    measurement: Measurement,
    queries: &[f32],
    ids: &[usize],
    draws: usize,
    seed: u64,
    batch: usize,
    device: &Device,
) -> Vec<f64> {
    let d = model.data_dim();
    let q = queries.len() / d;
    assert_eq!(ids.len(), q, "one id per query");
    let mut sums = vec![0f64; q];
    // (query, draw) pairs in a fixed order; each query's draws come from its own stream.
    let mut rngs: Vec<_> = ids.iter().map(|&id| stream_for(seed, Purpose::Measurement, id as u64)).collect();
    let pairs: Vec<usize> = (0..q).flat_map(|qi| std::iter::repeat_n(qi, draws)).collect();
    for chunk in pairs.chunks(batch.max(1)) {
        let b = chunk.len();
        let mut x0 = Vec::with_capacity(b * d);
        let mut eps = Vec::with_capacity(b * d);
        let mut t = Vec::with_capacity(b);
        for &qi in chunk {
            let rng = &mut rngs[qi];
            t.push(measurement.timestep(timesteps(rng, 1, diffusion.steps())[0]));
            eps.extend(normals(rng, d));
            x0.extend_from_slice(&queries[qi * d..(qi + 1) * d]);
        }
        let x0 = Tensor::<2>::from_data(TensorData::new(x0, [b, d]), device);
        let eps = Tensor::<2>::from_data(TensorData::new(eps, [b, d]), device);
        let (xt, out) = diffusion.forward_draw(model, x0.clone(), &t, eps.clone(), &mut Tap::off());
        // As f64 whatever the device's float type (exact for f32 devices).
        let per: Vec<f64> = measurement
            .per_draw(diffusion, out, xt, x0, &t, eps)
            .into_data()
            .try_into_vec_as::<f64>()
            .expect("float data");
        for (&qi, v) in chunk.iter().zip(per) {
            sums[qi] += v;
        }
    }
    sums.into_iter().map(|s| s / draws as f64).collect()
}
