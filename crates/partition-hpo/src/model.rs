//! The partitioned network and the hyperparameters `psi` that enter its forward pass.
//!
//! Every weight and bias entry of every layer belongs to one of C partitions, drawn once from
//! `stream_for(seed, Purpose::HpoWeightPartition, layer)` with preset proportions (per-weight
//! assignment: the finest split, and the one the paper's Fig. 1 draws). Subnetwork k holds the
//! trained values of partitions 1..k and the *initial* values of partitions k+1..C. Initial
//! values rather than zeros keep every subnetwork's activations at the scale of the full network
//! at initialisation (zeros would shrink the pre-activations of subnetwork 1 to its share of the
//! weights), so one learning rate suits all subnetworks, and the untrained partitions act as
//! fixed random features.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::{log_sigmoid, relu, sigmoid, softplus};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use foundation::layers::kaiming_uniform;
use foundation::rng::{stream_for, Purpose};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Which subnetwork a forward pass uses, and which weights carry gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Subnetwork `k` (0-based) for a parameter step: partitions `< k` enter detached, partition
    /// `k` carries gradients, partitions `> k` hold their initial values. Partition `k` is thus
    /// updated by the loss of subnetwork `k` alone.
    Train(usize),
    /// Subnetwork `k` (0-based) with every weight detached (hyperparameter steps, evaluation).
    Eval(usize),
}

/// Draws the partition of each of `n` entries: entry `i` gets partition `p` with probability
/// `proportions[p]`, exactly `round(proportions * n)` of each (the last takes the rest), in a
/// seeded random order.
pub fn assign_partitions(n: usize, proportions: &[f64], rng: &mut impl Rng) -> Vec<usize> {
    let c = proportions.len();
    let mut labels = Vec::with_capacity(n);
    let mut cum = 0.0;
    for (p, &q) in proportions.iter().enumerate() {
        let end = if p + 1 == c { n } else { (((cum + q) * n as f64).round() as usize).min(n) };
        cum += q;
        while labels.len() < end {
            labels.push(p);
        }
    }
    // Fisher-Yates shuffle.
    for i in (1..n).rev() {
        let j = rng.gen_range(0..=i);
        labels.swap(i, j);
    }
    labels
}

/// A linear layer whose entries are split into partitions.
#[derive(Module, Debug)]
pub struct PartitionedLinear {
    /// Trained weight `[d_in, d_out]`.
    pub weight: Param<Tensor<2>>,
    /// Trained bias `[d_out]`.
    pub bias: Param<Tensor<1>>,
    /// Partition index (0-based, stored as a float) of every weight entry.
    pub weight_part: Param<Tensor<2>>,
    /// Partition index of every bias entry.
    pub bias_part: Param<Tensor<1>>,
    /// The weight's masks `[p < k]`, `[p = k]` and initial values `W0 [p > k]` for k = 0..C (the
    /// only place the initial values are kept; replaced with `set_initial`).
    weight_masks: Vec<Param<Tensor<2>>>,
    /// The bias's masks, as `weight_masks`.
    bias_masks: Vec<Param<Tensor<1>>>,
    /// Number of partitions C.
    pub partitions: usize,
}

/// For k = 0..C, three tensors per k, in this order: the 0/1 masks `[p < k]` and `[p = k]`, and
/// `W0 [p > k]`, the initial values of the partitions above k with zeros elsewhere. Built once
/// with the layer: a training step needs them for every subnetwork, and building them there
/// (comparisons, casts and a product per subnetwork and tensor) was a tenth of a partitioned step
/// on the 984-feature noise task.
fn partition_masks<const D: usize>(
    part: &Tensor<D>,
    init: &Tensor<D>,
    partitions: usize,
) -> Vec<Param<Tensor<D>>> {
    let frozen = |t: Tensor<D>| Param::from_tensor(t).set_require_grad(false);
    (0..partitions)
        .flat_map(|k| {
            let k = k as f32;
            [
                frozen(part.clone().lower_elem(k).float()),
                frozen(part.clone().equal_elem(k).float()),
                // Through host data: burn cannot make the result of a product a parameter.
                frozen(Tensor::from_data(
                    (init.clone() * part.clone().greater_elem(k).float()).into_data(),
                    &init.device(),
                )),
            ]
        })
        .collect()
}

