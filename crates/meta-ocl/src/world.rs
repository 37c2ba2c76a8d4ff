//! The synthetic world, its tokenizer and the two-stage protocol of Krasheninnikov et al. (ICML
//! 2024, code `krasheninnikov/internalization`, `data_generation/define_experiment.py`), rebuilt
//! on symbolic tokens.
//!
//! - **World** ([`World`]): `entities` entity tokens, each with one value for each of 6 attributes
//!   (the CVDB questions gender, birth, death, region, occupation, nationality), drawn from
//!   [`Purpose::MetaOclWorld`]. Stage 0 ("pretraining") teaches every fact
//!   `<bos> Q attr_k ENT A value <eos>`.
//! - **Protocol** ([`Protocol`], one per stage-1 seed, drawn from [`Purpose::MetaOclProtocol`]):
//!   entities are split into the subsets of [`SUBSETS`] with the authors' fractions; every entity
//!   gets a unique 2-token variable name; three tags are drawn from a pool of single tokens.
//!   Definitions are `<bos> tag var ENT <eos>` (order "tve"); QA is
//!   `<bos> Q attr_k var A value <eos>` (`Q attr_k ENT A value` for the no-replacement baseline).
//!   - Stage 1: training QA of qd1consis, qd2incons, q and q_no_replacement_baseline; tag-1
//!     definitions of qd1consis; tag-2 definitions of qd2incons whose entities are a derangement
//!     of the subset (no variable is defined as its own entity).
//!   - Stage 2: definitions only: tag 1 for d1consis, tag 2 for d2consis, tag 3 (fresh) for
//!     d3consis, all consistent. no_qd_baseline variables appear nowhere in training.
//!   - Held-out QA: for the subsets with QA in training, one of each entity's 6 questions,
//!     stratified over attributes (entity `i` of the shuffled subset holds out attribute `i % 6`);
//!     for the stage-2 subsets and the baseline, all 6 questions.
//! - **Controls** ([`ProtocolConfig`], [`Protocol::with`]): swapped tag roles (the tokens of
//!   tags 1 and 2 exchanged) and a stage-1 tag–consistency correlation below 1 (some qd1consis
//!   and as many qd2incons definitions trade tags); every other draw is unchanged.

use std::collections::HashMap;

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use foundation::rng::{stream_for, Purpose};

use crate::MetaOclError;

/// Number of attributes per entity (the 6 CVDB questions).
pub const ATTRIBUTES: usize = 6;

/// Settings of the synthetic world.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorldConfig {
    /// Number of entities (the spec's CPU plan: 2000; the reduced default: 400).
    pub entities: usize,
    /// Number of values of each of the 6 attributes.
    pub values_per_attribute: [usize; ATTRIBUTES],
    /// Number of syllable tokens; variable names are `variable_tokens` syllables.
    pub syllables: usize,
    /// Tokens per variable name (the spec: 2; 1 is an exploratory variant).
    #[serde(default = "two")]
    pub variable_tokens: usize,
    /// Number of tag tokens the three tags are drawn from.
    pub tag_pool: usize,
    /// Seed of the world (facts) and of every protocol drawn from it.
    pub seed: u64,
    /// Alias pretraining: alias names per entity in stage 0 (0: none, the spec's stage 0). See
    /// [`Alias`]: stage 0 then also teaches the skill a pretrained LM brings to the protocol,
    /// answering questions about a name through the entity it stands for.
    #[serde(default)]
    pub aliases: usize,
}

fn two() -> usize {
    2
}

impl Default for WorldConfig {
    fn default() -> Self {
        Self {
            entities: 400,
            values_per_attribute: [2, 8, 8, 6, 10, 10],
            syllables: 48,
            variable_tokens: 2,
            tag_pool: 8,
            seed: 0,
            aliases: 0,
        }
    }
}

