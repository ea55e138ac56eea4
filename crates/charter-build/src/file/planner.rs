//! From a parsed build file to a plan: each `[[stage]]` table sorted into
//! its kind's slots and settings, settings read into the structs the
//! stages run with (over `[defaults]` for generation), inputs and models
//! resolved and checked, stages put in dependency order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use charter_stages::classifier::{AugmentSettings, QuerySettings, TargetSettings};
use charter_stages::{
    CritiqueSettings, ExportFormat, ExportSettings, FilterSettings, GenSettings, ImportSettings,
    LabelSettings, PolicyEvalSettings, RateSettings, RespondSettings, TableDedupSettings,
};
use charter_train::{
    RewardSource, RlSettings, ScoreSettings, Task, TaskConfig, TaskKind, TrainConfig,
};
use serde::de::DeserializeOwned;
use toml::Spanned;

use super::kind::{Slot, StageKind};
use super::source::{self, Entries, Source, fields_of, settings};
use super::{BuildPlan, EvalOp, PlannedStage, StageOp, TrainOp};
use crate::error::{Error, Result};

type Entry = (Spanned<String>, Spanned<toml::Value>);

/// One `[[stage]]` table, its fields sorted by what they are.
struct Declared {
    name: Spanned<String>,
    kind: StageKind,
    slots: BTreeMap<&'static str, Entry>,
    /// The kind's own settings.
    settings: Vec<Entry>,
    /// Generation settings set in the stage.
    generation: Vec<Entry>,
}

impl Declared {
    fn read(source: &Source<'_>, table: Spanned<source::Keys>) -> Result<Declared> {
        let span = table.span();
        let mut entries = table.into_inner().entries();
        let mut take = |key: &str| {
            let i = entries.iter().position(|(k, _)| k.get_ref() == key)?;
            Some(entries.remove(i))
        };
        let name = take("name");
        let place = match &name {
            Some((_, v)) => v
                .get_ref()
                .as_str()
                .map_or("stage".to_string(), |n| format!("stage `{n}`")),
            None => "stage".to_string(),
        };
        let Some((_, name)) = name else {
            return Err(source.error(&span, "a `[[stage]]` needs a `name`"));
        };
        let name = string(source, &place, "name", &name)?;
        if name.get_ref().trim().is_empty() || name.get_ref().contains(['/', '\\']) {
            return Err(source.error(
                &name.span(),
                format!(
                    "{place}, field `name`: a stage name must be non-empty and contain no path \
                     separators"
                ),
            ));
        }
        let Some((_, kind)) = take("kind") else {
            return Err(source.error(&name.span(), format!("{place}: missing field `kind`")));
        };
        let kind: StageKind = settings_value(source, &place, "kind", &kind)?;
        let description = kind.describe();
        let generation_fields = fields_of::<GenSettings>();
        let mut declared = Declared {
            name,
            kind,
            slots: BTreeMap::new(),
            settings: Vec::new(),
            generation: Vec::new(),
        };
        for entry in entries {
            let key = entry.0.get_ref().as_str();
            if let Some(slot) = description.slots.iter().find(|s| s.name() == key) {
                declared.slots.insert(slot.name(), entry);
            } else if description.settings.contains(&key) {
                declared.settings.push(entry);
            } else if description.generates && generation_fields.contains(&key) {
                declared.generation.push(entry);
            } else {
                let known = Slot::ALL.iter().any(|s| s.name() == key)
                    || generation_fields.contains(&key)
                    || StageKind::ALL
                        .iter()
                        .any(|k| k.describe().settings.contains(&key));
                let problem = if known {
                    "does not apply to"
                } else {
                    "is not a field of"
                };
                return Err(source.error(
                    &entry.0.span(),
                    format!(
                        "{place}, field `{key}`: {problem} a `{}` stage (it takes: {})",
                        kind.as_str(),
                        kind.fields().join(", ")
                    ),
                ));
            }
        }
        Ok(declared)
    }

    fn slot(&self, slot: &str) -> Option<&Entry> {
        self.slots.get(slot)
    }
}

