//! The MNIST analogue of the meta-OCL protocol (spec `shared/specs/p6-meta-ocl.md`, "MNIST
//! analogue", our design, not the paper's): the same subsets, derangement, held-out questions and
//! stages as the text world, with images instead of tokens and a small CNN instead of the LM.
//!
//! - **Entities**: the 100 two-digit numbers `00..99`, each rendered from random MNIST digits
//!   (tens digit left, units digit right, each resized to 16x16). Attributes
//!   ([`VISION_ATTRIBUTES`]): tens, units, parity, digit sum > 9, tens > units, number mod 3.
//! - **Canvas** ([`HEIGHT`] x [`WIDTH`] = 24 x 32, background -1): a header band of 8 rows with
//!   a *question corner* (top left, 8x8: a question patch per attribute, or the ID patch) and a
//!   *tag corner* (top right, 8x8: tag 1, 2 or 3); below it the content, 16 x 32: an entity
//!   rendering, or a variable's glyph (a random 8x8 binary pattern shown at 2x, centred).
//! - **Outputs**: one output layer of [`CLASSES`] = 129 logits, 100 entity IDs followed by the
//!   values of the 6 attributes (29), read as separate heads ([`head_of`]): the ID head and one
//!   head per attribute. An example's softmax (training) and argmax (accuracy, the analogue of
//!   exact match) run over the head its patch asks for. Why not one softmax over all 129: stage 2
//!   trains only definitions, whose targets are all IDs, and with one softmax it teaches the
//!   output layer to answer every canvas with an ID, which drove every subset's QA accuracy below
//!   chance once the definitions were learned (measured 2026-11-29, 3 seeds: 0.10-0.21 against
//!   chance 0.34). The LM's answers after `A` are never entity tokens in training, so it has
//!   no such shortcut; separate heads take it away here too.
//! - **Stage 0**: (question patch + entity rendering) -> attribute value; (ID patch + entity
//!   rendering) -> entity ID. **QA**: (question patch + glyph) -> value (the entity rendering
//!   for q_no_replacement_baseline). **Definition**: (tag patch + glyph) -> entity ID, trained
//!   with cross-entropy like every other example (the LM loss on the entity token).
//! - **Protocol**: the subsets, the qd2incons derangement and the stratified held-out attributes
//!   are the text protocol's ([`Protocol::new`]) of a 100-entity [`World`] with the same world
//!   seed and stage-1 seed, so the split is defined once; glyphs and tags are drawn per stage-1
//!   seed from [`Purpose::MetaOclVision`].
//! - **Harness** ([`vision_sweep`], [`vision_report`]): stage 0 once, then per stage-1 seed
//!   stage 1 and its stage-2 seeds (which change the batch order), one JSON per finished stage-1
//!   seed (written atomically; a rerun skips it), per-subset accuracy on held-out QA, the
//!   paired gaps with bootstrap CIs ([`paired_gap`]), `report.md`, `summary.json`, `acc.png` and
//!   `gaps.png`.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::TensorData;
use foundation::layers::{TapConv2d, TapLinear};
use foundation::loss::{one_hot, softmax_cross_entropy};
use foundation::plot::{write_bar_chart, Bar};
use foundation::progress::Progress;
use foundation::rng::{epoch_order, stream_for, Purpose};
use foundation::shard::Shard;
use foundation::stats::mean_se;
use foundation::tap::Tap;
use foundation::train::{load_module, save_module, Objective, Trainer};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::harness::{read_json, write_json, write_or_check_config};

use crate::harness::{order_seed, report_gaps, SeedMean, STAGE1_GAPS, STAGE2_GAPS};
use crate::train::{argmax, RecentLoss, StageConfig, StageReport};
use crate::world::{Protocol, Subset, World, WorldConfig, ATTRIBUTES, SUBSETS};
use crate::MetaOclError;

/// Number of entities: the two-digit numbers `00..99`.
pub const ENTITIES: usize = 100;

/// The attributes of a number and their numbers of values.
pub const VISION_ATTRIBUTES: [(&str, usize); ATTRIBUTES] =
    [("tens", 10), ("units", 10), ("parity", 2), ("sum_gt_9", 2), ("tens_gt_units", 2), ("mod3", 3)];

/// Number of outputs of the head: entity IDs `0..100`, then every attribute's values.
pub const CLASSES: usize = ENTITIES + 10 + 10 + 2 + 2 + 2 + 3;

/// Side of a patch or a glyph (pixels).
pub const PATCH: usize = 8;
/// Side of a rendered digit.
pub const DIGIT: usize = 16;
/// Canvas height: the header band and the content.
pub const HEIGHT: usize = PATCH + DIGIT;
/// Canvas width: two digits.
pub const WIDTH: usize = 2 * DIGIT;
/// Pixels of an entity rendering (the content area, `DIGIT x WIDTH`).
pub const CONTENT: usize = DIGIT * WIDTH;
/// Fewest differing pixels between two glyphs, or two tags, or two question patches.
pub const MIN_PATTERN_DISTANCE: u32 = 12;

const ON: f32 = 1.0;
const OFF: f32 = -1.0;

/// Value index of attribute `k` of entity (number) `e`.
pub fn attribute_value(e: usize, k: usize) -> usize {
    let (t, u) = (e / 10, e % 10);
    match k {
        0 => t,
        1 => u,
        2 => e % 2,
        3 => usize::from(t + u > 9),
        4 => usize::from(t > u),
        _ => e % 3,
    }
}

/// Output index of value `j` of attribute `k`.
pub fn value_class(k: usize, j: usize) -> usize {
    ENTITIES + VISION_ATTRIBUTES[..k].iter().map(|(_, n)| n).sum::<usize>() + j
}

