//! `queries`, `augment` and `target`: the data of a constitutional
//! classifier; `classify` and `classify calibrate`: using its guard.

use anyhow::{Context, Result};
use charter_stages::Model;
use charter_stages::classifier::ClassifierConstitution;
use charter_table::TableFile;

use super::stages::run_stage;
use crate::cli::{
    AugmentArgs, CalibrateArgs, ClassifyArgs, ClassifyCommand, ModelStageFlags, QueriesArgs,
    TargetArgs,
};

fn open(stage: &ModelStageFlags, threads: usize) -> Result<(Model, ClassifierConstitution)> {
    let constitution = ClassifierConstitution::load(&stage.constitution)?;
    let model = Model::open(&stage.model, threads)?;
    Ok((model, constitution))
}

pub(crate) fn queries(args: QueriesArgs, quiet: bool) -> Result<()> {
    let settings = &args.settings;
    let (mut model, constitution) = open(&args.stage, settings.generation.threads)?;
    run_stage("queries", &args.output, quiet, args.stage.json, |out, p| {
        charter_stages::classifier::queries(&mut model, &constitution, settings, out, p)
    })
}

pub(crate) fn augment(mut args: AugmentArgs, quiet: bool) -> Result<()> {
    // One `--seed` draws the templates and the rewrites.
    args.settings.seed = args.settings.generation.seed;
    let input = TableFile::open(&args.input)?;
    let mut model = match &args.model {
        Some(dir) => Some(Model::open(dir, args.settings.generation.threads)?),
        None => None,
    };
    run_stage("augment", &args.output, quiet, args.json, |out, p| {
        charter_stages::classifier::augment(&input, &args.settings, model.as_mut(), out, p)
    })
}

pub(crate) fn target(args: TargetArgs, quiet: bool) -> Result<()> {
    let settings = &args.settings;
    let input = TableFile::open(&args.input)?;
    let queries = args.queries.as_deref().map(TableFile::open).transpose()?;
    let (mut model, constitution) = open(&args.stage, settings.generation.threads)?;
    run_stage("target", &args.output, quiet, args.stage.json, |out, p| {
        charter_stages::classifier::target(
            &input,
            queries.as_ref(),
            &mut model,
            &constitution,
            settings,
            out,
            p,
        )
    })
}

pub(crate) fn classify(args: ClassifyArgs, quiet: bool) -> Result<()> {
    if let Some(ClassifyCommand::Calibrate(a)) = args.command {
        return calibrate(a, quiet);
    }
    let (Some(model), Some(input), Some(output)) = (&args.model, &args.input, &args.output) else {
        anyhow::bail!("classify needs --model, --input and --output");
    };
    let output = charter_table::Output::parse(output);
    super::check_json_output(args.json, &output)?;
    let bar = crate::progress::rows_bar(quiet);
    let (table, cached) =
        charter_train::classify_table(model, input, &output, &args.settings, &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .with_context(|| format!("classify {}", input.display()))?;
    bar.finish_and_clear();
    let wrote = super::Wrote {
        output: &output,
        table: &table,
        cached,
    };
    if args.json {
        wrote.json(serde_json::json!({"stage": "classify"}));
    } else {
        wrote.say(quiet, "table, guard and threshold", || {
            format!("classified {} rows with {}", table.rows, model.display())
        });
    }
    Ok(())
}

fn calibrate(args: CalibrateArgs, quiet: bool) -> Result<()> {
    let bar = crate::progress::rows_bar(quiet);
    let c = charter_train::calibrate(
        &args.model,
        &args.input,
        args.target_fpr,
        &args.settings,
        &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )
    .with_context(|| {
        format!(
            "calibrating {} on {}",
            args.model.display(),
            args.input.display()
        )
    })?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string(&c)?);
    } else if !quiet {
        eprintln!(
            "threshold {:.6}: blocks {} of {} benign rows ({:.2}%, 95% interval {:.2}–{:.2}%; \
             target {:.2}%); written to {}",
            c.threshold,
            c.blocked,
            c.rows,
            100.0 * c.achieved_fpr,
            100.0 * c.fpr_interval.0,
            100.0 * c.fpr_interval.1,
            100.0 * c.target_fpr,
            args.model.join(charter_train::CALIBRATION_FILE).display()
        );
    }
    Ok(())
}
