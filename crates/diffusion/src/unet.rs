//! A small U-Net epsilon/x0 predictor: conv, GroupNorm, SiLU, residual blocks with FiLM
//! time conditioning, strided-conv downsampling, nearest upsampling, skip connections.
//!
//! Architecture (C = `channels[0]`, levels l = 0..L-1 with `channels[l]`):
//! time: sinusoidal(C) -> Linear(C, 4C) -> SiLU -> Linear(4C, 4C) = temb;
//! conv_in 3x3 -> per level: `blocks_per_level` ResBlocks (skip saved after each), then a stride-2
//! 3x3 conv (except the last level) -> mid ResBlock -> per level (reversed): ResBlocks on
//! concat(h, skip), then nearest upsample + 3x3 conv (except level 0) -> GroupNorm, SiLU, conv_out.
//! The upsampling conv keeps its input's channels, or with `upsample_to_level_channels` maps them to
//! the channel count of the level it upsamples into (cheaper: the widest map at full resolution
//! becomes the narrowest).
//! `bench/jax_unet_step.py` implements exactly the same network for the speed comparison.

use burn::nn::{GroupNorm, GroupNormConfig};
use burn::prelude::*;
use burn::tensor::activation::silu;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use foundation::layers::Dropout;
use foundation::rng::{stream_for, Purpose};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::model::Denoiser;
use foundation::layers::{TapConv2d, TapLinear};
use foundation::tap::Tap;

/// U-Net hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    /// Image channels.
    pub image_channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Feature channels per resolution level (length = number of levels).
    pub channels: Vec<usize>,
    /// Residual blocks per level on the way down (the way up uses the same number).
    pub blocks_per_level: usize,
    /// GroupNorm groups (must divide every channel count used).
    pub groups: usize,
    /// Dropout probability inside residual blocks (active in training steps only, masks from the
    /// run's seeded dropout stream).
    pub dropout: f64,
    /// The upsampling conv into level `l - 1` outputs `channels[l - 1]` channels instead of keeping
    /// its input's (saves about a sixth of the FLOPs of the 3-level 28x28 net). Absent in older
    /// configs, which built the channel-keeping variant.
    #[serde(default)]
    pub upsample_to_level_channels: bool,
}

impl Default for UNetConfig {
    fn default() -> Self {
        Self {
            image_channels: 1,
            height: 28,
            width: 28,
            channels: vec![32, 64],
            blocks_per_level: 1,
            groups: 8,
            dropout: 0.0,
            upsample_to_level_channels: false,
        }
    }
}

impl UNetConfig {
    /// Checks the settings that would otherwise panic inside burn when the network is built:
    /// at least one level, positive sizes, and GroupNorm groups dividing every channel count.
    pub fn validate(&self) -> Result<(), String> {
        if self.channels.is_empty() || self.channels.contains(&0) {
            return Err(format!(
                "--channels {:?}: need at least one level, each with channels > 0",
                self.channels
            ));
        }
        if self.height == 0 || self.width == 0 || self.image_channels == 0 || self.blocks_per_level == 0 {
            return Err("image size, image channels and blocks per level must be positive".into());
        }
        if self.groups == 0 {
            return Err("GroupNorm groups must be positive".into());
        }
        if let Some(c) = self.channels.iter().find(|&&c| c % self.groups != 0) {
            return Err(format!(
                "--channels {:?}: {c} is not a multiple of the {} GroupNorm groups",
                self.channels, self.groups
            ));
        }
        Ok(())
    }

    /// Build the network with weights from the seed-0 initialisation stream (for a model whose
    /// weights are loaded afterwards, or a fixed test model); see [`UNetConfig::init_with`].
    pub fn init(&self, device: &Device) -> UNet {
        self.init_with(&mut stream_for(0, Purpose::Init, 0), device)
    }

    /// Build the network with weights drawn from `rng`, layer by layer in construction order.
    pub fn init_with(&self, rng: &mut impl Rng, device: &Device) -> UNet {
        assert!(!self.channels.is_empty(), "U-Net needs at least one level");
        let c0 = self.channels[0];
        let temb = 4 * c0;
        // The time MLP and the input conv first, then the blocks in forward order.
        let time_in = TapLinear::new(c0, temb, rng, device);
        let time_out = TapLinear::new(temb, temb, rng, device);
        let conv_in = TapConv2d::new(self.image_channels, c0, 3, 1, 1, rng, device);
        let (groups, dropout) = (self.groups, self.dropout);
        let res = |cin: usize, cout: usize, rng: &mut dyn rand::RngCore| {
            ResBlock::new(cin, cout, temb, groups, dropout, rng, device)
        };
        let mut down = Vec::new();
        let mut downsample = Vec::new();
        let mut skip_channels = Vec::new();
        let mut c = c0;
        for (l, &cl) in self.channels.iter().enumerate() {
            for _ in 0..self.blocks_per_level {
                down.push(res(c, cl, rng));
                c = cl;
                skip_channels.push(c);
            }
            if l + 1 < self.channels.len() {
                downsample.push(TapConv2d::new(c, c, 3, 2, 1, rng, device));
            }
        }
        let mid = res(c, c, rng);
        let mut up = Vec::new();
        let mut upsample = Vec::new();
        for (l, &cl) in self.channels.iter().enumerate().rev() {
            for _ in 0..self.blocks_per_level {
                let skip = skip_channels.pop().expect("one skip per down block");
                up.push(res(c + skip, cl, rng));
                c = cl;
            }
            if l > 0 {
                let c_next = if self.upsample_to_level_channels { self.channels[l - 1] } else { c };
                upsample.push(TapConv2d::new(c, c_next, 3, 1, 1, rng, device));
                c = c_next;
            }
        }
        UNet {
            time_in,
            time_out,
            conv_in,
            down,
            downsample,
            mid,
            up,
            upsample,
            norm_out: GroupNormConfig::new(self.groups, c0).init(device),
            conv_out: TapConv2d::new(c0, self.image_channels, 3, 1, 1, rng, device),
            shape: [self.image_channels, self.height, self.width],
            base_channels: c0,
            blocks_per_level: self.blocks_per_level,
        }
    }
}