/// The head (range of outputs) class `target` belongs to: the ID head `0..ENTITIES` or the
/// values of one attribute.
pub fn head_of(target: usize) -> Range<usize> {
    let mut start = ENTITIES;
    if target < start {
        return 0..ENTITIES;
    }
    for &(_, n) in &VISION_ATTRIBUTES {
        if target < start + n {
            return start..start + n;
        }
        start += n;
    }
    panic!("class {target} is outside the {CLASSES} outputs")
}

/// Added to the logits outside an example's head: `exp` of it underflows to 0 in f32, so the
/// softmax runs over the head alone.
pub const OUTSIDE_HEAD: f32 = -1.0e4;

/// Accuracy of guessing uniformly among an attribute's values, averaged over the attributes (the
/// held-out attributes are stratified, so this is the chance level of every subset).
pub fn chance_accuracy() -> f64 {
    VISION_ATTRIBUTES.iter().map(|&(_, n)| 1.0 / n as f64).sum::<f64>() / ATTRIBUTES as f64
}

/// Draws `n` random 8x8 binary patterns (bit `r * 8 + c` is pixel `(r, c)`), pairwise at least
/// [`MIN_PATTERN_DISTANCE`] pixels apart and each with 16 to 48 pixels on.
pub fn distinct_patterns(n: usize, rng: &mut impl Rng) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::with_capacity(n);
    while out.len() < n {
        let p: u64 = rng.gen();
        if !(16..=48).contains(&p.count_ones()) {
            continue;
        }
        if out.iter().all(|q| (p ^ q).count_ones() >= MIN_PATTERN_DISTANCE) {
            out.push(p);
        }
    }
    out
}

/// What fills the content area of a canvas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    /// Image `i` of the world's renderings ([`VisionWorld::rendering`]).
    Image(usize),
    /// A glyph (8x8 pattern, drawn at 2x in the middle of the content area).
    Glyph(u64),
}

/// One input canvas and its class: what is in the question corner, the tag corner and the
/// content area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Example {
    /// The question or ID patch in the top-left corner (`None`: empty).
    pub question: Option<u64>,
    /// The tag patch in the top-right corner (`None`: empty).
    pub tag: Option<u64>,
    /// The content.
    pub content: Content,
    /// The class to predict ([`CLASSES`] outputs).
    pub target: usize,
    /// Subset of the entity (for evaluation; `None` for stage-0 data).
    pub subset: Option<Subset>,
}

/// Draws pattern `p` into `canvas` with its top-left pixel at `(row, col)`, each pattern pixel a
/// `scale` x `scale` square.
fn draw_pattern(canvas: &mut [f32], p: u64, row: usize, col: usize, scale: usize) {
    for r in 0..PATCH * scale {
        for c in 0..PATCH * scale {
            let bit = (r / scale) * PATCH + c / scale;
            canvas[(row + r) * WIDTH + col + c] = if p >> bit & 1 == 1 { ON } else { OFF };
        }
    }
}

/// Settings of a vision sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    /// World seed: renderings and question patches; also the text world whose protocol gives the
    /// subsets.
    pub seed: u64,
    /// Where MNIST comes from: `embedded` (the subset in the data crate) or a directory with the
    /// four IDX files.
    pub mnist: String,
    /// Renderings of each entity in stage 0 (each a fresh pair of random MNIST digits).
    pub renderings: usize,
    /// Channels of the two 3x3 convolutions.
    pub channels: [usize; 2],
    /// Width of the hidden layer.
    pub hidden: usize,
    /// Stage 0: every entity's attributes and ID from its renderings, from a fresh model.
    pub stage0: StageConfig,
    /// Stage 1 (twice the stage-2 epochs, as in the spec).
    pub stage1: StageConfig,
    /// Copies of each stage-1 definition in every stage-1 epoch (1: each once, as in the text
    /// world; see [`repeat_definitions`]). A `config.json` without the field reads as 1.
    #[serde(default = "one")]
    pub definition_repeats: usize,
    /// Stage 2: definitions only.
    pub stage2: StageConfig,
    /// Number of stage-1 seeds.
    pub stage1_seeds: usize,
    /// Number of stage-2 seeds per stage-1 seed.
    pub stage2_seeds: usize,
    /// Bootstrap resamples of each CI.
    pub resamples: usize,
}

impl Default for VisionConfig {
    fn default() -> Self {
        let stage = |epochs: usize, batch_size: usize, lr: f64| StageConfig {
            epochs,
            batch_size,
            lr,
            warmup_steps: 20,
            weight_decay: 0.01,
        };
        Self {
            seed: 0,
            mnist: "embedded".into(),
            renderings: 4,
            channels: [16, 32],
            hidden: 128,
            stage0: stage(20, 64, 2e-3),
            stage1: stage(40, 32, 1e-3),
            stage2: stage(20, 4, 1e-3),
            definition_repeats: 1,
            stage1_seeds: 20,
            stage2_seeds: 3,
            resamples: 10_000,
        }
    }
}

impl VisionConfig {
    /// Checks every setting.
    pub fn validate(&self) -> Result<(), MetaOclError> {
        self.stage0.validate("stage 0")?;
        self.stage1.validate("stage 1")?;
        self.stage2.validate("stage 2")?;
        let bad = |m: String| Err(MetaOclError::Invalid(m));
        if self.renderings == 0
            || self.channels.contains(&0)
            || self.hidden == 0
            || self.definition_repeats == 0
        {
            return bad(format!(
                "renderings, channels, hidden and definition repeats must be positive (got {}, {:?}, {}, {})",
                self.renderings, self.channels, self.hidden, self.definition_repeats
            ));
        }
        if self.stage1_seeds == 0 || self.stage2_seeds == 0 || self.resamples == 0 {
            return bad("seed counts and resamples must be positive".into());
        }
        Ok(())
    }