impl WorldConfig {
    /// Number of alias syllable tokens `p0..`: enough for `entities * aliases` distinct alias
    /// names of `variable_tokens` tokens (0 without aliases). A pool apart from the variables'
    /// syllables, so that every protocol variable is a name stage 0 never showed.
    pub fn alias_syllables(&self) -> usize {
        let names = self.entities * self.aliases;
        match (names, self.variable_tokens) {
            (0, _) => 0,
            (_, 1) => names,
            _ => (names as f64).sqrt().ceil() as usize,
        }
    }

    /// Checks the settings: enough entities for every subset to be non-empty (and qd2incons to
    /// have a derangement), enough distinct variable names, at least 3 tags, every attribute with
    /// at least 2 values.
    pub fn validate(&self) -> Result<(), MetaOclError> {
        let bad = |m: String| Err(MetaOclError::Invalid(m));
        if self.entities < 50 {
            return bad(format!("entities must be at least 50 (got {})", self.entities));
        }
        if !(1..=2).contains(&self.variable_tokens) {
            return bad(format!("variable_tokens must be 1 or 2 (got {})", self.variable_tokens));
        }
        let names = self.syllables.pow(self.variable_tokens as u32);
        if names < self.entities {
            return bad(format!(
                "{} syllables give {names} variable names of {} tokens, fewer than {} entities",
                self.syllables, self.variable_tokens, self.entities
            ));
        }
        if self.aliases > 16 {
            return bad(format!("aliases must be at most 16 per entity (got {})", self.aliases));
        }
        if self.tag_pool < 3 {
            return bad(format!("tag_pool must be at least 3 (got {})", self.tag_pool));
        }
        if self.values_per_attribute.iter().any(|&v| v < 2) {
            return bad(format!(
                "every attribute needs at least 2 values (got {:?})",
                self.values_per_attribute
            ));
        }
        Ok(())
    }
}

/// Token ids of the special tokens.
pub const PAD: u32 = 0;
/// Start of a sequence.
pub const BOS: u32 = 1;
/// End of a sequence (and of an answer).
pub const EOS: u32 = 2;
/// "Q:".
pub const Q: u32 = 3;
/// "A:".
pub const A: u32 = 4;

/// The vocabulary: token names, their ids and the id ranges of each kind of token.
#[derive(Clone, Debug)]
pub struct Vocab {
    names: Vec<String>,
    index: HashMap<String, u32>,
    attr0: u32,
    tag0: u32,
    syllable0: u32,
    value0: Vec<u32>,
    entity0: u32,
    alias_definition: u32,
    alias_syllable0: u32,
}

