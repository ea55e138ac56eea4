//! `pair`: two answers to the same prompt, for the AI-feedback stage.
//!
//! - One `responses` table: the samples of each prompt are paired in
//!   order, (0, 1), (2, 3), … (respond with `--samples 2` or more).
//! - Two tables (`--against`): each answer of the first is paired with its
//!   counterpart in the second. A response and a revision match when the
//!   revision's chain started from that response (its last round is used);
//!   two `responses` tables match by prompt and sample; two `revisions`
//!   tables by the response their chains started from (last round each).
//!   Answers without a counterpart are counted, not paired.

use std::collections::BTreeMap;
use std::path::Path;

use charter_table::{
    InputRef, Opened, PAIRS, Pair, Provenance, Record, Response, Revision, ShardedWriter,
    TableFile, TableSummary,
};

use crate::error::{Error, Result};

/// Version of the pair stage.
pub const PAIR_VERSION: u32 = 1;

/// What a pair run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairSummary {
    /// The finished table.
    pub table: TableSummary,
    /// The output already existed with the same build key: nothing ran.
    pub cached: bool,
    /// Answers left without a partner.
    pub unpaired: u64,
}

/// An answer as pairing sees it.
#[derive(Clone)]
struct Answer {
    id: String,
    prompt_id: String,
    prompt: String,
    text: String,
    /// What it matches on across tables.
    key: String,
}

enum Kind {
    Responses,
    Revisions,
}

fn kind(t: &TableFile) -> Result<Kind> {
    match t.table_name() {
        Some("responses") => Ok(Kind::Responses),
        Some("revisions") => Ok(Kind::Revisions),
        other => Err(Error::Settings(format!(
            "{}: pair reads `responses` or `revisions` tables, not {}",
            t.path().display(),
            other.map_or("an unnamed table".to_string(), |t| format!("`{t}`"))
        ))),
    }
}

/// The answers of a table in input order, keyed for matching against a
/// table of kind `other`. Revisions: the last round of each chain.
fn answers(t: &TableFile, other: Option<&Kind>) -> Result<Vec<Answer>> {
    match kind(t)? {
        Kind::Responses => {
            let rows: Vec<Response> = t.rows()?;
            Ok(rows
                .into_iter()
                .map(|r| Answer {
                    key: match other {
                        Some(Kind::Revisions) => r.id.clone(),
                        _ => format!("{}\0{}", r.prompt_id, r.sample),
                    },
                    id: r.id,
                    prompt_id: r.prompt_id,
                    prompt: r.prompt,
                    text: r.text,
                })
                .collect())
        }
        Kind::Revisions => {
            let rows: Vec<Revision> = t.rows()?;
            // Last round per chain, kept at the chain's first position.
            let mut order: Vec<String> = Vec::new();
            let mut last: BTreeMap<String, Revision> = BTreeMap::new();
            for r in rows {
                match last.get(&r.response_id) {
                    None => {
                        order.push(r.response_id.clone());
                        last.insert(r.response_id.clone(), r);
                    }
                    Some(prev) if r.round > prev.round => {
                        last.insert(r.response_id.clone(), r);
                    }
                    Some(_) => {}
                }
            }
            Ok(order
                .into_iter()
                .filter_map(|k| last.remove(&k))
                .map(|r| Answer {
                    key: r.response_id.clone(),
                    id: r.id,
                    prompt_id: r.prompt_id,
                    prompt: r.prompt,
                    text: r.text,
                })
                .collect())
        }
    }
}

fn input_ref(t: &TableFile) -> Result<InputRef> {
    Ok(InputRef {
        name: t.table_name().unwrap_or("input").to_string(),
        content_hash: t.content_hash_or_compute()?,
    })
}

