//! `charter dedup`: drop duplicate rows of any core table by one text column.

use anyhow::{Context, Result};
use charter_stages::dedup_table;
use charter_table::{Output, TableFile};

use crate::cli::DedupArgs;

pub(crate) fn run(args: DedupArgs, quiet: bool) -> Result<()> {
    let output = Output::parse(&args.output);
    super::check_json_output(args.json, &output)?;
    let table = TableFile::open(&args.input)?;
    let progress = crate::progress::spinner(quiet);
    let summary = dedup_table(&table, &args.settings, &output, &mut |m| {
        progress.set_message(m)
    })
    .with_context(|| format!("dedup → {}", output.display()))?;
    progress.finish_and_clear();
    let (read, dups) = (summary.read.read, summary.dups);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "read": read,
                "exact_duplicates": dups.exact,
                "near_duplicates": dups.near,
                "kept": summary.table.rows,
                "cached": summary.cached,
                "output": output.display(),
                "content_hash": summary.table.content_hash,
                "build_key": summary.table.build_key,
            })
        );
    } else {
        super::summarize(
            quiet,
            &output,
            &summary.table,
            summary.cached,
            "input and settings",
            || {
                format!(
                    "read {read}, exact duplicates {}, near duplicates {}, kept {}",
                    dups.exact, dups.near, dups.kept
                )
            },
        );
    }
    Ok(())
}