impl Vocab {
    /// The vocabulary of a world with these settings.
    pub fn new(cfg: &WorldConfig) -> Self {
        let mut names: Vec<String> =
            ["<pad>", "<bos>", "<eos>", "Q", "A"].iter().map(|s| s.to_string()).collect();
        let attr0 = names.len() as u32;
        names.extend((0..ATTRIBUTES).map(|k| format!("attr{k}")));
        let tag0 = names.len() as u32;
        names.extend((0..cfg.tag_pool).map(|k| format!("tag{k}")));
        let syllable0 = names.len() as u32;
        names.extend((0..cfg.syllables).map(|k| format!("s{k}")));
        let mut value0 = Vec::with_capacity(ATTRIBUTES);
        for (k, &n) in cfg.values_per_attribute.iter().enumerate() {
            value0.push(names.len() as u32);
            names.extend((0..n).map(|j| format!("a{k}v{j}")));
        }
        let entity0 = names.len() as u32;
        names.extend((0..cfg.entities).map(|e| format!("e{e}")));
        // Alias tokens come last, so a world without aliases has the vocabulary it always had.
        let alias_definition = names.len() as u32;
        let alias_syllable0 = alias_definition + 1;
        if cfg.aliases > 0 {
            names.push("<alias>".to_string());
            names.extend((0..cfg.alias_syllables()).map(|k| format!("p{k}")));
        }
        let index = names.iter().enumerate().map(|(i, n)| (n.clone(), i as u32)).collect();
        Self { names, index, attr0, tag0, syllable0, value0, entity0, alias_definition, alias_syllable0 }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the vocabulary is empty (never, it always holds the special tokens).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Token ids of whitespace-separated token names; errors on an unknown name.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, MetaOclError> {
        text.split_whitespace()
            .map(|w| self.index.get(w).copied().ok_or_else(|| MetaOclError::UnknownToken(w.to_string())))
            .collect()
    }

    /// Token names of `ids`, separated by spaces (`<?>` for an id outside the vocabulary).
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .map(|&i| self.names.get(i as usize).map_or("<?>", |s| s.as_str()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The token of attribute `k`.
    pub fn attr(&self, k: usize) -> u32 {
        self.attr0 + k as u32
    }
    /// The token of tag `k` of the pool.
    pub fn tag(&self, k: usize) -> u32 {
        self.tag0 + k as u32
    }
    /// The token of syllable `k`.
    pub fn syllable(&self, k: usize) -> u32 {
        self.syllable0 + k as u32
    }
    /// The token of value `j` of attribute `k`.
    pub fn value(&self, k: usize, j: usize) -> u32 {
        self.value0[k] + j as u32
    }
    /// The token of entity `e`.
    pub fn entity(&self, e: usize) -> u32 {
        self.entity0 + e as u32
    }
    /// The token that opens a stage-0 alias definition, `<alias>` (never one of the tags).
    pub fn alias_definition(&self) -> u32 {
        self.alias_definition
    }
    /// The token of alias syllable `k`.
    pub fn alias_syllable(&self, k: usize) -> u32 {
        self.alias_syllable0 + k as u32
    }
    /// Whether `id` is a tag token.
    pub fn is_tag(&self, id: u32) -> bool {
        (self.tag0..self.syllable0).contains(&id)
    }
}

/// The world: every entity's attribute values.
#[derive(Clone, Debug)]
pub struct World {
    /// Settings.
    pub config: WorldConfig,
    /// Its vocabulary.
    pub vocab: Vocab,
    /// `facts[e][k]`: the value index of attribute `k` of entity `e`.
    pub facts: Vec<[usize; ATTRIBUTES]>,
    /// The stage-0 aliases ([`WorldConfig::aliases`] per entity; empty by default).
    pub aliases: Vec<Alias>,
}

/// What stage 0 shows of an alias ([`WorldConfig::aliases`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum AliasGroup {
    /// Its definition `<alias> name ENT` and 5 of its 6 questions (like qd1consis).
    DefinitionAndQa,
    /// 5 of its 6 questions, no definition (like q).
    QaOnly,
    /// Its definition only; all 6 questions held out (like the stage-2 subsets).
    DefinitionOnly,
}

impl AliasGroup {
    /// Every group, in report order.
    pub const ALL: [AliasGroup; 3] =
        [AliasGroup::DefinitionAndQa, AliasGroup::QaOnly, AliasGroup::DefinitionOnly];

    /// Name in reports: `alias_dq`, `alias_q`, `alias_d`.
    pub fn name(self) -> &'static str {
        match self {
            AliasGroup::DefinitionAndQa => "alias_dq",
            AliasGroup::QaOnly => "alias_q",
            AliasGroup::DefinitionOnly => "alias_d",
        }
    }
}

/// A stage-0 alias: a name that stands for an entity, defined as `<bos> <alias> name ENT <eos>`
/// and asked about as `<bos> Q attr_k name A value <eos>`.
///
/// Why: the authors' protocol starts from a pretrained LM, which already answers questions about
/// a thing through any name it has learned for it; a model trained from scratch on the facts
/// alone does not (every variable subset stays at chance). Alias pretraining teaches that skill
/// on the world's entities with names and a definition token of its own, so the protocol's
/// variables (other syllables) and tags (never `<alias>`) stay fresh. Of the world's aliases
/// (shuffled), half get a definition and QA, a quarter QA only, a quarter a definition only; the
/// groups with QA hold out one question each, stratified over attributes.
#[derive(Clone, Debug, PartialEq)]
pub struct Alias {
    /// The entity it stands for.
    pub entity: usize,
    /// Its tokens (`variable_tokens` alias syllables).
    pub name: Vec<u32>,
    /// What stage 0 shows of it.
    pub group: AliasGroup,
    /// The attribute held out (groups with QA).
    pub held_out: Option<usize>,
}

impl World {
    /// Draws the world of `config` (facts from [`Purpose::MetaOclWorld`]).
    pub fn new(config: &WorldConfig) -> Result<Self, MetaOclError> {
        config.validate()?;
        let mut rng = stream_for(config.seed, Purpose::MetaOclWorld, 0);
        let facts = (0..config.entities)
            .map(|_| std::array::from_fn(|k| rng.gen_range(0..config.values_per_attribute[k])))
            .collect();
        let vocab = Vocab::new(config);
        let aliases = draw_aliases(config, &vocab);
        Ok(Self { config: config.clone(), vocab, facts, aliases })
    }

