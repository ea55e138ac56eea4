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

//!
//! Every field of a stage is either one of its slots (`input`, `against`,
//! `mix`, `path`, `output`, `model`, `constitution`, `seed`, `a`, `b`,
//! `reference_cache`) or a setting of the struct its kind runs with — the
//! same struct the command line flattens into flags — so a setting added
//! to a stage is known to build files, `--dry-run` and the CLI at once.

mod kind;
mod planner;
mod source;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use charter_model::Dtype;
use charter_stages::classifier::{AugmentSettings, QuerySettings, TargetSettings};
use charter_stages::{
    CritiqueSettings, ExportSettings, FilterSettings, GenSettings, ImportSettings, LabelSettings,
    PolicyEvalSettings, RateSettings, RespondSettings, TableDedupSettings,
};
use charter_table::Shard;
use charter_train::{DeviceChoice, ScoreSettings, Task, TrainSettings};

pub use kind::StageKind;
use planner::Planner;
use source::Source;

use crate::error::{Error, Result};

/// What a planned stage runs, with its settings resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum StageOp {
    /// An existing table.
    Table,
    /// `import`: prompt files into a prompts table.
    Import {
        /// The files, in order.
        files: Vec<PathBuf>,
        /// How they are read and deduplicated.
        settings: ImportSettings,
    },
    /// `dedup`.
    Dedup(TableDedupSettings),
    /// `filter`.
    Filter(FilterSettings),
    /// `respond`.
    Respond(RespondSettings),
    /// `critique`; without a `round`, the round the input calls for.
    Critique(CritiqueSettings),
    /// `revise`.
    Revise(GenSettings),
    /// `pair`.
    Pair,
    /// `label`.
    Label(LabelSettings),
    /// `rate`.
    Rate(RateSettings),
    /// `score`, with the stage's model as the preference model.
    Score(ScoreSettings),
    /// `export`.
    Export(ExportSettings),
    /// `train`.
    Train(TrainOp),
    /// `eval`.
    Eval(EvalOp),
    /// `queries`.
    Queries(QuerySettings),
    /// `augment`.
    Augment(AugmentSettings),
    /// `target`.
    Target(TargetSettings),
    /// `probe`, on the stage's model (the policy).
    Probe(charter_train::ProbeSettings),
    /// A sharded build's own stage: the rows of one shard of its input
    /// (among the first `limit`, for a `respond` stage's `limit`).
    Slice {
        /// The shard kept.
        shard: Shard,
        /// Only the input's first rows are sharded.
        limit: Option<usize>,
    },
    /// A merged build's row-parallel stage: the tables its `shards` wrote,
    /// merged into the table `op` makes unsharded.
    Merge {
        /// How many shards the build was split into.
        shards: u32,
        /// What the stage runs unsharded.
        op: Box<StageOp>,
    },
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
    /// RL: the reward, iterations and evaluation, with models resolved
    /// (`eval_prompts` is the stage's second input, set when it runs).
    pub rl: Option<charter_train::RlSettings>,
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
    /// The shard it runs in, for a stage of a shard's plan that works on
    /// the shard's rows.
    pub shard: Option<Shard>,
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

    /// Every stage it needs built first, once each: its input tables, then
    /// its models.
    pub fn dependencies(&self) -> Vec<&str> {
        let mut all: Vec<&str> = Vec::new();
        for name in self
            .inputs()
            .into_iter()
            .chain(self.model_stages.iter().map(String::as_str))
        {
            if !all.contains(&name) {
                all.push(name);
            }
        }
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
    /// `line:column` of each stage's fields (and of its `name`), for errors
    /// found after parsing.
    pub(crate) positions: BTreeMap<(String, String), String>,
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
        plan.check_paths()?;
        Ok(plan)
    }

    /// `file:line:column: stage `S`, field `F`: message`, at the field
    /// (else at the stage's name).
    fn at(&self, stage: &str, field: &str, message: impl std::fmt::Display) -> Error {
        let position = self
            .positions
            .get(&(stage.to_string(), field.to_string()))
            .or_else(|| self.positions.get(&(stage.to_string(), "name".to_string())))
            .map_or(String::new(), |p| format!(":{p}"));
        Error::Settings(format!(
            "{}{position}: stage `{stage}`, field `{field}`: {message}",
            self.file.display()
        ))
    }

    /// Checks the files the stages name exist and open as what they should be.
    fn check_paths(&self) -> Result<()> {
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
                        .map_err(|e| self.at(&stage.name, field, e))?;
                }
            }
            if let Some(c) = &stage.constitution {
                let checked = match stage.kind {
                    StageKind::Queries | StageKind::Target => {
                        charter_stages::classifier::ClassifierConstitution::load(c).map(drop)
                    }
                    _ => charter_stages::Constitution::load(c).map(drop),
                };
                checked.map_err(|e| self.at(&stage.name, "constitution", e))?;
            }
            if let StageOp::Import { files, .. } = &stage.op
                && let Some(missing) = files.iter().find(|f| !f.is_file())
            {
                return Err(self.at(
                    &stage.name,
                    "files",
                    format!("{}: no such file", missing.display()),
                ));
            }
            if stage.kind == StageKind::Table && !stage.output.is_file() {
                return Err(self.at(
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
        let source = Source::new(path.display().to_string(), text);
        let wire = source.parse()?;
        Planner::new(&source, path, wire)?.plan()
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

#[cfg(test)]
mod tests;