/// A value read as `T`; the error is at the value.
fn settings_value<T: DeserializeOwned>(
    source: &Source<'_>,
    place: &str,
    field: &str,
    value: &Spanned<toml::Value>,
) -> Result<T> {
    value.get_ref().clone().try_into::<T>().map_err(|e| {
        source.error(
            &value.span(),
            format!("{place}, field `{field}`: {}", e.message().trim_end()),
        )
    })
}

fn string(
    source: &Source<'_>,
    place: &str,
    field: &str,
    value: &Spanned<toml::Value>,
) -> Result<Spanned<String>> {
    let text: String = settings_value(source, place, field, value)?;
    Ok(Spanned::new(value.span(), text))
}

/// Turns a parsed file into a plan.
pub(super) struct Planner<'s, 't> {
    source: &'s Source<'t>,
    path: &'s Path,
    base: PathBuf,
    out: PathBuf,
    seed: u64,
    model: Option<Spanned<String>>,
    constitution: Option<Spanned<String>>,
    defaults: Entries,
    stages: Vec<Declared>,
}

impl<'s, 't> Planner<'s, 't> {
    pub(super) fn new(source: &'s Source<'t>, path: &'s Path, wire: source::Wire) -> Result<Self> {
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let build = wire.build.into_inner();
        let defaults = wire.defaults.map(|d| d.into_inner().entries());
        let defaults = defaults.unwrap_or_default();
        let generation_fields = fields_of::<GenSettings>();
        if let Some((key, _)) = defaults
            .iter()
            .find(|(k, _)| !generation_fields.contains(&k.get_ref().as_str()))
        {
            let hint = if key.get_ref() == "seed" {
                "the seed belongs in [build] (or a stage)".to_string()
            } else {
                format!(
                    "[defaults] holds generation settings: {}",
                    generation_fields.join(", ")
                )
            };
            return Err(source.error(
                &key.span(),
                format!("[defaults], field `{}`: {hint}", key.get_ref()),
            ));
        }
        let mut stages = Vec::with_capacity(wire.stages.len());
        for table in wire.stages {
            stages.push(Declared::read(source, table)?);
        }
        Ok(Planner {
            source,
            path,
            out: base.join(build.out.get_ref()),
            base,
            seed: build.seed,
            model: build.model,
            constitution: build.constitution,
            defaults,
            stages,
        })
    }

    fn at(&self, stage: &Declared, field: &str, message: impl std::fmt::Display) -> Error {
        let span = stage
            .slot(field)
            .map(|(_, v)| v.span())
            .or_else(|| find(&stage.settings, field))
            .or_else(|| find(&stage.generation, field))
            .or_else(|| find(&self.defaults, field))
            .unwrap_or_else(|| stage.name.span());
        self.source.error(
            &span,
            format!(
                "stage `{}`, field `{field}`: {message}",
                stage.name.get_ref()
            ),
        )
    }

    /// A stage's setting check, its error at the setting.
    fn checked<T, E: Into<Error>>(&self, stage: &Declared, result: Result<T, E>) -> Result<T> {
        result.map_err(|e| match e.into() {
            Error::Stage(charter_stages::Error::InvalidSetting { field, problem })
            | Error::Train(charter_train::Error::InvalidSetting { field, problem }) => {
                self.at(stage, field, problem)
            }
            other => other,
        })
    }

    fn text(&self, stage: &Declared, slot: &str) -> Result<Option<Spanned<String>>> {
        let place = format!("stage `{}`", stage.name.get_ref());
        stage
            .slot(slot)
            .map(|(_, v)| string(self.source, &place, slot, v))
            .transpose()
    }

    fn resolve(&self, p: &str) -> PathBuf {
        self.base.join(p)
    }

    /// Where a stage's output goes.
    fn output(&self, stage: &Declared) -> Result<PathBuf> {
        let name = stage.name.get_ref();
        if stage.kind == StageKind::Table {
            return match self.text(stage, "path")? {
                Some(p) => Ok(self.resolve(p.get_ref())),
                None => Err(self.at(stage, "path", "a `table` stage needs the table's path")),
            };
        }
        Ok(match self.text(stage, "output")? {
            Some(o) => self.resolve(o.get_ref()),
            None if stage.kind == StageKind::Export => self.out.join(format!("{name}.jsonl")),
            None if !stage.kind.makes_table() => self.out.join(name),
            None => self.out.join(format!("{name}.parquet")),
        })
    }

