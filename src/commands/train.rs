//! `charter train sft|pm|dpo|classifier|rl`: a model directory and tables → a trained model directory.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use charter_train::{
    Job, MetricRow, Outcome, RlProgress, train_classifier, train_dpo, train_pm, train_rl, train_sft,
};

use crate::cli::{ScoreArgs, TrainCommand, TrainFlags, TrainProbeArgs};

/// Set by Ctrl-C (or SIGTERM): finish the step, checkpoint, stop.
static INTERRUPT: AtomicBool = AtomicBool::new(false);

pub(crate) fn run(command: TrainCommand, quiet: bool) -> Result<()> {
    let flags = match &command {
        TrainCommand::Sft(a) => &a.flags,
        TrainCommand::Pm(a) => &a.flags,
        TrainCommand::Dpo(a) => &a.flags,
        TrainCommand::Classifier(a) => &a.flags,
        TrainCommand::Rl(a) => &a.flags,
        TrainCommand::Probe(a) => return probe(a, quiet),
    };
    let job = job(flags)?;
    // A second signal while the step finishes falls back to the default (exit at once):
    // the last checkpoint is still intact.
    ctrlc::set_handler(|| {
        if INTERRUPT.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: finishing this step, then writing a checkpoint");
    })
    .context("installing the Ctrl-C handler")?;
    if !quiet {
        eprintln!(
            "training on {}; {} → {}",
            charter_train::describe(job.device)?,
            flags.model.display(),
            flags.output.display()
        );
    }
    let bar = crate::progress::rows_bar(quiet);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps {msg} [{elapsed} < {eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut progress = |m: &MetricRow, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(m.step);
        let accuracy = m
            .accuracy
            .map(|a| format!(" acc {:.0}%", 100.0 * a))
            .unwrap_or_default();
        bar.set_message(format!(
            "loss {:.4}{accuracy} lr {:.2e} {:.0} tok/s",
            m.loss, m.lr, m.tokens_per_s
        ));
    };
    let outcome = match &command {
        TrainCommand::Sft(a) => train_sft(&job, &a.input, &mut progress)
            .with_context(|| format!("train sft from {}", a.flags.model.display()))?,
        TrainCommand::Pm(a) => train_pm(&job, &a.input, a.held_out, &mut progress)
            .with_context(|| format!("train pm from {}", a.flags.model.display()))?,
        TrainCommand::Dpo(a) => {
            let cache = match &a.cache {
                Some(dir) => dir.clone(),
                None => charter_train::default_reference_cache()?,
            };
            train_dpo(&job, &a.input, a.beta, &cache, &mut progress)
                .with_context(|| format!("train dpo from {}", a.flags.model.display()))?
        }
        TrainCommand::Classifier(a) => train_classifier(
            &job,
            &a.input,
            a.role,
            a.held_out,
            a.label_weight,
            &mut progress,
        )
        .with_context(|| format!("train classifier from {}", a.flags.model.display()))?,
        TrainCommand::Rl(a) => {
            let mut on = |event: RlProgress<'_>| match event {
                RlProgress::Step(m, total) => progress(m, total),
                RlProgress::Iteration(it, total) => bar.suspend(|| {
                    if !quiet {
                        eprintln!(
                            "iteration {}/{total}: reward {:.3} (s.d. {:.3}), KL {:.3}, \
                             entropy {:.2}/token, {:.1} tokens/answer ({:.0}% ended), clipped \
                             {:.1}%; sampled {:.0} tok/s, trained {:.0} tok/s",
                            it.iteration,
                            it.reward,
                            it.reward_std,
                            it.kl,
                            it.entropy,
                            it.answer_tokens,
                            100.0 * it.stop_share,
                            100.0 * it.clip_fraction,
                            it.rollout_tokens_per_s,
                            it.update_tokens_per_s
                        );
                    }
                }),
                RlProgress::Eval(e) => bar.suspend(|| {
                    if !quiet {
                        eprintln!(
                            "held out after {} iterations: reward {:.3} (start {:.3}), win rate \
                             {:.3} [{:.3}, {:.3}] against the start, KL {:.3}, refusals \
                             {:.0}%, {:.0} words/answer",
                            e.iteration,
                            e.reward,
                            e.start_reward,
                            e.win_rate,
                            e.win_rate_low,
                            e.win_rate_high,
                            e.kl,
                            100.0 * e.refusal_rate,
                            e.answer_words
                        );
                        if e.over_optimised {
                            eprintln!(
                                "  over-optimisation: the reward rose while the judge's win \
                                 rate fell"
                            );
                        }
                    }
                }),
            };
            let mut rl = a.rl.clone();
            if rl.reward_cache.is_none() {
                rl.reward_cache = Some(charter_train::default_reward_cache()?);
            }
            train_rl(&job, &a.input, &rl, &mut on)
                .with_context(|| format!("train rl from {}", a.flags.model.display()))?
        }
        TrainCommand::Probe(_) => unreachable!("returned above"),
    };
    bar.finish_and_clear();
    match outcome {
        Outcome::UpToDate { dir, record } => {
            if flags.json {
                println!("{record}");
            } else if !quiet {
                eprintln!(
                    "{} is up to date (same base model, inputs and settings): nothing to do",
                    dir.path.display()
                );
            }
            Ok(())
        }
        Outcome::Interrupted { step, checkpoint } => bail!(
            "interrupted after step {step}; the checkpoint is {}: run the same command with \
             --resume to continue",
            checkpoint.display()
        ),
        Outcome::Written { dir, report } => {
            if flags.json {
                println!("{}", serde_json::to_string(&report)?);
            } else if !quiet {
                let (examples, too_long) = match report.objective {
                    "rl" => ("prompts", "prompt and --max-new-tokens"),
                    _ => ("examples", "prompt"),
                };
                eprintln!(
                    "trained {} ({}) on {} {examples} ({} skipped: {too_long} longer than \
                     --max-len) in {} steps; final loss {:.4}",
                    dir.path.display(),
                    report.objective,
                    report.examples,
                    report.skipped,
                    report.steps,
                    report.final_loss
                );
                if let Some(h) = report.held_out {
                    let auroc = h
                        .auroc
                        .map(|a| format!(", AUROC {a:.3}"))
                        .unwrap_or_default();
                    eprintln!(
                        "held out: {} rows; accuracy {:.1}%, loss {:.4}, Brier {:.4}, ECE {:.4}{auroc}",
                        h.pairs,
                        100.0 * h.accuracy,
                        h.loss,
                        h.brier,
                        h.ece
                    );
                }
                eprintln!(
                    "model hash {}; metrics in {}",
                    &dir.provenance.content_hash[..16],
                    dir.path.join("metrics.parquet").display()
                );
            }
            Ok(())
        }
    }
}

