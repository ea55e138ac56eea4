//! A tiny random-weight model of the llama architecture, made by charter
//! itself, so tests exercise the real export and engine in seconds.

use crate::config::ModelConfig;
use crate::error::Result;
use crate::onnx::WeightSource;

/// The tiny model's architecture: 2 layers, hidden 64, 4 query / 2 KV heads,
/// over a vocabulary of `vocab_size` tokens.
pub fn tiny_config(vocab_size: usize) -> ModelConfig {
    ModelConfig {
        model_type: "llama".to_string(),
        vocab_size,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: None,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 4096,
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_id: None,
    }
}

/// Deterministic random weights for a config: each tensor's values come from
/// a stream seeded by the model seed and the tensor's name, so they do not
/// depend on the order tensors are asked for.
pub struct TinyWeights {
    config: ModelConfig,
    seed: u64,
}

impl TinyWeights {
    /// Random weights for `config` from `seed`.
    pub fn new(config: ModelConfig, seed: u64) -> Self {
        TinyWeights { config, seed }
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let c = &self.config;
        let (h, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
        let (q, kv) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        if name == "token_embd.weight" {
            return Some(vec![c.vocab_size, h]);
        }
        if name == "output_norm.weight" {
            return Some(vec![h]);
        }
        let rest = name.strip_prefix("blk.")?;
        let (layer, part) = rest.split_once('.')?;
        if layer.parse::<usize>().ok()? >= c.num_hidden_layers {
            return None;
        }
        Some(match part {
            "attn_norm.weight" | "ffn_norm.weight" => vec![h],
            "attn_q.weight" => vec![q, h],
            "attn_k.weight" | "attn_v.weight" => vec![kv, h],
            "attn_output.weight" => vec![h, q],
            "ffn_gate.weight" | "ffn_up.weight" => vec![f, h],
            "ffn_down.weight" => vec![h, f],
            _ => return None,
        })
    }
}

impl WeightSource for TinyWeights {
    fn f32_tensor(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        let Some(shape) = self.shape(name) else {
            return Ok(None);
        };
        let n: usize = shape.iter().product();
        let values = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else {
            // Uniform in ±sqrt(3/fan_in): unit variance after the matmul.
            let fan_in = *shape.last().unwrap_or(&1) as f64;
            let scale = (3.0 / fan_in).sqrt();
            let mut state = self.seed
                ^ u64::from_le_bytes(
                    blake3::hash(name.as_bytes()).as_bytes()[..8]
                        .try_into()
                        .unwrap_or_default(),
                );
            (0..n)
                .map(|_| {
                    state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let mut z = state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    z ^= z >> 31;
                    let u = (z >> 11) as f64 / (1u64 << 53) as f64;
                    ((2.0 * u - 1.0) * scale) as f32
                })
                .collect()
        };
        Ok(Some((shape, values)))
    }
}

/// Special tokens of the tiny model, after its 256 byte tokens.
pub const TINY_SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// The tiny model's chat template (ChatML).
pub const TINY_CHAT_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message['role'] }}\n\
{{ message['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// GPT-2's byte-to-character table for byte-level BPE: printable bytes map
/// to themselves, the rest to code points from 256 up, in byte order.
fn byte_chars() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut next = 256u32;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                let c = char::from_u32(next).unwrap_or('?');
                next += 1;
                c
            }
        })
        .collect()
}

/// A byte-level BPE `tokenizer.json` with the 256 byte tokens, no merges and
/// [`TINY_SPECIAL_TOKENS`]: every text encodes, byte by byte.
pub fn tiny_tokenizer_json() -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = byte_chars()
        .into_iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), serde_json::json!(i)))
        .collect();
    let added: Vec<serde_json::Value> = TINY_SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({
                "id": 256 + i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            })
        })
        .collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []
        }
    });
    serde_json::to_string_pretty(&json).unwrap_or_default()
}

/// Writes the tiny random-weight model directory at `out`, which may hold
/// nothing but the same model (see [`write_tiny_with`]).
pub fn write_tiny(out: &std::path::Path, seed: u64) -> Result<crate::model_dir::ModelDir> {
    write_tiny_with(out, seed, crate::model_dir::Replace::Nothing)
}

/// Writes the tiny random-weight model directory at `out`; the same model
/// already there is kept, another replaced only as `replace` allows.
pub fn write_tiny_with(
    out: &std::path::Path,
    seed: u64,
    replace: crate::model_dir::Replace,
) -> Result<crate::model_dir::ModelDir> {
    let mut config = tiny_config(256 + TINY_SPECIAL_TOKENS.len());
    config.eos_token_id = Some(258);
    let tokenizer_config = crate::tokenizer_config::TokenizerConfig {
        chat_template: TINY_CHAT_TEMPLATE.to_string(),
        bos_token: None,
        eos_token: Some("<|im_end|>".to_string()),
        add_bos_token: false,
        model_max_length: config.max_position_embeddings,
    };
    let weights = TinyWeights::new(config.clone(), seed);
    crate::model_dir::write_dir(
        out,
        &config,
        &tiny_tokenizer_json(),
        &tokenizer_config,
        &weights,
        crate::model_dir::Dtype::F32,
        "charter-tiny".to_string(),
        "random".to_string(),
        blake3::hash(format!("charter-tiny\0{seed}").as_bytes())
            .to_hex()
            .to_string(),
        replace,
    )
}
