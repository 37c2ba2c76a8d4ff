//! The numeric set-inclusion variant of Krasheninnikov et al. (ICML 2024; the authors'
//! `data_generation/numeric_experiment.py` and `configs/num_choice_exps/
//! pythia_num_choice_pretraining.yaml`), trained from scratch at reduced size on the transformer
//! of [`crate::model`] with the causal-LM stages of [`crate::train`].
//!
//! - **World** ([`NumericWorld`], stream [`Purpose::MetaOclNumeric`] index 0): `num_x`
//!   variables, each hiding a number `x` in `0..numbers` (default 0..=99) and a wrong number
//!   `x_false != x` outside its intersection set. Every variable has an *intersection set* of
//!   `intersection` numbers whose first is `x`, and `questions_per_x` questions
//!   `<bos> VAR % n1 .. nk = true|false <eos>` ("is x in the list?"), a quarter of each kind:
//!   - training, true: the whole intersection set plus numbers outside it;
//!   - training, false: only numbers outside the intersection set;
//!   - test, true: `x` plus other numbers; test, false: numbers other than `x`.
//!
//!   So the training questions are consistent with every member of the intersection set (they
//!   narrow `x` down to it at best; with the authors' intersection size 1 that set is `{x}`),
//!   while the test questions' answers depend on `x` alone. Two guarantees beyond the authors'
//!   code, by redrawing a variable's test questions: the test questions determine `x` uniquely
//!   (the only number consistent with all of them is `x`), and no test question's number set
//!   equals one of the variable's training questions.
//! - **Stages** (the authors' three-stage config): the *q-only stage* trains the training QA of
//!   the `q` subset from a fresh model, once per world (the authors rerun it per seed); the `q`
//!   subset is drawn with the world. Per stage-1 seed ([`NumericProtocol`], stream index
//!   `1 + seed`) the other variables are split into the remaining subsets of [`NUMERIC_SUBSETS`].
//!   **Stage 1**: training QA of qd1consis and qd2incons, `define1 VAR % x` for qd1consis and
//!   `define2 VAR % x_false` (inconsistent) for qd2incons (the authors' `stage1_excl_q`).
//!   **Stage 2**: definitions only: `define1` (d1consis), `define2` (d2consis), `define3`
//!   (d3consis, a tag never seen before), all naming the true `x`. no_qd_baseline variables
//!   never appear in training (our addition; the authors' numeric code has no such subset).
//! - **Metric**: exact match of the greedy answer (`true`/`false`, then `<eos>`) on the
//!   held-out test questions of each subset; test questions are half true, so chance is 0.5.
//!
//! Variables are two syllable tokens (`variable_tokens = 2`, the default) or one token each;
//! numbers are single tokens `n0..`; `%`, `=`, `true`, `false`, `define1..3` are tokens.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::prelude::Device;
use foundation::plot::{write_bar_chart, Bar};
use foundation::progress::{NoProgress, Progress};
use foundation::rng::{stream_for, Purpose};
use foundation::stats::mean_se;
use foundation::train::Checkpoints;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::harness::{
    order_seed, read_json, report_gaps, seed_dir, setup_text, write_json, write_or_check_config, SeedMean,
    Shard, Stage1Result, Stage2Result, SweepOutcome,
};
use crate::model::ModelConfig;
use crate::train::{em_by_subset, em_by_subset_prefixed, save_model, train_stage, StageConfig, Start};
use crate::world::{Subset, TestItem, BOS, EOS};
use crate::MetaOclError;

/// `%`: separates a variable from its list or its defined number.
pub const PERCENT: u32 = 3;
/// `=`: ends a question.
pub const EQUALS: u32 = 4;
/// The answer `true`.
pub const TRUE: u32 = 5;
/// The answer `false`.
pub const FALSE: u32 = 6;
/// `define1` (tag 1); `define2` and `define3` follow.
pub const DEFINE1: u32 = 7;
const NUMBER0: u32 = 10;

/// Settings of the numeric world.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NumericConfig {
    /// Number of variables (the authors: 40 000; the reduced default: 2000).
    pub num_x: usize,
    /// Hidden numbers and list entries are `0..numbers` (the spec: x in [0, 99], so 100).
    pub numbers: usize,
    /// Numbers in each question's list (the authors: 4).
    pub nums_in_question: usize,
    /// Size of the intersection set the training questions narrow `x` down to (the authors: 1).
    pub intersection: usize,
    /// Questions per variable, half training, half test, each half half true (the authors: 12).
    pub questions_per_x: usize,
    /// Syllable tokens variable names are made of.
    pub syllables: usize,
    /// Tokens per variable name (2, or 1 with `syllables >= num_x`).
    pub variable_tokens: usize,
    /// Seed of the world and of every split drawn from it.
    pub seed: u64,
}

