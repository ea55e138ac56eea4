//! A decoder's architecture, in the layout of HuggingFace's `config.json`.

use std::path::Path;

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

    /// Reads a HuggingFace `config.json` of a llama, mistral or qwen2 decoder
    /// (`LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`).
    ///
    /// Absent fields take the `transformers` defaults: `num_key_value_heads`
    /// = `num_attention_heads`, `rope_theta` 10000, `rms_norm_eps` 1e-6,
    /// `tie_word_embeddings` false, and the family's `max_position_embeddings`.
    /// An `eos_token_id` list keeps its first id (the model directory's
    /// `tokenizer_config.json` names the EOS text, which the generation
    /// engine also stops on).
    ///
    /// What the graph cannot compute is an error naming the file and the
    /// field: RoPE scaling other than `default`, a sliding attention window
    /// shorter than the context, llama's `attention_bias` or `mlp_bias`,
    /// an activation other than SiLU, and quantised checkpoints.
    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Unsupported(format!("{}: {e}", path.display())))?;
        let Some(map) = json.as_object() else {
            return Err(Error::Unsupported(format!(
                "{}: expected a JSON object",
                path.display()
            )));
        };
        let f = HfFields { path, map };
        let model_type = f.str("model_type")?;
        let (architecture, default_context) = match model_type {
            "llama" => ("LlamaForCausalLM", 2048),
            "mistral" => ("MistralForCausalLM", 4096 * 32),
            "qwen2" => ("Qwen2ForCausalLM", 32768),
            other => {
                return Err(f.err(
                    "model_type",
                    format!("`{other}`; charter imports llama, mistral and qwen2 decoders"),
                ));
            }
        };
        if let Some(list) = f.get("architectures") {
            let names: Vec<&str> = list
                .as_array()
                .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
                .unwrap_or_default();
            if !names.contains(&architecture) {
                return Err(f.err(
                    "architectures",
                    format!("{list}; charter imports {architecture} for model_type {model_type}"),
                ));
            }
        }
        if let Some(q) = f.get("quantization_config") {
            return Err(f.err(
                "quantization_config",
                format!("{q}: charter imports unquantised (F32, F16, BF16) checkpoints"),
            ));
        }
        let act = f.get("hidden_act").map_or(Some("silu"), |v| v.as_str());
        if !matches!(act, Some("silu" | "swish")) {
            return Err(f.err(
                "hidden_act",
                format!("{}; charter's graph uses SiLU", f.show("hidden_act")),
            ));
        }
        if model_type == "llama" {
            for field in ["attention_bias", "mlp_bias"] {
                if f.bool_or(field, false)? {
                    return Err(f.err(field, "true; charter's llama graph has no such biases"));
                }
            }
        }
        // Rotary settings live in `rope_theta`/`rope_scaling`, or, in newer
        // `transformers`, together in `rope_parameters`.
        let mut rope_theta = f.f64_or("rope_theta", 10_000.0)?;
        for field in ["rope_scaling", "rope_parameters"] {
            let Some(rope) = f.get(field) else { continue };
            let kind = rope
                .get("rope_type")
                .or_else(|| rope.get("type"))
                .and_then(serde_json::Value::as_str)
                .unwrap_or("default");
            if kind != "default" {
                return Err(f.err(
                    field,
                    format!("{rope}: charter supports plain rotary embedding (no scaling)"),
                ));
            }
            if let Some(theta) = rope.get("rope_theta") {
                rope_theta = theta
                    .as_f64()
                    .ok_or_else(|| f.err(field, format!("rope_theta {theta} is not a number")))?;
            }
        }
        let max_position_embeddings = f
            .opt_usize("max_position_embeddings")?
            .unwrap_or(default_context);
        // Mistral slides whenever `sliding_window` is set; qwen2 only with
        // `use_sliding_window`. A window as long as the context never slides.
        let sliding = match model_type {
            "qwen2" => f.bool_or("use_sliding_window", false)?,
            _ => true,
        };
        if let Some(window) = f.opt_usize("sliding_window")?
            && sliding
            && window < max_position_embeddings
        {
            return Err(f.err(
                "sliding_window",
                format!(
                    "{window} tokens, shorter than max_position_embeddings {max_position_embeddings}; \
                     charter's graph attends to the whole context"
                ),
            ));
        }
        if let Some(types) = f.get("layer_types") {
            let full = types
                .as_array()
                .is_some_and(|a| a.iter().all(|t| t == "full_attention"));
            if !full {
                return Err(f.err(
                    "layer_types",
                    "charter's graph has full attention in every layer",
                ));
            }
        }
        let hidden_size = f.usize("hidden_size")?;
        let num_attention_heads = f.usize("num_attention_heads")?;
        let head_dim = f
            .opt_usize("head_dim")?
            .filter(|&d| d != hidden_size / num_attention_heads.max(1));
        let config = ModelConfig {
            model_type: model_type.to_string(),
            vocab_size: f.usize("vocab_size")?,
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            num_hidden_layers: f.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: f
                .opt_usize("num_key_value_heads")?
                .unwrap_or(num_attention_heads),
            head_dim,
            rms_norm_eps: f.f64_or("rms_norm_eps", 1e-6)?,
            rope_theta,
            max_position_embeddings,
            tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
            bos_token_id: f.token_id("bos_token_id")?,
            eos_token_id: f.token_id("eos_token_id")?,
        };
        config
            .validate()
            .map_err(|e| Error::Unsupported(format!("{}: {e}", path.display())))?;
        Ok(config)
    }

    /// Checks the dimensions are consistent.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Unsupported(format!("model config: {what}")));
        if self.num_attention_heads == 0 || self.num_key_value_heads == 0 {
            return bad("zero attention heads".into());
        }
        if self.max_position_embeddings < 2 {
            return bad(format!(
                "a context window of {} tokens (GGUF `context_length`, HuggingFace \
                 `max_position_embeddings`) cannot hold a prompt and an answer",
                self.max_position_embeddings
            ));
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

/// Typed access to the fields of a HuggingFace JSON config, with errors that
/// name the file and the field. A `null` field counts as absent.
struct HfFields<'a> {
    path: &'a Path,
    map: &'a serde_json::Map<String, serde_json::Value>,
}

