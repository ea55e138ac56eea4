//! charter's ONNX export of llama-family decoders (llama, mistral, qwen2).
//!
//! The graph follows the input/output names of the common exporters, plus
//! one input that says which positions need logits:
//!
//! | name | type | shape |
//! |---|---|---|
//! | `input_ids` | int64 | `[batch, sequence]` |
//! | `attention_mask` | int64 | `[batch, total]`: row *b* has `past_b + new_b` leading ones, then zeros |
//! | `logit_positions` | int64 | `[batch, kept]`: indices into `sequence` whose logits are returned |
//! | `past_key_values.N.key` / `.value` | f32 | `[batch, kv_heads, past, head_dim]` |
//! | `logits` | f32 | `[batch, kept, vocab]` |
//! | `present.N.key` / `.value` | f32 | `[batch, kv_heads, max(past, total), head_dim]` |
//! | `hidden` | f32 | `[batch, sequence, hidden]`: the last layer's residual stream, before the final norm |
//!
//! Attention is the `com.microsoft` `GroupQueryAttention` op: rows are
//! right-padded and each has its own length (the mask's row sums), so a row
//! never attends to another row's padding and there is no position input —
//! the op derives positions from the lengths and applies the rotary
//! embedding itself, in the interleaved form GGUF's permuted Q/K weights
//! need (DESIGN.md §5; HF-layout weights are permuted on import). A run is
//! either a *prompt* (`sequence` equals `total`: no past, rows right-padded)
//! or a *decode step* (`sequence` = 1; row *b*'s new token goes to cache
//! position `past_b`). When `past_key_values.N.*` and `present.N.*` are bound
//! to the same buffer, the op writes the new position in place instead of
//! copying the cache: that is how the engine decodes.
//!
//! Only the positions in `logit_positions` go through the final norm and
//! the LM head: one per row while generating, all of them when scoring.
//! `hidden` is every position's last residual stream, what a linear probe
//! on the model's own states reads (a caller that does not bind it pays
//! nothing for it).
//!
//! Weights: `W` of a linear layer is `[out, in]` as stored; the graph
//! multiplies by its transpose, written at export time.

use std::path::Path;

use super::builder::{Attr, Dim, GraphBuilder};
use super::int4::{BLOCK, quantize, quantize_with_residual, zero_point_cols};
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
    /// (blocks of 32, f32 scales, integer zero points).
    Blocks {
        /// Bits per weight: 4 or 8.
        bits: usize,
        /// How each block's offset is stored.
        offsets: BlockOffsets,
        /// Which matmuls quantise their input to int8.
        activations: Activations,
        /// How the LM head is stored.
        head: Head,
    },
}

/// How a block format stores the LM head, the largest single matmul (at the
/// default model's size a fifth of the FLOPs per token, and at batch 1 half
/// the bytes a quantised decode step reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// f32 `Gemm`, sharing a tied embedding's weights.
    F32,
    /// 8-bit `MatMulNBits` with int8 activations. GGUF stores tied
    /// embeddings as Q8_0, which 8-bit blocks of 32 hold to within rounding.
    Int8,
}

/// How a block-quantised linear layer stores each block's offset (the value
/// code 0 stands for). GGUF Q4_1 blocks are `d · q + m` with a float `m`;
/// `MatMulNBits`' packed kernels take only integer zero points (its float
/// zero points, exact for Q4_1, make ONNX Runtime 1.31 dequantise the whole
/// weight to f32 on every call: 12× slower decoding at batch 1, 4× at 32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockOffsets {
    /// Packed integer zero points, scale and zero point per block chosen for
    /// the least squared error. Requantising Q4_1 to 4 bits this way shifts
    /// each block by up to half a step, which costs 0.3–1.3 nats of KL.
    Integer,
    /// Integer zero points plus each block's remaining offset in f32, added
    /// back as (the input's sums over each block) × (the offsets): a
    /// `Reshape`, a `ReduceSum`, a small f32 `MatMul` (`k / 32` deep) and an
    /// `Add` beside each `MatMulNBits`. Reproduces blocks that lie on a grid
    /// of `2^bits` levels (Q4_1, Q4_0) exactly, and removes each block's mean
    /// error otherwise.
    Residual,
}

/// What `MatMulNBits` computes in. ONNX Runtime can quantise a matmul's
/// input to int8 per block of 32 (`accuracy_level` 4: its integer kernels,
/// fastest) or keep it f32 (`accuracy_level` 0: no error beyond the
/// weights', but 2–3× slower at small batch sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activations {
    /// int8 inputs everywhere.
    Int8,
    /// f32 input for the packed Q/K/V projection, int8 elsewhere: halves the
    /// KL that int8 activations cost (Q·K errors reach the attention
    /// softmax) for about a sixth of the layers' matmul FLOPs.
    Int8ExceptQkv,
    /// f32 inputs everywhere.
    F32,
}