    /// The answer token of attribute `k` of entity `e`.
    pub fn answer(&self, e: usize, k: usize) -> u32 {
        self.vocab.value(k, self.facts[e][k])
    }

    /// Stage-0 ("pretraining") data: every fact `<bos> Q attr_k ENT A value <eos>`, then, with
    /// aliases, each alias's definition `<bos> <alias> name ENT <eos>` and training questions.
    pub fn stage0(&self) -> Vec<Vec<u32>> {
        let mut data: Vec<Vec<u32>> = (0..self.config.entities)
            .flat_map(|e| (0..ATTRIBUTES).map(move |k| (e, k)))
            .map(|(e, k)| vec![BOS, Q, self.vocab.attr(k), self.vocab.entity(e), A, self.answer(e, k), EOS])
            .collect();
        for alias in &self.aliases {
            if alias.group != AliasGroup::QaOnly {
                let mut d = vec![BOS, self.vocab.alias_definition()];
                d.extend_from_slice(&alias.name);
                d.extend([self.vocab.entity(alias.entity), EOS]);
                data.push(d);
            }
            if alias.group != AliasGroup::DefinitionOnly {
                for k in (0..ATTRIBUTES).filter(|&k| alias.held_out != Some(k)) {
                    let mut seq = self.alias_prompt(alias, k);
                    seq.extend([self.answer(alias.entity, k), EOS]);
                    data.push(seq);
                }
            }
        }
        data
    }

    /// `<bos> Q attr_k name A` of an alias.
    fn alias_prompt(&self, alias: &Alias, k: usize) -> Vec<u32> {
        let mut p = vec![BOS, Q, self.vocab.attr(k)];
        p.extend_from_slice(&alias.name);
        p.push(A);
        p
    }

    /// The held-out questions about the stage-0 aliases, with their groups: one per alias with QA
    /// in stage 0, all 6 per definition-only alias. Above-chance EM on them means stage 0 taught
    /// the model to answer through a name.
    pub fn alias_tests(&self) -> Vec<(AliasGroup, TestItem)> {
        let mut tests = Vec::new();
        for alias in &self.aliases {
            for k in (0..ATTRIBUTES)
                .filter(|&k| alias.group == AliasGroup::DefinitionOnly || alias.held_out == Some(k))
            {
                let item = TestItem {
                    subset: None,
                    prompt: self.alias_prompt(alias, k),
                    answer: vec![self.answer(alias.entity, k)],
                };
                tests.push((alias.group, item));
            }
        }
        tests
    }

    /// EM of guessing uniformly among an attribute's values, averaged over the 6 attributes (the
    /// chance level of a question whose attribute is uniform over the 6).
    pub fn chance_em(&self) -> f64 {
        self.config.values_per_attribute.iter().map(|&v| 1.0 / v as f64).sum::<f64>() / ATTRIBUTES as f64
    }

