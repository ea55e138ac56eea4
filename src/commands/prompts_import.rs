//! `charter prompts import`: prompt files → a deduplicated `prompts` table.

use anyhow::{Context, Result};
use charter_table::dedup::{DedupCounts, Verdict, dedup};
use charter_table::import::{
    Format, ImportOptions, RawPrompt, ReadCounts, input_name, read_prompts,
};
use charter_table::{InputRef, Output, PROMPTS, Prompt, Provenance, Record, TableWriter};

use crate::cli::{FormatArg, ImportArgs};

/// Version of the import stage: bump when the same inputs would give different rows.
const STAGE_VERSION: u32 = 1;

pub(crate) fn run(args: ImportArgs, quiet: bool) -> Result<()> {
    let output = Output::parse(&args.output);
    super::check_json_output(args.json, &output)?;
    let dedup_options = super::dedup_options(&args.dedup, true)?;
    anyhow::ensure!(
        args.inputs.iter().filter(|p| p.as_os_str() == "-").count() <= 1,
        "standard input (`-`) can be read only once"
    );
    let inputs: Vec<&std::path::Path> = args.inputs.iter().map(|p| p.as_path()).collect();
    let _claim = super::claim(&output, &inputs)?;
    let options = ImportOptions {
        field: args.field.clone(),
        source: args.source.clone(),
        skip_invalid: args.skip_invalid,
    };

    let progress = crate::progress::spinner(quiet);
    let mut raw: Vec<RawPrompt> = Vec::new();
    let mut counts = ReadCounts::default();
    let mut inputs = Vec::new();
    for path in &args.inputs {
        progress.set_message(format!("reading {}", path.display()));
        let bytes = super::read_input(path)?;
        let format = match args.format {
            FormatArg::Auto => {
                Format::from_extension(path).unwrap_or_else(|| Format::sniff(&bytes))
            }
            FormatArg::Jsonl => Format::Jsonl,
            FormatArg::Csv => Format::Csv,
            FormatArg::Parquet => Format::Parquet,
            FormatArg::Text => Format::Text,
        };
        let name = input_name(path);
        read_prompts(&name, &bytes, format, &options, &mut raw, &mut counts)?;
        inputs.push(InputRef {
            name: name
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            content_hash: blake3::hash(&bytes).to_hex().to_string(),
        });
    }
    if raw.is_empty() {
        anyhow::bail!(
            "no prompts found in {} (read {} records: {} empty, {} invalid)",
            args.inputs
                .iter()
                .map(|p| input_name(p).display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            counts.read,
            counts.empty,
            counts.invalid
        );
    }

    progress.set_message(format!("deduplicating {} prompts", raw.len()));
    let verdicts = dedup(&raw, &dedup_options)?;
    let dups = DedupCounts::of(&verdicts);

    progress.set_message("writing");
    let provenance = Provenance {
        stage: "prompts.import".into(),
        stage_version: STAGE_VERSION,
        settings: serde_json::json!({
            "field": args.field,
            "source": args.source,
            "skip_invalid": args.skip_invalid,
            "dedup": super::dedup_settings(&dedup_options),
        }),
        inputs,
        model_hash: None,
        constitution_hash: None,
    };
    let rows: Vec<Prompt> = raw
        .into_iter()
        .zip(&verdicts)
        .filter(|(_, v)| **v == Verdict::Keep)
        .map(|(r, _)| {
            Prompt {
                id: String::new(),
                text: r.text,
                source: r.source,
                source_row: r.source_row,
                tags: r.tags,
            }
            .with_id()
        })
        .collect();
    let mut writer = TableWriter::create(&output, &PROMPTS, &provenance)
        .with_context(|| format!("cannot write {}", output.display()))?;
    for chunk in rows.chunks(charter_table::ROW_GROUP_ROWS) {
        writer.write_rows(chunk)?;
    }
    let summary = writer.finish()?;
    progress.finish_and_clear();

    let report = serde_json::json!({
        "read": counts.read,
        "empty": counts.empty,
        "invalid": counts.invalid,
        "exact_duplicates": dups.exact,
        "near_duplicates": dups.near,
        "kept": dups.kept,
        "output": output.display(),
        "content_hash": summary.content_hash,
        "build_key": summary.build_key,
    });
    if args.json {
        println!("{report}");
    } else if !quiet {
        eprintln!(
            "read {}, empty {}, invalid {}, exact duplicates {}, near duplicates {}, kept {}",
            counts.read, counts.empty, counts.invalid, dups.exact, dups.near, dups.kept
        );
        eprintln!("{}", super::written(&output, &summary));
    }
    Ok(())
}
