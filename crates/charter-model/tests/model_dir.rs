//! Model directories' `model.safetensors` (HF names and rotate-half Q/K
//! rows) and the HuggingFace checkpoint import, without running a graph.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use charter_model::onnx::WeightSource;
use charter_model::{
    Dtype, ModelDir, Replace, SafetensorsFile, SafetensorsWriter, TINY_CHAT_TEMPLATE, Tensors,
    TinyWeights, import_hf, write_tiny,
};

/// GGUF's interleaved Q/K rows back to HF's rotate-half order, written out
/// from llama.cpp's `permute` (`reshape(heads, 2, hd/2, in).swapaxes(1, 2)`,
/// inverted): hf row `a·hd/2 + j` = gguf row `2j + a` in each head.
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

/// The tiny model's weights as a HuggingFace checkpoint would hold them.
fn hf_tensors(weights: &TinyWeights, layers: usize, head_dim: usize) -> Tensors {
    let mut names = vec![
        (
            "token_embd.weight".to_string(),
            "model.embed_tokens.weight".to_string(),
        ),
        (
            "output_norm.weight".to_string(),
            "model.norm.weight".to_string(),
        ),
    ];
    for l in 0..layers {
        for (g, h) in [
            ("attn_norm", "input_layernorm"),
            ("ffn_norm", "post_attention_layernorm"),
            ("attn_q", "self_attn.q_proj"),
            ("attn_k", "self_attn.k_proj"),
            ("attn_v", "self_attn.v_proj"),
            ("attn_output", "self_attn.o_proj"),
            ("ffn_gate", "mlp.gate_proj"),
            ("ffn_up", "mlp.up_proj"),
            ("ffn_down", "mlp.down_proj"),
        ] {
            names.push((
                format!("blk.{l}.{g}.weight"),
                format!("model.layers.{l}.{h}.weight"),
            ));
        }
    }
    names
        .into_iter()
        .map(|(g, h)| {
            let (shape, mut values) = weights.f32_tensor(&g).unwrap().unwrap();
            if g.ends_with("attn_q.weight") || g.ends_with("attn_k.weight") {
                values = to_hf_rows(&values, head_dim, shape[1]);
            }
            (h, (shape, values))
        })
        .collect()
}

fn write_safetensors(path: &Path, tensors: &Tensors) {
    let mut w = SafetensorsWriter::create(path).unwrap();
    for (name, (shape, values)) in tensors {
        w.push(name, shape, values).unwrap();
    }
    w.finish(&[("format", "pt")]).unwrap();
}