/// `w` as seen by `mode` (see [`Mode`]) when the layer has `partitions` partitions; `masks` are
/// the tensor's [`partition_masks`].
///
/// Training: `W0 [p > k] + sg(W) [p < k] + W [p = k]`, the first two terms built from detached
/// tensors (no graph), so the graph holds one product and one sum per tensor. Entries of
/// partition k are exactly `0 + W`, so their gradient is exactly that of subnetwork k. A term
/// that is zero everywhere (`[p < 0]`, `W0 [p > C - 1]`) is left out: on the 984-feature noise
/// task the construction of the subnetworks' weights costs more than their matrix products.
///
/// Evaluation: `W0 [p > k] + sg(W) [p <= k]`, which equals `W0` or `W` exactly (one term is an
/// exact zero); a product with the masks is faster than burn's `mask_where` here.
fn effective<const D: usize>(
    w: &Param<Tensor<D>>,
    masks: &[Param<Tensor<D>>],
    mode: Mode,
    partitions: usize,
) -> Tensor<D> {
    let w = w.val();
    if partitions == 1 {
        return match mode {
            Mode::Train(_) => w,
            Mode::Eval(_) => w.detach(),
        };
    }
    let last = partitions - 1;
    match mode {
        Mode::Train(k) => {
            let [below, own, init_above] = [&masks[3 * k], &masks[3 * k + 1], &masks[3 * k + 2]];
            let trained = w.clone() * own.val();
            match k {
                0 => init_above.val() + trained,
                k if k == last => w.detach() * below.val() + trained,
                _ => init_above.val() + w.detach() * below.val() + trained,
            }
        }
        Mode::Eval(k) if k >= last => w.detach(),
        // `[p <= k]` is `[p < k + 1]`.
        Mode::Eval(k) => masks[3 * k + 2].val() + w.detach() * masks[3 * (k + 1)].val(),
    }
}

/// The frozen companions of a trained tensor: the partition of every entry and the
/// [`partition_masks`] built from it and the tensor's initial value.
struct Frozen<const D: usize> {
    part: Param<Tensor<D>>,
    masks: Vec<Param<Tensor<D>>>,
}

impl<const D: usize> Frozen<D> {
    /// Those of `value` (its current value is the initial one), the partitions drawn from
    /// `assign` with `proportions`.
    fn of(value: &Param<Tensor<D>>, proportions: &[f64], assign: &mut impl Rng) -> Self {
        let init = value.val().detach();
        let (shape, device) = (init.dims(), init.device());
        let labels: Vec<f32> = assign_partitions(shape.iter().product(), proportions, assign)
            .iter()
            .map(|&p| p as f32)
            .collect();
        let part: Tensor<D> = Tensor::from_data(TensorData::new(labels, shape), &device);
        let masks = partition_masks(&part, &init, proportions.len());
        Self { part: Param::from_tensor(part).set_require_grad(false), masks }
    }
}

impl PartitionedLinear {
    /// A layer with burn's default initial distribution drawn from `init` (weight, then bias), its
    /// entries assigned to partitions from `assign`.
    pub fn new(
        d_in: usize,
        d_out: usize,
        proportions: &[f64],
        init: &mut impl Rng,
        assign: &mut impl Rng,
        device: &Device,
    ) -> Self {
        let weight = kaiming_uniform([d_in, d_out], d_in, init, device);
        let bias = kaiming_uniform([d_out], d_in, init, device);
        let (w, b) = (Frozen::of(&weight, proportions, assign), Frozen::of(&bias, proportions, assign));
        Self {
            weight_part: w.part,
            bias_part: b.part,
            weight_masks: w.masks,
            bias_masks: b.masks,
            weight,
            bias,
            partitions: proportions.len(),
        }
    }

    /// Replaces the initial values (the values of untrained partitions): rebuilds the
    /// `W0 [p > k]` tensors of the masks from them.
    pub fn set_initial(&mut self, weight: Tensor<2>, bias: Tensor<1>) {
        self.weight_masks = partition_masks(&self.weight_part.val(), &weight, self.partitions);
        self.bias_masks = partition_masks(&self.bias_part.val(), &bias, self.partitions);
    }

    /// `x W_k + b_k` for the subnetwork of `mode`.
    pub fn forward(&self, x: Tensor<2>, mode: Mode) -> Tensor<2> {
        let c = self.partitions;
        let w = effective(&self.weight, &self.weight_masks, mode, c);
        let b = effective(&self.bias, &self.bias_masks, mode, c);
        x.matmul(w) + b.unsqueeze::<2>()
    }
}

