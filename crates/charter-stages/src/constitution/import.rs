//! Importers for the two public JSON layouts of CAI principles:
//!
//! - the HuggingFace CAI recipe's: `{"constitutions": [{"critic": …,
//!   "revision": …}, …], "system_chat": [[{"role": "user", "content": …}, …], …]}`,
//!   each few-shot conversation being user prompt / assistant response /
//!   user critique request / assistant critique / user revision request /
//!   assistant revision; also accepted as just the list of principles;
//! - the paper repository's `CritiqueRevisionInstructions.json`:
//!   `{"harmful0": {"prompt": ["critique request"], "edit_request": "revision request"}, …}`,
//!   with preference principles from an `RLMadisonInstructions.json`-style
//!   file (a JSON list of questions).
//!
//! Neither layout has both kinds of principle plus examples of both kinds,
//! so an import takes what the source has and warns about what it lacks.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::validate;
use super::wire::{Locations, MISSING};
use super::{
    Constitution, ConstitutionError, CritiqueExample, CritiquePrinciple, PreferencePrinciple,
    Problem, Templates, read_text,
};
use crate::error::Result;

/// The JSON layouts [`import`] recognises, told apart by their shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportLayout {
    /// HuggingFace's CAI recipe: `constitutions` (`critic`/`revision`) and `system_chat`.
    HfRecipe,
    /// The CAI paper repository's `CritiqueRevisionInstructions.json`.
    PaperInstructions,
}

impl fmt::Display for ImportLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::HfRecipe => "HuggingFace CAI recipe layout",
            Self::PaperInstructions => "CAI paper repository layout",
        })
    }
}

/// Text to import and the name it goes by in messages.
#[derive(Debug, Clone, Copy)]
pub struct ImportSource<'a> {
    /// The JSON text.
    pub text: &'a str,
    /// Where it came from, for messages (a path).
    pub origin: &'a str,
}

/// What an imported constitution is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// Its name.
    pub name: String,
    /// Its version label.
    pub version: String,
    /// Its description [default: where it was imported from].
    pub description: Option<String>,
}

impl ImportOptions {
    /// Options naming the constitution `name`, version "1".
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: "1".to_owned(),
            description: None,
        }
    }
}

/// An imported constitution and what a person should know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The constitution, default templates, examples where the source had them.
    pub constitution: Constitution,
    /// The layout the source was read as.
    pub layout: ImportLayout,
    /// Things that make it less than ready, e.g. no preference principles
    /// (then [`Constitution::validate`] and `charter constitution check` fail
    /// until some are added).
    pub warnings: Vec<String>,
}

/// Few-shot examples longer than this many characters (~1,000 tokens) crowd
/// a small model's context.
const FEW_SHOT_WARN_CHARS: usize = 4000;

/// Reads `source` (and `preferences`) from files and imports them; see [`import`].
pub fn import_files(
    source: &Path,
    preferences: Option<&Path>,
    options: &ImportOptions,
) -> Result<Imported> {
    let text = read_text(source)?;
    let origin = source.display().to_string();
    let preferences = preferences
        .map(|p| Ok::<_, ConstitutionError>((read_text(p)?, p.display().to_string())))
        .transpose()?;
    import(
        ImportSource {
            text: &text,
            origin: &origin,
        },
        preferences
            .as_ref()
            .map(|(text, origin)| ImportSource { text, origin }),
        options,
    )
}

