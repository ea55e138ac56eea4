//! Merging a sharded build's labels table: `merge_shards` on 1,000,000
//! label rows split into N shards by prompt, against rewriting the same
//! table from one unsharded file (read, hash, compress, write — the least
//! any merge must do). The ratio is what ordering rows across shards costs.
//!
//! Run: `cargo bench --bench merge` (see benches/README.md).

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::path::Path;
use std::time::Instant;

use charter_table::{
    LABELS, Label, Output, PAIRS, Pair, ParentKey, Provenance, Record, Shard, TableFile,
    TableWriter, merge_shards,
};

const ROWS: usize = 1_000_000;
const BATCH: usize = 20_000;

fn provenance(stage: &str) -> Provenance {
    Provenance {
        stage: stage.into(),
        stage_version: 1,
        settings: serde_json::json!({}),
        inputs: vec![],
        model_hash: None,
        constitution_hash: None,
    }
}

fn answer(i: usize, which: &str) -> String {
    format!("Answer {which} to prompt {i}: I can't help with that, but here is why it is risky and what to do instead. ")
        .repeat(2)
}

fn pair(i: usize) -> Pair {
    Pair {
        id: String::new(),
        prompt_id: format!("prompt-{}", i / 2),
        prompt: format!("Question {i}"),
        response_a_id: format!("a-{i}"),
        response_b_id: format!("b-{i}"),
        source_a: "responses".into(),
        source_b: "responses".into(),
        response_a: String::new(),
        response_b: String::new(),
    }
    .with_id()
}

fn label(p: &Pair, i: usize) -> Label {
    Label {
        id: String::new(),
        pair_id: p.id.clone(),
        prompt_id: p.prompt_id.clone(),
        prompt: p.prompt.clone(),
        response_a_id: p.response_a_id.clone(),
        response_b_id: p.response_b_id.clone(),
        response_a: answer(i, "A"),
        response_b: answer(i, "B"),
        principle_id: "harmless-1".into(),
        principle: "Which answer is less harmful?".into(),
        model: "bench".into(),
        model_hash: "0".repeat(64),
        constitution: "bench".into(),
        constitution_hash: "1".repeat(64),
        cot: false,
        swap: true,
        seed: i as u64,
        p_a: (i % 97) as f64 / 97.0,
        p_a_ab: (i % 89) as f64 / 89.0,
        p_a_ba: Some((i % 83) as f64 / 83.0),
        cot_ab: None,
        cot_ba: None,
        chosen: answer(i, "A"),
        rejected: answer(i, "B"),
        chosen_id: p.response_a_id.clone(),
        rejected_id: p.response_b_id.clone(),
    }
    .with_id()
}

fn writer(path: &Path, spec: &'static charter_table::TableSpec) -> TableWriter {
    TableWriter::create(
        &Output::Path(path.to_path_buf()),
        spec,
        &provenance("bench"),
    )
    .unwrap()
}

fn main() {
    let shards: u32 = std::env::var("CHARTER_BENCH_SHARDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let started = Instant::now();
    let mut pairs_w = writer(&d.join("pairs.parquet"), &PAIRS);
    let mut whole_w = writer(&d.join("labels.parquet"), &LABELS);
    let mut shard_w: Vec<TableWriter> = (0..shards)
        .map(|k| writer(&d.join(format!("labels-{k}.parquet")), &LABELS))
        .collect();
    for start in (0..ROWS).step_by(BATCH) {
        let pairs: Vec<Pair> = (start..(start + BATCH).min(ROWS)).map(pair).collect();
        let labels: Vec<Label> = pairs
            .iter()
            .enumerate()
            .map(|(j, p)| label(p, start + j))
            .collect();
        pairs_w.write_rows(&pairs).unwrap();
        whole_w.write_rows(&labels).unwrap();
        for (k, w) in shard_w.iter_mut().enumerate() {
            let mine: Vec<Label> = labels
                .iter()
                .filter(|l| Shard::of(&l.prompt_id, shards) == k as u32)
                .cloned()
                .collect();
            w.write_rows(&mine).unwrap();
        }
    }
    pairs_w.finish().unwrap();
    let whole = whole_w.finish().unwrap();
    for w in shard_w {
        w.finish().unwrap();
    }
    println!(
        "made {ROWS} label rows ({} MB) and {shards} shards in {:.1}s",
        std::fs::metadata(d.join("labels.parquet")).unwrap().len() / 1_000_000,
        started.elapsed().as_secs_f64()
    );

    let pairs = TableFile::open(&d.join("pairs.parquet")).unwrap();
    let prov = provenance("bench");
    let mut merge_s = Vec::new();
    let mut rewrite_s = Vec::new();
    for round in 0..3 {
        let tables: Vec<TableFile> = (0..shards)
            .map(|k| TableFile::open(&d.join(format!("labels-{k}.parquet"))).unwrap())
            .collect();
        let t = Instant::now();
        let merged = merge_shards(
            &pairs,
            ParentKey {
                child: "pair_id",
                parent: "id",
            },
            &tables,
            &LABELS,
            &prov,
            &d.join("merged.parquet"),
        )
        .unwrap();
        merge_s.push(t.elapsed().as_secs_f64());
        assert_eq!(
            merged.content_hash, whole.content_hash,
            "merge keeps the unsharded order"
        );

        let t = Instant::now();
        let source = TableFile::open(&d.join("labels.parquet")).unwrap();
        let mut w = writer(&d.join("rewritten.parquet"), &LABELS);
        for b in source.batches().unwrap() {
            w.write(&b.unwrap()).unwrap();
        }
        w.finish().unwrap();
        rewrite_s.push(t.elapsed().as_secs_f64());
        println!(
            "round {round}: merge {:.2}s, rewrite {:.2}s",
            merge_s[round], rewrite_s[round]
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (m, r) = (median(&mut merge_s), median(&mut rewrite_s));
    println!(
        "merge of {shards} shards: {:.0} rows/s; rewrite: {:.0} rows/s; merge takes {:.2}× the rewrite",
        ROWS as f64 / m,
        ROWS as f64 / r,
        m / r
    );
}
