//! `export`: charter's tables in the layouts common trainers read.
//!
//! - `preference`, from a `labels` table: one JSON object per line with
//!   `prompt`, `chosen` and `rejected` text, plus `p_chosen` (the soft
//!   label of the chosen answer), `principle_id` and the label's `id`. With
//!   `chat`, `prompt`, `chosen` and `rejected` are message lists
//!   (`[{"role": "user", "content": …}]`, `[{"role": "assistant", …}]`),
//!   the conversational layout of preference trainers.
//! - `sft`, from a `revisions` table: `prompt` and `completion` text plus
//!   `messages` (the user turn and the revised answer), the revision's
//!   `round` and `id`. Every round's revision is a training example.
//!
//! Rows keep table order; the file is written atomically.

use std::io::Write;
use std::path::Path;

use charter_table::{LABELS, Label, REVISIONS, Revision, TableFile};
use serde_json::json;

use crate::error::{Error, Result};

/// Export layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// `prompt` / `chosen` / `rejected` from a `labels` table.
    Preference,
    /// `prompt` / `completion` / `messages` from a `revisions` table.
    Sft,
}

impl ExportFormat {
    /// The layout a table of this name exports to by default.
    pub fn of_table(name: Option<&str>) -> Option<ExportFormat> {
        match name {
            Some(n) if n == LABELS.name => Some(ExportFormat::Preference),
            Some(n) if n == REVISIONS.name => Some(ExportFormat::Sft),
            _ => None,
        }
    }
}

/// Settings of an export: the `export` command's flags and a build file's
/// `export` stage.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct ExportSettings {
    /// The layout [default: `preference` for a `labels` table, `sft` for `revisions`].
    #[arg(long, value_enum)]
    pub format: Option<ExportFormat>,
    /// Preference rows as chat message lists instead of plain text.
    #[arg(long)]
    pub chat: bool,
}

/// Writes `input` to `out` as JSON lines; returns the rows written.
pub fn export(input: &TableFile, settings: &ExportSettings, out: &Path) -> Result<u64> {
    let chat = settings.chat;
    let format = match settings.format {
        Some(f) => f,
        None => ExportFormat::of_table(input.table_name()).ok_or_else(|| {
            Error::invalid(
                "format",
                format!(
                    "{} is a `{}` table: say which layout, `preference` (labels) or `sft` (revisions)",
                    input.path().display(),
                    input.table_name().unwrap_or("?")
                ),
            )
        })?,
    };
    let is_jsonl = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("json"));
    if !is_jsonl {
        return Err(Error::Settings(format!(
            "{}: export writes JSON lines; name the output `*.jsonl` (the Parquet tables themselves open in polars, pandas and DuckDB)",
            out.display()
        )));
    }
    let _claim = charter_table::claim_output(out, &[input.path()])?;
    let lines: Vec<serde_json::Value> = match format {
        ExportFormat::Preference => {
            input.expect(&LABELS)?;
            let rows: Vec<Label> = input.rows()?;
            rows.into_iter()
                .map(|l| {
                    let p_chosen = if l.chosen_id == l.response_a_id {
                        l.p_a
                    } else {
                        1.0 - l.p_a
                    };
                    let (prompt, chosen, rejected) = if chat {
                        (
                            json!([{"role": "user", "content": l.prompt}]),
                            json!([{"role": "assistant", "content": l.chosen}]),
                            json!([{"role": "assistant", "content": l.rejected}]),
                        )
                    } else {
                        (json!(l.prompt), json!(l.chosen), json!(l.rejected))
                    };
                    json!({
                        "id": l.id,
                        "prompt": prompt,
                        "chosen": chosen,
                        "rejected": rejected,
                        "p_chosen": p_chosen,
                        "principle_id": l.principle_id,
                    })
                })
                .collect()
        }
        ExportFormat::Sft => {
            input.expect(&REVISIONS)?;
            let rows: Vec<Revision> = input.rows()?;
            rows.into_iter()
                .map(|r| {
                    json!({
                        "id": r.id,
                        "prompt": r.prompt,
                        "completion": r.text,
                        "messages": [
                            {"role": "user", "content": r.prompt},
                            {"role": "assistant", "content": r.text},
                        ],
                        "round": r.round,
                    })
                })
                .collect()
        }
    };
    let io = |e: std::io::Error| Error::io(out, e);
    let mut tmp = charter_table::output_tempfile(out).map_err(io)?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        for line in &lines {
            serde_json::to_writer(&mut w, line).map_err(|e| Error::io(out, e.into()))?;
            w.write_all(b"\n").map_err(io)?;
        }
        w.flush().map_err(io)?;
    }
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(out).map_err(|e| io(e.error))?;
    Ok(lines.len() as u64)
}
