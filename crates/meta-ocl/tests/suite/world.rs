//! The synthetic world and protocol: subset fractions, disjointness, the derangement, where tags
//! appear, no test question in training, determinism, the tokenizer.

use std::collections::HashSet;

use meta_ocl::world::{
    derangement, subset_sizes, AliasGroup, Protocol, Subset, World, WorldConfig, A, ATTRIBUTES, BOS, EOS, Q,
    SUBSETS,
};

fn world(entities: usize) -> World {
    World::new(&WorldConfig { entities, ..WorldConfig::default() }).expect("valid world")
}

#[test]
fn subset_sizes_follow_the_spec_fractions() {
    for n in [100, 400, 2000] {
        let sizes = subset_sizes(n);
        for ((_, f), s) in SUBSETS.iter().zip(sizes) {
            assert_eq!(s as f64, f * n as f64, "n = {n}: multiples of 100 split exactly");
        }
    }
    for n in [50, 51, 77, 333, 1234] {
        let sizes = subset_sizes(n);
        assert_eq!(sizes.iter().sum::<usize>(), n);
        for ((_, f), s) in SUBSETS.iter().zip(sizes) {
            assert!((s as f64 - f * n as f64).abs() < 1.0, "n = {n}: {s} vs {}", f * n as f64);
        }
    }
}

#[test]
fn subsets_are_disjoint_and_cover_every_entity_with_the_spec_fractions() {
    let w = world(400);
    let p = Protocol::new(&w, 3);
    let mut seen = HashSet::new();
    for (subset, f) in SUBSETS {
        let m = p.members(subset);
        assert_eq!(m.len() as f64, f * 400.0, "{}", subset.name());
        for e in m {
            assert!(seen.insert(e), "entity {e} in two subsets");
        }
    }
    assert_eq!(seen.len(), 400);
    let names: HashSet<Vec<u32>> = p.variable.iter().cloned().collect();
    assert_eq!(names.len(), 400, "variable names are unique");
}

#[test]
fn derangements_have_no_fixed_points_and_are_permutations() {
    let mut rng = foundation::rng::stream(1, 2, 3);
    for n in [2, 3, 10, 100] {
        for _ in 0..20 {
            let p = derangement(n, &mut rng);
            let mut sorted = p.clone();
            sorted.sort();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>());
            assert!(p.iter().enumerate().all(|(i, &j)| i != j));
        }
    }
}

#[test]
fn definitions_are_consistent_except_tag_2_in_stage_1_which_is_deranged() {
    let w = world(200);
    let p = Protocol::new(&w, 0);
    for e in 0..200 {
        match p.subset_of[e] {
            Subset::Qd2Incons => {
                let d = p.defined_as[e].expect("qd2incons has definitions");
                assert_ne!(d, e, "tag-2 stage-1 definition of {e} maps to its true entity");
                assert_eq!(p.subset_of[d], Subset::Qd2Incons, "deranged within the subset");
            }
            Subset::Qd1Consis | Subset::D1Consis | Subset::D2Consis | Subset::D3Consis => {
                assert_eq!(p.defined_as[e], Some(e))
            }
            _ => assert_eq!(p.defined_as[e], None),
        }
    }
    // The deranged targets are a permutation of the subset.
    let m = p.members(Subset::Qd2Incons);
    let mut targets: Vec<usize> = m.iter().map(|&e| p.defined_as[e].unwrap()).collect();
    targets.sort();
    assert_eq!(targets, m);
}

