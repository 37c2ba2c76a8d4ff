//! Sequence inputs `[N, T, d]` (linear layers with weights shared over positions) and token
//! embeddings (one-hot inputs, diagonal input factor).

use burn::module::Module;
use burn::prelude::*;
use curvature::exact::dense_ggn;
use curvature::factors::KfacApprox;
use curvature::fit::{fit_factors, CurvatureBatch, CurvatureOutput, GgnKind};
use curvature::precondition::flat_len;
use foundation::layers::{TapEmbedding, TapLinear};
use foundation::rng::stream;
use foundation::tap::Tap;
use rand::Rng;

use crate::kfac::{block, dev, no_names, rel_err, rows};

/// A deep linear network on sequences: an optional token embedding, then three linear layers
/// applied at every position with shared weights.
#[derive(Module, Debug)]
struct SeqLinear {
    emb: Option<TapEmbedding>,
    l1: TapLinear,
    l2: TapLinear,
    l3: TapLinear,
}

enum Input {
    Features(Tensor<3>),
    Tokens(Tensor<2, Int>),
}

struct SeqBatch<'a> {
    net: &'a SeqLinear,
    input: &'a Input,
}

impl CurvatureBatch for SeqBatch<'_> {
    fn forward(&self, tap: &mut Tap) -> CurvatureOutput {
        let x = match (self.input, &self.net.emb) {
            (Input::Features(x), _) => x.clone(),
            (Input::Tokens(ids), Some(emb)) => emb.forward(ids.clone(), tap),
            (Input::Tokens(_), None) => unreachable!("tokens need an embedding"),
        };
        let h = self.net.l1.forward_seq(x, tap);
        let h = self.net.l2.forward_seq(h, tap);
        let y = self.net.l3.forward_seq(h, tap);
        let [n, t, c] = y.dims();
        let y = y.reshape([n, t * c]);
        CurvatureOutput::unweighted(y.clone(), y.zeros_like())
    }
    fn len(&self) -> usize {
        match self.input {
            Input::Features(x) => x.dims()[0],
            Input::Tokens(ids) => ids.dims()[0],
        }
    }
}

/// Expand is exact for every block (weights and biases); reduce is not for the weight blocks.
/// Returns the number of covered parameters.
fn check_expand_exact_reduce_not(net: &SeqLinear, inputs: &[Input]) -> usize {
    let batches = || inputs.iter().map(|input| SeqBatch { net, input });
    let mut rng = stream(1, 0, 0);
    let exact = dense_ggn(batches(), GgnKind::ModelExact, &mut rng);
    let p = exact.nrows();
    let exact: Vec<f64> = (0..p * p).map(|k| exact[(k / p, k % p)]).collect();
    for approx in [KfacApprox::Expand, KfacApprox::Reduce] {
        let curv =
            fit_factors(batches(), approx, GgnKind::ModelExact, &mut rng, &no_names, |_| {}).eigendecompose();
        assert_eq!(flat_len(&curv.infos()), p);
        let dense = curv.to_dense(&dev());
        let mut offset = 0;
        for info in curv.infos() {
            assert!(info.positions > 1, "{info:?}: positions are shared");
            let w = info.d_in * info.d_out;
            let e_w = rel_err(&block(&dense, p, offset, w), &block(&exact, p, offset, w));
            match approx {
                KfacApprox::Expand => assert!(e_w < 1e-10, "expand weight block not exact: {e_w} ({info:?})"),
                KfacApprox::Reduce => {
                    if !info.diagonal_input {
                        assert!(e_w > 0.05, "reduce unexpectedly exact: {e_w}")
                    }
                }
            }
            if info.has_bias {
                let e_b = rel_err(
                    &block(&dense, p, offset + w, info.d_out),
                    &block(&exact, p, offset + w, info.d_out),
                );
                if approx == KfacApprox::Expand {
                    assert!(e_b < 1e-10, "expand bias block not exact: {e_b}");
                }
            }
            offset += info.num_params();
        }
    }
    p
}

/// Eschenhagen et al. 2023, Prop. 1, with sequence inputs `[N, T, d]` and weights shared over
/// the T positions: K-FAC-expand blocks equal the exact GGN blocks, K-FAC-reduce's do not.
#[test]
fn kfac_expand_is_exact_for_deep_linear_networks_on_sequences_and_reduce_is_not() {
    let d = dev();
    let mut rng = stream(12, 0, 0);
    let net = SeqLinear {
        emb: None,
        l1: TapLinear::new(3, 4, &mut rng, &d),
        l2: TapLinear::new(4, 5, &mut rng, &d),
        l3: TapLinear::new(5, 2, &mut rng, &d),
    };
    let inputs: Vec<Input> = (0..3)
        .map(|b| Input::Features(Tensor::<3>::from_data(TensorData::new(rows(b, 6, 15, 1.0), [6, 5, 3]), &d)))
        .collect();
    check_expand_exact_reduce_not(&net, &inputs);
}

/// The same with a token embedding in front: its input factor (one-hot rows) is kept diagonal,
/// which loses nothing in the expand setting (a one-hot row's outer product is diagonal), so
/// every block is still exact; the factor file round-trips without a dense `Q_A`.
#[test]
fn embedding_input_factor_is_diagonal_and_expand_stays_exact() {
    let d = dev();
    let mut rng = stream(13, 0, 0);
    let vocab = 7;
    let net = SeqLinear {
        emb: Some(TapEmbedding::new(vocab, 3, &mut rng, &d)),
        l1: TapLinear::new(3, 4, &mut rng, &d),
        l2: TapLinear::new(4, 5, &mut rng, &d),
        l3: TapLinear::new(5, 2, &mut rng, &d),
    };
    let mut tok = stream(14, 0, 0);
    let inputs: Vec<Input> = (0..3)
        .map(|_| {
            let ids: Vec<i64> = (0..6 * 4).map(|_| tok.gen_range(0..vocab as i64)).collect();
            Input::Tokens(Tensor::<2, Int>::from_data(TensorData::new(ids, [6, 4]), &d))
        })
        .collect();
    let p = check_expand_exact_reduce_not(&net, &inputs);
    assert_eq!(p, net.num_params(), "every parameter is covered");

    let batches = inputs.iter().map(|input| SeqBatch { net: &net, input });
    let curv =
        fit_factors(batches, KfacApprox::Expand, GgnKind::Model, &mut stream(3, 0, 0), &no_names, |_| {})
            .eigendecompose();
    let emb = &curv.layers[0];
    assert!(emb.info.diagonal_input && emb.q_a.is_empty(), "embedding A is diagonal");
    let path = std::env::temp_dir().join(format!("curvature-embedding-{}.safetensors", std::process::id()));
    curv.save(&path).expect("save");
    let back = curvature::EigenCurvature::load(&path, Some(&curv.infos())).expect("load");
    let _ = std::fs::remove_file(&path);
    assert_eq!(back.eigenvalues(), curv.eigenvalues());
    assert!(back.layers[0].info.diagonal_input && back.layers[0].q_a.is_empty());
}
