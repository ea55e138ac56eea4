//! HuggingFace checkpoints imported with `import_hf` run as they do in
//! HuggingFace: the tiny model written as a llama checkpoint gives the same
//! logits and greedy tokens as the tiny model itself, and a qwen2
//! checkpoint (Q/K/V biases, untied head, BF16) matches a plain f32 forward
//! pass written here with HuggingFace's rotate-half rotary embedding.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use charter_gen::{Decoder, DecoderDims, Engine, GenerateOptions, KvCache, Request, Sampling};
use charter_model::onnx::WeightSource;
use charter_model::{
    Dtype, ModelConfig, ModelDir, Replace, SafetensorsWriter, TINY_CHAT_TEMPLATE, TinyWeights,
    import_hf, write_tiny,
};

type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn dims(c: &ModelConfig) -> DecoderDims {
    DecoderDims {
        layers: c.num_hidden_layers,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim(),
        vocab: c.vocab_size,
    }
}

fn open(dir: &ModelDir) -> Decoder {
    Decoder::open(&dir.path, dims(&dir.config), 1).unwrap()
}

/// GGUF's interleaved Q/K rows back to HF's rotate-half order (llama.cpp's
/// `permute`, inverted): hf row `a·hd/2 + j` = gguf row `2j + a` in each head.
fn to_hf_rows(gguf: &[f32], head_dim: usize, cols: usize) -> Vec<f32> {
    let mut hf = vec![0f32; gguf.len()];
    for h in 0..gguf.len() / (head_dim * cols) {
        for a in 0..2 {
            for j in 0..head_dim / 2 {
                let from = (h * head_dim + 2 * j + a) * cols;
                let to = (h * head_dim + a * head_dim / 2 + j) * cols;
                hf[to..to + cols].copy_from_slice(&gguf[from..from + cols]);
            }
        }
    }
    hf
}

/// HF name → GGUF name, per layer part.
const LAYER_PARTS: [(&str, &str); 9] = [
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// Every weight of `source` (GGUF names) under its HF name, as stored: no reordering.
fn by_hf_name(source: &dyn WeightSource, layers: usize) -> Tensors {
    let mut names = vec![
        (
            "model.embed_tokens.weight".to_string(),
            "token_embd.weight".to_string(),
        ),
        (
            "model.norm.weight".to_string(),
            "output_norm.weight".to_string(),
        ),
    ];
    for l in 0..layers {
        for (hf, gguf) in LAYER_PARTS {
            names.push((
                format!("model.layers.{l}.{hf}.weight"),
                format!("blk.{l}.{gguf}.weight"),
            ));
        }
    }
    names
        .into_iter()
        .map(|(hf, gguf)| (hf, source.f32_tensor(&gguf).unwrap().unwrap()))
        .collect()
}

fn hf_config_json(c: &ModelConfig, model_type: &str, architecture: &str) -> serde_json::Value {
    serde_json::json!({
        "architectures": [architecture], "model_type": model_type, "hidden_act": "silu",
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
        "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta, "rope_scaling": null,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": null, "eos_token_id": c.eos_token_id,
        "sliding_window": null, "use_sliding_window": false,
    })
}

/// A checkpoint directory: config, the tiny tokenizer files, and the weights
/// written by `write_weights` into it.
fn checkpoint(
    dir: &Path,
    tokenizer: &Path,
    config: serde_json::Value,
    write_weights: impl FnOnce(&Path),
) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(tokenizer, dir.join("tokenizer.json")).unwrap();
    let tokenizer_config = serde_json::json!({
        "chat_template": TINY_CHAT_TEMPLATE,
        "eos_token": "<|im_end|>",
        "model_max_length": 1e30,
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        tokenizer_config.to_string(),
    )
    .unwrap();
    write_weights(dir);
    dir.to_path_buf()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn argmax(x: &[f32]) -> u32 {
    x.iter()
        .enumerate()
        .fold(0, |best, (i, v)| if *v > x[best] { i } else { best }) as u32
}

fn greedy(decoder: Decoder, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut engine = Engine::new(decoder);
    let options = GenerateOptions {
        sampling: Sampling::GREEDY,
        max_new_tokens: n,
        stop_ids: Vec::new(),
        batch_size: 1,
        max_context: 512,
        share_prefix: false,
        logprobs: false,
        readout: None,
    };
    let request = Request {
        prompt: prompt.to_vec(),
        seed: 0,
    };
    let mut out = Vec::new();
    engine
        .generate(&[request], &options, &mut |_, _| false, &mut |c| {
            out = c.tokens;
            Ok::<(), charter_gen::Error>(())
        })
        .unwrap();
    out
}

const PROMPT: [u32; 11] = [258 - 1, 72, 101, 108, 108, 111, 10, 119, 111, 114, 100];

#[test]
fn the_tiny_model_as_a_llama_checkpoint_imports_to_the_same_model() {
    let root = tempfile::tempdir().unwrap();
    let tiny = write_tiny(&root.path().join("tiny"), 21).unwrap();
    let c = tiny.config.clone();
    let mut tensors = by_hf_name(&TinyWeights::new(c.clone(), 21), c.num_hidden_layers);
    for (name, (shape, values)) in &mut tensors {
        if name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight") {
            *values = to_hf_rows(values, c.head_dim(), shape[1]);
        }
    }
    let source = checkpoint(
        &root.path().join("tiny-llama"),
        &tiny.tokenizer_path(),
        hf_config_json(&c, "llama", "LlamaForCausalLM"),
        |dir| {
            let mut w = SafetensorsWriter::create(dir.join("model.safetensors")).unwrap();
            for (name, (shape, values)) in &tensors {
                w.push(name, shape, values).unwrap();
            }
            w.finish(&[("format", "pt")]).unwrap();
        },
    );
    let imported = import_hf(
        &source,
        &root.path().join("imported"),
        Dtype::F32,
        Replace::Nothing,
    )
    .unwrap();
    assert_eq!(imported.config, c);

    let (want, width) = open(&tiny).logits_all(&[&PROMPT]).unwrap();
    let (got, _) = open(&imported).logits_all(&[&PROMPT]).unwrap();
    assert_eq!(width, PROMPT.len());
    let diff = max_diff(&want, &got);
    eprintln!("tiny llama checkpoint: max |Δlogit| over every position = {diff:.2e}");
    assert!(diff <= 1e-5, "max |Δlogit| = {diff}");

    let want = greedy(open(&tiny), &PROMPT, 24);
    assert_eq!(want.len(), 24);
    assert_eq!(greedy(open(&imported), &PROMPT, 24), want);
}

/// Deterministic values uniform in ±scale.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = self.0;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                let u = (z >> 11) as f64 / (1u64 << 53) as f64;
                ((2.0 * u - 1.0) as f32) * scale
            })
            .collect()
    }
}