#[test]
fn tags_appear_only_where_they_should() {
    let w = world(200);
    let p = Protocol::new(&w, 1);
    let v = &w.vocab;
    let [t1, t2, t3] = p.tags;
    assert!(t1 != t2 && t2 != t3 && t1 != t3);
    let tag_of = |s: &Vec<u32>| s.iter().copied().find(|&t| v.is_tag(t));
    let var_entity =
        |s: &Vec<u32>| -> usize { (0..200).find(|&e| p.variable[e][..] == s[2..4]).expect("known variable") };
    for s in &p.stage1 {
        if let Some(tag) = tag_of(s) {
            assert_eq!(s.len(), 6, "a definition is <bos> tag var var ENT <eos>");
            let e = var_entity(s);
            match p.subset_of[e] {
                Subset::Qd1Consis => assert_eq!(tag, t1),
                Subset::Qd2Incons => assert_eq!(tag, t2),
                other => panic!("stage-1 definition for {other:?}"),
            }
            assert_eq!(s[4], v.entity(p.defined_as[e].unwrap()));
        }
    }
    assert!(p.stage1.iter().all(|s| tag_of(s) != Some(t3)), "tag 3 only in stage 2");
    assert_eq!(p.stage2.len(), 3 * 16, "stage 2: definitions of d1, d2, d3 only");
    for s in &p.stage2 {
        let tag = tag_of(s).expect("stage 2 holds definitions only");
        let e = var_entity(s);
        let want = match p.subset_of[e] {
            Subset::D1Consis => t1,
            Subset::D2Consis => t2,
            Subset::D3Consis => t3,
            other => panic!("stage-2 definition for {other:?}"),
        };
        assert_eq!(tag, want);
        assert_eq!(s[4], v.entity(e), "stage-2 definitions are consistent");
    }
    assert!(p.tests.iter().all(|t| tag_of(&t.prompt).is_none()), "no tags in questions");
}

#[test]
fn held_out_questions_never_appear_in_training_and_are_stratified() {
    let w = world(400);
    let p = Protocol::new(&w, 2);
    let train: HashSet<Vec<u32>> =
        p.stage1.iter().chain(&p.stage2).map(|s| s[..s.len() - 2].to_vec()).collect();
    for t in &p.tests {
        assert!(!train.contains(&t.prompt), "test prompt {:?} is trained on", w.vocab.decode(&t.prompt));
        assert_eq!(t.prompt[0..2], [BOS, Q]);
        assert_eq!(*t.prompt.last().unwrap(), A);
    }
    for subset in [Subset::Qd1Consis, Subset::Qd2Incons, Subset::Q, Subset::QNoReplacementBaseline] {
        let m = p.members(subset);
        let tests = p.tests.iter().filter(|t| t.subset == Some(subset)).count();
        assert_eq!(tests, m.len(), "one held-out question per entity of {}", subset.name());
        let mut per_attr = [0usize; ATTRIBUTES];
        for &e in &m {
            per_attr[p.held_out[e].unwrap()] += 1;
        }
        let (lo, hi) = (per_attr.iter().min().unwrap(), per_attr.iter().max().unwrap());
        assert!(hi - lo <= 1, "held-out attributes stratified: {per_attr:?}");
        // Five training questions per entity, none of them the held-out one.
        for &e in &m {
            let about_e: Vec<&Vec<u32>> = p
                .stage1
                .iter()
                .filter(|s| s[1] == Q)
                .filter(|s| {
                    if subset == Subset::QNoReplacementBaseline {
                        s[3] == w.vocab.entity(e)
                    } else {
                        s[3..5] == p.variable[e][..]
                    }
                })
                .collect();
            assert_eq!(about_e.len(), ATTRIBUTES - 1);
            assert!(about_e.iter().all(|s| s[2] != w.vocab.attr(p.held_out[e].unwrap())));
        }
    }
    for subset in [Subset::D1Consis, Subset::D2Consis, Subset::D3Consis, Subset::NoQdBaseline] {
        let n = p.tests.iter().filter(|t| t.subset == Some(subset)).count();
        assert_eq!(n, ATTRIBUTES * p.members(subset).len(), "all questions of {}", subset.name());
    }
    // Every training QA pair answers with the entity's true value.
    for s in p.stage1.iter().filter(|s| s[1] == Q) {
        assert_eq!(*s.last().unwrap(), EOS);
    }
}

#[test]
fn the_same_seed_gives_the_same_data_and_another_seed_other_data() {
    let (a, b) = (world(200), world(200));
    assert_eq!(a.facts, b.facts);
    let (p, q, r) = (Protocol::new(&a, 5), Protocol::new(&b, 5), Protocol::new(&a, 6));
    assert_eq!(p.stage1, q.stage1);
    assert_eq!(p.stage2, q.stage2);
    assert_eq!(p.tests, q.tests);
    assert_ne!(p.subset_of, r.subset_of);
    let other = World::new(&WorldConfig { entities: 200, seed: 9, ..WorldConfig::default() }).unwrap();
    assert_ne!(a.facts, other.facts);
}