fn job(flags: &TrainFlags) -> Result<Job<'_>> {
    Ok(Job {
        model: &flags.model,
        out: &flags.output,
        settings: flags.config.settings()?,
        device: flags.config.device,
        dtype: flags.config.dtype,
        resume: flags.resume,
        interrupt: &INTERRUPT,
    })
}

pub(crate) fn score(args: ScoreArgs, quiet: bool) -> Result<()> {
    let output = charter_table::Output::parse(&args.output);
    super::check_json_output(args.json, &output)?;
    let bar = crate::progress::rows_bar(quiet);
    let summary = charter_train::score_table(
        &args.model,
        &args.input,
        &output,
        &args.settings,
        &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )
    .with_context(|| format!("score {}", args.input.display()))?;
    bar.finish_and_clear();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "rows": summary.table.rows,
                "cached": summary.cached,
                "scored": summary.scored,
                "unscored": summary.unscored,
                "output": output.display(),
                "content_hash": summary.table.content_hash,
            })
        );
    } else {
        let wrote = super::Wrote {
            output: &output,
            table: &summary.table,
            cached: summary.cached,
        };
        wrote.say(quiet, "table, model and settings", || {
            format!(
                "scored {} answers ({} left without a score: prompt longer than --max-len)",
                summary.scored, summary.unscored
            )
        });
    }
    Ok(())
}

/// `charter train probe`: no gradient through the model, so none of the
/// trainer's machinery (device, checkpoints, schedule).
fn probe(args: &TrainProbeArgs, quiet: bool) -> Result<()> {
    let mut say = |what: &str| {
        if !quiet {
            eprintln!("{what}");
        }
    };
    let charter_train::TrainedProbe { probe, cached, .. } =
        charter_stages::Model::open(&args.model, args.threads)
            .map_err(charter_train::Error::from)
            .and_then(|mut policy| {
                charter_train::train_probe(
                    &mut policy,
                    &args.input,
                    &args.output,
                    &args.settings,
                    &mut say,
                )
            })
            .with_context(|| format!("train probe on {}", args.model.display()))?;
    let mut record = serde_json::to_value(&probe)?;
    if let Some(r) = record.as_object_mut() {
        r.remove("weights");
        r.insert("up_to_date".into(), cached.into());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else if !quiet {
        let held = match &probe.report {
            Some(r) => format!(
                "; held out {} rows: AUROC {}, loss {:.3}, ECE {:.3}",
                probe.held_out_rows,
                r.auroc.map_or("n/a".into(), |a| format!("{a:.3}")),
                r.loss,
                r.ece
            ),
            None => String::new(),
        };
        eprintln!(
            "{} {}: {} weights on {} rows ({} answer prefixes), loss {:.4}{held}",
            if cached { "up to date" } else { "wrote" },
            args.output.display(),
            probe.weights.len(),
            probe.rows,
            probe.prefixes,
            probe.loss
        );
    }
    Ok(())
}
