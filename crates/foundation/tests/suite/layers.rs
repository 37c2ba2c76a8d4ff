//! Seeded layer initialisation and dropout.

use burn::prelude::*;
use foundation::layers::{with_dropout_stream, Dropout, TapConv2d, TapLinear};
use foundation::rng::{stream_for, Purpose};

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn initialisation_is_burns_default_distribution_from_the_given_stream() {
    let dev = Device::flex();
    let a = TapLinear::new(100, 300, &mut stream_for(1, Purpose::Init, 0), &dev);
    let b = TapLinear::new(100, 300, &mut stream_for(1, Purpose::Init, 0), &dev);
    let w = values(a.inner.weight.val());
    assert_eq!(w, values(b.inner.weight.val()), "same stream, same weights");
    // Uniform on [-1/sqrt(fan_in), 1/sqrt(fan_in)]: bound 0.1, variance 0.01/3.
    assert!(w.iter().all(|v| v.abs() <= 0.1));
    let var = w.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / w.len() as f64;
    assert!((var - 0.01 / 3.0).abs() < 0.05 * 0.01 / 3.0, "variance {var}");
    let bias = values(a.inner.bias.as_ref().unwrap().val());
    assert!(bias.iter().all(|v| v.abs() <= 0.1) && bias.iter().any(|v| v.abs() > 0.05));

    let c = TapConv2d::new(8, 16, 3, 1, 1, &mut stream_for(2, Purpose::Init, 0), &dev);
    let w = values(c.inner.weight.val());
    let bound = 1.0 / (72f32).sqrt();
    assert!(w.iter().all(|v| v.abs() <= bound) && w.iter().any(|v| v.abs() > 0.9 * bound));
    let other = TapConv2d::new(8, 16, 3, 1, 1, &mut stream_for(3, Purpose::Init, 0), &dev);
    assert_ne!(w, values(other.inner.weight.val()));
}

#[test]
fn dropout_draws_only_inside_a_training_pass_and_from_its_stream() {
    let dev = Device::flex();
    let x = Tensor::<2>::ones([100, 100], &dev);
    let drop = Dropout::new(0.25);
    assert_eq!(values(drop.forward(x.clone())), vec![1.0; 10_000], "identity outside a pass");
    let pass =
        |seed| with_dropout_stream(stream_for(seed, Purpose::Dropout, 0), || values(drop.forward(x.clone())));
    let a = pass(1);
    assert_eq!(a, pass(1));
    assert_ne!(a, pass(2));
    let kept = a.iter().filter(|&&v| v != 0.0).count() as f64 / 1e4;
    assert!((kept - 0.75).abs() < 0.02, "kept {kept}");
    assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    // Nested passes restore the outer stream.
    let outer = with_dropout_stream(stream_for(1, Purpose::Dropout, 0), || {
        with_dropout_stream(stream_for(9, Purpose::Dropout, 0), || ());
        values(drop.forward(x.clone()))
    });
    assert_eq!(outer, a);
}