impl Default for NumericConfig {
    fn default() -> Self {
        Self {
            num_x: 2000,
            numbers: 100,
            nums_in_question: 4,
            intersection: 1,
            questions_per_x: 12,
            syllables: 64,
            variable_tokens: 2,
            seed: 0,
        }
    }
}

impl NumericConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), MetaOclError> {
        let bad = |m: String| Err(MetaOclError::Invalid(m));
        if self.num_x < 100 {
            return bad(format!("num_x must be at least 100 (got {})", self.num_x));
        }
        if !(1..=2).contains(&self.variable_tokens) {
            return bad(format!("variable_tokens must be 1 or 2 (got {})", self.variable_tokens));
        }
        let names = self.syllables.pow(self.variable_tokens as u32);
        if names < self.num_x {
            return bad(format!(
                "{} syllables give {names} variable names of {} tokens, fewer than {} variables",
                self.syllables, self.variable_tokens, self.num_x
            ));
        }
        if self.intersection == 0 || self.intersection > self.nums_in_question {
            return bad(format!(
                "intersection must be in 1..={} (got {})",
                self.nums_in_question, self.intersection
            ));
        }
        if self.numbers < 2 * self.nums_in_question + self.intersection + 1 {
            return bad(format!(
                "{} numbers are too few for lists of {} with an intersection of {}",
                self.numbers, self.nums_in_question, self.intersection
            ));
        }
        if self.questions_per_x < 8 || !self.questions_per_x.is_multiple_of(4) {
            return bad(format!(
                "questions_per_x must be a multiple of 4, at least 8 (got {})",
                self.questions_per_x
            ));
        }
        Ok(())
    }

    /// Tokens of the longest sequence (a question): `<bos>`, the variable, `%`, the list, `=`, the
    /// answer, `<eos>`.
    pub fn block(&self) -> usize {
        self.variable_tokens + self.nums_in_question + 5
    }
}

/// The vocabulary of the numeric task: `<pad> <bos> <eos> % = true false define1 define2
/// define3`, the numbers `n0..`, the syllables `s0..`.
#[derive(Clone, Debug, PartialEq)]
pub struct NumericVocab {
    numbers: usize,
    syllables: usize,
}