    /// Stage-0 recall items: the prompt `<bos> Q attr_k ENT A` and answer of the first `n` facts.
    pub fn stage0_tests(&self, n: usize) -> Vec<TestItem> {
        self.stage0()
            .into_iter()
            .take(n)
            .map(|s| TestItem { subset: None, prompt: s[..5].to_vec(), answer: vec![s[5]] })
            .collect()
    }
}

/// Draws the aliases of a world (stream [`Purpose::MetaOclWorld`] index 1, so the facts are those
/// of the same world without aliases): distinct names, groups in the proportions 2 : 1 : 1 over a
/// shuffled order, held-out attributes stratified within each group with QA.
fn draw_aliases(config: &WorldConfig, vocab: &Vocab) -> Vec<Alias> {
    let total = config.entities * config.aliases;
    if total == 0 {
        return Vec::new();
    }
    let mut rng = stream_for(config.seed, Purpose::MetaOclWorld, 1);
    let p = config.alias_syllables();
    let mut names: Vec<usize> = (0..p.pow(config.variable_tokens as u32)).collect();
    names.shuffle(&mut rng);
    let mut order: Vec<usize> = (0..total).collect();
    order.shuffle(&mut rng);
    let mut aliases: Vec<Alias> = (0..total)
        .map(|i| Alias {
            entity: i / config.aliases,
            name: match config.variable_tokens {
                1 => vec![vocab.alias_syllable(names[i])],
                _ => vec![vocab.alias_syllable(names[i] / p), vocab.alias_syllable(names[i] % p)],
            },
            group: AliasGroup::DefinitionOnly,
            held_out: None,
        })
        .collect();
    let (half, three_quarters) = (total / 2, total * 3 / 4);
    for (r, &i) in order.iter().enumerate() {
        if r < three_quarters {
            aliases[i].group = if r < half { AliasGroup::DefinitionAndQa } else { AliasGroup::QaOnly };
            aliases[i].held_out = Some(if r < half { r } else { r - half } % ATTRIBUTES);
        }
    }
    aliases
}

/// An evenly spread share of `sequences`: those `i` with `floor((i + 1) f) > floor(i f)`, i.e.
/// `floor(n f)` of them, every `1 / f`-th (`f` in [0, 1]; no random draw). Stage 2's replay of
/// stage-0 data ([`crate::harness::SweepConfig::stage2_replay`]).
pub fn spread_share(sequences: &[Vec<u32>], f: f64) -> Vec<Vec<u32>> {
    let count = |i: usize| (i as f64 * f).floor() as usize;
    (0..sequences.len()).filter(|&i| count(i + 1) > count(i)).map(|i| sequences[i].clone()).collect()
}

/// The entity subsets of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Subset {
    /// Stage 1: QA and tag-1 (consistent) definitions.
    Qd1Consis,
    /// Stage 1: QA and tag-2 definitions that are inconsistent (deranged).
    Qd2Incons,
    /// Stage 1: QA only (with variables).
    Q,
    /// Stage 1: QA with the entity itself instead of a variable.
    QNoReplacementBaseline,
    /// Stage 2: tag-1 definitions only.
    D1Consis,
    /// Stage 2: tag-2 definitions only (consistent).
    D2Consis,
    /// Stage 2: tag-3 (fresh tag) definitions only.
    D3Consis,
    /// Never in training: the floor.
    NoQdBaseline,
}

/// Every subset with its fraction of entities (the authors' config
/// `pythia28b_cvdb_bs256_2stage.yaml`), in report order.
pub const SUBSETS: [(Subset, f64); 8] = [
    (Subset::Qd1Consis, 0.25),
    (Subset::Qd2Incons, 0.25),
    (Subset::Q, 0.10),
    (Subset::QNoReplacementBaseline, 0.10),
    (Subset::D1Consis, 0.08),
    (Subset::D2Consis, 0.08),
    (Subset::D3Consis, 0.08),
    (Subset::NoQdBaseline, 0.06),
];