/// Imports critique principles (and few-shot rounds) from `source`, in
/// whichever public layout it has, and preference principles from
/// `preferences`: a JSON list of questions (or an object of id → question).
///
/// Ids come from the source's keys, else `p1`, `p2`, …; templates are the
/// defaults. Fails if the sources are malformed or hold no principles at
/// all; a missing kind of principle is only a warning.
pub fn import(
    source: ImportSource<'_>,
    preferences: Option<ImportSource<'_>>,
    options: &ImportOptions,
) -> Result<Imported> {
    let value: Value = parse_json(source)?;
    let mut problems = Vec::new();
    let (layout, critique_principles, critique_examples) = if is_paper_layout(&value) {
        let entries: Ordered = parse_json(source)?;
        let principles = paper_principles(entries, &mut problems);
        (ImportLayout::PaperInstructions, principles, Vec::new())
    } else if matches!(&value, Value::Array(_))
        || value
            .as_object()
            .is_some_and(|o| o.contains_key("constitutions"))
    {
        let (principles, examples) = hf_recipe(&value, &mut problems);
        (ImportLayout::HfRecipe, principles, examples)
    } else {
        return Err(invalid(
            source.origin,
            vec![Problem::file(
                "not a layout charter can import: expected an object with `constitutions` \
                 (HuggingFace CAI recipe), a list of {\"critic\", \"revision\"} objects, or an \
                 object of {\"prompt\", \"edit_request\"} entries (CritiqueRevisionInstructions.json)",
            )],
        ));
    };
    if !problems.is_empty() {
        return Err(invalid(source.origin, problems));
    }
    let preference_principles = match preferences {
        Some(p) => preference_principles(p)?,
        None => Vec::new(),
    };
    let file = Path::new(source.origin)
        .file_name()
        .map_or(source.origin.into(), |f| f.to_string_lossy());
    let constitution = Constitution {
        name: options.name.clone(),
        version: options.version.clone(),
        description: options
            .description
            .clone()
            .unwrap_or_else(|| format!("Imported from {file} ({layout}).")),
        critique_principles,
        preference_principles,
        critique_examples,
        label_examples: Vec::new(),
        templates: Templates::default(),
    };
    let problems = validate::problems(&constitution, &Locations::default(), false);
    if !problems.is_empty() {
        return Err(invalid(source.origin, problems));
    }

    let mut warnings = Vec::new();
    if constitution.critique_principles.is_empty() {
        warnings.push(
            "no critique principles: the critique and revise stages need them, and `check` \
             fails until [[critique_principles]] are added"
                .to_owned(),
        );
    }
    if constitution.preference_principles.is_empty() {
        warnings.push(
            "no preference principles: the label stage needs them, and `check` fails until \
             some are added (import a JSON list of questions with them, or add \
             [[preference_principles]] to the TOML)"
                .to_owned(),
        );
    }
    let chars = constitution.few_shot_chars();
    if chars > FEW_SHOT_WARN_CHARS {
        warnings.push(format!(
            "the few-shot examples come to ~{} tokens ({chars} characters), a lot for a small \
             model's context: consider keeping fewer",
            chars / 4
        ));
    }
    Ok(Imported {
        constitution,
        layout,
        warnings,
    })
}

fn invalid(origin: &str, problems: Vec<Problem>) -> crate::Error {
    ConstitutionError::invalid(origin, problems).into()
}

fn parse_json<T: for<'de> Deserialize<'de>>(source: ImportSource<'_>) -> Result<T> {
    serde_json::from_str(source.text).map_err(|e| {
        invalid(
            source.origin,
            vec![Problem {
                line: Some(e.line()),
                field: String::new(),
                message: format!("invalid JSON: {e}"),
            }],
        )
    })
}

/// A non-empty object whose every value is an object with `prompt` or `edit_request`.
fn is_paper_layout(value: &Value) -> bool {
    value.as_object().is_some_and(|o| {
        !o.is_empty()
            && o.values().all(|v| {
                v.as_object()
                    .is_some_and(|e| e.contains_key("prompt") || e.contains_key("edit_request"))
            })
    })
}

fn paper_principles(entries: Ordered, problems: &mut Vec<Problem>) -> Vec<CritiquePrinciple> {
    let mut principles = Vec::new();
    for (key, entry) in entries.0 {
        let critique = match entry.get("prompt") {
            Some(Value::Array(prompts)) => match prompts.first() {
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => {
                    problems.push(at(&format!("{key}.prompt[0]"), "expected a string"));
                    None
                }
                None => {
                    problems.push(at(
                        &format!("{key}.prompt"),
                        "empty list: expected at least one critique request",
                    ));
                    None
                }
            },
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                problems.push(at(
                    &format!("{key}.prompt"),
                    "expected a list of critique requests",
                ));
                None
            }
            None => {
                problems.push(at(&format!("{key}.prompt"), MISSING));
                None
            }
        };
        let revision = string_field(&entry, &key, "edit_request", problems);
        if let (Some(critique), Some(revision)) = (critique, revision) {
            principles.push(CritiquePrinciple {
                id: key,
                critique,
                revision,
            });
        }
    }
    principles
}

fn hf_recipe(
    value: &Value,
    problems: &mut Vec<Problem>,
) -> (Vec<CritiquePrinciple>, Vec<CritiqueExample>) {
    let (list, prefix, chat) = match value {
        Value::Array(items) => (Some(items), "", None),
        Value::Object(o) => (
            o.get("constitutions").and_then(Value::as_array),
            "constitutions",
            o.get("system_chat"),
        ),
        _ => (None, "", None),
    };
    let Some(list) = list else {
        problems.push(at(
            prefix,
            "expected a list of {\"critic\", \"revision\"} objects",
        ));
        return (Vec::new(), Vec::new());
    };
    let mut principles = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let field = format!("{prefix}[{i}]");
        if !item.is_object() {
            problems.push(at(&field, "expected an object with critic and revision"));
            continue;
        }
        let critic_key = if item.get("critic").is_none() && item.get("critique").is_some() {
            "critique"
        } else {
            "critic"
        };
        let critique = string_field(item, &field, critic_key, problems);
        let revision = string_field(item, &field, "revision", problems);
        let id = match item.get("id") {
            Some(Value::String(id)) => id.clone(),
            _ => format!("p{}", i + 1),
        };
        if let (Some(critique), Some(revision)) = (critique, revision) {
            principles.push(CritiquePrinciple {
                id,
                critique,
                revision,
            });
        }
    }
    let examples = match chat {
        None | Some(Value::Null) => Vec::new(),
        Some(chat) => system_chat(chat, problems),
    };
    (principles, examples)
}

