//! `FusedAdamW` against burn's AdamW: the same parameters and moments over several steps, and
//! each reads the other's optimizer state.

use burn::module::{Module, Param};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use foundation::rng::{normals, stream};
use foundation::train::OptimConfig;

#[derive(Module, Debug)]
struct Two {
    /// More elements than one rayon task of the fused loop takes (it splits this one).
    w: Param<Tensor<2>>,
    b: Param<Tensor<1>>,
}

fn config(weight_decay: f64) -> OptimConfig {
    OptimConfig {
        steps: 6,
        lr: 1e-2,
        warmup_steps: 0,
        min_lr_ratio: 1.0,
        weight_decay,
        grad_clip: None,
        ema_decay: 0.0,
        seed: 0,
        microbatches: 1,
    }
}

fn model(device: &Device) -> Two {
    let mut rng = stream(3, 0, 0);
    Two {
        w: Param::from_data(TensorData::new(normals(&mut rng, 200 * 100), [200, 100]), device),
        b: Param::from_data(TensorData::new(normals(&mut rng, 7), [7]), device),
    }
}

/// Gradients of step `step` (drawn, not computed: the optimizer sees only their values).
fn grads(m: &Two, step: u64) -> GradientsParams {
    let mut rng = stream(4, 1, step);
    let dev = Device::flex();
    let mut g = GradientsParams::new();
    let scale = |v: Vec<f32>| v.into_iter().map(|x| 0.1 * x).collect::<Vec<_>>();
    g.register(
        m.w.id,
        Tensor::<2>::from_data(TensorData::new(scale(normals(&mut rng, 20_000)), [200, 100]), &dev),
    );
    g.register(m.b.id, Tensor::<1>::from_data(TensorData::new(scale(normals(&mut rng, 7)), [7]), &dev));
    g
}

fn values(m: &Two) -> Vec<f32> {
    let mut v: Vec<f32> = m.w.val().into_data().try_into_vec().unwrap();
    v.extend(m.b.val().into_data().try_into_vec::<f32>().unwrap());
    v
}

/// Takes steps `from..to` (learning rate `cfg.lr / (1 + step)`) on `m` with `opt`.
fn steps(cfg: &OptimConfig, opt: &mut ModuleOptimizer, mut m: Two, from: u64, to: u64) -> Two {
    for s in from..to {
        let g = grads(&m, s);
        m = opt.step(cfg.lr / (1.0 + s as f64), m, g);
    }
    m
}

#[test]
fn fused_adamw_gives_burns_adamw_numbers_bit_for_bit_over_several_steps() {
    let device = Device::flex().autodiff();
    for wd in [0.0, 0.1] {
        let cfg = config(wd);
        let start = values(&model(&device));
        let burn = steps(&cfg, &mut cfg.optimizer(), model(&device), 0, 6);
        let fused = steps(&cfg, &mut cfg.fused_optimizer(), model(&device), 0, 6);
        let (a, b) = (values(&burn), values(&fused));
        let moved = a.iter().zip(&start).filter(|(x, y)| x != y).count();
        assert!(moved > a.len() / 2, "the steps moved the parameters ({moved} of {})", a.len());
        let differ = a.iter().zip(&b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert_eq!(differ, 0, "weight decay {wd}: {differ} values differ, by up to {worst}");
    }
}

#[test]
fn fused_and_burn_adamw_continue_from_each_others_state() {
    let device = Device::flex().autodiff();
    let cfg = config(0.05);
    // Three steps with one implementation, its state handed to the other, three more.
    let mut whole = cfg.optimizer();
    let reference = values(&steps(&cfg, &mut whole, model(&device), 0, 6));
    for first_fused in [false, true] {
        let mut first = cfg.optimizer_of(first_fused);
        let m = steps(&cfg, &mut first, model(&device), 0, 3);
        let bytes = first.into_bytes().unwrap();
        let mut second = cfg.optimizer_of(!first_fused).from_bytes(bytes).unwrap();
        let got = values(&steps(&cfg, &mut second, m, 3, 6));
        let worst = got.iter().zip(&reference).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert_eq!(got, reference, "fused first: {first_fused}; largest difference {worst}");
    }
}