    /// The generation settings of a stage: defaults, `[defaults]`, the stage's.
    fn generation(&self, stage: &Declared, seed: u64) -> Result<GenSettings> {
        let mut merged: Vec<&Entry> = self
            .defaults
            .iter()
            .filter(|(k, _)| !stage.generation.iter().any(|(s, _)| s == k))
            .collect();
        merged.extend(&stage.generation);
        let place = format!("stage `{}`", stage.name.get_ref());
        let mut g: GenSettings = settings(self.source, &place, &merged)?;
        g.seed = seed;
        self.checked(stage, g.validate())?;
        Ok(g)
    }

    /// The stage's settings that are fields of `T`, read into a `T`.
    fn own<T: DeserializeOwned>(&self, stage: &Declared) -> Result<T> {
        let place = format!("stage `{}`", stage.name.get_ref());
        let fields = fields_of::<T>();
        let entries: Vec<&Entry> = stage
            .settings
            .iter()
            .filter(|(k, _)| fields.contains(&k.get_ref().as_str()))
            .collect();
        settings(self.source, &place, &entries)
    }

    pub(super) fn plan(self) -> Result<BuildPlan> {
        let file = self.source.file.clone();
        if self.stages.is_empty() {
            return Err(Error::Settings(format!(
                "{file}: no stages: add `[[stage]]` tables"
            )));
        }
        let mut kinds: BTreeMap<&str, StageKind> = BTreeMap::new();
        for s in &self.stages {
            if kinds.insert(s.name.get_ref(), s.kind).is_some() {
                return Err(self.at(s, "name", "two stages have this name"));
            }
        }
        // Every trained model, so that a stage can use a model trained by
        // a stage declared after it; and which of them are preference models.
        let mut trained: BTreeMap<&str, (PathBuf, bool)> = BTreeMap::new();
        for s in self.stages.iter().filter(|s| s.kind == StageKind::Train) {
            let task: TaskConfig = self.own::<TaskConfig>(s)?;
            let pm = task.objective == Some(TaskKind::Pm);
            trained.insert(s.name.get_ref(), (self.output(s)?, pm));
        }

        let mut stages = Vec::with_capacity(self.stages.len());
        let mut outputs: BTreeMap<PathBuf, String> = BTreeMap::new();
        let mut positions = BTreeMap::new();
        for s in &self.stages {
            let name = s.name.get_ref().as_str();
            for (field, span) in std::iter::once(("name", s.name.span()))
                .chain(s.slots.iter().map(|(f, (_, v))| (*f, v.span())))
                .chain(
                    s.settings
                        .iter()
                        .chain(&s.generation)
                        .map(|(k, v)| (k.get_ref().as_str(), v.span())),
                )
            {
                positions.insert(
                    (name.to_string(), field.to_string()),
                    self.source.position(span.start),
                );
            }
            let planned = self.stage(s, &kinds, &trained, &mut outputs)?;
            stages.push(planned);
        }
        let stages = order(stages, &file)?;
        Ok(BuildPlan {
            file: self.path.to_path_buf(),
            out: self.out,
            stages,
            positions,
        })
    }