    /// The MNIST directory, `None` for the embedded subset.
    pub fn mnist_dir(&self) -> Option<PathBuf> {
        (self.mnist != "embedded").then(|| PathBuf::from(&self.mnist))
    }
}

fn one() -> usize {
    1
}

/// `examples` followed by `repeats - 1` more copies of each definition (the examples with a tag),
/// in order: every definition appears `repeats` times per epoch, every question once.
pub fn repeat_definitions(examples: &[Example], repeats: usize) -> Vec<Example> {
    let extra = examples.iter().filter(|ex| ex.tag.is_some());
    let mut out = examples.to_vec();
    for _ in 1..repeats {
        out.extend(extra.clone().copied());
    }
    out
}

/// The rendered world: every entity's renderings, held-out renderings from the MNIST test split,
/// and the question and ID patches.
#[derive(Clone, Debug)]
pub struct VisionWorld {
    /// Renderings per entity in stage 0.
    pub renderings: usize,
    /// All renderings, [`CONTENT`] pixels each: entity `e`'s training rendering `r` is image
    /// `e * renderings + r`; its rendering from test-split digits is image
    /// `ENTITIES * renderings + e`.
    pub images: Vec<f32>,
    /// Question patches of the attributes.
    pub questions: [u64; ATTRIBUTES],
    /// The ID patch.
    pub id_patch: u64,
}

impl VisionWorld {
    /// Renders the world of `cfg` from `train` and `test` (MNIST, 28x28 or any size, resized to
    /// 16x16), drawing from [`Purpose::MetaOclVision`] index 0.
    pub fn from_datasets(
        cfg: &VisionConfig,
        train: &data::Dataset,
        test: &data::Dataset,
    ) -> Result<Self, MetaOclError> {
        let mut rng = stream_for(cfg.seed, Purpose::MetaOclVision, 0);
        let patterns = distinct_patterns(ATTRIBUTES + 1, &mut rng);
        let (train, test) = (train.resize_area(DIGIT, DIGIT), test.resize_area(DIGIT, DIGIT));
        let by_label = |d: &data::Dataset, what: &str| -> Result<Vec<Vec<usize>>, MetaOclError> {
            let mut v = vec![Vec::new(); 10];
            for (i, &l) in d.labels.iter().enumerate() {
                v[l as usize].push(i);
            }
            if let Some(k) = v.iter().position(|x| x.is_empty()) {
                return Err(MetaOclError::Invalid(format!(
                    "the MNIST {what} split has no image of digit {k}"
                )));
            }
            Ok(v)
        };
        let (train_idx, test_idx) = (by_label(&train, "training")?, by_label(&test, "test")?);
        let mut images = Vec::with_capacity((ENTITIES * cfg.renderings + ENTITIES) * CONTENT);
        let mut render =
            |d: &data::Dataset, idx: &[Vec<usize>], e: usize, rng: &mut rand_chacha::ChaCha8Rng| {
                let left = *idx[e / 10].choose(rng).expect("non-empty");
                let right = *idx[e % 10].choose(rng).expect("non-empty");
                let (a, b) = (d.image(left), d.image(right));
                for r in 0..DIGIT {
                    images.extend_from_slice(&a[r * DIGIT..(r + 1) * DIGIT]);
                    images.extend_from_slice(&b[r * DIGIT..(r + 1) * DIGIT]);
                }
            };
        for e in 0..ENTITIES {
            for _ in 0..cfg.renderings {
                render(&train, &train_idx, e, &mut rng);
            }
        }
        for e in 0..ENTITIES {
            render(&test, &test_idx, e, &mut rng);
        }
        Ok(Self {
            renderings: cfg.renderings,
            images,
            questions: std::array::from_fn(|k| patterns[k]),
            id_patch: patterns[ATTRIBUTES],
        })
    }

    /// Loads MNIST as `cfg.mnist` says (the embedded subset, or a directory) and renders the
    /// world.
    pub fn new(cfg: &VisionConfig) -> Result<Self, MetaOclError> {
        let dir = cfg.mnist_dir();
        let load = |split| {
            data::load_mnist(dir.as_deref(), split)
                .map_err(|e| MetaOclError::Invalid(format!("MNIST ({}): {e}", cfg.mnist)))
        };
        Self::from_datasets(cfg, &load(data::Split::Train)?, &load(data::Split::Test)?)
    }

    /// Image index of entity `e`'s training rendering `r`.
    pub fn rendering(&self, e: usize, r: usize) -> usize {
        e * self.renderings + r
    }

    /// Image index of entity `e`'s rendering from test-split digits (never trained on).
    pub fn fresh_rendering(&self, e: usize) -> usize {
        ENTITIES * self.renderings + e
    }

    /// The pixels of image `i` ([`CONTENT`] values, `DIGIT` rows of `WIDTH`).
    pub fn image(&self, i: usize) -> &[f32] {
        &self.images[i * CONTENT..(i + 1) * CONTENT]
    }

