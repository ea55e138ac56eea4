//! `charter respond`: a `prompts` table → a `responses` table.

use std::path::Path;

use anyhow::{Context, Result};
use charter_stages::{Model, respond};
use charter_table::{Output, TableFile};

use crate::cli::RespondArgs;

pub(crate) fn run(args: RespondArgs, quiet: bool) -> Result<()> {
    let output = Output::parse(&args.output);
    super::check_json_output(args.json, &output)?;
    let settings = &args.settings;
    let input = TableFile::open(&args.input)?;
    let mut model = Model::open(&args.model, settings.generation.threads)?;
    let mut guards = super::guard::Guards::open(&args.guard, &args.model)?;

    let out = super::OutputFile::new(Path::new(&args.output), "responses.parquet")?;
    let path = out.path();

    let bar = crate::progress::rows_bar(quiet);
    let started = std::time::Instant::now();
    let guard = guards
        .as_mut()
        .map(|g| g as &mut dyn charter_stages::StreamGuard);
    let summary = respond(&input, &mut model, settings, guard, path, &mut |p| {
        bar.set_length(p.rows_total);
        bar.set_position(p.rows_done);
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("{:.0} tok/s", p.tokens as f64 / secs));
    })
    .with_context(|| format!("respond to {}", input.path().display()))?;
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();

    out.finish()?;
    let report = serde_json::json!({
        "rows": summary.table.rows,
        "cached": summary.cached,
        "resumed_rows": summary.resumed_rows,
        "generated_rows": summary.generated_rows,
        "generated_tokens": summary.generated_tokens,
        "context_overflows": summary.context_overflows,
        "seconds": elapsed,
        "output": output.display(),
        "content_hash": summary.table.content_hash,
        "build_key": summary.table.build_key,
    });
    if args.json {
        println!("{report}");
    } else if !quiet {
        if summary.cached {
            eprintln!(
                "{} is up to date (same build key): nothing to do",
                output.display()
            );
        } else {
            eprintln!(
                "answered {} rows ({} resumed) with {} tokens in {:.1}s ({:.1} tok/s); {} prompts did not fit the context",
                summary.generated_rows,
                summary.resumed_rows,
                summary.generated_tokens,
                elapsed,
                summary.generated_tokens as f64 / elapsed.max(1e-9),
                summary.context_overflows
            );
        }
        eprintln!("{}", super::written(&output, &summary.table));
    }
    Ok(())
}
