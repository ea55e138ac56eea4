//! `target`: a classifier's soft training targets from a labeller's token
//! probabilities (Sharma et al. 2025 §2: the constitution, not hand labels,
//! decides what is blocked).
//!
//! The labeller sees the classifier constitution's blocked and allowed
//! categories, the message, and the question whether it contains or seeks
//! blocked content, with "blocked" and "allowed" as options (A) and (B).
//! After the answer prefix the probabilities of "(A)" and "(B)" are read
//! and normalised, in both presentation orders (small labellers favour a
//! slot), and averaged: `p_harmful`. Nothing is parsed from generated text.
//!
//! For an output guard the judged rows are answers: a `responses` table
//! whose prompts are the queries of a queries table (`respond -i QUERIES`).
//! The judge then sees the message and the answer and is asked about the
//! answer; each target keeps its query's category, label and transforms.

use std::collections::HashMap;
use std::path::Path;

use charter_model::Message;
use charter_table::{
    InputRef, Opened, Provenance, QUERIES, Query, Record, Response, ShardedWriter, TARGETS,
    TableFile, Target,
};

use super::ClassifierConstitution;
use crate::error::{Error, Result};
use crate::generate::{GenSettings, Generation, StageProgress, StageSummary, windows};
use crate::label::{choice_log_probs, choices, normalised, shared_prefix};
use crate::model::Model;

/// Version of the target stage.
pub const TARGET_VERSION: u32 = 1;

/// Settings of a target run: `charter target`'s flags and a build file's
/// `target` stage.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct TargetSettings {
    /// Score both presentation orders and average them (`--no-swap`: only
    /// blocked as (A)).
    #[arg(long = "no-swap", action = clap::ArgAction::SetFalse)]
    pub swap: bool,
    /// Batch, window and system prompt (sampling settings are unused: nothing is generated).
    #[serde(skip)]
    #[command(flatten)]
    pub generation: GenSettings,
}

impl Default for TargetSettings {
    fn default() -> Self {
        TargetSettings {
            swap: true,
            generation: GenSettings::DEFAULT,
        }
    }
}

impl TargetSettings {
    /// The settings that determine the output, as recorded in provenance.
    pub fn canonical(&self) -> serde_json::Value {
        let g = &self.generation;
        serde_json::json!({
            "swap": self.swap,
            "system": g.system,
            "batch_size": g.batch_size,
            "window": g.shard_rows,
        })
    }
}

/// The provenance a target run over `input` (queries, or responses to the
/// queries of `queries`) records.
pub fn target_provenance(
    input: &TableFile,
    queries: Option<&TableFile>,
    settings: &TargetSettings,
    model_hash: &str,
    constitution_hash: &str,
) -> Result<Provenance> {
    let mut inputs = Vec::with_capacity(2);
    for table in std::iter::once(input).chain(queries) {
        inputs.push(InputRef {
            name: table.table_name().unwrap_or("queries").into(),
            content_hash: table.content_hash_or_compute()?,
        });
    }
    Ok(Provenance {
        stage: "target".into(),
        stage_version: TARGET_VERSION,
        settings: settings.canonical(),
        inputs,
        model_hash: Some(model_hash.to_string()),
        constitution_hash: Some(constitution_hash.to_string()),
    })
}

/// One message (and answer) to judge, with its query's category.
struct Item {
    id: String,
    text: String,
    answer: Option<String>,
    query: Query,
}

/// The rows to judge: the queries of a queries table, or the answers of a
/// responses table joined to the queries they answer.
fn items(input: &TableFile, queries: Option<&TableFile>) -> Result<Vec<Item>> {
    let path = input.path().display();
    match (input.table_name(), queries) {
        (Some("queries"), None) => Ok(input
            .rows::<Query>()?
            .into_iter()
            .map(|q| Item {
                id: q.id.clone(),
                text: q.text.clone(),
                answer: None,
                query: q,
            })
            .collect()),
        (Some("queries"), Some(_)) => Err(Error::Settings(format!(
            "{path}: a queries table is judged alone; a second table (`--queries`, \
             `against`) goes with a responses table"
        ))),
        (Some("responses"), Some(q)) => {
            q.expect(&QUERIES)?;
            let by_id: HashMap<String, Query> = q
                .rows::<Query>()?
                .into_iter()
                .map(|q| (q.id.clone(), q))
                .collect();
            input
                .rows::<Response>()?
                .into_iter()
                .enumerate()
                .map(|(i, r)| {
                    let query = by_id.get(&r.prompt_id).cloned().ok_or_else(|| {
                        Error::Settings(format!(
                            "{path}: row {}: prompt_id {} is not a query of {}",
                            i + 1,
                            r.prompt_id,
                            q.path().display()
                        ))
                    })?;
                    Ok(Item {
                        id: r.id,
                        text: r.prompt,
                        answer: Some(r.text),
                        query,
                    })
                })
                .collect()
        }
        (Some("responses"), None) => Err(Error::Settings(format!(
            "{path}: judging answers needs the queries table they answer, for their \
             categories (`--queries`; `against` in a build file)"
        ))),
        (name, _) => Err(Error::Settings(format!(
            "{path}: `target` judges a queries table, or a responses table with the queries \
             it answers, not a `{}` table",
            name.unwrap_or("?")
        ))),
    }
}