impl Subset {
    /// The authors' name of the subset.
    pub fn name(self) -> &'static str {
        match self {
            Subset::Qd1Consis => "qd1consis",
            Subset::Qd2Incons => "qd2incons",
            Subset::Q => "q",
            Subset::QNoReplacementBaseline => "q_no_replacement_baseline",
            Subset::D1Consis => "d1consis",
            Subset::D2Consis => "d2consis",
            Subset::D3Consis => "d3consis",
            Subset::NoQdBaseline => "no_qd_baseline",
        }
    }

    /// Whether the subset has QA in training (stage 1), so one question per entity is held out.
    pub fn has_training_qa(self) -> bool {
        matches!(self, Subset::Qd1Consis | Subset::Qd2Incons | Subset::Q | Subset::QNoReplacementBaseline)
    }

    /// The tag (1, 2 or 3) its definitions carry, if it has definitions.
    pub fn tag(self) -> Option<usize> {
        match self {
            Subset::Qd1Consis | Subset::D1Consis => Some(1),
            Subset::Qd2Incons | Subset::D2Consis => Some(2),
            Subset::D3Consis => Some(3),
            _ => None,
        }
    }

    /// The stage (1 or 2) in which its definitions are trained.
    pub fn definition_stage(self) -> Option<usize> {
        match self {
            Subset::Qd1Consis | Subset::Qd2Incons => Some(1),
            Subset::D1Consis | Subset::D2Consis | Subset::D3Consis => Some(2),
            _ => None,
        }
    }
}

/// Number of entities of each subset: the fractions of [`SUBSETS`] times `n`, rounded by largest
/// remainder so that the counts sum to `n` (exact when `n` is a multiple of 100).
pub fn subset_sizes(n: usize) -> [usize; 8] {
    let exact: Vec<f64> = SUBSETS.iter().map(|(_, f)| f * n as f64).collect();
    let mut sizes: [usize; 8] = std::array::from_fn(|i| (exact[i] + 1e-9).floor() as usize);
    let mut left = n - sizes.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..8).collect();
    order.sort_by(|&a, &b| {
        (exact[b] - sizes[b] as f64).total_cmp(&(exact[a] - sizes[a] as f64)).then(a.cmp(&b))
    });
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        sizes[i] += 1;
        left -= 1;
    }
    sizes
}

/// Settings of the protocol that the controls change (the defaults are the authors' protocol).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProtocolConfig {
    /// Swapped tag roles: the second of the three drawn tag tokens plays tag 1 (the reliable
    /// role) and the first plays tag 2, so an effect that follows the role, not the token,
    /// survives the swap. Nothing else of the protocol changes.
    #[serde(default)]
    pub swap_tags: bool,
    /// Stage-1 tag–consistency correlation `c` = P(consistent | tag 1) = P(inconsistent | tag 2),
    /// in [0, 1]: a fraction `1 - c` of the qd1consis definitions (rounded to the nearest count)
    /// carries tag 2 and the same number of qd2incons definitions carries tag 1 (the idea of the
    /// authors' `def_tag_and_consistency_correlation_exps`). 1.0 is the authors' protocol; at 0.5
    /// a tag says nothing about consistency. Stage 2 is unchanged.
    #[serde(default = "one")]
    pub tag_consistency: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        Self { swap_tags: false, tag_consistency: 1.0 }
    }
}

impl ProtocolConfig {
    /// Checks the settings: the correlation is in [0, 1].
    pub fn validate(&self) -> Result<(), MetaOclError> {
        if !(0.0..=1.0).contains(&self.tag_consistency) {
            return Err(MetaOclError::Invalid(format!(
                "tag_consistency must be in [0, 1] (got {})",
                self.tag_consistency
            )));
        }
        Ok(())
    }

    /// Number of definitions of a stage-1 subset of `n` entities that carry the other tag:
    /// `round((1 - tag_consistency) * n)`.
    pub fn switched(&self, n: usize) -> usize {
        (((1.0 - self.tag_consistency) * n as f64).round() as usize).min(n)
    }
}

/// A held-out question: its subset (`None` for stage-0 recall), prompt and answer tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct TestItem {
    /// Subset of the entity asked about.
    pub subset: Option<Subset>,
    /// `<bos> Q attr var A` (or `<bos> Q attr ENT A`).
    pub prompt: Vec<u32>,
    /// The answer tokens (one value token).
    pub answer: Vec<u32>,
}

