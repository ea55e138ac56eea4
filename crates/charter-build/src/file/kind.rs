//! The kinds of stage a build file declares, and what each takes: its
//! slots (inputs, output, model, constitution, seed) and its settings,
//! whose names come from the settings structs the stages and the
//! command line share.

use charter_stages::{
    CritiqueSettings, ExportSettings, GenSettings, LabelSettings, PolicyEvalSettings,
    RespondSettings,
};
use charter_train::{TaskConfig, TrainConfig};
use serde::Deserialize;

use super::source::fields_of;

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

/// A field of a stage that is not a setting: where its data and models
/// come from and where its output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
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
    pub(crate) const ALL: [Slot; 11] = [
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
    /// Its own settings (one struct's fields).
    pub(crate) settings: &'static [&'static str],
    /// Whether it also takes the generation settings (and `[defaults]`).
    pub(crate) generates: bool,
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

    /// What a stage of this kind takes.
    pub(crate) fn describe(self) -> Description {
        use Slot::*;
        use StageKind as K;
        const MODEL_STAGE: &[Slot] = &[Input, Output, Model, Constitution, Seed];
        let d = |slots, reads, settings, generates| Description {
            slots,
            reads,
            settings,
            generates,
        };
        match self {
            K::Table => d(&[Path], &[], &[], false),
            K::Respond => d(
                &[Input, Output, Model, Seed],
                &[K::Table],
                fields_of::<RespondSettings>(),
                true,
            ),
            K::Critique => d(
                MODEL_STAGE,
                &[K::Table, K::Respond, K::Revise],
                fields_of::<CritiqueSettings>(),
                true,
            ),
            K::Revise => d(MODEL_STAGE, &[K::Table, K::Critique], &[], true),
            K::Pair => d(
                &[Input, Against, Output],
                &[K::Table, K::Respond, K::Revise],
                &[],
                false,
            ),
            K::Label => d(
                MODEL_STAGE,
                &[K::Table, K::Pair],
                fields_of::<LabelSettings>(),
                true,
            ),
            K::Export => d(
                &[Input, Output],
                &[K::Table, K::Label, K::Revise],
                fields_of::<ExportSettings>(),
                false,
            ),
            K::Train => d(
                &[Input, Mix, Output, Model, Seed, ReferenceCache],
                &[K::Table, K::Respond, K::Revise, K::Label],
                train_fields(),
                false,
            ),
            K::Eval => d(
                &[Input, Output, Model, Constitution, Seed, A, B],
                &[K::Table],
                fields_of::<PolicyEvalSettings>(),
                true,
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

/// A `train` stage's settings: the trainer's and the objective's.
fn train_fields() -> &'static [&'static str] {
    static FIELDS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    FIELDS.get_or_init(|| {
        let mut all = fields_of::<TaskConfig>().to_vec();
        all.extend(fields_of::<TrainConfig>());
        all
    })
}
