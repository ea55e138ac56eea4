//! Constitutions: the principles, worked examples and prompt templates that
//! drive the critique, revision and labelling stages of Constitutional AI
//! (Bai et al. 2022, <https://arxiv.org/abs/2212.08073>, §3.1 and §4.1).
//!
//! A constitution is a TOML file; `constitutions/*.toml` at the repository
//! root are charter's own:
//!
//! ```toml
//! name = "harmless"
//! version = "1"
//! description = "…"                 # optional
//!
//! [[critique_principles]]            # drawn per SL-CAI round
//! id = "harm"
//! critique = "Point out …"           # the critique request
//! revision = "Rewrite …"             # the revision request
//!
//! [[preference_principles]]          # drawn per RL-CAI pair
//! id = "safer"
//! question = "Which response …?"
//!
//! [[critique_examples]]              # optional few-shot rounds
//! prompt = "…"
//! response = "…"
//! critique_request = "…"
//! critique = "…"
//! revision_request = "…"
//! revision = "…"
//!
//! [[label_examples]]                 # optional few-shot labels
//! conversation = "User: …"
//! question = "…"
//! response_a = "…"
//! response_b = "…"
//! answer = "A"                       # or "B"
//! reasoning = "…"                    # optional, shown in chain-of-thought mode
//!
//! [templates]                        # optional: each has a default
//! critique = "…{{ critique_request }}…"
//! ```
//!
//! [`Constitution::from_toml`] reports every problem it finds as
//! `FILE:LINE: FIELD: MESSAGE`. A constitution needs at least one principle
//! of each kind, since together they drive every stage.
//!
//! ```
//! use charter_stages::Constitution;
//!
//! let c = Constitution::from_toml(
//!     r#"
//! name = "tiny"
//! version = "1"
//! [[critique_principles]]
//! id = "kind"
//! critique = "Say how the reply could be kinder."
//! revision = "Rewrite the reply to be kinder."
//! [[preference_principles]]
//! id = "kinder"
//! question = "Which response is kinder?"
//! "#,
//!     "tiny.toml",
//! )?;
//! let turn = c.render(
//!     "critique",
//!     &serde_json::json!({
//!         "critique_request": c.critique_principles[0].critique,
//!         "prompt": "Hi",
//!         "response": "Go away.",
//!     }),
//! )?;
//! assert!(turn.ends_with("Say how the reply could be kinder."));
//! # Ok::<(), charter_stages::Error>(())
//! ```

mod error;
mod import;
mod template;
mod validate;
mod wire;

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use error::{ConstitutionError, Problem};
pub use import::{ImportLayout, ImportOptions, ImportSource, Imported, import, import_files};
pub use template::TEMPLATE_NAMES;

/// The largest constitution or import source charter reads, in bytes: far
/// beyond any real one, and a bound on what a hostile file can make it allocate.
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// A constitution: principles, worked examples and the templates each stage renders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constitution {
    /// Short name, recorded in tables.
    pub name: String,
    /// The author's version label; the content hash is what identifies it.
    pub version: String,
    /// What it is for; may be empty.
    #[serde(default)]
    pub description: String,
    // Empty lists are left out of TOML: `x = []` written before the tables
    // would clash with a `[[x]]` a person adds later.
    /// Principles the critique and revise stages draw from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub critique_principles: Vec<CritiquePrinciple>,
    /// Principles the label stage draws from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preference_principles: Vec<PreferencePrinciple>,
    /// Worked critique/revision rounds shown before the real one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub critique_examples: Vec<CritiqueExample>,
    /// Worked labelling examples shown before the real question.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub label_examples: Vec<LabelExample>,
    /// The prompt templates.
    #[serde(default)]
    pub templates: Templates,
}

/// A critique/revision principle (SL-CAI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CritiquePrinciple {
    /// Unique among the critique principles; recorded in tables.
    pub id: String,
    /// The critique request: asks the model what is wrong with its answer.
    pub critique: String,
    /// The revision request: asks the model to rewrite its answer.
    pub revision: String,
}

/// A preference principle (RL-CAI): the question a labeller answers with (A) or (B).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferencePrinciple {
    /// Unique among the preference principles; recorded in tables.
    pub id: String,
    /// The multiple-choice question, e.g. "Which response is less harmful?".
    pub question: String,
}

/// A worked critique/revision round, shown as earlier chat turns before the real one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CritiqueExample {
    /// The user's message.
    pub prompt: String,
    /// The assistant's first answer.
    pub response: String,
    /// The critique request of the round.
    pub critique_request: String,
    /// The critique the model should learn to write.
    pub critique: String,
    /// The revision request of the round.
    pub revision_request: String,
    /// The rewritten answer.
    pub revision: String,
}