    fn stage(
        &self,
        s: &Declared,
        kinds: &BTreeMap<&str, StageKind>,
        trained: &BTreeMap<&str, (PathBuf, bool)>,
        outputs: &mut BTreeMap<PathBuf, String>,
    ) -> Result<PlannedStage> {
        let name = s.name.get_ref().as_str();
        let description = s.kind.describe();
        let input = self.text(s, "input")?.map(Spanned::into_inner);
        let mut against = self.text(s, "against")?.map(Spanned::into_inner);
        let mix: Vec<String> = match s.slot("mix") {
            Some((_, v)) => settings_value(self.source, &format!("stage `{name}`"), "mix", v)?,
            None => Vec::new(),
        };
        // Inputs: present, known, of a kind this stage reads.
        let check_input = |field: &str, input: &str| -> Result<()> {
            let Some(&kind) = kinds.get(input) else {
                return Err(self.at(s, field, format!("no stage is named `{input}`")));
            };
            if !description.reads.contains(&kind) {
                let names: Vec<&str> = description.reads.iter().map(|k| k.as_str()).collect();
                return Err(self.at(
                    s,
                    field,
                    format!(
                        "a `{}` stage reads the output of a {} stage, not `{input}` (a `{}` stage)",
                        s.kind.as_str(),
                        names.join(" or "),
                        kind.as_str()
                    ),
                ));
            }
            Ok(())
        };
        for (field, value) in [("input", &input), ("against", &against)] {
            if let Some(v) = value {
                check_input(field, v)?;
            }
        }
        for m in &mix {
            check_input("mix", m)?;
        }
        let files: Vec<PathBuf> = match s.slot("files") {
            Some((_, v)) => {
                let listed: Vec<String> =
                    settings_value(self.source, &format!("stage `{name}`"), "files", v)?;
                listed.iter().map(|f| self.resolve(f)).collect()
            }
            None => Vec::new(),
        };
        if s.kind == StageKind::Import && files.is_empty() {
            return Err(self.at(
                s,
                "files",
                "an `import` stage needs `files`: the prompt files to read",
            ));
        }
        if s.kind.describe().slots.contains(&Slot::Input) && input.is_none() {
            return Err(self.at(
                s,
                "input",
                format!("a `{}` stage needs an input stage", s.kind.as_str()),
            ));
        }

        let output = self.output(s)?;
        if s.kind != StageKind::Table {
            if let Some(other) = outputs.get(&output) {
                return Err(self.at(
                    s,
                    "output",
                    format!("{} is also the output of stage `{other}`", output.display()),
                ));
            }
            if output == self.path {
                return Err(self.at(s, "output", "would overwrite the build file"));
            }
        }
        outputs.insert(output.clone(), name.to_string());

        // A model: a `train` stage's output, else a directory.
        let mut model_stages: Vec<String> = Vec::new();
        let mut model_ref = |field: &str, value: &str| -> Result<PathBuf> {
            let Some((dir, pm)) = trained.get(value) else {
                return Ok(self.resolve(value));
            };
            // A `score` stage's model is a preference model; every
            // other stage's is a policy.
            let scores = s.kind == StageKind::Score;
            if *pm && !scores {
                return Err(self.at(
                    s,
                    field,
                    format!(
                        "`{value}` trains a preference model, which scores answers; name a \
                         policy (an `sft` or `dpo` stage, or a model directory)"
                    ),
                ));
            }
            if !*pm && scores {
                return Err(self.at(
                    s,
                    field,
                    format!(
                        "`{value}` trains a policy; a `score` stage needs a preference model \
                         (a `pm` stage, or its model directory)"
                    ),
                ));
            }
            if !model_stages.iter().any(|m| m == value) {
                model_stages.push(value.to_string());
            }
            Ok(dir.clone())
        };
        let takes = |slot: Slot| description.slots.contains(&slot);
        // A preference model is never the build's default model.
        let default_model = self.model.clone().filter(|_| s.kind != StageKind::Score);
        let model = match self.text(s, "model")?.or(default_model) {
            Some(m) if takes(Slot::Model) => Some(model_ref("model", m.get_ref())?),
            // An `augment` stage needs one only for rewrites, and says so.
            None if takes(Slot::Model) && s.kind != StageKind::Augment => {
                let problem = if s.kind == StageKind::Score {
                    "a `score` stage needs `model`: a preference model (a `pm` stage or its \
                     model directory)"
                } else {
                    "no model: set `model` in [build] or in the stage"
                };
                return Err(self.at(s, "model", problem));
            }
            _ => None,
        };
        let constitution = match self
            .text(s, "constitution")?
            .or_else(|| self.constitution.clone())
        {
            Some(c) if takes(Slot::Constitution) => Some(self.resolve(c.get_ref())),
            None if takes(Slot::Constitution) => {
                return Err(self.at(
                    s,
                    "constitution",
                    "no constitution: set `constitution` in [build] or in the stage",
                ));
            }
            _ => None,
        };
        let seed = match s.slot("seed") {
            Some((_, v)) => settings_value(self.source, &format!("stage `{name}`"), "seed", v)?,
            None => self.seed,
        };

        let op = match s.kind {
            StageKind::Table => StageOp::Table,
            StageKind::Slice => {
                return Err(self.at(
                    s,
                    "kind",
                    "`slice` stages are made by a sharded build's plan",
                ));
            }
            StageKind::Import => StageOp::Import {
                files,
                settings: ImportSettings {
                    dedup: self.own(s)?,
                    ..self.own(s)?
                },
            },
            StageKind::Dedup => StageOp::Dedup(TableDedupSettings {
                dedup: self.own(s)?,
                ..self.own(s)?
            }),
            StageKind::Filter => {
                let settings: FilterSettings = self.own(s)?;
                self.checked(s, settings.validate())?;
                StageOp::Filter(settings)
            }
            StageKind::Respond => {
                let settings = RespondSettings {
                    generation: self.generation(s, seed)?,
                    ..self.own(s)?
                };
                self.checked(s, settings.validate())?;
                StageOp::Respond(settings)
            }
            StageKind::Critique => {
                let settings = CritiqueSettings {
                    generation: self.generation(s, seed)?,
                    ..self.own(s)?
                };
                self.checked(s, settings.validate())?;
                StageOp::Critique(settings)
            }
            StageKind::Revise => StageOp::Revise(self.generation(s, seed)?),
            StageKind::Queries => {
                let settings = QuerySettings {
                    generation: self.generation(s, seed)?,
                    ..self.own(s)?
                };
                self.checked(s, settings.validate())?;
                StageOp::Queries(settings)
            }
            StageKind::Augment => {
                let mut settings = AugmentSettings {
                    seed,
                    generation: self.generation(s, seed)?,
                    ..self.own(s)?
                };
                // Relative to the build file, as every path in it.
                settings.jailbreaks = settings.jailbreaks.map(|p| self.base.join(p));
                self.checked(s, settings.validate())?;
                StageOp::Augment(settings)
            }
            StageKind::Target => {
                let settings = TargetSettings {
                    generation: self.generation(s, seed)?,
                    ..self.own(s)?
                };
                self.checked(s, settings.generation.validate())?;
                StageOp::Target(settings)
            }
            StageKind::Score => {
                let settings: ScoreSettings = self.own(s)?;
                self.checked(s, settings.validate())?;
                StageOp::Score(settings)
            }
            StageKind::Probe => {
                let settings = charter_train::ProbeSettings {
                    seed,
                    ..self.own(s)?
                };
                self.checked(s, settings.validate())?;
                StageOp::Probe(settings)
            }
            StageKind::Pair => StageOp::Pair,
            StageKind::Label => {
                let settings = LabelSettings {
                    generation: self.generation(s, seed)?,
                    ..self.own(s)?
                };
                self.checked(s, settings.validate())?;
                StageOp::Label(settings)
            }
            StageKind::Rate => {
                let settings = RateSettings {
                    generation: self.generation(s, seed)?,
                    ..self.own(s)?
                };
                self.checked(s, settings.generation.validate())?;
                StageOp::Rate(settings)
            }
            StageKind::Export => {
                let ext_ok = output.extension().is_some_and(|e| {
                    e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("json")
                });
                if !ext_ok {
                    return Err(self.at(
                        s,
                        "output",
                        format!(
                            "export writes JSON lines: name it `*.jsonl`, not {}",
                            output.display()
                        ),
                    ));
                }
                let mut settings: ExportSettings = self.own(s)?;
                let input_kind = input.as_deref().and_then(|i| kinds.get(i)).copied();
                settings.format = match (settings.format, input_kind) {
                    (Some(format), _) => Some(format),
                    (None, Some(StageKind::Label)) => Some(ExportFormat::Preference),
                    (None, Some(StageKind::Revise)) => Some(ExportFormat::Sft),
                    (None, _) => {
                        return Err(self.at(
                            s,
                            "format",
                            "say which layout: \"preference\" (labels) or \"sft\" (revisions)",
                        ));
                    }
                };
                StageOp::Export(settings)
            }
            StageKind::Train => {
                let mut op = self.train(s, seed, &mix, kinds, input.as_deref())?;
                if op.task == Task::Rl {
                    let (rl, eval_input) = self.rl(s, kinds, trained, &mut model_stages)?;
                    op.rl = Some(rl);
                    // The held-out prompts are the stage's second input.
                    against = eval_input;
                }
                StageOp::Train(op)
            }
            StageKind::Eval => {
                let mut policy = |field: &str| -> Result<PathBuf> {
                    match self.text(s, field)? {
                        Some(v) => model_ref(field, v.get_ref()),
                        None => Err(self.at(
                            s,
                            field,
                            format!(
                                "an `eval` stage needs policy `{field}`: a model directory or a \
                                 `train` stage"
                            ),
                        )),
                    }
                };
                let (a, b) = (policy("a")?, policy("b")?);
                let settings = PolicyEvalSettings {
                    generation: self.generation(s, seed)?,
                    ..self.own(s)?
                };
                self.checked(s, settings.validate())?;
                StageOp::Eval(EvalOp { a, b, settings })
            }
        };
        Ok(PlannedStage {
            name: name.to_string(),
            kind: s.kind,
            input,
            against,
            mix,
            model_stages,
            output,
            model,
            constitution,
            op,
            shard: None,
        })
    }