    /// The canvas of `ex`, [`HEIGHT`] x [`WIDTH`] pixels row-major: the question patch in rows
    /// `0..8`, columns `0..8`; the tag in rows `0..8`, columns `WIDTH - 8..WIDTH`; the content in
    /// rows `8..24` (a glyph at 2x in columns `8..24`); -1 elsewhere.
    pub fn compose(&self, ex: &Example) -> Vec<f32> {
        let mut canvas = vec![OFF; HEIGHT * WIDTH];
        if let Some(q) = ex.question {
            draw_pattern(&mut canvas, q, 0, 0, 1);
        }
        if let Some(t) = ex.tag {
            draw_pattern(&mut canvas, t, 0, WIDTH - PATCH, 1);
        }
        match ex.content {
            Content::Image(i) => canvas[PATCH * WIDTH..].copy_from_slice(self.image(i)),
            Content::Glyph(g) => draw_pattern(&mut canvas, g, PATCH, (WIDTH - 2 * PATCH) / 2, 2),
        }
        canvas
    }

    /// Stage-0 data: for every entity and training rendering, its 6 questions and its ID.
    pub fn stage0(&self) -> Vec<Example> {
        self.stage0_of(|e| (0..self.renderings).map(|r| self.rendering(e, r)).collect())
    }

    /// The stage-0 questions on the renderings from test-split digits (how well stage 0 reads
    /// numbers it has not seen drawn this way).
    pub fn stage0_fresh(&self) -> Vec<Example> {
        self.stage0_of(|e| vec![self.fresh_rendering(e)])
    }

    fn stage0_of(&self, images: impl Fn(usize) -> Vec<usize>) -> Vec<Example> {
        let mut out = Vec::new();
        for e in 0..ENTITIES {
            for i in images(e) {
                for k in 0..ATTRIBUTES {
                    out.push(Example {
                        question: Some(self.questions[k]),
                        tag: None,
                        content: Content::Image(i),
                        target: value_class(k, attribute_value(e, k)),
                        subset: None,
                    });
                }
                out.push(Example {
                    question: Some(self.id_patch),
                    tag: None,
                    content: Content::Image(i),
                    target: e,
                    subset: None,
                });
            }
        }
        out
    }
}

/// The data of one stage-1 seed.
#[derive(Clone, Debug)]
pub struct VisionProtocol {
    /// The stage-1 seed.
    pub seed: u64,
    /// Subset of each entity (the text protocol's, [`Protocol::new`]).
    pub subset_of: Vec<Subset>,
    /// The entity each entity's glyph is defined as (deranged in qd2incons; `None` without a
    /// definition).
    pub defined_as: Vec<Option<usize>>,
    /// The attribute held out for testing (subsets with training QA).
    pub held_out: Vec<Option<usize>>,
    /// Glyph (the variable) of each entity.
    pub glyphs: Vec<u64>,
    /// Patches of tags 1, 2 and 3.
    pub tags: [u64; 3],
    /// Stage-1 training examples: QA of the four QA subsets, tag-1 and tag-2 definitions.
    pub stage1: Vec<Example>,
    /// Stage-2 training examples: the definitions of d1consis, d2consis and d3consis.
    pub stage2: Vec<Example>,
    /// Held-out questions of every subset.
    pub tests: Vec<Example>,
    /// Definition recall: tag + glyph -> the defined entity, for every entity with a definition.
    pub definition_tests: Vec<Example>,
}

/// The text world whose protocol gives the vision protocol's subsets: 100 entities and the
/// vision world seed (its other settings do not touch the split).
pub fn split_world(seed: u64) -> Result<World, MetaOclError> {
    World::new(&WorldConfig { entities: ENTITIES, seed, ..WorldConfig::default() })
}

impl VisionProtocol {
    /// Draws the protocol of stage-1 seed `seed`: the split of `split` (see [`split_world`]) and
    /// glyphs and tags from [`Purpose::MetaOclVision`] index `seed + 1`.
    pub fn new(world: &VisionWorld, split: &World, world_seed: u64, seed: u64) -> Self {
        let p = Protocol::new(split, seed);
        let mut rng = stream_for(world_seed, Purpose::MetaOclVision, seed + 1);
        let glyphs = distinct_patterns(ENTITIES, &mut rng);
        let t = distinct_patterns(3, &mut rng);
        let tags = [t[0], t[1], t[2]];
        let mut order: Vec<usize> = (0..ENTITIES).collect();
        // Entities in their subsets' report order, as the text protocol lists its data.
        order.sort_by_key(|&e| SUBSETS.iter().position(|(s, _)| *s == p.subset_of[e]));
        let (mut stage1, mut stage2, mut tests, mut definition_tests) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for e in order {
            let subset = p.subset_of[e];
            let content = if subset == Subset::QNoReplacementBaseline {
                Content::Image(world.rendering(e, 0))
            } else {
                Content::Glyph(glyphs[e])
            };
            if let (Some(tag), Some(target)) = (subset.tag(), p.defined_as[e]) {
                let d = Example {
                    question: None,
                    tag: Some(tags[tag - 1]),
                    content: Content::Glyph(glyphs[e]),
                    target,
                    subset: Some(subset),
                };
                definition_tests.push(d);
                match subset.definition_stage() {
                    Some(1) => stage1.push(d),
                    _ => stage2.push(d),
                }
            }
            for k in 0..ATTRIBUTES {
                let qa = Example {
                    question: Some(world.questions[k]),
                    tag: None,
                    content,
                    target: value_class(k, attribute_value(e, k)),
                    subset: Some(subset),
                };
                if subset.has_training_qa() && p.held_out[e] != Some(k) {
                    stage1.push(qa);
                } else {
                    tests.push(qa);
                }
            }
        }
        Self {
            seed,
            subset_of: p.subset_of,
            defined_as: p.defined_as,
            held_out: p.held_out,
            glyphs,
            tags,
            stage1,
            stage2,
            tests,
            definition_tests,
        }
    }
}

