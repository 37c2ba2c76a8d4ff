//! Finite-difference checks in f64: U-Net parameter gradients, and the output gradients the
//! tap records for every Linear/Conv2d (the hook point of the curvature code).

#[path = "suite/common/mod.rs"]
mod common;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use diffusion::{Diffusion, DiffusionConfig};
use foundation::rng::{normals, stream, timesteps};
use foundation::tap::{layer_names, Activation, LayerKind, Tap};

fn dev() -> Device {
    foundation::device::f64_flex()
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f64>()
}

struct Problem {
    diff: Diffusion,
    x0: Tensor<2>,
    eps: Tensor<2>,
    t: Vec<usize>,
}

fn problem() -> Problem {
    let (n, d) = (3, 64);
    let mut rng = stream(21, 0, 0);
    let t = timesteps(&mut rng, n, 1000);
    let x0 = Tensor::<2>::from_data(
        TensorData::new(normals(&mut rng, n * d).iter().map(|&v| v as f64 * 0.5).collect::<Vec<_>>(), [n, d]),
        &dev(),
    );
    let eps = Tensor::<2>::from_data(
        TensorData::new(normals(&mut rng, n * d).iter().map(|&v| v as f64).collect::<Vec<_>>(), [n, d]),
        &dev(),
    );
    Problem { diff: Diffusion::new(DiffusionConfig::default()), x0, eps, t }
}

/// Adds `h * direction` to every float parameter (direction drawn per call from a seeded stream).
struct Shift {
    h: f64,
    seed: u64,
    k: u64,
}
impl ModuleMapper for Shift {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, v, mapper) = param.consume();
        self.k += 1;
        let n = v.shape().num_elements();
        let dir: Vec<f64> = normals(&mut stream(self.seed, self.k, 0), n).iter().map(|&x| x as f64).collect();
        let dir = Tensor::<1>::from_data(TensorData::new(dir, [n]), &v.device()).reshape(v.dims());
        Param::from_mapped_value(id, v + dir.mul_scalar(self.h), mapper)
    }
}

#[test]
fn unet_parameter_gradient_matches_finite_differences() {
    check_unet_parameter_gradient(common::tiny_unet());
}

#[test]
fn unet_with_narrowing_upsample_gradient_matches_finite_differences() {
    let diffusion::ModelConfig::Unet(mut cfg) = common::tiny_unet() else { unreachable!("tiny U-Net") };
    cfg.upsample_to_level_channels = true;
    check_unet_parameter_gradient(diffusion::ModelConfig::Unet(cfg));
}

fn check_unet_parameter_gradient(config: diffusion::ModelConfig) {
    let p = problem();
    let model = config.init(&dev().autodiff());
    let loss = p.diff.loss(&model, p.x0.clone(), &p.t, p.eps.clone(), &mut Tap::off());
    let grads = loss.backward();
    // <grad, direction>, with the same directions as Shift draws.
    struct Dot<'g> {
        grads: &'g burn::tensor::Gradients,
        seed: u64,
        k: u64,
        acc: f64,
    }
    impl ModuleVisitor for Dot<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.k += 1;
            let g = param.val().grad(self.grads).expect("every parameter reaches the loss");
            let n = g.shape().num_elements();
            let dir: Vec<f64> =
                normals(&mut stream(self.seed, self.k, 0), n).iter().map(|&x| x as f64).collect();
            let dir = Tensor::<1>::from_data(TensorData::new(dir, [n]), &g.device());
            self.acc += scalar((g.reshape([n]) * dir).sum());
        }
    }
    let mut dot = Dot { grads: &grads, seed: 5, k: 0, acc: 0.0 };
    model.visit(&mut dot);
    let plain = model.valid();
    let h = 1e-5;
    let lp = scalar(p.diff.loss(
        &plain.clone().map(&mut Shift { h, seed: 5, k: 0 }),
        p.x0.clone(),
        &p.t,
        p.eps.clone(),
        &mut Tap::off(),
    ));
    let lm = scalar(p.diff.loss(
        &plain.map(&mut Shift { h: -h, seed: 5, k: 0 }),
        p.x0.clone(),
        &p.t,
        p.eps.clone(),
        &mut Tap::off(),
    ));
    let fd = (lp - lm) / (2.0 * h);
    let rel = (fd - dot.acc).abs() / dot.acc.abs().max(1e-12);
    assert!(rel < 1e-5, "directional derivative: backprop {} vs finite difference {fd} (rel {rel})", dot.acc);
}

