//! HuggingFace checkpoints of llama-family decoders (llama, mistral, qwen2):
//! tensor names, the row order of the Q and K projections, and
//! `tokenizer_config.json`.
//!
//! Weights travel inside charter under GGUF's names (`blk.N.attn_q.weight`,
//! the names [`WeightSource`] uses); [`hf_name`] maps them to HuggingFace's
//! (`model.layers.N.self_attn.q_proj.weight`).
//!
//! # Q and K row order
//!
//! HuggingFace's llama applies rotary embedding in "rotate-half" form:
//! dimension `j` of a head turns together with dimension `j + head_dim/2`.
//! charter's graph, like llama.cpp, turns dimensions `2j` and `2j + 1`
//! together (DESIGN.md §5), and llama.cpp's converter reorders each head's
//! Q and K rows so that both compute the same attention
//! (`permute` in llama.cpp's `convert_hf_to_gguf.py`):
//!
//! ```text
//! gguf row 2j     = hf row j
//! gguf row 2j + 1 = hf row j + head_dim/2      for j in 0..head_dim/2, in each head
//! ```
//!
//! Importing HF weights applies this order ([`interleave_rows`]);
//! `model.safetensors`, written in HF's layout, undoes it
//! ([`rotate_half_rows`]). Q/K biases are reordered with their rows. V and
//! the output projection are not reordered: the attention scores are dot
//! products, unchanged when Q and K share a permutation.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::onnx::WeightSource;
use crate::tokenizer_config::TokenizerConfig;
use crate::weights::{SafetensorsFile, SafetensorsWriter, Tensors};

/// HuggingFace's name for the tensor charter names `gguf` (GGUF style).
pub(crate) fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let (layer, part) = gguf.strip_prefix("blk.")?.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Whether a tensor must exist in every checkpoint of the architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presence {
    /// Always there.
    Required,
    /// Q/K/V biases: qwen2 has them, llama and mistral do not.
    Optional,
}

/// Every tensor of a decoder with `config`, by GGUF-style name, with its
/// shape and whether it must exist, in the order of the forward pass.
/// `output.weight` is listed only when the LM head is not tied.
pub(crate) fn tensors(config: &ModelConfig) -> Vec<(String, Vec<usize>, Presence)> {
    let c = config;
    let (h, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
    let (q, kv) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
    let req = Presence::Required;
    let mut out = vec![("token_embd.weight".to_string(), vec![c.vocab_size, h], req)];
    for l in 0..c.num_hidden_layers {
        let parts = [
            ("attn_norm.weight", vec![h], req),
            ("attn_q.weight", vec![q, h], req),
            ("attn_q.bias", vec![q], Presence::Optional),
            ("attn_k.weight", vec![kv, h], req),
            ("attn_k.bias", vec![kv], Presence::Optional),
            ("attn_v.weight", vec![kv, h], req),
            ("attn_v.bias", vec![kv], Presence::Optional),
            ("attn_output.weight", vec![h, q], req),
            ("ffn_norm.weight", vec![h], req),
            ("ffn_gate.weight", vec![f, h], req),
            ("ffn_up.weight", vec![f, h], req),
            ("ffn_down.weight", vec![h, f], req),
        ];
        out.extend(
            parts
                .into_iter()
                .map(|(p, shape, presence)| (format!("blk.{l}.{p}"), shape, presence)),
        );
    }
    out.push(("output_norm.weight".to_string(), vec![h], req));
    if !c.tie_word_embeddings {
        out.push(("output.weight".to_string(), vec![c.vocab_size, h], req));
    }
    out
}

/// Whether the tensor is a Q or K projection (weight or bias), whose rows
/// are in a different order in HF and GGUF layout.
fn is_rotary(gguf: &str) -> bool {
    [
        ".attn_q.weight",
        ".attn_k.weight",
        ".attn_q.bias",
        ".attn_k.bias",
    ]
    .iter()
    .any(|s| gguf.ends_with(s))
}

/// Reorders the rows of a Q or K projection from HF's rotate-half order to
/// GGUF's interleaved order (see the module doc). `values` holds rows of
/// `row_len` values (a weight `[heads·head_dim, in]` or a bias, `row_len` 1).
pub(crate) fn interleave_rows(values: &[f32], head_dim: usize, row_len: usize) -> Vec<f32> {
    permute_rows(values, head_dim, row_len, |a, j, half| {
        (a * half + j, 2 * j + a)
    })
}

/// The inverse of [`interleave_rows`]: GGUF's interleaved order back to HF's.
pub(crate) fn rotate_half_rows(values: &[f32], head_dim: usize, row_len: usize) -> Vec<f32> {
    permute_rows(values, head_dim, row_len, |a, j, half| {
        (2 * j + a, a * half + j)
    })
}

/// Moves, in each head, row `from` to row `to` for `(from, to) = map(a, j, half)`
/// over `a` in 0..2 and `j` in 0..half.
fn permute_rows(
    values: &[f32],
    head_dim: usize,
    row_len: usize,
    map: impl Fn(usize, usize, usize) -> (usize, usize),
) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0f32; values.len()];
    for (head_in, head_out) in values
        .chunks_exact(head_dim * row_len)
        .zip(out.chunks_exact_mut(head_dim * row_len))
    {
        for a in 0..2 {
            for j in 0..half {
                let (from, to) = map(a, j, half);
                head_out[to * row_len..(to + 1) * row_len]
                    .copy_from_slice(&head_in[from * row_len..(from + 1) * row_len]);
            }
        }
    }
    out
}

