//! Small tensor helpers every module of the trainer uses (kept apart so the
//! model and its adapters do not import each other).

use burn::module::{Param, ParamId};
use burn::tensor::{Tensor, TensorData};

use crate::{Error, Result};

/// A trainable parameter (gradients required on an autodiff device) with a
/// fixed id.
pub(crate) fn param_with_id<const D: usize>(id: u64, value: Tensor<D>) -> Param<Tensor<D>> {
    let (_, value, mapper) = Param::from_tensor(value).consume();
    Param::from_mapped_value(ParamId::from(id), value, mapper)
}

/// A tensor's values as f32, row-major.
pub(crate) fn values(data: TensorData) -> Result<Vec<f32>> {
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| Error::Data(format!("{e:?}")))
}