/// A HuggingFace checkpoint directory of the tiny model (seed 5), in two shards.
fn tiny_checkpoint(root: &Path) -> (std::path::PathBuf, Tensors) {
    let tiny = write_tiny(&root.join("tiny"), 5).unwrap();
    let c = &tiny.config;
    let tensors = hf_tensors(
        &TinyWeights::new(c.clone(), 5),
        c.num_hidden_layers,
        c.head_dim(),
    );
    let dir = root.join("tiny-hf");
    std::fs::create_dir(&dir).unwrap();
    let (first, second): (Tensors, Tensors) = tensors
        .clone()
        .into_iter()
        .partition(|(name, _)| name.starts_with("model.layers.0."));
    write_safetensors(&dir.join("model-00001-of-00002.safetensors"), &first);
    write_safetensors(&dir.join("model-00002-of-00002.safetensors"), &second);
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
        "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta, "rope_scaling": null,
        "max_position_embeddings": c.max_position_embeddings, "tie_word_embeddings": true,
        "bos_token_id": null, "eos_token_id": [258, 256], "torch_dtype": "float32"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(tiny.tokenizer_path(), dir.join("tokenizer.json")).unwrap();
    let tokenizer_config = serde_json::json!({
        "chat_template": TINY_CHAT_TEMPLATE,
        "eos_token": {"content": "<|im_end|>", "special": true},
        "model_max_length": 1e30,
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        tokenizer_config.to_string(),
    )
    .unwrap();
    (dir, tensors)
}

#[test]
fn model_safetensors_holds_the_weights_in_hf_layout() {
    let root = tempfile::tempdir().unwrap();
    let dir = write_tiny(&root.path().join("tiny"), 11).unwrap();
    let c = dir.config.clone();
    let weights = dir.load_weights().unwrap();
    // Tied head: no `lm_head.weight`; no biases in a llama model.
    assert_eq!(weights.len(), 2 + 9 * c.num_hidden_layers);
    assert!(!weights.contains_key("lm_head.weight"));
    let file = SafetensorsFile::open(dir.weights_path()).unwrap();
    assert_eq!(file.metadata("format"), Some("pt"));

    let tiny = TinyWeights::new(c.clone(), 11);
    let want = hf_tensors(&tiny, c.num_hidden_layers, c.head_dim());
    assert_eq!(
        weights.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (name, (shape, values)) in &want {
        let (got_shape, got) = &weights[name];
        assert_eq!(got_shape, shape, "{name}");
        assert!(got == values, "{name}: values differ");
    }
    // The Q rows really moved: HF order is not GGUF order.
    let (_, gguf_q) = tiny.f32_tensor("blk.0.attn_q.weight").unwrap().unwrap();
    assert_ne!(weights["model.layers.0.self_attn.q_proj.weight"].1, gguf_q);
    assert_eq!(
        weights["model.layers.0.self_attn.q_proj.weight"].0,
        [c.num_attention_heads * c.head_dim(), c.hidden_size]
    );
}

#[test]
fn a_sharded_hf_checkpoint_imports_and_round_trips_its_weights() {
    let root = tempfile::tempdir().unwrap();
    let (source, tensors) = tiny_checkpoint(root.path());
    let out = root.path().join("imported");
    let dir = import_hf(&source, &out, Dtype::F32, Replace::Nothing).unwrap();
    let tiny = ModelDir::open(&root.path().join("tiny")).unwrap();
    assert_eq!(dir.config, tiny.config);
    assert_eq!(dir.provenance.name, "tiny-hf");
    assert_eq!(dir.provenance.source, "tiny-hf");
    assert_eq!(dir.tokenizer_config, tiny.tokenizer_config);
    // Imported weights come back out exactly as they went in.
    let back: BTreeMap<_, _> = dir.load_weights().unwrap();
    assert!(back == tensors);
    // The same graph as the tiny model's own: same weights, same order.
    assert_eq!(
        std::fs::read(out.join("model.onnx.data")).unwrap(),
        std::fs::read(tiny.path.join("model.onnx.data")).unwrap()
    );

    // Up to date: a second import leaves the directory alone.
    let stamp = std::fs::metadata(out.join("model.onnx"))
        .unwrap()
        .modified()
        .unwrap();
    let again = import_hf(&source, &out, Dtype::F32, Replace::Nothing).unwrap();
    assert_eq!(again.provenance, dir.provenance);
    let stamp2 = std::fs::metadata(out.join("model.onnx"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(stamp, stamp2);
    // Another dtype is another model.
    let int8 = import_hf(
        &source,
        &root.path().join("int8"),
        Dtype::Int8,
        Replace::Nothing,
    )
    .unwrap();
    assert_eq!(int8.provenance.source_hash, dir.provenance.source_hash);
    assert_ne!(int8.provenance.content_hash, dir.provenance.content_hash);
}

/// Rewrites the checkpoint's second shard with `edit` applied to its tensors.
fn edit_shard(dir: &Path, edit: impl FnOnce(&mut Tensors)) {
    let path = dir.join("model-00002-of-00002.safetensors");
    let file = SafetensorsFile::open(&path).unwrap();
    let mut tensors: Tensors = file
        .names()
        .into_iter()
        .map(|n| {
            let t = file.read_f32(&n).unwrap().unwrap();
            (n, t)
        })
        .collect();
    edit(&mut tensors);
    drop(file);
    write_safetensors(&path, &tensors);
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let root = tempfile::tempdir().unwrap();
    let (source, tensors) = tiny_checkpoint(root.path());
    let out = root.path().join("out");
    let err = |source: &Path| {
        import_hf(source, &out, Dtype::F32, Replace::Nothing)
            .unwrap_err()
            .to_string()
    };

    let q0 = "model.layers.0.self_attn.q_proj.weight";
    edit_shard(&source, |t| {
        t.insert(q0.to_string(), tensors[q0].clone());
    });
    let e = err(&source);
    assert!(e.contains(&format!("tensor `{q0}`: also in")), "{e}");

    let q1 = "model.layers.1.self_attn.q_proj.weight";
    edit_shard(&source, |t| {
        t.remove(q0);
        t.remove(q1);
    });
    let e = err(&source);
    assert!(e.contains(&format!("no tensor named `{q1}`")), "{e}");

    let k1 = "model.layers.1.self_attn.k_proj.weight";
    edit_shard(&source, |t| {
        t.insert(q1.to_string(), tensors[q1].clone());
        let (shape, values) = &tensors[k1];
        t.insert(k1.to_string(), (vec![shape[1], shape[0]], values.clone()));
    });
    let e = err(&source);
    assert!(
        e.contains(&format!(
            "tensor `{k1}`: shape [64, 32], but config.json implies [32, 64]"
        )),
        "{e}"
    );

    edit_shard(&source, |t| {
        t.insert(k1.to_string(), tensors[k1].clone());
        t.insert(
            "model.layers.1.self_attn.o_proj.bias".to_string(),
            (vec![64], vec![0.0; 64]),
        );
    });
    let e = err(&source);
    assert!(
        e.contains("`model.layers.1.self_attn.o_proj.bias`: not part of a llama decoder"),
        "{e}"
    );
    edit_shard(&source, |t| {
        t.remove("model.layers.1.self_attn.o_proj.bias");
    });
    import_hf(&source, &out, Dtype::F32, Replace::Nothing).unwrap();

    std::fs::write(
        source.join("tokenizer_config.json"),
        r#"{"eos_token": "<|im_end|>"}"#,
    )
    .unwrap();
    let e = err(&source);
    assert!(
        e.contains("tokenizer_config.json: `chat_template`: missing"),
        "{e}"
    );
    std::fs::remove_file(source.join("tokenizer.json")).unwrap();
    let e = err(&source);
    assert!(e.contains("tokenizer.json"), "{e}");
}
