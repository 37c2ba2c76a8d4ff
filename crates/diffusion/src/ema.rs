//! Exponential moving average of model weights.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

/// Flatten every float parameter of `module` (visiting order) into rank-1 tensors without autodiff.
pub fn flat_params<M: Module>(module: &M) -> Vec<Tensor<1>> {
    struct Collect(Vec<Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let v = param.val().inner();
            let n = v.shape().num_elements();
            self.0.push(v.reshape([n]));
        }
    }
    let mut c = Collect(Vec::new());
    module.visit(&mut c);
    c.0
}

/// `ema <- decay * ema + (1 - decay) * model`, parameter by parameter (both must share structure).
pub fn ema_update<M: Module>(ema: M, model: &M, decay: f64) -> M {
    struct Blend {
        src: std::vec::IntoIter<Tensor<1>>,
        decay: f64,
    }
    impl ModuleMapper for Blend {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, value, mapper) = param.consume();
            let src = self.src.next().expect("EMA and model have the same parameters");
            let src = src.reshape(value.dims());
            let blended = value.mul_scalar(self.decay) + src.mul_scalar(1.0 - self.decay);
            Param::from_mapped_value(id, blended, mapper)
        }
    }
    let src = flat_params(model).into_iter();
    ema.map(&mut Blend { src, decay })
}