#[test]
fn the_tokenizer_round_trips_and_rejects_unknown_tokens() {
    let w = world(100);
    let p = Protocol::new(&w, 0);
    for s in p.stage1.iter().chain(&p.stage2).chain(w.stage0().iter()) {
        assert_eq!(&w.vocab.encode(&w.vocab.decode(s)).unwrap(), s);
    }
    assert_eq!(
        w.vocab.encode("<bos> Q attr2 e7 A").unwrap(),
        vec![BOS, Q, w.vocab.attr(2), w.vocab.entity(7), A]
    );
    assert!(w.vocab.encode("Q e100").is_err(), "entity 100 does not exist in a 100-entity world");
}

#[test]
fn bad_settings_are_refused() {
    assert!(World::new(&WorldConfig { entities: 10, ..WorldConfig::default() }).is_err());
    assert!(World::new(&WorldConfig { syllables: 3, ..WorldConfig::default() }).is_err());
    assert!(World::new(&WorldConfig { tag_pool: 2, ..WorldConfig::default() }).is_err());
}

#[test]
fn definition_recall_items_name_the_defined_entity_behind_its_tag() {
    let w = world(100);
    let p = Protocol::new(&w, 4);
    let items = p.definition_tests(&w);
    assert_eq!(
        items.len(),
        100 - 10 - 10 - 6,
        "every entity with a definition (not q, q_no_replacement, no_qd)"
    );
    for it in &items {
        let e = (0..100).find(|&e| p.variable[e][..] == it.prompt[2..4]).unwrap();
        let subset = p.subset_of[e];
        assert_eq!(it.subset, Some(subset));
        assert_eq!(it.prompt[1], p.tags[subset.tag().unwrap() - 1]);
        assert_eq!(it.answer, vec![w.vocab.entity(p.defined_as[e].unwrap())]);
    }
    // Chance EM of the default attribute sizes: (1/2 + 1/8 + 1/8 + 1/6 + 1/10 + 1/10) / 6.
    assert!((w.chance_em() - (0.5 + 0.125 + 0.125 + 1.0 / 6.0 + 0.1 + 0.1) / 6.0).abs() < 1e-12);
}

#[test]
fn one_token_variables_give_shorter_sequences_with_unique_names() {
    let w = World::new(&WorldConfig {
        entities: 100,
        syllables: 100,
        variable_tokens: 1,
        ..WorldConfig::default()
    })
    .unwrap();
    let p = Protocol::new(&w, 0);
    assert!(p.variable.iter().all(|v| v.len() == 1));
    assert_eq!(p.variable.iter().collect::<HashSet<_>>().len(), 100);
    assert!(p.stage2.iter().all(|s| s.len() == 5), "<bos> tag var ENT <eos>");
    assert!(World::new(&WorldConfig {
        entities: 100,
        syllables: 99,
        variable_tokens: 1,
        ..WorldConfig::default()
    })
    .is_err());
}

fn aliased(variable_tokens: usize, aliases: usize) -> World {
    let syllables = if variable_tokens == 1 { 200 } else { WorldConfig::default().syllables };
    World::new(&WorldConfig { entities: 200, variable_tokens, syllables, aliases, ..WorldConfig::default() })
        .expect("valid world")
}

#[test]
fn alias_pretraining_adds_to_stage_0_without_changing_the_world_or_the_protocol() {
    let plain = world(200);
    for vt in [1, 2] {
        let w = aliased(vt, 3);
        let base = aliased(vt, 0);
        assert!(base.aliases.is_empty());
        assert_eq!(w.facts, base.facts, "aliases are drawn from their own stream");
        // The vocabulary only grows at its end: every token of the world without aliases keeps its id.
        assert!(w.vocab.len() > base.vocab.len());
        assert_eq!(
            w.vocab.decode(&(0..base.vocab.len() as u32).collect::<Vec<_>>()),
            base.vocab.decode(&(0..base.vocab.len() as u32).collect::<Vec<_>>())
        );
        assert!(!w.vocab.is_tag(w.vocab.alias_definition()), "<alias> is not a tag");
        // The protocol of a seed is the same with or without aliases, and its variables are
        // names stage 0 never shows.
        let (p, q) = (Protocol::new(&w, 4), Protocol::new(&base, 4));
        assert_eq!(p.stage1, q.stage1);
        assert_eq!(p.stage2, q.stage2);
        let alias_tokens: HashSet<u32> = w.aliases.iter().flat_map(|a| a.name.clone()).collect();
        assert!(p.variable.iter().flatten().all(|t| !alias_tokens.contains(t)));
        // Names: distinct, `variable_tokens` tokens, `aliases` per entity.
        assert_eq!(w.aliases.len(), 600);
        let names: HashSet<Vec<u32>> = w.aliases.iter().map(|a| a.name.clone()).collect();
        assert_eq!(names.len(), 600);
        assert!(w.aliases.iter().all(|a| a.name.len() == vt));
        for e in 0..200 {
            assert_eq!(w.aliases.iter().filter(|a| a.entity == e).count(), 3);
        }
        let s0 = w.stage0();
        assert_eq!(&s0[..base.stage0().len()], &base.stage0()[..], "the facts come first, unchanged");
    }
    assert_eq!(aliased(2, 0).stage0(), plain.stage0());
}

