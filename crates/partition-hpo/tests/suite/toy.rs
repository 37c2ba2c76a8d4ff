//! The hyperparameter objective on a toy whose best psi is computable: a linear classifier with
//! fixed weights (10 classes, the logit of class 1 is s * x, all others 0) and one input feature
//! whose mask value s scales it. The out-of-sample loss on shard 2 is
//! L(s) = mean [log(e^{s x_i} + 9) - s x_i [y_i = 1]]; its value and gradient must match this
//! closed form, and Adam on the mask logit must reach the root of L'(s), found by bisection.

use burn::module::Param;
use burn::prelude::*;
use foundation::train::OptimConfig;
use partition_hpo::data::{shards, Inputs};
use partition_hpo::hpo::{psi_objective, Group, PsiSignal};
use partition_hpo::model::{Draws, Mode, PartitionedNet, Psi, PsiUse};
use rand::SeedableRng;

#[test]
fn oots_objective_finds_the_computable_best_mask() {
    let dev = Device::flex().autodiff();
    // 40 rows, one feature: class 1 at x = 2, class 0 at x = 3 (wrongly pushed to class 1 as s
    // grows) and class 0 at x = -1; the best s is interior.
    let n = 40;
    let mut x = Vec::new();
    let mut y = Vec::new();
    for i in 0..n {
        let (xi, yi) = match i % 5 {
            0 | 1 => (3.0f32, 0u8),
            2 => (-1.0, 0),
            _ => (2.0, 1),
        };
        x.push(xi);
        y.push(yi);
    }
    let data = Inputs { x, y, n, d: 1, image: (1, 1) };
    let props = [0.5, 0.5];
    let parts = shards(n, &props, 3).unwrap();
    // Logit of class 1 minus class 0 is s * x: weight [1, 10] with 1 in column 1.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let psi = Psi::new(1, 10.0, 0.9, 0.1, &dev);
    let mut net = PartitionedNet::new(1, (1, 1), &[], &[], 10, &props, psi, 3, &mut rng, &dev);
    let mut wv = vec![0.0f32; 10];
    wv[1] = 1.0;
    let layer = &mut net.layers[0];
    layer.weight = Param::from_data(TensorData::new(wv.clone(), [1, 10]), &dev);
    layer.bias = Param::from_data(TensorData::new(vec![0.0f32; 10], [10]), &dev);
    layer.set_initial(
        Tensor::from_data(TensorData::new(wv, [1, 10]), &dev),
        Tensor::from_data(TensorData::new(vec![0.0f32; 10], [10]), &dev),
    );

    // Shard 2, out of sample for subnetwork 1.
    let rows = data.select(&parts[1]);
    let group = Group {
        x: rows.x.clone(),
        y: rows.y.clone(),
        n: rows.n,
        draws: Draws { u: vec![0.0; rows.n], ..Draws::default() },
        mode: Mode::Eval(0),
    };
    let use_ = PsiUse { rotation: false, mask: true, dropout: false };
    // Value and gradient against the closed form at the initial s = 0.9.
    let obj = psi_objective(&net, std::slice::from_ref(&group), (1, 1), use_, 1, PsiSignal::Oots);
    let s0 = 0.9f64;
    let value: f32 = obj.clone().into_scalar();
    let exact = |s: f64| -> (f64, f64) {
        let k = rows.n as f64;
        let mut l = 0.0;
        let mut d = 0.0;
        for (&xi, &yi) in rows.x.iter().zip(&rows.y) {
            let z = s * xi as f64; // logit of class 1; all others 0
            let lse = (z.exp() + 9.0).ln();
            let own = if yi == 1 { z } else { 0.0 };
            l += lse - own;
            let p1 = z.exp() / (z.exp() + 9.0);
            d += xi as f64 * (p1 - if yi == 1 { 1.0 } else { 0.0 });
        }
        (l / k, d / k)
    };
    let (le, de) = exact(s0);
    assert!((value as f64 - le).abs() < 1e-4, "objective {value} vs closed form {le}");
    let grads = obj.backward();
    let g: f32 = net.psi.mask.val().grad(&grads).unwrap().into_scalar();
    // Chain rule through the sigmoid: d/dlogit = L'(s) s (1 - s).
    let expect = de * s0 * (1.0 - s0);
    assert!((g as f64 - expect).abs() < 1e-4, "mask-logit gradient {g} vs {expect}");

    // The best s by bisection on the closed-form derivative (it changes sign inside (0, 1)).
    let (mut lo, mut hi) = (1e-3, 1.0 - 1e-3);
    assert!(exact(lo).1 < 0.0 && exact(hi).1 > 0.0, "the toy's optimum must be interior");
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if exact(mid).1 < 0.0 {
            lo = mid
        } else {
            hi = mid
        }
    }
    let best = 0.5 * (lo + hi);

    // Adam on the mask logit, weights fixed.
    let cfg = OptimConfig {
        steps: 1,
        lr: 0.05,
        warmup_steps: 0,
        min_lr_ratio: 1.0,
        weight_decay: 0.0,
        grad_clip: None,
        ema_decay: 0.0,
        seed: 0,
        microbatches: 1,
    };
    let mut opt = cfg.optimizer();
    for _ in 0..400 {
        let obj = psi_objective(&net, std::slice::from_ref(&group), (1, 1), use_, 1, PsiSignal::Oots);
        let grads = burn::optim::GradientsParams::from_grads(obj.backward(), &net);
        net = opt.step(cfg.lr, net, grads);
    }
    let s = net.psi.values().keep[0] as f64;
    assert!((s - best).abs() < 0.02, "learned mask {s} vs best {best}");
    // And the fixed weights did not move.
    let w = net.layers[0].weight.val().into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(w[1], 1.0);
}
