//! The masking invariant: with psi held fixed, partitions 1..k after training are bit-identical
//! to a run in which shards k+1..C held different data.

use foundation::progress::NoProgress;
use partition_hpo::data::shards;
use partition_hpo::hpo::train;
use partition_hpo::model::PartitionedNet;

use crate::common::{device, small_config, toy_inputs};

/// (value, partition) of every weight and bias entry of every layer.
fn entries(model: &PartitionedNet) -> Vec<(f32, usize)> {
    let mut out = Vec::new();
    for l in &model.convs {
        let pairs = [
            (l.weight.val().flatten::<1>(0, 3), l.weight_part.val().flatten::<1>(0, 3)),
            (l.bias.val(), l.bias_part.val()),
        ];
        for (v, p) in pairs {
            let v = v.into_data().try_to_vec::<f32>().unwrap();
            let p = p.into_data().try_to_vec::<f32>().unwrap();
            out.extend(v.into_iter().zip(p.into_iter().map(|p| p as usize)));
        }
    }
    for l in &model.layers {
        let pairs = [
            (l.weight.val().flatten::<1>(0, 1), l.weight_part.val().flatten::<1>(0, 1)),
            (l.bias.val(), l.bias_part.val()),
        ];
        for (v, p) in pairs {
            let v = v.into_data().try_to_vec::<f32>().unwrap();
            let p = p.into_data().try_to_vec::<f32>().unwrap();
            out.extend(v.into_iter().zip(p.into_iter().map(|p| p as usize)));
        }
    }
    out
}

#[test]
fn partitions_up_to_k_never_see_later_shards() {
    check_invariant(small_config());
}

#[test]
fn cnn_partitions_up_to_k_never_see_later_shards() {
    // A small CNN: two 3x3 stride-2 convolutions on the 4x4 image, then the MLP, and 3 extra
    // features that bypass the convolutions.
    let mut config = small_config();
    config.conv_channels = vec![3, 4];
    check_invariant(config);
}

fn check_invariant(config: partition_hpo::hpo::RunConfig) {
    let extra = if config.conv_channels.is_empty() { 0 } else { 3 };
    let data = toy_inputs(48, extra, 3);
    let base = train(&config, &data, None, &device(), &NoProgress).unwrap();
    let base = entries(&base.model);
    let parts = shards(data.n, &config.data_proportions, config.seed).unwrap();
    let other = toy_inputs(48, extra, 99);
    for k in 1..config.partitions {
        // Replace the rows (features and labels) of shards k+1..C (0-based: k..C-1).
        let mut changed = data.clone();
        for shard in &parts[k..] {
            for &i in shard {
                changed.x[i * data.d..(i + 1) * data.d]
                    .copy_from_slice(&other.x[i * data.d..(i + 1) * data.d]);
                changed.y[i] = other.y[i];
            }
        }
        let run = train(&config, &changed, None, &device(), &NoProgress).unwrap();
        let got = entries(&run.model);
        let (mut same, mut differ_later) = (0, 0);
        for ((a, pa), (b, _)) in base.iter().zip(&got) {
            if *pa < k {
                assert_eq!(a.to_bits(), b.to_bits(), "partition {pa} changed when shards > {k} changed");
                same += 1;
            } else if a.to_bits() != b.to_bits() {
                differ_later += 1;
            }
        }
        assert!(same > 0, "no entries in partitions < {k}");
        assert!(differ_later > 0, "partitions >= {k} should see the changed shards");
    }
}

/// Every subnetwork's weights, in both modes, are the trained value on partitions `<= k` and the
/// initial value above, also after the initial values are replaced (`set_initial`, which must
/// keep the cached `W0 [p > k]` terms in step): read back through `forward` on the identity.
#[test]
fn subnetwork_weights_are_trained_below_k_and_initial_above() {
    use burn::module::Param;
    use burn::prelude::*;
    use partition_hpo::model::{Mode, PartitionedLinear};
    use rand::{Rng, SeedableRng};

    let dev = device();
    let (d_in, d_out, props) = (7, 5, [0.3, 0.3, 0.4]);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut assign = rand_chacha::ChaCha8Rng::seed_from_u64(12);
    let mut layer = PartitionedLinear::new(d_in, d_out, &props, &mut rng, &mut assign, &dev);
    let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect() };
    let (w, b, w0, b0) = (draw(d_in * d_out), draw(d_out), draw(d_in * d_out), draw(d_out));
    layer.weight = Param::from_data(TensorData::new(w.clone(), [d_in, d_out]), &dev);
    layer.bias = Param::from_data(TensorData::new(b.clone(), [d_out]), &dev);
    layer.set_initial(
        Tensor::from_data(TensorData::new(w0.clone(), [d_in, d_out]), &dev),
        Tensor::from_data(TensorData::new(b0.clone(), [d_out]), &dev),
    );
    let wp = layer.weight_part.val().into_data().try_to_vec::<f32>().unwrap();
    let bp = layer.bias_part.val().into_data().try_to_vec::<f32>().unwrap();
    let mut eye = vec![0.0f32; d_in * d_in];
    (0..d_in).for_each(|i| eye[i * d_in + i] = 1.0);
    for k in 0..props.len() {
        let pick = |p: f32, trained: f32, init: f32| if p as usize <= k { trained } else { init };
        for mode in [Mode::Train(k), Mode::Eval(k)] {
            let x = Tensor::from_data(TensorData::new(eye.clone(), [d_in, d_in]), &dev);
            let got = layer.forward(x, mode).into_data().try_to_vec::<f32>().unwrap();
            for i in 0..d_in {
                for j in 0..d_out {
                    let e = i * d_out + j;
                    let want = pick(wp[e], w[e], w0[e]) + pick(bp[j], b[j], b0[j]);
                    assert_eq!(got[e], want, "{mode:?}, entry ({i}, {j})");
                }
            }
        }
    }
}
