//! The kinds of stage a build file declares, and what each takes: its
//! slots (inputs, output, model, constitution, seed) and its settings,
//! whose names come from the settings structs the stages and the
//! command line share.

use charter_stages::classifier::{AugmentSettings, QuerySettings, TargetSettings};
use charter_stages::{
    CritiqueSettings, DedupSettings, ExportSettings, FilterSettings, GenSettings, ImportSettings,
    LabelSettings, PolicyEvalSettings, RateSettings, RespondSettings, TableDedupSettings,
};
use charter_train::{ProbeSettings, RlSettings, ScoreSettings, TaskConfig, TrainConfig};
use serde::Deserialize;

use super::source::fields_of;

/// What a stage does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    /// An existing table, used as an input.
    Table,
    /// Prompt files → a deduplicated prompts table.
    Import,
    /// Any table → the same table without duplicate texts.
    Dedup,
    /// Responses, critiques or revisions → the same table with quality
    /// flags, without the rows they condemn.
    Filter,
    /// Prompts (or a classifier's queries) → responses.
    Respond,
    /// Responses or revisions → critiques.
    Critique,
    /// Critiques → revisions.
    Revise,
    /// Responses (two samples), or two tables → pairs.
    Pair,
    /// Pairs → labels.
    Label,
    /// Responses or revisions → ratings of one answer each (direct RLAIF).
    Rate,
    /// Answers (responses, revisions, pairs, labels) → the same table
    /// with a preference model's scores.
    Score,
    /// Labels or revisions → JSON lines.
    Export,
    /// Revisions/responses or labels → a trained model directory.
    Train,
    /// Prompts and two models → a policy evaluation.
    Eval,
    /// A classifier constitution → synthetic user messages per category.
    Queries,
    /// Queries → the same queries and copies encoded, enciphered or
    /// wrapped in jailbreak templates.
    Augment,
    /// Queries, or answers to them → a classifier's soft targets from a labeller.
    Target,
    /// Answers' targets → a linear probe on the policy's own states: a
    /// streaming output guard at one dot product per token.
    Probe,
    /// The rows of one shard of a table: made by a sharded build's plan,
    /// never declared in a build file.
    #[serde(skip)]
    Slice,
}

/// A field of a stage that is not a setting: where its data and models
/// come from and where its output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Files,
    Input,
    Against,
    Mix,
    Path,
    Output,
    Model,
    Constitution,
    Seed,
    A,
    B,
    ReferenceCache,
}

impl Slot {
    pub(crate) const ALL: [Slot; 12] = [
        Slot::Files,
        Slot::Input,
        Slot::Against,
        Slot::Mix,
        Slot::Path,
        Slot::Output,
        Slot::Model,
        Slot::Constitution,
        Slot::Seed,
        Slot::A,
        Slot::B,
        Slot::ReferenceCache,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Slot::Files => "files",
            Slot::Input => "input",
            Slot::Against => "against",
            Slot::Mix => "mix",
            Slot::Path => "path",
            Slot::Output => "output",
            Slot::Model => "model",
            Slot::Constitution => "constitution",
            Slot::Seed => "seed",
            Slot::A => "a",
            Slot::B => "b",
            Slot::ReferenceCache => "reference_cache",
        }
    }
}

/// What a stage of one kind takes.
pub(crate) struct Description {
    /// Its slots.
    pub(crate) slots: &'static [Slot],
    /// The kinds of stage its `input` (and `against`, `mix`) may name.
    pub(crate) reads: &'static [StageKind],
    /// Its own settings: the fields of its settings structs.
    pub(crate) settings: Vec<&'static str>,
    /// Whether it also takes the generation settings (and `[defaults]`).
    pub(crate) generates: bool,
}

impl StageKind {
    /// Every kind a build file may declare.
    pub const ALL: [StageKind; 18] = [
        StageKind::Table,
        StageKind::Import,
        StageKind::Dedup,
        StageKind::Filter,
        StageKind::Respond,
        StageKind::Critique,
        StageKind::Revise,
        StageKind::Pair,
        StageKind::Label,
        StageKind::Rate,
        StageKind::Score,
        StageKind::Export,
        StageKind::Train,
        StageKind::Eval,
        StageKind::Queries,
        StageKind::Augment,
        StageKind::Target,
        StageKind::Probe,
    ];

