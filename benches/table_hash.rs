//! Table content hashing throughput against blake3's own single-thread speed.
//!
//! charter's content hash walks Arrow arrays row by row, encodes each cell
//! canonically and feeds blake3. The peer is `blake3::hash` over one
//! contiguous buffer of the same length — the fastest blake3 can consume
//! those bytes on one thread. Target: ≥ 50% of blake3's throughput.
//!
//! Run: `cargo bench --bench table_hash` (see benches/README.md).

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use charter_table::{ContentHasher, Prompt, Record, RecordBatch, Response};

/// Deterministic pseudo-random text of about `len` bytes.
fn text(seed: u64, len: usize) -> String {
    const WORDS: [&str; 16] = [
        "the",
        "model",
        "should",
        "refuse",
        "harmful",
        "requests",
        "but",
        "explain",
        "why",
        "and",
        "offer",
        "safer",
        "alternatives",
        "constitution",
        "principle",
        "revision",
    ];
    let mut s = String::with_capacity(len + 16);
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while s.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(WORDS[(x % 16) as usize]);
        s.push(' ');
    }
    s
}

fn prompts(n: usize) -> RecordBatch {
    let rows: Vec<Prompt> = (0..n)
        .map(|i| {
            Prompt {
                id: String::new(),
                text: text(i as u64, 40 + i % 120),
                source: "bench".into(),
                source_row: i as u64,
                tags: vec!["intents:S001".into()],
            }
            .with_id()
        })
        .collect();
    Prompt::to_batch(&rows).unwrap()
}

fn responses(n: usize) -> RecordBatch {
    let rows: Vec<Response> = (0..n)
        .map(|i| {
            Response {
                id: String::new(),
                prompt_id: format!("{i:064x}"),
                prompt: text(i as u64, 80),
                system: None,
                sample: 0,
                model: "SmolLM2-135M-Instruct".into(),
                model_hash: format!("{:064x}", 7),
                temperature: 1.0,
                top_p: 0.95,
                top_k: 0,
                max_new_tokens: 256,
                seed: i as u64,
                text: text(i as u64 + 1, 600 + i % 1200),
                prompt_tokens: 30,
                completion_tokens: 200,
                finish_reason: "stop".into(),
            }
            .with_id()
        })
        .collect();
    Response::to_batch(&rows).unwrap()
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn bench(name: &str, table: &str, batch: &RecordBatch) {
    let columns: Vec<(&str, charter_table::ColumnType)> = batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| {
            (
                f.name().as_str(),
                charter_table::ColumnType::of_arrow(f.data_type()).unwrap(),
            )
        })
        .collect();
    let hash = || {
        let mut h = ContentHasher::new(table, columns.iter().copied());
        h.update(batch).unwrap();
        let bytes = h.bytes();
        (h.finish(), bytes)
    };
    let (_, bytes) = hash();
    let buffer: Vec<u8> = (0..bytes).map(|i| (i * 31 % 251) as u8).collect();
    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    // Alternate the two so drift in machine load affects both alike.
    for _ in 0..21 {
        let t = Instant::now();
        black_box(hash());
        ours.push(t.elapsed());
        let t = Instant::now();
        black_box(blake3::hash(black_box(&buffer)));
        peer.push(t.elapsed());
    }
    let (ours, peer) = (median(ours), median(peer));
    let gbs = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e9;
    println!(
        "{name:<28} {:>8} rows {:>9.1} MB | charter {:>6.2} GB/s | blake3 {:>6.2} GB/s | ratio {:>5.1}%",
        batch.num_rows(),
        bytes as f64 / 1e6,
        gbs(ours),
        gbs(peer),
        100.0 * peer.as_secs_f64() / ours.as_secs_f64()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would too: keep it cheap then.
    let quick = std::env::args().any(|a| a == "--test");
    let scale = if quick { 1 } else { 20 };
    println!(
        "table content hash vs blake3::hash on the same number of bytes (median of 21, one thread)"
    );
    bench("prompts (short text)", "prompts", &prompts(10_000 * scale));
    bench(
        "responses (~1 KB text)",
        "responses",
        &responses(2_000 * scale),
    );
}