/// Architecture of [`VisionCnn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CnnConfig {
    /// Channels of the two 3x3 convolutions.
    pub channels: [usize; 2],
    /// Width of the hidden layer.
    pub hidden: usize,
}

impl CnnConfig {
    /// A model with weights drawn from `rng` (burn's default distributions, layer by layer).
    pub fn init_with(&self, rng: &mut impl Rng, device: &Device) -> VisionCnn {
        let [c1, c2] = self.channels;
        let conv1 = TapConv2d::new(1, c1, 3, 1, 1, rng, device);
        let conv2 = TapConv2d::new(c1, c2, 3, 1, 1, rng, device);
        let fc1 = TapLinear::new(c2 * (HEIGHT / 4) * (WIDTH / 4), self.hidden, rng, device);
        let fc2 = TapLinear::new(self.hidden, CLASSES, rng, device);
        VisionCnn { conv1, conv2, pool: MaxPool2dConfig::new([2, 2]).init(), fc1, fc2 }
    }

    /// A model from the seed-0 initialisation stream (for weights loaded afterwards).
    pub fn init(&self, device: &Device) -> VisionCnn {
        self.init_with(&mut stream_for(0, Purpose::Init, 0), device)
    }
}

/// The CNN: conv 3x3 -> ReLU -> max-pool 2 -> conv 3x3 -> ReLU -> max-pool 2 -> linear -> ReLU ->
/// linear to [`CLASSES`] logits, on `[N, 1, 24, 32]` canvases.
#[derive(Module, Debug)]
pub struct VisionCnn {
    conv1: TapConv2d,
    conv2: TapConv2d,
    pool: MaxPool2d,
    fc1: TapLinear,
    fc2: TapLinear,
}

impl VisionCnn {
    /// Logits `[N, CLASSES]` of canvases `[N, 1, HEIGHT, WIDTH]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let tap = &mut Tap::off();
        let x = self.pool.forward(relu(self.conv1.forward(x, tap)));
        let x = self.pool.forward(relu(self.conv2.forward(x, tap)));
        let x: Tensor<2> = x.flatten(1, 3);
        self.fc2.forward(relu(self.fc1.forward(x, tap)), tap)
    }

    /// The device of the weights.
    pub fn device(&self) -> Device {
        self.fc2.inner.weight.val().device()
    }
}

/// A batch: canvases `[B, 1, HEIGHT, WIDTH]`, one-hot targets `[B, CLASSES]` and the head mask
/// `[B, CLASSES]` (0 on each example's head, [`OUTSIDE_HEAD`] elsewhere).
#[derive(Clone, Debug)]
pub struct VisionBatch {
    /// Canvases.
    pub x: Tensor<4>,
    /// Targets.
    pub y: Tensor<2>,
    /// Head mask added to the logits.
    pub mask: Tensor<2>,
}

/// The head mask of `targets` (see [`VisionBatch`]).
pub fn head_mask(targets: &[usize], device: &Device) -> Tensor<2> {
    let mut m = vec![OUTSIDE_HEAD; targets.len() * CLASSES];
    for (i, &t) in targets.iter().enumerate() {
        m[i * CLASSES + head_of(t).start..i * CLASSES + head_of(t).end].fill(0.0);
    }
    Tensor::from_data(TensorData::new(m, [targets.len(), CLASSES]), device)
}

/// Canvases of `examples` as a `[N, 1, HEIGHT, WIDTH]` tensor.
pub fn canvases(world: &VisionWorld, examples: &[&Example], device: &Device) -> Tensor<4> {
    let pixels: Vec<f32> = examples.iter().flat_map(|ex| world.compose(ex)).collect();
    Tensor::from_data(TensorData::new(pixels, [examples.len(), 1, HEIGHT, WIDTH]), device)
}

/// Softmax cross-entropy over each example's head ([`head_of`]). Step `s` of epoch `s / steps_per_epoch` takes the next
/// `batch_size` examples of the permutation [`epoch_order`]`(order_seed, epoch, n)`.
pub struct VisionObjective<'a> {
    /// The rendered world.
    pub world: &'a VisionWorld,
    /// Training examples.
    pub data: &'a [Example],
    /// Examples per batch.
    pub batch_size: usize,
    /// Seed of the order.
    pub order_seed: u64,
}

impl Objective<VisionCnn> for VisionObjective<'_> {
    type Batch = VisionBatch;

    fn batch(&self, step: usize, device: &Device) -> VisionBatch {
        let n = self.data.len();
        let per_epoch = n.div_ceil(self.batch_size);
        let (epoch, pos) = (step / per_epoch, step % per_epoch);
        let order = epoch_order(self.order_seed, epoch, n);
        let chunk: Vec<&Example> = order[pos * self.batch_size..((pos + 1) * self.batch_size).min(n)]
            .iter()
            .map(|&i| &self.data[i])
            .collect();
        let labels: Vec<u8> = chunk.iter().map(|ex| ex.target as u8).collect();
        let targets: Vec<usize> = chunk.iter().map(|ex| ex.target).collect();
        VisionBatch {
            x: canvases(self.world, &chunk, device),
            y: one_hot(&labels, CLASSES, device),
            mask: head_mask(&targets, device),
        }
    }

    fn batch_len(&self, batch: &VisionBatch) -> usize {
        batch.y.dims()[0]
    }

    fn slice(&self, batch: &VisionBatch, range: Range<usize>) -> VisionBatch {
        let len = range.end - range.start;
        VisionBatch {
            x: batch.x.clone().narrow(0, range.start, len),
            y: batch.y.clone().narrow(0, range.start, len),
            mask: batch.mask.clone().narrow(0, range.start, len),
        }
    }

    fn loss(&self, model: &VisionCnn, batch: VisionBatch) -> Tensor<1> {
        softmax_cross_entropy(model.forward(batch.x) + batch.mask, batch.y)
    }
}

