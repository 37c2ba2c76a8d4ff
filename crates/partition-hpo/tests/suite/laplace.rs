//! The Laplace marginal-likelihood baseline: the log-determinant surrogate's gradient against
//! finite differences of the exact log-determinant of the dense Kronecker matrix, and the K-FAC
//! factors built in the forward graph against the exact GGN of `curvature::exact` (for one datum,
//! each layer's block of the GGN is exactly `A (x) G`).

use burn::module::Param;
use burn::prelude::*;
use curvature::exact::dense_ggn;
use curvature::factors::eigh;
use curvature::fit::{CurvatureBatch, CurvatureOutput, GgnKind};
use curvature::layer::to_f64;
use curvature::loss::{OutputLoss, SoftmaxCrossEntropy};
use foundation::layers::TapLinear;
use foundation::tap::Tap;
use partition_hpo::hpo::{Group, RunConfig};
use partition_hpo::laplace::{
    kfac_factors, kron_logdet, kron_logdet_spectra, logdet_surrogate, LayerFactors, Spectrum,
};
use partition_hpo::model::{Draws, Mode, PartitionedNet, Psi, PsiUse};
use rand::{Rng, SeedableRng};

/// A random symmetric positive semi-definite `[d, d]` matrix `B B^T / d` (row-major).
fn psd(d: usize, rank: usize, rng: &mut impl Rng) -> Vec<f64> {
    let b: Vec<f64> = (0..d * rank).map(|_| rng.gen_range(-1.0..1.0)).collect();
    (0..d * d)
        .map(|t| {
            let (i, j) = (t / d, t % d);
            (0..rank).map(|r| b[i * rank + r] * b[j * rank + r]).sum::<f64>() / d as f64
        })
        .collect()
}

/// A random symmetric `[d, d]` direction.
fn sym(d: usize, rng: &mut impl Rng) -> Vec<f64> {
    let m: Vec<f64> = (0..d * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
    (0..d * d).map(|t| 0.5 * (m[t] + m[(t % d) * d + t / d])).collect()
}

/// `logdet(n (A (x) G) + delta I)` of the dense Kronecker matrix, from its eigenvalues.
fn dense_logdet(a: &[f64], da: usize, g: &[f64], dg: usize, n: f64, delta: f64) -> f64 {
    let d = da * dg;
    let h: Vec<f64> = (0..d * d)
        .map(|t| {
            let (r, c) = (t / d, t % d);
            let v = n * a[(r / dg) * da + c / dg] * g[(r % dg) * dg + c % dg];
            v + if r == c { delta } else { 0.0 }
        })
        .collect();
    eigh(&h, d).1.iter().map(|l| l.ln()).sum()
}

fn axpy(x: &[f64], t: f64, e: &[f64]) -> Vec<f64> {
    x.iter().zip(e).map(|(a, b)| a + t * b).collect()
}

/// A 3x3 and a 2x2 factor (A of rank 2, so one eigenvalue is 0): the value equals the dense
/// log-determinant, `Ma` and `Mg` match central finite differences along random symmetric
/// directions, and the surrogate's autodiff gradient along a path `(A0 + t E, G0 + t F)` matches
/// the finite difference of the dense log-determinant.
#[test]
fn logdet_surrogate_has_the_gradient_of_the_exact_logdet() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let (da, dg, n, delta) = (3, 2, 7.0, 0.3);
    let a = psd(da, 2, &mut rng);
    let g = psd(dg, 2, &mut rng);
    let (e, f) = (sym(da, &mut rng), sym(dg, &mut rng));
    let kl = kron_logdet(&a, da, &g, dg, n, delta);
    let exact = dense_logdet(&a, da, &g, dg, n, delta);
    assert!((kl.value - exact).abs() < 1e-9, "value {} vs dense {exact}", kl.value);
    let h = 1e-5;
    let fd_a = (dense_logdet(&axpy(&a, h, &e), da, &g, dg, n, delta)
        - dense_logdet(&axpy(&a, -h, &e), da, &g, dg, n, delta))
        / (2.0 * h);
    let fd_g = (dense_logdet(&a, da, &axpy(&g, h, &f), dg, n, delta)
        - dense_logdet(&a, da, &axpy(&g, -h, &f), dg, n, delta))
        / (2.0 * h);
    let dot = |m: &[f64], d: &[f64]| m.iter().zip(d).map(|(x, y)| x * y).sum::<f64>();
    let (an_a, an_g) = (dot(&kl.grad_a, &e), dot(&kl.grad_g, &f));
    assert!((an_a - fd_a).abs() < 1e-6 * (1.0 + fd_a.abs()), "A: {an_a} vs fd {fd_a}");
    assert!((an_g - fd_g).abs() < 1e-6 * (1.0 + fd_g.abs()), "G: {an_g} vs fd {fd_g}");

    // Through the tensor surrogate, on the autodiff device (f32).
    let dev = Device::flex().autodiff();
    let t = Tensor::<1>::from_data(TensorData::new(vec![0.0f32], [1]), &dev).require_grad();
    let mat = |v: &[f64], d: usize| {
        Tensor::<2>::from_data(TensorData::new(v.iter().map(|&x| x as f32).collect::<Vec<_>>(), [d, d]), &dev)
    };
    let tt = t.clone().unsqueeze::<2>();
    let a_t = mat(&a, da) + mat(&e, da) * tt.clone();
    let factors = LayerFactors { a: a_t.clone(), a_root: a_t, g: mat(&g, dg) + mat(&f, dg) * tt };
    let (s, value) = logdet_surrogate(&factors, n, delta);
    assert!((value - exact).abs() < 1e-4, "surrogate's value {value} vs {exact}");
    let grad: f32 = t.grad(&s.backward()).expect("t reaches the surrogate").into_scalar();
    let fd = (dense_logdet(&axpy(&a, h, &e), da, &axpy(&g, h, &f), dg, n, delta)
        - dense_logdet(&axpy(&a, -h, &e), da, &axpy(&g, -h, &f), dg, n, delta))
        / (2.0 * h);
    assert!((grad as f64 - fd).abs() < 1e-4 * (1.0 + fd.abs()), "path derivative {grad} vs fd {fd}");
    assert!(fd.abs() > 0.1, "the direction must move the log-determinant ({fd})");
}

