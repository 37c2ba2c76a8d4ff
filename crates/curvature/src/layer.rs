//! Per-layer views of tap records: activation rows (unfolded patches for convolutions) and
//! output-gradient rows, arranged per datum and per shared position.

use burn::prelude::*;
use burn::tensor::ops::PadMode;
use burn::tensor::{Gradients, Slice};
use foundation::tap::{Activation, LayerKind, TapRecord};

/// Inputs and output gradients of one layer for a batch of N data, as `[N, S, d]` tensors:
/// S shared positions (conv: output pixels; linear on rows: 1; linear or embedding on sequences:
/// the T positions), `d_in` patch features (embedding: one-hot rows), `d_out` channels.
pub struct LayerBatch {
    /// `[N, S, d_in]` layer inputs (conv: im2col patches, channel-major like the weight).
    pub a: Tensor<3>,
    /// `[N, S, d_out]` gradients of the backpropagated scalar at the layer output.
    pub g: Tensor<3>,
}

impl LayerBatch {
    /// Build from a record and the gradients of one backward pass.
    pub fn from_record(rec: &TapRecord, grads: &Gradients) -> Option<Self> {
        let g = rec.output_grad(grads)?;
        Some(match (&rec.kind, &rec.input, g) {
            (LayerKind::Linear { .. }, Activation::Dense(a), Activation::Dense(g)) => {
                let [n, d_in] = a.dims();
                let d_out = g.dims()[1];
                LayerBatch { a: a.clone().reshape([n, 1, d_in]), g: g.reshape([n, 1, d_out]) }
            }
            (
                LayerKind::Linear { .. } | LayerKind::Embedding { .. },
                Activation::Sequence(a),
                Activation::Sequence(g),
            ) => LayerBatch { a: a.clone(), g },
            (
                LayerKind::Conv2d { kernel, stride, padding, .. },
                Activation::Spatial(x),
                Activation::Spatial(g),
            ) => {
                let a = im2col(x.clone(), *kernel, *stride, *padding);
                let [n, c_out, h, w] = g.dims();
                let g = g.reshape([n, c_out, h * w]).swap_dims(1, 2);
                LayerBatch { a, g }
            }
            _ => return None,
        })
    }

    /// The `[N, S, d_out]` output gradients of a record alone (no im2col of the input).
    pub fn output_grads(rec: &TapRecord, grads: &Gradients) -> Option<Tensor<3>> {
        Some(match rec.output_grad(grads)? {
            Activation::Dense(g) => {
                let [n, d_out] = g.dims();
                g.reshape([n, 1, d_out])
            }
            Activation::Sequence(g) => g,
            Activation::Spatial(g) => {
                let [n, c_out, h, w] = g.dims();
                g.reshape([n, c_out, h * w]).swap_dims(1, 2)
            }
        })
    }

    /// The inputs of a record feature-major, `[N, d_in, S]` (conv: im2col patches before the
    /// transpose to rows, so no transposed copy is made; `S = 1` for a dense linear).
    pub fn activations_by_feature(rec: &TapRecord) -> Tensor<3> {
        match (&rec.kind, &rec.input) {
            (LayerKind::Linear { .. }, Activation::Dense(a)) => {
                let [n, d_in] = a.dims();
                a.clone().reshape([n, d_in, 1])
            }
            (LayerKind::Linear { .. } | LayerKind::Embedding { .. }, Activation::Sequence(a)) => {
                a.clone().swap_dims(1, 2)
            }
            (LayerKind::Conv2d { kernel, stride, padding, .. }, Activation::Spatial(x)) => {
                im2col_by_feature(x.clone(), *kernel, *stride, *padding)
            }
            _ => panic!("record input does not match its layer kind"),
        }
    }

    /// The output gradients of a record feature-major, `[N, d_out, S]` (conv: the NCHW gradient
    /// as it is).
    pub fn output_grads_by_feature(rec: &TapRecord, grads: &Gradients) -> Option<Tensor<3>> {
        Some(match rec.output_grad(grads)? {
            Activation::Dense(g) => {
                let [n, d_out] = g.dims();
                g.reshape([n, d_out, 1])
            }
            Activation::Sequence(g) => g.swap_dims(1, 2),
            Activation::Spatial(g) => {
                let [n, c_out, h, w] = g.dims();
                g.reshape([n, c_out, h * w])
            }
        })
    }

    /// The `[N, S, d_in]` input rows of a record (conv: im2col patches), without gradients.
    pub fn activations(rec: &TapRecord) -> Tensor<3> {
        match (&rec.kind, &rec.input) {
            (LayerKind::Linear { .. }, Activation::Dense(a)) => {
                let [n, d_in] = a.dims();
                a.clone().reshape([n, 1, d_in])
            }
            (LayerKind::Linear { .. } | LayerKind::Embedding { .. }, Activation::Sequence(a)) => a.clone(),
            (LayerKind::Conv2d { kernel, stride, padding, .. }, Activation::Spatial(x)) => {
                im2col(x.clone(), *kernel, *stride, *padding)
            }
            _ => panic!("record input does not match its layer kind"),
        }
    }

    /// Per-datum weight gradients `G_i = sum_s g_{i,s} a_{i,s}^T`, `[N, d_out, d_in]`.
    pub fn per_datum_weight_grads(&self) -> Tensor<3> {
        self.g.clone().swap_dims(1, 2).matmul(self.a.clone())
    }

