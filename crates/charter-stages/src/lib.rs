//! charter's pipeline stages: pure transforms from input tables, settings,
//! model and seed to an output table, resumable and cached by build key.
//!
//! - [`respond`]: prompts → responses, optionally guarded by constitutional
//!   classifiers ([`StreamGuard`]).
//! - [`critique`]: responses (round 1) or revisions (later rounds) →
//!   critiques, one principle drawn per row and round.
//! - [`revise`]: critiques → revisions.
//! - [`pair`]: responses (two samples), or two tables → pairs.
//! - [`label`]: pairs → AI-feedback labels (soft, both orders, optional
//!   chain of thought).
//! - [`rate`]: responses or revisions → ratings of one answer each against
//!   a principle (direct RLAIF's reward), read from digit probabilities.
//! - [`filter_table`]: responses, critiques or revisions → the same table
//!   with quality flags, without the rows they condemn.
//! - [`export`]: labels or revisions → the JSON-lines layouts trainers read.
//! - [`eval_labeller`]: a labeller's agreement with human comparisons.
//!
//! Build files (`charter build`) that run a graph of these stages are
//! charter-build's.
//!
//! Constitutions ([`Constitution`]) hold the principles, worked examples
//! and prompt templates the model stages render.
//!
//! A stage reads no clock and no global random state: each row's seed is
//! derived from the build seed and the row's identity ([`row_seed`]).

pub mod classifier;
pub mod constitution;
mod critique;
mod error;
mod eval;
mod export;
mod generate;
mod guard;
mod label;
mod model;
mod pair;
mod policy_eval;
mod prompts;
pub mod quality;
mod rate;
mod respond;
mod seed;
mod stop;

pub use constitution::{
    Constitution, ConstitutionError, CritiqueExample, CritiquePrinciple, LabelExample,
    PreferencePrinciple, Templates,
};
pub use critique::{
    CRITIQUE_VERSION, CritiqueSettings, REVISE_VERSION, critique, critique_provenance, revise,
    revise_provenance,
};
pub use error::{Error, Result};
pub use eval::{
    CalibrationBucket, HumanComparison, LabellerReport, eval_labeller, read_comparisons,
};
pub use export::{ExportFormat, ExportSettings, export};
pub use generate::{GenSettings, StageProgress, StageSummary};
pub use guard::{REFUSAL, Refused, StreamGuard, Watch};
pub use label::{LABEL_VERSION, LabelSettings, label, label_provenance};
pub use model::Model;
pub use pair::{PAIR_VERSION, PairSummary, pair, pair_provenance};
pub use policy_eval::{
    Contestants, PolicyEvalReport, PolicyEvalSettings, PolicyEvalStep, eval_policy,
};
pub use prompts::{
    DEDUP_VERSION, DedupSettings, DedupSummary, IMPORT_VERSION, ImportFormat, ImportSettings,
    TableDedupSettings, dedup_provenance, dedup_table, import_prompts, import_provenance,
};
pub use quality::{
    FILTER_VERSION, FilterSettings, FilterSummary, Flag, filter_provenance, filter_table,
};
pub use rate::{
    RATE_VERSION, RATINGS_SCALE, RateSettings, Rated, Rater, expected_rating, rate, rate_provenance,
};
pub use respond::{
    MAX_SAMPLES, RespondProgress, RespondSettings, RespondSummary,
    STAGE_VERSION as RESPOND_VERSION, provenance as respond_provenance, respond,
};
pub use seed::row_seed;
pub use stop::StopStrings;
