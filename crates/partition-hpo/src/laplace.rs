//! The differentiable Laplace marginal likelihood of Immer et al. 2022 ("Invariance learning in
//! deep neural networks with differentiable Laplace approximations"): the baseline that learns
//! `psi` from the training data alone, through the curvature of the MAP network.
//!
//! The network is the full MLP (C = 1), trained on all rows to the MAP under the Gaussian prior
//! `N(0, delta^-1 I)` on every weight and bias (the `1/2 (delta / N) ||w||^2` term of
//! [`crate::hpo::WeightObjective`]). Every `n` parameter steps, one Adam step on `psi` takes the
//! gradient of the negative log marginal likelihood estimate
//!
//! `-log p(D | psi) ~ N * NLL + delta/2 ||w||^2 + 1/2 sum_l logdet(N (A_l (x) G_l) + delta I)`
//!
//! (constants dropped) on a batch of training rows with `S` augmentation draws each: `NLL` is the
//! mean negative log-likelihood of the augmentation-averaged predictive (as in the other `psi`
//! signals), and `A_l (x) G_l` is the K-FAC approximation of layer l's block of the GGN per datum.
//!
//! K-FAC of the averaged model. The prediction of the invariant model averages over the `S`
//! draws, so its Jacobian for layer l is `(1/S) sum_s a_s (x) g_s` (input `a_s` with a 1 for the
//! bias, back-propagated output column `g_s` of draw s). It is approximated by `abar (x) gbar`,
//! with `abar` and `gbar` the means over the draws (K-FAC "reduce" over augmentations; exact for
//! S = 1 and for the last layer). The output columns are the exact square root of the
//! cross-entropy Hessian at the averaged predictive `pbar`: column j is
//! `sqrt(pbar_j) (e_j - pbar)` (as `curvature::SoftmaxCrossEntropy`'s exact passes), so no labels
//! are sampled. `A_l = mean_i abar_i abar_i^T`, `G_l = mean_i sum_j gbar_ij gbar_ij^T`.
//!
//! Burn cannot take second derivatives, so the per-example back-propagation is built explicitly
//! in the forward graph: `g_L` = the columns, `g_l = (g_{l+1} W_{l+1}^T) * relu'(z_l)` with the
//! ReLU gate detached (a 0/1 mask, times the dropout noise when dropout is on) and the weights
//! detached. `A_l` and `G_l` are then ordinary tensors that depend on `psi` through the augmented
//! inputs and the predictive.
//!
//! The log-determinant enters through the exact identity `d logdet(H) = tr(H^-1 dH)`: with the
//! eigendecompositions `A = Qa diag(a) Qa^T`, `G = Qg diag(g) Qg^T` (f64, outside the graph),
//! `logdet(N (A (x) G) + delta I) = sum_ij ln(N a_i g_j + delta)`, and the surrogate
//! `tr(sg(Ma) A) + tr(sg(Mg) G)` with `Ma = Qa diag(sum_j N g_j / (N a_i g_j + delta)) Qa^T` and
//! `Mg = Qg diag(sum_i N a_i / (N a_i g_j + delta)) Qg^T` has exactly its gradient
//! ([`kron_logdet`]).

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, relu};
use curvature::factors::eigh;
use curvature::layer::{from_f64, to_f64};
use faer::Mat;

use crate::hpo::{averaged_nll, Group, RunConfig};
use crate::model::{PartitionedNet, PsiUse};
use crate::HpoError;

/// The checks of a Laplace run: a positive finite prior precision, one partition, an MLP.
pub fn check(config: &RunConfig, prior_precision: f64) -> Result<(), HpoError> {
    if !(prior_precision.is_finite() && prior_precision > 0.0) {
        return Err(HpoError::InvalidArgument(format!(
            "the Laplace prior precision must be positive and finite, not {prior_precision}"
        )));
    }
    if !config.conv_channels.is_empty() {
        return Err(HpoError::InvalidArgument("laplace supports the MLP only".into()));
    }
    if config.partitions != 1 {
        return Err(HpoError::InvalidArgument(format!(
            "the Laplace marginal likelihood trains one network (C = 1), not C = {}",
            config.partitions
        )));
    }
    Ok(())
}

