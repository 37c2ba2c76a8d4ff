//! End-to-end `attribute fit/score/merge` on a tiny run: exact shard merging, and clear errors
//! (nothing overwritten) for factors of another model, queries of the wrong size, and NaN.

use std::path::{Path, PathBuf};
use std::process::Command;

use attribution::npy::{read_matrix, write_matrix};
use burn::prelude::*;
use diffusion::run::{DataSpec, RunConfig};
use diffusion::train::checkpoint_dir;
use diffusion::{ModelConfig, TrainConfig, Trainer, UNetConfig};

fn attribute(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_attribute")).args(args).output().expect("run attribute");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
}

fn tiny_run(dir: &Path, channels: Vec<usize>) {
    let config = RunConfig {
        model: ModelConfig::Unet(UNetConfig {
            height: 8,
            width: 8,
            channels,
            groups: 4,
            ..UNetConfig::default()
        }),
        diffusion: Default::default(),
        train: TrainConfig { steps: 2, batch_size: 8, warmup_steps: 1, ..TrainConfig::default() },
        data: DataSpec { classes: vec![0, 1], size: 8, per_class: Some(6), ..DataSpec::default() },
    };
    config.save(dir).unwrap();
    let (_, data) = config.train_data().unwrap();
    let diffusion = config.diffusion();
    let dev = Device::flex();
    let trainer = Trainer::new(config.train.clone(), &diffusion, &data, &dev);
    let mut state = trainer.init_state(|rng, d| config.model.init_with(rng, d));
    trainer.step(&mut state);
    trainer.step(&mut state);
    trainer.save(&state, &checkpoint_dir(dir)).unwrap();
}

/// Replace the run's EMA weights with NaN.
fn corrupt_with_nan(dir: &Path) {
    use burn::module::{Module, ModuleMapper, Param};
    struct Nan;
    impl ModuleMapper for Nan {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, v, m) = param.consume();
            Param::from_mapped_value(id, v.mul_scalar(f32::NAN), m)
        }
    }
    let dev = Device::flex();
    let trained = diffusion::run::load_trained(dir, &dev).unwrap();
    let model = trained.model.map(&mut Nan);
    diffusion::checkpoint::save_module(&model, &checkpoint_dir(dir).join("ema.safetensors")).unwrap();
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `attribute score --run RUN --factors F --queries Q --out OUT EXTRA...`.
fn score(run: &Path, factors: &Path, queries: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let mut args =
        vec!["score", "--run", s(run), "--factors", s(factors), "--queries", s(queries), "--out", s(out)];
    args.extend(extra);
    attribute(&args)
}

