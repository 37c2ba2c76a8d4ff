//! gp's seeded random streams: every draw of a run comes from `ChaCha8Rng::seed_from_u64(seed)`
//! switched to the ChaCha stream of its [`GpStream`], so that the probes do not depend on the
//! solver, nor the subsample centre on either. The stream numbers are those gp has used since its
//! first stored results (probes on the default stream 0), so stored runs reproduce bit for bit.
//!
//! gp keeps this derivation rather than `foundation::rng::stream_for`, which mixes the seed
//! differently: switching would change every stored result.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What a gp random stream is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GpStream {
    /// Probe vectors and random Fourier features of the gradient estimators.
    Probes,
    /// SGD mini-batches of the solver.
    SolverBatches,
    /// The centre of the centred nearest-neighbour subsample.
    Subsample,
}

impl GpStream {
    /// The ChaCha stream (nonce) of this purpose.
    pub const fn stream_id(self) -> u64 {
        match self {
            GpStream::Probes => 0,
            GpStream::SolverBatches => 1,
            GpStream::Subsample => 2,
        }
    }
}

/// The random stream for `purpose` of a run seeded with `seed`.
pub fn stream(seed: u64, purpose: GpStream) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(purpose.stream_id());
    rng
}
