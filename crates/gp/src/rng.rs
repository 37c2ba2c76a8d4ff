//! gp's seeded random streams, named in the workspace's one registry
//! ([`foundation::rng::Purpose`]): every draw of a run comes from `ChaCha8Rng::seed_from_u64(seed)`
//! switched to the ChaCha stream of its purpose, so that the probes do not depend on the solver,
//! nor the subsample centre on either. The stream numbers are those gp has used since its first
//! stored results (probes on the default stream 0), so stored runs reproduce bit for bit.

use foundation::rng::{stream_for, Purpose};
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
    /// The registry's purpose of this stream.
    pub const fn purpose(self) -> Purpose {
        match self {
            GpStream::Probes => Purpose::GpProbes,
            GpStream::SolverBatches => Purpose::GpSolverBatches,
            GpStream::Subsample => Purpose::GpSubsample,
        }
    }
}

/// The random stream for `purpose` of a run seeded with `seed`.
pub fn stream(seed: u64, purpose: GpStream) -> ChaCha8Rng {
    stream_for(seed, purpose.purpose(), 0)
}
