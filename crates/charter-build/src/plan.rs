//! What a build would do, without running it: for each stage, run or up to
//! date, and why.
//!
//! A stage's would-be build key is recomputed from the same pieces the
//! stage records (settings, input content hashes, model and constitution
//! hashes, stage version) and compared with the key in the existing output;
//! when they differ, the recorded pieces (`charter.settings`,
//! `charter.inputs`, `charter.model_hash`, `charter.constitution_hash`) say
//! which part changed.

use std::collections::BTreeSet;

use charter_model::ModelDir;
use charter_table::{
    CRITIQUES, InputRef, KEY_CONSTITUTION_HASH, KEY_INPUTS, KEY_MODEL_HASH, KEY_SETTINGS,
    KEY_STAGE, KEY_STAGE_VERSION, LABELS, PAIRS, PROMPTS, Provenance, QUERIES, RATINGS, RESPONSES,
    REVISIONS, ShardedWriter, TARGETS, TableFile, TableSpec, canonical_json, partial_dir,
    read_input, slice_provenance,
};
use serde_json::Value as Json;

use charter_stages::classifier::{
    ClassifierConstitution, augment_provenance, queries_provenance, target_provenance,
};
use charter_stages::{
    Constitution, critique_provenance, dedup_provenance, filter_provenance, import_provenance,
    label_provenance, pair_provenance, rate_provenance, respond_provenance, revise_provenance,
};

use crate::error::Result;
use crate::file::{BuildPlan, EvalOp, PlannedStage, StageKind, StageOp, TrainOp};

/// Whether a stage would run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It would run (or resume).
    Run,
    /// Its output is up to date.
    UpToDate,
    /// A `table` stage: an existing input.
    Source,
    /// A `table` stage whose file is missing, or a stage that cannot run
    /// because an input is missing.
    Missing,
}

impl Verdict {
    /// The word shown in a plan.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Run => "run",
            Verdict::UpToDate => "up to date",
            Verdict::Source => "source",
            Verdict::Missing => "missing",
        }
    }
}

/// What a build would do with one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageStatus {
    /// The stage.
    pub name: String,
    /// Run or not.
    pub verdict: Verdict,
    /// Why, one reason per entry.
    pub reasons: Vec<String>,
}

impl BuildPlan {
    /// What a build would do, stage by stage in run order, with the stages
    /// named in `forced` run regardless. Reads the inputs, outputs, model
    /// provenance and constitutions; writes nothing but a temporary export
    /// to compare with an existing one.
    pub fn explain(&self, forced: &[String]) -> Result<Vec<StageStatus>> {
        let mut rebuilt: BTreeSet<&str> = BTreeSet::new();
        let mut missing: BTreeSet<&str> = BTreeSet::new();
        let mut out = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            let (verdict, reasons) =
                if forced.contains(&stage.name) && stage.kind != StageKind::Table {
                    (Verdict::Run, vec!["forced (--force)".to_string()])
                } else {
                    explain_stage(self, stage, &rebuilt, &missing)?
                };
            let (verdict, reasons) = match (&stage.op, verdict) {
                (StageOp::Merge { shards, .. }, Verdict::Run) => {
                    let behind = self.shards_behind(&stage.name, *shards)?;
                    if behind.is_empty() {
                        let mut reasons = reasons;
                        reasons.push(format!("merges the tables of its {shards} shards"));
                        (Verdict::Run, reasons)
                    } else {
                        (Verdict::Missing, behind)
                    }
                }
                _ => (verdict, reasons),
            };
            match verdict {
                Verdict::Run => {
                    rebuilt.insert(&stage.name);
                }
                Verdict::Missing => {
                    missing.insert(&stage.name);
                }
                Verdict::UpToDate | Verdict::Source => {}
            }
            out.push(StageStatus {
                name: stage.name.clone(),
                verdict,
                reasons,
            });
        }
        Ok(out)
    }
}

