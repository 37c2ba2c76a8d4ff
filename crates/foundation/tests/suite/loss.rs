//! The one softmax cross-entropy against values worked out by hand, its three reductions
//! agreeing bit for bit with the forms they replaced, and one-hot targets.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use foundation::loss::{
    one_hot, softmax_cross_entropy, softmax_cross_entropy_per_example, softmax_cross_entropy_sum,
};

fn values(t: Tensor<1>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().expect("float data")
}

#[test]
fn cross_entropy_matches_hand_computed_values() {
    let dev = Device::flex();
    // Row 0: logits (0, ln 3) give softmax (1/4, 3/4); target class 0 costs ln 4.
    // Row 1: equal logits, target (1/2, 1/2) costs ln 2.
    let logits = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 3f32.ln(), 5.0, 5.0], [2, 2]), &dev);
    let targets = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 0.0, 0.5, 0.5], [2, 2]), &dev);
    let ln2 = std::f32::consts::LN_2;
    let per = values(softmax_cross_entropy_per_example(logits.clone(), targets.clone()));
    assert_eq!(per.len(), 2);
    assert!((per[0] - 2.0 * ln2).abs() < 1e-6, "{per:?}");
    assert!((per[1] - ln2).abs() < 1e-6, "{per:?}");
    let sum = values(softmax_cross_entropy_sum(logits.clone(), targets.clone()))[0];
    assert!((sum - 3.0 * ln2).abs() < 1e-6, "{sum}");
    let mean = values(softmax_cross_entropy(logits, targets))[0];
    assert!((mean - 1.5 * ln2).abs() < 1e-6, "{mean}");
}

#[test]
fn reductions_are_bit_identical_to_the_forms_they_replaced() {
    let dev = Device::flex();
    let (n, c) = (37, 10);
    let z: Vec<f32> = (0..n * c).map(|i| ((i * 7919 % 113) as f32 / 11.0) - 5.0).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i * 3 % c) as u8).collect();
    let logits = Tensor::<2>::from_data(TensorData::new(z, [n, c]), &dev);
    let y = one_hot(&labels, c, &dev);
    // Mean over the batch as the training objectives wrote it.
    let old = (log_softmax(logits.clone(), 1) * y.clone()).sum().neg() / (n as f64);
    assert_eq!(values(softmax_cross_entropy(logits.clone(), y.clone())), values(old));
    // Mean of the row losses as partition-hpo wrote it.
    let old = (log_softmax(logits.clone(), 1) * y.clone()).sum_dim(1).mean().neg();
    assert_eq!(values(softmax_cross_entropy_per_example(logits, y).mean()), values(old));
}

#[test]
fn one_hot_sets_one_entry_per_row() {
    let y = one_hot(&[2, 0, 2], 3, &Device::flex());
    assert_eq!(y.dims(), [3, 3]);
    assert_eq!(
        y.into_data().try_into_vec_as::<f32>().expect("float data"),
        vec![0., 0., 1., 1., 0., 0., 0., 0., 1.]
    );
}

#[test]
fn fused_cross_entropy_matches_the_graph_one_in_value_and_gradient() {
    use foundation::loss::softmax_cross_entropy_sum_fused;
    use foundation::rng::{normals, stream};
    let dev = Device::flex().autodiff();
    let (n, c) = (37, 53);
    let mut rng = stream(8, 0, 0);
    // Logits on very different scales per row (one row far past exp's range), one-hot,
    // probability and all-zero (padding) target rows.
    let mut z = normals(&mut rng, n * c);
    for (i, row) in z.chunks_mut(c).enumerate() {
        let scale = [0.1f32, 1.0, 10.0, 200.0][i % 4];
        row.iter_mut().for_each(|x| *x *= scale);
    }
    let mut t = vec![0f32; n * c];
    for i in 0..n {
        match i % 3 {
            0 => t[i * c + (i * 7) % c] = 1.0,
            1 => {
                t[i * c + 2] = 0.25;
                t[i * c + 5] = 0.75;
            }
            _ => {}
        }
    }
    let up = 0.37; // an upstream gradient
    let run = |fused: bool| {
        let logits = Tensor::<2>::from_data(TensorData::new(z.clone(), [n, c]), &dev).require_grad();
        let targets = Tensor::<2>::from_data(TensorData::new(t.clone(), [n, c]), &dev);
        let loss = if fused {
            softmax_cross_entropy_sum_fused(logits.clone(), targets)
        } else {
            softmax_cross_entropy_sum(logits.clone(), targets)
        };
        let value = loss.clone().into_scalar::<f32>();
        let grads = loss.mul_scalar(up).backward();
        let g: Vec<f32> = logits.grad(&grads).unwrap().into_data().try_into_vec().unwrap();
        (value, g)
    };
    let (v_fused, g_fused) = run(true);
    let (v_ref, g_ref) = run(false);
    assert!((v_fused - v_ref).abs() <= 1e-5 * v_ref.abs(), "loss {v_fused} vs {v_ref}");
    for (i, (a, b)) in g_fused.iter().zip(&g_ref).enumerate() {
        assert!((a - b).abs() <= 1e-6, "gradient {i}: {a} vs {b}");
    }
    // Padding rows get no gradient at all.
    assert!(g_fused[2 * c..3 * c].iter().all(|&g| g == 0.0));
    // Without a graph it is the graph version itself.
    let logits = Tensor::<2>::from_data(TensorData::new(z.clone(), [n, c]), &Device::flex());
    let targets = Tensor::<2>::from_data(TensorData::new(t.clone(), [n, c]), &Device::flex());
    assert_eq!(
        values(softmax_cross_entropy_sum_fused(logits.clone(), targets.clone())),
        values(softmax_cross_entropy_sum(logits, targets))
    );
}

#[test]
fn branch_free_exp_is_within_an_ulp_or_two_of_f64() {
    let mut worst = 0.0f64;
    for i in 0..=1_000_000u32 {
        let t = -(i as f32) * 1e-4; // [-100, 0]
        let got = f64::from(foundation::loss::exp_nonpositive_f32(t));
        if t >= -87.0 {
            worst = worst.max((got - f64::from(t).exp()).abs() / f64::from(t).exp());
        } else {
            assert_eq!(got, 0.0, "exp({t}) underflows to 0");
        }
    }
    assert!(worst < 2.5e-7, "largest relative error {worst}");
}
