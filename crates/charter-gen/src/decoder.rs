//! One forward pass of an exported decoder through ONNX Runtime.

use std::borrow::Cow;
use std::path::Path;

use ort::session::{Session, SessionInputValue, builder::GraphOptimizationLevel};
use ort::value::Tensor;

use crate::error::{Error, Result};

/// The dimensions of a decoder graph, read from the model directory's `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderDims {
    /// Transformer layers.
    pub layers: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Vocabulary size (logit width).
    pub vocab: usize,
}

/// The key/value cache of a batch: per layer, keys and values of shape
/// `[batch, kv_heads, len, head_dim]`, row-major.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Rows in the batch.
    pub batch: usize,
    /// Positions cached per row (padding included).
    pub len: usize,
    /// `2 × layers` buffers: layer 0 key, layer 0 value, layer 1 key, …
    pub data: Vec<Vec<f32>>,
}

impl KvCache {
    /// An empty cache for `batch` rows.
    pub fn empty(dims: &DecoderDims, batch: usize) -> Self {
        KvCache {
            batch,
            len: 0,
            data: vec![Vec::new(); 2 * dims.layers],
        }
    }
}

/// A decoder session.
pub struct Decoder {
    session: Session,
    dims: DecoderDims,
}

impl Decoder {
    /// Opens `dir/model.onnx` with `threads` intra-op threads.
    pub fn open(dir: &Path, dims: DecoderDims, threads: usize) -> Result<Self> {
        let env = crate::runtime::init()?;
        let path = dir.join("model.onnx");
        if !path.is_file() {
            return Err(Error::MissingFile(path));
        }
        let ort_err = |e: ort::Error| Error::Session {
            path: path.clone(),
            reason: e.to_string(),
        };
        let session = Session::builder(env)
            .map_err(ort_err)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| ort_err(e.into()))?
            .with_intra_threads(threads.max(1))
            .map_err(|e| ort_err(e.into()))?
            .commit_from_file(&path)
            .map_err(ort_err)?;
        Ok(Decoder { session, dims })
    }

    /// The graph's dimensions.
    pub fn dims(&self) -> DecoderDims {
        self.dims
    }

    /// Runs `seq` new tokens per row of a batch over `past`.
    ///
    /// # Shapes
    /// `input_ids`, `position_ids`: `[batch, seq]`; `attention_mask`:
    /// `[batch, past.len + seq]`. Returns logits `[batch, seq, vocab]` and the
    /// cache extended by `seq` positions.
    pub fn forward(
        &mut self,
        input_ids: Vec<i64>,
        position_ids: Vec<i64>,
        attention_mask: Vec<i64>,
        seq: usize,
        past: KvCache,
    ) -> Result<(Vec<f32>, KvCache)> {
        let d = self.dims;
        let batch = past.batch;
        let total = past.len + seq;
        let run_err = |e: ort::Error| Error::Run(e.to_string());
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(3 + 2 * d.layers);
        inputs.push((
            "input_ids".into(),
            Tensor::from_array(([batch, seq], input_ids))
                .map_err(run_err)?
                .into(),
        ));
        inputs.push((
            "attention_mask".into(),
            Tensor::from_array(([batch, total], attention_mask))
                .map_err(run_err)?
                .into(),
        ));
        inputs.push((
            "position_ids".into(),
            Tensor::from_array(([batch, seq], position_ids))
                .map_err(run_err)?
                .into(),
        ));
        let kv_shape = [batch, d.kv_heads, past.len, d.head_dim];
        for (i, buf) in past.data.into_iter().enumerate() {
            let (layer, kind) = (i / 2, if i % 2 == 0 { "key" } else { "value" });
            let buf = if buf.is_empty() && past.len == 0 {
                Vec::new()
            } else {
                buf
            };
            inputs.push((
                format!("past_key_values.{layer}.{kind}").into(),
                Tensor::from_array((kv_shape, buf)).map_err(run_err)?.into(),
            ));
        }
        let outputs = self.session.run(inputs).map_err(run_err)?;
        let (_, logits) = outputs["logits"]
            .try_extract_tensor::<f32>()
            .map_err(run_err)?;
        let logits = logits.to_vec();
        let mut data = Vec::with_capacity(2 * d.layers);
        for layer in 0..d.layers {
            for kind in ["key", "value"] {
                let (_, t) = outputs[format!("present.{layer}.{kind}").as_str()]
                    .try_extract_tensor::<f32>()
                    .map_err(run_err)?;
                data.push(t.to_vec());
            }
        }
        Ok((
            logits,
            KvCache {
                batch,
                len: total,
                data,
            },
        ))
    }
}