impl Activations {
    /// `MatMulNBits`' `accuracy_level` for the Q/K/V projection (`qkv`) or another layer.
    pub(crate) fn accuracy_level(self, qkv: bool) -> i64 {
        match self {
            Activations::Int8 => 4,
            Activations::Int8ExceptQkv if !qkv => 4,
            _ => 0,
        }
    }
}

/// Writes an f32 `model.onnx` and `model.onnx.data` for `config` into `dir`.
pub fn export_f32(config: &ModelConfig, weights: &dyn WeightSource, dir: &Path) -> Result<()> {
    export(config, weights, dir, WeightFormat::F32)
}

/// Writes `model.onnx` and `model.onnx.data` for `config` into `dir`, with
/// linear layers stored as `format` says (embeddings and norms stay f32).
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
        "logit_positions",
        data_type::INT64,
        &[batch.clone(), Dim::Named("kept")],
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
        &[batch, Dim::Named("kept"), Dim::Fixed(c.vocab_size as i64)],
    );
    g.output(
        "hidden",
        data_type::FLOAT,
        &[
            Dim::Named("batch"),
            Dim::Named("sequence"),
            Dim::Fixed(hidden),
        ],
    );
    for l in 0..c.num_hidden_layers {
        g.output(
            &format!("present.{l}.key"),
            data_type::FLOAT,
            &kv_dims("present_sequence"),
        );
        g.output(
            &format!("present.{l}.value"),
            data_type::FLOAT,
            &kv_dims("present_sequence"),
        );
    }

    let get = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
        weights
            .f32_tensor(name)?
            .ok_or_else(|| crate::Error::Export(format!("the model has no tensor `{name}`")))
    };
    // x · Wᵀ for a linear layer whose weight W is [out, in]. Several weights
    // over the same input are stacked along `out` into one matmul (`name`
    // names the stack): one call instead of several, and with int8
    // activations the input is quantised once.
    let linear = |g: &mut GraphBuilder,
                  x: &str,
                  name: &str,
                  parts: &[String],
                  qkv: bool|
     -> Result<String> {
        let mut w = Vec::new();
        let (mut out, mut inp) = (0, 0);
        for part in parts {
            let (shape, values) = get(part)?;
            if inp != 0 && shape[1] != inp {
                return Err(crate::Error::Export(format!(
                    "{part}: {} inputs, {} expected",
                    shape[1], inp
                )));
            }
            inp = shape[1];
            out += shape[0];
            w.extend(values);
        }
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
                offsets,
                activations,
                ..
            } => block_linear(
                g,
                (x, 3),
                name,
                &w,
                (out, inp),
                bits,
                activations.accuracy_level(qkv),
                offsets,
            ),
        }
    };
    let single = |g: &mut GraphBuilder, x: &str, name: String| {
        linear(g, x, &name, std::slice::from_ref(&name), false)
    };
    let vector = |g: &mut GraphBuilder, name: &str| -> Result<String> {
        let (shape, w) = get(name)?;
        g.weight_f32(name, &shape, &w)
    };

    // Embedding, shared with the LM head when tied.
    let (embed_shape, embed_values) = get("token_embd.weight")?;
    let embed = g.weight_f32("token_embd.weight", &embed_shape, &embed_values)?;
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

    // Per-row lengths for GroupQueryAttention: seqlens_k = (ones in the row) − 1,
    // total_sequence_length = the mask's width, both int32.
    let (seqlens_k, total_len) = {
        let axes = g.const_i64(&[1], false);
        let ones = g.node(
            "ReduceSum",
            &["attention_mask", &axes],
            vec![("keepdims", Attr::Int(0))],
        );
        let one = g.const_i64(&[1], true);
        let last = g.node("Sub", &[&ones, &one], vec![]);
        let seqlens = g.node(
            "Cast",
            &[&last],
            vec![("to", Attr::Int(data_type::INT32 as i64))],
        );
        let mask_shape = g.node("Shape", &["attention_mask"], vec![]);
        let width = g.node("Gather", &[&mask_shape, &one], vec![("axis", Attr::Int(0))]);
        let total = g.node(
            "Cast",
            &[&width],
            vec![("to", Attr::Int(data_type::INT32 as i64))],
        );
        (seqlens, total)
    };

    let eps = c.rms_norm_eps as f32;
    let ffn = c.intermediate_size as i64;
    let ffn_halves = g.const_i64(&[ffn, ffn], false);

    for l in 0..c.num_hidden_layers {
        let p = format!("blk.{l}");
        let norm_w = vector(&mut g, &format!("{p}.attn_norm.weight"))?;
        let h = g.node(
            "SimplifiedLayerNormalization",
            &[&x, &norm_w],
            vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps))],
        );
        // Q, K and V in one matmul, packed as GroupQueryAttention reads them.
        let parts = ["attn_q", "attn_k", "attn_v"];
        let mut qkv = linear(
            &mut g,
            &h,
            &format!("{p}.attn_qkv.weight"),
            &parts.map(|t| format!("{p}.{t}.weight")),
            true,
        )?;
        let biases = parts
            .iter()
            .map(|t| weights.f32_tensor(&format!("{p}.{t}.bias")))
            .collect::<Result<Vec<_>>>()?;
        if biases.iter().any(Option::is_some) {
            let widths = [nh, kvh, kvh].map(|heads| heads as usize * head_dim);
            let mut packed = Vec::with_capacity(widths.iter().sum());
            for (b, width) in biases.into_iter().zip(widths) {
                match b {
                    Some((_, b)) if b.len() == width => packed.extend(b),
                    Some((_, b)) => {
                        return Err(crate::Error::Export(format!(
                            "{p}: a q/k/v bias of {} values, {width} expected",
                            b.len()
                        )));
                    }
                    None => packed.extend(std::iter::repeat_n(0.0, width)),
                }
            }
            let b = g.weight_f32(&format!("{p}.attn_qkv.bias"), &[packed.len()], &packed)?;
            qkv = g.node("Add", &[&qkv, &b], vec![]);
        }
        let present_k = format!("present.{l}.key");
        let present_v = format!("present.{l}.value");
        let ctx = format!("{p}.attn");
        g.node_into(
            "GroupQueryAttention",
            "com.microsoft",
            &[
                &qkv,
                "",
                "",
                &format!("past_key_values.{l}.key"),
                &format!("past_key_values.{l}.value"),
                &seqlens_k,
                &total_len,
                &cos,
                &sin,
            ],
            &[&ctx, &present_k, &present_v],
            vec![
                ("num_heads", Attr::Int(nh)),
                ("kv_num_heads", Attr::Int(kvh)),
                ("do_rotary", Attr::Int(1)),
                ("rotary_interleaved", Attr::Int(1)),
            ],
        );
        let attn = single(&mut g, &ctx, format!("{p}.attn_output.weight"))?;
        x = g.node("Add", &[&x, &attn], vec![]);

        let norm_w = vector(&mut g, &format!("{p}.ffn_norm.weight"))?;
        let h = g.node(
            "SimplifiedLayerNormalization",
            &[&x, &norm_w],
            vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps))],
        );
        let gate_up = linear(
            &mut g,
            &h,
            &format!("{p}.ffn_gate_up.weight"),
            &[format!("{p}.ffn_gate.weight"), format!("{p}.ffn_up.weight")],
            false,
        )?;
        let (gate, up) = (format!("{p}.ffn_gate"), format!("{p}.ffn_up"));
        g.node_into(
            "Split",
            "",
            &[&gate_up, &ffn_halves],
            &[&gate, &up],
            vec![("axis", Attr::Int(-1))],
        );
        let sig = g.node("Sigmoid", &[&gate], vec![]);
        let silu = g.node("Mul", &[&gate, &sig], vec![]);
        let act = g.node("Mul", &[&silu, &up], vec![]);
        let down = single(&mut g, &act, format!("{p}.ffn_down.weight"))?;
        x = g.node("Add", &[&x, &down], vec![]);
    }

    g.node_into("Identity", "", &[&x], &["hidden"], vec![]);
    // Keep the positions that need logits: [B, S, H] → [B, kept, H].
    let x = {
        let minus_one = g.const_i64(&[-1], false);
        let idx = g.node("Unsqueeze", &["logit_positions", &minus_one], vec![]);
        let idx_shape = g.node("Shape", &["logit_positions"], vec![]);
        let width = g.const_i64(&[hidden], false);
        let full = g.node(
            "Concat",
            &[&idx_shape, &width],
            vec![("axis", Attr::Int(0))],
        );
        let idx = g.node("Expand", &[&idx, &full], vec![]);
        g.node("GatherElements", &[&x, &idx], vec![("axis", Attr::Int(1))])
    };
    let norm_w = vector(&mut g, "output_norm.weight")?;
    let h = g.node(
        "SimplifiedLayerNormalization",
        &[&x, &norm_w],
        vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps))],
    );
    // LM head: `Gemm` with transB reads the [vocab, hidden] matrix as
    // stored, so an f32 head shares a tied embedding's weights.
    let untied = weights.f32_tensor("output.weight")?;
    let flat_shape = g.const_i64(&[-1, hidden], false);
    let flat = g.node("Reshape", &[&h, &flat_shape], vec![]);
    let logits = match format {
        WeightFormat::Blocks {
            head: Head::Int8, ..
        } => {
            let (shape, w) = untied.unwrap_or((embed_shape, embed_values));
            block_linear(
                &mut g,
                (&flat, 2),
                "lm_head",
                &w,
                (shape[0], shape[1]),
                8,
                Activations::Int8.accuracy_level(false),
                BlockOffsets::Integer,
            )?
        }
        _ => {
            let head = match untied {
                Some((shape, w)) => g.weight_f32("output.weight", &shape, &w)?,
                None => embed.clone(),
            };
            g.node("Gemm", &[&flat, &head], vec![("transB", Attr::Int(1))])
        }
    };
    let kept_shape = g.node("Shape", &["logit_positions"], vec![]);
    let vocab = g.const_i64(&[c.vocab_size as i64], false);
    let out_shape = g.node(
        "Concat",
        &[&kept_shape, &vocab],
        vec![("axis", Attr::Int(0))],
    );
    g.node_into("Reshape", "", &[&logits, &out_shape], &["logits"], vec![]);

    g.finish(
        &dir.join("model.onnx"),
        &[("", 21), ("com.microsoft", 1)],
        &[("charter.export", "f32".to_string())],
    )
}