/// f32 → bf16 bits, rounding to nearest even.
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// Writes `tensors` as a BF16 safetensors file, by hand.
fn write_bf16(path: &Path, tensors: &Tensors) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, (shape, values)) in tensors {
        let start = data.len();
        data.extend(values.iter().flat_map(|&v| bf16_bits(v).to_le_bytes()));
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

/// Plain forward pass of a llama-family decoder over HF-layout weights,
/// with HF's rotate-half rotary embedding (`rotate_half` in `transformers`'
/// `modeling_llama.py`), or, with `interleaved`, the pairs (2j, 2j+1) —
/// the wrong form for these weights. Returns `[tokens, vocab]` logits.
fn reference(c: &ModelConfig, w: &Tensors, tokens: &[u32], interleaved: bool) -> Vec<f32> {
    let (h, hd, nh, kvh) = (
        c.hidden_size,
        c.head_dim(),
        c.num_attention_heads,
        c.num_key_value_heads,
    );
    let get = |n: &str| -> &[f32] { &w[n].1 };
    let opt = |n: &str| w.get(n).map(|t| t.1.as_slice());
    // y = W·x (+ b) for W [out, in].
    let linear = |x: &[f64], wn: &str, bias: Option<&[f32]>| -> Vec<f64> {
        let m = get(wn);
        let inp = x.len();
        (0..m.len() / inp)
            .map(|o| {
                let dot: f64 = (0..inp).map(|i| f64::from(m[o * inp + i]) * x[i]).sum();
                dot + bias.map_or(0.0, |b| f64::from(b[o]))
            })
            .collect()
    };
    let rms = |x: &[f64], wn: &str| -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let r = 1.0 / (ms + c.rms_norm_eps).sqrt();
        x.iter()
            .zip(get(wn))
            .map(|(v, g)| v * r * f64::from(*g))
            .collect()
    };
    let rope = |v: &mut [f64], pos: usize| {
        let half = hd / 2;
        for head in v.chunks_exact_mut(hd) {
            for j in 0..half {
                let angle = pos as f64 * c.rope_theta.powf(-(2.0 * j as f64) / hd as f64);
                let (sin, cos) = angle.sin_cos();
                let (a, b) = if interleaved {
                    (2 * j, 2 * j + 1)
                } else {
                    (j, j + half)
                };
                let (x, y) = (head[a], head[b]);
                head[a] = x * cos - y * sin;
                head[b] = y * cos + x * sin;
            }
        }
    };
    let embed = get("model.embed_tokens.weight");
    let mut xs: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&t| {
            embed[t as usize * h..(t as usize + 1) * h]
                .iter()
                .map(|&v| f64::from(v))
                .collect()
        })
        .collect();
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
        for (pos, x) in xs.iter().enumerate() {
            let n = rms(x, &format!("{p}.input_layernorm.weight"));
            let proj = |name: &str| {
                linear(
                    &n,
                    &format!("{p}.self_attn.{name}.weight"),
                    opt(&format!("{p}.self_attn.{name}.bias")),
                )
            };
            let (mut q, mut k) = (proj("q_proj"), proj("k_proj"));
            rope(&mut q, pos);
            rope(&mut k, pos);
            qs.push(q);
            ks.push(k);
            vs.push(proj("v_proj"));
        }
        for (i, x) in xs.iter_mut().enumerate() {
            let mut ctx = vec![0f64; nh * hd];
            for head in 0..nh {
                let kv = head / (nh / kvh);
                let q = &qs[i][head * hd..(head + 1) * hd];
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        let k = &ks[j][kv * hd..(kv + 1) * hd];
                        q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    for d in 0..hd {
                        ctx[head * hd + d] += ej / sum * vs[j][kv * hd + d];
                    }
                }
            }
            let o = linear(&ctx, &format!("{p}.self_attn.o_proj.weight"), None);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let n = rms(x, &format!("{p}.post_attention_layernorm.weight"));
            let gate = linear(&n, &format!("{p}.mlp.gate_proj.weight"), None);
            let up = linear(&n, &format!("{p}.mlp.up_proj.weight"), None);
            let act: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let down = linear(&act, &format!("{p}.mlp.down_proj.weight"), None);
            x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        }
    }
    let head = match c.tie_word_embeddings {
        true => "model.embed_tokens.weight",
        false => "lm_head.weight",
    };
    xs.iter()
        .flat_map(|x| {
            let n = rms(x, "model.norm.weight");
            linear(&n, head, None).into_iter().map(|v| v as f32)
        })
        .collect()
}