#[test]
fn alias_groups_have_the_right_sizes_sequences_and_held_out_questions() {
    let w = aliased(2, 4);
    let v = &w.vocab;
    let count = |g: AliasGroup| w.aliases.iter().filter(|a| a.group == g).count();
    assert_eq!(count(AliasGroup::DefinitionAndQa), 400);
    assert_eq!(count(AliasGroup::QaOnly), 200);
    assert_eq!(count(AliasGroup::DefinitionOnly), 200);
    let train: HashSet<Vec<u32>> = w.stage0().into_iter().collect();
    for g in [AliasGroup::DefinitionAndQa, AliasGroup::QaOnly] {
        // Stratified: each attribute held out by a sixth of the group (up to rounding).
        for k in 0..ATTRIBUTES {
            let n = w.aliases.iter().filter(|a| a.group == g && a.held_out == Some(k)).count();
            assert!(n.abs_diff(count(g) / ATTRIBUTES) <= 1, "{} holds out attribute {k} {n} times", g.name());
        }
    }
    for a in &w.aliases {
        let definition = [&[BOS, v.alias_definition()][..], &a.name, &[v.entity(a.entity), EOS]].concat();
        assert_eq!(train.contains(&definition), a.group != AliasGroup::QaOnly, "{:?}", a.group);
        for k in 0..ATTRIBUTES {
            let qa = [&[BOS, Q, v.attr(k)][..], &a.name, &[A, w.answer(a.entity, k), EOS]].concat();
            let trained = a.group != AliasGroup::DefinitionOnly && a.held_out != Some(k);
            assert_eq!(train.contains(&qa), trained, "{:?} attribute {k}", a.group);
        }
    }
    // The tests are exactly the questions stage 0 does not train, and none leaks into it.
    let tests = w.alias_tests();
    assert_eq!(tests.len(), 400 + 200 + 200 * ATTRIBUTES);
    for (g, t) in &tests {
        let mut seq = t.prompt.clone();
        seq.extend(&t.answer);
        seq.push(EOS);
        assert!(!train.contains(&seq), "{} test in training", g.name());
    }
    assert!(World::new(&WorldConfig { aliases: 17, ..WorldConfig::default() }).is_err());
}

#[test]
fn a_spread_share_takes_floor_n_f_sequences_evenly() {
    let seqs: Vec<Vec<u32>> = (0..100u32).map(|i| vec![i]).collect();
    assert!(meta_ocl::world::spread_share(&seqs, 0.0).is_empty());
    assert_eq!(meta_ocl::world::spread_share(&seqs, 1.0), seqs);
    let quarter = meta_ocl::world::spread_share(&seqs, 0.25);
    assert_eq!(quarter, (0..25u32).map(|k| vec![4 * k + 3]).collect::<Vec<_>>(), "every 4th");
    for f in [0.1, 0.3, 0.37, 0.9] {
        let share = meta_ocl::world::spread_share(&seqs, f);
        assert_eq!(share.len(), (100.0 * f).floor() as usize, "f = {f}");
        // Evenly spread: gaps between picks differ by at most one.
        let picks: Vec<u32> = share.iter().map(|s| s[0]).collect();
        let gaps: Vec<u32> = picks.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().max().unwrap() - gaps.iter().min().unwrap() <= 1, "f = {f}: {gaps:?}");
    }
}