fn explain_stage(
    plan: &BuildPlan,
    stage: &PlannedStage,
    rebuilt: &BTreeSet<&str>,
    missing: &BTreeSet<&str>,
) -> Result<(Verdict, Vec<String>)> {
    let out = &stage.output;
    if stage.kind == StageKind::Table {
        return Ok(if out.is_file() {
            (
                Verdict::Source,
                vec![format!("existing table {}", out.display())],
            )
        } else {
            (
                Verdict::Missing,
                vec![format!("{} does not exist", out.display())],
            )
        });
    }
    let what = |dep: &str| {
        if stage.model_stages.iter().any(|m| m == dep) {
            "model"
        } else {
            "input"
        }
    };
    let dependencies = stage.dependencies();
    let absent: Vec<String> = dependencies
        .iter()
        .filter(|i| missing.contains(**i))
        .map(|i| format!("{} `{i}` is missing", what(i)))
        .collect();
    if !absent.is_empty() {
        return Ok((Verdict::Missing, absent));
    }
    let mut reasons: Vec<String> = Vec::new();
    reasons.extend(
        dependencies
            .iter()
            .filter(|i| rebuilt.contains(**i))
            .map(|i| format!("{} `{i}` will be rebuilt", what(i))),
    );
    match &stage.op {
        StageOp::Train(op) => return explain_train(plan, stage, op, reasons),
        StageOp::Eval(op) => return explain_eval(plan, stage, op, reasons),
        StageOp::Probe(settings) => return explain_probe(plan, stage, settings, reasons),
        _ => {}
    }
    if !out.exists() {
        reasons.insert(0, format!("output {} is missing", out.display()));
        let partial = partial_dir(out);
        if partial.is_dir() {
            // With its inputs final, the key is known: say whether the
            // interrupted run's rows will be kept.
            let key = if reasons.len() == 1 && !matches!(stage.op, StageOp::Export(_)) {
                let inputs = plan.input_tables(stage)?;
                Some(expected_provenance(stage, &inputs).map(|(p, spec)| p.build_key(spec))?)
            } else {
                None
            };
            reasons.push(match (key, ShardedWriter::peek(out)) {
                (Some(key), Some(left)) if key == left.build_key => format!(
                    "resumes after the {} rows an interrupted run committed in {}",
                    left.rows,
                    partial.display()
                ),
                (Some(_), Some(_)) => format!(
                    "an interrupted run of other settings or inputs left {}: it is discarded",
                    partial.display()
                ),
                _ => format!(
                    "an interrupted run left {}: it resumes if its build key matches",
                    partial.display()
                ),
            });
        }
    }
    if !reasons.is_empty() {
        return Ok((Verdict::Run, reasons));
    }
    // Inputs and output exist and are up to date or sources: compare.
    let input_files = plan.input_tables(stage)?;
    if let StageOp::Export(settings) = &stage.op {
        let Some(input) = input_files.first() else {
            return Ok((Verdict::Run, vec!["no input".into()]));
        };
        let dir = tempfile::tempdir().map_err(|e| {
            crate::error::Error::Settings(format!("creating a temporary directory: {e}"))
        })?;
        let fresh = dir.path().join("export.jsonl");
        charter_stages::export(input, settings, &fresh)?;
        let same = std::fs::read(&fresh).ok() == std::fs::read(out).ok();
        return Ok(if same {
            (
                Verdict::UpToDate,
                vec!["same bytes as a fresh export of its input".into()],
            )
        } else {
            (
                Verdict::Run,
                vec![format!(
                    "{} differs from a fresh export of `{}`",
                    out.display(),
                    stage.input.as_deref().unwrap_or_default()
                )],
            )
        });
    }
    let (expected, spec) = expected_provenance(stage, &input_files)?;
    let existing = match TableFile::open(out) {
        Ok(t) => t,
        Err(e) => return Ok((Verdict::Run, vec![format!("output unreadable: {e}")])),
    };
    let key = expected.build_key(spec);
    if existing.build_key() == Some(key.as_str()) {
        return Ok((
            Verdict::UpToDate,
            vec![format!("build key {} matches", &key[..16])],
        ));
    }
    Ok((Verdict::Run, differences(&expected, spec, &existing)))
}

