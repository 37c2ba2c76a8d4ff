//! The controls and EM over training: tag–consistency counts, swapped tag roles, the epochs of
//! the evaluations during training, chunked training equal to unchunked, and the controls run.

use std::collections::BTreeMap;

use burn::prelude::*;
use meta_ocl::controls::{controls, controls_report, run_controls, ControlSettings};
use meta_ocl::harness::{collect, report, sweep, Shard, SweepConfig};
use meta_ocl::model::ModelConfig;
use meta_ocl::train::{eval_epochs, train_stage, EvalSchedule, StageConfig, Start};
use meta_ocl::world::{Protocol, ProtocolConfig, Subset, World, WorldConfig};

fn world(entities: usize) -> World {
    World::new(&WorldConfig { entities, ..WorldConfig::default() }).expect("valid world")
}

/// Stage-1 definitions read from the training sequences: `(tag index 1..3, consistent)` counts
/// as `[[tag1 consistent, tag1 inconsistent], [tag2 consistent, tag2 inconsistent]]`.
fn stage1_definition_counts(w: &World, p: &Protocol) -> [[usize; 2]; 2] {
    let v = &w.vocab;
    let mut counts = [[0; 2]; 2];
    for s in p.stage1.iter().filter(|s| v.is_tag(s[1])) {
        let e = (0..p.variable.len()).find(|&e| p.variable[e][..] == s[2..4]).expect("known variable");
        let tag = p.tags.iter().position(|&t| t == s[1]).expect("one of the three tags");
        assert!(tag < 2, "no tag 3 in stage 1");
        let consistent = s[4] == v.entity(e);
        counts[tag][usize::from(!consistent)] += 1;
    }
    counts
}

#[test]
fn tag_consistency_sets_the_counts_of_consistent_and_inconsistent_definitions_per_tag() {
    // 400 entities: 100 in qd1consis and 100 in qd2incons.
    let w = world(400);
    for (c, want) in [(1.0, [[100, 0], [0, 100]]), (0.5, [[50, 50], [50, 50]]), (0.75, [[75, 25], [25, 75]])]
    {
        for seed in [0, 5] {
            let cfg = ProtocolConfig { tag_consistency: c, ..ProtocolConfig::default() };
            let p = Protocol::with(&w, seed, &cfg);
            let counts = stage1_definition_counts(&w, &p);
            assert_eq!(counts, want, "c = {c}, seed {seed}");
            // P(consistent | tag 1) = c.
            assert_eq!(counts[0][0] as f64 / (counts[0][0] + counts[0][1]) as f64, c);
            // Everything but the stage-1 definitions' tags is the authors' protocol.
            let base = Protocol::new(&w, seed);
            assert_eq!(p.stage2, base.stage2, "stage 2 unchanged");
            assert_eq!(p.tests, base.tests);
            assert_eq!(p.subset_of, base.subset_of);
            assert_eq!(p.variable, base.variable);
            assert_eq!(p.defined_as, base.defined_as, "the same entities are defined, only tags move");
            assert_eq!(p.tags, base.tags);
            // Switched definitions carry the other tag in the recall items too.
            for (item, e) in
                p.definition_tests(&w).iter().zip((0..400).filter(|&e| p.defined_as[e].is_some()))
            {
                assert_eq!(item.prompt[1], p.tags[p.tag_of[e].unwrap() - 1]);
            }
        }
    }
    // c = 1.0 gives exactly the authors' protocol.
    let p = Protocol::with(&w, 3, &ProtocolConfig::default());
    assert_eq!(p.stage1, Protocol::new(&w, 3).stage1);
    assert!(ProtocolConfig { tag_consistency: 1.5, ..ProtocolConfig::default() }.validate().is_err());
    assert!(ProtocolConfig { tag_consistency: -0.1, ..ProtocolConfig::default() }.validate().is_err());
}