impl HfFields<'_> {
    fn err(&self, field: &str, problem: impl Into<String>) -> Error {
        Error::config(self.path, field, problem)
    }

    fn get(&self, field: &str) -> Option<&serde_json::Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    /// The field's JSON text, for messages.
    fn show(&self, field: &str) -> String {
        self.get(field)
            .map_or("null".to_string(), |v| v.to_string())
    }

    fn str(&self, field: &str) -> Result<&str> {
        match self.get(field) {
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.err(field, format!("expected a string, found {v}"))),
            None => Err(self.err(field, "missing")),
        }
    }

    fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        let Some(v) = self.get(field) else {
            return Ok(None);
        };
        v.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| self.err(field, format!("expected a non-negative integer, found {v}")))
    }

    fn usize(&self, field: &str) -> Result<usize> {
        self.opt_usize(field)?
            .ok_or_else(|| self.err(field, "missing"))
    }

    fn f64_or(&self, field: &str, default: f64) -> Result<f64> {
        match self.get(field) {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(field, format!("expected a number, found {v}"))),
            None => Ok(default),
        }
    }

    fn bool_or(&self, field: &str, default: bool) -> Result<bool> {
        match self.get(field) {
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(field, format!("expected a boolean, found {v}"))),
            None => Ok(default),
        }
    }

    /// A token id: an integer, or a list of them (the first is kept).
    fn token_id(&self, field: &str) -> Result<Option<u32>> {
        let Some(v) = self.get(field) else {
            return Ok(None);
        };
        let first = match v {
            serde_json::Value::Array(list) => match list.first() {
                Some(first) => first,
                None => return Ok(None),
            },
            other => other,
        };
        first
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                self.err(
                    field,
                    format!("expected a token id or a list of them, found {v}"),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// SmolLM2-135M-Instruct's `config.json`, trimmed to what charter reads.
    const LLAMA: &str = r#"{
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "attention_bias": false, "mlp_bias": false, "hidden_act": "silu",
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
        "rms_norm_eps": 1e-05, "rope_theta": 100000, "rope_scaling": null,
        "max_position_embeddings": 8192, "tie_word_embeddings": true,
        "vocab_size": 49152, "bos_token_id": 1, "eos_token_id": 2
    }"#;

    /// Qwen2.5-0.5B-Instruct's `config.json`, trimmed.
    const QWEN2: &str = r#"{
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
        "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "max_position_embeddings": 32768, "sliding_window": 32768,
        "use_sliding_window": false, "max_window_layers": 21, "tie_word_embeddings": true,
        "vocab_size": 151936, "bos_token_id": 151643, "eos_token_id": [151645, 151643]
    }"#;

    fn parse(json: &str) -> Result<ModelConfig> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        ModelConfig::from_hf_config(&path)
    }

    /// `base` with `field` set to the JSON `value`.
    fn with(base: &str, field: &str, value: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        v.to_string()
    }

    fn error(json: &str) -> String {
        parse(json).unwrap_err().to_string()
    }

    #[test]
    fn a_context_window_that_holds_nothing_is_refused() {
        for n in ["0", "1"] {
            let err = error(&with(LLAMA, "max_position_embeddings", n));
            assert!(
                err.contains(&format!("a context window of {n} tokens")),
                "{err}"
            );
        }
        assert!(parse(&with(LLAMA, "max_position_embeddings", "2")).is_ok());
    }

    #[test]
    fn reads_llama_and_qwen2_configs() {
        let c = parse(LLAMA).unwrap();
        assert_eq!(
            (
                c.hidden_size,
                c.num_key_value_heads,
                c.head_dim,
                c.head_dim()
            ),
            (576, 3, None, 64)
        );
        assert_eq!((c.rope_theta, c.rms_norm_eps), (100_000.0, 1e-5));
        assert_eq!((c.bos_token_id, c.eos_token_id), (Some(1), Some(2)));
        assert!(c.tie_word_embeddings);

        let c = parse(QWEN2).unwrap();
        assert_eq!(c.model_type, "qwen2");
        assert_eq!(c.eos_token_id, Some(151_645), "the first of the list");
        assert_eq!(c.max_position_embeddings, 32768);

        let mut v: serde_json::Value = serde_json::from_str(LLAMA).unwrap();
        let o = v.as_object_mut().unwrap();
        for k in [
            "num_key_value_heads",
            "rope_theta",
            "tie_word_embeddings",
            "head_dim",
        ] {
            o.remove(k);
        }
        let c = parse(&v.to_string()).unwrap();
        assert_eq!(c.num_key_value_heads, 9);
        assert_eq!(c.rope_theta, 10_000.0);
        assert!(!c.tie_word_embeddings);
        let c = parse(&with(LLAMA, "rope_scaling", r#"{"rope_type": "default"}"#)).unwrap();
        assert_eq!(c.rope_theta, 100_000.0);
        let c = parse(&with(
            LLAMA,
            "rope_parameters",
            r#"{"rope_type": "default", "rope_theta": 500000.0}"#,
        ))
        .unwrap();
        assert_eq!(c.rope_theta, 500_000.0);
        let c = parse(&with(LLAMA, "head_dim", "32")).unwrap();
        assert_eq!(c.head_dim, Some(32));
        // Mistral with the window off, or as long as the context.
        let mistral = with(
            &with(LLAMA, "model_type", r#""mistral""#),
            "architectures",
            r#"["MistralForCausalLM"]"#,
        );
        parse(&with(&mistral, "sliding_window", "null")).unwrap();
        parse(&with(&mistral, "sliding_window", "8192")).unwrap();
    }

    #[test]
    fn unsupported_features_name_the_file_and_the_field() {
        let cases = [
            (
                with(LLAMA, "model_type", r#""gemma""#),
                "`model_type`: `gemma`",
            ),
            (
                with(
                    LLAMA,
                    "architectures",
                    r#"["LlamaForSequenceClassification"]"#,
                ),
                "`architectures`",
            ),
            (
                with(
                    LLAMA,
                    "rope_scaling",
                    r#"{"rope_type": "llama3", "factor": 8.0}"#,
                ),
                "`rope_scaling`: {",
            ),
            (
                with(
                    LLAMA,
                    "rope_scaling",
                    r#"{"type": "linear", "factor": 2.0}"#,
                ),
                "`rope_scaling`",
            ),
            (
                with(LLAMA, "attention_bias", "true"),
                "`attention_bias`: true",
            ),
            (with(LLAMA, "mlp_bias", "true"), "`mlp_bias`: true"),
            (
                with(LLAMA, "hidden_act", r#""gelu""#),
                "`hidden_act`: \"gelu\"",
            ),
            (
                with(
                    &with(QWEN2, "use_sliding_window", "true"),
                    "sliding_window",
                    "4096",
                ),
                "`sliding_window`: 4096 tokens",
            ),
            (
                with(
                    QWEN2,
                    "layer_types",
                    r#"["full_attention", "sliding_attention"]"#,
                ),
                "`layer_types`",
            ),
            (
                with(LLAMA, "quantization_config", r#"{"quant_method": "gptq"}"#),
                "`quantization_config`",
            ),
            (
                with(LLAMA, "hidden_size", r#""576""#),
                "`hidden_size`: expected a non-negative integer",
            ),
            (with(LLAMA, "vocab_size", "null"), "`vocab_size`: missing"),
            (with(LLAMA, "eos_token_id", r#""</s>""#), "`eos_token_id`"),
        ];
        for (json, want) in cases {
            let err = error(&json);
            assert!(
                err.contains("config.json: ") && err.contains(want),
                "{want}: {err}"
            );
        }
        // A mistral window shorter than the context slides.
        let mistral = with(
            &with(QWEN2, "model_type", r#""mistral""#),
            "architectures",
            r#"["MistralForCausalLM"]"#,
        );
        let err = error(&with(&mistral, "sliding_window", "4096"));
        assert!(err.contains("`sliding_window`: 4096 tokens"), "{err}");
        // qwen2 with `use_sliding_window: false` does not slide, whatever the window.
        parse(&with(QWEN2, "sliding_window", "4096")).unwrap();
    }
}
