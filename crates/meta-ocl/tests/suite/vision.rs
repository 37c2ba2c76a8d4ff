//! The MNIST analogue: glyphs, tags, derangement, held-out questions, determinism, canvas layout,
//! and resuming a sweep.

use std::collections::HashSet;

use data::Dataset;
use meta_ocl::harness::Shard;
use meta_ocl::train::StageConfig;
use meta_ocl::vision::{
    attribute_value, collect_vision, region_is_blank, repeat_definitions, seed_file, split_world, tags_in,
    value_class, vision_report, vision_sweep, Content, Example, VisionConfig, VisionProtocol, VisionWorld,
    CLASSES, CONTENT, ENTITIES, HEIGHT, MIN_PATTERN_DISTANCE, PATCH, VISION_ATTRIBUTES, WIDTH,
};
use meta_ocl::world::{Protocol, Subset, ATTRIBUTES};

/// A small synthetic "MNIST": 3 images of each digit, 28x28, pixel values that encode the image.
fn fake_mnist(offset: f32) -> Dataset {
    let n = 30;
    let images = (0..n * 784).map(|i| ((i % 997) as f32 / 997.0 + offset).fract() * 2.0 - 1.0).collect();
    Dataset { images, labels: (0..n).map(|i| (i % 10) as u8).collect(), n, height: 28, width: 28 }
}

fn world(seed: u64) -> (VisionConfig, VisionWorld) {
    let cfg = VisionConfig { seed, renderings: 2, ..VisionConfig::default() };
    let w = VisionWorld::from_datasets(&cfg, &fake_mnist(0.0), &fake_mnist(0.5)).unwrap();
    (cfg, w)
}

fn protocol(seed: u64, s: u64) -> (VisionWorld, VisionProtocol) {
    let (cfg, w) = world(seed);
    let p = VisionProtocol::new(&w, &split_world(cfg.seed).unwrap(), cfg.seed, s);
    (w, p)
}

fn is_definition(ex: &Example) -> bool {
    ex.tag.is_some()
}

#[test]
fn attributes_and_classes_are_laid_out_without_overlap() {
    // 47: tens 4, units 7, odd, 4 + 7 > 9, 4 < 7, 47 mod 3 = 2.
    assert_eq!((0..ATTRIBUTES).map(|k| attribute_value(47, k)).collect::<Vec<_>>(), vec![4, 7, 1, 1, 0, 2]);
    let mut seen = HashSet::new();
    for (k, &(_, n)) in VISION_ATTRIBUTES.iter().enumerate() {
        for j in 0..n {
            let c = value_class(k, j);
            assert!((ENTITIES..CLASSES).contains(&c) && seen.insert(c));
        }
        for e in 0..ENTITIES {
            assert!(attribute_value(e, k) < n);
        }
    }
    assert_eq!(seen.len() + ENTITIES, CLASSES);
}

#[test]
fn glyphs_tags_and_patches_are_distinct() {
    let (w, p) = protocol(0, 3);
    let far = |v: &[u64]| {
        v.iter().enumerate().all(|(i, a)| v[..i].iter().all(|b| (a ^ b).count_ones() >= MIN_PATTERN_DISTANCE))
    };
    assert_eq!(p.glyphs.len(), ENTITIES);
    assert!(far(&p.glyphs), "glyphs pairwise at least {MIN_PATTERN_DISTANCE} pixels apart");
    assert!(far(&p.tags));
    let mut patches = w.questions.to_vec();
    patches.push(w.id_patch);
    assert!(far(&patches));
    // Rendered glyph canvases differ too.
    let canvases: HashSet<Vec<u32>> = p
        .glyphs
        .iter()
        .map(|&g| {
            let ex =
                Example { question: None, tag: None, content: Content::Glyph(g), target: 0, subset: None };
            w.compose(&ex).iter().map(|x| x.to_bits()).collect()
        })
        .collect();
    assert_eq!(canvases.len(), ENTITIES);
}

#[test]
fn the_split_is_the_text_protocols() {
    let (_, p) = protocol(2, 5);
    let text = Protocol::new(&split_world(2).unwrap(), 5);
    assert_eq!(p.subset_of, text.subset_of);
    assert_eq!(p.defined_as, text.defined_as);
    assert_eq!(p.held_out, text.held_out);
}

