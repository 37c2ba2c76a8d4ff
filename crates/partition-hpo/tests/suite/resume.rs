//! An interrupted experiment resumes at its first unfinished method: finished methods are read
//! back from `results.json`, not retrained, and a directory holding other settings is refused.

use partition_hpo::experiment::{default_config, run_experiment, Method, Task};
use partition_hpo::HpoError;

#[test]
fn experiment_resumes_at_the_first_unfinished_method() {
    let dir = std::env::temp_dir().join(format!("phpo-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = default_config(Task::Noise, &dir);
    config.n_train = 60;
    config.n_test = 30;
    config.noise_features = 4;
    config.retrain = false;
    config.methods = vec![Method::None, Method::Partitioned];
    let r = &mut config.run;
    (r.steps, r.batch, r.hidden, r.psi_every, r.psi_batch) = (6, 12, vec![8], 2, 4);
    let dev = crate::common::device();
    let quiet = |_: &str| {};
    let first = run_experiment(&config, &dev, &foundation::progress::NoProgress, &quiet).unwrap();
    assert_eq!(first.len(), 2);

    // Resumed with one more method: the two finished ones come back unchanged (their recorded
    // wall seconds too, which a rerun could not reproduce), and only the new one is trained.
    // The new method in the middle, so the last one is a kept one: it must reach the files too.
    config.methods = vec![Method::None, Method::ValSplit, Method::Partitioned];
    let mut logged = std::sync::Mutex::new(Vec::new());
    let log = |line: &str| logged.lock().unwrap().push(line.to_string());
    let second = run_experiment(&config, &dev, &foundation::progress::NoProgress, &log).unwrap();
    assert_eq!(second.len(), 3);
    let kept = [&second[0], &second[2]];
    for (a, b) in first.iter().zip(kept) {
        assert_eq!(a.method, b.method);
        assert_eq!(a.seconds, b.seconds, "{} was retrained", a.method.name());
        assert_eq!(a.keep, b.keep);
    }
    let trained: Vec<String> =
        logged.get_mut().unwrap().iter().filter(|l| l.ends_with(": training")).cloned().collect();
    assert_eq!(trained, vec![format!("{}: training", Method::ValSplit.name())]);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    let methods: Vec<&str> =
        written["results"].as_array().unwrap().iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(methods, ["None", "ValSplit", "Partitioned"]);
    assert!(std::fs::read_to_string(dir.join("report.md")).unwrap().contains(Method::Partitioned.name()));

    // Other settings in the same directory: one error naming the problem, nothing overwritten.
    let before = std::fs::read(dir.join("results.json")).unwrap();
    config.run.steps = 7;
    match run_experiment(&config, &dev, &foundation::progress::NoProgress, &quiet) {
        Err(HpoError::InvalidArgument(m)) => assert!(m.contains("other settings"), "{m}"),
        other => panic!("expected a refusal, got {:?}", other.map(|r| r.len())),
    }
    assert_eq!(std::fs::read(dir.join("results.json")).unwrap(), before);
    let _ = std::fs::remove_dir_all(&dir);
}
