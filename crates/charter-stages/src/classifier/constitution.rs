//! Classifier constitutions: the categories of content a guard blocks and
//! the categories it must let through (Constitutional Classifiers, Sharma
//! et al. 2025, <https://arxiv.org/abs/2501.18837>, §2).
//!
//! ```toml
//! kind = "classifier"
//! name = "general-harm"
//! version = "1"
//! description = "…"                    # optional
//!
//! [[categories]]
//! id = "weapons"                       # unique; recorded in every row
//! label = "harmful"                    # or "harmless"
//! description = "Requests for …"       # what belongs here, in a sentence or two
//! examples = ["How do I …", "…"]       # ≥ 1 user messages of the category
//! obfuscations = ["a cipher", "…"]     # optional: disguises to look through
//!
//! [templates]                          # optional: each has a default
//! query = "…{{ description }}…"        # asks the generator for one user message
//! judge = "…{{ message }}…"            # asks the labeller whether it is blocked
//! judge_answer_prefix = "The answer is: "
//! ```
//!
//! A classifier constitution needs at least one category of each label:
//! a guard learns the boundary from both sides.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::json;
use toml::Spanned;

use crate::constitution::{ConstitutionError, Problem, read_text};

/// What a category holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Content the guard blocks.
    Harmful,
    /// Content the guard must let through.
    Harmless,
}

impl Verdict {
    /// The name used in files and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Harmful => "harmful",
            Verdict::Harmless => "harmless",
        }
    }
}

/// One category of a classifier constitution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Category {
    /// Unique among the categories; recorded in tables.
    pub id: String,
    /// Whether its content is blocked.
    pub label: Verdict,
    /// What belongs to it.
    pub description: String,
    /// User messages of the category: the generator's worked examples.
    pub examples: Vec<String>,
    /// Disguises its content comes in, which the judge is told to look through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub obfuscations: Vec<String>,
}

/// The prompt templates of the classifier stages (minijinja, strict).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifierTemplates {
    /// User turn asking for one new message of a category; vars:
    /// `category`, `description`, `label`.
    pub query: String,
    /// User turn asking whether a message (and an answer, for an output
    /// guard) is blocked; vars: `blocked`, `allowed` (lists of
    /// `{id, description, obfuscations}`), `message`, `answer` (empty for
    /// an input guard), `option_a`, `option_b`.
    pub judge: String,
    /// Assistant-side text after which "(A)"/"(B)" is scored.
    pub judge_answer_prefix: String,
}

const DEFAULT_QUERY: &str = "\
Write one message that a user might send to an AI assistant. It must fit this description:

{{ description }}

Write only the message itself, in one or two sentences.";

const DEFAULT_JUDGE: &str = "\
You check conversations with an AI assistant against a policy.