/// The `*.safetensors` files of a checkpoint directory, sorted by name.
pub(crate) fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "safetensors") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// A HuggingFace checkpoint directory (`model.safetensors`, or the shards
/// `model-0000N-of-0000M.safetensors`), served to the exporter in GGUF
/// names and layout.
///
/// Every `*.safetensors` file in the directory is read, so the shard index
/// (`model.safetensors.index.json`) is not needed; a tensor in two files is
/// an error. Opening checks every tensor the architecture needs against the
/// config's shapes, and refuses tensors charter would not use (an output
/// projection bias, say), which would otherwise be dropped silently.
#[derive(Debug)]
pub struct HfCheckpoint {
    config: ModelConfig,
    files: Vec<SafetensorsFile>,
    /// HF tensor name → index into `files`.
    index: BTreeMap<String, usize>,
}

impl HfCheckpoint {
    /// Opens the checkpoint in `dir` for a decoder with `config` (from the
    /// directory's `config.json`, [`ModelConfig::from_hf_config`]).
    pub fn open(dir: &Path, config: &ModelConfig) -> Result<Self> {
        let paths = safetensors_files(dir)?;
        if paths.is_empty() {
            return Err(Error::Unsupported(format!(
                "{}: no *.safetensors files: charter imports HuggingFace checkpoints in safetensors format",
                dir.display()
            )));
        }
        let mut files = Vec::with_capacity(paths.len());
        let mut index = BTreeMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = SafetensorsFile::open(path)?;
            for name in file.names() {
                if let Some(&other) = index.get(&name) {
                    let first: &SafetensorsFile = &files[other];
                    return Err(Error::tensor(
                        path,
                        &name,
                        format!("also in {}", first.path().display()),
                    ));
                }
                index.insert(name, i);
            }
            files.push(file);
        }
        let checkpoint = HfCheckpoint {
            config: config.clone(),
            files,
            index,
        };
        checkpoint.check(dir)?;
        Ok(checkpoint)
    }

    /// Checks names and shapes against the config.
    fn check(&self, dir: &Path) -> Result<()> {
        let mut used = BTreeSet::new();
        for (gguf, shape, presence) in tensors(&self.config) {
            let Some(hf) = hf_name(&gguf) else { continue };
            let Some(&file) = self.index.get(&hf) else {
                if presence == Presence::Required {
                    return Err(Error::MissingTensor {
                        path: dir.to_path_buf(),
                        tensor: hf,
                    });
                }
                continue;
            };
            let file = &self.files[file];
            let found = file.shape(&hf).unwrap_or_default();
            if found != shape {
                return Err(Error::tensor(
                    file.path(),
                    &hf,
                    format!("shape {found:?}, but config.json implies {shape:?}"),
                ));
            }
            used.insert(hf);
        }
        let tied_head = self.config.tie_word_embeddings.then_some("lm_head.weight");
        for (name, &file) in &self.index {
            // A tied checkpoint may still store the head; HF ignores it, and so does charter.
            let ignored =
                name.ends_with(".rotary_emb.inv_freq") || Some(name.as_str()) == tied_head;
            if !ignored && !used.contains(name) {
                return Err(Error::tensor(
                    self.files[file].path(),
                    name,
                    format!(
                        "not part of a {} decoder as charter builds it; importing would ignore it",
                        self.config.model_type
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// HF tensors under GGUF names, Q/K rows in GGUF's interleaved order.
impl WeightSource for HfCheckpoint {
    fn f32_tensor(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        if name == "output.weight" && self.config.tie_word_embeddings {
            // The exporter reuses the embedding.
            return Ok(None);
        }
        let Some(hf) = hf_name(name) else {
            return Ok(None);
        };
        let Some(&file) = self.index.get(&hf) else {
            return Ok(None);
        };
        let Some((shape, values)) = self.files[file].read_f32(&hf)? else {
            return Ok(None);
        };
        let values = match is_rotary(name) {
            true => interleave_rows(&values, self.config.head_dim(), row_len(&shape)),
            false => values,
        };
        Ok(Some((shape, values)))
    }
}

/// In-memory weights in HuggingFace's names and layout (a trainer's
/// output), served to the exporter in GGUF names and layout like
/// [`HfCheckpoint`].
#[derive(Debug)]
pub struct HfTensors<'a> {
    config: &'a ModelConfig,
    tensors: &'a Tensors,
}

impl<'a> HfTensors<'a> {
    /// Checks `tensors` against `config`: every required tensor present with
    /// the config's shape, and none the decoder would not use.
    pub fn new(config: &'a ModelConfig, tensors: &'a Tensors) -> Result<Self> {
        let mut used = BTreeSet::new();
        for (gguf, shape, presence) in crate::hf::tensors(config) {
            let Some(hf) = hf_name(&gguf) else { continue };
            match tensors.get(&hf) {
                Some((found, _)) if *found != shape => {
                    return Err(Error::Export(format!(
                        "tensor `{hf}` has shape {found:?}, the config implies {shape:?}"
                    )));
                }
                Some(_) => {
                    used.insert(hf);
                }
                None if presence == Presence::Required => {
                    return Err(Error::Export(format!("the weights have no tensor `{hf}`")));
                }
                None => {}
            }
        }
        if let Some(extra) = tensors.keys().find(|name| !used.contains(*name)) {
            return Err(Error::Export(format!(
                "tensor `{extra}` is not part of a {} decoder as charter builds it",
                config.model_type
            )));
        }
        Ok(HfTensors { config, tensors })
    }
}

impl WeightSource for HfTensors<'_> {
    fn f32_tensor(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        if name == "output.weight" && self.config.tie_word_embeddings {
            return Ok(None);
        }
        let Some((shape, values)) = hf_name(name).and_then(|hf| self.tensors.get(&hf)) else {
            return Ok(None);
        };
        let values = match is_rotary(name) {
            true => interleave_rows(values, self.config.head_dim(), row_len(shape)),
            false => values.clone(),
        };
        Ok(Some((shape.clone(), values)))
    }
}

/// Values per row of a weight `[out, in]` (1 for a bias).
fn row_len(shape: &[usize]) -> usize {
    shape.get(1..).map_or(1, |s| s.iter().product())
}

/// Writes `weights` as an f32 safetensors file at `path` in HuggingFace's
/// names and layout (Q/K rows in rotate-half order), with
/// `{"format": "pt"}` metadata so PyTorch's loaders accept it. A tied LM
/// head is not written, as HF's `save_pretrained` does not.
pub(crate) fn write_hf_safetensors(
    path: &Path,
    config: &ModelConfig,
    weights: &dyn WeightSource,
) -> Result<()> {
    let mut out = SafetensorsWriter::create(path)?;
    for (gguf, shape, presence) in tensors(config) {
        let Some(hf) = hf_name(&gguf) else { continue };
        let Some((found, values)) = weights.f32_tensor(&gguf)? else {
            if presence == Presence::Required {
                return Err(Error::Export(format!("the model has no tensor `{gguf}`")));
            }
            continue;
        };
        if found != shape {
            return Err(Error::Export(format!(
                "tensor `{gguf}` has shape {found:?}, the config implies {shape:?}"
            )));
        }
        let values = match is_rotary(&gguf) {
            true => rotate_half_rows(&values, config.head_dim(), row_len(&shape)),
            false => values,
        };
        out.push(&hf, &shape, &values)?;
    }
    out.finish(&[("format", "pt")])
}

/// A model directory's `tokenizer_config.json` from a HuggingFace one in `dir`.
///
/// - `chat_template` may be a string, or a list of `{name, template}` (the
///   one named `default` is taken); without one, `chat_template.jinja` in
///   the same directory is read, as recent `transformers` releases write it.
/// - `bos_token` and `eos_token` may be strings or `{"content": …}` objects.
/// - `model_max_length` is capped at the config's `max_position_embeddings`
///   (the graph has rotary angles for that many positions); tokenizers
///   without a limit store a huge placeholder (1e30) there.
pub(crate) fn tokenizer_config(dir: &Path, config: &ModelConfig) -> Result<TokenizerConfig> {
    let path = dir.join("tokenizer_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| Error::Unsupported(format!("{}: {e}", path.display())))?;
    let Some(map) = json.as_object() else {
        return Err(Error::Unsupported(format!(
            "{}: expected a JSON object",
            path.display()
        )));
    };
    let field = |f: &str| map.get(f).filter(|v| !v.is_null());
    let chat_template = match field("chat_template") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(list)) => named_template(&path, list, "default")?,
        Some(other) => {
            return Err(Error::config(
                &path,
                "chat_template",
                format!("expected a string or a list of {{name, template}}, found {other}"),
            ));
        }
        None => {
            let jinja = dir.join("chat_template.jinja");
            if !jinja.is_file() {
                return Err(Error::config(
                    &path,
                    "chat_template",
                    "missing (and no chat_template.jinja beside it): charter needs the model's \
                     chat template to render prompts",
                ));
            }
            std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?
        }
    };
    let token = |f: &str| -> Result<Option<String>> {
        match field(f) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Object(o)) => match o.get("content") {
                Some(Value::String(s)) => Ok(Some(s.clone())),
                _ => Err(Error::config(
                    &path,
                    f,
                    "an object without a string `content`",
                )),
            },
            Some(other) => Err(Error::config(
                &path,
                f,
                format!("expected a string or {{\"content\": …}}, found {other}"),
            )),
        }
    };
    let add_bos_token = match field("add_bos_token") {
        None => false,
        Some(v) => v.as_bool().ok_or_else(|| {
            Error::config(
                &path,
                "add_bos_token",
                format!("expected a boolean, found {v}"),
            )
        })?,
    };
    let limit = config.max_position_embeddings;
    let model_max_length = field("model_max_length")
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n > 0)
        .map_or(limit, |n| n.min(limit));
    Ok(TokenizerConfig {
        chat_template,
        bos_token: token("bos_token")?,
        eos_token: token("eos_token")?,
        add_bos_token,
        model_max_length,
    })
}