/// The provenance a pairing of `input` (with itself, or with `against`) records.
pub fn pair_provenance(input: &TableFile, against: Option<&TableFile>) -> Result<Provenance> {
    let mut inputs = vec![input_ref(input)?];
    if let Some(b) = against {
        inputs.push(input_ref(b)?);
    }
    Ok(Provenance {
        stage: "pair".into(),
        stage_version: PAIR_VERSION,
        settings: serde_json::json!({ "against": against.is_some() }),
        inputs,
        model_hash: None,
        constitution_hash: None,
    })
}

/// Pairs the answers of `input` (with themselves, or with `against`) into
/// the `pairs` table at `out`.
pub fn pair(input: &TableFile, against: Option<&TableFile>, out: &Path) -> Result<PairSummary> {
    let provenance = pair_provenance(input, against)?;
    let mut read = vec![input.path()];
    read.extend(against.map(TableFile::path));
    let mut writer = match ShardedWriter::open(out, &PAIRS, &provenance.build_key(&PAIRS), &read)? {
        Opened::Finished(table) => {
            return Ok(PairSummary {
                table,
                cached: true,
                unpaired: 0,
            });
        }
        Opened::Writer(w, _) => w,
    };
    let source_a = input.table_name().unwrap_or_default().to_string();
    let make = |a: &Answer, b: &Answer, source_b: &str| {
        Pair {
            id: String::new(),
            prompt_id: a.prompt_id.clone(),
            prompt: a.prompt.clone(),
            response_a_id: a.id.clone(),
            response_b_id: b.id.clone(),
            source_a: source_a.clone(),
            source_b: source_b.to_string(),
            response_a: a.text.clone(),
            response_b: b.text.clone(),
        }
        .with_id()
    };
    let mut rows = Vec::new();
    let mut unpaired = 0u64;
    match against {
        None => {
            if !matches!(kind(input)?, Kind::Responses) {
                return Err(Error::Settings(format!(
                    "{}: pairing within one table needs a `responses` table with several samples per prompt; give `--against` to pair two tables",
                    input.path().display()
                )));
            }
            let all = answers(input, None)?;
            let mut by_prompt: BTreeMap<&str, Vec<&Answer>> = BTreeMap::new();
            let mut order = Vec::new();
            for a in &all {
                let group = by_prompt.entry(a.prompt_id.as_str()).or_default();
                if group.is_empty() {
                    order.push(a.prompt_id.as_str());
                }
                group.push(a);
            }
            for p in order {
                let group = &by_prompt[p];
                for two in group.chunks(2) {
                    match two {
                        [a, b] => rows.push(make(a, b, &source_a)),
                        _ => unpaired += 1,
                    }
                }
            }
            if rows.is_empty() {
                return Err(Error::Settings(format!(
                    "{}: no prompt has two samples to pair (respond with --samples 2)",
                    input.path().display()
                )));
            }
        }
        Some(b_table) => {
            let (ka, kb) = (kind(input)?, kind(b_table)?);
            let a_rows = answers(input, Some(&kb))?;
            let b_rows = answers(b_table, Some(&ka))?;
            let mut by_key: BTreeMap<&str, &Answer> = BTreeMap::new();
            for b in &b_rows {
                by_key.entry(b.key.as_str()).or_insert(b);
            }
            let source_b = b_table.table_name().unwrap_or_default().to_string();
            let mut matched = 0usize;
            for a in &a_rows {
                match by_key.get(a.key.as_str()) {
                    Some(b) => {
                        matched += 1;
                        rows.push(make(a, b, &source_b));
                    }
                    None => unpaired += 1,
                }
            }
            unpaired += (b_rows.len() - matched.min(b_rows.len())) as u64;
            if rows.is_empty() {
                return Err(Error::Settings(format!(
                    "{} and {}: no answer has a counterpart in the other table",
                    input.path().display(),
                    b_table.path().display()
                )));
            }
        }
    }
    writer.commit(&Pair::to_batch(&rows)?)?;
    Ok(PairSummary {
        table: writer.finish(&provenance)?,
        cached: false,
        unpaired,
    })
}
