//! A decoder's architecture, in the layout of HuggingFace's `config.json`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gguf::Gguf;

/// The hyper-parameters of a llama-family decoder (llama, mistral, qwen2),
/// serialised as the `config.json` of a model directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// `llama`, `mistral` or `qwen2`.
    pub model_type: String,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Transformer blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Size of one head, if not `hidden_size / num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary embedding base.
    pub rope_theta: f64,
    /// Longest sequence the model was trained for.
    pub max_position_embeddings: usize,
    /// Whether the LM head reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token.
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

impl ModelConfig {
    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Reads the architecture of a llama-architecture GGUF file.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let m = gguf.metadata();
        let arch = m.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(Error::Unsupported(format!(
                "{}: architecture `{arch}`; charter imports `llama` GGUF files",
                gguf.path().display()
            )));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let vocab_size = match m.contains_key(&key("vocab_size")) {
            true => m.get_usize(&key("vocab_size"))?,
            false => m.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        let num_attention_heads = m.get_usize(&key("attention.head_count"))?;
        let opt = |k: &str| -> Result<Option<u32>> {
            if m.contains_key(k) {
                m.get_u32(k).map(Some)
            } else {
                Ok(None)
            }
        };
        let hidden_size = m.get_usize(&key("embedding_length"))?;
        let head_dim = if m.contains_key(&key("attention.key_length")) {
            let d = m.get_usize(&key("attention.key_length"))?;
            (d != hidden_size / num_attention_heads.max(1)).then_some(d)
        } else {
            None
        };
        let config = ModelConfig {
            model_type: "llama".to_string(),
            vocab_size,
            hidden_size,
            intermediate_size: m.get_usize(&key("feed_forward_length"))?,
            num_hidden_layers: m.get_usize(&key("block_count"))?,
            num_attention_heads,
            num_key_value_heads: if m.contains_key(&key("attention.head_count_kv")) {
                m.get_usize(&key("attention.head_count_kv"))?
            } else {
                num_attention_heads
            },
            head_dim,
            rms_norm_eps: f64::from(m.get_f32(&key("attention.layer_norm_rms_epsilon"))?),
            rope_theta: if m.contains_key(&key("rope.freq_base")) {
                f64::from(m.get_f32(&key("rope.freq_base"))?)
            } else {
                10_000.0
            },
            max_position_embeddings: m.get_usize(&key("context_length"))?,
            tie_word_embeddings: gguf.tensor("output.weight").is_none(),
            bos_token_id: opt("tokenizer.ggml.bos_token_id")?,
            eos_token_id: opt("tokenizer.ggml.eos_token_id")?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the dimensions are consistent.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Unsupported(format!("model config: {what}")));
        if self.num_attention_heads == 0 || self.num_key_value_heads == 0 {
            return bad("zero attention heads".into());
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "{} query heads are not a multiple of {} key/value heads",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) || self.head_dim() == 0 {
            return bad(format!(
                "head size {} is not a positive even number",
                self.head_dim()
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden size {} is not divisible by {} heads",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }
}

/// Dequantised GGUF tensors by name, as the ONNX exporter wants them.
impl crate::onnx::WeightSource for Gguf {
    fn f32_tensor(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        let Some(info) = self.tensor(name) else {
            return Ok(None);
        };
        let shape = info.shape().into_iter().map(|d| d as usize).collect();
        Ok(Some((shape, self.dequantize(name)?)))
    }
}
