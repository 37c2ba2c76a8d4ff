//! MD references: runs are reproducible, pairs round-trip through their file, populations and
//! the run refuse bad input.

use timewarp::isomers::IsomerTable;
use timewarp::md::Langevin;
use timewarp::reference::{pairs, populations, run_md, write_pairs, MdConfig, PairsHeader};
use timewarp::run::{run, RunConfig};

fn cfg() -> MdConfig {
    MdConfig {
        composition: "A5B2".into(),
        langevin: Langevin { dt: 0.005, gamma: 1.0, kt: 0.15 },
        stride: 20,
        frames: 50,
        runs: 2,
        burn_in: 100,
        seed: 3,
    }
}

#[test]
fn md_runs_are_reproducible_and_pairs_round_trip() {
    let c = cfg();
    let a = run_md(&c).unwrap();
    let b = run_md(&c).unwrap();
    assert_eq!(a.runs, b.runs);
    assert_ne!(a.runs[0], a.runs[1], "two runs drew the same noise");
    let dir = std::env::temp_dir().join(format!("timewarp-pairs-{}", std::process::id()));
    let path = dir.join("pairs.safetensors");
    let lag = 5;
    let n = write_pairs(&path, &c, &a, lag).unwrap();
    assert_eq!(n, 2 * (50 - lag));
    let f = foundation::tensor_file::load::<PairsHeader>(&path, "timewarp-pairs").unwrap();
    assert_eq!(f.header.tau_steps, lag * c.stride);
    assert_eq!(f.header.types, vec![0, 0, 0, 0, 0, 1, 1]);
    let x0 = f.f64("x0", Some(&[n, 7, 2])).unwrap();
    let x1 = f.f64("x1", Some(&[n, 7, 2])).unwrap();
    assert_eq!((x0.clone(), x1.clone()), pairs(&a, lag));
    // Within a run, x(t + τ) of pair t is x(t) of pair t + lag.
    assert_eq!(&x1[..14], &x0[lag * 14..(lag + 1) * 14]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn populations_of_a_known_series() {
    let t = IsomerTable { energies: vec![-2.0, -1.0], tol: 0.1 };
    let mut q = vec![-2.0; 600];
    q.extend(vec![-1.0; 300]);
    q.extend(vec![5.0; 100]);
    let p = populations(&t, &q, 0);
    assert_eq!(p.fractions, vec![0.6, 0.3]);
    // One long block each: the bootstrap sees the correlation and reports a large sigma.
    assert!(p.sigma[0] > 0.05, "sigma {:?}", p.sigma);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let mut c = cfg();
    c.langevin.dt = -1.0;
    assert!(run_md(&c).unwrap_err().to_string().contains("dt"));
    let mut c = cfg();
    c.composition = "C7".into();
    assert!(run_md(&c).is_err());
    let rc =
        RunConfig { md: cfg(), lag: 0, out_dir: std::env::temp_dir().join("timewarp-never"), flow: None };
    // A bad composition or flow stage is refused before any work starts.
    let mut md = cfg();
    md.composition = "A3C".into();
    let rc2 = RunConfig { md, lag: 5, out_dir: std::env::temp_dir().join("timewarp-never"), flow: None };
    assert!(run(&rc2, &foundation::progress::NoProgress, &mut |_| panic!("work started")).is_err());
    let stage = timewarp::run::FlowStage {
        train: timewarp::train::FlowTrainConfig {
            flow: timewarp::flow::FlowConfig::default(),
            steps: 10,
            batch_size: 8,
            lr: 1e-3,
            seed: 0,
            hop_fraction: 0.0,
        },
        mh_batch: 0,
        adapt_batch: false,
        mh_trials: 10,
        explore_steps: 10,
        explore_cap_kt: 20.0,
        explore_chains: 1,
        explore_from_md: false,
        explore_hop_fraction: None,
        finetune: None,
        mix: None,
        align_permutations: false,
        explore_train_kt: None,
        explore_md_frames: 0,
        train_kt: None,
        mix_train_kt: None,
    };
    let rc3 = RunConfig {
        md: cfg(),
        lag: 5,
        out_dir: std::env::temp_dir().join("timewarp-never"),
        flow: Some(stage),
    };
    let e = run(&rc3, &foundation::progress::NoProgress, &mut |_| panic!("work started")).unwrap_err();
    assert!(e.to_string().contains("MH batch"), "{e}");
    // A mixture weight outside [0, 1] is refused before any work.
    let mut rc4 = rc3.clone();
    if let Some(s) = rc4.flow.as_mut() {
        s.mh_batch = 4;
        s.mix = Some(timewarp::run::MixStage { weight: 1.5, hop_fraction: 1.0 });
    }
    let e = run(&rc4, &foundation::progress::NoProgress, &mut |_| panic!("work started")).unwrap_err();
    assert!(e.to_string().contains("mixture weight"), "{e}");
    assert!(run(&rc, &foundation::progress::NoProgress, &mut |_| {})
        .unwrap_err()
        .to_string()
        .contains("lag"));
}

#[test]
fn speedup_counts_a_missed_state_as_zero_and_plots_check_their_input() {
    use timewarp::reference::Populations;
    use timewarp::run::{cv_box, speedup, ChainResult};
    let chain = |fractions: Vec<f64>, ess_per_second: f64| ChainResult {
        method: String::new(),
        length: 1,
        seconds: 1.0,
        populations: Populations { sigma: vec![0.0; fractions.len()], fractions, block: 1 },
        ess_slowest: (1.0, 0),
        ess_per_second,
        js_vs_md: 0.0,
        acceptance: 1.0,
        seconds_to_all_isomers: None,
        histogram: vec![],
        cv_box: ([0.0; 2], [1.0; 2]),
    };
    let md = chain(vec![0.9, 0.095, 0.005], 10.0);
    assert_eq!(speedup(&chain(vec![0.8, 0.2, 0.0], 50.0), &md), 5.0, "a state under 1 % may be missed");
    assert_eq!(speedup(&chain(vec![1.0, 0.0, 0.0], 50.0), &md), 0.0);
    // Population distances: |0.8 − 0.9| over √(0.03² + 0.04²) = 0.05 is 2, over 0.04 is 2.5.
    let with_sigma = |fractions: Vec<f64>, sigma: Vec<f64>| ChainResult {
        populations: Populations { fractions, sigma, block: 1 },
        ..chain(vec![], 1.0)
    };
    let md_s = with_sigma(vec![0.9, 0.1], vec![0.04, 0.01]);
    let (zc, zm) = timewarp::run::population_z(&with_sigma(vec![0.8, 0.1], vec![0.03, 0.0]), &md_s);
    assert!((zc - 2.0).abs() < 1e-12 && (zm - 2.5).abs() < 1e-12, "{zc} {zm}");
    assert_eq!(timewarp::run::population_z(&md_s, &md_s), (0.0, 0.0));
    let (lo, hi) = cv_box(&[[0.0, 1.0], [1.0, 3.0]]);
    assert!((lo[0] + 0.05).abs() < 1e-12 && (hi[1] - 3.1).abs() < 1e-12);
    let dir = std::env::temp_dir().join(format!("timewarp-plot-{}", std::process::id()));
    let path = dir.join("f.png");
    assert!(timewarp::plot::free_energy_png(&path, &[vec![0.0; 3]], 2).is_err());
    timewarp::plot::free_energy_png(&path, &[vec![0.5, 0.25, 0.25, 0.0], vec![0.25; 4]], 2).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() > 0);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn isomer_tables_join_without_duplicates() {
    let a = IsomerTable { energies: vec![-12.53, -11.50], tol: 0.02 };
    let b = IsomerTable { energies: vec![-12.525, -11.47, -11.30], tol: 0.02 };
    let u = a.union(&b);
    // -12.525 is a's -12.53; -11.47 and -11.30 are new; ascending, a's tolerance.
    assert_eq!(u.energies, vec![-12.53, -11.50, -11.47, -11.30]);
    assert_eq!(u.tol, 0.02);
    assert_eq!(a.union(&a), a);
    assert_eq!(IsomerTable { energies: vec![], tol: 0.02 }.union(&b).energies, b.energies);
}

/// MD hot enough to visit several minima of a 7-atom cluster within a few hundred frames.
fn hot() -> MdConfig {
    MdConfig {
        composition: "lj7".into(),
        langevin: Langevin { kt: 0.35, ..cfg().langevin },
        frames: 300,
        runs: 1,
        ..cfg()
    }
}

#[test]
fn md_time_to_all_continues_run_zero_and_counts_its_frames() {
    use timewarp::reference::{describe, md_time_to_all};
    let c = hot();
    let frames = run_md(&c).unwrap();
    let q = describe(&frames.cluster, &frames.runs[0]).quenched;
    let table = IsomerTable::from_energies(&q, 0.02, 0.0);
    assert!(table.energies.len() >= 3, "only {} minima at kT 0.35", table.energies.len());
    // The frame after which run 0 had seen every minimum of its own table.
    let mut seen = vec![false; table.energies.len()];
    let mut first_all = None;
    for (i, &e) in q.iter().enumerate() {
        if let Some(k) = table.classify(e) {
            seen[k] = true;
        }
        if first_all.is_none() && seen.iter().all(|&s| s) {
            first_all = Some(i + 1);
        }
    }
    let t = md_time_to_all(&c, &table, 10 * c.frames).unwrap();
    assert_eq!(t.frames_to_all, first_all, "not run 0's trajectory");
    let secs = t.seconds.unwrap();
    assert!(secs > 0.0 && secs <= t.md_seconds, "{secs} of {}", t.md_seconds);
    // A minimum MD never reaches: no time, the whole budget simulated and reported.
    let never = table.union(&IsomerTable { energies: vec![40.0], tol: 0.02 });
    let t = md_time_to_all(&c, &never, 2500).unwrap();
    assert_eq!((t.seconds, t.frames_to_all, t.frames), (None, None, 2500));
    assert!(t.md_seconds > 0.0);
    let mut bad = c.clone();
    bad.langevin.kt = -1.0;
    assert!(md_time_to_all(&bad, &table, 10).is_err());
}

#[test]
fn exploration_ratio_is_exact_or_a_lower_bound() {
    use timewarp::reference::MdTimeToAll;
    use timewarp::run::exploration_ratio;
    let found = MdTimeToAll { seconds: Some(0.5), frames_to_all: Some(100), frames: 2000, md_seconds: 10.0 };
    let r = exploration_ratio(&found, Some(0.05)).unwrap();
    assert!((r.0 - 10.0).abs() < 1e-12 && !r.1);
    let missed = MdTimeToAll { seconds: None, frames_to_all: None, frames: 2000, md_seconds: 2.0 };
    let r = exploration_ratio(&missed, Some(0.1)).unwrap();
    assert!((r.0 - 20.0).abs() < 1e-12 && r.1, "MD's budget over exploration's time, flagged");
    assert_eq!(exploration_ratio(&found, None), None);
}

/// A run of `stage` on the test cluster whose checks must refuse it before any work.
fn never_started(stage: &timewarp::run::FlowStage) -> RunConfig {
    RunConfig {
        md: cfg(),
        lag: 5,
        out_dir: std::env::temp_dir().join("timewarp-never"),
        flow: Some(stage.clone()),
    }
}

fn flow_stage() -> timewarp::run::FlowStage {
    timewarp::run::FlowStage {
        train: timewarp::train::FlowTrainConfig {
            flow: timewarp::flow::FlowConfig::default(),
            steps: 10,
            batch_size: 8,
            lr: 1e-3,
            seed: 0,
            hop_fraction: 0.0,
        },
        mh_batch: 4,
        adapt_batch: false,
        mh_trials: 10,
        explore_steps: 10,
        explore_cap_kt: 20.0,
        explore_chains: 1,
        explore_from_md: false,
        explore_hop_fraction: Some(1.0),
        finetune: None,
        mix: None,
        align_permutations: false,
        explore_train_kt: None,
        explore_md_frames: 0,
        train_kt: None,
        mix_train_kt: None,
    }
}

#[test]
fn the_exploration_and_mh_flows_train_on_pairs_at_the_requested_kt() {
    use timewarp::reference::describe;
    use timewarp::run::{explore_training_md, hop_pair_set, mh_training_md};
    let run_md_cfg = MdConfig { langevin: Langevin { kt: 0.1, ..hot().langevin }, ..hot() };
    let mut stage = flow_stage();
    assert_eq!(explore_training_md(&run_md_cfg, &stage), None, "unset: the run's own pairs");
    assert_eq!(mh_training_md(&run_md_cfg, &stage), None, "unset: the run's own pairs");
    stage.explore_train_kt = Some(0.1);
    stage.train_kt = Some(0.1);
    assert_eq!(explore_training_md(&run_md_cfg, &stage), None, "the run's kT: its own pairs");
    assert_eq!(mh_training_md(&run_md_cfg, &stage), None, "the run's kT: its own pairs");
    // Each flag moves its own flows only.
    stage.train_kt = Some(0.35);
    assert_eq!(explore_training_md(&run_md_cfg, &stage), None, "--train-kt leaves exploration alone");
    let m = mh_training_md(&run_md_cfg, &stage).unwrap();
    stage.train_kt = None;
    stage.explore_train_kt = Some(0.35);
    assert_eq!(mh_training_md(&run_md_cfg, &stage), None, "--explore-train-kt leaves the MH flows alone");
    let c = explore_training_md(&run_md_cfg, &stage).unwrap();
    assert_eq!(c, m, "both flows' reference at kT 0.35 is the same MD");
    assert_eq!(c.langevin.kt, 0.35);
    assert_eq!(MdConfig { langevin: run_md_cfg.langevin, ..c.clone() }, run_md_cfg, "only kT changes");
    // The pairs built from it are those of MD at kT 0.35: hotter frames, so a higher mean U
    // than the run's kT 0.1 gives, and the hop flags follow the table.
    let set_of = |c: &MdConfig| {
        let f = run_md(c).unwrap();
        let q: Vec<Vec<f64>> = f.runs.iter().map(|r| describe(&f.cluster, r).quenched).collect();
        let table = IsomerTable::from_energies(&q.concat(), 0.02, 0.0);
        let set = hop_pair_set(&f, &q, &table, 5, false);
        let hops = timewarp::run::pair_isomers(&table, &q, 5).iter().filter(|(a, b)| a != b).count();
        (f, set, hops)
    };
    let (hot_f, hot_set, hot_hops) = set_of(&c);
    let (_, cold_set, _) = set_of(&run_md_cfg);
    assert_eq!(hot_set.x0, pairs(&hot_f, 5).0, "x(t) of the pairs are the kT 0.35 frames");
    assert_eq!(hot_set.hop.iter().filter(|&&h| h).count(), hot_hops);
    assert!(hot_hops > 0, "no hop pairs at kT 0.35");
    let mean_u = |s: &timewarp::train::PairSet| {
        use timewarp::potential::Potential;
        let cl = timewarp::lj::LjCluster::parse("lj7").unwrap();
        let n = s.len();
        s.x0.chunks_exact(14).map(|x| cl.energy(x)).sum::<f64>() / n as f64
    };
    assert!(mean_u(&hot_set) > mean_u(&cold_set) + 0.5, "{} vs {}", mean_u(&hot_set), mean_u(&cold_set));
}

#[test]
fn an_mh_training_kt_is_checked_before_any_work() {
    let mut stage = flow_stage();
    let rc = never_started;
    for bad in [-0.1, 0.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        stage.train_kt = Some(bad);
        let e =
            run(&rc(&stage), &foundation::progress::NoProgress, &mut |_| panic!("work started")).unwrap_err();
        assert!(e.to_string().contains("MH flows' training kT"), "{e}");
    }
    // Unlike the exploration's, it needs no separate flow.
    stage.train_kt = Some(0.2);
    stage.explore_hop_fraction = None;
    assert!(stage.validate().is_ok());
    // The mixture's hop flow's training kT: finite, > 0, and only with a mixture.
    stage.mix = Some(timewarp::run::MixStage { weight: 0.1, hop_fraction: 1.0 });
    for bad in [-0.1, 0.0, f64::NAN, f64::INFINITY] {
        stage.mix_train_kt = Some(bad);
        let e =
            run(&rc(&stage), &foundation::progress::NoProgress, &mut |_| panic!("work started")).unwrap_err();
        assert!(e.to_string().contains("hop flow's training kT"), "{e}");
    }
    stage.mix_train_kt = Some(0.2);
    assert!(stage.validate().is_ok());
    stage.mix = None;
    let e = run(&rc(&stage), &foundation::progress::NoProgress, &mut |_| panic!("work started")).unwrap_err();
    assert!(e.to_string().contains("needs a mixture"), "{e}");
}

#[test]
fn the_mixtures_hop_flow_follows_its_own_training_kt_else_the_mh_flows() {
    use timewarp::run::{mh_training_md, mix_training_md, MixStage};
    let run_md_cfg = MdConfig { langevin: Langevin { kt: 0.1, ..hot().langevin }, ..hot() };
    let at = |t: f64| MdConfig { langevin: Langevin { kt: t, ..run_md_cfg.langevin }, ..run_md_cfg.clone() };
    let mut stage = flow_stage();
    stage.train_kt = Some(0.35);
    assert_eq!(mix_training_md(&run_md_cfg, &stage), None, "no mixture, no hop flow");
    stage.mix = Some(MixStage { weight: 0.1, hop_fraction: 1.0 });
    assert_eq!(mix_training_md(&run_md_cfg, &stage), Some(at(0.35)), "unset: the MH flows' kT");
    stage.mix_train_kt = Some(0.2);
    assert_eq!(mix_training_md(&run_md_cfg, &stage), Some(at(0.2)));
    assert_eq!(mh_training_md(&run_md_cfg, &stage), Some(at(0.35)), "the likelihood flow keeps --train-kt");
    stage.mix_train_kt = Some(0.1);
    assert_eq!(mix_training_md(&run_md_cfg, &stage), None, "the run's kT: its own pairs");
    stage.train_kt = None;
    stage.mix_train_kt = None;
    assert_eq!(mix_training_md(&run_md_cfg, &stage), None, "both unset: the run's own pairs");
}

#[test]
fn an_exploration_training_kt_is_checked_before_any_work() {
    let mut stage = flow_stage();
    let rc = never_started;
    for bad in [-0.1, 0.0, f64::NAN, f64::INFINITY] {
        stage.explore_train_kt = Some(bad);
        let e =
            run(&rc(&stage), &foundation::progress::NoProgress, &mut |_| panic!("work started")).unwrap_err();
        assert!(e.to_string().contains("training kT"), "{e}");
    }
    stage.explore_train_kt = Some(0.2);
    stage.explore_hop_fraction = None;
    let e = run(&rc(&stage), &foundation::progress::NoProgress, &mut |_| panic!("work started")).unwrap_err();
    assert!(e.to_string().contains("separate exploration flow"), "{e}");
}