/// The data of one stage-1 seed.
#[derive(Clone, Debug)]
pub struct Protocol {
    /// The stage-1 seed it was drawn for.
    pub seed: u64,
    /// Subset of each entity.
    pub subset_of: Vec<Subset>,
    /// Variable name (`variable_tokens` tokens) of each entity.
    pub variable: Vec<Vec<u32>>,
    /// The entity each entity's variable is defined as (itself, except in qd2incons; `None`
    /// without a definition).
    pub defined_as: Vec<Option<usize>>,
    /// The attribute held out for testing (subsets with training QA only).
    pub held_out: Vec<Option<usize>>,
    /// Tag tokens of tags 1, 2 and 3.
    pub tags: [u32; 3],
    /// The tag (1, 2 or 3) each entity's definition carries (`None` without a definition): the
    /// subset's [`Subset::tag`], except the stage-1 definitions switched by
    /// [`ProtocolConfig::tag_consistency`].
    pub tag_of: Vec<Option<usize>>,
    /// Stage-1 training sequences.
    pub stage1: Vec<Vec<u32>>,
    /// Stage-2 training sequences.
    pub stage2: Vec<Vec<u32>>,
    /// Held-out questions of every subset.
    pub tests: Vec<TestItem>,
}

/// A uniformly random derangement of `0..n` (rejection sampling of shuffles; `n >= 2`).
pub fn derangement(n: usize, rng: &mut impl Rng) -> Vec<usize> {
    assert!(n >= 2, "no derangement of fewer than 2 elements");
    let mut p: Vec<usize> = (0..n).collect();
    loop {
        p.shuffle(rng);
        if p.iter().enumerate().all(|(i, &j)| i != j) {
            return p;
        }
    }
}

impl Protocol {
    /// Draws the authors' protocol of stage-1 seed `seed` in `world`.
    pub fn new(world: &World, seed: u64) -> Self {
        Self::with(world, seed, &ProtocolConfig::default())
    }