impl BuildPlan {
    /// The input tables of `stage` (the outputs of the stages it names), opened.
    pub(super) fn input_tables(&self, stage: &PlannedStage) -> Result<Vec<TableFile>> {
        stage
            .inputs()
            .into_iter()
            .map(|name| {
                let input = self.stage(name).ok_or_else(|| {
                    crate::error::Error::Settings(format!("internal: no stage `{name}`"))
                })?;
                Ok(TableFile::open(&input.output)?)
            })
            .collect()
    }
}

/// Why the build key recorded in `existing` differs from `expected`'s.
fn differences(expected: &Provenance, spec: &TableSpec, existing: &TableFile) -> Vec<String> {
    let meta = existing.metadata();
    let get = |k: &str| meta.get(k).map(String::as_str);
    let mut reasons = Vec::new();
    if existing.table_name() != Some(spec.name) {
        reasons.push(format!(
            "output is a `{}` table, not `{}`",
            existing.table_name().unwrap_or("?"),
            spec.name
        ));
    }
    if get(KEY_STAGE) != Some(expected.stage.as_str())
        || get(KEY_STAGE_VERSION) != Some(expected.stage_version.to_string().as_str())
    {
        reasons.push(format!(
            "stage changed: {} v{} → {} v{}",
            get(KEY_STAGE).unwrap_or("?"),
            get(KEY_STAGE_VERSION).unwrap_or("?"),
            expected.stage,
            expected.stage_version
        ));
    }
    let recorded: Json = get(KEY_SETTINGS)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Json::Null);
    if canonical_json(&recorded) != canonical_json(&expected.settings) {
        reasons.push(format!(
            "settings changed: {}",
            settings_diff(&recorded, &expected.settings)
        ));
    }
    let recorded_inputs: Vec<InputRef> = get(KEY_INPUTS)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let names: Vec<&str> = expected.inputs.iter().map(|r| r.name.as_str()).collect();
    reasons.extend(input_changes(&recorded_inputs, &expected.inputs, &names));
    let pair = |key: &str, want: &Option<String>, what: &str, reasons: &mut Vec<String>| {
        if get(key) != want.as_deref() {
            reasons.push(format!(
                "{what} hash changed: {} → {}",
                get(key).map_or("none".into(), short),
                want.as_deref().map_or("none".into(), short)
            ));
        }
    };
    pair(KEY_MODEL_HASH, &expected.model_hash, "model", &mut reasons);
    pair(
        KEY_CONSTITUTION_HASH,
        &expected.constitution_hash,
        "constitution",
        &mut reasons,
    );
    if reasons.is_empty() {
        reasons.push("recorded build key differs (table or schema version changed)".into());
    }
    reasons
}

/// A `train` stage: up to date when its output records the fingerprint a
/// run would have now.
fn explain_train(
    plan: &BuildPlan,
    stage: &PlannedStage,
    op: &TrainOp,
    mut reasons: Vec<String>,
) -> Result<(Verdict, Vec<String>)> {
    let out = &stage.output;
    let recorded = charter_train::recorded_fingerprint(out);
    if recorded.is_none() {
        reasons.insert(
            0,
            if out.exists() {
                format!("{} holds no finished training run", out.display())
            } else {
                format!("output {} is missing", out.display())
            },
        );
    }
    let inputs_final = reasons.len() == 1 && recorded.is_none();
    if let Some((checkpoint, step)) = charter_train::checkpoint_progress(out) {
        let dir = charter_train::checkpoint_dir(out);
        reasons.push(if !inputs_final {
            format!(
                "an interrupted run left {}: it resumes if its run matches",
                dir.display()
            )
        } else if checkpoint == plan.train_fingerprint(stage, op)? {
            format!(
                "resumes from the checkpoint after step {step} in {}",
                dir.display()
            )
        } else {
            format!(
                "an interrupted run of other settings or inputs left {}: it is discarded",
                dir.display()
            )
        });
    }
    if !reasons.is_empty() {
        return Ok((Verdict::Run, reasons));
    }
    let expected = plan.train_fingerprint(stage, op)?;
    if recorded.as_deref() == Some(expected.as_str()) {
        return Ok((
            Verdict::UpToDate,
            vec![format!("training fingerprint {} matches", short(&expected))],
        ));
    }
    Ok((Verdict::Run, train_differences(plan, stage, op)?))
}

