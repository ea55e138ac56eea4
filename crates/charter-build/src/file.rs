//! The build file: its TOML wire format and the checked plan made from it.
//!
//! ```toml
//! [build]
//! seed = 0                                # build seed (stages may override)
//! model = "../out/smollm2"                # default model directory
//! constitution = "../constitutions/harmless.toml"
//! out = "../out/cai"                      # where outputs go unless a stage names `output`
//!
//! [defaults]                              # generation settings of every model stage
//! temperature = 0.7
//! max_new_tokens = 128
//!
//! [[stage]]
//! name = "prompts"
//! kind = "table"                          # an existing table
//! path = "../out/prompts.parquet"
//!
//! [[stage]]
//! name = "responses"
//! kind = "respond"
//! input = "prompts"
//! samples = 2
//! ```
//!
//! Paths are relative to the build file's directory. Every `[defaults]`
//! field can be overridden in a stage.
//!
//! Two kinds of stage make something other than a table: `train` writes a
//! model directory (SFT, a preference model or DPO through charter-train),
//! and `eval` a policy evaluation (`report.json` and its tables). A stage's
//! `model` (and an `eval` stage's `a`/`b`) may name a `train` stage instead
//! of a directory: it then uses that stage's output, runs after it, and is
//! rebuilt when it is.
//!
//! ```toml
//! [[stage]]
//! name = "sl-cai"
//! kind = "train"
//! objective = "sft"                       # sft | pm | dpo
//! input = "revisions-4"
//! mix = ["responses"]                     # more SFT tables (helpfulness rows)
//! max_len = 256
//!
//! [[stage]]
//! name = "rl-cai-vs-base"
//! kind = "eval"
//! input = "held-out"                      # a prompts table
//! a = "../out/smollm2"
//! b = "rl-cai"                            # a train stage
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use charter_gen::Sampling;
use charter_model::Dtype;
use charter_train::{DeviceChoice, LoraSettings, Schedule, Task, TrainSettings};
use serde::Deserialize;

use charter_stages::{
    ExportFormat, GenSettings, LabelSettings, PolicyEvalSettings, RespondSettings,
};

use crate::error::{Error, Result};

/// What a stage does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    /// An existing table, used as an input.
    Table,
    /// Prompts → responses.
    Respond,
    /// Responses or revisions → critiques.
    Critique,
    /// Critiques → revisions.
    Revise,
    /// Responses (two samples), or two tables → pairs.
    Pair,
    /// Pairs → labels.
    Label,
    /// Labels or revisions → JSON lines.
    Export,
    /// Revisions/responses or labels → a trained model directory.
    Train,
    /// Prompts and two models → a policy evaluation.
    Eval,
}

impl StageKind {
    /// The name used in build files.
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Table => "table",
            StageKind::Respond => "respond",
            StageKind::Critique => "critique",
            StageKind::Revise => "revise",
            StageKind::Pair => "pair",
            StageKind::Label => "label",
            StageKind::Export => "export",
            StageKind::Train => "train",
            StageKind::Eval => "eval",
        }
    }

    /// Whether the stage writes a table (its output can be another stage's `input`).
    pub fn makes_table(self) -> bool {
        !matches!(self, StageKind::Train | StageKind::Eval | StageKind::Export)
    }

    /// The fields a stage of this kind may set, besides `name` and `kind`.
    fn fields(self) -> Vec<&'static str> {
        const MODEL: &[&str] = &[
            "input",
            "output",
            "model",
            "seed",
            "temperature",
            "top_p",
            "top_k",
            "max_new_tokens",
            "system",
            "stop",
            "batch_size",
            "shard_rows",
            "threads",
        ];
        let (base, extra): (&[&str], &[&str]) = match self {
            StageKind::Table => (&["path"], &[]),
            StageKind::Respond => (MODEL, &["samples", "limit"]),
            StageKind::Critique => (MODEL, &["constitution", "round"]),
            StageKind::Revise => (MODEL, &["constitution"]),
            StageKind::Label => (MODEL, &["constitution", "swap", "cot", "clamp"]),
            StageKind::Pair => (&["input", "against", "output"], &[]),
            StageKind::Export => (&["input", "output", "format", "chat"], &[]),
            StageKind::Train => (
                &[
                    "input",
                    "mix",
                    "output",
                    "model",
                    "seed",
                    "objective",
                    "epochs",
                    "lr",
                    "schedule",
                    "warmup_steps",
                    "batch_size",
                    "grad_accum",
                    "max_len",
                    "weight_decay",
                    "checkpoint_every",
                    "lora_rank",
                    "lora_alpha",
                    "beta",
                    "reference_cache",
                    "held_out",
                    "device",
                    "dtype",
                ],
                &[],
            ),
            StageKind::Eval => (
                MODEL,
                &["a", "b", "constitution", "samples", "limit", "swap"],
            ),
        };
        base.iter().chain(extra).copied().collect()
    }
}