/// The log-determinant from the small Gram matrix `X X^T` of a low-rank `A = X^T X` equals the
/// one from the full eigendecomposition of `A`, value and gradients.
#[test]
fn low_rank_spectrum_gives_the_dense_logdet() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
    let (rows, da, dg, n, delta) = (2, 5, 3, 9.0, 0.7);
    let x: Vec<f64> = (0..rows * da).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let a: Vec<f64> =
        (0..da * da).map(|t| (0..rows).map(|r| x[r * da + t / da] * x[r * da + t % da]).sum()).collect();
    let g = psd(dg, 3, &mut rng);
    let dense = kron_logdet(&a, da, &g, dg, n, delta);
    let low = kron_logdet_spectra(&Spectrum::gram(&x, rows, da), &Spectrum::dense(&g, dg), n, delta);
    assert_eq!(Spectrum::gram(&x, rows, da).vals.len(), rows);
    assert!((dense.value - low.value).abs() < 1e-10, "{} vs {}", dense.value, low.value);
    for (u, v) in dense.grad_a.iter().zip(&low.grad_a).chain(dense.grad_g.iter().zip(&low.grad_g)) {
        assert!((u - v).abs() < 1e-9 * (1.0 + u.abs()), "gradient {u} vs {v}");
    }
}

/// The oracle network: the same weights as tapped layers with a ReLU between them.
#[derive(burn::module::Module, Debug)]
struct Oracle {
    l1: TapLinear,
    l2: TapLinear,
}

struct OneDatum<'a> {
    net: &'a Oracle,
    x: Tensor<2>,
}

