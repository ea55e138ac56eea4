//! Scoring a table's answers with a preference model: the table comes back
//! with its columns and rows unchanged, plus score columns.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use charter_model::ModelDir;
use charter_table::{
    InputRef, Output, Provenance, TableFile, TableSummary, TableWriter, finished_table,
};

use crate::data::{Formatter, Tokens};
use crate::jobs::open_preference_model;
use crate::tensor::values;
use crate::{DeviceChoice, Error, Result, select_device};

/// Which answer columns a table has, and the score columns they get.
fn answer_columns(table: &str) -> Option<&'static [(&'static str, &'static str)]> {
    match table {
        "responses" | "revisions" => Some(&[("text", "pm_score")]),
        "pairs" | "labels" => Some(&[("response_a", "pm_score_a"), ("response_b", "pm_score_b")]),
        _ => None,
    }
}

/// Version of the score stage: bump when the same inputs would give different rows.
pub const SCORE_VERSION: u32 = 1;

/// Settings of a scoring run: `charter score`'s flags and a build file's
/// `score` stage.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreSettings {
    /// Conversations scored together.
    #[arg(long, value_name = "B", default_value_t = ScoreSettings::default().batch_size)]
    pub batch_size: usize,
    /// Tokens per conversation; longer answers are cut.
    #[arg(long, value_name = "N", default_value_t = ScoreSettings::default().max_len)]
    pub max_len: usize,
}

impl Default for ScoreSettings {
    fn default() -> Self {
        ScoreSettings {
            batch_size: 8,
            max_len: 512,
        }
    }
}

impl ScoreSettings {
    /// Checks the values a user can get wrong; the error names the setting.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::invalid("batch_size", "must be at least 1"));
        }
        if self.max_len < 2 {
            return Err(Error::invalid(
                "max_len",
                format!("must be at least 2, got {}", self.max_len),
            ));
        }
        Ok(())
    }
}

/// The provenance scoring `table` with the preference model whose content
/// hash is `model_hash` records. The batch size does not change a score,
/// so only `max_len` is part of it.
pub fn score_provenance(
    table: &TableFile,
    settings: &ScoreSettings,
    model_hash: &str,
) -> Result<Provenance> {
    Ok(Provenance {
        stage: "score".to_string(),
        stage_version: SCORE_VERSION,
        settings: serde_json::json!({ "max_len": settings.max_len }),
        inputs: vec![InputRef {
            name: table.core_spec()?.name.to_string(),
            content_hash: table.content_hash_or_compute()?,
        }],
        model_hash: Some(model_hash.to_string()),
        constitution_hash: None,
    })
}

/// What `score` reports.
#[derive(Debug, Clone)]
pub struct ScoreSummary {
    /// The written table (or the one found up to date).
    pub table: TableSummary,
    /// The output already recorded the same build key: nothing was written.
    pub cached: bool,
    /// Answers scored.
    pub scored: u64,
    /// Answers left without a score (the prompt alone fills `max_len`).
    pub unscored: u64,
}

/// The model's scalar on every present conversation, `batch_size` at a
/// time (`done` hears how many each time); `None` where there is none.
pub(crate) fn scalar_scores(
    model: &crate::PreferenceModel,
    conversations: &[Option<Tokens>],
    batch_size: usize,
    done: &mut dyn FnMut(usize),
) -> Result<Vec<Option<f64>>> {
    in_batches(conversations, batch_size, done, &mut |rows| {
        Ok(values(model.scores(rows)?.into_data())?
            .into_iter()
            .map(f64::from)
            .collect())
    })
}

/// `score` on the present rows, `batch_size` at a time (`done` hears how
/// many each time), one result per row it is given; `None` where a row is
/// absent.
pub(crate) fn in_batches<T: Clone>(
    rows: &[Option<Tokens>],
    batch_size: usize,
    done: &mut dyn FnMut(usize),
    score: &mut dyn FnMut(&[&Tokens]) -> Result<Vec<T>>,
) -> Result<Vec<Option<T>>> {
    let present: Vec<(usize, &Tokens)> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.as_ref().map(|t| (i, t)))
        .collect();
    let mut out = vec![None; rows.len()];
    for chunk in present.chunks(batch_size.max(1)) {
        let tokens: Vec<&Tokens> = chunk.iter().map(|(_, t)| *t).collect();
        for ((i, _), v) in chunk.iter().zip(score(&tokens)?) {
            out[*i] = Some(v);
        }
        done(chunk.len());
    }
    Ok(out)
}