    /// Per-datum bias gradients `sum_s g_{i,s}`, `[N, d_out]`.
    pub fn per_datum_bias_grads(&self) -> Tensor<2> {
        let [n, _, d_out] = self.g.dims();
        self.g.clone().sum_dim(1).reshape([n, d_out])
    }
}

/// Patches of a convolution's input, `[N, L, C*kh*kw]` with features ordered (channel, row,
/// column) like burn's `[c_out, c_in, kh, kw]` weight. Built from strided slices (pure data
/// movement): burn's `unfold4d` is a convolution with a one-hot kernel, which costs as much as
/// a GEMM of size `L x (C k^2) x (C k^2)` per image.
pub fn im2col(x: Tensor<4>, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> Tensor<3> {
    im2col_by_feature(x, kernel, stride, padding).swap_dims(1, 2)
}

/// [`im2col`] feature-major: `[N, C*kh*kw, L]`.
pub fn im2col_by_feature(
    x: Tensor<4>,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> Tensor<3> {
    let [n, c, h, w] = x.dims();
    let ho = (h + 2 * padding[0] - kernel[0]) / stride[0] + 1;
    let wo = (w + 2 * padding[1] - kernel[1]) / stride[1] + 1;
    if kernel == [1, 1] && stride == [1, 1] && padding == [0, 0] {
        return x.reshape([n, c, h * w]);
    }
    let xp = if padding == [0, 0] {
        x
    } else {
        x.pad([(0, 0), (0, 0), (padding[0], padding[0]), (padding[1], padding[1])], PadMode::Constant(0.0))
    };
    let mut cols = Vec::with_capacity(kernel[0] * kernel[1]);
    for i in 0..kernel[0] {
        for j in 0..kernel[1] {
            let rows =
                Slice::new(i as isize, Some((i + stride[0] * (ho - 1) + 1) as isize), stride[0] as isize);
            let colsl =
                Slice::new(j as isize, Some((j + stride[1] * (wo - 1) + 1) as isize), stride[1] as isize);
            let patch = xp.clone().slice([Slice::from(0..n), Slice::from(0..c), rows, colsl]);
            cols.push(patch.reshape([n, c, 1, ho * wo]));
        }
    }
    Tensor::cat(cols, 2).reshape([n, c * kernel[0] * kernel[1], ho * wo])
}

/// The Gram matrix `X^T X` of rows `X` (`[rows, d]`) as row-major f64 `[d, d]` (see
/// [`gram_sum`]).
pub fn gram(x: Tensor<2>) -> Vec<f64> {
    let [rows, d] = x.dims();
    gram_sum(x.reshape([rows, d, 1]))
}

/// `sum_i X_i X_i^T` of feature-major blocks `X_i` (`x` is `[N, d, S]`) as row-major f64
/// `[d, d]`, computed in the tensor's float type with faer: only the lower triangle is multiplied
/// (half the flops of a full product), then mirrored, and the blocks are read in place (no
/// transposed copy). With `S = 1` it is one product `X^T X` of the `[N, d]` rows.
pub fn gram_sum(x: Tensor<3>) -> Vec<f64> {
    let [n, d, s] = x.dims();
    let data = x.into_data();
    if data.dtype() == burn::tensor::DType::F64 {
        let v = data.try_into_vec_as::<f64>().expect("float data");
        gram_sum_of(&v, [n, d, s], |x| x)
    } else {
        let v = data.try_into_vec_as::<f32>().expect("float data");
        gram_sum_of(&v, [n, d, s], |x| x as f64)
    }
}

fn gram_sum_of<T: faer::traits::ComplexField + Copy>(
    v: &[T],
    [n, d, s]: [usize; 3],
    f64_of: impl Fn(T) -> f64,
) -> Vec<f64> {
    use faer::linalg::matmul::triangular::{matmul, BlockStructure};
    let mut out = faer::Mat::<T>::zeros(d, d);
    let mut product = |lhs: faer::MatRef<'_, T>, rhs: faer::MatRef<'_, T>, accum: faer::Accum| {
        let (lower, rect) = (BlockStructure::TriangularLower, BlockStructure::Rectangular);
        matmul(out.as_mut(), lower, accum, lhs, rect, rhs, rect, T::one_impl(), faer::Par::rayon(0));
    };
    if s == 1 {
        let x = faer::MatRef::from_row_major_slice(v, n, d);
        product(x.transpose(), x, faer::Accum::Replace);
    } else {
        for (i, block) in v.chunks_exact(d * s).enumerate() {
            let x = faer::MatRef::from_row_major_slice(block, d, s);
            product(x, x.transpose(), if i == 0 { faer::Accum::Replace } else { faer::Accum::Add });
        }
    }
    let mut g = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let v = f64_of(out[(i, j)]);
            g[i * d + j] = v;
            g[j * d + i] = v;
        }
    }
    g
}

/// Tensor values as f64 whatever the device's float type.
pub fn to_f64(t: Tensor<2>) -> Vec<f64> {
    t.into_data().try_into_vec_as::<f64>().expect("float data")
}

/// Tensor values as f64 (rank 3).
pub fn to_f64_3(t: Tensor<3>) -> Vec<f64> {
    t.into_data().try_into_vec_as::<f64>().expect("float data")
}

/// A `[rows, cols]` tensor on `device` from f64 values (cast to the device's float type).
pub fn from_f64(v: &[f64], rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::<2>::from_data(TensorData::new(v.to_vec(), [rows, cols]), device)
}
