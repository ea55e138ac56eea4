//! `charter filter`: flag degenerate generated rows and drop the ones the settings condemn.

use anyhow::{Context, Result};
use charter_stages::{Flag, filter_table};
use charter_table::{Output, TableFile};

use crate::cli::FilterArgs;

pub(crate) fn run(args: FilterArgs, quiet: bool) -> Result<()> {
    let output = Output::parse(&args.output);
    super::check_json_output(args.json, &output)?;
    let table = TableFile::open(&args.input)?;
    let summary = filter_table(&table, &args.settings, &output)
        .with_context(|| format!("filter → {}", output.display()))?;
    let flagged = |f: Flag| summary.flagged.get(&f).copied().unwrap_or(0);
    let wrote = super::Wrote {
        output: &output,
        table: &summary.table,
        cached: summary.cached,
    };
    if args.json {
        let flags: serde_json::Map<String, serde_json::Value> = Flag::ALL
            .iter()
            .map(|f| (f.as_str().to_string(), flagged(*f).into()))
            .collect();
        wrote.json(serde_json::json!({
            "read": summary.read,
            "flagged": flags,
            "dropped": summary.dropped,
        }));
    } else {
        wrote.say(quiet, "input and settings", || {
            let counts: Vec<String> = Flag::ALL
                .iter()
                .map(|f| {
                    let kept = if args.settings.drop.contains(f) {
                        ""
                    } else {
                        " (kept)"
                    };
                    format!("{f} {}{kept}", flagged(*f))
                })
                .collect();
            format!(
                "read {}, flagged: {}; dropped {}, kept {}",
                summary.read,
                counts.join(", "),
                summary.dropped,
                summary.table.rows
            )
        });
    }
    Ok(())
}
