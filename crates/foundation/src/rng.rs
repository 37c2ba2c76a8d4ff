//! Seeded random draws. Every draw in the crate comes from a ChaCha8 stream derived from a
//! user seed and a purpose/step counter, so results do not depend on call order elsewhere.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// Derive an independent RNG from a base seed and up to two stream labels (e.g. step, purpose).
pub fn stream(seed: u64, a: u64, b: u64) -> ChaCha8Rng {
    // SplitMix-style mixing so that nearby (seed, a, b) give unrelated streams.
    let mut z = seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ChaCha8Rng::seed_from_u64(z ^ (z >> 31))
}

/// `n` standard normal draws.
pub fn normals(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.sample::<f32, _>(StandardNormal)).collect()
}

/// The order in which epoch `epoch` visits `n` training examples: a permutation of `0..n` drawn
/// from [`Purpose::TrainOrder`], so that every trainer shuffles its data the same way.
pub fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    use rand::seq::SliceRandom;
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut stream_for(seed, Purpose::TrainOrder, epoch as u64));
    order
}

/// `n` uniform timesteps in `0..steps`.
pub fn timesteps(rng: &mut impl Rng, n: usize, steps: usize) -> Vec<usize> {
    (0..n).map(|_| rng.gen_range(0..steps)).collect()
}

/// The one registry of what random streams are for. Every seeded draw in the workspace names its
/// purpose here, so two uses can never pick the same stream label by accident; [`Purpose::label`]
/// keeps the numbers the code used before the registry existed, so stored runs reproduce bit for
/// bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// Minibatch order (index: epoch).
    TrainOrder,
    /// Timesteps and noise of a training step (index: step).
    TrainNoise,
    /// Sampling noise (index: number of samples).
    Sample,
    /// ELBO estimation (index: first example of a batch).
    Elbo,
    /// Dropout masks (index: step).
    Dropout,
    /// Parameter initialisation.
    Init,
    /// Draw `draw` of a training example's (t, noise) for attribution gradients (index: example).
    TrainGradient {
        /// Which Monte-Carlo draw.
        draw: u64,
    },
    /// Draw `draw` of a query's (t, noise) for attribution gradients (index: query).
    QueryGradient {
        /// Which Monte-Carlo draw.
        draw: u64,
    },
    /// Draw `draw` of curvature-fitting pass `pass` (0: factors, 1: eigenvalue correction; index:
    /// example). Pass 1 shares its labels with [`Purpose::TrainGradient`], as it always has: the
    /// correction pass sees the same (t, noise) draws as the training gradients.
    CurvatureDraw {
        /// Fitting pass.
        pass: u64,
        /// Which Monte-Carlo draw.
        draw: u64,
    },
    /// Pseudo-target sampling while fitting curvature factors.
    CurvatureTargets,
    /// Ground-truth measurement draws (index: query).
    Measurement,
    /// TRAK's random projection (index: block of parameters).
    RandomProjection,
    /// LDS subsets (index: subset).
    LdsSubsets,
    /// Tie-breaking order of the retrain-top experiment (index: query).
    RetrainTopOrder,
    /// Synthetic data of `attribute bench`.
    AttributeBenchData,
    /// Synthetic data of `ddpm bench` (index: image size).
    DdpmBenchData,
    /// A random subset of a data set (`data::Dataset::subset`). Nonce stream 0 (see below).
    DataSubset,
    /// The train/test split of a data set without an official one
    /// (`data::Dataset::seeded_split`: Fashion-MNIST; index: 0).
    DataSplit,
    /// The images drawn from one class by `data::Dataset::balanced_subset` (index: the class,
    /// used as the nonce stream).
    DataClassSubset,
    /// GP probe vectors and random Fourier features. Nonce stream 0.
    GpProbes,
    /// GP SGD solver mini-batches. Nonce stream 1.
    GpSolverBatches,
    /// The centre of the GP's centred nearest-neighbour subsample. Nonce stream 2.
    GpSubsample,
    /// Bootstrap resampling of `foundation::stats::bootstrap_ci` (index: 0).
    Bootstrap,
    /// Partition-based HPO: the assignment of every weight to a partition (index: layer).
    HpoWeightPartition,
    /// Partition-based HPO: the split of the training data into shards and a validation part.
    HpoDataShards,
    /// Partition-based HPO: batches and augmentation draws of a hyperparameter step (index: step).
    HpoHyperStep,
    /// Partition-based HPO: the fixed transforms of derived data sets (rotations, noise features;
    /// index: 0 training set, 1 test set) and the evaluation draws (index: 2).
    HpoDataTransform,
    /// Generated data of the `endd` crate: spiral, ring and grid points, augmented and noised
    /// auxiliary images (index: which set, see `endd::data`).
    EnddData,
    /// Draws of the timewarp crate: `stream` names the use (Langevin noise, proposals, MH
    /// uniforms, auxiliary velocities, initial states, block bootstrap; see `timewarp::rng`),
    /// the index the chain, run or replica.
    Timewarp {
        /// Which timewarp draw.
        stream: u64,
    },
    /// The synthetic world of `meta-ocl`: the entities' attribute values (index: 0).
    MetaOclWorld,
    /// The protocol of one `meta-ocl` stage-1 seed: subsets, variable names, tags, derangement and
    /// held-out questions (index: the stage-1 seed).
    MetaOclProtocol,
    /// The MNIST analogue of `meta-ocl` (`meta_ocl::vision`): entity renderings and question
    /// patches (index 0), glyphs and tag patches of stage-1 seed `s` (index `s + 1`).
    MetaOclVision,
    /// The numeric set-inclusion task of `meta-ocl` (`meta_ocl::numeric`): index 0 the world
    /// (hidden numbers, questions, variable names, the q subset); index `1 + s` the split of
    /// stage-1 seed `s`.
    MetaOclNumeric,
}