#[test]
fn swapped_roles_exchange_the_tag_tokens_and_nothing_else() {
    let w = world(200);
    for seed in [0, 1, 2] {
        let p = Protocol::new(&w, seed);
        let q = Protocol::with(&w, seed, &ProtocolConfig { swap_tags: true, ..ProtocolConfig::default() });
        assert_eq!(q.tags, [p.tags[1], p.tags[0], p.tags[2]]);
        assert_eq!(q.subset_of, p.subset_of);
        assert_eq!(q.variable, p.variable);
        assert_eq!(q.defined_as, p.defined_as);
        assert_eq!(q.held_out, p.held_out);
        assert_eq!(q.tag_of, p.tag_of, "roles stay with the subsets");
        assert_eq!(q.tests, p.tests);
        let swap = |seqs: &[Vec<u32>]| -> Vec<Vec<u32>> {
            seqs.iter()
                .map(|s| {
                    s.iter()
                        .map(|&t| match t {
                            t if t == p.tags[0] => p.tags[1],
                            t if t == p.tags[1] => p.tags[0],
                            t => t,
                        })
                        .collect()
                })
                .collect()
        };
        assert_eq!(q.stage1, swap(&p.stage1), "stage 1: only the tag tokens differ");
        assert_eq!(q.stage2, swap(&p.stage2), "stage 2: only the tag tokens differ");
        assert_ne!(q.stage1, p.stage1);
        // The reliable role (consistent stage-1 definitions) now carries the old tag-2 token.
        let e = p.members(Subset::Qd1Consis)[0];
        assert_eq!(
            q.definition_tests(&w).iter().find(|i| i.prompt[2..4] == p.variable[e][..]).unwrap().prompt[1],
            p.tags[1]
        );
    }
}

#[test]
fn evaluation_epochs_start_at_zero_step_by_k_and_end_at_the_last_epoch() {
    assert_eq!(eval_epochs(20, 5), vec![0, 5, 10, 15, 20]);
    assert_eq!(eval_epochs(10, 4), vec![0, 4, 8, 10]);
    assert_eq!(eval_epochs(3, 10), vec![0, 3]);
    assert_eq!(eval_epochs(1, 1), vec![0, 1]);
}

#[test]
fn training_in_evaluated_chunks_gives_the_weights_of_one_run_and_records_the_epochs() {
    let vocab = 12;
    let data: Vec<Vec<u32>> = (0..10).map(|i| vec![1, 3 + i % 7, 4 + i % 5, 2]).collect();
    let model = ModelConfig { d_model: 16, layers: 1, heads: 2, d_mlp: 32, block: 8, tie_embeddings: false };
    let cfg = StageConfig { epochs: 5, batch_size: 4, lr: 1e-2, warmup_steps: 2, weight_decay: 0.0 };
    let np = &foundation::progress::NoProgress;
    let cpu = Device::flex();
    let (plain, plain_report) =
        train_stage(&model, vocab, &data, &cfg, Start::Fresh, 9, None, None, &cpu, np).unwrap();
    assert!(plain_report.em_over_training.is_empty());
    // The evaluation: the sum of the logits of a fixed input, a fingerprint of the weights.
    let probe = |m: &meta_ocl::model::Transformer| -> f64 {
        let logits: Vec<f32> = m.forward_tokens(&[1, 3, 4, 2], 4, &cpu).into_data().try_to_vec().unwrap();
        logits.iter().map(|&x| x as f64).sum()
    };
    let evaluate = |m: &meta_ocl::model::Transformer| BTreeMap::from([("probe".to_string(), probe(m))]);
    let schedule = EvalSchedule { every_epochs: 2, evaluate: &evaluate };
    let (chunked, r) =
        train_stage(&model, vocab, &data, &cfg, Start::Fresh, 9, None, Some(&schedule), &cpu, np).unwrap();
    // 10 sequences in batches of 4: 3 steps per epoch.
    let epochs: Vec<(usize, usize)> = r.em_over_training.iter().map(|p| (p.epoch, p.step)).collect();
    assert_eq!(epochs, vec![(0, 0), (2, 6), (4, 12), (5, 15)]);
    assert_eq!(r.steps, 15);
    assert_eq!(r.final_loss, plain_report.final_loss, "same losses");
    assert_eq!(
        r.em_over_training.last().unwrap().em["probe"],
        probe(&plain),
        "the last point is the trained model"
    );
    assert_eq!(probe(&chunked), probe(&plain), "chunks give the weights of one run");
    assert_ne!(r.em_over_training[0].em["probe"], probe(&plain), "epoch 0 is the fresh model");
}