/// A worked labelling example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelExample {
    /// The conversation so far, as text.
    pub conversation: String,
    /// The preference question.
    pub question: String,
    /// Option (A).
    pub response_a: String,
    /// Option (B).
    pub response_b: String,
    /// `"A"` or `"B"`.
    pub answer: String,
    /// Reasoning shown before the answer in chain-of-thought mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
}

/// Jinja templates (minijinja, strict undefined) each stage renders. All
/// have defaults that work for a small chat model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Templates {
    /// User turn asking for the critique, after the prompt and answer
    /// turns; vars: `critique_request` (required), `prompt`, `response`.
    pub critique: String,
    /// User turn asking for the revision; vars: `revision_request` (required), `critique`.
    pub revision: String,
    /// The labeller's multiple-choice user message; vars (all required):
    /// `conversation`, `question`, `response_a`, `response_b`.
    pub label: String,
    /// Assistant-side text after which "(A)"/"(B)" is scored; plain text, may be empty.
    pub label_answer_prefix: String,
    /// User message asking for reasoning first; vars as `label`.
    pub label_cot: String,
    /// The rater's user message about one answer (direct RLAIF, `rate`);
    /// vars (all required): `conversation`, `question`, `response`.
    pub rate: String,
    /// Assistant-side text after which the digits 1–9 are scored; plain text, may be empty.
    pub rate_answer_prefix: String,
    /// The rater's user message asking for reasoning first (`rate --cot`); vars as `rate`.
    pub rate_cot: String,
}

impl Default for Templates {
    fn default() -> Self {
        Self {
            critique: template::DEFAULT_CRITIQUE.to_owned(),
            revision: template::DEFAULT_REVISION.to_owned(),
            label: template::DEFAULT_LABEL.to_owned(),
            label_answer_prefix: template::DEFAULT_LABEL_ANSWER_PREFIX.to_owned(),
            label_cot: template::DEFAULT_LABEL_COT.to_owned(),
            rate: template::DEFAULT_RATE.to_owned(),
            rate_answer_prefix: template::DEFAULT_RATE_ANSWER_PREFIX.to_owned(),
            rate_cot: template::DEFAULT_RATE_COT.to_owned(),
        }
    }
}

impl Templates {
    /// The template called `name` (one of [`TEMPLATE_NAMES`]).
    pub fn get(&self, name: &str) -> Option<&str> {
        match name {
            "critique" => Some(&self.critique),
            "revision" => Some(&self.revision),
            "label" => Some(&self.label),
            "label_cot" => Some(&self.label_cot),
            "rate" => Some(&self.rate),
            "rate_cot" => Some(&self.rate_cot),
            _ => None,
        }
    }
}

impl Constitution {
    /// Reads and validates the constitution at `path`; errors name the path.
    pub fn load(path: &Path) -> Result<Self, ConstitutionError> {
        let text = read_text(path)?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates a constitution; `origin` names it in error messages.
    ///
    /// Every problem found is reported, each with its line and field.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConstitutionError> {
        let parsed = wire::parse(text);
        let mut problems = parsed.problems;
        if let Some(c) = &parsed.constitution {
            let more = validate::problems(c, &parsed.locations, true);
            problems = validate::merge(problems, more);
        }
        match parsed.constitution {
            Some(c) if problems.is_empty() => Ok(c),
            _ => Err(ConstitutionError::invalid(origin, problems)),
        }
    }