/// Residual block with FiLM (scale/shift) conditioning on the time embedding.
#[derive(Module, Debug)]
pub struct ResBlock {
    norm1: GroupNorm,
    conv1: TapConv2d,
    film: TapLinear,
    norm2: GroupNorm,
    dropout: Dropout,
    conv2: TapConv2d,
    skip: Option<TapConv2d>,
}

impl ResBlock {
    fn new(
        cin: usize,
        cout: usize,
        temb: usize,
        groups: usize,
        dropout: f64,
        mut rng: &mut dyn rand::RngCore,
        device: &Device,
    ) -> Self {
        Self {
            norm1: GroupNormConfig::new(groups, cin).init(device),
            conv1: TapConv2d::new(cin, cout, 3, 1, 1, &mut rng, device),
            film: TapLinear::new(temb, 2 * cout, &mut rng, device),
            norm2: GroupNormConfig::new(groups, cout).init(device),
            dropout: Dropout::new(dropout),
            conv2: TapConv2d::new(cout, cout, 3, 1, 1, &mut rng, device),
            skip: (cin != cout).then(|| TapConv2d::new(cin, cout, 1, 1, 0, &mut rng, device)),
        }
    }

    fn forward(&self, x: Tensor<4>, temb: Tensor<2>, tap: &mut Tap) -> Tensor<4> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())), tap);
        let [n, c, _, _] = h.dims();
        let ss = self.film.forward(silu(temb), tap);
        let scale = ss.clone().narrow(1, 0, c).reshape([n, c, 1, 1]);
        let shift = ss.narrow(1, c, c).reshape([n, c, 1, 1]);
        let h = self.norm2.forward(h) * (scale + 1.0) + shift;
        let h = self.conv2.forward(self.dropout.forward(silu(h)), tap);
        let skip = match &self.skip {
            Some(conv) => conv.forward(x, tap),
            None => x,
        };
        h + skip
    }
}

/// The U-Net denoiser. Input and output are flattened images `[N, C*H*W]`.
#[derive(Module, Debug)]
pub struct UNet {
    time_in: TapLinear,
    time_out: TapLinear,
    conv_in: TapConv2d,
    down: Vec<ResBlock>,
    downsample: Vec<TapConv2d>,
    mid: ResBlock,
    up: Vec<ResBlock>,
    upsample: Vec<TapConv2d>,
    norm_out: GroupNorm,
    conv_out: TapConv2d,
    shape: [usize; 3],
    base_channels: usize,
    blocks_per_level: usize,
}

/// Sinusoidal embedding of (float) timesteps: `[sin(t f_i), cos(t f_i)]`,
/// `f_i = exp(-ln(10000) i / (dim/2))`.
pub fn timestep_embedding(t: Tensor<1>, dim: usize) -> Tensor<2> {
    let half = dim / 2;
    let freqs: Vec<f32> =
        (0..half).map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp() as f32).collect();
    let n = t.dims()[0];
    let device = t.device();
    let freqs = Tensor::<1>::from_floats(freqs.as_slice(), &device).reshape([1, half]);
    let args = t.reshape([n, 1]) * freqs;
    Tensor::cat(vec![args.clone().sin(), args.cos()], 1)
}

impl Denoiser for UNet {
    fn data_dim(&self) -> usize {
        self.shape.iter().product()
    }

    fn draws_randomness(&self) -> bool {
        // Every residual block is built with the same dropout probability.
        self.mid.dropout.prob > 0.0
    }

    fn forward_tapped(&self, x: Tensor<2>, t: Tensor<1>, tap: &mut Tap) -> Tensor<2> {
        let [c, h, w] = self.shape;
        let n = x.dims()[0];
        let temb = timestep_embedding(t, self.base_channels);
        let temb = self.time_out.forward(silu(self.time_in.forward(temb, tap)), tap);

        let mut h_ = self.conv_in.forward(x.reshape([n, c, h, w]), tap);
        let mut skips = Vec::with_capacity(self.down.len());
        let levels = self.downsample.len() + 1;
        let mut blocks = self.down.iter();
        for l in 0..levels {
            for _ in 0..self.blocks_per_level {
                h_ = blocks.next().expect("block").forward(h_, temb.clone(), tap);
                skips.push(h_.clone());
            }
            if l + 1 < levels {
                h_ = self.downsample[l].forward(h_, tap);
            }
        }
        h_ = self.mid.forward(h_, temb.clone(), tap);
        let mut blocks = self.up.iter();
        let mut ups = self.upsample.iter();
        for l in (0..levels).rev() {
            for _ in 0..self.blocks_per_level {
                let skip = skips.pop().expect("skip");
                h_ = blocks.next().expect("block").forward(Tensor::cat(vec![h_, skip], 1), temb.clone(), tap);
            }
            if l > 0 {
                let target = skips.last().expect("skip of the level above").dims();
                let opts = InterpolateOptions::new(InterpolateMode::Nearest)
                    .with_output_size([target[2], target[3]]);
                h_ = ups.next().expect("upsample").forward(interpolate(h_, opts), tap);
            }
        }
        let out = self.conv_out.forward(silu(self.norm_out.forward(h_)), tap);
        out.reshape([n, c * h * w])
    }
}