/// Training objectives as written in build files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ObjectiveWire {
    Sft,
    Pm,
    Dpo,
}

/// Export layouts as written in build files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FormatWire {
    Preference,
    Sft,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    build: BuildWire,
    #[serde(default)]
    defaults: GenWire,
    #[serde(default, rename = "stage")]
    stages: Vec<StageWire>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuildWire {
    #[serde(default)]
    seed: u64,
    model: Option<String>,
    constitution: Option<String>,
    out: String,
}

/// Generation settings: `[defaults]`, and the same fields in a stage.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct GenWire {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    max_new_tokens: Option<u32>,
    system: Option<String>,
    stop: Option<Vec<String>>,
    batch_size: Option<usize>,
    shard_rows: Option<usize>,
    threads: Option<usize>,
}

impl GenWire {
    /// `self`, with `over`'s fields where it sets them.
    fn merged(&self, over: &GenWire) -> GenWire {
        GenWire {
            temperature: over.temperature.or(self.temperature),
            top_p: over.top_p.or(self.top_p),
            top_k: over.top_k.or(self.top_k),
            max_new_tokens: over.max_new_tokens.or(self.max_new_tokens),
            system: over.system.clone().or_else(|| self.system.clone()),
            stop: over.stop.clone().or_else(|| self.stop.clone()),
            batch_size: over.batch_size.or(self.batch_size),
            shard_rows: over.shard_rows.or(self.shard_rows),
            threads: over.threads.or(self.threads),
        }
    }

    /// Settings with [`GenSettings::DEFAULT`] where unset.
    fn settings(&self, seed: u64) -> GenSettings {
        let d = GenSettings::DEFAULT;
        GenSettings {
            sampling: Sampling {
                temperature: self.temperature.unwrap_or(d.sampling.temperature),
                top_p: self.top_p.unwrap_or(d.sampling.top_p),
                top_k: self.top_k.unwrap_or(d.sampling.top_k),
            },
            max_new_tokens: self.max_new_tokens.unwrap_or(d.max_new_tokens),
            seed,
            system: self.system.clone(),
            stop: self.stop.clone().unwrap_or_default(),
            batch_size: self.batch_size.unwrap_or(d.batch_size),
            shard_rows: self.shard_rows.unwrap_or(d.shard_rows),
            threads: self.threads.unwrap_or(d.threads),
        }
    }
}

// `#[serde(flatten)]` does not combine with `deny_unknown_fields`, so the
// generation fields are repeated here rather than flattened from `GenWire`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StageWire {
    name: String,
    kind: StageKind,
    input: Option<String>,
    against: Option<String>,
    path: Option<String>,
    output: Option<String>,
    model: Option<String>,
    constitution: Option<String>,
    seed: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    max_new_tokens: Option<u32>,
    system: Option<String>,
    stop: Option<Vec<String>>,
    batch_size: Option<usize>,
    shard_rows: Option<usize>,
    threads: Option<usize>,
    samples: Option<u32>,
    limit: Option<usize>,
    round: Option<u32>,
    swap: Option<bool>,
    cot: Option<bool>,
    clamp: Option<[f64; 2]>,
    format: Option<FormatWire>,
    chat: Option<bool>,
    objective: Option<ObjectiveWire>,
    mix: Option<Vec<String>>,
    epochs: Option<usize>,
    lr: Option<f64>,
    schedule: Option<Schedule>,
    warmup_steps: Option<usize>,
    grad_accum: Option<usize>,
    max_len: Option<usize>,
    weight_decay: Option<f64>,
    checkpoint_every: Option<usize>,
    lora_rank: Option<usize>,
    lora_alpha: Option<f64>,
    beta: Option<f64>,
    reference_cache: Option<String>,
    held_out: Option<f64>,
    device: Option<String>,
    dtype: Option<String>,
    a: Option<String>,
    b: Option<String>,
}