    /// A `train` stage's objective and loop settings, checked.
    fn train(
        &self,
        s: &Declared,
        seed: u64,
        mix: &[String],
        kinds: &BTreeMap<&str, StageKind>,
        input: Option<&str>,
    ) -> Result<TrainOp> {
        let task = self.checked(s, self.own::<TaskConfig>(s)?.task())?;
        let only = |field: &str, set: bool, which: &str| -> Result<()> {
            if set {
                return Err(self.at(
                    s,
                    field,
                    format!("applies to `objective = \"{which}\"` only"),
                ));
            }
            Ok(())
        };
        only("mix", !mix.is_empty() && task != Task::Sft, "sft")?;
        let dpo = matches!(task, Task::Dpo { .. });
        only(
            "reference_cache",
            s.slot("reference_cache").is_some() && !dpo,
            "dpo",
        )?;
        // SFT reads answers; the preference objectives read labels.
        let reads: &[StageKind] = match task {
            Task::Sft => &[
                StageKind::Table,
                StageKind::Dedup,
                StageKind::Filter,
                StageKind::Respond,
                StageKind::Revise,
            ],
            Task::Pm { .. } | Task::Dpo { .. } => {
                &[StageKind::Table, StageKind::Dedup, StageKind::Label]
            }
            Task::Classifier { .. } => &[StageKind::Table, StageKind::Dedup, StageKind::Target],
            Task::Rl => &[StageKind::Table, StageKind::Import, StageKind::Dedup],
        };
        if task != Task::Rl
            && let Some(field) = fields_of::<RlSettings>()
                .iter()
                .find(|f| s.slot(f).is_some() || s.settings.iter().any(|(k, _)| k.get_ref() == *f))
        {
            return Err(self.at(s, field, "applies to `objective = \"rl\"` only"));
        }
        for (field, i) in input
            .iter()
            .map(|i| ("input", *i))
            .chain(mix.iter().map(|m| ("mix", m.as_str())))
        {
            let kind = kinds[i];
            if !reads.contains(&kind) {
                let names: Vec<&str> = reads.iter().map(|k| k.as_str()).collect();
                return Err(self.at(
                    s,
                    field,
                    format!(
                        "a `{}` training stage reads the output of a {} stage, not `{i}` (a `{}` stage)",
                        task.name(),
                        names.join(" or "),
                        kind.as_str()
                    ),
                ));
            }
        }
        let config = TrainConfig {
            seed,
            ..self.own(s)?
        };
        let settings = self.checked(s, config.settings())?;
        Ok(TrainOp {
            task,
            settings,
            device: config.device,
            dtype: config.dtype,
            reference_cache: self
                .text(s, "reference_cache")?
                .map(|p| self.resolve(p.get_ref())),
            rl: None,
        })
    }