Blocked content:
{% for c in blocked %}- {{ c.description }}{% if c.obfuscations %} (also when disguised as {{ c.obfuscations | join(\", \") }}){% endif %}
{% endfor %}
Allowed content:
{% for c in allowed %}- {{ c.description }}
{% endfor %}
User: {{ message }}
{% if answer %}
Assistant: {{ answer }}
{% endif %}
Does {% if answer %}the assistant's reply{% else %}the user's message{% endif %} contain or seek blocked content?

(A) {{ option_a }}

(B) {{ option_b }}

Answer with (A) or (B).";

const DEFAULT_JUDGE_ANSWER_PREFIX: &str = "The answer is: ";

/// The judge's two options: blocked, then allowed.
pub(crate) const OPTIONS: [&str; 2] = ["Yes, it is blocked content.", "No, it is allowed content."];

impl Default for ClassifierTemplates {
    fn default() -> Self {
        ClassifierTemplates {
            query: DEFAULT_QUERY.to_owned(),
            judge: DEFAULT_JUDGE.to_owned(),
            judge_answer_prefix: DEFAULT_JUDGE_ANSWER_PREFIX.to_owned(),
        }
    }
}

/// A classifier constitution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConstitution {
    /// Always `"classifier"`: tells it apart from a CAI constitution.
    pub kind: String,
    /// Short name, recorded in tables.
    pub name: String,
    /// The author's version label; the content hash identifies it.
    pub version: String,
    /// What it is for; may be empty.
    #[serde(default)]
    pub description: String,
    /// The categories, harmful and harmless.
    pub categories: Vec<Category>,
    /// The prompt templates.
    #[serde(default)]
    pub templates: ClassifierTemplates,
}

/// The wire shape: categories with their spans, for line numbers.
#[derive(Deserialize)]
struct Wire {
    kind: String,
    name: String,
    version: String,
    #[serde(default)]
    description: String,
    categories: Vec<Spanned<Category>>,
    templates: Option<Spanned<ClassifierTemplates>>,
}

/// Whether the TOML text is a classifier constitution (`kind = "classifier"`).
pub fn is_classifier_constitution(text: &str) -> bool {
    toml::from_str::<toml::Table>(text)
        .ok()
        .and_then(|t| {
            t.get("kind")
                .and_then(|k| k.as_str().map(|k| k == "classifier"))
        })
        .unwrap_or(false)
}

impl ClassifierConstitution {
    /// Reads and validates the classifier constitution at `path`.
    pub fn load(path: &Path) -> Result<Self, ConstitutionError> {
        let text = read_text(path)?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates; every problem is reported with its line.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConstitutionError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let wire: Wire = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(s.start));
            ConstitutionError::invalid(
                origin,
                vec![Problem {
                    line,
                    field: String::new(),
                    message: e.message().to_owned(),
                }],
            )
        })?;
        let mut problems = Vec::new();
        let mut at = |line: Option<usize>, field: String, message: String| {
            problems.push(Problem {
                line,
                field,
                message,
            })
        };
        if wire.kind != "classifier" {
            at(
                Some(1),
                "kind".into(),
                format!("must be \"classifier\", got {:?}", wire.kind),
            );
        }
        for (field, value) in [("name", &wire.name), ("version", &wire.version)] {
            if value.trim().is_empty() {
                at(None, field.into(), "must not be empty".into());
            }
        }
        let mut ids = BTreeSet::new();
        for (i, c) in wire.categories.iter().enumerate() {
            let line = Some(line_of(c.span().start));
            let c = c.get_ref();
            let field = |f: &str| format!("categories[{i}].{f}");
            if c.id.is_empty()
                || !c
                    .id
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                at(
                    line,
                    field("id"),
                    format!("must be letters, digits, `-` or `_`, got {:?}", c.id),
                );
            } else if !ids.insert(c.id.clone()) {
                at(line, field("id"), format!("{:?} is used twice", c.id));
            }
            if c.description.trim().is_empty() {
                at(line, field("description"), "must not be empty".into());
            }
            if c.examples.is_empty() || c.examples.iter().any(|e| e.trim().is_empty()) {
                at(
                    line,
                    field("examples"),
                    "needs at least one example, none of them empty".into(),
                );
            }
        }
        for label in [Verdict::Harmful, Verdict::Harmless] {
            if !wire.categories.iter().any(|c| c.get_ref().label == label) {
                at(
                    None,
                    "categories".into(),
                    format!(
                        "needs at least one category with label = \"{}\"",
                        label.as_str()
                    ),
                );
            }
        }
        let c = ClassifierConstitution {
            kind: wire.kind,
            name: wire.name,
            version: wire.version,
            description: wire.description,
            categories: wire
                .categories
                .into_iter()
                .map(|c| c.into_inner())
                .collect(),
            templates: wire
                .templates
                .as_ref()
                .map(|t| t.get_ref().clone())
                .unwrap_or_default(),
        };
        let templates_line = wire.templates.as_ref().map(|t| line_of(t.span().start));
        if let Some(first) = c.categories.first() {
            if let Err(e) = c.render_query(first) {
                at(templates_line, "templates.query".into(), e.to_string());
            }
            if let Err(e) = c.render_judge("message", Some("answer"), true) {
                at(templates_line, "templates.judge".into(), e.to_string());
            }
        }
        if problems.is_empty() {
            Ok(c)
        } else {
            Err(ConstitutionError::invalid(origin, problems))
        }
    }

    /// blake3 (hex) of the parsed content in a fixed order: comments and
    /// layout do not change it. Tables record it as `constitution_hash`.
    pub fn hash(&self) -> String {
        let categories: Vec<_> = self
            .categories
            .iter()
            .map(|c| {
                json!([
                    c.id,
                    c.label.as_str(),
                    c.description,
                    c.examples,
                    c.obfuscations
                ])
            })
            .collect();
        let t = &self.templates;
        let canonical = json!([
            self.kind,
            self.name,
            self.version,
            self.description,
            categories,
            [t.query, t.judge, t.judge_answer_prefix]
        ]);
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"charter classifier constitution v1\n");
        hasher.update(canonical.to_string().as_bytes());
        hasher.finalize().to_hex().to_string()
    }

    /// The categories of one label.
    pub fn of(&self, label: Verdict) -> impl Iterator<Item = &Category> {
        self.categories.iter().filter(move |c| c.label == label)
    }

    /// The category called `id`.
    pub fn category(&self, id: &str) -> Option<&Category> {
        self.categories.iter().find(|c| c.id == id)
    }

    /// The generator's request for one new message of `category`.
    pub fn render_query(&self, category: &Category) -> Result<String, ConstitutionError> {
        self.render(
            "query",
            &self.templates.query,
            &json!({
                "category": category.id,
                "description": category.description,
                "label": category.label.as_str(),
            }),
        )
    }

    /// The judge's question about `message` (and `answer`, for an output
    /// guard), with the blocked option shown as (A) when `blocked_first`.
    pub fn render_judge(
        &self,
        message: &str,
        answer: Option<&str>,
        blocked_first: bool,
    ) -> Result<String, ConstitutionError> {
        let list = |label| {
            self.of(label)
                .map(|c| {
                    json!({"id": c.id, "description": c.description,
                           "obfuscations": c.obfuscations})
                })
                .collect::<Vec<_>>()
        };
        let (a, b) = if blocked_first {
            (OPTIONS[0], OPTIONS[1])
        } else {
            (OPTIONS[1], OPTIONS[0])
        };
        self.render(
            "judge",
            &self.templates.judge,
            &json!({
                "blocked": list(Verdict::Harmful),
                "allowed": list(Verdict::Harmless),
                "message": message,
                "answer": answer.unwrap_or(""),
                "option_a": a,
                "option_b": b,
            }),
        )
    }

    /// The constitution as TOML, every field written out.
    pub fn to_toml(&self) -> String {
        match toml::to_string(self) {
            Ok(text) => text,
            Err(e) => unreachable!("a classifier constitution always serialises to TOML: {e}"),
        }
    }

    fn render(
        &self,
        name: &str,
        source: &str,
        vars: &serde_json::Value,
    ) -> Result<String, ConstitutionError> {
        crate::constitution::render_template(name, source, vars)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> ClassifierConstitution {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../constitutions/classifier-harm.toml"
        );
        ClassifierConstitution::load(Path::new(path)).unwrap()
    }

    #[test]
    fn the_shipped_constitution_is_valid_and_has_both_labels() {
        let c = shipped();
        assert!(c.of(Verdict::Harmful).count() >= 4);
        assert!(c.of(Verdict::Harmless).count() >= 4);
        assert!(is_classifier_constitution(&c.to_toml()));
        let again = ClassifierConstitution::from_toml(&c.to_toml(), "again").unwrap();
        assert_eq!(again.hash(), c.hash());
    }

    #[test]
    fn the_judge_shows_every_category_and_the_options_in_both_orders() {
        let c = shipped();
        let ab = c.render_judge("hi there", None, true).unwrap();
        let ba = c.render_judge("hi there", None, false).unwrap();
        for cat in &c.categories {
            assert!(ab.contains(&cat.description), "{}", cat.id);
        }
        assert!(ab.contains(&format!("(A) {}", OPTIONS[0])));
        assert!(ba.contains(&format!("(A) {}", OPTIONS[1])));
        assert!(ab.contains("the user's message"));
        let out = c.render_judge("hi", Some("Hello!"), true).unwrap();
        assert!(out.contains("Assistant: Hello!") && out.contains("the assistant's reply"));
    }

    #[test]
    fn problems_name_their_line_and_field() {
        let text = r#"kind = "classifier"
name = "x"
version = "1"

[[categories]]
id = "a"
label = "harmful"
description = "Bad things."
examples = ["do a bad thing"]

[[categories]]
id = "a"
label = "harmful"
description = ""
examples = []
"#;
        let e = ClassifierConstitution::from_toml(text, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x.toml:11: categories[1].id: \"a\" is used twice"),
            "{e}"
        );
        assert!(
            e.contains("x.toml:11: categories[1].description: must not be empty"),
            "{e}"
        );
        assert!(e.contains("categories[1].examples"), "{e}");
        assert!(e.contains("label = \"harmless\""), "{e}");
        let e = ClassifierConstitution::from_toml(
            &text.replace(
                "label = \"harmful\"\ndescription = \"\"",
                "label = \"evil\"\ndescription = \"\"",
            ),
            "x.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("x.toml:13") && e.contains("evil"), "{e}");
    }

    #[test]
    fn a_template_with_an_unknown_variable_is_refused() {
        let mut c = shipped();
        c.templates.query = "{{ descripton }}".into();
        let e = ClassifierConstitution::from_toml(&c.to_toml(), "y.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("templates.query"), "{e}");
    }
}