impl StageWire {
    fn gen_wire(&self) -> GenWire {
        GenWire {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            max_new_tokens: self.max_new_tokens,
            system: self.system.clone(),
            stop: self.stop.clone(),
            batch_size: self.batch_size,
            shard_rows: self.shard_rows,
            threads: self.threads,
        }
    }

    /// The optional fields this stage sets, in declaration order.
    fn set_fields(&self) -> Vec<&'static str> {
        let set = [
            ("input", self.input.is_some()),
            ("against", self.against.is_some()),
            ("path", self.path.is_some()),
            ("output", self.output.is_some()),
            ("model", self.model.is_some()),
            ("constitution", self.constitution.is_some()),
            ("seed", self.seed.is_some()),
            ("temperature", self.temperature.is_some()),
            ("top_p", self.top_p.is_some()),
            ("top_k", self.top_k.is_some()),
            ("max_new_tokens", self.max_new_tokens.is_some()),
            ("system", self.system.is_some()),
            ("stop", self.stop.is_some()),
            ("batch_size", self.batch_size.is_some()),
            ("shard_rows", self.shard_rows.is_some()),
            ("threads", self.threads.is_some()),
            ("samples", self.samples.is_some()),
            ("limit", self.limit.is_some()),
            ("round", self.round.is_some()),
            ("swap", self.swap.is_some()),
            ("cot", self.cot.is_some()),
            ("clamp", self.clamp.is_some()),
            ("format", self.format.is_some()),
            ("chat", self.chat.is_some()),
            ("objective", self.objective.is_some()),
            ("mix", self.mix.is_some()),
            ("epochs", self.epochs.is_some()),
            ("lr", self.lr.is_some()),
            ("schedule", self.schedule.is_some()),
            ("warmup_steps", self.warmup_steps.is_some()),
            ("grad_accum", self.grad_accum.is_some()),
            ("max_len", self.max_len.is_some()),
            ("weight_decay", self.weight_decay.is_some()),
            ("checkpoint_every", self.checkpoint_every.is_some()),
            ("lora_rank", self.lora_rank.is_some()),
            ("lora_alpha", self.lora_alpha.is_some()),
            ("beta", self.beta.is_some()),
            ("reference_cache", self.reference_cache.is_some()),
            ("held_out", self.held_out.is_some()),
            ("device", self.device.is_some()),
            ("dtype", self.dtype.is_some()),
            ("a", self.a.is_some()),
            ("b", self.b.is_some()),
        ];
        set.into_iter()
            .filter(|(_, s)| *s)
            .map(|(f, _)| f)
            .collect()
    }
}

/// What a planned stage runs, with its settings resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum StageOp {
    /// An existing table.
    Table,
    /// `respond`.
    Respond(RespondSettings),
    /// `critique`; `round` as given, else derived from the input.
    Critique {
        /// The round, if the build file sets one.
        round: Option<u32>,
        /// Generation settings.
        settings: GenSettings,
    },
    /// `revise`.
    Revise(GenSettings),
    /// `pair`.
    Pair,
    /// `label`.
    Label(LabelSettings),
    /// `export`.
    Export {
        /// The layout.
        format: ExportFormat,
        /// Preference rows as chat message lists.
        chat: bool,
    },
    /// `train`.
    Train(TrainOp),
    /// `eval`.
    Eval(EvalOp),
}

/// What a `train` stage runs.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOp {
    /// The objective and its setting.
    pub task: Task,
    /// The loop's settings.
    pub settings: TrainSettings,
    /// Where to train.
    pub device: DeviceChoice,
    /// Weight type of the output's generation graph.
    pub dtype: Dtype,
    /// DPO: where reference log-probabilities are cached (else charter's
    /// default cache directory).
    pub reference_cache: Option<PathBuf>,
}

/// What an `eval` stage runs: policy B against policy A, judged by the
/// stage's model (the labeller).
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOp {
    /// Policy A, the baseline.
    pub a: PathBuf,
    /// Policy B, the one evaluated.
    pub b: PathBuf,
    /// Sampling and labelling.
    pub settings: PolicyEvalSettings,
}

/// One stage of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedStage {
    /// Its name in the build file.
    pub name: String,
    /// Its kind.
    pub kind: StageKind,
    /// The stage it reads, if any.
    pub input: Option<String>,
    /// The second input of a `pair` stage (`against`).
    pub against: Option<String>,
    /// More input tables of an SFT `train` stage (`mix`).
    pub mix: Vec<String>,
    /// The `train` stages whose output models this stage uses (`model`,
    /// and an `eval` stage's `a`/`b`).
    pub model_stages: Vec<String>,
    /// Its output: the table itself for a `table` stage.
    pub output: PathBuf,
    /// The model directory of a model stage.
    pub model: Option<PathBuf>,
    /// The constitution of a stage that uses one.
    pub constitution: Option<PathBuf>,
    /// What it runs.
    pub op: StageOp,
}