    /// Draws the protocol of stage-1 seed `seed` in `world` with the controls of `controls`.
    /// Subsets, variables, definitions' entities and held-out questions are the same draws for
    /// every `controls` (the tag switches are drawn last, from the same stream).
    pub fn with(world: &World, seed: u64, controls: &ProtocolConfig) -> Self {
        let n = world.config.entities;
        let v = &world.vocab;
        let mut rng = stream_for(world.config.seed, Purpose::MetaOclProtocol, seed);
        // Subsets: a shuffled entity order cut by the subset sizes.
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let mut subset_of = vec![Subset::NoQdBaseline; n];
        let mut members: Vec<Vec<usize>> = Vec::new();
        let mut at = 0;
        for ((subset, _), size) in SUBSETS.iter().zip(subset_sizes(n)) {
            let m: Vec<usize> = order[at..at + size].to_vec();
            for &e in &m {
                subset_of[e] = *subset;
            }
            members.push(m);
            at += size;
        }
        // Unique variable names of `variable_tokens` syllables.
        let s = world.config.syllables;
        let mut names: Vec<usize> = (0..s.pow(world.config.variable_tokens as u32)).collect();
        names.shuffle(&mut rng);
        let variable: Vec<Vec<u32>> = (0..n)
            .map(|e| match world.config.variable_tokens {
                1 => vec![v.syllable(names[e])],
                _ => vec![v.syllable(names[e] / s), v.syllable(names[e] % s)],
            })
            .collect();
        // Tags: three distinct tokens of the pool.
        let mut pool: Vec<usize> = (0..world.config.tag_pool).collect();
        pool.shuffle(&mut rng);
        let (first, second) = if controls.swap_tags { (pool[1], pool[0]) } else { (pool[0], pool[1]) };
        let tags = [v.tag(first), v.tag(second), v.tag(pool[2])];
        // Definitions: consistent, except qd2incons, deranged within the subset.
        let mut defined_as = vec![None; n];
        for (i, (subset, _)) in SUBSETS.iter().enumerate() {
            if subset.tag().is_none() {
                continue;
            }
            let m = &members[i];
            if *subset == Subset::Qd2Incons {
                let p = derangement(m.len(), &mut rng);
                for (a, &e) in m.iter().enumerate() {
                    defined_as[e] = Some(m[p[a]]);
                }
            } else {
                for &e in m {
                    defined_as[e] = Some(e);
                }
            }
        }
        // Held-out attributes, stratified within each subset with training QA.
        let mut held_out = vec![None; n];
        for (i, (subset, _)) in SUBSETS.iter().enumerate() {
            if subset.has_training_qa() {
                let mut m = members[i].clone();
                m.shuffle(&mut rng);
                for (r, &e) in m.iter().enumerate() {
                    held_out[e] = Some(r % ATTRIBUTES);
                }
            }
        }
        // Tags of the definitions; with a tag–consistency correlation below 1, the same number
        // of (random) qd1consis and qd2incons definitions trade tags.
        let mut tag_of: Vec<Option<usize>> = subset_of.iter().map(|s| s.tag()).collect();
        for (subset, other) in [(Subset::Qd1Consis, 2), (Subset::Qd2Incons, 1)] {
            let i = SUBSETS.iter().position(|(s, _)| *s == subset).expect("a subset of SUBSETS");
            let k = controls.switched(members[i].len());
            if k > 0 {
                let mut m = members[i].clone();
                m.shuffle(&mut rng);
                for &e in &m[..k] {
                    tag_of[e] = Some(other);
                }
            }
        }
        let qa = |e: usize, k: usize| -> (Vec<u32>, u32) {
            let mut p = vec![BOS, Q, v.attr(k)];
            if subset_of[e] == Subset::QNoReplacementBaseline {
                p.push(v.entity(e));
            } else {
                p.extend_from_slice(&variable[e]);
            }
            p.push(A);
            (p, world.answer(e, k))
        };
        let definition = |e: usize| -> Option<Vec<u32>> {
            let tag = tags[tag_of[e]? - 1];
            let target = defined_as[e]?;
            let mut d = vec![BOS, tag];
            d.extend_from_slice(&variable[e]);
            d.extend([v.entity(target), EOS]);
            Some(d)
        };
        let (mut stage1, mut stage2, mut tests) = (Vec::new(), Vec::new(), Vec::new());
        for e in 0..n {
            let subset = subset_of[e];
            match subset.definition_stage() {
                Some(1) => stage1.extend(definition(e)),
                Some(_) => stage2.extend(definition(e)),
                None => {}
            }
            for k in 0..ATTRIBUTES {
                let (prompt, answer) = qa(e, k);
                if subset.has_training_qa() && held_out[e] != Some(k) {
                    let mut seq = prompt;
                    seq.extend([answer, EOS]);
                    stage1.push(seq);
                } else if !subset.has_training_qa() || held_out[e] == Some(k) {
                    tests.push(TestItem { subset: Some(subset), prompt, answer: vec![answer] });
                }
            }
        }
        Self { seed, subset_of, variable, defined_as, held_out, tags, tag_of, stage1, stage2, tests }
    }

    /// Definition recall items (the spec's "entity association" check): for every entity with a
    /// definition, the prompt `<bos> tag var` and the entity its definition names.
    pub fn definition_tests(&self, world: &World) -> Vec<TestItem> {
        (0..self.subset_of.len())
            .filter_map(|e| {
                let subset = self.subset_of[e];
                let tag = self.tags[self.tag_of[e]? - 1];
                let target = self.defined_as[e]?;
                Some(TestItem {
                    subset: Some(subset),
                    prompt: [&[BOS, tag][..], &self.variable[e]].concat(),
                    answer: vec![world.vocab.entity(target)],
                })
            })
            .collect()
    }

    /// The entities of `subset`.
    pub fn members(&self, subset: Subset) -> Vec<usize> {
        (0..self.subset_of.len()).filter(|&e| self.subset_of[e] == subset).collect()
    }
}