#[test]
fn tags_appear_only_where_they_should() {
    let (w, p) = protocol(0, 1);
    let [t1, t2, t3] = p.tags;
    // Stage 1: tag 1 on qd1consis definitions, tag 2 on qd2incons definitions, never tag 3; a
    // definition has no question patch and names an entity.
    for ex in p.stage1.iter().filter(|e| is_definition(e)) {
        let want = match ex.subset {
            Some(Subset::Qd1Consis) => t1,
            Some(Subset::Qd2Incons) => t2,
            other => panic!("a stage-1 definition of {other:?}"),
        };
        assert_eq!(ex.tag, Some(want));
        assert!(ex.question.is_none() && ex.target < ENTITIES);
    }
    assert_eq!(tags_in(&p.stage1), HashSet::from([t1, t2]));
    // Stage 2: definitions only, tag k for dkconsis.
    for ex in &p.stage2 {
        let want = match ex.subset {
            Some(Subset::D1Consis) => t1,
            Some(Subset::D2Consis) => t2,
            Some(Subset::D3Consis) => t3,
            other => panic!("a stage-2 example of {other:?}"),
        };
        assert_eq!(ex.tag, Some(want));
    }
    assert_eq!(p.stage2.len(), 3 * 8);
    // Questions (trained or held out) and stage 0 carry no tag, and their canvases have an empty tag corner.
    let stage0 = w.stage0();
    let untagged: Vec<&Example> =
        p.stage1.iter().filter(|e| !is_definition(e)).chain(&p.tests).chain(&stage0).collect();
    for ex in untagged {
        assert!(ex.tag.is_none() && ex.question.is_some());
        assert!(region_is_blank(&w.compose(ex), 0..PATCH, WIDTH - PATCH..WIDTH));
    }
}

#[test]
fn inconsistent_definitions_are_derangements() {
    for s in 0..4 {
        let (_, p) = protocol(1, s);
        let incons: Vec<usize> = (0..ENTITIES).filter(|&e| p.subset_of[e] == Subset::Qd2Incons).collect();
        assert_eq!(incons.len(), 25);
        let mut targets: Vec<usize> = incons.iter().map(|&e| p.defined_as[e].unwrap()).collect();
        assert!(incons.iter().all(|&e| p.defined_as[e] != Some(e)), "no fixed point");
        targets.sort();
        assert_eq!(targets, incons, "a permutation of the subset");
        for e in 0..ENTITIES {
            match p.subset_of[e].tag() {
                Some(_) if p.subset_of[e] != Subset::Qd2Incons => assert_eq!(p.defined_as[e], Some(e)),
                None => assert_eq!(p.defined_as[e], None),
                _ => {}
            }
        }
        // The definition examples train exactly these targets on the entity's glyph.
        for ex in p.stage1.iter().chain(&p.stage2).filter(|e| is_definition(e)) {
            let Content::Glyph(g) = ex.content else { panic!("a definition without a glyph") };
            let e = p.glyphs.iter().position(|&x| x == g).unwrap();
            assert_eq!(Some(ex.target), p.defined_as[e]);
        }
    }
}

#[test]
fn no_held_out_question_is_trained_on() {
    let (w, p) = protocol(0, 7);
    for t in &p.tests {
        assert!(!p.stage1.contains(t) && !p.stage2.contains(t), "held-out {t:?} in training");
    }
    // Per QA entity: 5 training questions and the held-out one, stratified over attributes.
    for e in 0..ENTITIES {
        let subset = p.subset_of[e];
        let content = if subset == Subset::QNoReplacementBaseline {
            Content::Image(w.rendering(e, 0))
        } else {
            Content::Glyph(p.glyphs[e])
        };
        let trained = p.stage1.iter().filter(|x| x.content == content && x.question.is_some()).count();
        let tested = p.tests.iter().filter(|x| x.content == content).count();
        if subset.has_training_qa() {
            assert_eq!((trained, tested), (ATTRIBUTES - 1, 1));
        } else {
            assert_eq!((trained, tested), (0, ATTRIBUTES));
        }
    }
    let qa: Vec<usize> = (0..ENTITIES).filter(|&e| p.subset_of[e] == Subset::Q).collect();
    let mut counts = [0; ATTRIBUTES];
    for e in qa {
        counts[p.held_out[e].unwrap()] += 1;
    }
    assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1, "stratified: {counts:?}");
}

#[test]
fn the_same_seed_gives_the_same_data() {
    let (a, pa) = protocol(4, 2);
    let (b, pb) = protocol(4, 2);
    assert_eq!(a.images, b.images);
    assert_eq!((a.questions, a.id_patch), (b.questions, b.id_patch));
    assert_eq!(
        (&pa.glyphs, pa.tags, &pa.stage1, &pa.stage2, &pa.tests),
        (&pb.glyphs, pb.tags, &pb.stage1, &pb.stage2, &pb.tests)
    );
    let (c, pc) = protocol(5, 2);
    assert_ne!(a.images, c.images);
    assert_ne!(pa.glyphs, pc.glyphs);
    let (_, pd) = protocol(4, 3);
    assert_ne!(pa.glyphs, pd.glyphs);
}