/// Why a finished training output's record differs from the run the plan asks for.
fn train_differences(plan: &BuildPlan, stage: &PlannedStage, op: &TrainOp) -> Result<Vec<String>> {
    let record = charter_train::read_report(&stage.output)?;
    let mut reasons = Vec::new();
    if record["objective"] != op.task.name() {
        reasons.push(format!(
            "objective changed: {} → {}",
            record["objective"].as_str().unwrap_or("?"),
            op.task.name()
        ));
    }
    if let Some(model) = &stage.model {
        let now = ModelDir::open(model)?.provenance.content_hash;
        let had = record["base_model"]["content_hash"]
            .as_str()
            .unwrap_or("none");
        if had != now {
            reasons.push(format!(
                "base model hash changed: {} → {}",
                short(had),
                short(&now)
            ));
        }
    }
    let expected = plan
        .input_tables(stage)?
        .iter()
        .map(|t| input_ref(t.table_name().unwrap_or_default(), t))
        .collect::<Result<Vec<_>>>()?;
    let had: Vec<InputRef> = serde_json::from_value(record["inputs"].clone()).unwrap_or_default();
    reasons.extend(input_changes(&had, &expected, &stage.inputs()));
    let settings = serde_json::to_value(&op.settings)
        .map_err(|e| crate::error::Error::Settings(e.to_string()))?;
    if canonical_json(&record["settings"]) != canonical_json(&settings) {
        reasons.push(format!(
            "settings changed: {}",
            settings_diff(&record["settings"], &settings)
        ));
    }
    let objective_settings = op.task.settings();
    if canonical_json(&record["objective_settings"]) != canonical_json(&objective_settings) {
        reasons.push(format!(
            "settings changed: {}",
            settings_diff(&record["objective_settings"], &objective_settings)
        ));
    }
    if reasons.is_empty() {
        reasons.push(
            "recorded training fingerprint differs (output dtype or trainer format changed)".into(),
        );
    }
    Ok(reasons)
}

/// An `eval` stage: up to date when its directory holds a report made from
/// the same models, prompts, constitution and settings.
fn explain_eval(
    plan: &BuildPlan,
    stage: &PlannedStage,
    op: &EvalOp,
    mut reasons: Vec<String>,
) -> Result<(Verdict, Vec<String>)> {
    let Some((had_key, had_pieces)) = crate::run::read_eval_key(&stage.output) else {
        reasons.insert(
            0,
            format!("no finished evaluation in {}", stage.output.display()),
        );
        return Ok((Verdict::Run, reasons));
    };
    if !reasons.is_empty() {
        return Ok((Verdict::Run, reasons));
    }
    let (key, pieces) = crate::run::eval_key(plan, stage, op)?;
    if had_key == key {
        return Ok((
            Verdict::UpToDate,
            vec![format!("evaluation key {} matches", short(&key))],
        ));
    }
    Ok((
        Verdict::Run,
        vec![format!(
            "evaluation inputs changed: {}",
            settings_diff(&had_pieces, &pieces)
        )],
    ))
}