impl Purpose {
    /// The stream label passed to [`stream`] as its first label.
    pub const fn label(self) -> u64 {
        match self {
            Purpose::TrainOrder => 1,
            Purpose::TrainNoise => 2,
            Purpose::Sample => 3,
            Purpose::Elbo => 4,
            Purpose::Dropout => 5,
            Purpose::Init => 6,
            Purpose::TrainGradient { draw } => (1 << 32) | draw,
            Purpose::QueryGradient { draw } => (2 << 32) | draw,
            Purpose::CurvatureDraw { pass, draw } => (pass << 32) | draw,
            Purpose::CurvatureTargets => 77,
            Purpose::Measurement => 0x3EA5,
            Purpose::RandomProjection => 0x7A4C,
            Purpose::LdsSubsets => 0x5B5E7,
            Purpose::RetrainTopOrder => 0x7A4D,
            Purpose::AttributeBenchData => 5,
            Purpose::DdpmBenchData => 99,
            Purpose::Bootstrap => 0xB0075,
            Purpose::HpoWeightPartition => 0x4890_0001,
            Purpose::HpoDataShards => 0x4890_0002,
            Purpose::HpoHyperStep => 0x4890_0003,
            Purpose::HpoDataTransform => 0x4890_0004,
            Purpose::EnddData => 0xE2DD,
            Purpose::Timewarp { stream } => (0x7137 << 40) | stream,
            Purpose::MetaOclWorld => 0x3E7A0,
            Purpose::MetaOclProtocol => 0x3E7A1,
            Purpose::MetaOclVision => 0x3E7A2,
            Purpose::MetaOclNumeric => 0x3E7B0,
            Purpose::DataSplit => 0xDA7B,
            Purpose::DataSubset | Purpose::DataClassSubset => 0xDA7A,
            Purpose::GpProbes | Purpose::GpSolverBatches | Purpose::GpSubsample => 0x69,
        }
    }

    /// Purposes whose streams predate [`stream`]: ChaCha8 seeded with the user seed directly and
    /// switched to a nonce stream (the data crate's subsets and every GP draw since their first
    /// stored results). `Some(nonce)` for those, given the index; `None` for the mixed streams.
    const fn nonce_stream(self, index: u64) -> Option<u64> {
        match self {
            Purpose::DataSubset | Purpose::GpProbes => Some(0),
            Purpose::GpSolverBatches => Some(1),
            Purpose::GpSubsample => Some(2),
            Purpose::DataClassSubset => Some(index),
            _ => None,
        }
    }
}

/// The stream for `purpose` and `index` under the user seed `seed`.
pub fn stream_for(seed: u64, purpose: Purpose, index: u64) -> ChaCha8Rng {
    match purpose.nonce_stream(index) {
        Some(nonce) => {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(nonce);
            rng
        }
        None => stream(seed, purpose.label(), index),
    }
}
