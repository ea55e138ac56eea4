//! A linear probe applied while generating (`GenerateOptions::readout`),
//! on the tiny random-weight model: its score before each token equals the
//! score read from a teacher-forced pass over the same tokens, and a row
//! stops at the first token whose score reaches the threshold, with the
//! tokens before it unchanged — whatever else shares the batch, and with
//! a shared prompt prefix computed once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use charter_gen::{
    Completion, Decoder, DecoderDims, Engine, FinishReason, GenerateOptions, Readout, Request,
    Sampling,
};
use charter_model::write_tiny;

fn engine() -> (tempfile::TempDir, Engine, usize) {
    let root = tempfile::tempdir().unwrap();
    let tiny = write_tiny(&root.path().join("tiny"), 5).unwrap();
    let c = &tiny.config;
    let dims = DecoderDims {
        layers: c.num_hidden_layers,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim(),
        vocab: c.vocab_size,
    };
    let hidden = c.hidden_size;
    let engine = Engine::new(Decoder::open(&tiny.path, dims, 1).unwrap());
    (root, engine, hidden)
}

/// Byte-level prompts sharing a prefix long enough to be computed once:
/// three run after a copy of its cache, and one, too short for that, is
/// prefilled whole.
fn requests() -> Vec<Request> {
    let shared = "a system prompt long enough to share: ".repeat(3);
    ["Is it misleading?", "Hi", "first", "second one"]
        .map(|rest| format!("{shared}{rest}"))
        .iter()
        .enumerate()
        .map(|(i, p)| Request {
            prompt: p.bytes().map(u32::from).collect(),
            seed: 21 + i as u64,
        })
        .collect()
}

fn generate(engine: &mut Engine, readout: &Readout, batch_size: usize) -> Vec<Completion> {
    let options = GenerateOptions {
        sampling: Sampling {
            temperature: 0.8,
            ..Sampling::GREEDY
        },
        max_new_tokens: 32,
        stop_ids: Vec::new(),
        batch_size,
        max_context: 512,
        share_prefix: true,
        logprobs: false,
        readout: Some(readout.clone()),
    };
    let requests = requests();
    let mut out: Vec<Option<Completion>> = vec![None; requests.len()];
    engine
        .generate(&requests, &options, &mut |_, _| false, &mut |c| {
            let i = c.index;
            out[i] = Some(c);
            Ok::<(), charter_gen::Error>(())
        })
        .unwrap();
    out.into_iter().map(Option::unwrap).collect()
}

/// A fixed pseudo-random probe.
fn probe(hidden: usize, threshold: f64) -> Readout {
    let mut state = 7u64;
    let weights = (0..hidden)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) as f32
        })
        .collect();
    Readout {
        weights,
        bias: 0.0,
        threshold,
    }
}

#[test]
fn the_streamed_scores_are_the_teacher_forced_ones_and_the_row_stops_at_the_first_flag() {
    let (_root, mut engine, hidden) = engine();
    // Never reached: every row runs to its length, scored before each token.
    let free = generate(&mut engine, &probe(hidden, 2.0), 4);
    let requests = requests();
    for c in &free {
        assert_eq!(c.finish, FinishReason::Length);
        assert_eq!(c.readout.len(), c.tokens.len());
    }
    // The same scores from the states of one pass over prompt and answer.
    let rows: Vec<Vec<u32>> = requests
        .iter()
        .zip(&free)
        .map(|(r, c)| [&r.prompt[..], &c.tokens[..]].concat())
        .collect();
    let positions: Vec<Vec<usize>> = requests
        .iter()
        .zip(&free)
        .map(|(r, c)| (r.prompt.len() - 1..r.prompt.len() - 1 + c.tokens.len()).collect())
        .collect();
    let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
    let (features, h) = engine.hidden_states(&refs, &positions, 2).unwrap();
    assert_eq!(h, hidden);
    let readout = probe(hidden, 2.0);
    for (c, f) in free.iter().zip(&features) {
        for (i, x) in f.chunks_exact(h).enumerate() {
            let z: f32 = readout.weights.iter().zip(x).map(|(w, x)| w * x).sum();
            let p = 1.0 / (1.0 + (-f64::from(z)).exp());
            assert!(
                (p - c.readout[i]).abs() < 1e-4,
                "token {i}: {p} {}",
                c.readout[i]
            );
        }
    }

    // A threshold inside the range: each row stops at its first token at or
    // over it, the tokens before it as they were, at any batch size.
    let mut all: Vec<f64> = free.iter().flat_map(|c| c.readout.clone()).collect();
    all.sort_by(f64::total_cmp);
    let threshold = all[all.len() * 3 / 4];
    let mut stopped = 0;
    for batch_size in [1, 4] {
        let flagged = generate(&mut engine, &probe(hidden, threshold), batch_size);
        for (f, c) in free.iter().zip(&flagged) {
            match f.readout.iter().position(|&p| p >= threshold) {
                Some(at) => {
                    assert_eq!(c.finish, FinishReason::Flagged);
                    assert_eq!(c.tokens, f.tokens[..=at], "batch {batch_size}");
                    stopped += 1;
                }
                None => assert_eq!(c.tokens, f.tokens),
            }
        }
    }
    assert!(stopped > 0);
}
