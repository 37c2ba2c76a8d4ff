//! `--shard i/n`: which part of an embarrassingly parallel job (ensemble members, seeds, rows to
//! score) this process runs, so that a Slurm array or an indexed Job can split it.

/// Shard `index` of `count` (`index < count`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This shard, `0..count`.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

/// A `--shard` value that is not `i/n` with `0 <= i < n`.
#[derive(Debug, thiserror::Error)]
#[error("--shard '{0}': expected i/n with 0 <= i < n, e.g. 0/4")]
pub struct ShardError(pub String);

impl Shard {
    /// The whole job in one process.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parses `i/n`.
    pub fn parse(s: &str) -> Result<Shard, ShardError> {
        let bad = || ShardError(s.to_string());
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// Whether item `i` of a job split round-robin (`i % count == index`) is this shard's.
    pub fn owns(&self, i: usize) -> bool {
        i % self.count == self.index
    }
}
