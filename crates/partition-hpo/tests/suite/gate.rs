//! The stochastic input gate: with its noise fixed, the gradient of the out-of-sample objective
//! with respect to the mask logits matches finite differences (the gate's standard deviation
//! sqrt(keep (1 - keep)) included), and over many draws the gate multiplier has the mean and
//! variance of a Bernoulli(keep) gate.

use burn::module::Param;
use burn::prelude::*;
use partition_hpo::hpo::{psi_objective, Group, PsiSignal};
use partition_hpo::model::{Draws, Mode, PartitionedNet, Psi, PsiUse};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use crate::common::toy_inputs;

fn net_with_mask(logits: &[f32], dev: &Device) -> PartitionedNet {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut psi = Psi::new(logits.len(), 10.0, 0.9, 0.1, dev);
    psi.mask = Param::from_data(TensorData::new(logits.to_vec(), [logits.len()]), dev);
    PartitionedNet::new(logits.len(), (4, 4), &[], &[6], 10, &[0.5, 0.5], psi, 2, &mut rng, dev)
}

#[test]
fn gate_gradient_matches_finite_differences() {
    let dev = Device::flex().autodiff();
    let data = toy_inputs(12, 3, 4);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let logits: Vec<f32> = (0..data.d).map(|_| rng.gen_range(-2.0..3.0)).collect();
    let gate: Vec<f32> = (0..data.n * data.d).map(|_| rng.sample(StandardNormal)).collect();
    let group = Group {
        x: data.x.clone(),
        y: data.y.clone(),
        n: data.n,
        draws: Draws { u: vec![0.0; data.n], gate, ..Draws::default() },
        mode: Mode::Eval(0),
    };
    let use_ = PsiUse { rotation: false, mask: true, dropout: false };
    let objective = |l: &[f32]| -> (f64, Option<Vec<f32>>) {
        let net = net_with_mask(l, &dev);
        let obj = psi_objective(&net, std::slice::from_ref(&group), (4, 4), use_, 1, PsiSignal::Oots);
        let value: f32 = obj.clone().into_scalar();
        let value = value as f64;
        let grads = obj.backward();
        (value, net.psi.mask.val().grad(&grads).map(|g| g.into_data().try_to_vec::<f32>().unwrap()))
    };
    let (_, grad) = objective(&logits);
    let grad = grad.expect("gradient of the mask logits");
    let eps = 1e-2f32;
    for j in [0, 5, 11, 16, 18] {
        let mut up = logits.clone();
        up[j] += eps;
        let mut down = logits.clone();
        down[j] -= eps;
        let fd = (objective(&up).0 - objective(&down).0) / (2.0 * eps as f64);
        let tol = 2e-3 + 2e-2 * fd.abs();
        assert!(
            (grad[j] as f64 - fd).abs() < tol,
            "feature {j}: autodiff {} vs finite differences {fd}",
            grad[j]
        );
    }
}

#[test]
fn gate_has_bernoulli_moments_and_no_noise_at_test_time() {
    let dev = Device::flex();
    // One feature of value 1, a linear readout: logit of class 1 = w * gate; read the gate back.
    let keep = 0.3f64;
    let l = (keep / (1.0 - keep)).ln() as f32;
    let mut net = net_with_mask(&[l], &dev);
    net.layers.truncate(1);
    let mut wv = vec![0.0f32; 6];
    wv[1] = 1.0;
    let layer = &mut net.layers[0];
    layer.weight = Param::from_data(TensorData::new(wv.clone(), [1, 6]), &dev);
    layer.bias = Param::from_data(TensorData::new(vec![0.0f32; 6], [6]), &dev);
    layer.set_initial(
        Tensor::from_data(TensorData::new(wv, [1, 6]), &dev),
        Tensor::from_data(TensorData::new(vec![0.0f32; 6], [6]), &dev),
    );
    let n = 20_000;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let gate: Vec<f32> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
    let use_ = PsiUse { rotation: false, mask: true, dropout: false };
    let x = vec![1.0f32; n];
    let draws = Draws { u: vec![0.0; n], gate, ..Draws::default() };
    let out = net.forward(&x, n, (1, 1), &draws, use_, false, Mode::Eval(1));
    let g: Vec<f32> = out.narrow(1, 1, 1).into_data().try_to_vec::<f32>().unwrap();
    let mean = g.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let var = g.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let se = (keep * (1.0 - keep) / n as f64).sqrt();
    assert!((mean - keep).abs() < 5.0 * se, "gate mean {mean} vs keep {keep}");
    assert!((var - keep * (1.0 - keep)).abs() < 0.02, "gate variance {var} vs {}", keep * (1.0 - keep));
    // Without gate noise (evaluation) the multiplier is the keep probability itself.
    let det = net.forward(
        &[1.0],
        1,
        (1, 1),
        &Draws { u: vec![0.0], ..Draws::default() },
        use_,
        false,
        Mode::Eval(1),
    );
    let v: Vec<f32> = det.narrow(1, 1, 1).into_data().try_to_vec::<f32>().unwrap();
    assert!((v[0] as f64 - keep).abs() < 1e-6, "test-time multiplier {} vs keep {keep}", v[0]);
}
