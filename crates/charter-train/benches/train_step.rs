//! Training-step throughput of the burn trainer on a model directory: the
//! SFT step (forward, answer-token cross-entropy, backward, AdamW) and the
//! DPO step (both sides of every pair, soft-label loss, backward, AdamW) on
//! fixed synthetic token rows, the same shapes and ids that
//! `benches/peer_torch_train.py` feeds PyTorch (see `benches/README.md`).
//!
//! Row `r` of a batch holds tokens `(r · 7919 + j · 104729) mod vocab`,
//! `j < seq`; the first quarter is the prompt. A DPO pair is rows `2p`
//! (A) and `2p + 1` (B).
//!
//! Prints one JSON line per objective: every step's loss (the first, before
//! any update, must match PyTorch's: the same model computes the same
//! thing), and per-step seconds and tokens/s after the warm-up steps.
//!
//! Run: `cargo bench -p charter-train --bench train_step -- --model DIR
//! [--objective sft,dpo] [--batch 8] [--seq 256] [--steps 3] [--warmup 1]
//! [--lora-rank R] [--device cpu|wgpu] [--optimizer fused|burn]` (wgpu needs
//! `--features wgpu`; `burn`: burn's AdamW instead of the fused one).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams};
use charter_train::{
    Decoder, DeviceChoice, LoraSettings, RetainedHeap, Tokens, dpo_margins, scalar, select,
    sft_loss, soft_pair_loss,
};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// The synthetic rows both benchmarks train on.
fn rows(count: usize, seq: usize, vocab: usize) -> Vec<Tokens> {
    (0..count)
        .map(|r| Tokens {
            ids: (0..seq)
                .map(|j| ((r * 7919 + j * 104_729) % vocab) as u32)
                .collect(),
            prompt_len: seq / 4,
        })
        .collect()
}

fn main() {
    let model_dir = PathBuf::from(arg("--model", "out/smollm2"));
    let batch: usize = arg("--batch", "8").parse().unwrap();
    let seq: usize = arg("--seq", "256").parse().unwrap();
    let steps: usize = arg("--steps", "3").parse().unwrap();
    let warmup: usize = arg("--warmup", "1").parse().unwrap();
    let lora_rank: usize = arg("--lora-rank", "0").parse().unwrap();
    let objectives = arg("--objective", "sft,dpo");
    let choice: DeviceChoice = arg("--device", "cpu").parse().unwrap();
    let selected = select(choice, true).unwrap_or_else(|e| panic!("--device: {e}"));
    let device = selected.device;
    // As `charter train` does.
    let _heap = RetainedHeap::enter();

    for objective in objectives.split(',') {
        let mut model = Decoder::open(&model_dir, &device)
            .unwrap_or_else(|e| panic!("{}: {e}", model_dir.display()));
        if lora_rank > 0 {
            let lora = LoraSettings {
                rank: lora_rank,
                alpha: lora_rank as f64,
            };
            model = model.with_lora(lora, 0).unwrap();
        }
        let params: usize = model
            .to_tensors()
            .unwrap()
            .values()
            .map(|(shape, _)| shape.iter().product::<usize>())
            .sum();
        let vocab = model.config().vocab_size;
        let sides = if objective == "dpo" { 2 } else { 1 };
        let data = rows(batch * sides, seq, vocab);
        let refs: Vec<&Tokens> = match objective {
            // Every A, then every B, as the DPO job batches them.
            "dpo" => (0..batch)
                .map(|p| &data[2 * p])
                .chain((0..batch).map(|p| &data[2 * p + 1]))
                .collect(),
            _ => data.iter().collect(),
        };
        let answer_tokens = (batch * sides * (seq - seq / 4)) as f64;
        let reference = vec![[0.0, 0.0]; batch];
        let labels = vec![0.75; batch];
        // `--optimizer burn`: burn's AdamW, composed from tensor operations.
        let mut optimizer = match arg("--optimizer", "fused").as_str() {
            "burn" => AdamWConfig::new().init(),
            _ => charter_train::adamw(1e-4),
        };
        let (mut seconds, mut losses) = (Vec::new(), Vec::new());
        // Mean seconds in forward + loss, backward, and the AdamW update.
        let mut split = [0f64; 3];
        for step in 0..warmup + steps {
            let t0 = Instant::now();
            let loss = match objective {
                "sft" => sft_loss(&model, &refs, answer_tokens).unwrap(),
                "dpo" => {
                    let z = dpo_margins(&model, &refs, &reference, 0.1).unwrap();
                    soft_pair_loss(z, &labels, batch as f64)
                }
                other => panic!("--objective: unknown {other}"),
            };
            let value = scalar(&loss).unwrap();
            assert!(value.is_finite(), "step {step}: loss {value}");
            losses.push(value);
            let t1 = Instant::now();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let t2 = Instant::now();
            model = optimizer.step(1e-5, model, grads);
            if step >= warmup {
                let t3 = Instant::now();
                seconds.push((t3 - t0).as_secs_f64());
                for (sum, span) in split.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2]) {
                    *sum += span.as_secs_f64() / steps as f64;
                }
            }
        }
        let tokens = (batch * sides * seq) as f64;
        let per_s: Vec<f64> = seconds.iter().map(|s| tokens / s).collect();
        let mean = seconds.iter().sum::<f64>() / seconds.len().max(1) as f64;
        println!(
            "{}",
            serde_json::json!({
                "peer": format!("charter on {}", selected.description),
                "objective": objective,
                "lora_rank": lora_rank,
                "batch": batch,
                "seq": seq,
                "params": params,
                "losses": losses,
                "step_seconds": seconds,
                "forward_backward_update_s": split,
                "tokens_per_s": per_s,
                "mean_tokens_per_s": tokens / mean,
                "model_gflop_per_s": 6.0 * params as f64 * tokens / mean / 1e9,
            })
        );
    }
}
