//! The rules a constitution must keep beyond its TOML shape.

use std::collections::BTreeMap;

use super::template::{self, SPECS};
use super::wire::{Locations, MISSING};
use super::{Constitution, Problem};

/// Every rule `c` breaks. `require_both_kinds`: at least one principle of
/// each kind (what every stage needs); without it, only that at least one
/// principle exists at all (what an import may write, with a warning).
pub(crate) fn problems(c: &Constitution, at: &Locations, require_both_kinds: bool) -> Vec<Problem> {
    let mut v = Validator {
        at,
        problems: Vec::new(),
    };
    v.text("name", &c.name);
    if c.name.contains(['\n', '\r']) {
        v.push("name", "must be one line".to_owned());
    }
    v.text("version", &c.version);

    let no_principles = c.critique_principles.is_empty() && c.preference_principles.is_empty();
    if c.critique_principles.is_empty() && (require_both_kinds || no_principles) {
        v.push(
            "critique_principles",
            "no critique principles: the critique and revise stages need at least one \
             [[critique_principles]] with id, critique and revision"
                .to_owned(),
        );
    }
    if c.preference_principles.is_empty() && (require_both_kinds || no_principles) {
        v.push(
            "preference_principles",
            "no preference principles: the label stage needs at least one \
             [[preference_principles]] with id and question"
                .to_owned(),
        );
    }
    v.ids(
        "critique_principles",
        c.critique_principles.iter().map(|p| p.id.as_str()),
    );
    for (i, p) in c.critique_principles.iter().enumerate() {
        v.text(&format!("critique_principles[{i}].critique"), &p.critique);
        v.text(&format!("critique_principles[{i}].revision"), &p.revision);
    }
    v.ids(
        "preference_principles",
        c.preference_principles.iter().map(|p| p.id.as_str()),
    );
    for (i, p) in c.preference_principles.iter().enumerate() {
        v.text(&format!("preference_principles[{i}].question"), &p.question);
    }

    for (i, e) in c.critique_examples.iter().enumerate() {
        for (name, text) in [
            ("prompt", &e.prompt),
            ("response", &e.response),
            ("critique_request", &e.critique_request),
            ("critique", &e.critique),
            ("revision_request", &e.revision_request),
            ("revision", &e.revision),
        ] {
            v.text(&format!("critique_examples[{i}].{name}"), text);
        }
    }
    for (i, e) in c.label_examples.iter().enumerate() {
        for (name, text) in [
            ("conversation", &e.conversation),
            ("question", &e.question),
            ("response_a", &e.response_a),
            ("response_b", &e.response_b),
        ] {
            v.text(&format!("label_examples[{i}].{name}"), text);
        }
        if !matches!(e.answer.as_str(), "A" | "B" | "") {
            v.push(
                &format!("label_examples[{i}].answer"),
                format!("must be \"A\" or \"B\", not {:?}", e.answer),
            );
        }
        v.text(&format!("label_examples[{i}].answer"), &e.answer);
        if let Some(reasoning) = &e.reasoning {
            v.text(&format!("label_examples[{i}].reasoning"), reasoning);
        }
    }

    for spec in &SPECS {
        let field = format!("templates.{}", spec.name);
        let source = c.templates.get(spec.name).unwrap_or_default();
        for p in template::check(spec, source) {
            v.problems.push(Problem {
                line: p
                    .line
                    .and_then(|n| at.text_line(&field, n))
                    .or_else(|| at.line(&field)),
                field: field.clone(),
                message: p.message,
            });
        }
    }
    v.problems
}

struct Validator<'a> {
    at: &'a Locations,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn push(&mut self, field: &str, message: String) {
        self.problems.push(Problem {
            line: self.at.line(field),
            field: field.to_owned(),
            message,
        });
    }

    /// Text that must say something.
    fn text(&mut self, field: &str, text: &str) {
        if text.trim().is_empty() {
            self.push(field, "empty".to_owned());
        }
    }

    /// Ids: non-empty, one word, unique within their kind.
    fn ids<'c>(&mut self, kind: &str, ids: impl Iterator<Item = &'c str>) {
        let mut first: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, id) in ids.enumerate() {
            let field = format!("{kind}[{i}].id");
            if id.trim().is_empty() {
                self.push(&field, "empty".to_owned());
                continue;
            }
            if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
                self.push(
                    &field,
                    format!("{id:?}: an id is one word (no spaces or control characters)"),
                );
            }
            if let Some(&j) = first.get(id) {
                let earlier = format!("{kind}[{j}]");
                let line = self
                    .at
                    .line(&earlier)
                    .map(|l| format!(" on line {l}"))
                    .unwrap_or_default();
                self.push(
                    &field,
                    format!("duplicate id `{id}`: {earlier}{line} has it too"),
                );
            } else {
                first.insert(id, i);
            }
        }
    }
}

/// `problems` in file order, less those about a field already reported
/// missing (a missing string is also empty; saying so twice helps nobody).
pub(crate) fn merge(mut problems: Vec<Problem>, more: Vec<Problem>) -> Vec<Problem> {
    let missing: std::collections::BTreeSet<String> = problems
        .iter()
        .filter(|p| p.message == MISSING)
        .map(|p| p.field.clone())
        .collect();
    problems.extend(more.into_iter().filter(|p| !missing.contains(&p.field)));
    problems.sort_by_key(|p| p.line.unwrap_or(0));
    problems
}
