//! charter's ONNX export of llama-family decoders (llama, mistral, qwen2).
//!
//! The graph follows the input/output names of the common exporters so an
//! ONNX decoder exported elsewhere drops in:
//!
//! | name | type | shape |
//! |---|---|---|
//! | `input_ids` | int64 | `[batch, sequence]` |
//! | `attention_mask` | int64 | `[batch, past + sequence]`, 1 = attend, 0 = padding |
//! | `position_ids` | int64 | `[batch, sequence]` |
//! | `past_key_values.N.key` / `.value` | f32 | `[batch, kv_heads, past, head_dim]` |
//! | `logits` | f32 | `[batch, sequence, vocab]` |
//! | `present.N.key` / `.value` | f32 | `[batch, kv_heads, past + sequence, head_dim]` |
//!
//! Attention is written with standard ops and an additive mask built once
//! from `attention_mask` and the causal order, so any padding (left or
//! right) and any mix of past lengths works. Rotary embedding uses the
//! `com.microsoft` `RotaryEmbedding` op in its interleaved form, which is
//! what GGUF's permuted Q/K weights need (DESIGN.md §5); HF-layout weights
//! are permuted into that form on import.
//!
//! Weights: `W` of a linear layer is `[out, in]` as stored; the graph
//! multiplies by its transpose, written at export time.

use std::path::Path;

use super::builder::{Attr, Dim, GraphBuilder};
use super::proto::data_type;
use crate::config::ModelConfig;
use crate::error::Result;

/// Where the exporter gets weights: dequantised f32 tensors by GGUF-style name
/// (`token_embd.weight`, `blk.N.attn_q.weight`, …), shape outermost first.
pub trait WeightSource {
    /// The tensor named `name` as (shape, values), or `None` if absent.
    fn f32_tensor(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>>;
}

/// How the exporter stores the weights of linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// f32 weights and `MatMul`: reproduces an f32 reference.
    F32,
    /// `bits`-bit weights (4 or 8) with `com.microsoft` `MatMulNBits`
    /// (blocks of 32, f32 scales, packed integer zero points).
    /// `accuracy_level` 0 computes in f32; 4 lets ONNX Runtime quantise
    /// activations to int8 for speed.
    Blocks {
        /// Bits per weight: 4 or 8.
        bits: usize,
        /// `MatMulNBits`' `accuracy_level` attribute.
        accuracy_level: i64,
    },
}

/// Writes an f32 `model.onnx` and `model.onnx.data` for `config` into `dir`.
pub fn export_f32(config: &ModelConfig, weights: &dyn WeightSource, dir: &Path) -> Result<()> {
    export(config, weights, dir, WeightFormat::F32)
}

