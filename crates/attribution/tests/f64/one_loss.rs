//! One training loss under every consumer (f64, tiny MLP denoiser): for every parametrisation
//! (epsilon, x0) and loss weighting (simple, ELBO), the attribution training gradients, the
//! ground-truth measurement and the curvature's loss, Gauss-Newton matrix and pseudo-gradients are
//! those of `Diffusion::per_example_loss` on the same (t, noise) draws.

use attribution::measure::measure;
use attribution::{DiffusionTask, Measurement, Role};
use burn::module::Module;
use burn::prelude::*;
use curvature::diffusion_batch::DiffusionBatch;
use curvature::exact::{dense_ggn, layer_space_gradient};
use curvature::fit::{backward_passes, mse_pseudo_gradients, CurvatureBatch, GgnKind};
use curvature::layer::to_f64;
use curvature::precondition::per_datum_gradients;
use diffusion::model::Denoiser;
use diffusion::{Diffusion, DiffusionConfig, LossWeighting, Mlp, MlpConfig, Parametrisation, TrainData};
use foundation::rng::{normals, stream, stream_for, timesteps, Purpose};
use foundation::tap::Tap;

const D: usize = 6;

fn plain() -> Device {
    foundation::device::f64_flex()
}

fn dev() -> Device {
    plain().autodiff()
}

fn model() -> Mlp {
    MlpConfig { data_dim: D, hidden: 8, layers: 1, time_dim: 4 }.init(&dev())
}

fn rows(n: usize) -> Vec<f32> {
    normals(&mut stream(3, 0, 0), n * D).into_iter().map(|v| (0.5 * v).clamp(-1.0, 1.0)).collect()
}

/// The four training objectives, with their names for messages.
fn objectives() -> Vec<(&'static str, Diffusion)> {
    let objective = |parametrisation, weighting| {
        Diffusion::new(DiffusionConfig { parametrisation, weighting, ..DiffusionConfig::default() })
    };
    vec![
        ("eps/simple", objective(Parametrisation::Epsilon, LossWeighting::Simple)),
        ("eps/elbo", objective(Parametrisation::Epsilon, LossWeighting::Elbo)),
        ("x0/simple", objective(Parametrisation::X0, LossWeighting::Simple)),
        ("x0/elbo", objective(Parametrisation::X0, LossWeighting::Elbo)),
    ]
}

