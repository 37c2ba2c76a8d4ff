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

/// The plain-backprop gradient (`grads`) of the covered layers of `model` in the layer-space
/// layout of [`per_datum_gradients`]: for each `(weight, bias)` id pair of `order` (tap-record
/// order), the weight as `[d_out, d_in]` (burn stores Linear weights `[d_in, d_out]`, so 2-D
/// weights are transposed; conv weights `[c_out, c_in, kh, kw]` are flattened as they are), then
/// the bias. An oracle for per-datum gradients rebuilt from tap records.
pub fn layer_space_gradient(
    model: &impl burn::module::Module,
    grads: &burn::tensor::Gradients,
    order: &[(u64, Option<u64>)],
) -> Vec<f64> {
    use burn::module::{ModuleVisitor, Param};
    use burn::prelude::Tensor;
    struct Collect<'g>(&'g burn::tensor::Gradients, std::collections::HashMap<u64, Vec<f64>>);
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = param.val().grad(self.0) {
                let g = match D {
                    2 => {
                        let [a, b] = [g.dims()[0], g.dims()[1]];
                        g.reshape([a, b]).transpose().reshape([a * b])
                    }
                    _ => {
                        let n = g.shape().num_elements();
                        g.reshape([n])
                    }
                };
                self.1.insert(param.id.val(), g.into_data().try_into_vec_as::<f64>().expect("float data"));
            }
        }
    }
    let mut c = Collect(grads, Default::default());
    model.visit(&mut c);
    let mut out = Vec::new();
    for (w, b) in order {
        out.extend(&c.1[w]);
        if let Some(b) = b {
            out.extend(&c.1[b]);
        }
    }
    out
}
