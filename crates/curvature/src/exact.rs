//! The exact (dense) Gauss-Newton matrix of a small model over the covered layers, built from
//! per-datum gradients; and damped solves with it. Oracles for tests of K-FAC / EK-FAC.

use faer::linalg::solvers::Solve;
use faer::{Mat, Side};
use rand::Rng;

use crate::fit::{backward_passes, CurvatureBatch, GgnKind};
use crate::layer::to_f64;
use crate::precondition::per_datum_gradients;

/// The dense `[P, P]` GGN `(1/M) sum_i sum_passes g_i g_i^T` in layer-space layout, where the
/// passes are those of `ggn` (exact GGN^model for [`GgnKind::ModelExact`], GGN^loss for
/// [`GgnKind::Loss`], a Monte-Carlo estimate for [`GgnKind::Model`]).
pub fn dense_ggn<B: CurvatureBatch>(
    batches: impl IntoIterator<Item = B>,
    ggn: GgnKind,
    rng: &mut impl Rng,
) -> Mat<f64> {
    let mut sum: Option<Mat<f64>> = None;
    let mut m = 0usize;
    for batch in batches {
        m += backward_passes(&batch, ggn, rng, |records, grads, _| {
            let g = per_datum_gradients(records, grads);
            let [n, p] = g.dims();
            let v = to_f64(g);
            let gm = Mat::<f64>::from_fn(n, p, |i, j| v[i * p + j]);
            let gg = gm.transpose() * &gm;
            match &mut sum {
                Some(s) => *s += &gg,
                None => sum = Some(gg),
            }
        });
    }
    let mut s = sum.expect("at least one batch");
    s *= faer::Scale(1.0 / m as f64);
    s
}

/// Solve `(G + lambda I) X = R` for the columns of `R` (`[P, K]`) by Cholesky.
pub fn damped_solve(g: &Mat<f64>, lambda: f64, rhs: &Mat<f64>) -> Mat<f64> {
    let p = g.nrows();
    let damped = Mat::<f64>::from_fn(p, p, |i, j| g[(i, j)] + if i == j { lambda } else { 0.0 });
    let llt = damped.llt(Side::Lower).expect("G + lambda I is positive definite");
    llt.solve(rhs)
}