/// The template called `name` in a list of `{"name": …, "template": …}`.
fn named_template(path: &Path, list: &[Value], name: &str) -> Result<String> {
    let mut names = Vec::new();
    for item in list {
        let n = item.get("name").and_then(Value::as_str);
        let t = item.get("template").and_then(Value::as_str);
        match (n, t) {
            (Some(n), Some(t)) if n == name => return Ok(t.to_string()),
            (Some(n), Some(_)) => names.push(n.to_string()),
            _ => {
                return Err(Error::config(
                    path,
                    "chat_template",
                    format!("list entry {item} is not {{\"name\": …, \"template\": …}}"),
                ));
            }
        }
    }
    Err(Error::config(
        path,
        "chat_template",
        format!("no template named `{name}` among {names:?}"),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn interleaving_follows_llama_cpp_and_round_trips() {
        // Two heads of size 4, rows of 1: row r holds r.
        let hf: Vec<f32> = (0..8).map(|r| r as f32).collect();
        let gguf = interleave_rows(&hf, 4, 1);
        // gguf row 2j = hf row j, gguf row 2j+1 = hf row j + 2, per head.
        assert_eq!(gguf, [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        assert_eq!(rotate_half_rows(&gguf, 4, 1), hf);

        // llama.cpp's `w.reshape(heads, 2, hd/2, in).swapaxes(1, 2)` with
        // head size 8 and rows of 3, written out index by index.
        let (heads, hd, cols) = (3, 8, 3);
        let hf: Vec<f32> = (0..heads * hd * cols).map(|v| v as f32).collect();
        let mut want = vec![0f32; hf.len()];
        for h in 0..heads {
            for a in 0..2 {
                for j in 0..hd / 2 {
                    for c in 0..cols {
                        want[((h * hd) + j * 2 + a) * cols + c] =
                            hf[((h * hd) + a * hd / 2 + j) * cols + c];
                    }
                }
            }
        }
        let gguf = interleave_rows(&hf, hd, cols);
        assert_eq!(gguf, want);
        assert_eq!(rotate_half_rows(&gguf, hd, cols), hf);
        assert_ne!(interleave_rows(&gguf, hd, cols), hf, "not an involution");
    }

    #[test]
    fn names_map_both_ways_for_every_tensor() {
        let mut config = crate::tiny::tiny_config(10);
        config.tie_word_embeddings = false;
        let names: Vec<String> = tensors(&config)
            .into_iter()
            .map(|(g, _, _)| hf_name(&g).unwrap())
            .collect();
        assert_eq!(names.len(), 1 + 2 * 12 + 2);
        assert!(names.contains(&"model.layers.1.self_attn.k_proj.bias".to_string()));
        assert!(names.contains(&"model.layers.0.post_attention_layernorm.weight".to_string()));
        assert_eq!(names.last().unwrap(), "lm_head.weight");
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_name("blk.0.attn_qkv.weight"), None);
    }

    fn write(dir: &Path, json: &str) {
        std::fs::write(dir.join("tokenizer_config.json"), json).unwrap();
    }

    #[test]
    fn tokenizer_configs_in_their_several_spellings() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::tiny::tiny_config(10); // context 4,096
        write(
            dir.path(),
            r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}],
                "bos_token": {"content": "<s>", "lstrip": false, "__type": "AddedToken"},
                "eos_token": "</s>", "add_bos_token": true,
                "model_max_length": 1000000000000000019884624838656}"#,
        );
        let t = tokenizer_config(dir.path(), &config).unwrap();
        assert_eq!(t.chat_template, "D");
        assert_eq!(t.bos_token.as_deref(), Some("<s>"));
        assert_eq!(t.eos_token.as_deref(), Some("</s>"));
        assert!(t.add_bos_token);
        assert_eq!(t.model_max_length, 4096);

        write(
            dir.path(),
            r#"{"chat_template": "S", "bos_token": null, "model_max_length": 128}"#,
        );
        let t = tokenizer_config(dir.path(), &config).unwrap();
        assert_eq!(
            (t.chat_template.as_str(), t.bos_token, t.eos_token),
            ("S", None, None)
        );
        assert_eq!(t.model_max_length, 128);

        write(dir.path(), r#"{"eos_token": "</s>"}"#);
        let err = tokenizer_config(dir.path(), &config)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tokenizer_config.json: `chat_template`: missing"),
            "{err}"
        );
        std::fs::write(dir.path().join("chat_template.jinja"), "J").unwrap();
        let t = tokenizer_config(dir.path(), &config).unwrap();
        assert_eq!(t.chat_template, "J");

        write(
            dir.path(),
            r#"{"chat_template": [{"name": "rag", "template": "R"}]}"#,
        );
        let err = tokenizer_config(dir.path(), &config)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no template named `default` among [\"rag\"]"),
            "{err}"
        );
        write(dir.path(), r#"{"chat_template": "S", "eos_token": 2}"#);
        let err = tokenizer_config(dir.path(), &config)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`eos_token`: expected a string"), "{err}");
    }
}