/// A 3x3 convolution (stride 2, padding 1) whose entries are split into partitions like those of
/// [`PartitionedLinear`].
#[derive(Module, Debug)]
pub struct PartitionedConv2d {
    /// Trained weight `[c_out, c_in, 3, 3]`.
    pub weight: Param<Tensor<4>>,
    /// Trained bias `[c_out]`.
    pub bias: Param<Tensor<1>>,
    /// Partition index of every weight entry.
    pub weight_part: Param<Tensor<4>>,
    /// Partition index of every bias entry.
    pub bias_part: Param<Tensor<1>>,
    /// The weight's masks `[p < k]`, `[p = k]` and initial values `W0 [p > k]` for k = 0..C (the
    /// only place the initial values are kept; replaced with `set_initial`).
    weight_masks: Vec<Param<Tensor<4>>>,
    /// The bias's masks, as `weight_masks`.
    bias_masks: Vec<Param<Tensor<1>>>,
    /// Number of partitions C.
    pub partitions: usize,
}

impl PartitionedConv2d {
    /// A layer with burn's default initial distribution (`fan_in = 9 c_in`) drawn from `init`,
    /// its entries assigned to partitions from `assign`.
    pub fn new(
        c_in: usize,
        c_out: usize,
        proportions: &[f64],
        init: &mut impl Rng,
        assign: &mut impl Rng,
        device: &Device,
    ) -> Self {
        let weight = kaiming_uniform([c_out, c_in, 3, 3], 9 * c_in, init, device);
        let bias = kaiming_uniform([c_out], 9 * c_in, init, device);
        let (w, b) = (Frozen::of(&weight, proportions, assign), Frozen::of(&bias, proportions, assign));
        Self {
            weight_part: w.part,
            bias_part: b.part,
            weight_masks: w.masks,
            bias_masks: b.masks,
            weight,
            bias,
            partitions: proportions.len(),
        }
    }

    /// Replaces the initial values (the values of untrained partitions): rebuilds the
    /// `W0 [p > k]` tensors of the masks from them.
    pub fn set_initial(&mut self, weight: Tensor<4>, bias: Tensor<1>) {
        self.weight_masks = partition_masks(&self.weight_part.val(), &weight, self.partitions);
        self.bias_masks = partition_masks(&self.bias_part.val(), &bias, self.partitions);
    }

    /// The convolution of `x: [N, c_in, H, W]` by the subnetwork of `mode`.
    pub fn forward(&self, x: Tensor<4>, mode: Mode) -> Tensor<4> {
        let c = self.partitions;
        let w = effective(&self.weight, &self.weight_masks, mode, c);
        let b = effective(&self.bias, &self.bias_masks, mode, c);
        conv2d(x, w, Some(b), ConvOptions::new([2, 2], [1, 1], [1, 1], 1))
    }
}

/// Side of a 3x3, stride-2, padding-1 convolution's output.
pub fn conv_out(side: usize) -> usize {
    (side + 2 - 3) / 2 + 1
}

/// The hyperparameters that enter the forward pass, in unconstrained form.
#[derive(Module, Debug)]
pub struct Psi {
    /// Rotation range: `theta_max = pi * sigmoid(rotation)` radians (0 to 180 degrees).
    pub rotation: Param<Tensor<1>>,
    /// Input mask logits `[d_in]`: feature `j` is multiplied by `sigmoid(mask[j])`.
    pub mask: Param<Tensor<1>>,
    /// Gaussian dropout: hidden units are multiplied by `1 + sigma * eps`, `sigma = softplus(dropout)`.
    pub dropout: Param<Tensor<1>>,
}

/// Inverse of the sigmoid.
fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

/// Inverse of the softplus.
fn inv_softplus(y: f64) -> f64 {
    if y > 20.0 {
        y
    } else {
        y.exp_m1().ln()
    }
}

impl Psi {
    /// `psi` with rotation range `theta_deg` degrees (clamped to (0.01, 179.99)), every mask
    /// entry at `mask_keep` (a probability in (0, 1)) and dropout standard deviation `sigma`.
    pub fn new(d_in: usize, theta_deg: f64, mask_keep: f64, sigma: f64, device: &Device) -> Self {
        let r = logit(theta_deg.clamp(0.01, 179.99) / 180.0) as f32;
        let m = logit(mask_keep) as f32;
        let s = inv_softplus(sigma.max(1e-6)) as f32;
        Self {
            rotation: Param::from_data(TensorData::new(vec![r], [1]), device),
            mask: Param::from_data(TensorData::new(vec![m; d_in], [d_in]), device),
            dropout: Param::from_data(TensorData::new(vec![s], [1]), device),
        }
    }