/// `x · Wᵀ` for a row-major `[out, inp]` weight `w`, block-quantised to `bits`
/// through `MatMulNBits` (plus the residual correction for
/// [`BlockOffsets::Residual`]). `x` has rank `rank` (2 or 3), `inp` last.
/// Returns the output's name.
#[allow(clippy::too_many_arguments)]
pub(crate) fn block_linear(
    g: &mut GraphBuilder,
    (x, rank): (&str, usize),
    name: &str,
    w: &[f32],
    (out, inp): (usize, usize),
    bits: usize,
    accuracy_level: i64,
    offsets: BlockOffsets,
) -> Result<String> {
    let err = |e: String| crate::Error::Export(format!("{name}: {e}"));
    let blocks = inp / BLOCK;
    let residual = offsets == BlockOffsets::Residual;
    let q = if residual {
        quantize_with_residual(w, out, inp, bits)
    } else {
        quantize(w, out, inp, bits)
    }
    .map_err(err)?;
    let b = g.weight(
        &format!("{name}.q"),
        &[out, blocks, BLOCK * bits / 8],
        data_type::UINT8,
        &q.packed,
    )?;
    let sc = g.weight_f32(&format!("{name}.scales"), &[out * blocks], &q.scales)?;
    let zp = g.weight(
        &format!("{name}.zero_points"),
        &[out * zero_point_cols(blocks, bits)],
        data_type::UINT8,
        &q.zero_points,
    )?;
    let y = g.contrib(
        "MatMulNBits",
        &[x, &b, &sc, &zp],
        vec![
            ("K", Attr::Int(inp as i64)),
            ("N", Attr::Int(out as i64)),
            ("bits", Attr::Int(bits as i64)),
            ("block_size", Attr::Int(BLOCK as i64)),
            ("accuracy_level", Attr::Int(accuracy_level)),
        ],
    );
    if !residual {
        return Ok(y);
    }
    // Σ_b residual[n, b] · Σ_{j in b} x[j]: sum x over each block
    // ([…, inp] → […, blocks, 32] → […, blocks]), then one f32 matmul with
    // the residuals transposed to [blocks, out].
    let mut rt = vec![0f32; blocks * out];
    for o in 0..out {
        for b in 0..blocks {
            rt[b * out + o] = q.residuals[o * blocks + b];
        }
    }
    let rt = g.weight_f32(&format!("{name}.residuals"), &[blocks, out], &rt)?;
    let mut split = vec![0i64; rank - 1];
    split.extend([blocks as i64, BLOCK as i64]);
    let split = g.const_i64(&split, false);
    let xb = g.node("Reshape", &[x, &split], vec![]);
    let last = g.const_i64(&[-1], false);
    let sums = g.node("ReduceSum", &[&xb, &last], vec![("keepdims", Attr::Int(0))]);
    let fix = g.node("MatMul", &[&sums, &rt], vec![]);
    Ok(g.node("Add", &[&y, &fix], vec![]))
}