/// `sum ||w||^2` over every trained weight and bias of `model` (`[1]`; live in the weights).
pub fn squared_norm(model: &PartitionedNet) -> Tensor<1> {
    let mut terms = Vec::new();
    for l in &model.layers {
        terms.push(l.weight.val().square().sum());
        terms.push(l.bias.val().square().sum());
    }
    for c in &model.convs {
        terms.push(c.weight.val().square().sum());
        terms.push(c.bias.val().square().sum());
    }
    Tensor::cat(terms, 0).sum()
}

/// The K-FAC factors of one linear layer.
#[derive(Clone, Debug)]
pub struct LayerFactors {
    /// `A = mean_i abar_i abar_i^T`, `[d_in + 1, d_in + 1]` (the bias last).
    pub a: Tensor<2>,
    /// A square root `R` of `A = R^T R`: the rows `abar_i / sqrt(n)`, `[n, d_in + 1]` (when
    /// `n < d_in + 1`, the eigendecomposition of `A` comes from the smaller `R R^T`).
    pub a_root: Tensor<2>,
    /// `G = mean_i sum_j gbar_ij gbar_ij^T`, `[d_out, d_out]`.
    pub g: Tensor<2>,
}

/// The logits `[rows, classes]` of `group` under the full network (weights detached, `psi` live)
/// and the K-FAC factors of every linear layer in forward order, built in the graph (see the
/// module documentation). `group` holds `samples` augmentation copies of each of its
/// `group.n / samples` rows (copy `s` of row `i` at `s * n + i`).
pub fn kfac_factors(
    model: &PartitionedNet,
    group: &Group,
    image: (usize, usize),
    use_: PsiUse,
    samples: usize,
) -> (Tensor<2>, Vec<LayerFactors>) {
    let rows = group.n;
    let n = rows / samples;
    let device = model.layers[0].weight.val().device();
    let mut h = model.transform_inputs(&group.x, rows, image, &group.draws, use_, true);
    let last = model.layers.len() - 1;
    let mut inputs = Vec::with_capacity(last + 1);
    let mut gates = Vec::with_capacity(last);
    for (l, layer) in model.layers.iter().enumerate() {
        inputs.push(h.clone());
        let z = h.matmul(layer.weight.val().detach()) + layer.bias.val().detach().unsqueeze::<2>();
        if l == last {
            h = z;
        } else {
            let mut gate = z.clone().detach().greater_elem(0.0).float();
            h = relu(z);
            if use_.dropout && !group.draws.eps.is_empty() {
                let width = h.dims()[1];
                let eps = Tensor::<2>::from_data(
                    TensorData::new(group.draws.eps[l].clone(), [rows, width]),
                    &device,
                );
                let noise = (eps * model.psi.sigma().unsqueeze::<2>()).add_scalar(1.0);
                h = h * noise.clone();
                gate = gate * noise;
            }
            gates.push(gate);
        }
    }
    let logits = h;
    let k = logits.dims()[1];
    // log pbar, the log of the averaged predictive (stable log-mean-exp over the draws).
    let lp = log_softmax(logits.clone(), 1).reshape([samples, n, k]);
    let m = lp.clone().detach().max_dim(0);
    let log_p = ((lp - m.clone()).exp().mean_dim(0).log() + m).reshape([n, k]);
    let p = log_p.clone().exp();
    let sq = log_p.mul_scalar(0.5).exp();
    // Column j of row i: sqrt(p_j) (e_j - p), at row i * k + j.
    let eye = Tensor::<2>::eye(k, &device).unsqueeze::<3>();
    let cols = eye * sq.clone().unsqueeze_dim::<3>(2) - sq.unsqueeze_dim::<3>(2) * p.unsqueeze_dim::<3>(1);
    let mut g: Tensor<4> = cols.reshape([1, n, k, k]).repeat_dim(0, samples);
    let mut factors = Vec::with_capacity(last + 1);
    for l in (0..=last).rev() {
        let d_out = g.dims()[3];
        let gbar = g.clone().mean_dim(0).reshape([n * k, d_out]);
        let gm = gbar.clone().transpose().matmul(gbar).div_scalar(n as f64);
        let input = inputs[l].clone();
        let d_in = input.dims()[1];
        let ones = Tensor::<2>::ones([rows, 1], &device);
        let abar = Tensor::cat(vec![input, ones], 1)
            .reshape([samples, n, d_in + 1])
            .mean_dim(0)
            .reshape([n, d_in + 1]);
        let a_root = abar.div_scalar((n as f64).sqrt());
        let am = a_root.clone().transpose().matmul(a_root.clone());
        factors.push(LayerFactors { a: am, g: gm, a_root });
        if l > 0 {
            let w = model.layers[l].weight.val().detach();
            let back =
                g.reshape([samples * n * k, d_out]).matmul(w.transpose()).reshape([samples, n, k, d_in]);
            g = back * gates[l - 1].clone().reshape([samples, n, 1, d_in]);
        }
    }
    factors.reverse();
    (logits, factors)
}

