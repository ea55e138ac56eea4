//! The repetition settings in the engine, on the tiny random-weight model
//! (whose greedy output loops): the defaults give the tokens they always
//! gave, `no_repeat_ngram_size` leaves no n-gram twice in a row's sequence,
//! and with either setting on a row still depends only on its prompt and
//! seed, at any batch size.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use charter_gen::{Decoder, DecoderDims, Engine, GenerateOptions, Request, Sampling};
use charter_model::write_tiny;

fn engine() -> (tempfile::TempDir, Engine) {
    let root = tempfile::tempdir().unwrap();
    let tiny = write_tiny(&root.path().join("tiny"), 3).unwrap();
    let c = &tiny.config;
    let dims = DecoderDims {
        layers: c.num_hidden_layers,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim(),
        vocab: c.vocab_size,
    };
    let engine = Engine::new(Decoder::open(&tiny.path, dims, 1).unwrap());
    (root, engine)
}

/// Byte-level prompts (the tiny tokenizer's ids are bytes), one seed each.
fn requests() -> Vec<Request> {
    ["Is it misleading?", "Hello", "word word word"]
        .iter()
        .enumerate()
        .map(|(i, p)| Request {
            prompt: p.bytes().map(u32::from).collect(),
            seed: 11 + i as u64,
        })
        .collect()
}

fn run(
    engine: &mut Engine,
    requests: &[Request],
    sampling: Sampling,
    batch_size: usize,
) -> Vec<Vec<u32>> {
    let options = GenerateOptions {
        sampling,
        max_new_tokens: 48,
        stop_ids: Vec::new(),
        batch_size,
        max_context: 512,
        share_prefix: false,
        logprobs: false,
        readout: None,
    };
    let mut out = vec![Vec::new(); requests.len()];
    engine
        .generate(requests, &options, &mut |_, _| false, &mut |c| {
            out[c.index] = c.tokens;
            Ok::<(), charter_gen::Error>(())
        })
        .unwrap();
    out
}

const SAMPLED: Sampling = Sampling {
    temperature: 0.7,
    top_p: 0.95,
    ..Sampling::GREEDY
};

/// The `n`-grams of `prompt + generated` that end in a generated token
/// and already occurred earlier in the sequence.
fn repeats(prompt: &[u32], generated: &[u32], n: usize) -> Vec<Vec<u32>> {
    let all = [prompt, generated].concat();
    (prompt.len().max(n - 1)..all.len())
        .map(|end| &all[end + 1 - n..=end])
        .enumerate()
        .filter(|(i, gram)| {
            let end = prompt.len().max(n - 1) + i;
            all[..end].windows(n).any(|w| w == *gram)
        })
        .map(|(_, gram)| gram.to_vec())
        .collect()
}

#[test]
fn the_defaults_give_the_tokens_they_always_gave() {
    // Recorded before the repetition settings existed (batch size 2).
    let greedy: [&[u32]; 3] = [
        &[
            63, 86, 230, 255, 89, 146, 146, 146, 146, 146, 146, 146, 146, 146, 213, 120, 213, 120,
            192, 192, 192, 79, 146, 213, 120, 120, 120, 120, 120, 120, 120, 120, 120, 146, 213,
            213, 213, 240, 240, 240, 240, 240, 240, 240, 240, 240, 240, 240,
        ],
        &[
            119, 165, 32, 240, 32, 80, 32, 93, 80, 32, 93, 80, 32, 93, 93, 93, 93, 93, 93, 93, 93,
            93, 93, 93, 93, 93, 93, 93, 93, 93, 93, 93, 93, 93, 93, 93, 93, 93, 93, 93, 93, 93, 93,
            93, 39, 39, 39, 39,
        ],
        &[
            258, 158, 155, 205, 205, 205, 249, 146, 146, 54, 54, 54, 54, 54, 54, 240, 211, 153,
            236, 236, 236, 236, 149, 54, 153, 236, 149, 54, 54, 54, 54, 54, 54, 54, 54, 146, 146,
            146, 146, 146, 146, 146, 146, 146, 146, 146, 146, 146,
        ],
    ];
    let sampled: [&[u32]; 3] = [
        &[
            53, 103, 192, 125, 178, 66, 61, 258, 123, 250, 94, 215, 89, 146, 213, 206, 24, 181,
            250, 151, 236, 60, 205, 49, 141, 38, 126, 8, 193, 91, 117, 255, 110, 236, 14, 89, 131,
            178, 237, 131, 181, 163, 108, 20, 255, 208, 47, 145,
        ],
        &[
            33, 215, 56, 98, 171, 95, 141, 2, 147, 98, 236, 119, 63, 190, 38, 215, 218, 169, 38,
            41, 62, 118, 34, 151, 113, 206, 142, 186, 91, 87, 30, 121, 174, 10, 214, 241, 65, 228,
            91, 217, 159, 152, 254, 232, 151, 54, 55, 28,
        ],
        &[
            202, 258, 49, 16, 146, 137, 213, 51, 146, 206, 30, 247, 149, 32, 149, 166, 201, 170,
            109, 135, 213, 186, 192, 153, 198, 193, 244, 240, 62, 112, 223, 184, 254, 170, 236,
            258, 58, 165, 108, 244, 217, 240, 17, 234, 159, 146, 85, 98,
        ],
    ];
    let (_dir, mut engine) = engine();
    let requests = requests();
    assert_eq!(run(&mut engine, &requests, Sampling::GREEDY, 2), greedy);
    assert_eq!(run(&mut engine, &requests, SAMPLED, 2), sampled);
}