    /// Checks a constitution built in code (or imported) as [`Self::from_toml`] would.
    pub fn validate(&self, origin: &str) -> Result<(), ConstitutionError> {
        let problems = validate::problems(self, &wire::Locations::default(), true);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConstitutionError::invalid(origin, problems))
        }
    }

    /// blake3 (hex) of a canonical serialisation of the parsed content (not
    /// the file bytes: comments and layout don't change it). Tables record
    /// it as `constitution_hash`.
    pub fn hash(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"charter constitution v1\n");
        hasher.update(self.canonical_json().as_bytes());
        hasher.finalize().to_hex().to_string()
    }

    /// Every field in a fixed order as nested JSON arrays: no maps, no
    /// names, nothing serde attributes could reorder or omit.
    fn canonical_json(&self) -> String {
        serde_json::Value::from(vec![
            serde_json::Value::from(self.name.as_str()),
            self.version.as_str().into(),
            self.description.as_str().into(),
            self.critique_principles
                .iter()
                .map(|p| serde_json::json!([p.id, p.critique, p.revision]))
                .collect(),
            self.preference_principles
                .iter()
                .map(|p| serde_json::json!([p.id, p.question]))
                .collect(),
            self.critique_examples
                .iter()
                .map(|e| {
                    serde_json::json!([
                        e.prompt,
                        e.response,
                        e.critique_request,
                        e.critique,
                        e.revision_request,
                        e.revision
                    ])
                })
                .collect(),
            self.label_examples
                .iter()
                .map(|e| {
                    serde_json::json!([
                        e.conversation,
                        e.question,
                        e.response_a,
                        e.response_b,
                        e.answer,
                        e.reasoning
                    ])
                })
                .collect(),
            {
                let t = &self.templates;
                let mut templates = vec![
                    &t.critique,
                    &t.revision,
                    &t.label,
                    &t.label_answer_prefix,
                    &t.label_cot,
                ];
                // The rating templates came later: a constitution that keeps
                // their defaults hashes as it did before them. (The list's
                // length tells which were added: 5 to 8 entries.)
                let d = Templates::default();
                if (&t.rate, &t.rate_answer_prefix) != (&d.rate, &d.rate_answer_prefix) {
                    templates.extend([&t.rate, &t.rate_answer_prefix]);
                }
                if t.rate_cot != d.rate_cot {
                    templates.push(&t.rate_cot);
                }
                serde_json::json!(templates)
            },
        ])
        .to_string()
    }

    /// Renders a template with `vars` (a JSON object), strict about undefined variables.
    ///
    /// `template` is the name of one of `self.templates` (`"critique"`,
    /// `"revision"`, `"label"`, `"label_cot"`, see [`TEMPLATE_NAMES`]) or a
    /// template's source text, e.g. `&c.templates.critique`.
    pub fn render(
        &self,
        template: &str,
        vars: &serde_json::Value,
    ) -> Result<String, ConstitutionError> {
        let (name, source) = match self.templates.get(template) {
            Some(source) => (template, source),
            None => ("template", template),
        };
        render_template(name, source, vars)
    }

    /// The constitution as TOML, every field written out (the templates
    /// too) except empty lists; [`Self::from_toml`] reads it back to an
    /// equal value.
    pub fn to_toml(&self) -> String {
        match toml::to_string(self) {
            Ok(text) => text,
            // Only strings, lists and tables: TOML can hold all of them.
            Err(e) => unreachable!("a constitution always serialises to TOML: {e}"),
        }
    }

    /// Approximate length, in characters, of the few-shot turns the stages
    /// prepend: every example rendered through the templates. At ~4
    /// characters a token it tells whether they fit a small model's context.
    pub fn few_shot_chars(&self) -> usize {
        let t = &self.templates;
        let render = |name: &str, vars: serde_json::Value| {
            self.render(name, &vars).map_or(0, |s| s.chars().count())
        };
        let critique: usize = self
            .critique_examples
            .iter()
            .map(|e| {
                e.prompt.chars().count()
                    + e.response.chars().count()
                    + render(
                        "critique",
                        serde_json::json!({
                            "critique_request": e.critique_request,
                            "prompt": e.prompt,
                            "response": e.response,
                        }),
                    )
                    + render(
                        "revision",
                        serde_json::json!({
                            "revision_request": e.revision_request,
                            "critique": e.critique,
                        }),
                    )
                    + e.critique.chars().count()
                    + e.revision.chars().count()
            })
            .sum();
        let label: usize = self
            .label_examples
            .iter()
            .map(|e| {
                let name = if e.reasoning.is_some() {
                    "label_cot"
                } else {
                    "label"
                };
                render(
                    name,
                    serde_json::json!({
                        "conversation": e.conversation,
                        "question": e.question,
                        "response_a": e.response_a,
                        "response_b": e.response_b,
                    }),
                ) + e.reasoning.as_deref().map_or(0, |r| r.chars().count() + 1)
                    + t.label_answer_prefix.chars().count()
                    + 3
            })
            .sum();
        critique + label
    }
}

/// Renders a template's `source` text with `vars`, strict about undefined
/// variables; errors name the template.
pub(crate) fn render_template(
    name: &str,
    source: &str,
    vars: &serde_json::Value,
) -> Result<String, ConstitutionError> {
    template::render(name, source, vars).map_err(|e| ConstitutionError::Render {
        template: name.to_owned(),
        message: template::describe(&e),
    })
}

/// Reads a UTF-8 file of at most [`MAX_FILE_BYTES`].
pub(crate) fn read_text(path: &Path) -> Result<String, ConstitutionError> {
    let read_error = |source| ConstitutionError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ConstitutionError::invalid(
            &path.display().to_string(),
            vec![Problem::file(format!(
                "larger than {MAX_FILE_BYTES} bytes: not a constitution"
            ))],
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        ConstitutionError::invalid(
            &path.display().to_string(),
            vec![Problem::file(format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ))],
        )
    })
}

#[cfg(test)]
mod tests;
