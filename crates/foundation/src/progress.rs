//! Progress reporting without a terminal library: long library calls take a `&dyn Progress`,
//! binaries adapt it to a progress bar, tests and library users pass [`NoProgress`] or their own.

/// Receives progress of a long computation. Implementations must be cheap: they are called from
/// inner loops (once per step or batch, not per element).
pub trait Progress: Sync {
    /// A stage named `label` with `total` units of work starts (a stage replaces the previous one).
    fn start(&self, label: &str, total: u64);
    /// `units` more units of the current stage are done.
    fn advance(&self, units: u64);
    /// A short status message for the current stage (e.g. the latest loss).
    fn message(&self, _text: &str) {}
    /// The current stage is over.
    fn finish(&self) {}
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _label: &str, _total: u64) {}
    fn advance(&self, _units: u64) {}
}