#[test]
fn recorded_output_gradients_match_finite_differences_for_every_layer() {
    let p = problem();
    let model = common::tiny_unet().init(&dev().autodiff());
    let names = layer_names(&model);
    let mut tap = Tap::recording();
    let loss = p.diff.loss(&model, p.x0.clone(), &p.t, p.eps.clone(), &mut tap);
    let grads = loss.backward();
    let records = tap.take_records();
    // Every Linear/Conv2d of the U-Net is recorded exactly once, under a findable name.
    let n_layers = names.len();
    assert_eq!(records.len(), n_layers, "one record per tapped layer");
    assert!(
        names.values().any(|n| n == "Unet.conv_in") && names.values().any(|n| n.ends_with("film")),
        "{names:?}"
    );
    let plain = model.valid();
    let h = 1e-5;
    for (k, rec) in records.iter().enumerate() {
        let g = rec.output_grad(&grads).expect("output gradient");
        let (dir, analytic) = match &g {
            Activation::Dense(g) => {
                let dir = Tensor::<2>::from_data(
                    TensorData::new(
                        normals(&mut stream(8, k as u64, 0), g.shape().num_elements())
                            .iter()
                            .map(|&x| x as f64)
                            .collect::<Vec<_>>(),
                        g.dims(),
                    ),
                    &dev(),
                );
                (Activation::Dense(dir.clone()), scalar((g.clone() * dir).sum()))
            }
            Activation::Spatial(g) => {
                let dir = Tensor::<4>::from_data(
                    TensorData::new(
                        normals(&mut stream(8, k as u64, 0), g.shape().num_elements())
                            .iter()
                            .map(|&x| x as f64)
                            .collect::<Vec<_>>(),
                        g.dims(),
                    ),
                    &dev(),
                );
                (Activation::Spatial(dir.clone()), scalar((g.clone() * dir).sum()))
            }
            Activation::Sequence(_) => unreachable!("the U-Net has no sequence layers"),
        };
        let scaled = |s: f64| match &dir {
            Activation::Dense(d) => Activation::Dense(d.clone().mul_scalar(s)),
            Activation::Spatial(d) => Activation::Spatial(d.clone().mul_scalar(s)),
            Activation::Sequence(d) => Activation::Sequence(d.clone().mul_scalar(s)),
        };
        let lp = scalar(p.diff.loss(
            &plain,
            p.x0.clone(),
            &p.t,
            p.eps.clone(),
            &mut Tap::perturbing(rec.weight_id, scaled(h)),
        ));
        let lm = scalar(p.diff.loss(
            &plain,
            p.x0.clone(),
            &p.t,
            p.eps.clone(),
            &mut Tap::perturbing(rec.weight_id, scaled(-h)),
        ));
        let fd = (lp - lm) / (2.0 * h);
        let rel = (fd - analytic).abs() / analytic.abs().max(1e-10);
        assert!(rel < 1e-4, "layer {}: recorded {analytic} vs finite difference {fd}", names[&rec.weight_id]);
    }
}

/// For a Linear layer the weight gradient is input^T · output-gradient, so recorded inputs and
/// output gradients suffice to rebuild (per-example) weight gradients.
#[test]
fn recorded_linear_input_and_output_grad_rebuild_the_weight_gradient() {
    let p = problem();
    let model = common::tiny_unet().init(&dev().autodiff());
    let mut tap = Tap::recording();
    let loss = p.diff.loss(&model, p.x0.clone(), &p.t, p.eps.clone(), &mut tap);
    let grads = loss.backward();
    let paths = foundation::tap::param_paths(&model);
    struct Find<'g>(burn::module::ParamId, &'g burn::tensor::Gradients, Option<Tensor<2>>);
    impl ModuleVisitor for Find<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if D == 2 && param.id == self.0 {
                let g = param.val().grad(self.1).expect("weight gradient");
                let dims = g.dims();
                self.2 = Some(g.reshape([dims[0], dims[1]]));
            }
        }
    }
    let mut checked = 0;
    for rec in tap.records() {
        if let (LayerKind::Linear { .. }, Activation::Dense(a)) = (&rec.kind, &rec.input) {
            let Activation::Dense(g) = rec.output_grad(&grads).unwrap() else { panic!("dense grad") };
            let mut f = Find(rec.weight_id, &grads, None);
            model.visit(&mut f);
            let w_grad = f.2.expect("layer weight found");
            let rebuilt = a.clone().transpose().matmul(g);
            let err = scalar((rebuilt - w_grad.clone()).abs().max().reshape([1]));
            let scale = scalar(w_grad.abs().max().reshape([1]));
            assert!(err <= 1e-12 * scale.max(1e-30), "{}: {err} vs scale {scale}", paths[&rec.weight_id]);
            checked += 1;
        }
    }
    assert!(checked >= 4, "expected several Linear layers, checked {checked}");
}
