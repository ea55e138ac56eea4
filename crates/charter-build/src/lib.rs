//! charter's builds: a graph of stages declared in TOML, run in dependency
//! order with per-stage caching and resumption from the build keys every
//! stage already records. The stages themselves are charter-stages'; the
//! `train` and `eval` kinds call charter-train, which is why builds live in
//! their own crate and the stages do not compile the trainer.
//!
//! - [`BuildPlan::load`] parses and checks a build file (`file`): unknown
//!   fields, unknown `input` names, cycles and fields that do not apply to a
//!   stage's kind are errors naming the file, the stage and the field.
//! - [`BuildPlan::explain`] says, without running anything, which stages
//!   would run and why (`plan`): the output is missing, an input will be
//!   rebuilt, or the recorded build key differs — and which of its parts.
//! - [`BuildPlan::run_stage`] runs one stage through the library functions
//!   (`run`); a finished output with the same build key does nothing, an
//!   interrupted one resumes from its journal. Models are loaded once per
//!   directory and thread count and kept in a [`BuildCache`].
//! - [`BuildPlan::for_shard`] and [`BuildPlan::merged`] split a build over
//!   machines and put it back together byte for byte (`shard`);
//!   [`slurm_script`] and [`k8s_manifests`] write the job files that run
//!   it on Slurm or Kubernetes (`launch`).

mod error;
mod estimate;
mod file;
mod launch;
mod plan;
mod run;
mod shard;

pub use charter_table::Shard;
pub use error::{Error, Result};
pub use estimate::{Estimate, Rate, measured_rate, report_rates};
pub use file::{BuildPlan, EvalOp, PlannedStage, StageKind, StageOp, TrainOp};
pub use launch::{
    K8sLaunch, Launch, SLURM_MAX_ARRAY_SIZE, SlurmLaunch, k8s_manifests, slurm_script,
};
pub use plan::{StageStatus, Verdict};
pub use run::{BuildCache, OutcomeStatus, StageOutcome};
pub use shard::{Placement, ShardState};