impl PlannedStage {
    /// The names of the stages whose tables it reads, in the order it reads them.
    pub fn inputs(&self) -> Vec<&str> {
        self.input
            .iter()
            .chain(&self.against)
            .chain(&self.mix)
            .map(String::as_str)
            .collect()
    }

    /// Every stage it needs built first: its input tables, then its models.
    pub fn dependencies(&self) -> Vec<&str> {
        let mut all = self.inputs();
        all.extend(self.model_stages.iter().map(String::as_str));
        all
    }
}

/// A checked build file: stages in an order where every stage comes after its inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildPlan {
    /// The build file.
    pub file: PathBuf,
    /// The output directory.
    pub out: PathBuf,
    /// The stages, in run order.
    pub stages: Vec<PlannedStage>,
}

impl BuildPlan {
    /// Reads and checks the build file at `path`, and the files it names:
    /// every model directory, constitution and table a stage reads (other
    /// than models the build itself trains), so a wrong path fails before
    /// any stage runs, with the file and line that names it.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Settings(format!("{}: cannot read: {e}", path.display())))?;
        let plan = Self::from_toml(&text, path)?;
        plan.check_paths(&text)?;
        Ok(plan)
    }

    /// Checks the files the stages name exist and open as what they should be.
    fn check_paths(&self, text: &str) -> Result<()> {
        let file = self.file.display().to_string();
        let at = |stage: &str, field: &str, msg: String| {
            let line = field_line(text, stage, field).map_or(String::new(), |l| format!(":{l}"));
            Error::Settings(format!(
                "{file}{line}: stage `{stage}`, field `{field}`: {msg}"
            ))
        };
        let trained: BTreeSet<&Path> = self
            .stages
            .iter()
            .filter(|s| s.kind == StageKind::Train)
            .map(|s| s.output.as_path())
            .collect();
        for stage in &self.stages {
            let mut models: Vec<(&str, &Path)> =
                stage.model.iter().map(|m| ("model", m.as_path())).collect();
            if let StageOp::Eval(e) = &stage.op {
                models.extend([("a", e.a.as_path()), ("b", e.b.as_path())]);
            }
            for (field, dir) in models {
                if !trained.contains(dir) {
                    charter_model::ModelDir::open(dir)
                        .map_err(|e| at(&stage.name, field, e.to_string()))?;
                }
            }
            if let Some(c) = &stage.constitution {
                charter_stages::Constitution::load(c)
                    .map_err(|e| at(&stage.name, "constitution", e.to_string()))?;
            }
            if stage.kind == StageKind::Table && !stage.output.is_file() {
                return Err(at(
                    &stage.name,
                    "path",
                    format!("{}: no such table file", stage.output.display()),
                ));
            }
        }
        Ok(())
    }

    /// Parses and checks a build file's text; `path` names it in errors and
    /// anchors its relative paths.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let file = path.display().to_string();
        let wire: Wire = toml::from_str(text).map_err(|e| locate(&file, text, &e))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        plan(wire, &file, &base, path, text)
    }

    /// The stage called `name`.
    pub fn stage(&self, name: &str) -> Option<&PlannedStage> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// Where the build report goes.
    pub fn report_path(&self) -> PathBuf {
        self.out.join("build-report.json")
    }
}

/// A located parse error: file, line, section (stage name), field.
fn locate(file: &str, text: &str, e: &toml::de::Error) -> Error {
    let message = e.message().trim_end();
    let Some(span) = e.span() else {
        return Error::Settings(format!("{file}: {message}"));
    };
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    let line = &text[line_start..line_end];
    // The section the error is in: the last table header before it.
    let mut section = String::new();
    let mut stage_index = None;
    let mut stages = 0usize;
    for l in text[..line_start].lines().chain(std::iter::once(line)) {
        let t = l.trim();
        if t.starts_with("[[") {
            section = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            if section == "stage" {
                stage_index = Some(stages);
                stages += 1;
            } else {
                stage_index = None;
            }
        } else if t.starts_with('[') {
            section = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            stage_index = None;
        }
    }
    let mut place = match stage_index {
        Some(i) => {
            let name = toml::from_str::<toml::Table>(text).ok().and_then(|t| {
                t.get("stage")?
                    .as_array()?
                    .get(i)?
                    .get("name")?
                    .as_str()
                    .map(str::to_string)
            });
            match name {
                Some(n) => format!("stage `{n}`"),
                None => format!("stage #{}", i + 1),
            }
        }
        None if section.is_empty() => "top level".to_string(),
        None => format!("[{section}]"),
    };
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    if let Some(k) = key.filter(|_| !message.contains("missing field")) {
        place += &format!(", field `{k}`");
    }
    Error::Settings(format!("{file}:{line_no}: {place}: {message}"))
}

