//! UCI loader, normalisation and centred subsampling; bad input gives clear one-line errors, in the
//! library and in the `igp` binary.

use crate::common;

use faer::Mat;
use gp::estimator::EstimatorKind;
use gp::kernel::{Hyperparameters, KernelKind, KernelSystem};
use gp::solvers::{cholesky_with_jitter, SolveOptions, Solver};
use gp::train::{train, TrainConfig};
use gp::{uci, GpError};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn mean_std(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    (m, (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt())
}

#[test]
fn embedded_pol_loads_splits_and_normalises_with_training_statistics() {
    let data = uci::load("pol", None).unwrap();
    assert_eq!((data.x.nrows(), data.x.ncols(), data.y.len()), (600, 26, 600));
    let raw = data.split(0).unwrap();
    let test_count = data.test_mask.iter().filter(|m| m[0]).count();
    assert_eq!(raw.y_test.len(), test_count);
    assert_eq!(raw.y_train.len() + raw.y_test.len(), 600);
    let (split, stats) = uci::normalise(&raw);
    let (m, s) = mean_std(&split.y_train);
    assert!(m.abs() < 1e-12 && (s - 1.0).abs() < 1e-12, "train y mean {m} std {s}");
    // Test targets use the training statistics.
    for (z, y) in split.y_test.iter().zip(&raw.y_test) {
        assert!((z * stats.y_std + stats.y_mean - y).abs() < 1e-9);
    }
    assert!(matches!(data.split(10), Err(GpError::InvalidArgument(_))));
}

#[test]
fn centred_subsample_keeps_the_nearest_neighbours_of_the_centre() {
    let data = uci::load("pol", None).unwrap();
    let (split, _) = uci::normalise(&data.split(0).unwrap());
    let centre = 17;
    let (train_rows, test_rows) = uci::centred_subsample_rows(&split, 100, centre).unwrap();
    assert_eq!(train_rows.len(), 100);
    assert!(train_rows.contains(&centre));
    let d = split.x_train.ncols();
    let dist = |x: &Mat<f64>, i: usize| {
        (0..d).map(|j| (x[(i, j)] - split.x_train[(centre, j)]).powi(2)).sum::<f64>()
    };
    let kept_max = train_rows.iter().map(|&i| dist(&split.x_train, i)).fold(0.0, f64::max);
    let dropped_min = (0..split.x_train.nrows())
        .filter(|i| !train_rows.contains(i))
        .map(|i| dist(&split.x_train, i))
        .fold(f64::INFINITY, f64::min);
    assert!(kept_max <= dropped_min, "kept {kept_max} > dropped {dropped_min}");
    assert!(test_rows.len() >= 10);
    // Same seed, same subset; the prepared subset is re-standardised.
    let a = uci::prepare(&data, 0, Some(100), &mut ChaCha8Rng::seed_from_u64(1)).unwrap().0;
    let b = uci::prepare(&data, 0, Some(100), &mut ChaCha8Rng::seed_from_u64(1)).unwrap().0;
    assert_eq!(a.y_train, b.y_train);
    let (m, s) = mean_std(&a.y_train);
    assert!(m.abs() < 1e-12 && (s - 1.0).abs() < 1e-12);
}

fn one_line(err: &GpError) -> String {
    let text = err.to_string();
    assert!(!text.contains('\n'), "multi-line error: {text}");
    text
}

#[test]
fn bad_input_gives_a_clear_error() {
    let (x, mut y) = common::synthetic(50, 2, 1);
    let config = TrainConfig { steps: 1, num_probes: 4, num_features: 20, ..TrainConfig::default() };

    // NaN in targets and in inputs.
    y[3] = f64::NAN;
    let err = train(x.as_ref(), &y, &config, |_| {}).unwrap_err();
    assert!(one_line(&err).contains("training targets"), "{err}");
    y[3] = 0.0;
    let mut bad_x = x.clone();
    bad_x[(4, 1)] = f64::INFINITY;
    let err = train(bad_x.as_ref(), &y, &config, |_| {}).unwrap_err();
    assert!(matches!(err, GpError::NonFinite { .. }) && one_line(&err).contains("training inputs"), "{err}");

    // Mismatched dimensions: targets, length scales, right-hand sides, warm start.
    let err = train(x.as_ref(), &y[..49], &config, |_| {}).unwrap_err();
    assert!(matches!(err, GpError::DimensionMismatch { expected: 50, found: 49, .. }), "{err}");
    let three = Hyperparameters::ones(3);
    let err = KernelSystem::new(x.as_ref(), KernelKind::Matern32, &three).unwrap_err();
    assert!(one_line(&err).contains("length scales"), "{err}");
    let system = KernelSystem::new(x.as_ref(), KernelKind::Matern32, &Hyperparameters::ones(2)).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let err =
        Solver::cg().solve(&system, Mat::zeros(49, 2).as_ref(), None, &SolveOptions::default(), &mut rng);
    assert!(matches!(err, Err(GpError::DimensionMismatch { .. })));
    let err = Solver::cg().solve(
        &system,
        Mat::zeros(50, 2).as_ref(),
        Some(Mat::zeros(50, 3).as_ref()),
        &SolveOptions::default(),
        &mut rng,
    );
    assert!(matches!(err, Err(GpError::DimensionMismatch { expected: 2, found: 3, .. })));
    let negative = Hyperparameters { noise_scale: -1.0, ..Hyperparameters::ones(2) };
    assert!(matches!(
        KernelSystem::new(x.as_ref(), KernelKind::Rbf, &negative),
        Err(GpError::InvalidArgument(_))
    ));

    // Unknown dataset.
    let err = uci::load("protein-xl", None).unwrap_err();
    assert!(matches!(err, GpError::UnknownDataset(_)) && one_line(&err).contains("protein-xl"), "{err}");

    // Not positive definite even with the largest jitter.
    let indefinite = Mat::from_fn(2, 2, |i, j| if i == j { 1.0 } else { 2.0 });
    let err = cholesky_with_jitter(&indefinite, "test matrix", 1e-6).map(|_| ()).unwrap_err();
    assert!(matches!(err, GpError::NotPositiveDefinite { .. }), "{err}");
    assert!(one_line(&err).contains("test matrix is not positive definite"), "{err}");
    // A singular PSD matrix is rescued by jitter.
    let singular = Mat::from_fn(3, 3, |_, _| 1.0);
    assert!(cholesky_with_jitter(&singular, "ones", 1e-6).is_ok());

    // Exact estimator config with bad learning rate.
    let bad = TrainConfig { learning_rate: f64::NAN, estimator: EstimatorKind::Exact, ..config };
    assert!(matches!(train(x.as_ref(), &y, &bad, |_| {}), Err(GpError::InvalidArgument(_))));
}

#[test]
fn igp_binary_fits_embedded_data_and_reports_bad_input_in_one_line() {
    let exe = env!("CARGO_BIN_EXE_igp");
    let dir = std::env::temp_dir().join(format!("igp-test-{}", std::process::id()));
    let out = dir.join("fit.json");
    let status = std::process::Command::new(exe)
        .args([
            "fit",
            "--embedded",
            "--subsample",
            "150",
            "--steps",
            "3",
            "--probes",
            "8",
            "--features",
            "100",
        ])
        .args(["--solver", "cg", "--estimator", "pathwise", "--warm-start", "--quiet", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(status.status.success(), "igp fit failed: {}", String::from_utf8_lossy(&status.stderr));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(report["records"].as_array().unwrap().len(), 3);
    assert_eq!(report["n_train"], 150);
    assert!(report["pathwise_metrics"]["log_likelihood"].is_number());
    assert!(report["exact_metrics"]["rmse"].is_number());
    std::fs::remove_dir_all(&dir).ok();

    for args in [
        vec!["fit", "--embedded", "--dataset", "nosuch"],
        vec!["fit", "--data-dir", "/nonexistent/igp-data", "--steps", "1"],
        vec!["fit", "--embedded", "--solver", "gmres"],
        vec!["fit", "--embedded", "--split", "12", "--steps", "1"],
    ] {
        let output = std::process::Command::new(exe).args(&args).output().unwrap();
        assert!(!output.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: expected a one-line error, got:\n{stderr}");
        assert!(lines[0].starts_with("igp: error:"), "{args:?}: {}", lines[0]);
        assert!(!stderr.contains("panicked"), "{args:?} panicked");
    }
}

/// `igp bench` per solver into two directories, then `igp report` merges them: the summary has
/// one speed-up row per variant and solver, the speed-up of standard/cold against itself is 1, and
/// a file that is not a bench.json is refused in one line.
#[test]
fn igp_report_merges_bench_runs() {
    let exe = env!("CARGO_BIN_EXE_igp");
    let dir = std::env::temp_dir().join(format!("igp-report-{}", std::process::id()));
    let tiny = ["--embedded", "--subsample", "120", "--steps", "2", "--probes", "4", "--features", "50"];
    // cg, ap, and a rerun of cg's early-stopping runs only, which must replace the first ones.
    for (name, solver, extra) in
        [("cg", "cg", None), ("ap", "ap", None), ("cg-es", "cg", Some("--skip-tolerance"))]
    {
        let out = std::process::Command::new(exe)
            .args(["bench", "--datasets", "pol", "--solvers", solver, "--budgets", "3", "--out-dir"])
            .arg(dir.join(name))
            .args(tiny)
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "igp bench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let md_path = dir.join("report.md");
    let out = std::process::Command::new(exe)
        .args(["report", "--out"])
        .arg(&md_path)
        .arg(dir.join("cg/bench.json"))
        .arg(dir.join("ap/bench.json"))
        .arg(dir.join("cg-es/bench.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "igp report failed: {}", String::from_utf8_lossy(&out.stderr));
    let md = std::fs::read_to_string(&md_path).unwrap();
    for solver in ["cg", "ap"] {
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| {solver}, pathwise + warm start |")))
            .unwrap_or_else(|| panic!("no {solver} row in:\n{md}"));
        assert!(row.contains('x') && !row.contains("n/a"), "{row}");
        assert!(md.lines().any(|l| l.starts_with(&format!("| {solver}, 3 |"))), "no early-stopping row");
    }
    // Standard/cold is its own reference: the table of all runs shows 1.0 for it.
    let base_rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| pol | cg | standard | no |")).collect();
    assert_eq!(base_rows.len(), 1, "{md}");
    assert!(base_rows[0].trim_end().ends_with("| 1.0 | 1.0 |"), "{}", base_rows[0]);
    // The rerun replaced cg's early-stopping runs instead of adding to them.
    assert_eq!(md.lines().filter(|l| l.starts_with("| pol | cg | 3 | no |")).count(), 1, "{md}");
    // The exact baseline appears once although every bench ran it.
    assert_eq!(md.lines().filter(|l| l.starts_with("| pol | 120 |")).count(), 1, "{md}");

    let bad = std::process::Command::new(exe)
        .args(["report", "--out"])
        .arg(dir.join("x.md"))
        .arg(&md_path)
        .output();
    let bad = bad.unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not a bench.json"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}