#[test]
fn a_qwen2_checkpoint_matches_a_plain_rotate_half_forward_pass() {
    let root = tempfile::tempdir().unwrap();
    let tiny = write_tiny(&root.path().join("tiny"), 3).unwrap();
    let mut c = tiny.config.clone();
    c.model_type = "qwen2".to_string();
    c.tie_word_embeddings = false;
    c.rope_theta = 50_000.0;
    c.rms_norm_eps = 1e-6;
    let (q, kv) = (
        c.num_attention_heads * c.head_dim(),
        c.num_key_value_heads * c.head_dim(),
    );
    // Random HF-layout weights: the tiny model's matrices (taken as they
    // are), random norms, Q/K/V biases and a separate LM head.
    let mut rng = Rng(99);
    let mut w = by_hf_name(&TinyWeights::new(c.clone(), 3), c.num_hidden_layers);
    for (name, (_, values)) in &mut w {
        if name.ends_with("norm.weight") {
            let noise = rng.uniform(values.len(), 0.5);
            values.iter_mut().zip(noise).for_each(|(v, n)| *v += n);
        }
    }
    for l in 0..c.num_hidden_layers {
        for (proj, n) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
            w.insert(
                format!("model.layers.{l}.self_attn.{proj}.bias"),
                (vec![n], rng.uniform(n, 0.5)),
            );
        }
    }
    w.insert(
        "lm_head.weight".to_string(),
        (
            vec![c.vocab_size, c.hidden_size],
            rng.uniform(c.vocab_size * c.hidden_size, 0.2),
        ),
    );
    // The checkpoint is BF16: the reference uses the same rounded values.
    for (_, values) in w.values_mut() {
        values
            .iter_mut()
            .for_each(|v| *v = f32::from_bits(u32::from(bf16_bits(*v)) << 16));
    }
    let source = checkpoint(
        &root.path().join("tiny-qwen2"),
        &tiny.tokenizer_path(),
        hf_config_json(&c, "qwen2", "Qwen2ForCausalLM"),
        |dir| write_bf16(&dir.join("model.safetensors"), &w),
    );
    let imported = import_hf(
        &source,
        &root.path().join("imported"),
        Dtype::F32,
        Replace::Nothing,
    )
    .unwrap();
    assert_eq!(imported.config, c);
    // model.safetensors holds the checkpoint's own tensors, widened to f32.
    assert!(imported.load_weights().unwrap() == w);

    let mut decoder = open(&imported);
    let (got, width) = decoder.logits_all(&[&PROMPT]).unwrap();
    let want = reference(&c, &w, &PROMPT, false);
    let diff = max_diff(&got[..width * c.vocab_size], &want);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!(
        "tiny qwen2 checkpoint: max |Δlogit| against the reference = {diff:.2e} (logits up to {scale:.1})"
    );
    assert!(diff < 1e-4, "max |Δlogit| = {diff}");
    // The check can tell the row orders apart: pairing (2j, 2j+1) on these
    // weights gives other logits.
    let wrong = max_diff(
        &got[..width * c.vocab_size],
        &reference(&c, &w, &PROMPT, true),
    );
    assert!(wrong > 1e-2, "interleaved rotary on HF rows: {wrong}");

    // A decode step on the cache: the next position's logits agree too.
    let d = dims(&c);
    let mut kv_cache = KvCache::new(&d, 1, PROMPT.len() + 1).unwrap();
    let last = decoder.prefill(&[&PROMPT], &mut kv_cache, &[0]).unwrap();
    let next = argmax(&last);
    let step = decoder
        .decode(&[next], &[PROMPT.len()], &mut kv_cache)
        .unwrap();
    let mut longer = PROMPT.to_vec();
    longer.push(next);
    let want = reference(&c, &w, &longer, false);
    let diff = max_diff(&step, &want[PROMPT.len() * c.vocab_size..]);
    eprintln!("tiny qwen2 checkpoint: decode step max |Δlogit| = {diff:.2e}");
    assert!(diff < 1e-4, "decode step: max |Δlogit| = {diff}");
}
