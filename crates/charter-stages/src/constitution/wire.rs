//! The TOML wire format: the same shape as [`Constitution`] with a span on
//! every value, so each problem can name its line. Fields are optional here
//! so that a missing one is reported with its path rather than as serde's
//! first error.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{
    Constitution, CritiqueExample, CritiquePrinciple, LabelExample, PreferencePrinciple, Problem,
    Templates,
};

/// The message of a required field that is absent.
pub(crate) const MISSING: &str = "missing";

type Text = Spanned<String>;
type List<T> = Spanned<Vec<Spanned<T>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireConstitution {
    name: Option<Text>,
    version: Option<Text>,
    description: Option<Text>,
    critique_principles: Option<List<WireCritiquePrinciple>>,
    preference_principles: Option<List<WirePreferencePrinciple>>,
    critique_examples: Option<List<WireCritiqueExample>>,
    label_examples: Option<List<WireLabelExample>>,
    templates: Option<Spanned<WireTemplates>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireCritiquePrinciple {
    id: Option<Text>,
    critique: Option<Text>,
    revision: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePreferencePrinciple {
    id: Option<Text>,
    question: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireCritiqueExample {
    prompt: Option<Text>,
    response: Option<Text>,
    critique_request: Option<Text>,
    critique: Option<Text>,
    revision_request: Option<Text>,
    revision: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireLabelExample {
    conversation: Option<Text>,
    question: Option<Text>,
    response_a: Option<Text>,
    response_b: Option<Text>,
    answer: Option<Text>,
    reasoning: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireTemplates {
    critique: Option<Text>,
    revision: Option<Text>,
    label: Option<Text>,
    label_answer_prefix: Option<Text>,
    label_cot: Option<Text>,
    rate: Option<Text>,
    rate_answer_prefix: Option<Text>,
    rate_cot: Option<Text>,
}

/// Where each field of a parsed constitution sits in its file.
#[derive(Debug, Default)]
pub(crate) struct Locations {
    fields: BTreeMap<String, Location>,
}

#[derive(Debug, Clone, Copy)]
struct Location {
    /// Line of the value (or of a table's header).
    line: usize,
    /// Line of a string's first character of content: the next line for a
    /// multi-line string that opens with a newline.
    body: usize,
    /// The value spans lines in the file.
    multiline: bool,
}

impl Locations {
    /// Line of `field`, else of its nearest enclosing field.
    pub(crate) fn line(&self, field: &str) -> Option<usize> {
        self.find(field).map(|l| l.line)
    }

    /// File line of line `n` (1-based) of the string at `field`.
    pub(crate) fn text_line(&self, field: &str, n: usize) -> Option<usize> {
        let loc = self.fields.get(field)?;
        // A string on one line of the file (its lines made by escapes) has
        // all of them there.
        Some(if loc.multiline {
            loc.body + n.saturating_sub(1)
        } else {
            loc.line
        })
    }

    fn find(&self, mut field: &str) -> Option<Location> {
        loop {
            if let Some(l) = self.fields.get(field) {
                return Some(*l);
            }
            field = &field[..field.rfind(['.', '['])?];
        }
    }
}

/// What [`parse`] found.
pub(crate) struct Parsed {
    /// The constitution, unless the TOML did not fit the format at all.
    pub(crate) constitution: Option<Constitution>,
    pub(crate) locations: Locations,
    /// Syntax errors, unknown fields, wrong types, missing fields.
    pub(crate) problems: Vec<Problem>,
}

/// Parses TOML into a constitution, recording every field's line; missing
/// required fields become empty strings plus a problem.
pub(crate) fn parse(text: &str) -> Parsed {
    let lines = LineIndex::new(text);
    let wire: WireConstitution = match toml::from_str(text) {
        Ok(wire) => wire,
        Err(e) => {
            let span = e.span();
            return Parsed {
                constitution: None,
                locations: Locations::default(),
                problems: vec![Problem {
                    line: span.as_ref().map(|s| lines.line(s.start)),
                    field: span
                        .and_then(|s| path_at(text, s.start))
                        .unwrap_or_default(),
                    message: e.message().trim().to_owned(),
                }],
            };
        }
    };
    let mut cx = Cx {
        text,
        lines,
        locations: Locations::default(),
        problems: Vec::new(),
    };
    let c = cx.constitution(wire);
    Parsed {
        constitution: Some(c),
        locations: cx.locations,
        problems: cx.problems,
    }
}

struct Cx<'t> {
    text: &'t str,
    lines: LineIndex,
    locations: Locations,
    problems: Vec<Problem>,
}

impl Cx<'_> {
    fn constitution(&mut self, w: WireConstitution) -> Constitution {
        Constitution {
            name: self.required(w.name, "name", 1),
            version: self.required(w.version, "version", 1),
            description: self
                .optional(w.description, "description")
                .unwrap_or_default(),
            critique_principles: self.list(
                w.critique_principles,
                "critique_principles",
                |cx, p, at, line| CritiquePrinciple {
                    id: cx.required(p.id, &format!("{at}.id"), line),
                    critique: cx.required(p.critique, &format!("{at}.critique"), line),
                    revision: cx.required(p.revision, &format!("{at}.revision"), line),
                },
            ),
            preference_principles: self.list(
                w.preference_principles,
                "preference_principles",
                |cx, p, at, line| PreferencePrinciple {
                    id: cx.required(p.id, &format!("{at}.id"), line),
                    question: cx.required(p.question, &format!("{at}.question"), line),
                },
            ),
            critique_examples: self.list(
                w.critique_examples,
                "critique_examples",
                |cx, e, at, line| {
                    let mut field = |v, name: &str| cx.required(v, &format!("{at}.{name}"), line);
                    CritiqueExample {
                        prompt: field(e.prompt, "prompt"),
                        response: field(e.response, "response"),
                        critique_request: field(e.critique_request, "critique_request"),
                        critique: field(e.critique, "critique"),
                        revision_request: field(e.revision_request, "revision_request"),
                        revision: field(e.revision, "revision"),
                    }
                },
            ),
            label_examples: self.list(w.label_examples, "label_examples", |cx, e, at, line| {
                LabelExample {
                    conversation: cx.required(e.conversation, &format!("{at}.conversation"), line),
                    question: cx.required(e.question, &format!("{at}.question"), line),
                    response_a: cx.required(e.response_a, &format!("{at}.response_a"), line),
                    response_b: cx.required(e.response_b, &format!("{at}.response_b"), line),
                    answer: cx.required(e.answer, &format!("{at}.answer"), line),
                    reasoning: cx.optional(e.reasoning, &format!("{at}.reasoning")),
                }
            }),
            templates: match w.templates {
                None => Templates::default(),
                Some(t) => {
                    self.record("templates", t.span());
                    let t = t.into_inner();
                    let d = Templates::default();
                    let mut field = |v, name: &str, default: String| {
                        self.optional(v, &format!("templates.{name}"))
                            .unwrap_or(default)
                    };
                    Templates {
                        critique: field(t.critique, "critique", d.critique),
                        revision: field(t.revision, "revision", d.revision),
                        label: field(t.label, "label", d.label),
                        label_answer_prefix: field(
                            t.label_answer_prefix,
                            "label_answer_prefix",
                            d.label_answer_prefix,
                        ),
                        label_cot: field(t.label_cot, "label_cot", d.label_cot),
                        rate: field(t.rate, "rate", d.rate),
                        rate_answer_prefix: field(
                            t.rate_answer_prefix,
                            "rate_answer_prefix",
                            d.rate_answer_prefix,
                        ),
                        rate_cot: field(t.rate_cot, "rate_cot", d.rate_cot),
                    }
                }
            },
        }
    }

    fn record(&mut self, field: &str, span: Range<usize>) -> usize {
        let line = self.lines.line(span.start);
        let raw = self.text.get(span.clone()).unwrap_or("");
        let opens_with_newline = ["\"\"\"\n", "'''\n", "\"\"\"\r\n", "'''\r\n"]
            .iter()
            .any(|open| raw.starts_with(open));
        let body = line + usize::from(opens_with_newline);
        let multiline = raw.contains('\n');
        self.locations.fields.insert(
            field.to_owned(),
            Location {
                line,
                body,
                multiline,
            },
        );
        line
    }

    fn optional(&mut self, value: Option<Text>, field: &str) -> Option<String> {
        let value = value?;
        self.record(field, value.span());
        Some(value.into_inner())
    }

    fn required(&mut self, value: Option<Text>, field: &str, parent_line: usize) -> String {
        self.optional(value, field).unwrap_or_else(|| {
            self.problems.push(Problem {
                line: Some(parent_line),
                field: field.to_owned(),
                message: MISSING.to_owned(),
            });
            String::new()
        })
    }

    fn list<W, T>(
        &mut self,
        value: Option<List<W>>,
        field: &str,
        mut convert: impl FnMut(&mut Self, W, &str, usize) -> T,
    ) -> Vec<T> {
        let Some(value) = value else {
            return Vec::new();
        };
        self.record(field, value.span());
        value
            .into_inner()
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let at = format!("{field}[{i}]");
                let line = self.record(&at, item.span());
                convert(self, item.into_inner(), &at, line)
            })
            .collect()
    }
}

/// Byte offset → 1-based line.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { starts }
    }

    fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset)
    }
}

/// The field path of whatever is at byte `offset` (a key or a value), for
/// errors serde reports with only a span.
fn path_at(text: &str, offset: usize) -> Option<String> {
    let (root, _errors) = DeTable::parse_recoverable(text);
    in_table(root.get_ref(), offset, "")
}

fn in_table(table: &DeTable<'_>, offset: usize, prefix: &str) -> Option<String> {
    table.iter().find_map(|(key, value)| {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        if key.span().contains(&offset) {
            Some(path)
        } else {
            in_value(value, offset, path)
        }
    })
}

fn in_value(value: &Spanned<DeValue<'_>>, offset: usize, path: String) -> Option<String> {
    let inner = match value.get_ref() {
        DeValue::Table(t) => in_table(t, offset, &path),
        DeValue::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, v)| in_value(v, offset, format!("{path}[{i}]"))),
        _ => None,
    };
    inner.or_else(|| value.span().contains(&offset).then_some(path))
}