fn explain_probe(
    plan: &BuildPlan,
    stage: &PlannedStage,
    settings: &charter_train::ProbeSettings,
    mut reasons: Vec<String>,
) -> Result<(Verdict, Vec<String>)> {
    let Ok((had, _)) = charter_train::read_probe(&stage.output) else {
        reasons.insert(0, format!("no probe in {}", stage.output.display()));
        return Ok((Verdict::Run, reasons));
    };
    if !reasons.is_empty() {
        return Ok((Verdict::Run, reasons));
    }
    let policy = stage.model.as_deref().ok_or_else(|| {
        crate::error::Error::Settings(format!("stage `{}`: no model", stage.name))
    })?;
    let targets = plan
        .input_tables(stage)?
        .into_iter()
        .next()
        .ok_or_else(|| {
            crate::error::Error::Settings(format!("stage `{}` has no input", stage.name))
        })?;
    let input = InputRef {
        name: targets.core_spec()?.name.to_string(),
        content_hash: targets.content_hash_or_compute()?,
    };
    let policy_hash = ModelDir::open(policy)?.provenance.content_hash;
    let want = charter_train::probe_key(&policy_hash, &input, settings);
    let had = had.key();
    if had == want {
        return Ok((Verdict::UpToDate, vec!["probe key matches".to_string()]));
    }
    Ok((
        Verdict::Run,
        vec![format!(
            "probe inputs changed: {}",
            settings_diff(&had, &want)
        )],
    ))
}

/// Which inputs' content hashes differ between the `had` and `want` lists,
/// each named by its entry of `names`; `None` when the lists are equal.
fn input_changes(had: &[InputRef], want: &[InputRef], names: &[&str]) -> Option<String> {
    if had == want {
        return None;
    }
    let mut parts = Vec::new();
    for (i, w) in want.iter().enumerate() {
        let name = names.get(i).copied().unwrap_or(w.name.as_str());
        match had.get(i) {
            Some(h) if h == w => {}
            Some(h) => parts.push(format!(
                "`{name}` {} → {}",
                short(&h.content_hash),
                short(&w.content_hash)
            )),
            None => parts.push(format!("`{name}` is new")),
        }
    }
    if had.len() > want.len() {
        parts.push("an input was removed".into());
    }
    Some(format!("input content hash changed: {}", parts.join(", ")))
}

fn short(hash: &str) -> String {
    hash.chars().take(12).collect()
}

/// `key old → new` for every top-level setting that differs.
fn settings_diff(old: &Json, new: &Json) -> String {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return format!("{old} → {new}");
    };
    let keys: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
    let parts: Vec<String> = keys
        .into_iter()
        .filter_map(|k| {
            let (a, b) = (o.get(k), n.get(k));
            (a != b).then(|| {
                let show = |v: Option<&Json>| v.map_or("unset".into(), canonical_json);
                format!("{k} {} → {}", show(a), show(b))
            })
        })
        .collect();
    parts.join(", ")
}

fn input_ref(name: &str, table: &TableFile) -> Result<InputRef> {
    Ok(InputRef {
        name: name.to_string(),
        content_hash: table.content_hash_or_compute()?,
    })
}

/// A shard's stage with no rows to work on writes an empty table whose
/// provenance names the stage and its inputs: the provenance and table,
/// or `None` for any other stage.
pub(crate) fn empty_shard(
    stage: &PlannedStage,
    inputs: &[TableFile],
) -> Result<Option<(Provenance, &'static TableSpec)>> {
    let spec: &'static TableSpec = match stage.kind {
        StageKind::Respond => &RESPONSES,
        StageKind::Critique => &CRITIQUES,
        StageKind::Revise => &REVISIONS,
        StageKind::Pair => &PAIRS,
        StageKind::Label => &LABELS,
        StageKind::Rate => &RATINGS,
        _ => return Ok(None),
    };
    if stage.shard.is_none() || inputs.first().is_none_or(|t| t.num_rows() > 0) {
        return Ok(None);
    }
    let inputs = inputs
        .iter()
        .map(|t| input_ref(t.table_name().unwrap_or("input"), t))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some((
        Provenance {
            stage: stage.kind.as_str().to_string(),
            stage_version: 0,
            settings: serde_json::json!({ "empty_shard": true }),
            inputs,
            model_hash: None,
            constitution_hash: None,
        },
        spec,
    )))
}

