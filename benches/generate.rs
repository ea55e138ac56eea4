//! Generation throughput of the default model on ONNX Runtime, by weight
//! format and batch size.
//!
//! Prompts are the default Do-Not-Answer prompts rendered with the model's
//! chat template. For each format and batch size: prefill tokens/s (one
//! forward over a batch of prompts), then the engine over every prompt
//! (continuous batching, greedy, `--max-new` tokens per prompt): decode
//! tokens/s (tokens after each row's first, over the time in decode steps —
//! what the peer script reports as decode) and end-to-end tokens/s (every
//! generated token over the wall time, prefill included). The peers (llama.cpp
//! through llama-cpp-python on the same GGUF, one stream at a time and with
//! its batched decoding) are `benches/peer_llama_cpp*.py`; see benches/README.md.
//!
//! Run: `cargo bench --bench generate -- [--formats f32,int8,int4,…] [--batches 1,8,32,64] [--prompts N] [--max-new N] [--threads N (0, the default: every core)] [--dump-prompts FILE [--dump-only]]`
//!
//! Formats: `f32`, `int8` and `int4` as `charter model import --dtype` writes
//! them; `int8-f32-head` and `int4-f32-head` (f32 LM head, the exports
//! before graph version 4); `int8-exact` (f32 activations and head);
//! `int4-integer` (integer zero points
//! only, the int4 export before graph version 3), `int4-residual` (residual
//! offsets, int8 activations everywhere) and `int4-exact` (residual offsets,
//! f32 activations). Exports are cached under
//! `$CHARTER_HOME/bench/smollm2-<format>-graph<GRAPH_VERSION>`.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::path::PathBuf;
use std::time::Instant;

