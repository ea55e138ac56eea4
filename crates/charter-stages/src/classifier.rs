//! Constitutional Classifiers (Sharma et al. 2025): guards trained from a
//! constitution of blocked and allowed content.
//!
//! - [`ClassifierConstitution`]: the categories, their examples and the
//!   judge's and generator's templates.
//! - [`queries`]: synthetic user messages for every category.
//! - [`augment`]: copies of queries encoded, enciphered or wrapped in
//!   jailbreak templates.
//! - [`target`]: soft targets, P(blocked), from a labeller's token
//!   probabilities under the constitution.

mod augment;
mod constitution;
mod queries;
mod target;

pub use augment::{
    AUGMENT_VERSION, AugmentSettings, Jailbreak, REWRITES, TEMPLATES, TRANSFORMS, apply, augment,
    augment_provenance, decode, read_jailbreaks,
};
pub use queries::{MAX_PER_CATEGORY, QUERIES_VERSION, QuerySettings, queries, queries_provenance};
pub use target::{TARGET_VERSION, TargetSettings, target, target_provenance};

pub use constitution::{
    Category, ClassifierConstitution, ClassifierTemplates, Verdict, is_classifier_constitution,
};
