//! `charter build`: run a build file's stages in dependency order, each
//! rebuilt only when its build key changed; `--dry-run` says what would run and why.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use charter_build::{
    BuildCache, BuildPlan, K8sLaunch, Launch, OutcomeStatus, ShardState, SlurmLaunch, StageOutcome,
    k8s_manifests, slurm_script,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::cli::{BuildArgs, EmitArg, SubmitArg};

/// Set by the first Ctrl-C, SIGTERM or SIGUSR1: a generating stage stops
/// after committing its current window, a training stage after its current
/// step (with a checkpoint), and the build before its next stage.
static INTERRUPT: AtomicBool = AtomicBool::new(false);

/// What a signal does: the first asks the build to stop where it can keep
/// its work; a second ends the process at once (journals keep what was
/// committed).
fn on_signal() {
    if INTERRUPT.swap(true, Ordering::SeqCst) {
        std::process::exit(130);
    }
    eprintln!(
        "\ninterrupted: stopping once the current window is committed (a training stage: \
         after this step, with a checkpoint); again to stop at once"
    );
}

pub(crate) fn run(args: BuildArgs, quiet: bool) -> Result<()> {
    let build = BuildPlan::load(&args.file)?;
    if let Some(kind) = args.emit {
        print!("{}", emit(&build, kind, &args)?);
        return Ok(());
    }
    if let Some(SubmitArg::Slurm) = args.submit {
        return submit_slurm(&build, &args);
    }
    if args.status {
        return status(&build, shard_count(&build, args.shards)?, args.json);
    }
    let plan = if let Some(shard) = args.shard {
        build.for_shard(shard)?
    } else if args.merge {
        build.merged(shard_count(&build, args.shards)?)?
    } else {
        build
    };
    if args.dry_run {
        return dry_run(&plan, &args.force, args.json);
    }
    for name in &args.force {
        if plan.force(name)? && !quiet {
            eprintln!("--force {name}: removed its output");
        }
    }
    let total = plan.stages.len();
    // Ctrl-C and SIGTERM (ctrlc), SIGUSR1 (Slurm's usual early warning).
    ctrlc::set_handler(on_signal).context("installing the Ctrl-C handler")?;
    let mut usr1 = signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR1])
        .context("installing the SIGUSR1 handler")?;
    std::thread::spawn(move || {
        for _ in usr1.forever() {
            on_signal();
        }
    });
    let mut cache = BuildCache::with_interrupt(&INTERRUPT);
    let mut done: Vec<(StageOutcome, f64)> = Vec::with_capacity(total);
    let build_started = Instant::now();
    for (i, stage) in plan.stages.iter().enumerate() {
        if INTERRUPT.load(Ordering::SeqCst) {
            // The signal came as the previous stage finished.
            let _ = write_report(&plan, &done, Some(&stage.name));
            anyhow::bail!(
                "interrupted before stage `{}`: run the build again to continue",
                stage.name
            );
        }
        let bar = progress_bar(quiet, &stage.name);
        let started = Instant::now();
        let result = plan.run_stage(stage, &mut cache, &mut |p| {
            bar.set_length(p.rows_total);
            bar.set_position(p.rows_done);
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("{:.0} tok/s", p.tokens as f64 / secs));
        });
        bar.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        let outcome = match result {
            Ok(o) => o,
            Err(e) => {
                let err = anyhow::Error::new(e).context(format!(
                    "{}: stage `{}` ({}) → {}",
                    plan.file.display(),
                    stage.name,
                    stage.kind.as_str(),
                    stage.output.display()
                ));
                // Record what finished before the failure; the error is what matters.
                if write_report(&plan, &done, Some(&stage.name)).is_ok() {
                    write_page(&plan);
                }
                return Err(err);
            }
        };
        if !quiet {
            eprintln!("[{}/{total}] {}", i + 1, summary_line(&outcome, seconds));
        }
        done.push((outcome, seconds));
    }
    let report = write_report(&plan, &done, None)?;
    let page = write_page(&plan);
    if args.json {
        println!("{report}");
    } else if !quiet {
        let count = |s: OutcomeStatus| done.iter().filter(|(o, _)| o.status == s).count();
        eprintln!(
            "build finished in {:.1}s: {} ran, {} resumed, {} cached; report {} and {}",
            build_started.elapsed().as_secs_f64(),
            count(OutcomeStatus::Ran),
            count(OutcomeStatus::Resumed),
            count(OutcomeStatus::Cached),
            plan.report_path().display(),
            page.display()
        );
    }
    Ok(())
}