use charter_gen::{Decoder, DecoderDims, Engine, GenerateOptions, KvCache, Request, Sampling};
use charter_model::onnx::{Activations, BlockOffsets, Head, WeightFormat, export};
use charter_model::{ChatTemplate, Dtype, Gguf, Message, ModelConfig, TextTokenizer, encode_chat};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn format_of(name: &str) -> WeightFormat {
    let blocks = |bits, offsets, activations, head| WeightFormat::Blocks {
        bits,
        offsets,
        activations,
        head,
    };
    use Activations::{F32, Int8, Int8ExceptQkv};
    use BlockOffsets::{Integer, Residual};
    match name {
        "f32" => WeightFormat::F32,
        "int8" => Dtype::Int8.weight_format(),
        // The int8 export before graph version 4: f32 LM head.
        "int8-f32-head" => blocks(8, Integer, Int8, Head::F32),
        "int8-exact" => blocks(8, Integer, F32, Head::F32),
        "int4" => Dtype::Int4.weight_format(),
        "int4-f32-head" => blocks(4, Residual, Int8ExceptQkv, Head::F32),
        // The int4 export before residual offsets: integer zero points only.
        "int4-integer" => blocks(4, Integer, Int8, Head::F32),
        "int4-residual" => blocks(4, Residual, Int8, Head::F32),
        "int4-residual-qkv" => blocks(4, Residual, Int8ExceptQkv, Head::F32),
        "int4-exact" => blocks(4, Residual, F32, Head::F32),
        other => panic!("unknown format {other}"),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--test") {
        return; // `cargo test --benches`: nothing to check here.
    }
    let home = charter_gen::runtime::charter_home();
    let gguf =
        Gguf::open(home.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")).expect("run scripts/setup");
    let config = ModelConfig::from_gguf(&gguf).unwrap();
    let tokenizer = TextTokenizer::from_gguf(&gguf).unwrap();
    let template = ChatTemplate::from_gguf(&gguf).unwrap();
    let dims = DecoderDims {
        layers: config.num_hidden_layers,
        kv_heads: config.num_key_value_heads,
        head_dim: config.head_dim(),
        vocab: config.vocab_size,
    };

    let n_prompts: usize = arg("--prompts", "64").parse().unwrap();
    let max_new: usize = arg("--max-new", "64").parse().unwrap();
    // 0, as charter's own default: every core available.
    let threads = match arg("--threads", "0").parse().unwrap() {
        0 => charter_gen::available_threads(),
        n => n,
    };
    let batches: Vec<usize> = arg("--batches", "1,8,32,64")
        .split(',')
        .map(|b| b.parse().unwrap())
        .collect();
    let mut prompts = Vec::new();
    let dir = home.join("prompts/donotanswer");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    'outer: for f in files {
        for line in std::fs::read_to_string(f).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = v["prompt"].as_str().unwrap();
            prompts.push(
                encode_chat(&tokenizer, &template, &[Message::new("user", text)], true).unwrap(),
            );
            if prompts.len() == n_prompts {
                break 'outer;
            }
        }
    }
    let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
    // The peer script reads the very same token ids.
    let dump = arg("--dump-prompts", "");
    if !dump.is_empty() {
        std::fs::write(&dump, serde_json::to_string(&prompts).unwrap()).unwrap();
        println!("wrote {} rendered prompts to {dump}", prompts.len());
        if std::env::args().any(|a| a == "--dump-only") {
            return;
        }
    }
    println!(
        "{} prompts ({:.1} tokens on average), {max_new} new tokens each, greedy, {threads} thread(s)",
        prompts.len(),
        prompt_tokens as f64 / prompts.len() as f64
    );
    println!("| engine | batch | prefill tok/s | decode tok/s | end-to-end tok/s |");
    println!("|---|---|---|---|---|");

    for name in arg("--formats", "f32,int8,int4").split(',') {
        let model_dir = home.join(format!(
            "bench/smollm2-{name}-graph{}",
            charter_model::GRAPH_VERSION
        ));
        if !model_dir.join("model.onnx").exists() {
            std::fs::create_dir_all(&model_dir).unwrap();
            export(&config, &gguf, &model_dir, format_of(name)).unwrap();
        }
        let decoder = Decoder::open(&model_dir, dims, threads).unwrap();
        let mut engine = Engine::new(decoder);
        for &batch in &batches {
            // Prefill: one forward over `batch` prompts, right-padded.
            let group: Vec<&[u32]> = prompts.iter().take(batch).map(Vec::as_slice).collect();
            let width = group.iter().map(|p| p.len()).max().unwrap();
            let slots: Vec<usize> = (0..group.len()).collect();
            let real: usize = group.iter().map(|p| p.len()).sum();
            let mut decoder = Decoder::open(&model_dir, dims, threads).unwrap();
            let mut kv = KvCache::new(&dims, group.len(), width).unwrap();
            decoder.prefill(&group, &mut kv, &slots).unwrap();
            let t = Instant::now();
            decoder.prefill(&group, &mut kv, &slots).unwrap();
            let prefill = real as f64 / t.elapsed().as_secs_f64();
            drop(decoder);

            // Decode: the engine over every prompt at this batch size.
            let requests: Vec<Request> = prompts
                .iter()
                .map(|p| Request {
                    prompt: p.clone(),
                    seed: 0,
                })
                .collect();
            let options = GenerateOptions {
                sampling: Sampling::GREEDY,
                max_new_tokens: max_new,
                stop_ids: vec![],
                batch_size: batch,
                max_context: config.max_position_embeddings,
                share_prefix: true,
                logprobs: false,
                readout: None,
            };
            let mut generated = 0usize;
            let before = engine.stats();
            let t = Instant::now();
            engine
                .generate(&requests, &options, &mut |_, _| false, &mut |c| {
                    generated += c.tokens.len();
                    Ok::<(), charter_gen::Error>(())
                })
                .unwrap();
            let secs = t.elapsed().as_secs_f64();
            let after = engine.stats();
            let decode = (after.decode_tokens - before.decode_tokens) as f64
                / (after.decode_secs - before.decode_secs);
            println!(
                "| charter {name} | {batch} | {prefill:.0} | {decode:.1} | {:.1} |",
                generated as f64 / secs
            );
            eprintln!(
                "  charter {name}, batch {batch}: {secs:.2} s = prefill {:.2} s ({} tokens) + decode {:.2} s + other",
                after.prefill_secs - before.prefill_secs,
                after.prefill_tokens - before.prefill_tokens,
                after.decode_secs - before.decode_secs,
            );
        }
    }
}