fn plan(wire: Wire, file: &str, base: &Path, path: &Path, text: &str) -> Result<BuildPlan> {
    let at = |stage: &str, field: &str, msg: String| {
        let line = field_line(text, stage, field).map_or(String::new(), |l| format!(":{l}"));
        Error::Settings(format!(
            "{file}{line}: stage `{stage}`, field `{field}`: {msg}"
        ))
    };
    let resolve = |p: &str| base.join(p);
    let out = resolve(&wire.build.out);
    settings_check(&wire.defaults, wire.build.seed)
        .map_err(|m| Error::Settings(format!("{file}: [defaults]: {m}")))?;

    let mut kinds: BTreeMap<&str, StageKind> = BTreeMap::new();
    let mut objectives: BTreeMap<&str, ObjectiveWire> = BTreeMap::new();
    for s in &wire.stages {
        if let (StageKind::Train, Some(o)) = (s.kind, s.objective) {
            objectives.insert(s.name.as_str(), o);
        }
        if s.name.trim().is_empty() || s.name.contains(['/', '\\']) {
            return Err(at(
                &s.name,
                "name",
                "a stage name must be non-empty and contain no path separators".into(),
            ));
        }
        if kinds.insert(s.name.as_str(), s.kind).is_some() {
            return Err(at(&s.name, "name", "two stages have this name".into()));
        }
    }
    if wire.stages.is_empty() {
        return Err(Error::Settings(format!(
            "{file}: no stages: add `[[stage]]` tables"
        )));
    }

    // Every stage's output, so that a stage can use a model trained by a
    // stage declared after it.
    let output_of = |s: &StageWire| -> Result<PathBuf> {
        Ok(match (s.kind, &s.path, &s.output) {
            (StageKind::Table, Some(p), _) => resolve(p),
            (StageKind::Table, None, _) => {
                return Err(at(
                    &s.name,
                    "path",
                    "a `table` stage needs the table's path".into(),
                ));
            }
            (_, _, Some(o)) => resolve(o),
            (StageKind::Export, _, None) => out.join(format!("{}.jsonl", s.name)),
            (StageKind::Train | StageKind::Eval, _, None) => out.join(&s.name),
            (_, _, None) => out.join(format!("{}.parquet", s.name)),
        })
    };
    let mut trained: BTreeMap<&str, PathBuf> = BTreeMap::new();
    for s in wire.stages.iter().filter(|s| s.kind == StageKind::Train) {
        trained.insert(s.name.as_str(), output_of(s)?);
    }

    let mut stages = Vec::with_capacity(wire.stages.len());
    let mut outputs: BTreeMap<PathBuf, String> = BTreeMap::new();
    for s in &wire.stages {
        let name = s.name.as_str();
        // A model: a `train` stage's output, else a directory.
        let mut model_stages: Vec<String> = Vec::new();
        let mut model_ref = |field: &str, value: &str| -> Result<PathBuf> {
            let Some(dir) = trained.get(value) else {
                return Ok(resolve(value));
            };
            if objectives.get(value) == Some(&ObjectiveWire::Pm) {
                return Err(at(
                    name,
                    field,
                    format!(
                        "`{value}` trains a preference model, which scores answers; \
                         name a policy (an `sft` or `dpo` stage, or a model directory)"
                    ),
                ));
            }
            if !model_stages.iter().any(|m| m == value) {
                model_stages.push(value.to_string());
            }
            Ok(dir.clone())
        };
        let allowed = s.kind.fields();
        if let Some(f) = s.set_fields().into_iter().find(|f| !allowed.contains(f)) {
            return Err(at(
                name,
                f,
                format!(
                    "does not apply to a `{}` stage (it takes: {})",
                    s.kind.as_str(),
                    allowed.join(", ")
                ),
            ));
        }
        // Inputs: present, known, of a kind this stage reads.
        let check_input = |field: &str, value: &Option<String>| -> Result<()> {
            let Some(input) = value else { return Ok(()) };
            let Some(&kind) = kinds.get(input.as_str()) else {
                return Err(at(name, field, format!("no stage is named `{input}`")));
            };
            let reads: &[StageKind] = match (s.kind, field) {
                (StageKind::Respond | StageKind::Eval, _) => &[StageKind::Table],
                (StageKind::Train, _) => match s.objective {
                    Some(ObjectiveWire::Pm | ObjectiveWire::Dpo) => {
                        &[StageKind::Table, StageKind::Label]
                    }
                    _ => &[StageKind::Table, StageKind::Respond, StageKind::Revise],
                },
                (StageKind::Critique, _) | (StageKind::Pair, _) => {
                    &[StageKind::Table, StageKind::Respond, StageKind::Revise]
                }
                (StageKind::Revise, _) => &[StageKind::Table, StageKind::Critique],
                (StageKind::Label, _) => &[StageKind::Table, StageKind::Pair],
                (StageKind::Export, _) => &[StageKind::Table, StageKind::Label, StageKind::Revise],
                (StageKind::Table, _) => &[],
            };
            if !reads.contains(&kind) {
                let names: Vec<&str> = reads.iter().map(|k| k.as_str()).collect();
                return Err(at(
                    name,
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
        check_input("input", &s.input)?;
        check_input("against", &s.against)?;
        for m in s.mix.iter().flatten() {
            check_input("mix", &Some(m.clone()))?;
        }
        if s.kind != StageKind::Table && s.input.is_none() {
            return Err(at(
                name,
                "input",
                format!("a `{}` stage needs an input stage", s.kind.as_str()),
            ));
        }

        let output = output_of(s)?;
        if s.kind != StageKind::Table {
            if let Some(other) = outputs.get(&output) {
                return Err(at(
                    name,
                    "output",
                    format!("{} is also the output of stage `{other}`", output.display()),
                ));
            }
            if output == path {
                return Err(at(name, "output", "would overwrite the build file".into()));
            }
        }
        outputs.insert(output.clone(), name.to_string());

        let uses_model = matches!(
            s.kind,
            StageKind::Respond
                | StageKind::Critique
                | StageKind::Revise
                | StageKind::Label
                | StageKind::Train
                | StageKind::Eval
        );
        let uses_constitution = matches!(
            s.kind,
            StageKind::Critique | StageKind::Revise | StageKind::Label | StageKind::Eval
        );
        let model = match s.model.as_ref().or(wire.build.model.as_ref()) {
            Some(m) if uses_model => Some(model_ref("model", m)?),
            None if uses_model => {
                return Err(at(
                    name,
                    "model",
                    "no model: set `model` in [build] or in the stage".into(),
                ));
            }
            _ => None,
        };
        let constitution = match s.constitution.as_ref().or(wire.build.constitution.as_ref()) {
            Some(c) if uses_constitution => Some(resolve(c)),
            None if uses_constitution => {
                return Err(at(
                    name,
                    "constitution",
                    "no constitution: set `constitution` in [build] or in the stage".into(),
                ));
            }
            _ => None,
        };

        let seed = s.seed.unwrap_or(wire.build.seed);
        let gen_wire = wire.defaults.merged(&s.gen_wire());
        let generation = || -> Result<GenSettings> {
            settings_check(&gen_wire, seed)
                .map_err(|m| Error::Settings(format!("{file}: stage `{name}`, {m}")))
        };
        let op = match s.kind {
            StageKind::Table => StageOp::Table,
            StageKind::Respond => {
                let g = generation()?;
                let samples = s.samples.unwrap_or(1);
                if samples == 0 {
                    return Err(at(name, "samples", "must be at least 1".into()));
                }
                StageOp::Respond(RespondSettings {
                    samples,
                    sampling: g.sampling,
                    max_new_tokens: g.max_new_tokens,
                    seed: g.seed,
                    system: g.system,
                    stop: g.stop,
                    limit: s.limit,
                    batch_size: g.batch_size,
                    shard_rows: g.shard_rows,
                    threads: g.threads,
                })
            }
            StageKind::Critique => {
                if s.round == Some(0) {
                    return Err(at(name, "round", "rounds start at 1".into()));
                }
                StageOp::Critique {
                    round: s.round,
                    settings: generation()?,
                }
            }
            StageKind::Revise => StageOp::Revise(generation()?),
            StageKind::Pair => StageOp::Pair,
            StageKind::Label => {
                let clamp = s.clamp.map_or((0.4, 0.6), |[lo, hi]| (lo, hi));
                let (lo, hi) = clamp;
                if !(0.0..=0.5).contains(&lo) || !(0.5..=1.0).contains(&hi) {
                    return Err(at(
                        name,
                        "clamp",
                        format!(
                            "must be [LO, HI] with 0 <= LO <= 0.5 <= HI <= 1, got [{lo}, {hi}]"
                        ),
                    ));
                }
                StageOp::Label(LabelSettings {
                    swap: s.swap.unwrap_or(true),
                    cot: s.cot.unwrap_or(false),
                    clamp,
                    generation: generation()?,
                })
            }
            StageKind::Export => {
                let input_kind = s.input.as_deref().and_then(|i| kinds.get(i)).copied();
                let format = match (s.format, input_kind) {
                    (Some(FormatWire::Preference), _) => ExportFormat::Preference,
                    (Some(FormatWire::Sft), _) => ExportFormat::Sft,
                    (None, Some(StageKind::Label)) => ExportFormat::Preference,
                    (None, Some(StageKind::Revise)) => ExportFormat::Sft,
                    (None, _) => {
                        return Err(at(
                            name,
                            "format",
                            "say which layout: \"preference\" (labels) or \"sft\" (revisions)"
                                .into(),
                        ));
                    }
                };
                let ext_ok = output.extension().is_some_and(|e| {
                    e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("json")
                });
                if !ext_ok {
                    return Err(at(
                        name,
                        "output",
                        format!(
                            "export writes JSON lines: name it `*.jsonl`, not {}",
                            output.display()
                        ),
                    ));
                }
                StageOp::Export {
                    format,
                    chat: s.chat.unwrap_or(false),
                }
            }
            StageKind::Train => StageOp::Train(TrainOp {
                reference_cache: s.reference_cache.as_deref().map(resolve),
                ..train_op(s, seed, &at)?
            }),
            StageKind::Eval => {
                let mut policy = |field: &str, value: &Option<String>| match value {
                    Some(v) => model_ref(field, v),
                    None => Err(at(
                        name,
                        field,
                        format!(
                            "an `eval` stage needs policy `{field}`: a model directory or a `train` stage"
                        ),
                    )),
                };
                let (a, b) = (policy("a", &s.a)?, policy("b", &s.b)?);
                let generation = generation()?;
                let samples = s.samples.unwrap_or(1);
                if samples == 0 {
                    return Err(at(name, "samples", "must be at least 1".into()));
                }
                StageOp::Eval(EvalOp {
                    a,
                    b,
                    settings: PolicyEvalSettings {
                        samples,
                        limit: s.limit,
                        label: LabelSettings {
                            swap: s.swap.unwrap_or(true),
                            cot: false,
                            clamp: (0.0, 1.0),
                            generation: generation.clone(),
                        },
                        generation,
                    },
                })
            }
        };
        stages.push(PlannedStage {
            name: s.name.clone(),
            kind: s.kind,
            input: s.input.clone(),
            against: s.against.clone(),
            mix: s.mix.clone().unwrap_or_default(),
            model_stages,
            output,
            model,
            constitution,
            op,
        });
    }
    let stages = order(stages, file)?;
    Ok(BuildPlan {
        file: path.to_path_buf(),
        out,
        stages,
    })
}

/// A `train` stage's objective and loop settings, checked; errors name the field.
fn train_op(s: &StageWire, seed: u64, at: &dyn Fn(&str, &str, String) -> Error) -> Result<TrainOp> {
    let name = s.name.as_str();
    let Some(objective) = s.objective else {
        return Err(at(
            name,
            "objective",
            "a `train` stage needs `objective`: \"sft\", \"pm\" or \"dpo\"".into(),
        ));
    };
    let only = |field: &str, set: bool, which: &str| -> Result<()> {
        if set {
            return Err(at(
                name,
                field,
                format!("applies to `objective = \"{which}\"` only"),
            ));
        }
        Ok(())
    };
    only(
        "mix",
        s.mix.is_some() && objective != ObjectiveWire::Sft,
        "sft",
    )?;
    only(
        "beta",
        s.beta.is_some() && objective != ObjectiveWire::Dpo,
        "dpo",
    )?;
    only(
        "reference_cache",
        s.reference_cache.is_some() && objective != ObjectiveWire::Dpo,
        "dpo",
    )?;
    only(
        "held_out",
        s.held_out.is_some() && objective != ObjectiveWire::Pm,
        "pm",
    )?;
    let task = match objective {
        ObjectiveWire::Sft => Task::Sft,
        ObjectiveWire::Pm => Task::Pm {
            held_out: s.held_out.unwrap_or(0.1),
        },
        ObjectiveWire::Dpo => Task::Dpo {
            beta: s.beta.unwrap_or(0.1),
        },
    };
    // The trainer's own checks, with the field's line.
    let checked = |r: charter_train::Result<()>| match r {
        Ok(()) => Ok(()),
        Err(charter_train::Error::InvalidSetting { field, problem }) => {
            Err(at(name, field, problem))
        }
        Err(other) => Err(at(name, "objective", other.to_string())),
    };
    checked(task.validate())?;
    let lora = match (s.lora_rank, s.lora_alpha) {
        (Some(rank), alpha) => Some(LoraSettings {
            rank,
            alpha: alpha.unwrap_or(rank as f64),
        }),
        (None, Some(_)) => {
            return Err(at(
                name,
                "lora_alpha",
                "scales LoRA adapters: set `lora_rank` too".into(),
            ));
        }
        (None, None) => None,
    };
    let defaults = TrainSettings::default();
    let settings = TrainSettings {
        epochs: s.epochs.unwrap_or(defaults.epochs),
        lr: s
            .lr
            .unwrap_or_else(|| TrainSettings::default_lr(lora.is_some())),
        schedule: s.schedule.unwrap_or(defaults.schedule),
        warmup_steps: s.warmup_steps.unwrap_or(defaults.warmup_steps),
        batch_size: s.batch_size.unwrap_or(defaults.batch_size),
        grad_accum: s.grad_accum.unwrap_or(defaults.grad_accum),
        max_len: s.max_len.unwrap_or(defaults.max_len),
        weight_decay: s.weight_decay.unwrap_or(defaults.weight_decay),
        seed,
        checkpoint_every: s.checkpoint_every.unwrap_or(defaults.checkpoint_every),
        lora,
    };
    checked(settings.validate())?;
    let device = match s.device.as_deref() {
        None => DeviceChoice::Auto,
        Some(d) => d
            .parse()
            .map_err(|e: charter_train::Error| at(name, "device", e.to_string()))?,
    };
    let dtype = match s.dtype.as_deref() {
        None | Some("int8") => Dtype::Int8,
        Some("f32") => Dtype::F32,
        Some("int4") => Dtype::Int4,
        Some(other) => {
            return Err(at(
                name,
                "dtype",
                format!("unknown {other:?}; expected \"f32\", \"int8\" or \"int4\""),
            ));
        }
    };
    Ok(TrainOp {
        task,
        settings,
        device,
        dtype,
        reference_cache: None,
    })
}

/// The line (1-based) of `field` in the `[[stage]]` table named `stage`,
/// else of its `name`; for errors found after parsing.
fn field_line(text: &str, stage: &str, field: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let value = |l: &str, key: &str| -> Option<String> {
        let (k, v) = l.split_once('=')?;
        (k.trim().trim_matches('"') == key).then(|| {
            let v = v.split('#').next().unwrap_or_default().trim();
            v.trim_matches(|c| c == '"' || c == '\'').to_string()
        })
    };
    let headers: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].trim_start().starts_with('['))
        .collect();
    for (k, &h) in headers.iter().enumerate() {
        if lines[h].trim() != "[[stage]]" {
            continue;
        }
        let end = headers.get(k + 1).copied().unwrap_or(lines.len());
        let block = &lines[h + 1..end];
        if block
            .iter()
            .any(|l| value(l, "name").as_deref() == Some(stage))
        {
            let at = block
                .iter()
                .position(|l| value(l, field).is_some())
                .or_else(|| block.iter().position(|l| value(l, "name").is_some()))?;
            return Some(h + 2 + at);
        }
    }
    None
}

/// Generation settings from `wire`, checked; the error names the field.
fn settings_check(wire: &GenWire, seed: u64) -> std::result::Result<GenSettings, String> {
    let g = wire.settings(seed);
    match g.validate() {
        Ok(()) => Ok(g),
        Err(charter_stages::Error::InvalidSetting { field, problem }) => {
            Err(format!("field `{field}`: {problem}"))
        }
        Err(other) => Err(other.to_string()),
    }
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

#[cfg(test)]
mod tests;
