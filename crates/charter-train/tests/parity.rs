//! The burn decoder's logits against charter-gen's ONNX Runtime forward of
//! the same model directory (interleaved rotary on GGUF-permuted weights), so
//! this also checks the rotate-half layout handling.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use charter_gen::{Decoder as OrtDecoder, DecoderDims};
use charter_model::ModelConfig;
use charter_train::{Decoder, DeviceChoice, select_device};

const PROMPTS: [&[u32]; 3] = [
    &[257, 72, 101, 108, 108, 111, 10, 119, 111, 114, 100],
    &[1, 2, 3],
    &[200, 17, 99, 256, 258, 42, 42],
];

fn dims(c: &ModelConfig) -> DecoderDims {
    DecoderDims {
        layers: c.num_hidden_layers,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim(),
        vocab: c.vocab_size,
    }
}

/// Max |Δlogit| between burn and ORT over every real position of `prompts`.
fn max_delta(dir: &Path, prompts: &[&[u32]]) -> f32 {
    let device = select_device(DeviceChoice::Cpu, false).unwrap();
    let burn = Decoder::open(dir, &device).unwrap();
    let vocab = burn.config().vocab_size;
    let mut ort = OrtDecoder::open(dir, dims(burn.config()), 1).unwrap();
    let (want, width) = ort.logits_all(prompts).unwrap();
    let mut worst = 0f32;
    for (r, prompt) in prompts.iter().enumerate() {
        let got = burn.logits(&[prompt]).unwrap();
        assert_eq!(got.len(), prompt.len() * vocab);
        for pos in 0..prompt.len() {
            let w = &want[(r * width + pos) * vocab..][..vocab];
            let g = &got[pos * vocab..][..vocab];
            for (a, b) in w.iter().zip(g) {
                assert!(b.is_finite());
                worst = worst.max((a - b).abs());
            }
        }
    }
    worst
}

#[test]
fn tiny_model_logits_match_onnx_runtime() {
    let root = tempfile::tempdir().unwrap();
    for seed in [1, 7] {
        let dir = root.path().join(format!("tiny-{seed}"));
        charter_model::write_tiny(&dir, seed).unwrap();
        let delta = max_delta(&dir, &PROMPTS);
        assert!(delta < 1e-4, "seed {seed}: max |Δlogit| {delta}");
    }
}

#[test]
fn a_batch_equals_its_rows_run_alone() {
    let root = tempfile::tempdir().unwrap();
    charter_model::write_tiny(root.path(), 3).unwrap();
    let device = select_device(DeviceChoice::Cpu, false).unwrap();
    let burn = Decoder::open(root.path(), &device).unwrap();
    let rows: [&[u32]; 2] = [&[5, 6, 7, 8], &[9, 10, 11, 12]];
    let both = burn.logits(&rows).unwrap();
    let half = both.len() / 2;
    for (i, row) in rows.iter().enumerate() {
        let alone = burn.logits(&[row]).unwrap();
        let d = alone
            .iter()
            .zip(&both[i * half..][..half])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "row {i}: {d}");
    }
}

/// The default model (SmolLM2-135M-Instruct, Q4_1 imported as f32); run with
/// `cargo test -p charter-train --release -- --ignored`.
#[test]
#[ignore = "needs the default model in ~/.cache/charter/models; slow"]
fn default_model_logits_match_onnx_runtime() {
    let home = std::env::var("HOME").unwrap();
    let gguf = Path::new(&home).join(".cache/charter/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("smol");
    charter_model::import_gguf(
        &gguf,
        &dir,
        charter_model::Dtype::F32,
        charter_model::Replace::Nothing,
    )
    .unwrap();
    let delta = max_delta(&dir, &PROMPTS);
    println!("default model: max |Δlogit| {delta}");
    assert!(delta < 1e-2, "max |Δlogit| {delta}");
}