#[test]
fn shards_merge_exactly_and_bad_inputs_are_refused() {
    let root: PathBuf = std::env::temp_dir().join(format!("attribute-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let run = root.join("run");
    tiny_run(&run, vec![8, 16]);
    let factors = root.join("f.safetensors");
    let (ok, err) =
        attribute(&["fit", "--run", s(&run), "--out", s(&factors), "--factor-draws", "1", "--batch", "16"]);
    assert!(ok, "{err}");
    let queries = root.join("q.npy");
    let q: Vec<f32> = (0..3 * 64).map(|i| ((i * 37 % 200) as f32 / 100.0) - 1.0).collect();
    write_matrix(&queries, &q, 3, 64).unwrap();
    let common =
        ["--train-draws", "2", "--query-draws", "2", "--lambda", "1e-3,1e-1", "--images-per-batch", "5"];
    let full = root.join("full.npy");
    let (ok, err) = score(&run, &factors, &queries, &full, &common);
    assert!(ok, "{err}");
    let mut shards = Vec::new();
    for i in 0..3 {
        let out = root.join(format!("shard{i}.npy"));
        let shard = format!("{i}/3");
        let mut extra = vec!["--shard", shard.as_str()];
        extra.extend(common);
        let (ok, err) = score(&run, &factors, &queries, &out, &extra);
        assert!(ok, "{err}");
        shards.push(out);
    }
    let merged = root.join("merged.npy");
    let mut args = vec!["merge", "--out", s(&merged)];
    args.extend(shards.iter().map(|p| s(p)));
    let (ok, err) = attribute(&args);
    assert!(ok, "{err}");
    let (a, ra, ca) = read_matrix(&full).unwrap();
    let (b, rb, cb) = read_matrix(&merged).unwrap();
    assert_eq!((ra, ca), (3, 12));
    assert_eq!((ra, ca), (rb, cb));
    assert_eq!(a, b, "merged shards differ from the unsharded scores");
    assert!(a.iter().all(|v| v.is_finite()) && a.iter().any(|v| *v != 0.0));

    let before = std::fs::read(&full).unwrap();
    let one_line = |ok: bool, err: &str, needle: &str| {
        assert!(!ok);
        assert!(err.starts_with("error: ") && err.trim_end().lines().count() == 1, "{err}");
        assert!(err.contains(needle), "expected '{needle}' in: {err}");
    };
    // Score files record their settings (side-car JSON); merge refuses shards out of order or
    // scored with another damping.
    let car: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("shard1.npy.json")).unwrap()).unwrap();
    assert_eq!(car["shard"], serde_json::json!([1, 3]));
    assert_eq!(car["curvature"]["loss"], "mse");
    assert_eq!(car["curvature"]["draws"], 1);
    let bad_merge = root.join("bad-merge.npy");
    let (ok, err) =
        attribute(&["merge", "--out", s(&bad_merge), s(&shards[1]), s(&shards[0]), s(&shards[2])]);
    one_line(ok, &err, "in order");
    let other_lambda = root.join("shard2-other.npy");
    let mut extra = vec!["--shard", "2/3"];
    extra.extend(common);
    let i = extra.iter().position(|a| *a == "--lambda").unwrap() + 1;
    extra[i] = "1e-2,1e-1";
    let (ok, err) = score(&run, &factors, &queries, &other_lambda, &extra);
    assert!(ok, "{err}");
    let (ok, err) =
        attribute(&["merge", "--out", s(&bad_merge), s(&shards[0]), s(&shards[1]), s(&other_lambda)]);
    one_line(ok, &err, "damping");
    assert!(!bad_merge.exists(), "a refused merge wrote its output");
    // Queries of the wrong size.
    let bad_q = root.join("bad_q.npy");
    write_matrix(&bad_q, &vec![0.0; 2 * 49], 2, 49).unwrap();
    let (ok, err) = score(&run, &factors, &bad_q, &full, &[]);
    one_line(ok, &err, "49 pixels");
    // NaN in the queries.
    let nan_q = root.join("nan_q.npy");
    let mut qn = q.clone();
    qn[5] = f32::NAN;
    write_matrix(&nan_q, &qn, 3, 64).unwrap();
    let (ok, err) = score(&run, &factors, &nan_q, &full, &[]);
    one_line(ok, &err, "NaN");
    // Factors fitted for another model.
    let other = root.join("other");
    tiny_run(&other, vec![8, 8]);
    let other_f = root.join("other.safetensors");
    assert!(attribute(&["fit", "--run", s(&other), "--out", s(&other_f), "--factor-draws", "1"]).0);
    let (ok, err) = score(&run, &other_f, &queries, &full, &[]);
    one_line(ok, &err, "another model");
    // A bad shard spec.
    let (ok, err) = score(&run, &factors, &queries, &full, &["--shard", "3/3"]);
    one_line(ok, &err, "--shard");
    // NaN in the gradients: a model whose weights were corrupted.
    let broken = root.join("broken");
    tiny_run(&broken, vec![8, 16]);
    corrupt_with_nan(&broken);
    let (ok, err) = score(&broken, &factors, &queries, &full, &[]);
    one_line(ok, &err, "NaN");
    assert_eq!(before, std::fs::read(&full).unwrap(), "a failed command overwrote the scores");
    std::fs::remove_dir_all(&root).ok();
}

/// Settings of a benchmark small enough for CI.
const TINY_LDS: [&str; 22] = [
    "--per-class",
    "12",
    "--steps",
    "40",
    "--subset-steps",
    "20",
    "--subsets",
    "4",
    "--seeds",
    "2",
    "--queries",
    "3",
    "--measure-draws",
    "50",
    "--train-draws",
    "2",
    "--query-draws",
    "4",
    "--factor-draws",
    "1",
    "--trak-dim",
    "32",
];