/// `logdet(N (A (x) G) + delta I)` and its gradients with respect to the (symmetric) factors.
#[derive(Clone, Debug)]
pub struct KronLogdet {
    /// `sum_ij ln(N a_i g_j + delta)`.
    pub value: f64,
    /// `Ma`, the gradient with respect to `A` (row-major `[d_a, d_a]`).
    pub grad_a: Vec<f64>,
    /// `Mg`, the gradient with respect to `G` (row-major `[d_g, d_g]`).
    pub grad_g: Vec<f64>,
}

/// The eigendecomposition of a symmetric positive semi-definite `[d, d]` matrix: the eigenvalues
/// `vals` with their eigenvectors (the columns of `q`, row-major `[d, vals.len()]`); the other
/// `d - vals.len()` eigenvalues are 0.
#[derive(Clone, Debug)]
pub struct Spectrum {
    /// Size of the matrix.
    pub d: usize,
    /// Eigenvectors of `vals` as columns, row-major `[d, r]`.
    pub q: Vec<f64>,
    /// The eigenvalues that are not taken as 0.
    pub vals: Vec<f64>,
}

impl Spectrum {
    /// The full eigendecomposition of `m` (`[d, d]`, row-major; negative rounding clamped to 0).
    pub fn dense(m: &[f64], d: usize) -> Self {
        let (q, vals) = eigh(m, d);
        Self { d, q, vals }
    }

    /// The eigendecomposition of `X^T X` for `x` (`[rows, d]`, row-major) from the `[rows, rows]`
    /// matrix `X X^T = V diag(l) V^T`: eigenvectors `X^T v / sqrt(l)` for the eigenvalues above
    /// `1e-10` of the largest, all others 0.
    pub fn gram(x: &[f64], rows: usize, d: usize) -> Self {
        let xm = Mat::<f64>::from_fn(rows, d, |i, j| x[i * d + j]);
        let k = &xm * xm.transpose();
        let (v, l) = eigh(&(0..rows * rows).map(|t| k[(t / rows, t % rows)]).collect::<Vec<_>>(), rows);
        let top = l.iter().cloned().fold(0.0, f64::max);
        let keep: Vec<usize> = (0..rows).filter(|&r| l[r] > 1e-10 * top && l[r] > 0.0).collect();
        let vk = Mat::<f64>::from_fn(rows, keep.len(), |i, c| v[i * rows + keep[c]] / l[keep[c]].sqrt());
        let qm = xm.transpose() * &vk;
        let r = keep.len();
        Self {
            d,
            q: (0..d * r).map(|t| qm[(t / r, t % r)]).collect(),
            vals: keep.iter().map(|&c| l[c]).collect(),
        }
    }

    /// `c0 I + Q diag(c - c0) Q^T`: the symmetric matrix with eigenvalue `c[i]` on the kept
    /// eigenvectors and `c0` on the rest (row-major `[d, d]`).
    fn function(&self, c: &[f64], c0: f64) -> Vec<f64> {
        let (d, r) = (self.d, self.vals.len());
        let qm = Mat::<f64>::from_fn(d, r, |i, j| self.q[i * r + j]);
        let qc = Mat::<f64>::from_fn(d, r, |i, j| self.q[i * r + j] * (c[j] - c0));
        let m = &qc * qm.transpose();
        (0..d * d).map(|t| m[(t / d, t % d)] + if t / d == t % d { c0 } else { 0.0 }).collect()
    }
}

/// `logdet(n (A (x) G) + delta I)` and its gradients `Ma`, `Mg` from the spectra of `A` and `G`
/// (see the module documentation; zero eigenvalues contribute `ln(delta)`).
pub fn kron_logdet_spectra(a: &Spectrum, g: &Spectrum, n: f64, delta: f64) -> KronLogdet {
    let (za, zg) = ((a.d - a.vals.len()) as f64, (g.d - g.vals.len()) as f64);
    let mut value = (za * g.d as f64 + zg * a.vals.len() as f64) * delta.ln();
    let mut ca = vec![0.0; a.vals.len()];
    let mut cg = vec![0.0; g.vals.len()];
    for (i, &ai) in a.vals.iter().enumerate() {
        for (j, &gj) in g.vals.iter().enumerate() {
            let den = n * ai * gj + delta;
            value += den.ln();
            ca[i] += n * gj / den;
            cg[j] += n * ai / den;
        }
    }
    // Against a zero eigenvalue of the other factor, the coefficient is n g_j / delta.
    let ca0 = g.vals.iter().map(|gj| n * gj / delta).sum::<f64>();
    let cg0 = a.vals.iter().map(|ai| n * ai / delta).sum::<f64>();
    KronLogdet { value, grad_a: a.function(&ca, ca0), grad_g: g.function(&cg, cg0) }
}