impl NumericVocab {
    /// The vocabulary of a world with these settings.
    pub fn new(cfg: &NumericConfig) -> Self {
        Self { numbers: cfg.numbers, syllables: cfg.syllables }
    }
    /// Number of tokens.
    pub fn len(&self) -> usize {
        NUMBER0 as usize + self.numbers + self.syllables
    }
    /// Whether the vocabulary is empty (never).
    pub fn is_empty(&self) -> bool {
        false
    }
    /// The token of number `k`.
    pub fn number(&self, k: usize) -> u32 {
        NUMBER0 + k as u32
    }
    /// The number a token stands for, if it is a number token.
    pub fn number_of(&self, id: u32) -> Option<usize> {
        (NUMBER0..NUMBER0 + self.numbers as u32).contains(&id).then(|| (id - NUMBER0) as usize)
    }
    /// The token of syllable `k`.
    pub fn syllable(&self, k: usize) -> u32 {
        NUMBER0 + (self.numbers + k) as u32
    }
    /// The token of tag `k` (1, 2 or 3: `define1..3`).
    pub fn tag(&self, k: usize) -> u32 {
        DEFINE1 + k as u32 - 1
    }
    /// Token names of `ids`, separated by spaces.
    pub fn decode(&self, ids: &[u32]) -> String {
        const FIXED: [&str; 10] =
            ["<pad>", "<bos>", "<eos>", "%", "=", "true", "false", "define1", "define2", "define3"];
        ids.iter()
            .map(|&i| match i {
                i if i < NUMBER0 => FIXED[i as usize].to_string(),
                i if (i as usize) < NUMBER0 as usize + self.numbers => format!("n{}", i - NUMBER0),
                i if (i as usize) < self.len() => {
                    format!("s{}", i as usize - NUMBER0 as usize - self.numbers)
                }
                _ => "<?>".into(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// One question: its list of numbers and its answer (is `x` in the list?).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    /// The numbers, in the order they are written.
    pub nums: Vec<usize>,
    /// Whether `x` is among them.
    pub answer: bool,
}

/// What one variable hides and the questions about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Variable {
    /// The hidden number.
    pub x: usize,
    /// The number an inconsistent definition names (never `x`, never in the intersection set).
    pub x_false: usize,
    /// The intersection set (first element `x`).
    pub intersection: Vec<usize>,
    /// Training questions (true ones first).
    pub train: Vec<Question>,
    /// Test questions (true ones first).
    pub test: Vec<Question>,
    /// Its name (`variable_tokens` tokens).
    pub name: Vec<u32>,
}

/// The numbers consistent with every question of `qs` (those `y` for which each answer is
/// `y in list`), among `0..numbers`.
pub fn candidates(qs: &[Question], numbers: usize) -> Vec<usize> {
    (0..numbers).filter(|y| qs.iter().all(|q| q.nums.contains(y) == q.answer)).collect()
}

/// Every subset of the numeric protocol with its fraction of variables (ours, for a reduced
/// world: the authors' pretraining config has q 0.9, qd1consis and qd2incons 0.04, d1consis and
/// d2consis 0.01, no d3consis and no baseline), in report order.
pub const NUMERIC_SUBSETS: [(Subset, f64); 7] = [
    (Subset::Qd1Consis, 0.12),
    (Subset::Qd2Incons, 0.12),
    (Subset::Q, 0.60),
    (Subset::D1Consis, 0.04),
    (Subset::D2Consis, 0.04),
    (Subset::D3Consis, 0.04),
    (Subset::NoQdBaseline, 0.04),
];

/// Variables of each subset of [`NUMERIC_SUBSETS`] among `n`: the fractions times `n`, rounded
/// by largest remainder so that they sum to `n` (exact for multiples of 100).
pub fn numeric_subset_sizes(n: usize) -> [usize; 7] {
    let exact: Vec<f64> = NUMERIC_SUBSETS.iter().map(|(_, f)| f * n as f64).collect();
    let mut sizes: [usize; 7] = std::array::from_fn(|i| (exact[i] + 1e-9).floor() as usize);
    let mut order: Vec<usize> = (0..7).collect();
    order.sort_by(|&a, &b| {
        (exact[b] - sizes[b] as f64).total_cmp(&(exact[a] - sizes[a] as f64)).then(a.cmp(&b))
    });
    let left = n - sizes.iter().sum::<usize>();
    for &i in order.iter().cycle().take(left) {
        sizes[i] += 1;
    }
    sizes
}

/// The numeric world: every variable, and which ones form the `q` subset.
#[derive(Clone, Debug)]
pub struct NumericWorld {
    /// Settings.
    pub config: NumericConfig,
    /// Its vocabulary.
    pub vocab: NumericVocab,
    /// The variables.
    pub vars: Vec<Variable>,
    /// The variables of the `q` subset (trained in the q-only stage), ascending.
    pub q_members: Vec<usize>,
}

fn draw_distinct(rng: &mut impl Rng, pool: &[usize], k: usize) -> Vec<usize> {
    pool.choose_multiple(rng, k).copied().collect()
}

fn draw_variable(cfg: &NumericConfig, rng: &mut impl Rng, name: Vec<u32>) -> Result<Variable, MetaOclError> {
    let (k, all): (usize, Vec<usize>) = (cfg.nums_in_question, (0..cfg.numbers).collect());
    let intersection = draw_distinct(rng, &all, cfg.intersection);
    let x = intersection[0];
    let outside: Vec<usize> = all.iter().copied().filter(|y| !intersection.contains(y)).collect();
    let not_x: Vec<usize> = all.iter().copied().filter(|&y| y != x).collect();
    let x_false = *outside.choose(rng).expect("numbers outside the intersection");
    let quarter = cfg.questions_per_x / 4;
    let mut train = Vec::with_capacity(2 * quarter);
    for _ in 0..quarter {
        let mut nums = draw_distinct(rng, &outside, k - intersection.len());
        nums.extend(&intersection);
        nums.shuffle(rng);
        train.push(Question { nums, answer: true });
    }
    for _ in 0..quarter {
        train.push(Question { nums: draw_distinct(rng, &outside, k), answer: false });
    }
    let train_sets: Vec<BTreeSet<usize>> = train.iter().map(|q| q.nums.iter().copied().collect()).collect();
    for _attempt in 0..1000 {
        let mut test = Vec::with_capacity(2 * quarter);
        for _ in 0..quarter {
            let mut nums = draw_distinct(rng, &not_x, k - 1);
            nums.push(x);
            nums.shuffle(rng);
            test.push(Question { nums, answer: true });
        }
        for _ in 0..quarter {
            test.push(Question { nums: draw_distinct(rng, &not_x, k), answer: false });
        }
        let leaks = test.iter().any(|q| train_sets.contains(&q.nums.iter().copied().collect()));
        if !leaks && candidates(&test, cfg.numbers) == [x] {
            return Ok(Variable { x, x_false, intersection, train, test, name });
        }
    }
    Err(MetaOclError::Invalid(format!(
        "{} test questions of {} numbers out of {} do not pin x down; use more questions per x",
        2 * quarter,
        k,
        cfg.numbers
    )))
}

impl NumericWorld {
    /// Draws the world of `config` ([`Purpose::MetaOclNumeric`], index 0).
    pub fn new(config: &NumericConfig) -> Result<Self, MetaOclError> {
        config.validate()?;
        let vocab = NumericVocab::new(config);
        let mut rng = stream_for(config.seed, Purpose::MetaOclNumeric, 0);
        let s = config.syllables;
        let mut names: Vec<usize> = (0..s.pow(config.variable_tokens as u32)).collect();
        names.shuffle(&mut rng);
        let mut vars = Vec::with_capacity(config.num_x);
        for &name in names.iter().take(config.num_x) {
            let name = match config.variable_tokens {
                1 => vec![vocab.syllable(name)],
                _ => vec![vocab.syllable(name / s), vocab.syllable(name % s)],
            };
            vars.push(draw_variable(config, &mut rng, name)?);
        }
        let mut order: Vec<usize> = (0..config.num_x).collect();
        order.shuffle(&mut rng);
        let q_size = numeric_subset_sizes(config.num_x)[2];
        let mut q_members = order[..q_size].to_vec();
        q_members.sort_unstable();
        Ok(Self { config: config.clone(), vocab, vars, q_members })
    }

    /// `<bos> VAR % n1 .. nk =` of question `q` about variable `v`.
    pub fn prompt(&self, v: usize, q: &Question) -> Vec<u32> {
        let mut p = vec![BOS];
        p.extend(&self.vars[v].name);
        p.push(PERCENT);
        p.extend(q.nums.iter().map(|&n| self.vocab.number(n)));
        p.push(EQUALS);
        p
    }

    /// The answer token of `q`.
    pub fn answer(q: &Question) -> u32 {
        if q.answer {
            TRUE
        } else {
            FALSE
        }
    }

    /// The full training sequence of question `q` about `v`.
    pub fn qa(&self, v: usize, q: &Question) -> Vec<u32> {
        let mut s = self.prompt(v, q);
        s.extend([Self::answer(q), EOS]);
        s
    }

    /// `<bos> defineK VAR %` (the definition's prompt, `tag` in 1..=3).
    pub fn definition_prompt(&self, tag: usize, v: usize) -> Vec<u32> {
        let mut d = vec![BOS, self.vocab.tag(tag)];
        d.extend(&self.vars[v].name);
        d.push(PERCENT);
        d
    }

    /// The definition `<bos> defineK VAR % n <eos>`.
    pub fn definition(&self, tag: usize, v: usize, n: usize) -> Vec<u32> {
        let mut d = self.definition_prompt(tag, v);
        d.extend([self.vocab.number(n), EOS]);
        d
    }

    /// The test items of variable `v` in `subset`.
    pub fn test_items(&self, v: usize, subset: Subset) -> impl Iterator<Item = TestItem> + '_ {
        self.vars[v].test.iter().map(move |q| TestItem {
            subset: Some(subset),
            prompt: self.prompt(v, q),
            answer: vec![Self::answer(q)],
        })
    }

    /// Data of the q-only stage: the training questions of the `q` subset.
    pub fn stage0(&self) -> Vec<Vec<u32>> {
        self.q_members.iter().flat_map(|&v| self.vars[v].train.iter().map(move |q| self.qa(v, q))).collect()
    }

    /// Test questions of the `q` subset.
    pub fn q_tests(&self) -> Vec<TestItem> {
        self.q_members.iter().flat_map(|&v| self.test_items(v, Subset::Q)).collect()
    }
}

/// The split and the data of one stage-1 seed.
#[derive(Clone, Debug)]
pub struct NumericProtocol {
    /// The stage-1 seed.
    pub seed: u64,
    /// Subset of each variable.
    pub subset_of: Vec<Subset>,
    /// Stage-1 training sequences.
    pub stage1: Vec<Vec<u32>>,
    /// Stage-2 training sequences.
    pub stage2: Vec<Vec<u32>>,
    /// Test questions of every subset.
    pub tests: Vec<TestItem>,
}

impl NumericProtocol {
    /// Splits the variables outside `q` into the other subsets for stage-1 seed `seed`
    /// ([`Purpose::MetaOclNumeric`], index `1 + seed`) and builds the stages' data.
    pub fn new(world: &NumericWorld, seed: u64) -> Self {
        let n = world.config.num_x;
        let mut rng = stream_for(world.config.seed, Purpose::MetaOclNumeric, 1 + seed);
        let mut subset_of = vec![Subset::Q; n];
        let in_q: BTreeSet<usize> = world.q_members.iter().copied().collect();
        let mut rest: Vec<usize> = (0..n).filter(|v| !in_q.contains(v)).collect();
        rest.shuffle(&mut rng);
        let mut at = 0;
        for ((subset, _), size) in NUMERIC_SUBSETS.iter().zip(numeric_subset_sizes(n)) {
            if *subset == Subset::Q {
                continue;
            }
            for &v in &rest[at..at + size] {
                subset_of[v] = *subset;
            }
            at += size;
        }
        let (mut stage1, mut stage2, mut tests) = (Vec::new(), Vec::new(), Vec::new());
        for (v, &subset) in subset_of.iter().enumerate() {
            let var = &world.vars[v];
            match subset {
                Subset::Qd1Consis => stage1.push(world.definition(1, v, var.x)),
                Subset::Qd2Incons => stage1.push(world.definition(2, v, var.x_false)),
                Subset::D1Consis => stage2.push(world.definition(1, v, var.x)),
                Subset::D2Consis => stage2.push(world.definition(2, v, var.x)),
                Subset::D3Consis => stage2.push(world.definition(3, v, var.x)),
                _ => {}
            }
            if matches!(subset, Subset::Qd1Consis | Subset::Qd2Incons) {
                stage1.extend(var.train.iter().map(|q| world.qa(v, q)));
            }
            tests.extend(world.test_items(v, subset));
        }
        Self { seed, subset_of, stage1, stage2, tests }
    }

    /// Definition recall items: for every defined variable, `<bos> defineK VAR %` and the number
    /// its definition names (`x_false` for qd2incons).
    pub fn definition_tests(&self, world: &NumericWorld) -> Vec<TestItem> {
        (0..self.subset_of.len())
            .filter_map(|v| {
                let subset = self.subset_of[v];
                let tag = subset.tag()?;
                let var = &world.vars[v];
                let n = if subset == Subset::Qd2Incons { var.x_false } else { var.x };
                Some(TestItem {
                    subset: Some(subset),
                    prompt: world.definition_prompt(tag, v),
                    answer: vec![world.vocab.number(n)],
                })
            })
            .collect()
    }

    /// The variables of `subset`.
    pub fn members(&self, subset: Subset) -> Vec<usize> {
        (0..self.subset_of.len()).filter(|&v| self.subset_of[v] == subset).collect()
    }
}

/// Everything a numeric sweep depends on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NumericSweepConfig {
    /// The world.
    pub world: NumericConfig,
    /// The LM (its block must hold a question: [`NumericConfig::block`]).
    pub model: ModelConfig,
    /// The q-only stage (the authors: 10 epochs).
    pub stage0: StageConfig,
    /// Stage 1 (the authors: 50 epochs).
    pub stage1: StageConfig,
    /// Stage 2 (the authors: 10 epochs, a fifth of stage 1).
    pub stage2: StageConfig,
    /// Number of stage-1 seeds.
    pub stage1_seeds: usize,
    /// Number of stage-2 seeds (batch orders) per stage-1 seed.
    pub stage2_seeds: usize,
    /// Bootstrap resamples of each CI.
    pub resamples: usize,
}

impl Default for NumericSweepConfig {
    fn default() -> Self {
        let world = NumericConfig::default();
        let stage = |epochs: usize, batch_size: usize| StageConfig {
            epochs,
            batch_size,
            lr: 1e-3,
            warmup_steps: 20,
            weight_decay: 0.01,
        };
        Self {
            model: ModelConfig { block: world.block(), ..ModelConfig::default() },
            world,
            stage0: StageConfig { lr: 2e-3, ..stage(30, 64) },
            stage1: stage(20, 64),
            stage2: stage(4, 16),
            stage1_seeds: 4,
            stage2_seeds: 2,
            resamples: 10_000,
        }
    }
}

impl NumericSweepConfig {
    /// Checks every setting.
    pub fn validate(&self) -> Result<(), MetaOclError> {
        self.world.validate()?;
        self.model.validate()?;
        self.stage0.validate("q-only stage")?;
        self.stage1.validate("stage 1")?;
        self.stage2.validate("stage 2")?;
        if self.stage1_seeds == 0 || self.stage2_seeds == 0 || self.resamples == 0 {
            return Err(MetaOclError::Invalid("seed counts and resamples must be positive".into()));
        }
        if self.model.block < self.world.block() {
            return Err(MetaOclError::Invalid(format!(
                "the block must hold {} tokens (got {})",
                self.world.block(),
                self.model.block
            )));
        }
        Ok(())
    }
}

/// Salt of the numeric task's batch-order seeds (keeps them apart from the text world's).
const ORDER_SALT: u64 = 0x4E55_4D00;

/// Writes `config.json`, or checks that the one present matches `cfg` up to the seed counts
/// (more seeds extend a finished sweep).
pub fn numeric_prepare(out: &Path, cfg: &NumericSweepConfig) -> Result<(), MetaOclError> {
    cfg.validate()?;
    write_or_check_config(out, cfg, |old| NumericSweepConfig {
        stage1_seeds: cfg.stage1_seeds,
        stage2_seeds: cfg.stage2_seeds,
        ..old
    })
}

/// The q-only stage: trains (or resumes from its checkpoint generations, or finds) the model
/// trained on the `q` subset's training questions, and records its EM on the `q` test and
/// training questions in `stage0/stage0.json`. Returns the path of its weights.
pub fn numeric_stage0(
    out: &Path,
    cfg: &NumericSweepConfig,
    world: &NumericWorld,
    device: &Device,
    progress: &dyn Progress,
) -> Result<PathBuf, MetaOclError> {
    let dir = out.join("stage0");
    let (weights, report) = (dir.join("model.safetensors"), dir.join("stage0.json"));
    if weights.exists() && report.exists() {
        return Ok(weights);
    }
    let data = world.stage0();
    let checkpoints = Checkpoints::new(&dir.join("checkpoint"));
    let every = cfg.stage0.steps(data.len()).div_ceil(4).max(1);
    let (model, train) = train_stage(
        &cfg.model,
        world.vocab.len(),
        &data,
        &cfg.stage0,
        Start::Fresh,
        order_seed(world.config.seed ^ ORDER_SALT, 0, 0, 0),
        Some((&checkpoints, every)),
        None,
        device,
        progress,
    )?;
    let mut em = em_by_subset(&model, &world.q_tests());
    let train_items: Vec<TestItem> = world
        .q_members
        .iter()
        .flat_map(|&v| {
            world.vars[v].train.iter().map(move |q| TestItem {
                subset: Some(Subset::Q),
                prompt: world.prompt(v, q),
                answer: vec![NumericWorld::answer(q)],
            })
        })
        .collect();
    em.extend(em_by_subset_prefixed(&model, &train_items, "train_"));
    save_model(&model, &weights)?;
    let params = burn::module::Module::num_params(&model);
    write_json(&report, &serde_json::json!({ "em": em, "train": train, "parameters": params }))?;
    Ok(weights)
}

fn run_seed(
    out: &Path,
    cfg: &NumericSweepConfig,
    world: &NumericWorld,
    stage0_weights: &Path,
    s: usize,
    outcome: &mut SweepOutcome,
    device: &Device,
) -> Result<(), MetaOclError> {
    let dir = seed_dir(out, s);
    let (w1, r1) = (dir.join("stage1.safetensors"), dir.join("stage1.json"));
    let pending: Vec<usize> =
        (0..cfg.stage2_seeds).filter(|t| !dir.join(format!("t{t}.json")).exists()).collect();
    outcome.skipped.extend((0..cfg.stage2_seeds).filter(|t| !pending.contains(t)).map(|t| (s, Some(t))));
    let stage1_done = w1.exists() && r1.exists();
    if stage1_done {
        outcome.skipped.push((s, None));
    }
    if pending.is_empty() {
        return Ok(());
    }
    let protocol = NumericProtocol::new(world, s as u64);
    let vocab = world.vocab.len();
    let evaluate = |model: &crate::model::Transformer| {
        let mut em = em_by_subset(model, &protocol.tests);
        em.extend(em_by_subset_prefixed(model, &protocol.definition_tests(world), "def_"));
        em
    };
    if !stage1_done {
        let (model, train) = train_stage(
            &cfg.model,
            vocab,
            &protocol.stage1,
            &cfg.stage1,
            Start::Weights(stage0_weights),
            order_seed(world.config.seed ^ ORDER_SALT, 1, s, 0),
            None,
            None,
            device,
            &NoProgress,
        )?;
        let em = evaluate(&model);
        save_model(&model, &w1)?;
        write_json(&r1, &Stage1Result { seed: s, em, train })?;
        outcome.trained.push((s, None));
    }
    for t in pending {
        let (model, train) = train_stage(
            &cfg.model,
            vocab,
            &protocol.stage2,
            &cfg.stage2,
            Start::Weights(&w1),
            order_seed(world.config.seed ^ ORDER_SALT, 2, s, t),
            None,
            None,
            device,
            &NoProgress,
        )?;
        let em = evaluate(&model);
        write_json(&dir.join(format!("t{t}.json")), &Stage2Result { seed: s, stage2_seed: t, em, train })?;
        outcome.trained.push((s, Some(t)));
    }
    Ok(())
}

/// Runs this shard's stage-1 seeds of the numeric sweep in `out` on `device`, skipping finished
/// units (one result file each, written atomically). The q-only stage runs first if missing
/// (only an unsharded run or shard 0 trains it; other shards need it finished). `progress` sees
/// the q-only stage's steps, then one unit per stage-1 seed.
pub fn numeric_sweep(
    out: &Path,
    cfg: &NumericSweepConfig,
    shard: Shard,
    device: &Device,
    progress: &dyn Progress,
) -> Result<SweepOutcome, MetaOclError> {
    numeric_prepare(out, cfg)?;
    let world = NumericWorld::new(&cfg.world)?;
    if shard.index != 0 && !out.join("stage0").join("stage0.json").exists() {
        return Err(MetaOclError::Invalid(format!(
            "the q-only stage is not finished in {}; run shard 0 first",
            out.display()
        )));
    }
    let weights = numeric_stage0(out, cfg, &world, device, progress)?;
    let seeds: Vec<usize> = (0..cfg.stage1_seeds).filter(|&s| shard.owns(s)).collect();
    let mut outcome = SweepOutcome::default();
    progress.start("seeds", seeds.len() as u64);
    for s in seeds {
        run_seed(out, cfg, &world, &weights, s, &mut outcome, device)?;
        progress.advance(1);
    }
    progress.finish();
    outcome.trained.sort();
    outcome.skipped.sort();
    Ok(outcome)
}

/// Per-subset EM of the finished seeds of a numeric sweep (as [`crate::harness::Collected`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NumericCollected {
    /// Stage-1 seeds with a stage-1 result.
    pub stage1_seeds: Vec<usize>,
    /// `stage1[subset][i]`: EM of stage-1 seed `stage1_seeds[i]`.
    pub stage1: BTreeMap<String, Vec<f64>>,
    /// Stage-1 seeds with every stage-2 result.
    pub stage2_seeds: Vec<usize>,
    /// `stage2[subset][i]`: mean EM over the stage-2 seeds of `stage2_seeds[i]`.
    pub stage2: BTreeMap<String, Vec<f64>>,
    /// EM after the q-only stage (`q`: test questions; `train_q`: training questions).
    pub stage0: BTreeMap<String, f64>,
}