/// The provenance `stage` would record on `inputs`, asked of the stage
/// itself, and its table.
pub(super) fn expected_provenance(
    stage: &PlannedStage,
    inputs: &[TableFile],
) -> Result<(Provenance, &'static TableSpec)> {
    let model_hash = || -> Result<String> {
        let dir = stage.model.as_deref().ok_or_else(|| {
            crate::error::Error::Settings(format!("stage `{}` has no model", stage.name))
        })?;
        Ok(ModelDir::open(dir)?.provenance.content_hash)
    };
    let constitution_hash = || -> Result<String> {
        let file = stage.constitution.as_deref().ok_or_else(|| {
            crate::error::Error::Settings(format!("stage `{}` has no constitution", stage.name))
        })?;
        Ok(Constitution::load(file)?.hash())
    };
    let classifier_hash = || -> Result<String> {
        let file = stage.constitution.as_deref().ok_or_else(|| {
            crate::error::Error::Settings(format!("stage `{}` has no constitution", stage.name))
        })?;
        Ok(ClassifierConstitution::load(file)?.hash())
    };
    let first = || {
        inputs.first().ok_or_else(|| {
            crate::error::Error::Settings(format!("stage `{}` has no input", stage.name))
        })
    };
    if let Some(empty) = empty_shard(stage, inputs)? {
        return Ok(empty);
    }
    Ok(match &stage.op {
        StageOp::Merge { op, .. } => {
            let unsharded = PlannedStage {
                op: (**op).clone(),
                ..stage.clone()
            };
            return expected_provenance(&unsharded, inputs);
        }
        StageOp::Slice { shard, limit } => (
            slice_provenance(first()?, *shard, *limit)?,
            first()?.core_spec()?,
        ),
        StageOp::Import { files, settings } => {
            let read = files
                .iter()
                .map(|f| Ok((f.clone(), read_input(f)?)))
                .collect::<Result<Vec<_>>>()?;
            (import_provenance(&read, settings)?, &PROMPTS)
        }
        StageOp::Dedup(s) => (dedup_provenance(first()?, s)?, first()?.core_spec()?),
        StageOp::Filter(s) => (filter_provenance(first()?, s)?, first()?.core_spec()?),
        StageOp::Score(s) => (
            charter_train::score_provenance(first()?, s, &model_hash()?)?,
            first()?.core_spec()?,
        ),
        StageOp::Respond(s) => (respond_provenance(s, first()?, &model_hash()?)?, &RESPONSES),
        StageOp::Critique(s) => (
            critique_provenance(first()?, s, &model_hash()?, &constitution_hash()?)?,
            &CRITIQUES,
        ),
        StageOp::Revise(s) => (
            revise_provenance(first()?, s, &model_hash()?, &constitution_hash()?)?,
            &REVISIONS,
        ),
        StageOp::Pair => (pair_provenance(first()?, inputs.get(1))?, &PAIRS),
        StageOp::Label(s) => (
            label_provenance(first()?, s, &model_hash()?, &constitution_hash()?)?,
            &LABELS,
        ),
        StageOp::Rate(s) => (
            rate_provenance(first()?, s, &model_hash()?, &constitution_hash()?)?,
            &RATINGS,
        ),
        StageOp::Queries(s) => (
            queries_provenance(s, &model_hash()?, &classifier_hash()?),
            &QUERIES,
        ),
        StageOp::Augment(s) => {
            let hash = s.rewrites().then(model_hash).transpose()?;
            (augment_provenance(first()?, s, hash.as_deref())?, &QUERIES)
        }
        StageOp::Target(s) => (
            target_provenance(
                first()?,
                inputs.get(1),
                s,
                &model_hash()?,
                &classifier_hash()?,
            )?,
            &TARGETS,
        ),
        StageOp::Table
        | StageOp::Export(_)
        | StageOp::Train(_)
        | StageOp::Eval(_)
        | StageOp::Probe(_) => {
            return Err(crate::error::Error::Settings(format!(
                "internal: stage `{}` records no provenance",
                stage.name
            )));
        }
    })
}