/// Writes `table` to `output` with its columns and rows unchanged and
/// `fields` added, their values computed per record batch.
pub(crate) fn with_columns(
    table: &TableFile,
    output: &Output,
    provenance: &Provenance,
    fields: Vec<Field>,
    compute: &mut dyn FnMut(&RecordBatch) -> Result<Vec<ArrayRef>>,
) -> Result<TableSummary> {
    let spec = table.core_spec()?;
    let mut all: Vec<Arc<Field>> = table.schema().fields().iter().cloned().collect();
    all.extend(fields.into_iter().map(Arc::new));
    let schema = Arc::new(Schema::new_with_metadata(
        all,
        table.schema().metadata().clone(),
    ));
    let mut writer = TableWriter::with_schema(output, spec, schema.clone(), provenance)?;
    for batch in table.batches()? {
        let batch = batch?;
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.extend(compute(&batch)?);
        let batch = RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| Error::Data(format!("{}: {e}", table.path().display())))?;
        writer.write(&batch)?;
    }
    Ok(writer.finish()?)
}

pub(crate) fn string_column<'a>(
    batch: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a StringArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| Error::Input(format!("{}: no string column `{name}`", path.display())))
}

/// Adds preference-model score columns to a `responses`, `revisions`,
/// `pairs` or `labels` table: `pm_score` for the answer (`text`), or
/// `pm_score_a` and `pm_score_b` for the two answers. A score is the PM's
/// scalar on the conversation (prompt as a user turn, then the answer); an
/// answer longer than `max_len` tokens is cut, and one whose prompt alone
/// fills it gets a null score.
pub fn score_table(
    pm_dir: &Path,
    input: &Path,
    output: &Output,
    settings: &ScoreSettings,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ScoreSummary> {
    settings.validate()?;
    let (batch_size, max_len) = (settings.batch_size, settings.max_len);
    let _claim = output.claim(&[input])?;
    let table = TableFile::open(input)?;
    let spec = table.core_spec()?;
    let columns = answer_columns(spec.name).ok_or_else(|| {
        Error::Input(format!(
            "{}: `score` adds preference-model scores to responses, revisions, pairs or labels \
             tables, not a `{}` table",
            input.display(),
            spec.name
        ))
    })?;
    if let Some(existing) = columns
        .iter()
        .find(|(_, out)| table.schema().column_with_name(out).is_some())
    {
        return Err(Error::Input(format!(
            "{}: the table already has a `{}` column",
            input.display(),
            existing.1
        )));
    }
    let dir = ModelDir::open(pm_dir)?;
    let provenance = score_provenance(&table, settings, &dir.provenance.content_hash)?;
    if let Output::Path(out) = output
        && let Some(summary) = finished_table(out, spec, &provenance.build_key(spec))
    {
        return Ok(ScoreSummary {
            table: summary,
            cached: true,
            scored: 0,
            unscored: 0,
        });
    }
    let device = select_device(DeviceChoice::Cpu, false)?;
    let pm = open_preference_model(pm_dir, &device)?;
    let formatter = Formatter::new(&dir, max_len)?;
    let fields = columns
        .iter()
        .map(|(_, out)| Field::new(*out, DataType::Float64, true))
        .collect();
    let total = table.num_rows() * columns.len() as u64;
    let (mut scored, mut unscored) = (0u64, 0u64);
    let summary = with_columns(&table, output, &provenance, fields, &mut |batch| {
        let prompts = string_column(batch, "prompt", input)?;
        let mut out: Vec<ArrayRef> = Vec::with_capacity(columns.len());
        for (answer, _) in columns.iter() {
            let answers = string_column(batch, answer, input)?;
            let mut conversations: Vec<Option<Tokens>> = Vec::with_capacity(batch.num_rows());
            for row in 0..batch.num_rows() {
                conversations.push(formatter.encode(
                    prompts.value(row),
                    answers.value(row),
                    true,
                )?);
            }
            let scores = scalar_scores(&pm, &conversations, batch_size, &mut |n| {
                scored += n as u64;
                progress(scored + unscored, total);
            })?;
            unscored += scores.iter().filter(|s| s.is_none()).count() as u64;
            out.push(Arc::new(Float64Array::from(scores)));
        }
        Ok(out)
    })?;
    Ok(ScoreSummary {
        table: summary,
        cached: false,
        scored,
        unscored,
    })
}
