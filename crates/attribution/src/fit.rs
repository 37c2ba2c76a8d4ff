//! Fitting (EK-)FAC curvature of a trained diffusion model on its training set (spec p1 §1.4-1.6).

use burn::module::{Module, ParamId};
use burn::prelude::*;
use curvature::diffusion_batch::DiffusionBatch;
use curvature::fit::{fit_correction, fit_factors, GgnKind};
use curvature::{EigenCurvature, KfacApprox};
use diffusion::{AnyDenoiser, Diffusion, TrainData};
use foundation::rng::{stream_for, Purpose};
use foundation::tap::layer_names;

/// How the curvature is estimated.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CurvatureSettings {
    /// (t, noise) draws per training example in each pass (M = draws x N data per pass).
    pub factor_draws: u64,
    /// K-FAC variant for shared positions.
    pub approx: KfacApprox,
    /// Which Gauss-Newton matrix.
    pub ggn: GgnKind,
    /// Run the EK-FAC eigenvalue-correction pass.
    pub ekfac: bool,
    /// Data per forward/backward pass.
    pub batch: usize,
    /// Seed of the draws and pseudo-gradients.
    pub seed: u64,
}

impl Default for CurvatureSettings {
    fn default() -> Self {
        Self {
            factor_draws: 4,
            approx: KfacApprox::Expand,
            ggn: GgnKind::Model,
            ekfac: true,
            batch: 128,
            seed: 0,
        }
    }
}

/// The fitted curvature: plain K-FAC (eigenbasis of the factors) and, when asked, EK-FAC (the
/// same basis with corrected eigenvalues).
pub struct FittedCurvature {
    /// K-FAC.
    pub kfac: EigenCurvature,
    /// EK-FAC (`None` unless `settings.ekfac`).
    pub ekfac: Option<EigenCurvature>,
}

impl FittedCurvature {
    /// EK-FAC when fitted, else K-FAC.
    pub fn best(self) -> EigenCurvature {
        self.ekfac.unwrap_or(self.kfac)
    }
}

/// Fit the curvature of `model` on all of `data`; `progress` sees the number of data done.
pub fn fit_curvature(
    model: &AnyDenoiser,
    diffusion: &Diffusion,
    data: &TrainData,
    settings: &CurvatureSettings,
    device: &Device,
    mut progress: impl FnMut(usize),
) -> FittedCurvature {
    let ad = device.clone().autodiff();
    let model = model.clone().fork(&ad);
    let names = layer_names(&model);
    let name = |id: u64| names.get(&ParamId::from(id)).cloned().unwrap_or_default();
    let examples: Vec<usize> = (0..data.n).collect();
    let mut rng = stream_for(settings.seed, Purpose::CurvatureTargets, 0);
    let batches = |pass| {
        DiffusionBatch::batches(
            &model,
            diffusion,
            data,
            &examples,
            settings.factor_draws,
            settings.seed,
            pass,
            settings.batch,
            &ad,
        )
    };
    let factors = fit_factors(batches(0), settings.approx, settings.ggn, &mut rng, &name, &mut progress);
    let kfac = factors.eigendecompose();
    let ekfac =
        settings.ekfac.then(|| fit_correction(&kfac, batches(1), settings.ggn, &mut rng, &mut progress));
    FittedCurvature { kfac, ekfac }
}
