//! The numeric set-inclusion task: what the generator guarantees about training and test
//! questions, definitions, subsets and determinism; a resumed tiny sweep.

use std::collections::{BTreeSet, HashSet};

use meta_ocl::harness::Shard;
use meta_ocl::model::ModelConfig;
use meta_ocl::numeric::{
    candidates, numeric_collect, numeric_report, numeric_subset_sizes, numeric_sweep, NumericConfig,
    NumericProtocol, NumericSweepConfig, NumericWorld, DEFINE1, EQUALS, FALSE, NUMERIC_SUBSETS, PERCENT,
    TRUE,
};
use meta_ocl::train::StageConfig;
use meta_ocl::world::{Subset, BOS, EOS};

fn world(cfg: NumericConfig) -> NumericWorld {
    NumericWorld::new(&cfg).expect("valid world")
}

fn small() -> NumericConfig {
    NumericConfig { num_x: 400, ..NumericConfig::default() }
}

#[test]
fn training_questions_are_consistent_with_x_and_leave_the_whole_intersection_set() {
    for intersection in [1, 2, 3] {
        let w = world(NumericConfig { intersection, ..small() });
        for v in &w.vars {
            assert_eq!(v.intersection.len(), intersection);
            assert_eq!(v.intersection[0], v.x);
            assert_eq!(v.train.len(), 6, "half of 12 questions");
            assert_eq!(v.train.iter().filter(|q| q.answer).count(), 3, "half true");
            for q in &v.train {
                assert_eq!(q.nums.len(), 4);
                assert_eq!(q.nums.iter().collect::<BTreeSet<_>>().len(), 4, "distinct numbers");
                assert_eq!(q.nums.contains(&v.x), q.answer, "consistent with x");
                // True lists hold the whole intersection set, false ones none of it.
                assert!(v.intersection.iter().all(|i| q.nums.contains(i) == q.answer));
            }
            // So every member of the intersection set stays a candidate: at least `intersection`.
            let c = candidates(&v.train, 100);
            assert!(v.intersection.iter().all(|i| c.contains(i)), "{c:?} vs {:?}", v.intersection);
            assert!(c.len() >= intersection);
        }
    }
}

#[test]
fn test_questions_determine_x_uniquely_and_none_repeats_a_training_question() {
    let w = world(small());
    for v in &w.vars {
        assert_eq!(v.test.len(), 6);
        assert_eq!(v.test.iter().filter(|q| q.answer).count(), 3, "half true: chance is 0.5");
        for q in &v.test {
            assert_eq!(q.nums.contains(&v.x), q.answer);
            let set: BTreeSet<usize> = q.nums.iter().copied().collect();
            assert_eq!(set.len(), 4);
            assert!(v.train.iter().all(|t| t.nums.iter().copied().collect::<BTreeSet<_>>() != set));
        }
        assert_eq!(candidates(&v.test, 100), vec![v.x], "only x answers every test question");
        assert!(v.x < 100 && v.x_false < 100);
    }
}

#[test]
fn sequences_have_the_authors_format() {
    let w = world(small());
    let v = &w.vars[0];
    let qa = w.qa(0, &v.train[0]);
    assert_eq!(qa.len(), NumericConfig::default().block());
    assert_eq!(qa[0], BOS);
    assert_eq!(&qa[1..3], &v.name[..]);
    assert_eq!(qa[3], PERCENT);
    let nums: Vec<usize> = qa[4..8].iter().map(|&t| w.vocab.number_of(t).unwrap()).collect();
    assert_eq!(nums, v.train[0].nums);
    assert_eq!(&qa[8..], &[EQUALS, TRUE, EOS]);
    let d = w.definition(2, 0, v.x_false);
    assert_eq!(d, vec![BOS, DEFINE1 + 1, v.name[0], v.name[1], PERCENT, w.vocab.number(v.x_false), EOS]);
    assert!(w.vocab.decode(&d).starts_with("<bos> define2 s"));
    assert!(w.vocab.decode(&d).ends_with(&format!("% n{} <eos>", v.x_false)));
}