/// Spearman's rank correlation: Pearson correlation of average ranks (ties share their mean rank).
fn spearman_by_hand(x: &[f64], y: &[f64]) -> f64 {
    let rank = |v: &[f64]| -> Vec<f64> {
        v.iter()
            .map(|a| {
                let below = v.iter().filter(|b| *b < a).count() as f64;
                let equal = v.iter().filter(|b| *b == a).count() as f64;
                below + (equal + 1.0) / 2.0
            })
            .collect()
    };
    let (rx, ry) = (rank(x), rank(y));
    let n = rx.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let cov: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = rx.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = ry.iter().map(|b| (b - my).powi(2)).sum();
    if vx == 0.0 || vy == 0.0 {
        return 0.0;
    }
    cov / (vx * vy).sqrt()
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

/// The whole evaluation at CI size: `attribute lds` (full model, queries, M x K retrained models,
/// every method's scores, the report), a sharded rerun that reproduces the measurements exactly,
/// `attribute retrain-top`, and refusals of inconsistent input.
#[test]
fn lds_benchmark_runs_end_to_end_and_shards_reproduce_it() {
    let root: PathBuf = std::env::temp_dir().join(format!("attribute-lds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (a, b) = (root.join("a"), root.join("b"));
    let mut args = vec!["lds", "--out", s(&a)];
    args.extend(TINY_LDS);
    let (ok, err) = attribute(&args);
    assert!(ok, "{err}");
    let lds = read_json(&a.join("lds.json"));
    let results = lds["results"].as_array().unwrap();
    for method in ["ekfac", "kfac", "ekfac-reduce", "ekfac-ggn-loss", "trak", "dtrak", "grad-dot", "pixel"] {
        let rows: Vec<_> = results.iter().filter(|r| r["method"] == method).collect();
        assert!(!rows.is_empty(), "{method} missing");
        for r in rows {
            let per_query = r["per_query"].as_array().unwrap();
            assert_eq!(per_query.len(), 3);
            assert!(per_query.iter().all(|v| v.as_f64().is_some_and(|v| (-1.0..=1.0).contains(&v))), "{r}");
        }
    }
    let (scores, rows, cols) = read_matrix(&a.join("scores").join("ekfac.lambda-1e-8.npy")).unwrap();
    assert_eq!((rows, cols), (3, 24));
    assert!(scores.iter().all(|v| v.is_finite()));
    // The known answer: LDS recomputed here from the files on disk (stored scores, every retrained
    // model's measure.json) with a Spearman written independently of the library's.
    let config = read_json(&a.join("benchmark.json"));
    let (m, alpha, seed) = (
        config["subsets"].as_u64().unwrap() as usize,
        config["alpha"].as_f64().unwrap(),
        config["seed"].as_u64().unwrap(),
    );
    let subsets = attribution::lds::random_subsets(cols, m, alpha, seed);
    let measured: Vec<Vec<f64>> = (0..m)
        .map(|j| {
            let per_seed: Vec<Vec<f64>> = (0..2)
                .map(|k| {
                    let f = read_json(&a.join(format!("retrain/subset-{j:03}-seed-{k}/measure.json")));
                    f["loss"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
                })
                .collect();
            (0..rows).map(|q| (per_seed[0][q] + per_seed[1][q]) / 2.0).collect()
        })
        .collect();
    let stored =
        results.iter().find(|r| r["method"] == "ekfac" && r["lambda"].as_f64() == Some(1e-8)).unwrap();
    for q in 0..rows {
        let predicted: Vec<f64> = subsets
            .iter()
            .map(|s| (0..cols).filter(|n| !s.contains(n)).map(|n| scores[q * cols + n] as f64).sum())
            .collect();
        let outcome: Vec<f64> = measured.iter().map(|r| r[q]).collect();
        let expected = spearman_by_hand(&predicted, &outcome);
        let got = stored["per_query"][q].as_f64().unwrap();
        assert!((got - expected).abs() < 1e-9, "query {q}: lds.json says {got}, recomputed {expected}");
    }
    // The ceiling with K = 2: the split-half reliability is the Spearman-Brown step-up 2r/(1+r)
    // of the one split, seed 0 against seed 1.
    let per_seed = |k: usize| -> Vec<Vec<f64>> {
        (0..m)
            .map(|j| {
                let f = read_json(&a.join(format!("retrain/subset-{j:03}-seed-{k}/measure.json")));
                f["loss"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
            })
            .collect()
    };
    let (s0, s1) = (per_seed(0), per_seed(1));
    for q in 0..rows {
        let column = |s: &[Vec<f64>]| s.iter().map(|r| r[q]).collect::<Vec<f64>>();
        let r = spearman_by_hand(&column(&s0), &column(&s1));
        let got = lds["reliability"]["per_query"][q].as_f64().unwrap();
        let want = if r > -1.0 { (2.0 * r / (1.0 + r)).max(-1.0) } else { -1.0 };
        assert!((got - want).abs() < 1e-9, "query {q}: reliability {got}, 2r/(1+r) = {want}");
        let attainable = lds["attainable"]["per_query"][q].as_f64().unwrap();
        assert!((attainable - want.max(0.0).sqrt()).abs() < 1e-9);
    }
    assert!(lds["claims"].as_array().unwrap().len() >= 7, "every claim has a verdict");
    // The subset models' loss curve (20 steps each, 8 models).
    let curve = read_json(&a.join("loss-curve.json"));
    assert_eq!(curve["models"], 8);
    assert_eq!(curve["mean"].as_array().unwrap().len(), 20);
    for f in ["lds.md", "lds.png", "queries.png", "timing.json", "loss-curve.png"] {
        assert!(a.join(f).exists(), "{f} missing");
    }

    // The same benchmark as two job-array shards plus a final unsharded call: identical models.
    for shard in ["0/2", "1/2"] {
        let mut args = vec!["lds", "--out", s(&b), "--shard", shard];
        args.extend(TINY_LDS);
        let (ok, err) = attribute(&args);
        assert!(ok, "{err}");
    }
    let (ok, err) = attribute(&["lds", "--out", s(&b)]);
    assert!(ok, "{err}");
    // The shards trained every subset model: the unsharded call says it had nothing to continue.
    assert!(err.contains("nothing to continue"), "{err}");
    for j in 0..4 {
        for seed in 0..2 {
            let m = format!("retrain/subset-{j:03}-seed-{seed}/measure.json");
            assert_eq!(read_json(&a.join(&m)), read_json(&b.join(&m)), "{m}");
        }
    }
    assert_eq!(read_json(&a.join("lds.json")), read_json(&b.join("lds.json")));

    // Other settings in the same directory are refused; nothing is overwritten.
    let before = std::fs::read(a.join("benchmark.json")).unwrap();
    let (ok, err) = attribute(&["lds", "--out", s(&a), "--subsets", "5"]);
    assert!(!ok && err.contains("other settings"), "{err}");
    assert_eq!(std::fs::read(a.join("benchmark.json")).unwrap(), before);

    // Retraining without top influences.
    let retrain_top = [
        "retrain-top",
        "--out",
        s(&a),
        "--top-queries",
        "2",
        "--methods",
        "ekfac,random",
        "--fractions",
        "0.1",
    ];
    let (ok, err) = attribute(&retrain_top);
    assert!(ok, "{err}");
    let top = read_json(&a.join("retrain-top.json"));
    // Rerunning finds every retrained model on disk, says so, and rebuilds the same report.
    let (ok, err) = attribute(&retrain_top);
    assert!(ok && err.contains("nothing to continue"), "{err}");
    assert_eq!(read_json(&a.join("retrain-top.json")), top);
    assert_eq!(top["results"].as_array().unwrap().len(), 2);
    assert!(top["results"][0]["mean"].as_f64().unwrap().is_finite());
    // EK-FAC minus random, paired over the 2 queries, with its interval.
    let paired = top["paired"].as_array().unwrap();
    assert_eq!(paired.len(), 1);
    let d = &paired[0]["difference"];
    let (mean, low, high) =
        (d["mean"].as_f64().unwrap(), d["ci"]["low"].as_f64().unwrap(), d["ci"]["high"].as_f64().unwrap());
    assert!(low <= mean && mean <= high, "{d}");
    let (ok, err) = attribute(&["retrain-top", "--out", s(&a), "--methods", "nope"]);
    assert!(!ok && err.contains("unknown method"), "{err}");
    let (ok, err) = attribute(&["retrain-top", "--out", s(&root.join("empty"))]);
    assert!(!ok && err.contains("no benchmark"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn methods_round_trip_through_their_names() {
    use attribution::benchmark::Method;
    for m in Method::ALL {
        assert_eq!(m.name().parse::<Method>(), Ok(m));
        assert_eq!(serde_json::to_value(m).unwrap(), serde_json::json!(m.name()));
        assert_eq!(m.is_damped(), m.default_lambda(100).is_some(), "{m}");
    }
    assert!("ekfac2".parse::<Method>().unwrap_err().contains("unknown method 'ekfac2'"));
}

#[test]
fn shards_tile_the_training_set_on_batch_boundaries() {
    use attribution::scoring::shard_columns;
    for (n_train, per_batch, shards) in [(24, 8, 2), (25, 8, 3), (7, 3, 5), (10, 4, 1)] {
        let ranges: Vec<_> = (0..shards).map(|i| shard_columns(n_train, per_batch, (i, shards))).collect();
        assert_eq!(ranges[0].start, 0);
        assert_eq!(ranges.last().unwrap().end, n_train);
        for w in ranges.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        // Every shard but the last starts and ends on a batch boundary.
        for r in &ranges {
            assert_eq!(r.start % per_batch, 0, "{r:?}");
        }
    }
}