/// Trains a [`VisionCnn`] on `data` for `stage.epochs` epochs on the workspace's trainer, from a
/// fresh model (`start = None`, initialised from the stream of `order_seed`) or from the weights
/// in `start`. Returns the trained model (no autodiff) and a summary.
pub fn train_vision_stage(
    cnn: &CnnConfig,
    world: &VisionWorld,
    data: &[Example],
    stage: &StageConfig,
    start: Option<&Path>,
    order_seed: u64,
    device: &Device,
) -> Result<(VisionCnn, StageReport), MetaOclError> {
    stage.validate("stage")?;
    if data.is_empty() {
        return Err(MetaOclError::Invalid("a training stage has no data".into()));
    }
    let clock = std::time::Instant::now();
    let optim = stage.optim(data.len(), order_seed);
    let steps = optim.steps;
    let objective = VisionObjective { world, data, batch_size: stage.batch_size, order_seed };
    let trainer = Trainer::new(optim, objective, device).with_fused_adamw(true);
    let mut state = match start {
        None => trainer.init_state(|rng, d| cnn.init_with(rng, d)),
        Some(path) => {
            let model = load_module(cnn.init(&trainer.device), path)?;
            trainer.init_state(|_, _| model)
        }
    };
    let mut recent = RecentLoss::default();
    trainer.run(&mut state, steps, None, &foundation::progress::NoProgress, |e| {
        recent.observe(&e);
        Ok(())
    })?;
    let final_loss = recent.mean();
    // The vision sweep evaluates once, after each stage (no EM-over-training points).
    let report = StageReport {
        steps: state.step,
        final_loss,
        seconds: clock.elapsed().as_secs_f64(),
        em_over_training: Vec::new(),
    };
    Ok((state.model.valid(), report))
}

/// Whether the model's argmax over each example's head ([`head_of`]) is its target.
pub fn correct(model: &VisionCnn, world: &VisionWorld, examples: &[Example]) -> Vec<bool> {
    let device = model.device();
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(256) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let logits = model.forward(canvases(world, &refs, &device));
        let v: Vec<f32> = logits.into_data().try_into_vec::<f32>().expect("f32 logits");
        out.extend(chunk.iter().enumerate().map(|(i, ex)| {
            let head = head_of(ex.target);
            head.start + argmax(&v[i * CLASSES + head.start..i * CLASSES + head.end]) == ex.target
        }));
    }
    out
}

/// Accuracy per subset, keys `prefix` + subset name (`prefix` + `none` for examples without a
/// subset).
pub fn accuracy_by_subset(
    model: &VisionCnn,
    world: &VisionWorld,
    examples: &[Example],
    prefix: &str,
) -> BTreeMap<String, f64> {
    let mut acc: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (ex, hit) in examples.iter().zip(correct(model, world, examples)) {
        let e = acc.entry(format!("{prefix}{}", ex.subset.map_or("none", Subset::name))).or_default();
        e.0 += usize::from(hit);
        e.1 += 1;
    }
    acc.into_iter().map(|(k, (h, n))| (k, h as f64 / n as f64)).collect()
}

/// The result of one stage-2 seed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VisionStage2Result {
    /// The stage-2 seed.
    pub stage2_seed: usize,
    /// Accuracy per subset on held-out QA, and `def_<subset>` definition recall.
    pub acc: BTreeMap<String, f64>,
    /// Training summary.
    pub train: StageReport,
}

/// The result of one stage-1 seed with all its stage-2 seeds (one file, `seeds/s{s}.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VisionSeedResult {
    /// The stage-1 seed.
    pub seed: usize,
    /// Accuracy per subset after stage 1 (and `def_<subset>` definition recall).
    pub stage1: BTreeMap<String, f64>,
    /// Stage-1 training summary.
    pub stage1_train: StageReport,
    /// Every stage-2 seed's result.
    pub stage2: Vec<VisionStage2Result>,
}

/// What a vision sweep did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VisionOutcome {
    /// Stage-1 seeds trained by this call.
    pub trained: Vec<usize>,
    /// Stage-1 seeds found finished and skipped.
    pub skipped: Vec<usize>,
}

/// The file of stage-1 seed `s`'s result.
pub fn seed_file(out: &Path, s: usize) -> PathBuf {
    out.join("seeds").join(format!("s{s}.json"))
}

/// Writes `config.json`, or checks that the one present matches `cfg` up to the seed counts
/// (which may grow to extend a finished sweep).
pub fn prepare_vision(out: &Path, cfg: &VisionConfig) -> Result<(), MetaOclError> {
    cfg.validate()?;
    write_or_check_config(out, cfg, |old| VisionConfig {
        stage1_seeds: cfg.stage1_seeds,
        stage2_seeds: cfg.stage2_seeds,
        ..old
    })
}

