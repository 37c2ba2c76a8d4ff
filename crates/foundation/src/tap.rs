//! Hook point for curvature and attribution code: record, for every tapped `Linear`, `Conv2d`
//! and `Embedding`, the layer input and (after backward) the gradient at the layer output.
//!
//! Inputs come in three shapes: dense `[N, d]`, spatial `[N, C, H, W]` (convolutions) and
//! sequences `[N, T, d]` (a linear layer applied with the same weights at every position, e.g.
//! in a transformer; an embedding, whose input is recorded as one-hot rows `[N, T, vocab]`).
//! Curvature code treats the T positions like a convolution's pixels (K-FAC expand / reduce).
//!
//! Design: models thread a `&mut Tap` through their forward pass and call their layers through
//! [`TapLinear`](crate::layers::TapLinear) / [`TapConv2d`](crate::layers::TapConv2d). When the tap
//! is off (the default for training and sampling) nothing happens. When it records, each layer
//! call stores its input (detached) and adds a zero "probe" leaf to its output; after
//! `loss.backward()` the probe's gradient is exactly dLoss/d(output) (burn keeps gradients only
//! for leaves, hence the probe). Layers are identified by the `ParamId` of their weight, which
//! [`layer_names`] maps to the module path (e.g. `down.0.conv1`).
//!
//! The gradients are those of whatever scalar was backpropagated: for a batch-mean loss they are
//! per-example gradients divided by the batch size.

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use burn::tensor::Gradients;

/// Geometry of a tapped layer, enough to rebuild per-example weight gradients.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerKind {
    /// Dense layer; burn stores the weight as `[d_in, d_out]`.
    Linear {
        /// Input features.
        d_in: usize,
        /// Output features.
        d_out: usize,
    },
    /// 2-D convolution; weight `[c_out, c_in, kh, kw]`.
    Conv2d {
        /// Input channels.
        c_in: usize,
        /// Output channels.
        c_out: usize,
        /// Kernel size.
        kernel: [usize; 2],
        /// Stride.
        stride: [usize; 2],
        /// Symmetric zero padding.
        padding: [usize; 2],
    },
    /// Token embedding, a linear map of one-hot inputs; burn stores the weight as
    /// `[vocab, dim]`. Its input factor is diagonal (token frequencies).
    Embedding {
        /// Vocabulary size (input features).
        vocab: usize,
        /// Embedding width (output features).
        dim: usize,
    },
}

/// A recorded activation: 2-D for linear layers, 4-D (NCHW) for convolutions, 3-D for layers
/// applied at every position of a sequence.
#[derive(Clone, Debug)]
pub enum Activation {
    /// `[N, features]`.
    Dense(Tensor<2>),
    /// `[N, C, H, W]`.
    Spatial(Tensor<4>),
    /// `[N, T, features]` (embeddings: one-hot `[N, T, vocab]`).
    Sequence(Tensor<3>),
}

impl Activation {
    /// Batch size.
    pub fn batch(&self) -> usize {
        match self {
            Activation::Dense(t) => t.dims()[0],
            Activation::Spatial(t) => t.dims()[0],
            Activation::Sequence(t) => t.dims()[0],
        }
    }
}

/// One recorded layer call.
#[derive(Clone, Debug)]
pub struct TapRecord {
    /// Id of the layer's weight parameter (stable key; see [`layer_names`]).
    pub weight_id: ParamId,
    /// Id of the layer's bias parameter, if it has one.
    pub bias_id: Option<ParamId>,
    /// Layer geometry.
    pub kind: LayerKind,
    /// The layer input, detached from the graph (no autodiff).
    pub input: Activation,
    /// The zero probe added to the output; its gradient is dLoss/d(output).
    probe: Activation,
}

impl TapRecord {
    /// Gradient of the backpropagated scalar with respect to this layer's output
    /// (same shape as the output). `None` if the probe did not reach the loss.
    pub fn output_grad(&self, grads: &Gradients) -> Option<Activation> {
        match &self.probe {
            Activation::Dense(p) => p.grad(grads).map(Activation::Dense),
            Activation::Spatial(p) => p.grad(grads).map(Activation::Spatial),
            Activation::Sequence(p) => p.grad(grads).map(Activation::Sequence),
        }
    }
}

/// The recording context threaded through a model's forward pass.
#[derive(Debug, Default)]
pub struct Tap {
    recording: bool,
    records: Vec<TapRecord>,
    /// Offsets added to the outputs of given layers (used for finite-difference checks).
    offsets: Vec<(ParamId, Activation)>,
}

impl Tap {
    /// A tap that records nothing (zero overhead).
    pub fn off() -> Self {
        Self::default()
    }

    /// A tap that records every tapped layer call. The forward pass must run on an autodiff
    /// device for the output gradients to exist.
    pub fn recording() -> Self {
        Self { recording: true, ..Self::default() }
    }