/// The log-determinant of `n (A (x) G) + delta I` for symmetric positive semi-definite factors `a`
/// (`[d_a, d_a]`) and `g` (`[d_g, d_g]`), from their eigenvalues, with its exact gradients
/// `Ma`, `Mg` (see the module documentation).
pub fn kron_logdet(a: &[f64], d_a: usize, g: &[f64], d_g: usize, n: f64, delta: f64) -> KronLogdet {
    kron_logdet_spectra(&Spectrum::dense(a, d_a), &Spectrum::dense(g, d_g), n, delta)
}

/// The surrogate `tr(sg(Ma) A) + tr(sg(Mg) G)` of one layer's `logdet(n (A (x) G) + delta I)`:
/// its gradient with respect to `A` and `G` is that of the log-determinant. Returns the
/// surrogate and the log-determinant's value.
pub fn logdet_surrogate(factors: &LayerFactors, n: f64, delta: f64) -> (Tensor<1>, f64) {
    let device = factors.a.device();
    let (d_a, d_g) = (factors.a.dims()[0], factors.g.dims()[0]);
    let rows = factors.a_root.dims()[0];
    let a = if rows < d_a {
        Spectrum::gram(&to_f64(factors.a_root.clone().detach()), rows, d_a)
    } else {
        Spectrum::dense(&to_f64(factors.a.clone().detach()), d_a)
    };
    let kl = kron_logdet_spectra(&a, &Spectrum::dense(&to_f64(factors.g.clone().detach()), d_g), n, delta);
    let ma = from_f64(&kl.grad_a, d_a, d_a, &device);
    let mg = from_f64(&kl.grad_g, d_g, d_g, &device);
    ((factors.a.clone() * ma).sum() + (factors.g.clone() * mg).sum(), kl.value)
}

/// The Laplace objective of one hyperparameter step.
pub struct LaplaceObjective {
    /// A scalar whose gradient with respect to `psi` is that of the negative log marginal
    /// likelihood estimate (its value is not the estimate).
    pub surrogate: Tensor<1>,
    /// The estimate `N NLL + delta/2 ||w||^2 + 1/2 sum_l logdet` (constants dropped).
    pub value: f64,
    /// The mean NLL of the averaged predictive on the batch.
    pub nll: f64,
    /// `sum_l logdet(N (A_l (x) G_l) + delta I)`.
    pub logdet: f64,
}

impl LaplaceObjective {
    /// The surrogate to differentiate and the value to report.
    pub fn into_surrogate(self) -> (Tensor<1>, f64) {
        (self.surrogate, self.value)
    }
}

/// The negative Laplace log marginal likelihood estimate of `group` (training rows with
/// `samples` augmentation copies each) for a data set of `n_data` rows and prior precision
/// `delta`, with a surrogate for its `psi` gradient (weights detached).
pub fn objective(
    model: &PartitionedNet,
    group: &Group,
    image: (usize, usize),
    use_: PsiUse,
    samples: usize,
    n_data: usize,
    delta: f64,
) -> LaplaceObjective {
    let nd = n_data as f64;
    let (logits, factors) = kfac_factors(model, group, image, use_, samples);
    let nll = averaged_nll(logits, &group.y, samples);
    let nll_value: f32 = nll.clone().detach().into_scalar();
    let mut surrogate = nll.mul_scalar(nd);
    let mut logdet = 0.0;
    for f in &factors {
        let (s, v) = logdet_surrogate(f, nd, delta);
        surrogate = surrogate + s.mul_scalar(0.5);
        logdet += v;
    }
    let norm: f32 = squared_norm(model).detach().into_scalar();
    let value = nd * nll_value as f64 + 0.5 * delta * norm as f64 + 0.5 * logdet;
    LaplaceObjective { surrogate, value, nll: nll_value as f64, logdet }
}
