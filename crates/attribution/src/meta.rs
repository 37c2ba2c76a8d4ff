//! Settings recorded with factor and score files, and the checks that refuse mixing files made
//! with different settings.
//!
//! Factor files carry a [`CurvatureMeta`] in their safetensors header (output loss, GGN kind,
//! draws, seed; the approximation and EK-FAC flag were there already). A score matrix `S.npy`
//! gets a side-car `S.npy.json` ([`ScoreMeta`]: the factors' settings, the measurement, the
//! damping and the shard), because `.npy` headers admit no extra keys; `attribute merge` refuses
//! shards whose side-cars disagree or do not tile the training set in order.

use std::path::{Path, PathBuf};

use curvature::{CurvatureMeta, LossKind};
use foundation::atomic::write_bytes;
use serde::{Deserialize, Serialize};

use crate::error::{bail, Context, Result};
use crate::fit::CurvatureSettings;
use crate::scoring::lambda_path;

/// The recorded settings of a curvature fitted with `settings` for `loss`.
pub fn fit_meta(settings: &CurvatureSettings, loss: LossKind) -> CurvatureMeta {
    CurvatureMeta {
        loss,
        ggn: Some(settings.ggn),
        draws: Some(settings.factor_draws),
        seed: Some(settings.seed),
    }
}

/// What a score matrix was computed with (the side-car `<file>.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreMeta {
    /// The factors' settings.
    pub curvature: CurvatureMeta,
    /// The measurement on the queries.
    pub measurement: String,
    /// Shard `(i, n)` of the training set.
    pub shard: (usize, usize),
}

#[derive(Serialize, Deserialize)]
struct SideCar {
    #[serde(flatten)]
    meta: ScoreMeta,
    damping: f64,
}

/// The side-car path of a score file: `<file>.json`.
pub fn side_car(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

impl ScoreMeta {
    /// Writes the side-cars of the score grid at `out` (first damping at `out`, the others at
    /// [`lambda_path`]).
    pub fn write_beside(&self, out: &Path, lambdas: &[f64]) -> Result<()> {
        for (k, &l) in lambdas.iter().enumerate() {
            let file = if k == 0 { out.to_path_buf() } else { lambda_path(out, l) };
            let json = serde_json::to_string_pretty(&SideCar { meta: self.clone(), damping: l })?;
            write_bytes(&side_car(&file), json.as_bytes())?;
        }
        Ok(())
    }
}

/// Checks the side-cars of shard files before a merge: all present or all absent (older files);
/// when present, the same settings and damping, and shards `0/n, 1/n, ..., n-1/n` in order.
pub fn check_shards(shards: &[PathBuf]) -> Result<()> {
    let mut cars = Vec::new();
    for p in shards {
        let car = side_car(p);
        if car.is_file() {
            let text = std::fs::read_to_string(&car).with_context(|| car.display().to_string())?;
            let c: SideCar = serde_json::from_str(&text).with_context(|| car.display().to_string())?;
            cars.push((p, c));
        }
    }
    if cars.is_empty() {
        return Ok(());
    }
    if cars.len() != shards.len() {
        bail!("some shard files have a settings file (<shard>.npy.json) and some do not: they come from different versions or runs");
    }
    let (p0, first) = &cars[0];
    let n = first.meta.shard.1;
    if shards.len() != n {
        bail!("{}: is one of {n} shards, but {} shard files were given", p0.display(), shards.len());
    }
    for (k, (p, c)) in cars.iter().enumerate() {
        if c.meta.curvature != first.meta.curvature || c.meta.measurement != first.meta.measurement {
            bail!(
                "{}: scored with other settings than {} ({:?}, {} vs {:?}, {})",
                p.display(),
                p0.display(),
                c.meta.curvature,
                c.meta.measurement,
                first.meta.curvature,
                first.meta.measurement
            );
        }
        if c.damping != first.damping {
            bail!("{}: damping {:e}, but {} has {:e}", p.display(), c.damping, p0.display(), first.damping);
        }
        if c.meta.shard != (k, n) {
            bail!(
                "{}: is shard {}/{}, expected {k}/{n} (give the shards in order)",
                p.display(),
                c.meta.shard.0,
                c.meta.shard.1
            );
        }
    }
    Ok(())
}

/// Writes the side-car of a merged matrix (shard `0/1`) from its shards' (if they have one).
pub fn write_merged(out: &Path, shards: &[PathBuf]) -> Result<()> {
    let car = side_car(&shards[0]);
    if !car.is_file() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&car).with_context(|| car.display().to_string())?;
    let mut c: SideCar = serde_json::from_str(&text).with_context(|| car.display().to_string())?;
    c.meta.shard = (0, 1);
    write_bytes(&side_car(out), serde_json::to_string_pretty(&c)?.as_bytes())?;
    Ok(())
}