#[test]
fn inconsistent_definitions_never_name_x_and_consistent_ones_always_do() {
    let w = world(small());
    let p = NumericProtocol::new(&w, 5);
    let by_name: std::collections::HashMap<Vec<u32>, usize> =
        w.vars.iter().enumerate().map(|(i, v)| (v.name.clone(), i)).collect();
    let mut tags = [0usize; 3];
    for (stage, data) in [(1, &p.stage1), (2, &p.stage2)] {
        for s in data.iter().filter(|s| (DEFINE1..DEFINE1 + 3).contains(&s[1])) {
            let tag = (s[1] - DEFINE1) as usize + 1;
            let v = by_name[&s[2..4].to_vec()];
            let n = w.vocab.number_of(s[5]).unwrap();
            let subset = p.subset_of[v];
            assert_eq!(subset.tag(), Some(tag));
            assert_eq!(subset.definition_stage(), Some(stage));
            if subset == Subset::Qd2Incons {
                assert_ne!(n, w.vars[v].x, "an inconsistent definition named x");
                assert!(!w.vars[v].intersection.contains(&n));
                assert_eq!(n, w.vars[v].x_false);
            } else {
                assert_eq!(n, w.vars[v].x);
            }
            tags[tag - 1] += 1;
        }
    }
    assert_eq!(tags, [48 + 16, 48 + 16, 16], "one definition per defined variable");
    // Stage 2 is definitions only; define3 never appears in stage 1.
    assert!(p.stage2.iter().all(|s| (DEFINE1..DEFINE1 + 3).contains(&s[1])));
    assert!(p.stage1.iter().all(|s| s[1] != DEFINE1 + 2));
    // Questions never carry a tag.
    let tagged = |s: &&Vec<u32>| (DEFINE1..DEFINE1 + 3).contains(&s[1]);
    assert!(p.stage1.iter().filter(|s| s.contains(&EQUALS)).all(|s| !tagged(&s)));
}

#[test]
fn subset_sizes_follow_the_fractions_and_q_is_fixed_by_the_world() {
    for n in [100, 400, 2000] {
        for ((_, f), s) in NUMERIC_SUBSETS.iter().zip(numeric_subset_sizes(n)) {
            assert!((s as f64 - f * n as f64).abs() < 1e-9, "n = {n}: multiples of 100 split exactly");
        }
    }
    for n in [101, 333, 1234] {
        let sizes = numeric_subset_sizes(n);
        assert_eq!(sizes.iter().sum::<usize>(), n);
        for ((_, f), s) in NUMERIC_SUBSETS.iter().zip(sizes) {
            assert!((s as f64 - f * n as f64).abs() < 1.0);
        }
    }
    let w = world(small());
    let (p0, p1) = (NumericProtocol::new(&w, 0), NumericProtocol::new(&w, 1));
    for p in [&p0, &p1] {
        let mut seen = HashSet::new();
        for (subset, f) in NUMERIC_SUBSETS {
            let m = p.members(subset);
            assert_eq!(m.len() as f64, f * 400.0, "{}", subset.name());
            assert!(m.iter().all(|&v| seen.insert(v)), "disjoint");
        }
        assert_eq!(seen.len(), 400);
        assert_eq!(p.members(Subset::Q), w.q_members, "q is the world's");
    }
    assert_ne!(p0.subset_of, p1.subset_of, "other seeds split the rest otherwise");
    let names: HashSet<&Vec<u32>> = w.vars.iter().map(|v| &v.name).collect();
    assert_eq!(names.len(), 400, "variable names are unique");
}

#[test]
fn no_test_question_is_trained_on_and_untrained_variables_appear_nowhere() {
    let w = world(small());
    let p = NumericProtocol::new(&w, 2);
    let stage0 = w.stage0();
    let training: HashSet<&Vec<u32>> = stage0.iter().chain(&p.stage1).chain(&p.stage2).collect();
    assert_eq!(stage0.len(), 240 * 6);
    assert_eq!(p.stage1.len(), 96 * 6 + 96);
    assert_eq!(p.stage2.len(), 48);
    assert_eq!(p.tests.len(), 400 * 6);
    for it in &p.tests {
        let mut full = it.prompt.clone();
        full.extend(&it.answer);
        full.push(EOS);
        assert!(!training.contains(&full), "a test question is in training");
        let mut flipped = it.prompt.clone();
        flipped.extend([if it.answer[0] == TRUE { FALSE } else { TRUE }, EOS]);
        assert!(!training.contains(&flipped), "a test list is in training with the other answer");
    }
    // Questions in training are about q (q-only stage) or qd (stage 1) variables; no_qd_baseline
    // variables appear nowhere, stage-2 variables only in stage-2 definitions.
    let subset_of_name = |name: &[u32]| p.subset_of[w.vars.iter().position(|v| v.name == name).unwrap()];
    assert!(stage0.iter().all(|s| subset_of_name(&s[1..3]) == Subset::Q));
    for s in p.stage1.iter().filter(|s| s.contains(&EQUALS)) {
        assert!(matches!(subset_of_name(&s[1..3]), Subset::Qd1Consis | Subset::Qd2Incons));
    }
    for s in p.stage1.iter().chain(&p.stage2).filter(|s| !s.contains(&EQUALS)) {
        assert_ne!(subset_of_name(&s[2..4]), Subset::NoQdBaseline);
    }
    for v in p.members(Subset::NoQdBaseline) {
        let name = &w.vars[v].name;
        assert!(training.iter().all(|s| s[1..3] != name[..] && s[2..4] != name[..]));
    }
}