fn summary_line(o: &StageOutcome, seconds: f64) -> String {
    let hash = &o.content_hash[..o.content_hash.len().min(16)];
    let (unit, resumed) = match o.kind {
        "train" => (
            "examples",
            format!(" (resumed after step {})", o.resumed_rows),
        ),
        "eval" => ("comparisons", String::new()),
        _ => ("rows", format!(" ({} rows resumed)", o.resumed_rows)),
    };
    let work = match o.status {
        OutcomeStatus::Ran | OutcomeStatus::Resumed => format!(
            ", {} tokens in {seconds:.1}s{}",
            o.tokens,
            if o.resumed_rows > 0 {
                resumed
            } else {
                String::new()
            }
        ),
        OutcomeStatus::Cached | OutcomeStatus::Source => String::new(),
    };
    format!(
        "{} ({}): {}: {} {unit}{work} → {} ({hash})",
        o.stage,
        o.kind,
        o.status.as_str(),
        o.rows,
        o.output.display()
    )
}

/// Writes `<out>/build-report.json`; returns the report.
fn write_report(
    plan: &BuildPlan,
    done: &[(StageOutcome, f64)],
    failed: Option<&str>,
) -> Result<serde_json::Value> {
    // A stage's rate per row, measured when it ran, else the last one measured.
    let before = charter_build::report_rates(&plan.report_path());
    let stages: Vec<serde_json::Value> = done
        .iter()
        .map(|(o, seconds)| {
            let mut entry = json!({
                "stage": o.stage,
                "kind": o.kind,
                "status": o.status.as_str(),
                "rows": o.rows,
                "resumed_rows": o.resumed_rows,
                "tokens": o.tokens,
                "seconds": seconds,
                "output": o.output.display().to_string(),
                "content_hash": o.content_hash,
                "inputs": plan.stage(&o.stage).map(|s| s.dependencies()).unwrap_or_default(),
            });
            if let Some(rate) =
                charter_build::measured_rate(&entry).or_else(|| before.get(&o.stage).copied())
            {
                entry["seconds_per_row"] = json!(rate.seconds_per_row);
                entry["tokens_per_row"] = json!(rate.tokens_per_row);
            }
            entry
        })
        .collect();
    let report = json!({
        "build_file": plan.file.display().to_string(),
        "ok": failed.is_none(),
        "failed_stage": failed,
        "stages": stages,
    });
    let path = plan.report_path();
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    charter_table::write_atomic(
        &path,
        (serde_json::to_string_pretty(&report)? + "\n").as_bytes(),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(report)
}

/// Writes the build's page beside its `build-report.json`; returns its path.
/// The build's outputs stand whether or not the page can be made.
fn write_page(plan: &BuildPlan) -> std::path::PathBuf {
    let report = plan.report_path();
    let dir = report.parent().unwrap_or(std::path::Path::new("."));
    let page = dir.join(charter_report::REPORT_FILE);
    if let Err(e) = charter_report::write(dir, &page) {
        eprintln!("warning: no build report page: {e}");
    }
    page
}

fn dry_run(plan: &BuildPlan, force: &[String], json: bool) -> Result<()> {
    for name in force {
        anyhow::ensure!(
            plan.stage(name).is_some(),
            "--force {name}: {} has no stage `{name}`",
            plan.file.display()
        );
    }
    let statuses = plan.explain(force)?;
    let estimates = plan.estimate();
    if json {
        let rows: Vec<serde_json::Value> = statuses
            .iter()
            .zip(&estimates)
            .map(|(s, e)| {
                json!({
                    "stage": s.name,
                    "status": s.verdict.as_str(),
                    "reasons": s.reasons,
                    "placement": e.placement.as_str(),
                    "estimate": {"rows": e.rows, "seconds": e.seconds(), "tokens": e.tokens()},
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    let width = statuses.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in &statuses {
        println!(
            "{:width$}  {}: {}",
            s.name,
            s.verdict.as_str(),
            s.reasons.join("; ")
        );
    }
    print_estimate(plan, &statuses, &estimates, width);
    Ok(())
}

/// The cost of the stages that would run, at the rates earlier runs measured.
fn print_estimate(
    plan: &BuildPlan,
    statuses: &[charter_build::StageStatus],
    estimates: &[charter_build::Estimate],
    width: usize,
) {
    let running: Vec<&charter_build::Estimate> = statuses
        .iter()
        .zip(estimates)
        .filter(|(s, _)| s.verdict == charter_build::Verdict::Run)
        .map(|(_, e)| e)
        .collect();
    if running.is_empty() {
        return;
    }
    println!(
        "\nestimate, at the rates earlier runs measured on their machine ({}):",
        plan.report_path().display()
    );
    let hours = |s: f64| {
        if s >= 3600.0 {
            format!("{:.1} h", s / 3600.0)
        } else if s >= 60.0 {
            format!("{:.0} min", s / 60.0)
        } else {
            format!("{s:.0} s")
        }
    };
    let (mut total, mut sharded, mut unknown) = (0.0, 0.0, 0usize);
    for e in &running {
        let rows = e.rows.map_or("? rows".to_string(), |r| format!("{r} rows"));
        match (e.seconds(), e.tokens()) {
            (Some(s), Some(t)) => {
                total += s;
                if e.placement == charter_build::Placement::Sharded {
                    sharded += s;
                }
                println!(
                    "{:width$}  {rows}, ≈ {:.0} tokens, ≈ {} ({})",
                    e.stage,
                    t,
                    hours(s),
                    e.placement.as_str()
                );
            }
            _ => {
                unknown += 1;
                let why = if e.rate.is_none() {
                    "no rate measured yet"
                } else {
                    "rows unknown until its inputs are built"
                };
                println!("{:width$}  {rows}: {why}", e.stage);
            }
        }
    }
    println!(
        "total ≈ {} of machine time{}; the sharded stages' {} divide among --shard I/N tasks",
        hours(total),
        if unknown > 0 {
            format!(" and {unknown} stages not estimated")
        } else {
            String::new()
        },
        hours(sharded)
    );
}

/// The shard count asked for, else the one found under `<out>/shards/`.
fn shard_count(plan: &BuildPlan, asked: Option<u32>) -> Result<u32> {
    if let Some(n) = asked {
        return Ok(n);
    }
    let found = plan.shard_counts();
    let dir = plan.out.join("shards");
    match found.as_slice() {
        [n] => Ok(*n),
        [] => anyhow::bail!(
            "{}: no shards found (no I-of-N directories): run `charter build {} --shard I/N` \
             first, or give --shards N",
            dir.display(),
            plan.file.display()
        ),
        several => anyhow::bail!(
            "{} holds shards of several counts ({}): give --shards N",
            dir.display(),
            several
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn status(plan: &BuildPlan, count: u32, json: bool) -> Result<()> {
    let states = plan.shard_states(count)?;
    let rows: Vec<serde_json::Value> = states
        .iter()
        .enumerate()
        .map(|(i, s)| match s {
            ShardState::Done => json!({"shard": i, "state": "done"}),
            ShardState::Missing => json!({"shard": i, "state": "missing"}),
            ShardState::Partial {
                done,
                stages,
                committed,
            } => json!({
                "shard": i,
                "state": "partial",
                "stages_done": done,
                "stages": stages,
                "committed_rows": committed
                    .iter()
                    .map(|(stage, rows)| json!({"stage": stage, "rows": rows}))
                    .collect::<Vec<_>>(),
            }),
        })
        .collect();
    if json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    for (i, s) in states.iter().enumerate() {
        let what = match s {
            ShardState::Done => "done".to_string(),
            ShardState::Missing => "missing".to_string(),
            ShardState::Partial {
                done,
                stages,
                committed,
            } => {
                let mut line = format!("partial: {done} of {stages} stages done");
                for (stage, rows) in committed {
                    line += &format!(", `{stage}` has {rows} rows committed");
                }
                line
            }
        };
        println!(
            "{i}/{count}  {what}  {}",
            plan.shard_dir(charter_build::Shard {
                index: i as u32,
                count
            })
            .display()
        );
    }
    let done = states.iter().filter(|s| **s == ShardState::Done).count();
    println!("{done} of {count} shards done");
    Ok(())
}

fn emit(plan: &BuildPlan, kind: EmitArg, args: &BuildArgs) -> Result<String> {
    let flags = &args.launch;
    let charter = match &flags.charter {
        Some(c) => c.clone(),
        None => std::env::current_exe()
            .context("finding this charter executable (give --charter)")?
            .display()
            .to_string(),
    };
    let launch = Launch {
        shards: args.shards.unwrap_or(1),
        max_parallel: flags.max_parallel,
        cpus: flags.cpus_per_task,
        mem: flags.mem.clone(),
        charter,
    };
    Ok(match kind {
        EmitArg::Slurm => slurm_script(
            plan,
            &launch,
            &SlurmLaunch {
                partition: flags.partition.clone(),
                time: flags.time.clone(),
                max_array_size: flags.max_array_size,
            },
        )?,
        EmitArg::K8s => k8s_manifests(
            plan,
            &launch,
            &K8sLaunch {
                image: flags.image.clone(),
                claim: flags.claim.clone(),
                mount: flags.mount.clone(),
                retries: flags.retries,
            },
        )?,
    })
}

/// Writes the Slurm script beside the shards and runs it: `sbatch`, with
/// the user's own credentials, submits the arrays and the merge.
fn submit_slurm(plan: &BuildPlan, args: &BuildArgs) -> Result<()> {
    let script = emit(plan, EmitArg::Slurm, args)?;
    let shards = args.shards.unwrap_or(1);
    let dir = plan.out.join("shards");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("submit-slurm-{shards}.sh"));
    charter_table::write_atomic(&path, script.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    let status = std::process::Command::new("bash")
        .arg(&path)
        .status()
        .with_context(|| format!("running bash {}", path.display()))?;
    anyhow::ensure!(
        status.success(),
        "bash {} failed ({status}): is sbatch on PATH and the cluster up?",
        path.display()
    );
    Ok(())
}

fn progress_bar(quiet: bool, stage: &str) -> ProgressBar {
    use std::io::IsTerminal;
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{stage} {{bar:30}} {{pos}}/{{len}} rows {{msg}} [{{elapsed}} < {{eta}}]"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
