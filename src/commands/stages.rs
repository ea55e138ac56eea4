//! `critique`, `revise`, `pair`, `label`, `rate` and `export`: the
//! Constitutional AI stages after `respond`.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use charter_stages::{Constitution, LabelSettings, Model, StageProgress, StageSummary};
use charter_table::TableFile;

use crate::cli::{
    CritiqueArgs, EvalLabellerArgs, ExportArgs, LabelArgs, ModelStageFlags, PairArgs, RateArgs,
    ReviseArgs,
};

fn open(stage: &ModelStageFlags, threads: usize) -> Result<(Model, Constitution)> {
    let constitution = Constitution::load(&stage.constitution)?;
    let model = Model::open(&stage.model, threads)?;
    Ok((model, constitution))
}

/// Runs a generating stage with a progress bar and prints its summary.
///
/// `out` is the command line's output (`-` for standard output); `body`
/// gets the file to write.
pub(super) fn run_stage(
    name: &str,
    out: &Path,
    quiet: bool,
    json: bool,
    body: impl FnOnce(&Path, &mut dyn FnMut(StageProgress)) -> charter_stages::Result<StageSummary>,
) -> Result<()> {
    let file = super::OutputFile::new(out, &format!("{name}.parquet"))?;
    super::check_json_output(json, file.output())?;
    let bar = crate::progress::rows_bar(quiet);
    let started = Instant::now();
    let summary = body(file.path(), &mut |p| {
        bar.set_length(p.rows_total);
        bar.set_position(p.rows_done);
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("{:.0} tok/s", p.tokens as f64 / secs));
    })
    .with_context(|| format!("{name} → {}", file.output().display()))?;
    bar.finish_and_clear();
    file.finish()?;
    let elapsed = started.elapsed().as_secs_f64();
    let peak = super::peak_memory();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "stage": name,
                "rows": summary.table.rows,
                "cached": summary.cached,
                "resumed_rows": summary.resumed_rows,
                "generated_rows": summary.generated_rows,
                "generated_tokens": summary.generated_tokens,
                "context_overflows": summary.context_overflows,
                "scored_tokens": summary.scored_tokens,
                "prefilled_tokens": summary.prefilled_tokens,
                "reused_tokens": summary.reused_tokens,
                "seconds": elapsed,
                "peak_memory_bytes": peak,
                "output": file.output().display(),
                "content_hash": summary.table.content_hash,
                "build_key": summary.table.build_key,
            })
        );
    } else if !quiet {
        if summary.cached {
            eprintln!(
                "{} is up to date (same build key): nothing to do",
                file.output().display()
            );
        } else {
            eprintln!(
                "{name}: {} rows ({} resumed), {} tokens in {:.1}s ({:.1} tok/s), {} did not fit the context; peak memory {}",
                summary.generated_rows,
                summary.resumed_rows,
                summary.generated_tokens,
                elapsed,
                summary.generated_tokens as f64 / elapsed.max(1e-9),
                summary.context_overflows,
                super::gigabytes(peak)
            );
            if summary.scored_tokens > 0 {
                eprintln!(
                    "{name}: scored {} tokens; {} more came from the cache of the prompt every row shares",
                    summary.scored_tokens, summary.reused_tokens
                );
            } else if summary.reused_tokens > 0 {
                eprintln!(
                    "{name}: prefilled {} prompt tokens; {} more came from the cache of the prompt every row shares",
                    summary.prefilled_tokens, summary.reused_tokens
                );
            }
        }
        eprintln!("{}", super::written(file.output(), &summary.table));
    }
    Ok(())
}

pub(crate) fn critique(args: CritiqueArgs, quiet: bool) -> Result<()> {
    let settings = &args.settings;
    let input = TableFile::open(&args.input)?;
    let (mut model, constitution) = open(&args.stage, settings.generation.threads)?;
    run_stage(
        "critique",
        &args.output,
        quiet,
        args.stage.json,
        |out, p| charter_stages::critique(&input, &mut model, &constitution, settings, out, p),
    )
}

pub(crate) fn revise(args: ReviseArgs, quiet: bool) -> Result<()> {
    let settings = &args.generation;
    let input = TableFile::open(&args.input)?;
    let (mut model, constitution) = open(&args.stage, settings.threads)?;
    run_stage("revise", &args.output, quiet, args.stage.json, |out, p| {
        charter_stages::revise(&input, &mut model, &constitution, settings, out, p)
    })
}

pub(crate) fn label(args: LabelArgs, quiet: bool) -> Result<()> {
    let settings = &args.settings;
    let input = TableFile::open(&args.input)?;
    let (mut model, constitution) = open(&args.stage, settings.generation.threads)?;
    run_stage("label", &args.output, quiet, args.stage.json, |out, p| {
        charter_stages::label(&input, &mut model, &constitution, settings, out, p)
    })
}

pub(crate) fn rate(args: RateArgs, quiet: bool) -> Result<()> {
    let settings = &args.settings;
    let input = TableFile::open(&args.input)?;
    let (mut model, constitution) = open(&args.stage, settings.generation.threads)?;
    run_stage("rate", &args.output, quiet, args.stage.json, |out, p| {
        charter_stages::rate(&input, &mut model, &constitution, settings, out, p)
    })
}

