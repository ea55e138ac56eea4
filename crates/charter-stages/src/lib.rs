//! charter's pipeline stages: pure transforms from input tables, settings,
//! model and seed to an output table, resumable and cached by build key.
//!
//! - [`respond`]: prompts → responses.
//!
//! A stage reads no clock and no global random state: each row's seed is
//! derived from the build seed and the row's identity ([`row_seed`]).

mod error;
mod model;
mod respond;
mod seed;
mod stop;

pub use error::{Error, Result};
pub use model::Model;
pub use respond::{
    RespondProgress, RespondSettings, RespondSummary, STAGE_VERSION as RESPOND_VERSION, respond,
};
pub use seed::row_seed;
pub use stop::StopStrings;