/// Writes `model.onnx` and `model.onnx.data` for `config` into `dir`, with
/// linear layers stored as `format` says (embeddings, norms and the LM head
/// stay f32).
pub fn export(
    config: &ModelConfig,
    weights: &dyn WeightSource,
    dir: &Path,
    format: WeightFormat,
) -> Result<()> {
    let c = config;
    let head_dim = c.head_dim();
    let (nh, kvh) = (c.num_attention_heads as i64, c.num_key_value_heads as i64);
    let hidden = c.hidden_size as i64;
    let mut g = GraphBuilder::new(&dir.join("model.onnx.data"))?;

    let batch = Dim::Named("batch");
    let seq = Dim::Named("sequence");
    g.input("input_ids", data_type::INT64, &[batch.clone(), seq.clone()]);
    g.input(
        "attention_mask",
        data_type::INT64,
        &[batch.clone(), Dim::Named("total_sequence")],
    );
    g.input(
        "position_ids",
        data_type::INT64,
        &[batch.clone(), seq.clone()],
    );
    let kv_dims = |len: &'static str| {
        [
            Dim::Named("batch"),
            Dim::Fixed(kvh),
            Dim::Named(len),
            Dim::Fixed(head_dim as i64),
        ]
    };
    for l in 0..c.num_hidden_layers {
        g.input(
            &format!("past_key_values.{l}.key"),
            data_type::FLOAT,
            &kv_dims("past_sequence"),
        );
        g.input(
            &format!("past_key_values.{l}.value"),
            data_type::FLOAT,
            &kv_dims("past_sequence"),
        );
    }
    g.output(
        "logits",
        data_type::FLOAT,
        &[batch, seq, Dim::Fixed(c.vocab_size as i64)],
    );
    for l in 0..c.num_hidden_layers {
        g.output(
            &format!("present.{l}.key"),
            data_type::FLOAT,
            &kv_dims("total_sequence"),
        );
        g.output(
            &format!("present.{l}.value"),
            data_type::FLOAT,
            &kv_dims("total_sequence"),
        );
    }

    let get = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
        weights
            .f32_tensor(name)?
            .ok_or_else(|| crate::Error::Export(format!("the model has no tensor `{name}`")))
    };
    // x · Wᵀ for a linear layer whose weight W is [out, in].
    let linear = |g: &mut GraphBuilder, x: &str, name: &str| -> Result<String> {
        let (shape, w) = get(name)?;
        let (out, inp) = (shape[0], shape[1]);
        match format {
            WeightFormat::F32 => {
                let mut t = vec![0f32; w.len()];
                for o in 0..out {
                    for i in 0..inp {
                        t[i * out + o] = w[o * inp + i];
                    }
                }
                let wt = g.weight_f32(name, &[inp, out], &t)?;
                Ok(g.node("MatMul", &[x, &wt], vec![]))
            }
            WeightFormat::Blocks {
                bits,
                accuracy_level,
            } => {
                use super::int4::{BLOCK, quantize, zero_point_cols};
                let q = quantize(&w, out, inp, bits)
                    .map_err(|e| crate::Error::Export(format!("{name}: {e}")))?;
                let blocks = inp / BLOCK;
                let b = g.weight(
                    &format!("{name}.q"),
                    &[out, blocks, BLOCK * bits / 8],
                    data_type::UINT8,
                    &q.packed,
                )?;
                let scales: Vec<u8> = q.scales.iter().flat_map(|v| v.to_le_bytes()).collect();
                let sc = g.weight(
                    &format!("{name}.scales"),
                    &[out * blocks],
                    data_type::FLOAT,
                    &scales,
                )?;
                let zp = g.weight(
                    &format!("{name}.zero_points"),
                    &[out * zero_point_cols(blocks, bits)],
                    data_type::UINT8,
                    &q.zero_points,
                )?;
                Ok(g.contrib(
                    "MatMulNBits",
                    &[x, &b, &sc, &zp],
                    vec![
                        ("K", Attr::Int(inp as i64)),
                        ("N", Attr::Int(out as i64)),
                        ("bits", Attr::Int(bits as i64)),
                        ("block_size", Attr::Int(BLOCK as i64)),
                        ("accuracy_level", Attr::Int(accuracy_level)),
                    ],
                ))
            }
        }
    };
    let vector = |g: &mut GraphBuilder, name: &str| -> Result<String> {
        let (shape, w) = get(name)?;
        g.weight_f32(name, &shape, &w)
    };

    // Embedding, shared with the LM head when tied.
    let (embed_shape, embed) = get("token_embd.weight")?;
    let embed = g.weight_f32("token_embd.weight", &embed_shape, &embed)?;
    let mut x = g.node(
        "Gather",
        &[&embed, "input_ids"],
        vec![("axis", Attr::Int(0))],
    );

    // Rotary caches: cos/sin of position × inverse frequency, angles in f64.
    let half = head_dim / 2;
    let positions = c.max_position_embeddings;
    let (mut cos, mut sin) = (
        Vec::with_capacity(positions * half),
        Vec::with_capacity(positions * half),
    );
    for p in 0..positions {
        for i in 0..half {
            let inv = c.rope_theta.powf(-(2.0 * i as f64) / head_dim as f64);
            let angle = p as f64 * inv;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    let cos = g.weight_f32("rotary.cos_cache", &[positions, half], &cos)?;
    let sin = g.weight_f32("rotary.sin_cache", &[positions, half], &sin)?;

    // Additive attention bias [batch, 1, sequence, total]: 0 where a query may
    // attend, a large negative number where the key is padding or in its future.
    let bias = {
        let zero = g.const_i64(&[0], false);
        let one = g.const_i64(&[1], false);
        let one_s = g.const_i64(&[1], true);
        let ids_shape = g.node("Shape", &["input_ids"], vec![]);
        let s_len = g.node(
            "Gather",
            &[&ids_shape, &one_s],
            vec![("axis", Attr::Int(0))],
        );
        let mask_shape = g.node("Shape", &["attention_mask"], vec![]);
        let t_len = g.node(
            "Gather",
            &[&mask_shape, &one_s],
            vec![("axis", Attr::Int(0))],
        );
        let zero_s = g.const_i64(&[0], true);
        let keys = g.node("Range", &[&zero_s, &t_len, &one_s], vec![]); // [T]
        let past = g.node("Sub", &[&t_len, &s_len], vec![]);
        let queries = g.node("Range", &[&past, &t_len, &one_s], vec![]); // [S]
        let q_col = g.node("Unsqueeze", &[&queries, &one], vec![]); // [S, 1]
        let k_row = g.node("Unsqueeze", &[&keys, &zero], vec![]); // [1, T]
        let future = g.node("Greater", &[&k_row, &q_col], vec![]); // [S, T]
        let axes_b = g.const_i64(&[1, 2], false);
        let pad = g.node("Equal", &["attention_mask", &zero_s], vec![]); // [B, T]
        let pad = g.node("Unsqueeze", &[&pad, &axes_b], vec![]); // [B, 1, 1, T]
        let blocked = g.node("Or", &[&pad, &future], vec![]); // [B, 1, S, T]
        let neg = g.const_f32(-1e9);
        let zf = g.const_f32(0.0);
        g.node("Where", &[&blocked, &neg, &zf], vec![])
    };

    let scale = g.const_f32(1.0 / (head_dim as f32).sqrt());
    let eps = c.rms_norm_eps as f32;
    let shape_q = g.const_i64(&[0, 0, nh, head_dim as i64], false);
    let shape_kv = g.const_i64(&[0, 0, kvh, head_dim as i64], false);
    let group = g.const_i64(&[0, kvh, -1, head_dim as i64], false);
    let ungroup_scores = g.const_i64(&[0, nh, -1, 0], false);
    let group_scores = g.const_i64(&[0, kvh, -1, 0], false);
    let ungroup = g.const_i64(&[0, nh, -1, head_dim as i64], false);
    let merge = g.const_i64(&[0, 0, hidden], false);

    for l in 0..c.num_hidden_layers {
        let p = format!("blk.{l}");
        let norm_w = vector(&mut g, &format!("{p}.attn_norm.weight"))?;
        let h = g.node(
            "SimplifiedLayerNormalization",
            &[&x, &norm_w],
            vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps))],
        );
        let mut q = linear(&mut g, &h, &format!("{p}.attn_q.weight"))?;
        let mut k = linear(&mut g, &h, &format!("{p}.attn_k.weight"))?;
        let mut v = linear(&mut g, &h, &format!("{p}.attn_v.weight"))?;
        for (t, bias_name) in [
            (&mut q, "attn_q.bias"),
            (&mut k, "attn_k.bias"),
            (&mut v, "attn_v.bias"),
        ] {
            if let Some((shape, b)) = weights.f32_tensor(&format!("{p}.{bias_name}"))? {
                let b = g.weight_f32(&format!("{p}.{bias_name}"), &shape, &b)?;
                *t = g.node("Add", &[t, &b], vec![]);
            }
        }
        // [B, S, heads·hd] → rotary → [B, heads, S, hd]
        let q = g.contrib(
            "RotaryEmbedding",
            &[&q, "position_ids", &cos, &sin],
            vec![("interleaved", Attr::Int(1))],
        );
        let k = g.contrib(
            "RotaryEmbedding",
            &[&k, "position_ids", &cos, &sin],
            vec![("interleaved", Attr::Int(1))],
        );
        let q = g.node("Reshape", &[&q, &shape_q], vec![]);
        let q = g.node(
            "Transpose",
            &[&q],
            vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let q = g.node("Mul", &[&q, &scale], vec![]);
        let k = g.node("Reshape", &[&k, &shape_kv], vec![]);
        let k = g.node(
            "Transpose",
            &[&k],
            vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let v = g.node("Reshape", &[&v, &shape_kv], vec![]);
        let v = g.node(
            "Transpose",
            &[&v],
            vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let present_k = format!("present.{l}.key");
        let present_v = format!("present.{l}.value");
        g.node_into(
            "Concat",
            "",
            &[&format!("past_key_values.{l}.key"), &k],
            &[&present_k],
            vec![("axis", Attr::Int(2))],
        );
        g.node_into(
            "Concat",
            "",
            &[&format!("past_key_values.{l}.value"), &v],
            &[&present_v],
            vec![("axis", Attr::Int(2))],
        );
        // Grouped-query attention without repeating K/V: query heads that share a
        // KV head are stacked along the sequence axis, [B, kv_heads, rep·S, hd].
        let qg = g.node("Reshape", &[&q, &group], vec![]);
        let kt = g.node(
            "Transpose",
            &[&present_k],
            vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))],
        );
        let scores = g.node("MatMul", &[&qg, &kt], vec![]); // [B, kvh, rep·S, T]
        let scores = g.node("Reshape", &[&scores, &ungroup_scores], vec![]); // [B, nh, S, T]
        let scores = g.node("Add", &[&scores, &bias], vec![]);
        let probs = g.node("Softmax", &[&scores], vec![("axis", Attr::Int(-1))]);
        let probs = g.node("Reshape", &[&probs, &group_scores], vec![]);
        let ctx = g.node("MatMul", &[&probs, &present_v], vec![]); // [B, kvh, rep·S, hd]
        let ctx = g.node("Reshape", &[&ctx, &ungroup], vec![]); // [B, nh, S, hd]
        let ctx = g.node(
            "Transpose",
            &[&ctx],
            vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let ctx = g.node("Reshape", &[&ctx, &merge], vec![]);
        let attn = linear(&mut g, &ctx, &format!("{p}.attn_output.weight"))?;
        x = g.node("Add", &[&x, &attn], vec![]);

        let norm_w = vector(&mut g, &format!("{p}.ffn_norm.weight"))?;
        let h = g.node(
            "SimplifiedLayerNormalization",
            &[&x, &norm_w],
            vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps))],
        );
        let gate = linear(&mut g, &h, &format!("{p}.ffn_gate.weight"))?;
        let up = linear(&mut g, &h, &format!("{p}.ffn_up.weight"))?;
        let sig = g.node("Sigmoid", &[&gate], vec![]);
        let silu = g.node("Mul", &[&gate, &sig], vec![]);
        let act = g.node("Mul", &[&silu, &up], vec![]);
        let down = linear(&mut g, &act, &format!("{p}.ffn_down.weight"))?;
        x = g.node("Add", &[&x, &down], vec![]);
    }

    let norm_w = vector(&mut g, "output_norm.weight")?;
    let h = g.node(
        "SimplifiedLayerNormalization",
        &[&x, &norm_w],
        vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps))],
    );
    // LM head: Gemm with transB reads the [vocab, hidden] matrix as stored, so
    // a tied head shares the embedding's weights.
    let head = match weights.f32_tensor("output.weight")? {
        Some((shape, w)) => g.weight_f32("output.weight", &shape, &w)?,
        None => embed.clone(),
    };
    let flat_shape = g.const_i64(&[-1, hidden], false);
    let flat = g.node("Reshape", &[&h, &flat_shape], vec![]);
    let logits = g.node("Gemm", &[&flat, &head], vec![("transB", Attr::Int(1))]);
    let ids_shape = g.node("Shape", &["input_ids"], vec![]);
    let vocab = g.const_i64(&[c.vocab_size as i64], false);
    let out_shape = g.node(
        "Concat",
        &[&ids_shape, &vocab],
        vec![("axis", Attr::Int(0))],
    );
    g.node_into("Reshape", "", &[&logits, &out_shape], &["logits"], vec![]);

    g.finish(
        &dir.join("model.onnx"),
        &[("", 21), ("com.microsoft", 1)],
        &[("charter.export", "f32".to_string())],
    )
}