/// The judge's conversation about `query` (and `answer`), blocked shown first or second.
fn conversation(
    c: &ClassifierConstitution,
    settings: &TargetSettings,
    query: &str,
    answer: Option<&str>,
    blocked_first: bool,
) -> Result<Vec<Message>> {
    let mut m = settings.generation.system_messages();
    m.push(Message::new(
        "user",
        c.render_judge(query, answer, blocked_first)?,
    ));
    Ok(m)
}

/// Judges every query of `input` (or every answer of a responses table
/// `input` to the queries of `queries`) into the `targets` table at `out`.
pub fn target(
    input: &TableFile,
    queries: Option<&TableFile>,
    model: &mut Model,
    constitution: &ClassifierConstitution,
    settings: &TargetSettings,
    out: &Path,
    progress: &mut dyn FnMut(StageProgress),
) -> Result<StageSummary> {
    settings.generation.validate()?;
    let rows = items(input, queries)?;
    let choices = choices(model, &constitution.templates.judge_answer_prefix)?;
    let constitution_hash = constitution.hash();
    let provenance = target_provenance(
        input,
        queries,
        settings,
        &model.dir.provenance.content_hash,
        &constitution_hash,
    )?;
    let (mut writer, state) = match ShardedWriter::open(
        out,
        &TARGETS,
        &provenance.build_key(&TARGETS),
        &std::iter::once(input)
            .chain(queries)
            .map(TableFile::path)
            .collect::<Vec<_>>(),
    )? {
        Opened::Finished(table) => return Ok(StageSummary::cached(table)),
        Opened::Writer(w, s) => (w, s),
    };
    let total = rows.len();
    let start = (state.rows as usize).min(total);
    let orders = if settings.swap { 2 } else { 1 };
    let (name, hash) = (
        model.dir.provenance.name.clone(),
        model.dir.provenance.content_hash.clone(),
    );
    // The judge's instructions and categories, the same for every row.
    let probes = [("1", true), ("2", false)]
        .iter()
        .map(|&(x, blocked_first)| {
            let answer = rows.first().and_then(|q| q.answer.as_ref()).map(|_| x);
            conversation(constitution, settings, x, answer, blocked_first)
        })
        .collect::<Result<Vec<_>>>()?;
    let shared = shared_prefix(model, &probes)?;
    let before = model.engine.stats();
    for range in windows(start, total, settings.generation.shard_rows) {
        let end = range.end;
        let window = &rows[range];
        let mut contexts = Vec::with_capacity(window.len() * orders);
        for q in window {
            for blocked_first in [true, false].into_iter().take(orders) {
                let messages = conversation(
                    constitution,
                    settings,
                    &q.text,
                    q.answer.as_deref(),
                    blocked_first,
                )?;
                contexts.push(model.encode_conversation(&messages)?);
            }
        }
        let lp = choice_log_probs(model, contexts, &shared, &choices, &|i| {
            &window[i / orders].id
        })?;
        let batch: Vec<Target> = window
            .iter()
            .enumerate()
            .map(|(k, item)| {
                let ab = normalised(lp[k * orders][0], lp[k * orders][1]);
                // With allowed shown first, blocked is (B).
                let ba = settings
                    .swap
                    .then(|| normalised(lp[k * orders + 1][1], lp[k * orders + 1][0]));
                let q = &item.query;
                Target {
                    id: String::new(),
                    item_id: item.id.clone(),
                    text: item.text.clone(),
                    answer: item.answer.clone(),
                    category: q.category.clone(),
                    label: q.label.clone(),
                    transforms: q.transforms.clone(),
                    model: name.clone(),
                    model_hash: hash.clone(),
                    constitution: constitution.name.clone(),
                    constitution_hash: constitution_hash.clone(),
                    swap: settings.swap,
                    p_harmful: ba.map_or(ab, |ba| (ab + ba) / 2.0),
                    p_harmful_ab: ab,
                    p_harmful_ba: ba,
                }
                .with_id()
            })
            .collect();
        writer.commit(&Target::to_batch(&batch)?)?;
        model.check_stop(writer.committed_rows())?;
        progress(StageProgress {
            rows_done: end as u64,
            rows_total: total as u64,
            tokens: 0,
        });
    }
    let table = writer.finish(&provenance)?;
    Ok(
        StageSummary::generated(table, start, total, Generation::default())
            .scored(before, &model.engine),
    )
}
