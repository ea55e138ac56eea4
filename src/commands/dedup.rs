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
    let wrote = super::Wrote {
        output: &output,
        table: &summary.table,
        cached: summary.cached,
    };
    if args.json {
        wrote.json(serde_json::json!({
            "read": read,
            "exact_duplicates": dups.exact,
            "near_duplicates": dups.near,
        }));
    } else {
        wrote.say(quiet, "input and settings", || {
            format!(
                "read {read}, exact duplicates {}, near duplicates {}, kept {}",
                dups.exact, dups.near, dups.kept
            )
        });
    }
    Ok(())
}