#[test]
fn the_canvas_puts_each_part_where_it_belongs() {
    let (w, p) = protocol(0, 0);
    let (q, t, g) = (w.questions[2], p.tags[0], p.glyphs[9]);
    let px = |c: &[f32], r: usize, col: usize| c[r * WIDTH + col];
    let on = |p: u64, r: usize, c: usize| if p >> (r * PATCH + c) & 1 == 1 { 1.0 } else { -1.0 };
    let canvas = w.compose(&Example {
        question: Some(q),
        tag: Some(t),
        content: Content::Glyph(g),
        target: 0,
        subset: None,
    });
    assert_eq!(canvas.len(), HEIGHT * WIDTH);
    for r in 0..PATCH {
        for c in 0..PATCH {
            assert_eq!(px(&canvas, r, c), on(q, r, c), "question patch at ({r}, {c})");
            assert_eq!(px(&canvas, r, WIDTH - PATCH + c), on(t, r, c), "tag at ({r}, {c})");
        }
    }
    // The glyph at 2x in rows 8..24, columns 8..24; the rest of the content is background.
    for r in 0..2 * PATCH {
        for c in 0..WIDTH {
            let want = if (8..24).contains(&c) { on(g, r / 2, (c - 8) / 2) } else { -1.0 };
            assert_eq!(px(&canvas, PATCH + r, c), want, "content at ({r}, {c})");
        }
    }
    assert!(region_is_blank(&canvas, 0..PATCH, PATCH..WIDTH - PATCH));
    // An entity rendering fills the content area exactly; empty corners stay blank.
    let i = w.rendering(37, 1);
    let canvas = w.compose(&Example {
        question: None,
        tag: None,
        content: Content::Image(i),
        target: 37,
        subset: None,
    });
    assert_eq!(&canvas[PATCH * WIDTH..], w.image(i));
    assert_eq!(w.image(i).len(), CONTENT);
    assert!(region_is_blank(&canvas, 0..PATCH, 0..WIDTH));
}

#[test]
fn repeated_definitions_appear_that_often_and_questions_once() {
    let (_, p) = protocol(0, 5);
    assert_eq!(repeat_definitions(&p.stage1, 1), p.stage1);
    let r = repeat_definitions(&p.stage1, 3);
    assert_eq!(r[..p.stage1.len()], p.stage1[..], "the original examples come first, in order");
    let count = |v: &[Example], ex: &Example| v.iter().filter(|x| *x == ex).count();
    let defs = p.stage1.iter().filter(|ex| is_definition(ex)).count();
    assert_eq!(defs, 50, "25 tag-1 and 25 tag-2 definitions");
    assert_eq!(r.len(), p.stage1.len() + 2 * defs);
    for ex in &p.stage1 {
        // Every example is unique in the stage, so its count is its repetition.
        assert_eq!(count(&p.stage1, ex), 1);
        assert_eq!(count(&r, ex), if is_definition(ex) { 3 } else { 1 });
    }
}

#[test]
fn a_config_without_definition_repeats_reads_as_one() {
    let cfg = VisionConfig { definition_repeats: 4, ..VisionConfig::default() };
    let mut v = serde_json::to_value(&cfg).unwrap();
    v.as_object_mut().unwrap().remove("definition_repeats").unwrap();
    let old: VisionConfig = serde_json::from_value(v).unwrap();
    assert_eq!(old, VisionConfig { definition_repeats: 1, ..cfg.clone() });
    assert!(VisionConfig { definition_repeats: 0, ..cfg }.validate().is_err());
}

#[test]
fn a_resumed_vision_sweep_skips_finished_seeds() {
    let dir = std::env::temp_dir().join(format!("meta-ocl-vision-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let stage =
        |epochs, batch_size| StageConfig { epochs, batch_size, lr: 3e-3, warmup_steps: 1, weight_decay: 0.0 };
    let cfg = VisionConfig {
        renderings: 1,
        channels: [2, 4],
        hidden: 8,
        stage0: stage(1, 128),
        stage1: stage(1, 128),
        stage2: stage(1, 32),
        stage1_seeds: 3,
        stage2_seeds: 2,
        resamples: 200,
        ..VisionConfig::default()
    };
    let np = &foundation::progress::NoProgress;
    let cpu = burn::prelude::Device::flex();
    let first = vision_sweep(&dir, &cfg, Shard { index: 1, count: 2 }, &cpu, np);
    assert!(first.is_err(), "shard 1 needs stage 0 from shard 0");
    let first = vision_sweep(&dir, &cfg, Shard { index: 0, count: 2 }, &cpu, np).unwrap();
    assert_eq!((first.trained, first.skipped), (vec![0, 2], vec![]));
    let before = std::fs::read(seed_file(&dir, 0)).unwrap();
    std::fs::remove_file(seed_file(&dir, 2)).unwrap();
    let second = vision_sweep(&dir, &cfg, Shard::ALL, &cpu, np).unwrap();
    assert_eq!((second.trained, second.skipped), (vec![1, 2], vec![0]));
    assert_eq!(std::fs::read(seed_file(&dir, 0)).unwrap(), before, "finished results untouched");
    let c = collect_vision(&dir, &cfg).unwrap();
    assert_eq!(c.seeds, vec![0, 1, 2]);
    assert_eq!(c.stage2["d1consis"].len(), 3);
    assert!(c.stage1["qd1consis"].iter().all(|a| (0.0..=1.0).contains(a)));
    let md = vision_report(&dir, &cfg, "").unwrap();
    assert!(md.contains("acc(d1consis) - acc(d2consis)"));
    assert!(dir.join("acc.png").exists() && dir.join("gaps.png").exists());
    let other = VisionConfig { renderings: 2, ..cfg };
    assert!(vision_sweep(&dir, &other, Shard::ALL, &cpu, np).is_err(), "other settings refused");
    let _ = std::fs::remove_dir_all(&dir);
}