#[test]
fn same_seed_same_data_and_one_token_variables() {
    let (a, b) = (world(small()), world(small()));
    assert_eq!(a.vars, b.vars);
    assert_eq!(a.q_members, b.q_members);
    let (pa, pb) = (NumericProtocol::new(&a, 7), NumericProtocol::new(&b, 7));
    assert_eq!((pa.stage1, pa.stage2, pa.tests), (pb.stage1, pb.stage2, pb.tests));
    let other = world(NumericConfig { seed: 1, ..small() });
    assert_ne!(a.vars, other.vars);
    let one = world(NumericConfig { variable_tokens: 1, syllables: 400, ..small() });
    assert!(one.vars.iter().all(|v| v.name.len() == 1));
    assert_eq!(
        one.qa(0, &one.vars[0].train[0]).len(),
        NumericConfig { variable_tokens: 1, ..small() }.block()
    );
    for bad in [
        NumericConfig { num_x: 50, ..small() },
        NumericConfig { syllables: 10, ..small() },
        NumericConfig { intersection: 5, ..small() },
        NumericConfig { questions_per_x: 10, ..small() },
        NumericConfig { numbers: 8, ..small() },
    ] {
        assert!(NumericWorld::new(&bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_resumed_numeric_sweep_skips_finished_units_and_reports() {
    let dir = std::env::temp_dir().join(format!("meta-ocl-numeric-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let stage = StageConfig { epochs: 1, batch_size: 128, lr: 3e-3, warmup_steps: 1, weight_decay: 0.0 };
    let world = NumericConfig { num_x: 100, syllables: 10, ..NumericConfig::default() };
    let cfg = NumericSweepConfig {
        model: ModelConfig {
            d_model: 16,
            layers: 1,
            heads: 2,
            d_mlp: 32,
            block: world.block(),
            tie_embeddings: false,
        },
        world,
        stage0: stage.clone(),
        stage1: stage.clone(),
        stage2: stage,
        stage1_seeds: 2,
        stage2_seeds: 2,
        resamples: 200,
    };
    let (np, cpu) = (&foundation::progress::NoProgress, burn::prelude::Device::flex());
    let first = numeric_sweep(&dir, &cfg, Shard { index: 1, count: 2 }, &cpu, np);
    assert!(first.is_err(), "shard 1 needs the q-only stage");
    let first = numeric_sweep(&dir, &cfg, Shard { index: 0, count: 2 }, &cpu, np).unwrap();
    assert_eq!(first.trained, vec![(0, None), (0, Some(0)), (0, Some(1))]);
    let before = std::fs::read(dir.join("seeds/s0/t0.json")).unwrap();
    std::fs::remove_file(dir.join("seeds/s0/t1.json")).unwrap();
    let second = numeric_sweep(&dir, &cfg, Shard::ALL, &cpu, np).unwrap();
    assert_eq!(second.trained, vec![(0, Some(1)), (1, None), (1, Some(0)), (1, Some(1))]);
    assert_eq!(second.skipped, vec![(0, None), (0, Some(0))]);
    assert_eq!(std::fs::read(dir.join("seeds/s0/t0.json")).unwrap(), before, "finished results untouched");
    let c = numeric_collect(&dir, &cfg).unwrap();
    assert_eq!((c.stage1_seeds.clone(), c.stage2_seeds.clone()), (vec![0, 1], vec![0, 1]));
    assert!(c.stage0.contains_key("q") && c.stage0.contains_key("train_q"));
    assert!(c.stage2["d1consis"].iter().all(|em| (0.0..=1.0).contains(em)));
    let md = numeric_report(&dir, &cfg, "").unwrap();
    assert!(md.contains("EM(d1consis) - EM(d2consis)") && md.contains("EM(qd1consis) - EM(q)"));
    assert!(dir.join("report.md").exists() && dir.join("em.png").exists());
    let other = NumericSweepConfig { stage2: StageConfig { lr: 1e-3, ..cfg.stage2.clone() }, ..cfg.clone() };
    assert!(numeric_sweep(&dir, &other, Shard::ALL, &cpu, np).is_err(), "other settings are refused");
    let _ = std::fs::remove_dir_all(&dir);
}
