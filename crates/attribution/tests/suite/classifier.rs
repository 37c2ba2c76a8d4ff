//! Influence functions for the MNIST classifier: sharded scoring tiles the full matrix exactly,
//! self-influence of the cross-entropy is positive, and factor files refuse other settings.

use attribution::classifier::{
    classifier_gradients, classifier_layer_infos, fit_classifier_curvature, score_classifier_range,
    ClassMeasurement,
};
use attribution::fit::CurvatureSettings;
use attribution::meta::fit_meta;
use attribution::scoring::shard_columns;
use burn::prelude::*;
use curvature::{EigenCurvature, GgnKind, LossKind};
use data::Split;
use foundation::progress::NoProgress;
use mnist_classifier::MnistClassifierConfig;

#[test]
fn classifier_scores_shard_exactly_self_influence_is_positive_and_files_refuse_other_settings() {
    let dev = Device::flex();
    let all = data::load_mnist(None, Split::Train).unwrap();
    let train = all.select(&(0..40).map(|i| i * 97).collect::<Vec<_>>());
    let model = MnistClassifierConfig::new()
        .with_channels_1(4)
        .with_channels_2(4)
        .with_feature_dim(8)
        .init_with(&mut foundation::rng::stream(3, 0, 0), &dev);
    let settings = CurvatureSettings { factor_draws: 2, batch: 16, ..CurvatureSettings::default() };
    let curv = fit_classifier_curvature(&model, &train, &settings, &dev, |_| {})
        .with_meta(fit_meta(&settings, LossKind::CrossEntropy));
    let names: Vec<String> = curv.infos().iter().map(|l| l.name.clone()).collect();
    assert_eq!(names, ["conv1", "conv2", "conv3", "conv4", "fc1", "fc2"]);
    assert_eq!(curv.infos(), classifier_layer_infos(&model, &dev));
    assert!(curv.eigenvalues().iter().all(|v| v.is_finite() && *v >= 0.0));

    // Queries: the first 3 training images themselves, with the cross-entropy measurement.
    let queries: Vec<f32> = (0..3).flat_map(|i| train.image(i).to_vec()).collect();
    let labels = train.labels[..3].to_vec();
    let lambdas = [1e-3, 1e-1];
    let score = |range| {
        score_classifier_range(
            &model,
            &curv,
            &queries,
            &labels,
            &train,
            range,
            ClassMeasurement::CrossEntropy,
            &lambdas,
            7,
            &dev,
            &NoProgress,
        )
    };
    let full = score(0..train.n);
    for (li, m) in full.iter().enumerate() {
        for q in 0..3 {
            let own = m[q * train.n + q];
            assert!(own > 0.0, "self-influence of query {q} at lambda {} is {own}", lambdas[li]);
        }
    }
    let mut merged = vec![Vec::new(); 3];
    for i in 0..3 {
        let part = score(shard_columns(train.n, 7, (i, 3)));
        let cols = part[0].len() / 3;
        for (q, row) in merged.iter_mut().enumerate() {
            row.extend_from_slice(&part[0][q * cols..(q + 1) * cols]);
        }
    }
    assert_eq!(merged.concat(), full[0], "shards differ from the unsharded scores");

    // The margin measurement has finite, non-zero gradients.
    let ad = dev.clone().autodiff();
    let g = classifier_gradients(&model.fork(&ad), &queries, &labels, Some(ClassMeasurement::Margin), &ad);
    let g: Vec<f32> = g.into_data().try_to_vec().unwrap();
    assert!(g.iter().all(|v| v.is_finite()) && g.iter().any(|v| *v != 0.0));

    // The factor file records its settings and refuses others.
    let path = std::env::temp_dir().join(format!("classifier-factors-{}.safetensors", std::process::id()));
    curv.save(&path).unwrap();
    let back = EigenCurvature::load(&path, Some(&curv.infos())).unwrap();
    assert_eq!(back.meta, curv.meta);
    assert_eq!(back.meta.draws, Some(2));
    back.meta.check(&path, LossKind::CrossEntropy, Some(&curv.meta)).unwrap();
    let err = back.meta.check(&path, LossKind::Mse, None).unwrap_err().to_string();
    assert!(err.contains("output loss cross-entropy"), "{err}");
    let other =
        fit_meta(&CurvatureSettings { ggn: GgnKind::Loss, ..settings.clone() }, LossKind::CrossEntropy);
    let err = back.meta.check(&path, LossKind::CrossEntropy, Some(&other)).unwrap_err().to_string();
    assert!(err.contains("GGN"), "{err}");
    let other = fit_meta(&CurvatureSettings { seed: 9, ..settings }, LossKind::CrossEntropy);
    let err = back.meta.check(&path, LossKind::CrossEntropy, Some(&other)).unwrap_err().to_string();
    assert!(err.contains("seed"), "{err}");
    std::fs::remove_file(&path).ok();
}