/// Runs (or resumes) this shard's stage-1 seeds of the vision sweep in `out` on `device`: stage
/// 0 first if `stage0/model.safetensors` is missing (only shard 0 trains it), then for each
/// stage-1 seed without `seeds/s{s}.json`, stage 1 and every stage-2 seed, and that file.
/// `progress` sees one unit per stage-1 seed.
pub fn vision_sweep(
    out: &Path,
    cfg: &VisionConfig,
    shard: Shard,
    device: &Device,
    progress: &dyn Progress,
) -> Result<VisionOutcome, MetaOclError> {
    prepare_vision(out, cfg)?;
    let world = VisionWorld::new(cfg)?;
    let split = split_world(cfg.seed)?;
    let cnn = CnnConfig { channels: cfg.channels, hidden: cfg.hidden };
    let (w0, r0) = (out.join("stage0").join("model.safetensors"), out.join("stage0").join("stage0.json"));
    if !(w0.exists() && r0.exists()) {
        if shard.index != 0 {
            return Err(MetaOclError::Invalid(format!(
                "stage 0 is not finished in {}; run shard 0 first",
                out.display()
            )));
        }
        let (model, train) = train_vision_stage(
            &cnn,
            &world,
            &world.stage0(),
            &cfg.stage0,
            None,
            order_seed(cfg.seed, 0, 0, 0),
            device,
        )?;
        let mut acc = accuracy_by_subset(&model, &world, &world.stage0(), "stage0_recall_");
        acc.extend(accuracy_by_subset(&model, &world, &world.stage0_fresh(), "stage0_fresh_"));
        save_module(&model, &w0)?;
        let params = model.num_params();
        write_json(&r0, &serde_json::json!({ "acc": acc, "train": train, "parameters": params }))?;
    }
    let mut outcome = VisionOutcome::default();
    let seeds: Vec<usize> = (0..cfg.stage1_seeds).filter(|&s| shard.owns(s)).collect();
    progress.start("seeds", seeds.len() as u64);
    for s in seeds {
        let file = seed_file(out, s);
        if file.exists() {
            outcome.skipped.push(s);
            progress.advance(1);
            continue;
        }
        let protocol = VisionProtocol::new(&world, &split, cfg.seed, s as u64);
        let (model, stage1_train) = train_vision_stage(
            &cnn,
            &world,
            &repeat_definitions(&protocol.stage1, cfg.definition_repeats),
            &cfg.stage1,
            Some(&w0),
            order_seed(cfg.seed, 1, s, 0),
            device,
        )?;
        let evaluate = |m: &VisionCnn| {
            let mut acc = accuracy_by_subset(m, &world, &protocol.tests, "");
            acc.extend(accuracy_by_subset(m, &world, &protocol.definition_tests, "def_"));
            acc
        };
        let stage1 = evaluate(&model);
        let w1 = out.join("seeds").join(format!("s{s}.stage1.safetensors"));
        save_module(&model, &w1)?;
        let mut stage2 = Vec::new();
        for t in 0..cfg.stage2_seeds {
            let (m2, train) = train_vision_stage(
                &cnn,
                &world,
                &protocol.stage2,
                &cfg.stage2,
                Some(&w1),
                order_seed(cfg.seed, 2, s, t),
                device,
            )?;
            stage2.push(VisionStage2Result { stage2_seed: t, acc: evaluate(&m2), train });
        }
        write_json(&file, &VisionSeedResult { seed: s, stage1, stage1_train, stage2 })?;
        // The stage-1 weights are only needed by this seed's stage 2.
        let _ = std::fs::remove_file(&w1);
        outcome.trained.push(s);
        progress.advance(1);
    }
    progress.finish();
    Ok(outcome)
}

/// Accuracies of the finished seeds: one value per stage-1 seed after stage 1, and after stage 2
/// (averaged over that seed's stage-2 seeds).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VisionCollected {
    /// Finished stage-1 seeds.
    pub seeds: Vec<usize>,
    /// `stage1[key][i]`: accuracy of seed `seeds[i]` after stage 1.
    pub stage1: BTreeMap<String, Vec<f64>>,
    /// `stage2[key][i]`: mean accuracy over the stage-2 seeds of seed `seeds[i]`.
    pub stage2: BTreeMap<String, Vec<f64>>,
}

/// Reads every finished seed of the sweep in `out`.
pub fn collect_vision(out: &Path, cfg: &VisionConfig) -> Result<VisionCollected, MetaOclError> {
    let mut c = VisionCollected::default();
    for s in 0..cfg.stage1_seeds {
        let file = seed_file(out, s);
        if !file.exists() {
            continue;
        }
        let r: VisionSeedResult = read_json(&file)?;
        c.seeds.push(s);
        for (k, v) in r.stage1 {
            c.stage1.entry(k).or_default().push(v);
        }
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        for t in &r.stage2 {
            for (k, v) in &t.acc {
                *sums.entry(k.clone()).or_default() += v / r.stage2.len() as f64;
            }
        }
        for (k, v) in sums {
            c.stage2.entry(k).or_default().push(v);
        }
    }
    Ok(c)
}

