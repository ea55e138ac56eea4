//! `charter dedup`: drop duplicate rows of any core table by one text column.

use anyhow::{Context, Result};
use arrow_array::BooleanArray;
use charter_table::dedup::{DedupCounts, Verdict, dedup};
use charter_table::{InputRef, Output, Provenance, TableFile, TableWriter, Value, column_cells};

use crate::cli::DedupArgs;

/// Version of the dedup stage.
const STAGE_VERSION: u32 = 1;

pub(crate) fn run(args: DedupArgs, quiet: bool) -> Result<()> {
    let output = Output::parse(&args.output);
    super::check_json_output(args.json, &output)?;
    let options = super::dedup_options(&args.dedup, !args.no_exact)?;
    let _claim = super::claim(&output, &[args.input.as_path()])?;
    let table = TableFile::open(&args.input)?;
    let spec = table.core_spec()?;
    let path = table.path().display().to_string();
    let schema = table.schema().clone();
    let column = schema.index_of(&args.column).map_err(|_| {
        anyhow::anyhow!(
            "{path}: no column `{}` (text columns: {})",
            args.column,
            spec.columns
                .iter()
                .filter(|c| c.ty == charter_table::ColumnType::Utf8)
                .map(|c| c.name)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;

    let progress = crate::progress::spinner(quiet);
    progress.set_message(format!("reading {path}"));
    let batches = table
        .batches()?
        .collect::<charter_table::Result<Vec<_>>>()?;
    let mut texts: Vec<&str> = Vec::with_capacity(table.num_rows() as usize);
    let mut nulls = Vec::new();
    let mut row = 0u64;
    for batch in &batches {
        let cells = column_cells(batch, column)
            .ok_or_else(|| anyhow::anyhow!("{path}: column `{}` is not text", args.column))?;
        for cell in cells {
            match cell {
                Value::Str(s) => texts.push(s),
                Value::Null => {
                    // Null text is never a duplicate of anything: keep the row.
                    nulls.push(texts.len());
                    texts.push("");
                }
                _ => anyhow::bail!("{path}: row {row}, column `{}`: not text", args.column),
            }
            row += 1;
        }
    }

    progress.set_message(format!("deduplicating {} rows", texts.len()));
    let mut verdicts = dedup(&texts, &options)?;
    for i in nulls {
        verdicts[i] = Verdict::Keep;
    }
    let counts = DedupCounts::of(&verdicts);

    progress.set_message("writing");
    let provenance = Provenance {
        stage: "dedup".into(),
        stage_version: STAGE_VERSION,
        settings: serde_json::json!({ "column": args.column, "dedup": super::dedup_settings(&options) }),
        inputs: vec![InputRef {
            name: spec.name.to_string(),
            content_hash: table.content_hash_or_compute()?,
        }],
        model_hash: table.metadata().get(charter_table::KEY_MODEL_HASH).cloned(),
        constitution_hash: table
            .metadata()
            .get(charter_table::KEY_CONSTITUTION_HASH)
            .cloned(),
    };
    let mut writer = TableWriter::with_schema(&output, spec, schema, &provenance)
        .with_context(|| format!("cannot write {}", output.display()))?;
    let mut offset = 0;
    for batch in &batches {
        let keep: BooleanArray = verdicts[offset..offset + batch.num_rows()]
            .iter()
            .map(|v| Some(*v == Verdict::Keep))
            .collect();
        offset += batch.num_rows();
        let kept =
            arrow_select::filter::filter_record_batch(batch, &keep).context("filtering rows")?;
        writer.write(&kept)?;
    }
    let summary = writer.finish()?;
    progress.finish_and_clear();

    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "read": texts.len(),
                "exact_duplicates": counts.exact,
                "near_duplicates": counts.near,
                "kept": counts.kept,
                "output": output.display(),
                "content_hash": summary.content_hash,
                "build_key": summary.build_key,
            })
        );
    } else if !quiet {
        eprintln!(
            "read {}, exact duplicates {}, near duplicates {}, kept {}",
            texts.len(),
            counts.exact,
            counts.near,
            counts.kept
        );
        eprintln!("{}", super::written(&output, &summary));
    }
    Ok(())
}
