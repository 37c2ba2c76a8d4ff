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