    /// The name used in build files.
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Table => "table",
            StageKind::Import => "import",
            StageKind::Dedup => "dedup",
            StageKind::Filter => "filter",
            StageKind::Respond => "respond",
            StageKind::Critique => "critique",
            StageKind::Revise => "revise",
            StageKind::Pair => "pair",
            StageKind::Label => "label",
            StageKind::Rate => "rate",
            StageKind::Score => "score",
            StageKind::Export => "export",
            StageKind::Train => "train",
            StageKind::Eval => "eval",
            StageKind::Queries => "queries",
            StageKind::Augment => "augment",
            StageKind::Target => "target",
            StageKind::Probe => "probe",
            StageKind::Slice => "slice",
        }
    }

    /// Whether the stage writes a table (its output can be another stage's `input`).
    pub fn makes_table(self) -> bool {
        !matches!(
            self,
            StageKind::Train | StageKind::Eval | StageKind::Export | StageKind::Probe
        )
    }

    /// What a stage of this kind takes.
    pub(crate) fn describe(self) -> Description {
        use Slot::*;
        use StageKind as K;
        const MODEL_STAGE: &[Slot] = &[Input, Output, Model, Constitution, Seed];
        // A `table`, `dedup` or `filter` stage may hold several kinds of
        // table: the stage checks its name when it runs.
        const PROMPTS: &[StageKind] = &[K::Table, K::Import, K::Dedup];
        const ANSWERS: &[StageKind] = &[K::Table, K::Dedup, K::Filter, K::Respond, K::Revise];
        const QUERIES: &[StageKind] = &[K::Table, K::Dedup, K::Queries, K::Augment];
        let d = |slots, reads, settings: &[&[&'static str]], generates| Description {
            slots,
            reads,
            settings: settings.concat(),
            generates,
        };
        match self {
            K::Table => d(&[Path], &[], &[], false),
            K::Slice => d(&[Input, Output], &[], &[], false),
            K::Import => d(
                &[Files, Output],
                &[],
                &[fields_of::<ImportSettings>(), fields_of::<DedupSettings>()],
                false,
            ),
            K::Dedup => d(
                &[Input, Output],
                &[
                    K::Table,
                    K::Import,
                    K::Dedup,
                    K::Filter,
                    K::Respond,
                    K::Critique,
                    K::Revise,
                    K::Pair,
                    K::Label,
                    K::Rate,
                ],
                &[
                    fields_of::<TableDedupSettings>(),
                    fields_of::<DedupSettings>(),
                ],
                false,
            ),
            K::Filter => d(
                &[Input, Output],
                &[
                    K::Table,
                    K::Dedup,
                    K::Filter,
                    K::Respond,
                    K::Critique,
                    K::Revise,
                ],
                &[fields_of::<FilterSettings>()],
                false,
            ),
            K::Respond => d(
                &[Input, Output, Model, Seed],
                &[K::Table, K::Import, K::Dedup, K::Queries, K::Augment],
                &[fields_of::<RespondSettings>()],
                true,
            ),
            K::Critique => d(
                MODEL_STAGE,
                ANSWERS,
                &[fields_of::<CritiqueSettings>()],
                true,
            ),
            K::Revise => d(
                MODEL_STAGE,
                &[K::Table, K::Dedup, K::Filter, K::Critique],
                &[],
                true,
            ),
            K::Pair => d(&[Input, Against, Output], ANSWERS, &[], false),
            K::Label => d(
                MODEL_STAGE,
                &[K::Table, K::Dedup, K::Pair],
                &[fields_of::<LabelSettings>()],
                true,
            ),
            K::Rate => d(MODEL_STAGE, ANSWERS, &[fields_of::<RateSettings>()], true),
            K::Score => d(
                &[Input, Output, Model],
                &[
                    K::Table,
                    K::Dedup,
                    K::Filter,
                    K::Respond,
                    K::Revise,
                    K::Pair,
                    K::Label,
                ],
                &[fields_of::<ScoreSettings>()],
                false,
            ),
            K::Export => d(
                &[Input, Output],
                &[K::Table, K::Dedup, K::Filter, K::Label, K::Revise],
                &[fields_of::<ExportSettings>()],
                false,
            ),
            K::Train => d(
                &[Input, Mix, Output, Model, Seed, ReferenceCache],
                &[
                    K::Table,
                    K::Import,
                    K::Dedup,
                    K::Filter,
                    K::Respond,
                    K::Revise,
                    K::Label,
                    K::Target,
                ],
                &[
                    fields_of::<TaskConfig>(),
                    fields_of::<TrainConfig>(),
                    fields_of::<RlSettings>(),
                ],
                false,
            ),
            K::Eval => d(
                &[Input, Output, Model, Constitution, Seed, A, B],
                PROMPTS,
                &[fields_of::<PolicyEvalSettings>()],
                true,
            ),
            // The constitution of these three is a classifier constitution.
            K::Queries => d(
                &[Output, Model, Constitution, Seed],
                &[],
                &[fields_of::<QuerySettings>()],
                true,
            ),
            // The model writes the rewrites (`paraphrase`, `past`, `future`).
            K::Augment => d(
                &[Input, Output, Model, Seed],
                QUERIES,
                &[fields_of::<AugmentSettings>()],
                true,
            ),
            // Queries, or responses (`input`) to the queries named by `against`.
            K::Target => d(
                &[Input, Against, Output, Model, Constitution, Seed],
                &[K::Table, K::Dedup, K::Queries, K::Augment, K::Respond],
                &[fields_of::<TargetSettings>()],
                true,
            ),
            // The model is the policy whose states the probe reads.
            K::Probe => d(
                &[Input, Output, Model, Seed],
                &[K::Table, K::Dedup, K::Target],
                &[fields_of::<ProbeSettings>()],
                false,
            ),
        }
    }

    /// Every field a stage of this kind may set besides `name` and `kind`.
    pub(crate) fn fields(self) -> Vec<&'static str> {
        let d = self.describe();
        let mut all: Vec<&'static str> = d.slots.iter().map(|s| s.name()).collect();
        all.extend(d.settings);
        if d.generates {
            all.extend(fields_of::<GenSettings>());
        }
        all
    }
}
