//! Federated training: the label-skewed client split, FedAvg's aggregation of the trained
//! values, and a tiny federated run (deterministic, one trace point per round, refusals).

use foundation::progress::NoProgress;
use partition_hpo::data::label_skewed_clients;
use partition_hpo::federated::{train_federated, FederatedConfig, NetValues};
use partition_hpo::hpo::{train, PsiSignal};
use partition_hpo::model::{Draws, Mode};

use crate::common::{device, small_config, toy_inputs};

#[test]
fn label_skewed_clients_cover_every_row_once_with_two_labels_each() {
    // 10 classes x 20 rows, 10 clients: 20 chunks of 10 rows, each inside one class.
    let y: Vec<u8> = (0..200).map(|i| (i % 10) as u8).collect();
    let clients = label_skewed_clients(&y, 10, 3).unwrap();
    assert_eq!(clients.len(), 10);
    let mut seen = vec![0usize; y.len()];
    for rows in &clients {
        assert_eq!(rows.len(), 20);
        rows.iter().for_each(|&r| seen[r] += 1);
        let mut labels: Vec<u8> = rows.iter().map(|&r| y[r]).collect();
        labels.sort_unstable();
        labels.dedup();
        assert!(labels.len() <= 2, "a client sees at most two classes, got {labels:?}");
    }
    assert!(seen.iter().all(|&c| c == 1), "every row goes to exactly one client");
    assert_eq!(clients, label_skewed_clients(&y, 10, 3).unwrap(), "seeded");
    assert_ne!(clients, label_skewed_clients(&y, 10, 4).unwrap(), "another seed, another split");
    assert!(label_skewed_clients(&y, 0, 3).is_err());
    assert!(label_skewed_clients(&y, 101, 3).is_err());
}

#[test]
fn fedavg_weighs_clients_by_rows_and_loading_reproduces_the_network() {
    let dev = device();
    let data = toy_inputs(60, 0, 1);
    let a = train(&small_config(), &data, None, &dev, &NoProgress).unwrap().model;
    let b =
        train(&partition_hpo::hpo::RunConfig { seed: 8, ..small_config() }, &data, None, &dev, &NoProgress)
            .unwrap()
            .model;
    let (va, vb) = (NetValues::of(&a), NetValues::of(&b));
    let mean = NetValues::weighted_mean(&[(1.0, va.clone()), (3.0, vb.clone())]);
    for (t, m) in mean.tensors.iter().enumerate() {
        for (i, &v) in m.iter().enumerate() {
            let want = (va.tensors[t][i] as f64 + 3.0 * vb.tensors[t][i] as f64) / 4.0;
            assert!((v as f64 - want).abs() <= 1e-6 * want.abs().max(1.0), "tensor {t} entry {i}");
        }
    }
    // Loading a's values into b makes b's full network compute a's function.
    let mut b2 = b.clone();
    va.load_into(&mut b2);
    assert_eq!(NetValues::of(&b2), va);
    let x: Vec<f32> = data.x[..5 * data.d].to_vec();
    let run = |m: &partition_hpo::model::PartitionedNet| {
        let draws = Draws { u: vec![0.0; 5], ..Draws::default() };
        let use_ = partition_hpo::model::PsiUse { rotation: true, mask: true, dropout: false };
        m.forward(&x, 5, data.image, &draws, use_, false, Mode::Eval(2))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    assert_eq!(run(&b2), run(&a));
}

#[test]
fn a_tiny_federated_run_is_seeded_and_traces_every_round() {
    let dev = device();
    let data = toy_inputs(120, 0, 2);
    let config = partition_hpo::hpo::RunConfig { signal: Some(PsiSignal::Oots), ..small_config() };
    let fed = FederatedConfig { clients: 3, rounds: 3 };
    let first = train_federated(&config, &fed, &data, &dev, &NoProgress).unwrap();
    let again = train_federated(&config, &fed, &data, &dev, &NoProgress).unwrap();
    assert_eq!(NetValues::of(&first.model), NetValues::of(&again.model), "same seed, same network");
    assert_eq!(first.trace.len(), fed.rounds + 1, "the start and one point per round");
    assert_eq!(first.trace.last().unwrap().step, config.steps);
    assert!(first.final_loss.is_finite());
    // psi moved: the out-of-training-sample steps of the clients reached the global psi.
    assert_ne!(first.trace[0].theta_max_deg, first.trace[fed.rounds].theta_max_deg);
    // Fewer local steps per round than one psi step is refused, as are zero clients.
    let bad = FederatedConfig { clients: 3, rounds: config.steps };
    assert!(train_federated(&config, &bad, &data, &dev, &NoProgress).is_err());
    assert!(train_federated(&config, &FederatedConfig { clients: 0, rounds: 2 }, &data, &dev, &NoProgress)
        .is_err());
}

#[test]
fn methods_that_need_central_data_are_refused_in_a_federated_experiment() {
    use partition_hpo::experiment::{default_config, run_experiment, Method, Task};
    let out = std::env::temp_dir().join(format!("phpo-fed-refuse-{}", std::process::id()));
    for method in [Method::Grid, Method::ValSplit, Method::Laplace] {
        let mut config = default_config(Task::Rotated, &out);
        config.methods = vec![Method::Partitioned, method];
        config.federated = Some(FederatedConfig { clients: 10, rounds: 30 });
        let err = run_experiment(&config, &device(), &NoProgress, &|_| {}).unwrap_err().to_string();
        assert!(err.contains("no federated form"), "{err}");
    }
    assert!(!out.exists(), "nothing written");
}