/// The few-shot conversations: a list of six-message conversations, or
/// (as some copies flatten it) one list of messages in groups of six.
fn system_chat(chat: &Value, problems: &mut Vec<Problem>) -> Vec<CritiqueExample> {
    const SHAPE: &str = "expected six messages, user/assistant alternating: prompt, response, \
                         critique request, critique, revision request, revision";
    let Some(items) = chat.as_array() else {
        problems.push(at("system_chat", "expected a list of conversations"));
        return Vec::new();
    };
    let conversations: Vec<(String, Vec<&Value>)> = if items.iter().all(Value::is_object) {
        let messages: Vec<&Value> = items.iter().filter(|m| !is_system(m)).collect();
        if !messages.len().is_multiple_of(6) {
            problems.push(at(
                "system_chat",
                &format!(
                    "{} messages (system messages aside) do not split into conversations: {SHAPE}",
                    messages.len()
                ),
            ));
            return Vec::new();
        }
        messages
            .chunks(6)
            .enumerate()
            .map(|(i, c)| {
                (
                    format!("system_chat (messages {}-{})", 6 * i + 1, 6 * i + 6),
                    c.to_vec(),
                )
            })
            .collect()
    } else {
        let mut conversations = Vec::new();
        for (i, c) in items.iter().enumerate() {
            match c.as_array() {
                Some(c) => conversations.push((
                    format!("system_chat[{i}]"),
                    c.iter().filter(|m| !is_system(m)).collect(),
                )),
                None => problems.push(at(
                    &format!("system_chat[{i}]"),
                    "expected a list of messages",
                )),
            }
        }
        conversations
    };
    let mut examples = Vec::new();
    for (field, messages) in conversations {
        let roles: Vec<Option<&str>> = messages
            .iter()
            .map(|m| m.get("role").and_then(Value::as_str))
            .collect();
        let contents: Vec<Option<&str>> = messages
            .iter()
            .map(|m| m.get("content").and_then(Value::as_str))
            .collect();
        let expected = ["user", "assistant"].repeat(3);
        let roles_ok = roles.len() == 6 && roles.iter().zip(&expected).all(|(r, e)| r == &Some(*e));
        match contents.as_slice() {
            [Some(p), Some(r), Some(cq), Some(c), Some(rq), Some(rv)] if roles_ok => {
                examples.push(CritiqueExample {
                    prompt: (*p).to_owned(),
                    response: (*r).to_owned(),
                    critique_request: (*cq).to_owned(),
                    critique: (*c).to_owned(),
                    revision_request: (*rq).to_owned(),
                    revision: (*rv).to_owned(),
                });
            }
            _ => problems.push(at(
                &field,
                &format!(
                    "{SHAPE}; found {} with roles [{}]",
                    messages.len(),
                    roles
                        .iter()
                        .map(|r| r.unwrap_or("?"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
    examples
}

fn is_system(message: &Value) -> bool {
    message.get("role").and_then(Value::as_str) == Some("system")
}

fn preference_principles(source: ImportSource<'_>) -> Result<Vec<PreferencePrinciple>> {
    let value: Value = parse_json(source)?;
    let mut problems = Vec::new();
    let entries: Vec<(String, String, Value)> = match value {
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("p{}", i + 1), format!("[{i}]"), v))
            .collect(),
        Value::Object(_) => {
            let ordered: Ordered = parse_json(source)?;
            ordered
                .0
                .into_iter()
                .map(|(k, v)| (k.clone(), k, v))
                .collect()
        }
        _ => {
            return Err(invalid(
                source.origin,
                vec![Problem::file(
                    "expected a JSON list of preference questions (or an object of id → question)",
                )],
            ));
        }
    };
    if entries.is_empty() {
        problems.push(Problem::file("no preference principles in the file"));
    }
    let mut principles = Vec::new();
    for (id, field, v) in entries {
        match v {
            Value::String(question) => principles.push(PreferencePrinciple { id, question }),
            _ => problems.push(at(&field, "expected a string")),
        }
    }
    if problems.is_empty() {
        Ok(principles)
    } else {
        Err(invalid(source.origin, problems))
    }
}

/// The string at `object[key]`, or a problem naming `parent.key`.
fn string_field(
    object: &Value,
    parent: &str,
    key: &str,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    let field = if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    };
    match object.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            problems.push(at(&field, "expected a string"));
            None
        }
        None => {
            problems.push(at(&field, MISSING));
            None
        }
    }
}

fn at(field: &str, message: &str) -> Problem {
    Problem {
        line: None,
        field: field.to_owned(),
        message: message.to_owned(),
    }
}

/// A JSON object with its keys in file order (serde_json's map sorts them,
/// and principle order is part of a constitution).
struct Ordered(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor;
        impl<'de> Visitor<'de> for OrderedVisitor {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(Ordered(entries))
            }
        }
        deserializer.deserialize_map(OrderedVisitor)
    }
}