impl CurvatureBatch for OneDatum<'_> {
    fn forward(&self, tap: &mut Tap) -> CurvatureOutput {
        let h = burn::tensor::activation::relu(self.net.l1.forward(self.x.clone(), tap));
        let y = self.net.l2.forward(h, tap);
        let target = y.clone().detach().zeros_like();
        CurvatureOutput::unweighted(y, target)
    }
    fn len(&self) -> usize {
        1
    }
    fn output_loss(&self) -> &dyn OutputLoss {
        &SoftmaxCrossEntropy
    }
}

/// One datum through a masked 6 -> 5 (ReLU) -> 10 MLP, given as two identical augmentation
/// copies (so the "reduce" averaging must be exact): every layer's `A (x) G` built in the graph
/// equals its block of the exact GGN of `curvature::exact::dense_ggn` with softmax
/// cross-entropy, entry by entry.
#[test]
fn kfac_factors_in_the_graph_equal_the_exact_ggn_of_one_datum() {
    let dev = Device::flex().autodiff();
    let (d, hidden, k) = (6, 5, 10);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let psi = Psi::new(d, 10.0, 0.7, 0.1, &dev);
    let net = PartitionedNet::new(d, (1, 1), &[], &[hidden], k, &[1.0], psi, 3, &mut rng, &dev);
    let x: Vec<f32> = (0..d).map(|_| rng.gen_range(0.0..1.0)).collect();
    let samples = 2;
    let mut xs = x.clone();
    xs.extend_from_slice(&x);
    let group = Group {
        x: xs,
        y: vec![3, 3],
        n: samples,
        draws: Draws { u: vec![0.0; samples], ..Draws::default() },
        mode: Mode::Eval(0),
    };
    let use_ = PsiUse { rotation: false, mask: true, dropout: false };
    let (_, factors) = kfac_factors(&net, &group, (1, 1), use_, samples);

    // The oracle on the masked input, with the same weights.
    let keep = net.psi.keep().detach();
    let xin = Tensor::<2>::from_data(TensorData::new(x, [1, d]), &dev) * keep.unsqueeze::<2>();
    let tap_layer = |l: usize| {
        let src = &net.layers[l];
        let [di, dout] = src.weight.dims();
        let mut t = TapLinear::new(di, dout, &mut rng_for(l), &dev);
        t.inner.weight = Param::from_tensor(src.weight.val().detach()).set_require_grad(true);
        t.inner.bias = Some(Param::from_tensor(src.bias.val().detach()).set_require_grad(true));
        t
    };
    let oracle = Oracle { l1: tap_layer(0), l2: tap_layer(1) };
    let ggn = dense_ggn([OneDatum { net: &oracle, x: xin }], GgnKind::ModelExact, &mut rng_for(9));
    let mut offset = 0;
    let mut worst = 0.0f64;
    let mut scale = 0.0f64;
    for (l, f) in factors.iter().enumerate() {
        let a = to_f64(f.a.clone());
        let g = to_f64(f.g.clone());
        let (da, dout) = (f.a.dims()[0], f.g.dims()[0]);
        let din = da - 1;
        let p = dout * da;
        // Layer-space layout: weight [d_out, d_in] row-major, then the bias.
        let pos = |o: usize, i: usize| if i < din { o * din + i } else { dout * din + o };
        for o in 0..dout {
            for i in 0..da {
                for o2 in 0..dout {
                    for i2 in 0..da {
                        let kfac = a[i * da + i2] * g[o * dout + o2];
                        let exact = ggn[(offset + pos(o, i), offset + pos(o2, i2))];
                        worst = worst.max((kfac - exact).abs());
                        scale = scale.max(exact.abs());
                    }
                }
            }
        }
        assert!(l < 2);
        offset += p;
    }
    assert_eq!(offset, ggn.nrows(), "the blocks cover the GGN");
    assert!(scale > 1e-3, "a non-trivial GGN ({scale})");
    assert!(worst < 1e-5 * scale.max(1.0), "K-FAC vs exact GGN: worst difference {worst} (scale {scale})");
}

fn rng_for(i: usize) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(100 + i as u64)
}