#[test]
fn no_n_gram_occurs_twice_with_no_repeat_ngram_size() {
    let (_dir, mut engine) = engine();
    let requests = requests();
    for base in [Sampling::GREEDY, SAMPLED] {
        if base == Sampling::GREEDY {
            // The tiny model loops: without the ban, greedy rows repeat bigrams.
            let plain = run(&mut engine, &requests, base, 2);
            for (r, tokens) in requests.iter().zip(&plain) {
                assert!(!repeats(&r.prompt, tokens, 2).is_empty());
            }
        }
        for n in [2, 3] {
            let banned = Sampling {
                no_repeat_ngram_size: n,
                ..base
            };
            let got = run(&mut engine, &requests, banned, 2);
            for (r, tokens) in requests.iter().zip(&got) {
                assert_eq!(tokens.len(), 48);
                assert_eq!(repeats(&r.prompt, tokens, n), Vec::<Vec<u32>>::new(), "{n}");
            }
        }
    }
}

#[test]
fn the_penalty_breaks_greedy_loops() {
    let (_dir, mut engine) = engine();
    let requests = requests();
    let longest_run = |tokens: &[u32]| {
        tokens
            .chunk_by(|a, b| a == b)
            .map(<[u32]>::len)
            .max()
            .unwrap_or(0)
    };
    let plain = run(&mut engine, &requests, Sampling::GREEDY, 2);
    let penalised = Sampling {
        repetition_penalty: 1.5,
        ..Sampling::GREEDY
    };
    let got = run(&mut engine, &requests, penalised, 2);
    for (p, g) in plain.iter().zip(&got) {
        assert_ne!(p, g);
        assert!(longest_run(g) < longest_run(p), "{g:?}");
    }
}

#[test]
fn with_the_repetition_settings_a_row_depends_only_on_its_prompt_and_seed() {
    let (_dir, mut engine) = engine();
    // Each prompt twice with different seeds, so slots free up and refill.
    let requests: Vec<Request> = requests()
        .into_iter()
        .cycle()
        .take(6)
        .enumerate()
        .map(|(i, r)| Request {
            seed: 100 + i as u64,
            ..r
        })
        .collect();
    for sampling in [
        Sampling {
            repetition_penalty: 1.3,
            no_repeat_ngram_size: 3,
            ..Sampling::GREEDY
        },
        Sampling {
            repetition_penalty: 1.3,
            no_repeat_ngram_size: 3,
            ..SAMPLED
        },
    ] {
        let alone = run(&mut engine, &requests, sampling, 1);
        for batch in [2, 4, 8] {
            assert_eq!(
                run(&mut engine, &requests, sampling, batch),
                alone,
                "{batch}"
            );
        }
        let mut other = requests.clone();
        other[0].seed = 7;
        let changed = run(&mut engine, &other, sampling, 4);
        assert_eq!(changed[1..], alone[1..]);
        if sampling.temperature > 0.0 {
            assert_ne!(changed[0], alone[0]);
        }
    }
}

/// With `logprobs`, each sampled token comes with its log-probability under
/// the model's own distribution — what scoring the same tokens after the
/// prompt gives, up to rounding — whatever the temperature and repetition
/// settings did to the choice; the tokens are those of a run without it
/// (which here runs longer).
#[test]
fn sampled_tokens_carry_the_log_probabilities_scoring_gives() {
    let (_root, mut engine) = engine();
    let reqs = requests();
    let sampling = Sampling {
        repetition_penalty: 1.3,
        ..SAMPLED
    };
    let options = GenerateOptions {
        sampling,
        max_new_tokens: 24,
        stop_ids: Vec::new(),
        batch_size: 2,
        max_context: 512,
        share_prefix: false,
        logprobs: true,
        readout: None,
    };
    let mut got = vec![(Vec::new(), Vec::new()); reqs.len()];
    engine
        .generate(&reqs, &options, &mut |_, _| false, &mut |c| {
            got[c.index] = (c.tokens, c.logprobs);
            Ok::<(), charter_gen::Error>(())
        })
        .unwrap();
    let plain = run(&mut engine, &reqs, sampling, 2);
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = reqs
        .iter()
        .zip(&got)
        .map(|(r, (tokens, _))| (r.prompt.clone(), tokens.clone()))
        .collect();
    let scored = engine.score(&pairs, 1).unwrap();
    for ((tokens, logprobs), (plain, scored)) in got.iter().zip(plain.iter().zip(&scored)) {
        assert_eq!(tokens[..], plain[..tokens.len()]);
        assert_eq!(logprobs.len(), tokens.len());
        for (a, b) in logprobs.iter().zip(scored) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }
}
