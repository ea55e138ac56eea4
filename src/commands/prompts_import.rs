//! `charter prompts import`: prompt files → a deduplicated `prompts` table.

use anyhow::{Context, Result};
use charter_stages::import_prompts;
use charter_table::Output;

use crate::cli::ImportArgs;

pub(crate) fn run(args: ImportArgs, quiet: bool) -> Result<()> {
    let output = Output::parse(&args.output);
    super::check_json_output(args.json, &output)?;
    let progress = crate::progress::spinner(quiet);
    let summary = import_prompts(&args.inputs, &args.settings, &output, &mut |m| {
        progress.set_message(m)
    })
    .with_context(|| format!("prompts import → {}", output.display()))?;
    progress.finish_and_clear();
    let (counts, dups) = (summary.read, summary.dups);
    let wrote = super::Wrote {
        output: &output,
        table: &summary.table,
        cached: summary.cached,
    };
    if args.json {
        wrote.json(serde_json::json!({
            "read": counts.read,
            "empty": counts.empty,
            "invalid": counts.invalid,
            "exact_duplicates": dups.exact,
            "near_duplicates": dups.near,
        }));
    } else {
        wrote.say(quiet, "files and settings", || {
            format!(
                "read {}, empty {}, invalid {}, exact duplicates {}, near duplicates {}, kept {}",
                counts.read, counts.empty, counts.invalid, dups.exact, dups.near, dups.kept
            )
        });
    }
    Ok(())
}