pub(crate) fn pair(args: PairArgs, quiet: bool) -> Result<()> {
    let file = super::OutputFile::new(&args.output, "pairs.parquet")?;
    super::check_json_output(args.json, file.output())?;
    let input = TableFile::open(&args.input)?;
    let against = args.against.as_deref().map(TableFile::open).transpose()?;
    let summary = charter_stages::pair(&input, against.as_ref(), file.path())
        .with_context(|| format!("pair → {}", file.output().display()))?;
    file.finish()?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "stage": "pair",
                "rows": summary.table.rows,
                "cached": summary.cached,
                "unpaired": summary.unpaired,
                "output": file.output().display(),
                "content_hash": summary.table.content_hash,
            })
        );
    } else if !quiet {
        eprintln!(
            "pair: {} pairs, {} answers without a partner",
            summary.table.rows, summary.unpaired
        );
        eprintln!("{}", super::written(file.output(), &summary.table));
    }
    Ok(())
}

pub(crate) fn export(args: ExportArgs, quiet: bool) -> Result<()> {
    let input = TableFile::open(&args.input)?;
    let file = super::OutputFile::new(&args.output, "export.jsonl")?;
    let rows = charter_stages::export(&input, &args.settings, file.path())
        .with_context(|| format!("export → {}", file.output().display()))?;
    file.finish()?;
    if !quiet {
        eprintln!("wrote {rows} rows to {}", file.output().display());
    }
    Ok(())
}

pub(crate) fn eval_labeller(args: EvalLabellerArgs) -> Result<()> {
    let settings = LabelSettings {
        swap: !args.no_swap,
        cot: args.cot,
        clamp: (0.0, 1.0),
        generation: args.generation.clone(),
    };
    let comparisons = charter_stages::read_comparisons(&args.comparisons)?;
    let (mut model, constitution) = open(&args.stage, settings.generation.threads)?;
    let started = Instant::now();
    let report = charter_stages::eval_labeller(&comparisons, &mut model, &constitution, &settings)
        .with_context(|| format!("evaluating on {}", args.comparisons.display()))?;
    let (seconds, peak) = (started.elapsed().as_secs_f64(), super::peak_memory());
    let mut json = serde_json::to_value(&report)?;
    json["seconds"] = serde_json::json!(seconds);
    json["peak_memory_bytes"] = serde_json::json!(peak);
    let json = serde_json::to_string_pretty(&json)?;
    if let Some(out) = &args.output {
        charter_table::write_atomic(out, format!("{json}\n").as_bytes())
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if args.stage.json {
        println!("{json}");
        return Ok(());
    }
    println!(
        "labeller {} on {} comparisons ({})",
        model.dir.provenance.name,
        report.comparisons,
        if settings.swap {
            "both orders"
        } else {
            "one order"
        }
    );
    println!("alignment      {:.1}%", 100.0 * report.alignment);
    if let Some(bias) = report.position_bias {
        println!(
            "position bias  {:.1}% (same slot won in both orders)",
            100.0 * bias
        );
    }
    println!("mean p(first)  {:.3}", report.mean_p_first);
    println!(
        "speed          {:.2} comparisons/s ({seconds:.1} s), peak memory {}",
        report.comparisons as f64 / seconds.max(1e-9),
        super::gigabytes(peak)
    );
    println!("calibration    confidence   comparisons   agreement   mean confidence");
    for b in &report.calibration {
        let pct = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
        println!(
            "               {:.1}–{:.1}      {:>11}   {:>9}   {:>15}",
            b.from,
            b.to,
            b.comparisons,
            pct(b.agreement),
            pct(b.mean_confidence)
        );
    }
    Ok(())
}

pub(crate) fn eval_policy(args: crate::cli::EvalPolicyArgs, quiet: bool) -> Result<()> {
    let settings = &args.settings;
    let constitution = Constitution::load(&args.constitution)?;
    let prompts = TableFile::open(&args.input)?;
    let labeller = args.labeller.clone().unwrap_or_else(|| args.a.clone());
    let bar = crate::progress::rows_bar(quiet);
    let report = charter_stages::eval_policy(
        &prompts,
        charter_stages::Contestants {
            a: &args.a,
            b: &args.b,
            labeller: &labeller,
        },
        &constitution,
        settings,
        &args.output,
        &mut |step, p| {
            bar.set_message(match step {
                charter_stages::PolicyEvalStep::RespondA => "policy A answers",
                charter_stages::PolicyEvalStep::RespondB => "policy B answers",
                charter_stages::PolicyEvalStep::Label => "labelling",
            });
            bar.set_length(p.rows_total);
            bar.set_position(p.rows_done);
        },
    )
    .with_context(|| {
        format!(
            "evaluating {} against {}",
            args.b.display(),
            args.a.display()
        )
    })?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "{} vs {} on {} comparisons, judged by {} against {}",
        args.b.display(),
        args.a.display(),
        report.comparisons,
        labeller.display(),
        constitution.name
    );
    println!(
        "win rate  {:.1}% (95% CI {:.1}–{:.1}%); {} wins, {} losses, {} ties",
        100.0 * report.win_rate,
        100.0 * report.win_rate_ci.0,
        100.0 * report.win_rate_ci.1,
        report.wins,
        report.losses,
        report.ties
    );
    println!(
        "Elo       {:+.0} (95% CI {:+.0} to {:+.0})",
        report.elo, report.elo_ci.0, report.elo_ci.1
    );
    if let Some(c) = report.order_consistency {
        println!(
            "labeller decided the same in both orders for {:.1}%",
            100.0 * c
        );
    }
    println!("tables and report.json in {}", args.output.display());
    Ok(())
}