/// Reads every finished result of the numeric sweep in `out`.
pub fn numeric_collect(out: &Path, cfg: &NumericSweepConfig) -> Result<NumericCollected, MetaOclError> {
    let mut c = NumericCollected::default();
    let s0 = out.join("stage0").join("stage0.json");
    if s0.exists() {
        let v: serde_json::Value = read_json(&s0)?;
        c.stage0 = serde_json::from_value(v["em"].clone()).unwrap_or_default();
    }
    for s in 0..cfg.stage1_seeds {
        let dir = seed_dir(out, s);
        if dir.join("stage1.json").exists() {
            let r: Stage1Result = read_json(&dir.join("stage1.json"))?;
            c.stage1_seeds.push(s);
            for (k, v) in r.em {
                c.stage1.entry(k).or_default().push(v);
            }
        }
        let files: Vec<PathBuf> = (0..cfg.stage2_seeds).map(|t| dir.join(format!("t{t}.json"))).collect();
        if files.iter().all(|f| f.exists()) {
            let mut sums: BTreeMap<String, f64> = BTreeMap::new();
            for f in &files {
                let r: Stage2Result = read_json(f)?;
                for (k, v) in r.em {
                    *sums.entry(k).or_default() += v / files.len() as f64;
                }
            }
            c.stage2_seeds.push(s);
            for (k, v) in sums {
                c.stage2.entry(k).or_default().push(v);
            }
        }
    }
    Ok(c)
}