    /// An `rl` training stage's own settings, with its models resolved (a
    /// `train` stage's name means the model it trains) and the stage of
    /// held-out prompts, if any.
    fn rl(
        &self,
        s: &Declared,
        kinds: &BTreeMap<&str, StageKind>,
        trained: &BTreeMap<&str, (PathBuf, bool)>,
        model_stages: &mut Vec<String>,
    ) -> Result<(RlSettings, Option<String>)> {
        let mut rl: RlSettings = self.own(s)?;
        if !s.settings.iter().any(|(k, _)| k.get_ref() == "reward") {
            return Err(self.at(
                s,
                "reward",
                "an `rl` stage needs `reward`: \"pm:<pm stage or directory>\", \
                 \"labeller:<model>\" or \"contains:<text>\"",
            ));
        }
        // A model: a `train` stage's output (a preference model exactly
        // where one is wanted), else a directory.
        let mut model = |field: &str, value: &Path, want_pm: bool| -> Result<PathBuf> {
            let value = value.to_string_lossy();
            let Some((dir, pm)) = trained.get(value.as_ref()) else {
                return Ok(self.resolve(&value));
            };
            if *pm != want_pm {
                let problem = match want_pm {
                    true => format!("`{value}` trains a policy; `pm:` names a preference model"),
                    false => format!(
                        "`{value}` trains a preference model, which scores answers; name a policy"
                    ),
                };
                return Err(self.at(s, field, problem));
            }
            if !model_stages.iter().any(|m| m == value.as_ref()) {
                model_stages.push(value.into_owned());
            }
            Ok(dir.clone())
        };
        rl.reward = match rl.reward {
            RewardSource::Pm(m) => RewardSource::Pm(model("reward", &m, true)?),
            RewardSource::Labeller(m) => RewardSource::Labeller(model("reward", &m, false)?),
            other => other,
        };
        rl.judge = rl.judge.map(|m| model("judge", &m, false)).transpose()?;
        rl.reward_cache = rl.reward_cache.map(|dir| self.base.join(dir));
        let eval_input = match rl.eval_prompts.take() {
            Some(stage) => {
                let name = stage.to_string_lossy().into_owned();
                match kinds.get(name.as_str()) {
                    Some(StageKind::Import | StageKind::Table | StageKind::Dedup) => Some(name),
                    _ => {
                        return Err(self.at(
                            s,
                            "eval_prompts",
                            format!("`{name}` is not a stage of prompts (an `import` stage)"),
                        ));
                    }
                }
            }
            None => None,
        };
        let wants_constitution =
            matches!(rl.reward, RewardSource::Labeller(_)) || eval_input.is_some();
        rl.constitution = match rl.constitution.take() {
            Some(c) => Some(self.resolve(&c.to_string_lossy())),
            None if wants_constitution => self
                .constitution
                .as_ref()
                .map(|c| self.resolve(c.get_ref())),
            None => None,
        };
        // Checked with a stand-in for the held-out prompts, known at run time.
        let mut check = rl.clone();
        check.eval_prompts = eval_input.as_ref().map(PathBuf::from);
        self.checked(s, check.validate())?;
        Ok((rl, eval_input))
    }
}

