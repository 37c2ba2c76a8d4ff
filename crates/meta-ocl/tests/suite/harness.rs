//! The harness: the paired bootstrap gap, shards, and resuming a sweep.

use meta_ocl::harness::{collect, paired_gap, report, sweep, Shard};

#[test]
fn a_constant_gap_has_a_zero_width_interval() {
    let a = [0.5, 0.7, 0.2, 0.9];
    let b: Vec<f64> = a.iter().map(|x| x - 0.125).collect();
    let g = paired_gap(&a, &b, 2000, 0.95, 1).unwrap();
    assert_eq!(g.n, 4);
    assert!((g.mean - 0.125).abs() < 1e-12);
    assert!((g.ci.low - 0.125).abs() < 1e-12 && (g.ci.high - 0.125).abs() < 1e-12);
}

#[test]
fn the_gap_interval_matches_the_normal_approximation_for_many_pairs() {
    // Differences alternate +1 / -1 around 0.3 (n = 400): mean 0.3, sd 1, s.e. 0.05, so the 95 %
    // interval is 0.3 -+ 1.96 * 0.05 = [0.202, 0.398] up to bootstrap noise.
    let n = 400;
    let a: Vec<f64> = (0..n).map(|i| 0.3 + if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
    let b = vec![0.0; n];
    let g = paired_gap(&a, &b, 20_000, 0.95, 3).unwrap();
    assert!((g.mean - 0.3).abs() < 1e-12);
    assert!((g.se - 1.0 / (n as f64).sqrt() * (n as f64 / (n as f64 - 1.0)).sqrt()).abs() < 1e-9);
    assert!((g.ci.low - 0.202).abs() < 0.01, "low {}", g.ci.low);
    assert!((g.ci.high - 0.398).abs() < 0.01, "high {}", g.ci.high);
    // Same seed, same interval.
    assert_eq!(g, paired_gap(&a, &b, 20_000, 0.95, 3).unwrap());
}

#[test]
fn a_gap_of_unequal_lists_is_refused() {
    assert!(paired_gap(&[1.0, 2.0], &[1.0], 100, 0.95, 0).is_err());
    assert!(paired_gap(&[], &[], 100, 0.95, 0).is_err());
}

#[test]
fn shards_parse_and_partition_the_seeds() {
    let s = Shard::parse("1/3").unwrap();
    assert_eq!(s, Shard { index: 1, count: 3 });
    assert_eq!((0..9).filter(|&i| s.owns(i)).collect::<Vec<_>>(), vec![1, 4, 7]);
    for bad in ["3/3", "1", "a/2", "0/0"] {
        assert!(Shard::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_resumed_sweep_skips_finished_seeds_and_shards_split_the_work() {
    let dir = std::env::temp_dir().join(format!("meta-ocl-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let np = &foundation::progress::NoProgress;
    let cpu = burn::prelude::Device::flex();
    // Shard 0/2 of 3 seeds: seeds 0 and 2.
    let first = sweep(&dir, &crate::tiny_sweep(3), Shard { index: 0, count: 2 }, 2, &cpu, np).unwrap();
    let all = |seeds: &[usize]| -> Vec<(usize, Option<usize>)> {
        let mut v: Vec<_> = seeds.iter().flat_map(|&s| [(s, None), (s, Some(0)), (s, Some(1))]).collect();
        v.sort();
        v
    };
    assert_eq!(first.trained, all(&[0, 2]));
    assert!(first.skipped.is_empty());
    let before = std::fs::read(dir.join("seeds/s0/t1.json")).unwrap();
    // Simulate an interruption: seed 2 lost its second stage-2 result.
    std::fs::remove_file(dir.join("seeds/s2/t1.json")).unwrap();
    // The whole sweep now: seed 1 is new, seed 2 redoes t1 only, seed 0 is skipped.
    let second = sweep(&dir, &crate::tiny_sweep(3), Shard::ALL, 1, &cpu, np).unwrap();
    assert_eq!(second.trained, vec![(1, None), (1, Some(0)), (1, Some(1)), (2, Some(1))]);
    assert_eq!(second.skipped, vec![(0, None), (0, Some(0)), (0, Some(1)), (2, None), (2, Some(0))]);
    assert_eq!(std::fs::read(dir.join("seeds/s0/t1.json")).unwrap(), before, "finished results untouched");
    let c = collect(&dir, &crate::tiny_sweep(3)).unwrap();
    assert_eq!(c.stage1_seeds, vec![0, 1, 2]);
    assert_eq!(c.stage2_seeds, vec![0, 1, 2]);
    assert_eq!(c.stage2["d1consis"].len(), 3);
    let md = report(&dir, &crate::tiny_sweep(3), "").unwrap();
    assert!(md.contains("EM(d1consis) - EM(d2consis)"));
    assert!(
        dir.join("report.md").exists() && dir.join("em.png").exists() && dir.join("gaps_stage2.png").exists()
    );
    // Other settings in the same directory are refused.
    let mut other = crate::tiny_sweep(3);
    other.stage1.lr = 1e-3;
    assert!(sweep(&dir, &other, Shard::ALL, 1, &cpu, np).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn alias_pretraining_is_trained_in_stage_0_and_its_held_out_em_reported() {
    let dir = std::env::temp_dir().join(format!("meta-ocl-aliases-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let np = &foundation::progress::NoProgress;
    let cpu = burn::prelude::Device::flex();
    let mut cfg = crate::tiny_sweep(1);
    cfg.world.aliases = 2;
    cfg.model.tie_embeddings = true;
    sweep(&dir, &cfg, Shard::ALL, 1, &cpu, np).unwrap();
    let s0: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("stage0/stage0.json")).unwrap()).unwrap();
    // Stage 0 trained the facts and the aliases' sequences: one epoch of each, in its step count.
    let world = meta_ocl::world::World::new(&cfg.world).unwrap();
    assert_eq!(world.stage0().len(), 50 * 6 + 50 + 25 + 5 * (50 + 25));
    assert_eq!(s0["train"]["steps"].as_u64().unwrap() as usize, world.stage0().len().div_ceil(64));
    let c = collect(&dir, &cfg).unwrap();
    assert_eq!(c.stage0_aliases.keys().collect::<Vec<_>>(), ["alias_d", "alias_dq", "alias_q"]);
    assert!(c.stage0_aliases.values().all(|x| (0.0..=1.0).contains(x)));
    assert!(report(&dir, &cfg, "").unwrap().contains("Alias pretraining (2 aliases per entity)"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stage_2_replays_the_requested_share_of_stage_0_after_its_definitions() {
    let mut cfg = crate::tiny_sweep(1);
    let world = meta_ocl::world::World::new(&cfg.world).unwrap();
    let protocol = meta_ocl::world::Protocol::new(&world, 0);
    assert_eq!(
        meta_ocl::harness::stage2_data(&cfg, &world, &protocol),
        protocol.stage2,
        "default: definitions only"
    );
    cfg.stage2_replay = 0.5;
    let data = meta_ocl::harness::stage2_data(&cfg, &world, &protocol);
    let n = protocol.stage2.len();
    assert_eq!(&data[..n], &protocol.stage2[..]);
    assert_eq!(data[n..].to_vec(), meta_ocl::world::spread_share(&world.stage0(), 0.5));
    assert_eq!(data.len() - n, world.stage0().len() / 2);
    cfg.stage2_replay = 1.5;
    assert!(cfg.validate().is_err());
}