/// The shared tiny sweep with the longer stages and evaluation points these tests read.
fn tiny_sweep(stage1_seeds: usize) -> SweepConfig {
    let stage = |epochs| StageConfig { epochs, batch_size: 64, lr: 3e-3, warmup_steps: 1, weight_decay: 0.0 };
    SweepConfig {
        stage1: stage(3),
        stage2: stage(2),
        stage2_seeds: 1,
        eval_every: 2,
        ..crate::tiny_sweep(stage1_seeds)
    }
}

#[test]
fn stage_results_hold_em_over_training_at_the_expected_epochs() {
    let dir = std::env::temp_dir().join(format!("meta-ocl-over-training-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = tiny_sweep(2);
    sweep(&dir, &cfg, Shard::ALL, 1, &Device::flex(), &foundation::progress::NoProgress).unwrap();
    let c = collect(&dir, &cfg).unwrap();
    let at: Vec<(usize, usize)> = c.over_training.iter().map(|p| (p.stage, p.epoch)).collect();
    assert_eq!(at, vec![(1, 0), (1, 2), (1, 3), (2, 0), (2, 2)]);
    for p in &c.over_training {
        assert_eq!(p.em["d1consis"].len(), 2, "one value per seed");
    }
    // The last point of each stage is the stage's EM; stage 2 starts from stage 1's model.
    let last1 = &c.over_training[2];
    assert_eq!(last1.em["qd1consis"], c.stage1["qd1consis"]);
    assert_eq!(c.over_training[3].em["d1consis"], last1.em["d1consis"]);
    assert_eq!(c.over_training[4].em["d1consis"], c.stage2["d1consis"]);
    let md = report(&dir, &cfg, "").unwrap();
    assert!(md.contains("EM over training"));
    assert!(dir.join("em_over_training.png").exists());
    // Another protocol in the same directory is refused.
    let mut other = cfg.clone();
    other.protocol.swap_tags = true;
    assert!(sweep(&dir, &other, Shard::ALL, 1, &Device::flex(), &foundation::progress::NoProgress).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_controls_run_as_sibling_directories_sharing_stage_0_and_report_each_gap() {
    let dir = std::env::temp_dir().join(format!("meta-ocl-controls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let base = SweepConfig { eval_every: 0, ..tiny_sweep(2) };
    let settings = ControlSettings { tag_consistency: 0.5, batch_sizes: vec![(32, 8)] };
    let list = controls(&base, &settings);
    let names: Vec<&str> = list.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["base", "swap_tags", "tag_consistency_0.5", "batch_32_8"]);
    assert!(list[1].config.protocol.swap_tags && list[2].config.protocol.tag_consistency == 0.5);
    assert_eq!((list[3].config.stage1.batch_size, list[3].config.stage2.batch_size), (32, 8));
    let two = controls(&base, &ControlSettings { batch_sizes: vec![(32, 8), (128, 32)], ..settings.clone() });
    assert_eq!(two.len(), 5);
    assert_eq!(two[4].name, "batch_128_32");
    for c in &list[1..] {
        // Each differs from the base in its one setting only.
        let mut back = c.config.clone();
        back.protocol = base.protocol.clone();
        back.stage1.batch_size = base.stage1.batch_size;
        back.stage2.batch_size = base.stage2.batch_size;
        assert_eq!(back, base, "{}", c.name);
    }
    let np = &foundation::progress::NoProgress;
    run_controls(&dir, &list, 1, &Device::flex(), np).unwrap();
    let s0 = std::fs::read(dir.join("base/stage0/model.safetensors")).unwrap();
    for c in &list {
        assert!(dir.join(&c.name).join("report.md").exists());
        assert_eq!(std::fs::read(dir.join(&c.name).join("stage0/model.safetensors")).unwrap(), s0);
        assert!(!dir.join(&c.name).join("stage0/checkpoint").exists() || c.name == "base", "stage 0 shared");
    }
    let md = controls_report(&dir, &list, "").unwrap();
    for c in &list {
        assert!(md.contains(&format!("| {} |", c.name)), "{md}");
    }
    assert!(dir.join("controls.png").exists() && dir.join("controls.json").exists());
    // Resuming finds everything finished.
    let again = sweep(&dir.join("swap_tags"), &list[1].config, Shard::ALL, 1, &Device::flex(), np).unwrap();
    assert!(again.trained.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