/// The span of `field` among `entries`.
fn find(entries: &[Entry], field: &str) -> Option<std::ops::Range<usize>> {
    entries
        .iter()
        .find(|(k, _)| k.get_ref() == field)
        .map(|(_, v)| v.span())
}

/// The stages in dependency order; among stages ready together, the
/// build file's order. A cycle is an error naming its stages.
fn order(stages: Vec<PlannedStage>, file: &str) -> Result<Vec<PlannedStage>> {
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut left: Vec<Option<PlannedStage>> = stages.into_iter().map(Some).collect();
    let mut ordered = Vec::with_capacity(left.len());
    loop {
        let next = left.iter().position(|s| {
            s.as_ref()
                .is_some_and(|s| s.dependencies().iter().all(|i| done.contains(*i)))
        });
        match next.and_then(|i| left[i].take()) {
            Some(s) => {
                done.insert(s.name.clone());
                ordered.push(s);
            }
            None => break,
        }
    }
    let stuck: Vec<String> = left
        .iter()
        .flatten()
        .map(|s| format!("`{}`", s.name))
        .collect();
    if !stuck.is_empty() {
        return Err(Error::Settings(format!(
            "{file}: stages {} depend on each other in a cycle (through `input`, `against`, \
             `mix` or a model)",
            stuck.join(", ")
        )));
    }
    Ok(ordered)
}
