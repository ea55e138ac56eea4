//! `queries`, `augment` and `target`: the data of a constitutional classifier.

use anyhow::Result;
use charter_stages::Model;
use charter_stages::classifier::ClassifierConstitution;
use charter_table::TableFile;

use super::stages::run_stage;
use crate::cli::{AugmentArgs, ModelStageFlags, QueriesArgs, TargetArgs};

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

pub(crate) fn augment(args: AugmentArgs, quiet: bool) -> Result<()> {
    let input = TableFile::open(&args.input)?;
    run_stage("augment", &args.output, quiet, args.json, |out, p| {
        charter_stages::classifier::augment(&input, &args.settings, out, p)
    })
}

pub(crate) fn target(args: TargetArgs, quiet: bool) -> Result<()> {
    let settings = &args.settings;
    let input = TableFile::open(&args.input)?;
    let (mut model, constitution) = open(&args.stage, settings.generation.threads)?;
    run_stage("target", &args.output, quiet, args.stage.json, |out, p| {
        charter_stages::classifier::target(&input, &mut model, &constitution, settings, out, p)
    })
}