fn tensor(v: Vec<f32>, rows: usize, cols: usize) -> Tensor<2> {
    Tensor::<2>::from_data(TensorData::new(v, [rows, cols]), &dev())
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

/// One (t, noise) draw from `rng`, in the order every consumer draws them: t first, then noise.
fn draw(rng: &mut impl rand::Rng, steps: usize) -> (usize, Vec<f32>) {
    let t = timesteps(rng, 1, steps)[0];
    (t, normals(rng, D))
}

/// The covered layers' (weight, bias) ids in tap-record order.
fn record_order(model: &Mlp) -> Vec<(u64, Option<u64>)> {
    let mut tap = Tap::recording();
    let x = Tensor::<2>::zeros([1, D], &dev());
    let _ = model.forward_tapped(x, Tensor::<1>::zeros([1], &dev()), &mut tap);
    tap.records().iter().map(|r| (r.weight_id.val(), r.bias_id.map(|b| b.val()))).collect()
}

/// `DiffusionTask::gradients` of the training loss (both roles, as both measure
/// `Measurement::Loss`) equals plain autodiff of the mean of `per_example_loss` over the same
/// draws, for every objective; and for every objective but the default the gradient differs
/// from the epsilon-MSE gradient the attribution code used to take whatever the run trained on.
#[test]
fn attribution_gradients_are_autodiff_of_per_example_loss() {
    let model = model();
    let order = record_order(&model);
    let (ids, seed, draws) = ([4usize, 9, 11], 7u64, 3u64);
    let data = rows(ids.len());
    let eps_simple = Diffusion::new(DiffusionConfig::default());
    for (name, diffusion) in objectives() {
        let task = |diffusion: &Diffusion| DiffusionTask {
            diffusion: diffusion.clone(),
            measurement: Measurement::Loss,
            train_output: Measurement::Loss,
            train_draws: draws,
            query_draws: draws,
            seed,
        };
        for role in [Role::Train, Role::Query] {
            let got = to_f64(task(&diffusion).gradients(&model, &data, &ids, role, &dev()));
            let p = got.len() / ids.len();
            for (k, &id) in ids.iter().enumerate() {
                let (mut t, mut eps, mut x0) = (Vec::new(), Vec::new(), Vec::new());
                for r in 0..draws {
                    let purpose = match role {
                        Role::Train => Purpose::TrainGradient { draw: r },
                        Role::Query => Purpose::QueryGradient { draw: r },
                    };
                    let (tt, e) = draw(&mut stream_for(seed, purpose, id as u64), diffusion.steps());
                    t.push(tt);
                    eps.extend(e);
                    x0.extend_from_slice(&data[k * D..(k + 1) * D]);
                }
                let n = draws as usize;
                let loss = diffusion
                    .per_example_loss(&model, tensor(x0, n, D), &t, tensor(eps, n, D), &mut Tap::off())
                    .mean();
                let want = layer_space_gradient(&model, &loss.backward(), &order);
                let e = rel_err(&got[k * p..(k + 1) * p], &want);
                assert!(e < 1e-5, "{name} {role:?} image {id}: relative error {e}");
            }
            if name != "eps/simple" {
                let old = to_f64(task(&eps_simple).gradients(&model, &data, &ids, role, &dev()));
                let e = rel_err(&old, &got);
                assert!(e > 1e-2, "{name}: the epsilon-MSE gradient should differ, relative difference {e}");
            }
        }
    }
}

/// `measure(.., Measurement::Loss, ..)` is the mean of `per_example_loss` over the draws of each query's
/// `Purpose::Measurement` stream, whatever the batch size.
#[test]
fn measured_loss_is_the_mean_of_per_example_loss() {
    let model = model().valid();
    let (ids, seed, draws) = ([2usize, 5, 8, 13], 11u64, 5usize);
    let queries = rows(ids.len());
    for (name, diffusion) in objectives() {
        let got = measure(&model, &diffusion, Measurement::Loss, &queries, &ids, draws, seed, 7, &plain());
        for (k, &id) in ids.iter().enumerate() {
            let mut rng = stream_for(seed, Purpose::Measurement, id as u64);
            let (mut t, mut eps) = (Vec::new(), Vec::new());
            for _ in 0..draws {
                let (tt, e) = draw(&mut rng, diffusion.steps());
                t.push(tt);
                eps.extend(e);
            }
            let x0: Vec<f32> = queries[k * D..(k + 1) * D].repeat(draws);
            let dev = plain();
            let per = diffusion.per_example_loss(
                &model,
                Tensor::<2>::from_data(TensorData::new(x0, [draws, D]), &dev),
                &t,
                Tensor::<2>::from_data(TensorData::new(eps, [draws, D]), &dev),
                &mut Tap::off(),
            );
            let want = per.mean().into_scalar::<f64>();
            let e = (got[k] - want).abs() / want.abs();
            assert!(e < 1e-12, "{name} query {id}: measured {} vs {want}", got[k]);
        }
    }
}

/// The curvature batch of the diffusion loss describes `per_example_loss` exactly: the same
/// per-datum loss on the same `Purpose::CurvatureDraw` draws; its exact GGN^model equals
/// `(1/M) sum_i J_i^T H_i J_i` with `H_i` the Hessian of `per_example_loss` in the network output
/// (found by autodiff); its GGN^loss pseudo-gradients are the per-datum gradients of
/// `per_example_loss`; and its Monte-Carlo pseudo-gradients are `H_i^(1/2)` times standard draws.
#[test]
fn curvature_targets_and_weights_are_those_of_per_example_loss() {
    let model = model();
    let n = 3;
    let data = TrainData::new(rows(n), n, D);
    let pairs: Vec<(usize, u64)> = vec![(0, 0), (0, 1), (1, 0), (2, 0), (2, 3)];
    let m = pairs.len();
    let (seed, pass) = (5u64, 1u64);
    for (name, diffusion) in objectives() {
        let batch = DiffusionBatch::new(&model, &diffusion, &data, &pairs, seed, pass, &dev());
        // The same draws, drawn here.
        let (mut t, mut eps, mut x0) = (Vec::new(), Vec::new(), Vec::new());
        for &(i, r) in &pairs {
            let purpose = Purpose::CurvatureDraw { pass, draw: r };
            let (tt, e) = draw(&mut stream_for(seed, purpose, i as u64), diffusion.steps());
            t.push(tt);
            eps.extend(e);
            x0.extend_from_slice(&data.rows[i * D..(i + 1) * D]);
        }
        let (x0, eps) = (tensor(x0, m, D), tensor(eps, m, D));

        // Same per-datum loss.
        let out = batch.forward(&mut Tap::off());
        let want_loss = to_f64(
            diffusion.per_example_loss(&model, x0.clone(), &t, eps.clone(), &mut Tap::off()).reshape([m, 1]),
        );
        let e = rel_err(&to_f64(out.per_datum_loss().reshape([m, 1])), &want_loss);
        assert!(e < 1e-12, "{name}: curvature loss vs per_example_loss: {e}");

        // Hessian of per_example_loss in the output, column by column (the loss is quadratic in
        // the output, so a unit step gives a column exactly up to rounding).
        let y0 = to_f64(out.output.clone());
        let output_grad = |shift: Option<usize>| -> Vec<f64> {
            let y: Vec<f64> =
                y0.iter().enumerate().map(|(k, v)| v + f64::from(shift == Some(k % D))).collect();
            let y = Tensor::<2>::from_data(TensorData::new(y, [m, D]), &dev()).require_grad();
            let loss = diffusion.per_example_loss_from_output(y.clone(), x0.clone(), &t, eps.clone());
            to_f64(y.grad(&loss.sum().backward()).expect("output gradient"))
        };
        let g0 = output_grad(None);
        let cols: Vec<Vec<f64>> = (0..D).map(|j| output_grad(Some(j))).collect();
        let hess = |i: usize, a: usize, b: usize| cols[b][i * D + a] - g0[i * D + a];
        let scale: f64 = (0..m).map(|i| hess(i, 0, 0).abs()).fold(0.0, f64::max);

        // Jacobian rows J_i[j, :] of every datum in layer space.
        let jac: Vec<Vec<f64>> = (0..D)
            .map(|j| {
                let mut tap = Tap::recording();
                let y = batch.forward(&mut tap).output;
                to_f64(per_datum_gradients(tap.records(), &y.narrow(1, j, 1).sum().backward()))
            })
            .collect();
        let p = jac[0].len() / m;
        let mut want = vec![0.0; p * p];
        for i in 0..m {
            for a in 0..D {
                for b in 0..D {
                    let h = hess(i, a, b) / m as f64;
                    if h == 0.0 {
                        continue;
                    }
                    let (ja, jb) = (&jac[a][i * p..(i + 1) * p], &jac[b][i * p..(i + 1) * p]);
                    for (r, &va) in ja.iter().enumerate() {
                        for (c, &vb) in jb.iter().enumerate() {
                            want[r * p + c] += h * va * vb;
                        }
                    }
                }
            }
        }
        let fresh = DiffusionBatch::new(&model, &diffusion, &data, &pairs, seed, pass, &dev());
        let ggn = dense_ggn([fresh], GgnKind::ModelExact, &mut stream(0, 0, 0));
        let got: Vec<f64> = (0..p * p).map(|k| ggn[(k / p, k % p)]).collect();
        let e = rel_err(&got, &want);
        assert!(e < 1e-10, "{name}: exact GGN vs J^T H J of per_example_loss: {e}");

        // GGN^loss: the per-datum gradients of per_example_loss itself.
        let mut tap = Tap::recording();
        let loss = diffusion.per_example_loss(&model, x0.clone(), &t, eps.clone(), &mut tap);
        let want = to_f64(per_datum_gradients(tap.records(), &loss.sum().backward()));
        let mut got = Vec::new();
        backward_passes(&batch, GgnKind::Loss, &mut stream(0, 0, 0), |records, grads, _| {
            got = to_f64(per_datum_gradients(records, grads));
        });
        // 1e-6, not 1e-10: the unweighted path divides by D with `div_scalar`, `per_example_loss`
        // with `mean_dim`, and on burn-flex the two round differently (measured 3e-8 relative).
        let e = rel_err(&got, &want);
        assert!(e < 1e-6, "{name}: GGN^loss pseudo-gradients vs gradients of per_example_loss: {e}");

        // GGN^model, Monte Carlo: H_i = h_i I here, and the pseudo-gradient is sqrt(h_i / (2/D))
        // times a draw of N(0, 2/D) (whose covariance the kfac tests check).
        for i in 0..m {
            for a in 0..D {
                for b in 0..D {
                    let h = hess(i, a, b);
                    let diag = hess(i, 0, 0);
                    let want = if a == b { diag } else { 0.0 };
                    assert!((h - want).abs() < 1e-12 * scale, "{name}: H[{i}][{a},{b}] = {h}");
                }
            }
        }
        let rng = stream(9, 0, 0);
        let r0 = mse_pseudo_gradients(&mut rng.clone(), m, D);
        let r: Vec<f64> = r0
            .iter()
            .enumerate()
            .map(|(k, &v)| f64::from(v) * (hess(k / D, 0, 0) / (2.0 / D as f64)).sqrt())
            .collect();
        let mut tap = Tap::recording();
        let y = batch.forward(&mut tap).output;
        let r = Tensor::<2>::from_data(TensorData::new(r, [m, D]), &dev());
        let want = to_f64(per_datum_gradients(tap.records(), &(y * r).sum().backward()));
        let mut got = Vec::new();
        backward_passes(&batch, GgnKind::Model, &mut rng.clone(), |records, grads, _| {
            got = to_f64(per_datum_gradients(records, grads));
        });
        let e = rel_err(&got, &want);
        assert!(e < 1e-10, "{name}: Monte-Carlo pseudo-gradients vs H^(1/2) draws: {e}");
    }
}