    /// `psi` holding `values` (keep probabilities are clamped to [1e-6, 1 - 1e-6]).
    pub fn from_values(values: &PsiValues, device: &Device) -> Self {
        let d_in = values.keep.len();
        let mut psi = Self::new(d_in, values.theta_max_deg, 0.5, values.sigma, device);
        let m: Vec<f32> =
            values.keep.iter().map(|&k| logit((k as f64).clamp(1e-6, 1.0 - 1e-6)) as f32).collect();
        psi.mask = Param::from_data(TensorData::new(m, [d_in]), device);
        psi
    }

    /// `theta_max` in radians (`[1]`).
    pub fn theta_max(&self) -> Tensor<1> {
        sigmoid(self.rotation.val()).mul_scalar(std::f64::consts::PI)
    }

    /// Keep probabilities of the input mask (`[d_in]`).
    pub fn keep(&self) -> Tensor<1> {
        sigmoid(self.mask.val())
    }

    /// Gaussian dropout standard deviation (`[1]`).
    pub fn sigma(&self) -> Tensor<1> {
        softplus(self.dropout.val(), 1.0)
    }

    /// Plain values for reports.
    pub fn values(&self) -> PsiValues {
        PsiValues {
            theta_max_deg: self.theta_max().detach().into_scalar::<f32>() as f64 * 180.0
                / std::f64::consts::PI,
            keep: self.keep().detach().into_data().try_into_vec::<f32>().expect("f32 mask"),
            sigma: self.sigma().detach().into_scalar::<f32>() as f64,
        }
    }
}

/// The values of [`Psi`] in natural units.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PsiValues {
    /// Rotation range in degrees.
    pub theta_max_deg: f64,
    /// Keep probability of every input feature.
    pub keep: Vec<f32>,
    /// Gaussian dropout standard deviation.
    pub sigma: f64,
}

/// Which parts of [`Psi`] are used (and learned, when a method learns `psi`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsiUse {
    /// Random rotations of the image part of the input.
    pub rotation: bool,
    /// The sigmoid input mask.
    pub mask: bool,
    /// Gaussian dropout after every hidden layer.
    pub dropout: bool,
}

/// A ReLU network with partitioned layers (optional 3x3 stride-2 convolutions on the image part,
/// then an MLP on their flattened output and the remaining features), and its hyperparameters.
#[derive(Module, Debug)]
pub struct PartitionedNet {
    /// Convolutions on the image (none: an MLP).
    pub convs: Vec<PartitionedConv2d>,
    /// Image height and width (the first `h * w` input features).
    pub image: [usize; 2],
    /// Linear layers: `features -> hidden.. -> classes`.
    pub layers: Vec<PartitionedLinear>,
    /// Hyperparameters.
    pub psi: Psi,
}

/// Random draws of one forward pass: per-example rotation draws `u ~ U(-1, 1)`, the noise of
/// the input-mask gates and Gaussian dropout noise per hidden layer.
#[derive(Clone, Debug, Default)]
pub struct Draws {
    /// `u` per example.
    pub u: Vec<f32>,
    /// Standard normal noise `[n, width]` per hidden layer (empty when dropout is off).
    pub eps: Vec<Vec<f32>>,
    /// Standard normal noise `[n, d_in]` of the input gates (empty: every feature is multiplied
    /// by its keep probability, as at test time).
    pub gate: Vec<f32>,
}

