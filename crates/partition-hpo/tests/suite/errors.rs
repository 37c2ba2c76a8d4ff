//! Bad input gives one clear error, never a panic.

use foundation::progress::NoProgress;
use partition_hpo::hpo::train;
use partition_hpo::HpoError;

use crate::common::{device, small_config, toy_inputs};

#[test]
fn more_partitions_than_examples_is_one_error() {
    let data = toy_inputs(2, 0, 1);
    let err =
        train(&small_config(), &data, None, &device(), &NoProgress).err().expect("C = 3 > 2 rows must fail");
    assert!(matches!(err, HpoError::TooFewExamples { partitions: 3, examples: 2 }), "{err:?}");
    let text = err.to_string();
    assert!(!text.contains('\n') && text.contains("C = 3") && text.contains("2 examples"), "{text}");
}

#[test]
fn proportions_not_summing_to_one_are_one_error() {
    let data = toy_inputs(30, 0, 1);
    let mut config = small_config();
    config.weight_proportions = vec![0.5, 0.3, 0.3];
    let err = train(&config, &data, None, &device(), &NoProgress).err().expect("sum 1.1 must fail");
    assert!(matches!(err, HpoError::BadProportions { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        !text.contains('\n') && text.contains("weight proportions") && text.contains("sum to 1"),
        "{text}"
    );

    let mut config = small_config();
    config.data_proportions = vec![0.5, 0.5];
    let err =
        train(&config, &data, None, &device(), &NoProgress).err().expect("2 entries for C = 3 must fail");
    assert!(err.to_string().contains("data proportions have 2 entries for C = 3"), "{err}");
}

#[test]
fn oots_needs_two_partitions() {
    let data = toy_inputs(30, 0, 1);
    let mut config = small_config();
    config.partitions = 1;
    config.weight_proportions = vec![1.0];
    config.data_proportions = vec![1.0];
    config.signal = Some(partition_hpo::hpo::PsiSignal::Oots);
    let err = train(&config, &data, None, &device(), &NoProgress).err().expect("C = 1 with OOTS must fail");
    assert!(err.to_string().contains("at least C = 2"), "{err}");
}

#[test]
fn initial_keep_outside_the_open_unit_interval_is_one_error() {
    let data = toy_inputs(30, 0, 1);
    for bad in [0.0, 1.0, -0.2, f64::NAN] {
        let mut config = small_config();
        config.init = partition_hpo::hpo::PsiInit::Uniform { theta_deg: 10.0, mask_keep: bad, sigma: 0.1 };
        let err = train(&config, &data, None, &device(), &NoProgress)
            .err()
            .expect("a keep of 0, 1 or NaN must fail");
        let text = err.to_string();
        assert!(!text.contains('\n') && text.contains("initial mask keep probability"), "{text}");
    }
}