/// Bad settings of the Laplace signal give one line each.
#[test]
fn laplace_rejects_the_cnn_partitions_and_a_bad_prior() {
    let base = RunConfig {
        partitions: 1,
        weight_proportions: vec![1.0],
        data_proportions: vec![1.0],
        signal: Some(partition_hpo::hpo::PsiSignal::Laplace { prior_precision: 1.0 }),
        ..crate::common::small_config()
    };
    assert!(base.validate().is_ok());
    let conv = RunConfig { conv_channels: vec![4], ..base.clone() };
    assert_eq!(conv.validate().unwrap_err().to_string(), "laplace supports the MLP only");
    let parts = RunConfig {
        partitions: 2,
        weight_proportions: vec![0.5, 0.5],
        data_proportions: vec![0.5, 0.5],
        ..base.clone()
    };
    assert!(parts.validate().unwrap_err().to_string().contains("C = 2"));
    let prior =
        RunConfig { signal: Some(partition_hpo::hpo::PsiSignal::Laplace { prior_precision: 0.0 }), ..base };
    assert!(prior.validate().unwrap_err().to_string().contains("prior precision"));
}

/// End to end: the surrogate's gradient with respect to the rotation logit and one mask logit
/// matches central finite differences of the reported negative log marginal likelihood estimate
/// (N NLL + delta/2 ||w||^2 + 1/2 sum logdet), on 4x4 images with two rotation draws each.
#[test]
fn laplace_objective_gradient_matches_finite_differences() {
    let dev = Device::flex().autodiff();
    let data = crate::common::toy_inputs(6, 2, 5);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
    let build = |r: f32, m0: f32| {
        let mut psi = Psi::new(data.d, 40.0, 0.8, 0.1, &dev);
        psi.rotation = Param::from_data(TensorData::new(vec![r], [1]), &dev);
        let mut m = vec![1.2f32; data.d];
        m[5] = m0;
        psi.mask = Param::from_data(TensorData::new(m, [data.d]), &dev);
        let mut init = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        PartitionedNet::new(data.d, data.image, &[], &[7], 10, &[1.0], psi, 4, &mut init, &dev)
    };
    let samples = 2;
    let mut x = Vec::new();
    let mut y = Vec::new();
    for _ in 0..samples {
        x.extend_from_slice(&data.x);
        y.extend_from_slice(&data.y);
    }
    let u: Vec<f32> = (0..data.n * samples).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let group =
        Group { x, y, n: data.n * samples, draws: Draws { u, ..Draws::default() }, mode: Mode::Eval(0) };
    let use_ = PsiUse { rotation: true, mask: true, dropout: false };
    let (n_data, delta) = (20, 0.5);
    let (r0, m0) = (-0.4f32, 0.3f32);
    let net = build(r0, m0);
    let obj = partition_hpo::laplace::objective(&net, &group, data.image, use_, samples, n_data, delta);
    let grads = obj.surrogate.backward();
    let g_r: f32 = net.psi.rotation.val().grad(&grads).expect("rotation gradient").into_scalar();
    let g_m =
        net.psi.mask.val().grad(&grads).expect("mask gradient").into_data().try_to_vec::<f32>().unwrap()[5];
    let value = |r: f32, m: f32| {
        let net = build(r, m);
        partition_hpo::laplace::objective(&net, &group, data.image, use_, samples, n_data, delta).value
    };
    // The value is an f32 sum of magnitude ~50 (rounding ~3e-6), and bilinear resampling has kinks
    // at pixel boundaries: steps of 0.01 (in the logits) keep both errors below the tolerance.
    let h = 1e-2f32;
    let fd_r = (value(r0 + h, m0) - value(r0 - h, m0)) / (2.0 * h as f64);
    let fd_m = (value(r0, m0 + h) - value(r0, m0 - h)) / (2.0 * h as f64);
    assert!(fd_r.abs() > 1e-2 && fd_m.abs() > 1e-2, "non-trivial derivatives ({fd_r}, {fd_m})");
    assert!((g_r as f64 - fd_r).abs() < 0.02 * fd_r.abs() + 2e-4, "rotation: {g_r} vs fd {fd_r}");
    assert!((g_m as f64 - fd_m).abs() < 0.02 * fd_m.abs() + 2e-4, "mask: {g_m} vs fd {fd_m}");
}