impl PartitionedNet {
    /// A network on `d_in` features (the first `image.0 * image.1` an image): convolutions with
    /// `conv_channels` output channels (may be empty), then `hidden.. -> classes`. Weights are
    /// drawn from `init` (the trainer passes `stream_for(seed, Init, 0)`; convolutions first),
    /// partitions from `stream_for(seed, HpoWeightPartition, layer)` (convolution `l`: index
    /// `1000 + l`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        d_in: usize,
        image: (usize, usize),
        conv_channels: &[usize],
        hidden: &[usize],
        classes: usize,
        proportions: &[f64],
        psi: Psi,
        seed: u64,
        init: &mut impl Rng,
        device: &Device,
    ) -> Self {
        let (mut c, mut h, mut w) = (1, image.0, image.1);
        let mut convs = Vec::new();
        for (l, &c_out) in conv_channels.iter().enumerate() {
            let mut assign = stream_for(seed, Purpose::HpoWeightPartition, 1000 + l as u64);
            convs.push(PartitionedConv2d::new(c, c_out, proportions, init, &mut assign, device));
            (c, h, w) = (c_out, conv_out(h), conv_out(w));
        }
        let features = if convs.is_empty() { d_in } else { c * h * w + d_in - image.0 * image.1 };
        let mut dims = vec![features];
        dims.extend_from_slice(hidden);
        dims.push(classes);
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(l, w)| {
                let mut assign = stream_for(seed, Purpose::HpoWeightPartition, l as u64);
                PartitionedLinear::new(w[0], w[1], proportions, init, &mut assign, device)
            })
            .collect();
        Self { convs, image: [image.0, image.1], layers, psi }
    }

    /// Widths of the hidden layers.
    pub fn hidden_widths(&self) -> Vec<usize> {
        self.layers[..self.layers.len() - 1].iter().map(|l| l.bias.dims()[0]).collect()
    }

    /// The raw inputs `x` (`n x d_in`, row-major) rotated and masked by `psi` as `use_` says:
    /// the input of the first layer (or of the convolutions), `psi` detached unless `psi_grad`.
    pub fn transform_inputs(
        &self,
        x: &[f32],
        n: usize,
        image: (usize, usize),
        draws: &Draws,
        use_: PsiUse,
        psi_grad: bool,
    ) -> Tensor<2> {
        let device = self.layers[0].weight.val().device();
        let d = x.len() / n.max(1);
        let maybe = |t: Tensor<1>| if psi_grad { t } else { t.detach() };
        let mut h = if use_.rotation {
            crate::augment::rotate_tensor(x, n, d, image, &draws.u, maybe(self.psi.theta_max()), &device)
        } else {
            Tensor::<2>::from_data(TensorData::new(x.to_vec(), [n, d]), &device)
        };
        if use_.mask {
            // A gate with the first two moments of Bernoulli(keep): mean keep, variance
            // keep (1 - keep). The noise ties a feature's signal-to-noise ratio to its keep
            // probability, which rescaling the next layer's weights cannot undo; a
            // deterministic multiplier could drift down while the weights grow to compensate.
            let keep = maybe(self.psi.keep()).unsqueeze::<2>();
            h = if draws.gate.is_empty() {
                h * keep
            } else {
                let eps = Tensor::<2>::from_data(TensorData::new(draws.gate.clone(), [n, d]), &device);
                // sqrt(keep (1 - keep)) = exp((log sigmoid(l) + log sigmoid(-l)) / 2): finite
                // gradient where keep (1 - keep) rounds to 0 in f32.
                let l = maybe(self.psi.mask.val());
                let sd = ((log_sigmoid(l.clone()) + log_sigmoid(l.neg())) * 0.5).exp().unsqueeze::<2>();
                h * (keep + sd * eps)
            };
        }
        h
    }

    /// Logits `[n, classes]` of the raw inputs `x` (`n x d_in`, row-major; the first `h * w`
    /// features are the image) under `mode`, with `psi` as used by `use_`, detached unless
    /// `psi_grad`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &[f32],
        n: usize,
        image: (usize, usize),
        draws: &Draws,
        use_: PsiUse,
        psi_grad: bool,
        mode: Mode,
    ) -> Tensor<2> {
        let device = self.layers[0].weight.val().device();
        let d = x.len() / n.max(1);
        let maybe = |t: Tensor<1>| if psi_grad { t } else { t.detach() };
        let mut h = self.transform_inputs(x, n, image, draws, use_, psi_grad);
        if !self.convs.is_empty() {
            let [ih, iw] = self.image;
            let p = ih * iw;
            let mut img = h.clone().narrow(1, 0, p).reshape([n, 1, ih, iw]);
            for conv in &self.convs {
                img = relu(conv.forward(img, mode));
            }
            let flat: Tensor<2> = img.flatten(1, 3);
            h = if d > p { Tensor::cat(vec![flat, h.narrow(1, p, d - p)], 1) } else { flat };
        }
        let last = self.layers.len() - 1;
        for (l, layer) in self.layers.iter().enumerate() {
            h = layer.forward(h, mode);
            if l < last {
                h = relu(h);
                if use_.dropout && !draws.eps.is_empty() {
                    let width = h.dims()[1];
                    let eps =
                        Tensor::<2>::from_data(TensorData::new(draws.eps[l].clone(), [n, width]), &device);
                    let sigma = maybe(self.psi.sigma()).unsqueeze::<2>();
                    h = h.clone() + h * eps * sigma;
                }
            }
        }
        h
    }
}