/// Writes `report.md`, `summary.json`, `acc.png` (accuracy per subset after each stage with 95 %
/// bootstrap CIs) and `gaps.png` (the paired gaps with their CIs) from the finished seeds in
/// `out`; `note` goes under the title. Returns the markdown.
pub fn vision_report(out: &Path, cfg: &VisionConfig, note: &str) -> Result<String, MetaOclError> {
    let c = collect_vision(out, cfg)?;
    let mut md = String::from("# Meta-OCL, MNIST analogue (meta-ocl vision)\n\n");
    if !note.is_empty() {
        md.push_str(note);
        md.push_str("\n\n");
    }
    let s0 = out.join("stage0").join("stage0.json");
    let stage0: Option<serde_json::Value> = if s0.exists() { Some(read_json(&s0)?) } else { None };
    md.push_str(&format!(
        "World: 100 two-digit numbers rendered from MNIST ({}), {} renderings each in stage 0, 6 attributes \
         (tens, units, parity, digit sum > 9, tens > units, mod 3); glyphs and tags are random 8x8 patterns; canvas {HEIGHT}x{WIDTH}; \
         {CLASSES} outputs read as separate heads (100 IDs; the values of each attribute). CNN: conv {} -> conv {} -> {} -> {CLASSES}{}. \
         Stages: 0: {} epochs (batch {}, lr {}); 1: {} epochs (batch {}, lr {}, each definition {}x per epoch); 2: {} epochs (batch {}, lr {}); AdamW. \
         Seeds: {} stage-1 finished of {} requested, x {} stage-2. Chance accuracy on held-out QA: {:.3}.\n\n",
        cfg.mnist,
        cfg.renderings,
        cfg.channels[0],
        cfg.channels[1],
        cfg.hidden,
        stage0.as_ref().and_then(|v| v["parameters"].as_u64()).map_or(String::new(), |p| format!(" ({p} parameters)")),
        cfg.stage0.epochs,
        cfg.stage0.batch_size,
        cfg.stage0.lr,
        cfg.stage1.epochs,
        cfg.stage1.batch_size,
        cfg.stage1.lr,
        cfg.definition_repeats,
        cfg.stage2.epochs,
        cfg.stage2.batch_size,
        cfg.stage2.lr,
        c.seeds.len(),
        cfg.stage1_seeds,
        cfg.stage2_seeds,
        chance_accuracy(),
    ));
    if let Some(v) = &stage0 {
        md.push_str(&format!(
            "Stage 0: accuracy {:.4} on its training renderings, {:.4} on renderings from MNIST test digits ({:.0} s).\n\n",
            v["acc"]["stage0_recall_none"].as_f64().unwrap_or(f64::NAN),
            v["acc"]["stage0_fresh_none"].as_f64().unwrap_or(f64::NAN),
            v["train"]["seconds"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    let mut summary = serde_json::Map::new();
    summary.insert("seeds".into(), serde_json::json!(c.seeds));
    let mut bars = Vec::new();
    let mut gap_bars = Vec::new();
    md.push_str(
        "| subset | after stage 1 | after stage 2 | definition recall (stage 2) |\n|---|---|---|---|\n",
    );
    let cell = |v: Option<&Vec<f64>>| {
        v.filter(|v| !v.is_empty()).map_or("—".to_string(), |v| {
            let (m, se) = mean_se(v);
            format!("{m:.4} ± {se:.4}")
        })
    };
    for (subset, _) in SUBSETS {
        let name = subset.name();
        md.push_str(&format!(
            "| {name} | {} | {} | {} |\n",
            cell(c.stage1.get(name)),
            cell(c.stage2.get(name)),
            cell(c.stage2.get(&format!("def_{name}")))
        ));
        for (stage, m) in [("S1", &c.stage1), ("S2", &c.stage2)] {
            if let Some(v) = m.get(name).filter(|v| !v.is_empty()) {
                let sm = SeedMean::of(v, cfg.resamples);
                bars.push(Bar { label: format!("{stage} {name}"), value: sm.mean, se: sm.half_width() });
            }
        }
    }
    md.push_str("\n| paired gap (per stage-1 seed) | mean ± s.e. | 95 % bootstrap CI | n | CI |\n|---|---|---|---|---|\n");
    for (stage, m, gaps) in
        [("stage 1", &c.stage1, &STAGE1_GAPS[..]), ("stage 2", &c.stage2, &STAGE2_GAPS[..])]
    {
        for (a, b, g) in report_gaps(m, gaps, cfg.resamples)? {
            md.push_str(&format!("| {stage}: acc({a}) - acc({b}) | {} |\n", g.table_cells()));
            summary.insert(format!("{stage}: {a}-{b}"), serde_json::to_value(g).expect("serialises"));
            let s = if stage == "stage 1" { "S1" } else { "S2" };
            gap_bars.push(Bar { label: format!("{s} {a}-{b}"), value: g.mean, se: g.half_width() });
        }
    }
    md.push_str(
        "\nAccuracy: the argmax of the head the patch asks for (IDs, or the asked attribute's values) equals the answer, on held-out QA (one stratified \
         attribute per entity for subsets with training QA, all 6 for d1/d2/d3consis and no_qd_baseline). Gaps are \
         paired per stage-1 seed (stage-2 accuracies averaged over its stage-2 seeds); CIs are percentile bootstraps \
         of the mean over seeds. Plots: `acc.png` (per subset after stage 1 and 2, whiskers half the 95 % CI), \
         `gaps.png`.\n",
    );
    summary.insert("stage1".into(), serde_json::to_value(&c.stage1).expect("serialises"));
    summary.insert("stage2".into(), serde_json::to_value(&c.stage2).expect("serialises"));
    if !bars.is_empty() {
        write_bar_chart(&out.join("acc.png"), "Accuracy per subset, 95% CI", &bars, |v, h| {
            format!("{v:.3} +-{h:.3}")
        })?;
        write_bar_chart(&out.join("gaps.png"), "Paired gaps, 95% CI", &gap_bars, |v, h| {
            format!("{v:+.3} +-{h:.3}")
        })?;
    }
    write_json(&out.join("summary.json"), &serde_json::Value::Object(summary))?;
    foundation::atomic::write_bytes(&out.join("report.md"), md.as_bytes())?;
    Ok(md)
}

/// Every pixel of the canvas region `rows x cols` is background (-1).
pub fn region_is_blank(canvas: &[f32], rows: Range<usize>, cols: Range<usize>) -> bool {
    rows.flat_map(|r| cols.clone().map(move |c| (r, c))).all(|(r, c)| canvas[r * WIDTH + c] == OFF)
}

/// The distinct tag patches among `examples` (for checking where tags appear).
pub fn tags_in(examples: &[Example]) -> HashSet<u64> {
    examples.iter().filter_map(|e| e.tag).collect()
}