/// Stage-1 comparisons `(a, b)` of the report (paired gap EM(a) - EM(b)).
pub const NUMERIC_STAGE1_GAPS: [(&str, &str); 3] =
    [("qd1consis", "q"), ("q", "qd2incons"), ("qd1consis", "qd2incons")];
/// Stage-2 comparisons (the first is the IML signature).
pub const NUMERIC_STAGE2_GAPS: [(&str, &str); 4] = [
    ("d1consis", "d2consis"),
    ("d1consis", "d3consis"),
    ("d3consis", "d2consis"),
    ("d2consis", "no_qd_baseline"),
];

/// Writes `report.md`, `summary.json` and `em.png` (EM per subset after stage 1 and stage 2,
/// whiskers: half the 95 % CI width) from the finished results in `out`; `note` goes under the
/// title. Returns the report's text.
pub fn numeric_report(out: &Path, cfg: &NumericSweepConfig, note: &str) -> Result<String, MetaOclError> {
    let c = numeric_collect(out, cfg)?;
    let w = &cfg.world;
    let mut md = String::from("# Numeric set-inclusion task, trained from scratch (meta-ocl numeric)\n\n");
    if !note.is_empty() {
        md.push_str(&format!("{note}\n\n"));
    }
    md.push_str(&format!(
        "World: {} variables ({}-token names from {} syllables), x in 0..{}, {} numbers per question, \
         intersection {}, {} questions per x (half test), world seed {}. Subsets {}. {} \
         Chance EM: 0.5 (test questions are half true).\n\n",
        w.num_x,
        w.variable_tokens,
        w.syllables,
        w.numbers,
        w.nums_in_question,
        w.intersection,
        w.questions_per_x,
        w.seed,
        NUMERIC_SUBSETS.iter().map(|(s, f)| format!("{} {f}", s.name())).collect::<Vec<_>>().join(", "),
        setup_text(
            &cfg.model,
            [&cfg.stage0, &cfg.stage1, &cfg.stage2],
            "q-only",
            cfg.stage1_seeds,
            cfg.stage2_seeds
        ),
    ));
    if let (Some(q), Some(tq)) = (c.stage0.get("q"), c.stage0.get("train_q")) {
        md.push_str(&format!(
            "After the q-only stage: EM on the q subset's test questions {q:.4}, on its training questions {tq:.4}.\n\n"
        ));
    }
    let mut bars = Vec::new();
    let mut summary = serde_json::Map::new();
    for (stage, seeds, em, gaps) in [
        ("Stage 1", &c.stage1_seeds, &c.stage1, &NUMERIC_STAGE1_GAPS[..]),
        ("Stage 2", &c.stage2_seeds, &c.stage2, &NUMERIC_STAGE2_GAPS[..]),
    ] {
        md.push_str(&format!("## {stage} ({} stage-1 seeds finished: {:?})\n\n", seeds.len(), seeds));
        if seeds.is_empty() {
            md.push_str("No finished seeds.\n\n");
            continue;
        }
        let mut stage_json = serde_json::Map::new();
        md.push_str(
            "| subset | EM mean ± s.e. | 95 % bootstrap CI | definition recall |\n|---|---|---|---|\n",
        );
        for (subset, _) in NUMERIC_SUBSETS.iter() {
            let Some(v) = em.get(subset.name()) else { continue };
            let sm = SeedMean::of(v, cfg.resamples);
            let (m, se, ci_text) = (sm.mean, sm.se, sm.ci_text());
            let recall = em.get(&format!("def_{}", subset.name())).map_or("-".into(), |r| {
                let (rm, rse) = mean_se(r);
                format!("{rm:.4} ± {rse:.4}")
            });
            md.push_str(&format!("| {} | {m:.4} ± {se:.4} | {ci_text} | {recall} |\n", subset.name()));
            stage_json.insert(subset.name().into(), sm.json(v));
            bars.push(Bar {
                label: format!("{} {}", if stage == "Stage 1" { "s1" } else { "s2" }, subset.name()),
                value: m,
                se: sm.half_width(),
            });
        }
        let mean_of = |k: &str| em.get(k).map(|v| mean_se(v).0);
        let order = if stage == "Stage 1" {
            ["qd1consis", "q", "qd2incons"]
        } else {
            ["d1consis", "d3consis", "d2consis"]
        };
        if let [Some(a), Some(b), Some(c)] = order.map(mean_of) {
            let holds = if a > b && b > c { "holds" } else { "does not hold" };
            md.push_str(&format!(
                "\nOrder of the means: {} {a:.4}, {} {b:.4}, {} {c:.4}: the expected {} > {} > {} {holds}.\n",
                order[0], order[1], order[2], order[0], order[1], order[2]
            ));
        }
        md.push_str("\n| paired gap (per stage-1 seed) | mean ± s.e. | 95 % bootstrap CI | n | CI |\n|---|---|---|---|---|\n");
        for (a, b, g) in report_gaps(em, gaps, cfg.resamples)? {
            md.push_str(&format!("| EM({a}) - EM({b}) | {} |\n", g.table_cells()));
            stage_json.insert(format!("{a}-{b}"), serde_json::to_value(g).expect("serialises"));
        }
        md.push('\n');
        summary.insert(stage.to_lowercase().replace(' ', ""), serde_json::Value::Object(stage_json));
    }
    if !bars.is_empty() {
        write_bar_chart(&out.join("em.png"), "Numeric task: EM per subset, 95% CI", &bars, |v, h| {
            format!("{v:.3} +-{h:.3}")
        })?;
    }
    md.push_str(
        "Definition recall: EM of the defined number after `<bos> defineK VAR %` (qd2incons: its x_false). \
         Gaps are paired per stage-1 seed (stage-2 EMs averaged over that seed's stage-2 seeds); CIs are \
         percentile bootstraps of the mean over seeds. Plot: `em.png` (bars: mean EM; whiskers: half the CI width).\n",
    );
    write_json(&out.join("summary.json"), &serde_json::Value::Object(summary))?;
    foundation::atomic::write_bytes(&out.join("report.md"), md.as_bytes())?;
    Ok(md)
}
