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
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "read": counts.read,
                "empty": counts.empty,
                "invalid": counts.invalid,
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
            "files and settings",
            || {
                format!(
                    "read {}, empty {}, invalid {}, exact duplicates {}, near duplicates {}, kept {}",
                    counts.read, counts.empty, counts.invalid, dups.exact, dups.near, dups.kept
                )
            },
        );
    }
    Ok(())
}