    /// A tap that records nothing but adds `offset` to the output of the layer whose weight id
    /// is `weight_id` (every call of it). Directional finite differences of a loss with respect to
    /// a layer output use this to check recorded output gradients.
    pub fn perturbing(weight_id: ParamId, offset: Activation) -> Self {
        Self { recording: false, records: Vec::new(), offsets: vec![(weight_id, offset)] }
    }

    /// Whether layer calls must be reported to this tap (recording or perturbing).
    pub fn is_active(&self) -> bool {
        self.recording || !self.offsets.is_empty()
    }

    /// Whether this tap records.
    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// The records, in forward-call order.
    pub fn records(&self) -> &[TapRecord] {
        &self.records
    }

    /// Take the records out, leaving the tap empty.
    pub fn take_records(&mut self) -> Vec<TapRecord> {
        std::mem::take(&mut self.records)
    }

    /// Called by tapped dense layers: records `input` and returns `output` (+ probe).
    pub fn dense(
        &mut self,
        weight_id: ParamId,
        bias_id: Option<ParamId>,
        kind: LayerKind,
        input: &Tensor<2>,
        output: Tensor<2>,
    ) -> Tensor<2> {
        if let Some((_, Activation::Dense(off))) = self.offsets.iter().find(|(id, _)| *id == weight_id) {
            return output + off.clone();
        }
        if !self.recording {
            return output;
        }
        let probe = Tensor::<2>::zeros(output.dims(), &output.device()).require_grad();
        self.records.push(TapRecord {
            weight_id,
            bias_id,
            kind,
            input: Activation::Dense(input.clone().inner()),
            probe: Activation::Dense(probe.clone()),
        });
        output + probe
    }

    /// Called by tapped convolutions: records `input` and returns `output` (+ probe).
    pub fn spatial(
        &mut self,
        weight_id: ParamId,
        bias_id: Option<ParamId>,
        kind: LayerKind,
        input: &Tensor<4>,
        output: Tensor<4>,
    ) -> Tensor<4> {
        if let Some((_, Activation::Spatial(off))) = self.offsets.iter().find(|(id, _)| *id == weight_id) {
            return output + off.clone();
        }
        if !self.recording {
            return output;
        }
        let probe = Tensor::<4>::zeros(output.dims(), &output.device()).require_grad();
        self.records.push(TapRecord {
            weight_id,
            bias_id,
            kind,
            input: Activation::Spatial(input.clone().inner()),
            probe: Activation::Spatial(probe.clone()),
        });
        output + probe
    }
}

impl Tap {
    /// Called by tapped layers applied at every position of a sequence (and by embeddings, with
    /// one-hot inputs): records `input` `[N, T, d_in]` and returns `output` (+ probe).
    pub fn sequence(
        &mut self,
        weight_id: ParamId,
        bias_id: Option<ParamId>,
        kind: LayerKind,
        input: &Tensor<3>,
        output: Tensor<3>,
    ) -> Tensor<3> {
        if let Some((_, Activation::Sequence(off))) = self.offsets.iter().find(|(id, _)| *id == weight_id) {
            return output + off.clone();
        }
        if !self.recording {
            return output;
        }
        let probe = Tensor::<3>::zeros(output.dims(), &output.device()).require_grad();
        self.records.push(TapRecord {
            weight_id,
            bias_id,
            kind,
            input: Activation::Sequence(input.clone().inner()),
            probe: Activation::Sequence(probe.clone()),
        });
        output + probe
    }
}

/// Map every parameter id of `module` to its dotted path, e.g. `down.0.conv1.weight`.
pub fn param_paths<M: Module>(module: &M) -> HashMap<ParamId, String> {
    struct Paths {
        stack: Vec<String>,
        out: HashMap<ParamId, String>,
    }
    impl ModuleVisitor for Paths {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.stack.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.out.insert(param.id, self.stack.join("."));
        }
    }
    let mut v = Paths { stack: Vec::new(), out: HashMap::new() };
    module.visit(&mut v);
    v.out
}

/// Map the weight id of every tapped layer to the layer's path (the weight path without its
/// trailing `.inner.weight`), e.g. `Unet.down.0.conv1`. Plain burn layers reported to a tap by
/// hand (see `mnist_classifier::MnistClassifier::forward_tapped`) are named by their weight path
/// without `.weight`, e.g. `conv1`.
pub fn layer_names<M: Module>(module: &M) -> HashMap<ParamId, String> {
    param_paths(module)
        .into_iter()
        .filter_map(|(id, p)| {
            p.strip_suffix(".inner.weight")
                .or_else(|| p.strip_suffix(".weight"))
                .or_else(|| (p == "weight").then_some(""))
                .map(|s| (id, s.to_string()))
        })
        .collect()
}
