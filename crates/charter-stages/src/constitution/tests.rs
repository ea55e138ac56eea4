//! Parsing, validation messages, hashing, rendering and import of constitutions.

use super::*;

const HARMLESS: &str = include_str!("../../../../constitutions/harmless.toml");
const HELPFUL_HONEST: &str = include_str!("../../../../constitutions/helpful-honest.toml");

const MINIMAL: &str = r#"
name = "mini"
version = "1"

[[critique_principles]]
id = "kind"
critique = "Say how the reply could be kinder."
revision = "Rewrite the reply to be kinder."

[[preference_principles]]
id = "kinder"
question = "Which response is kinder?"
"#;

/// The error message `from_toml` gives for `text`.
fn error(text: &str) -> String {
    match Constitution::from_toml(text, "x.toml") {
        Ok(c) => panic!("expected an error, parsed {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn problems(text: &str) -> Vec<Problem> {
    match Constitution::from_toml(text, "x.toml") {
        Err(ConstitutionError::Invalid { problems, .. }) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn shipped_constitutions_parse() {
    let harmless = Constitution::from_toml(HARMLESS, "harmless.toml").unwrap();
    assert_eq!(harmless.name, "harmless");
    assert_eq!(harmless.critique_principles.len(), 16);
    assert_eq!(harmless.preference_principles.len(), 16);
    assert!(harmless.critique_examples.len() >= 2);
    assert!(harmless.label_examples.len() >= 2);

    let helpful = Constitution::from_toml(HELPFUL_HONEST, "helpful-honest.toml").unwrap();
    assert_eq!(helpful.name, "helpful-honest");
    assert!(helpful.critique_principles.len() >= 8);
    assert!(helpful.preference_principles.len() >= 8);
    assert!(helpful.critique_examples.len() >= 2);
    assert!(helpful.label_examples.len() >= 2);

    for c in [&harmless, &helpful] {
        // Well under 1,000 tokens at ~4 characters a token.
        assert!(
            c.few_shot_chars() < 3200,
            "{}: {}",
            c.name,
            c.few_shot_chars()
        );
        // Each worked example is a round of one of the constitution's own principles.
        for e in &c.critique_examples {
            assert!(
                c.critique_principles
                    .iter()
                    .any(|p| p.critique == e.critique_request && p.revision == e.revision_request),
                "{e:?}"
            );
        }
        for e in &c.label_examples {
            assert!(
                c.preference_principles
                    .iter()
                    .any(|p| p.question == e.question),
                "{e:?}"
            );
        }
    }
}

#[test]
fn shipped_constitutions_load_from_disk() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../constitutions");
    for name in ["harmless.toml", "helpful-honest.toml"] {
        Constitution::load(&root.join(name)).unwrap();
    }
}

#[test]
fn missing_field_names_file_line_and_field() {
    let text = MINIMAL.replace(
        "[[preference_principles]]",
        "[[critique_principles]]\nid = \"two\"\ncritique = \"Say more.\"\n\n[[preference_principles]]",
    );
    // Line 10 is the second [[critique_principles]] header.
    assert_eq!(text.lines().nth(9), Some("[[critique_principles]]"));
    assert_eq!(
        error(&text),
        "x.toml:10: critique_principles[1].revision: missing"
    );
    assert_eq!(
        error(&MINIMAL.replace("version = \"1\"\n", "")),
        "x.toml:1: version: missing"
    );
}

#[test]
fn every_problem_is_reported_in_file_order() {
    let text = MINIMAL.replace("id = \"kind\"", "id = \"\"").replace(
        "question = \"Which response is kinder?\"",
        "question = \"  \"",
    );
    assert_eq!(
        error(&text),
        "x.toml:6: critique_principles[0].id: empty\n\
         x.toml:12: preference_principles[0].question: empty"
    );
}

#[test]
fn duplicate_ids_are_rejected() {
    let text = format!(
        "{MINIMAL}\n[[critique_principles]]\nid = \"kind\"\ncritique = \"c\"\nrevision = \"r\"\n"
    );
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].field, "critique_principles[1].id");
    assert_eq!(p[0].line, Some(15));
    assert_eq!(
        p[0].message,
        "duplicate id `kind`: critique_principles[0] on line 5 has it too"
    );
    // The same id in the other kind is fine.
    let text = MINIMAL.replace("id = \"kinder\"", "id = \"kind\"");
    Constitution::from_toml(&text, "x.toml").unwrap();
}

#[test]
fn ids_are_one_word() {
    let p = problems(&MINIMAL.replace("id = \"kind\"", "id = \"be kind\""));
    assert_eq!(p[0].field, "critique_principles[0].id");
    assert!(p[0].message.contains("one word"), "{p:?}");
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    let text = MINIMAL.replace("id = \"kinder\"", "id = \"kinder\"\nweight = 2");
    let message = error(&text);
    assert!(
        message.starts_with("x.toml:12: preference_principles[0].weight: unknown field `weight`"),
        "{message}"
    );
    let message = error(&format!("author = \"me\"\n{MINIMAL}"));
    assert!(
        message.starts_with("x.toml:1: author: unknown field `author`"),
        "{message}"
    );
    let message = error(&format!("{MINIMAL}\n[templates]\ncritque = \"x\"\n"));
    assert!(
        message.starts_with("x.toml:15: templates.critque: unknown field `critque`"),
        "{message}"
    );
}

#[test]
fn wrong_types_and_syntax_errors_have_lines() {
    assert_eq!(
        error(&MINIMAL.replace("version = \"1\"", "version = 1")),
        "x.toml:3: version: invalid type: integer `1`, expected a string"
    );
    let message = error(&MINIMAL.replace("id = \"kind\"", "id = \"kind"));
    assert!(message.starts_with("x.toml:6: "), "{message}");
    let message = error(&MINIMAL.replace("version = \"1\"", "version = \"1\"\nname = \"again\""));
    assert!(message.starts_with("x.toml:4: "), "{message}");
    assert!(message.contains("duplicate key"), "{message}");
}

#[test]
fn zero_principles_of_either_kind_are_rejected() {
    let no_preference = MINIMAL
        .split("[[preference_principles]]")
        .next()
        .unwrap()
        .to_owned();
    let message = error(&no_preference);
    assert!(
        message.starts_with("x.toml: preference_principles: no preference principles"),
        "{message}"
    );
    let message = error(&format!("preference_principles = []\n{no_preference}"));
    assert!(
        message.starts_with("x.toml:1: preference_principles: no preference principles"),
        "{message}"
    );
    let message = error("name = \"x\"\nversion = \"1\"\n");
    assert!(message.contains("no critique principles"), "{message}");
    assert!(message.contains("no preference principles"), "{message}");
}

#[test]
fn template_errors_point_into_the_template() {
    let text = format!(
        "{MINIMAL}\n[templates]\ncritique = \"\"\"\nAbout this:\n{{{{ promt }}}}\n{{{{ critique_request }}}}\n\"\"\"\n"
    );
    assert_eq!(text.lines().nth(16), Some("{{ promt }}"));
    assert_eq!(
        error(&text),
        "x.toml:17: templates.critique: unknown variable `promt` (this template has \
         `critique_request`, `prompt`, `response`)"
    );

    let text = format!("{MINIMAL}\n[templates]\nrevision = \"Fix it: {{{{ revision_request \"\n");
    let message = error(&text);
    assert!(
        message.starts_with("x.toml:15: templates.revision: syntax error"),
        "{message}"
    );

    let text =
        format!("{MINIMAL}\n[templates]\nlabel = \"{{{{ question }}}} {{{{ response_a }}}}\"\n");
    let message = error(&text);
    assert!(
        message.contains("templates.label: does not use `{{ conversation }}`"),
        "{message}"
    );
    assert!(message.contains("`{{ response_b }}`"), "{message}");

    let text =
        format!("{MINIMAL}\n[templates]\nrevision = \"{{{{ revision_request | shout }}}}\"\n");
    let message = error(&text);
    assert!(
        message.starts_with("x.toml:15: templates.revision: unknown filter"),
        "{message}"
    );
}

#[test]
fn label_answers_are_a_or_b() {
    let text = format!(
        "{MINIMAL}\n[[label_examples]]\nconversation = \"User: hi\"\nquestion = \"q\"\n\
         response_a = \"a\"\nresponse_b = \"b\"\nanswer = \"C\"\n"
    );
    assert_eq!(
        error(&text),
        "x.toml:19: label_examples[0].answer: must be \"A\" or \"B\", not \"C\""
    );
}

#[test]
fn hash_ignores_layout_and_follows_content() {
    let base = Constitution::from_toml(MINIMAL, "a").unwrap();
    let relaid = format!(
        "# a comment\n\n{}",
        MINIMAL.replace(" = ", "   =   ").replace(
            "\"Which response is kinder?\"",
            "'''Which response is kinder?'''"
        )
    );
    let same = Constitution::from_toml(&relaid, "b").unwrap();
    assert_eq!(base, same);
    assert_eq!(base.hash(), same.hash());
    assert_eq!(base.hash().len(), 64);

    let changed =
        Constitution::from_toml(&MINIMAL.replace("be kinder.\"", "be gentler.\""), "c").unwrap();
    assert_ne!(base.hash(), changed.hash());
    let mut reordered = base.clone();
    reordered.critique_principles.push(CritiquePrinciple {
        id: "b".into(),
        critique: "c".into(),
        revision: "r".into(),
    });
    let mut other_order = reordered.clone();
    other_order.critique_principles.reverse();
    assert_ne!(reordered.hash(), other_order.hash());
}

#[test]
fn to_toml_round_trips() {
    for text in [HARMLESS, HELPFUL_HONEST, MINIMAL] {
        let c = Constitution::from_toml(text, "x.toml").unwrap();
        let again = Constitution::from_toml(&c.to_toml(), "again.toml").unwrap();
        assert_eq!(c, again);
        assert_eq!(c.hash(), again.hash());
    }
    let mut c = Constitution::from_toml(MINIMAL, "x.toml").unwrap();
    c.description = "quotes \" ''' \"\"\" and\nnew lines\ttabs".into();
    c.templates.label_answer_prefix = String::new();
    c.templates.revision = "{{ revision_request }}\n\n\"Only\" the rewrite.\n".into();
    c.label_examples.push(LabelExample {
        conversation: "User: hi".into(),
        question: "Which?".into(),
        response_a: "a".into(),
        response_b: "b".into(),
        answer: "A".into(),
        reasoning: None,
    });
    let again = Constitution::from_toml(&c.to_toml(), "again.toml").unwrap();
    assert_eq!(c, again);
}

#[test]
fn to_toml_round_trips_awkward_text() {
    let awkward = [
        "'''",
        "\"\"\"",
        "a\\b",
        "tab\there",
        "cr\rlf\r\n",
        "\u{0}\u{1f}\u{7f}",
        "ends with quote\"",
        "ends with apostrophe'",
        "\n\nleading newlines",
        "ünïcödé ✓ 🦀",
        "line\n'''\n\"\"\"\nmixed",
        "# not a comment",
        "[[not_a_table]]",
    ];
    for text in awkward {
        let mut c = Constitution::from_toml(MINIMAL, "x.toml").unwrap();
        c.name = format!("n{}", text.replace(['\n', '\r'], ""));
        c.description = text.to_owned();
        c.critique_principles[0].critique = text.to_owned();
        c.preference_principles[0].question = format!("{text}?");
        c.templates.label_answer_prefix = text.to_owned();
        let toml = c.to_toml();
        let again = Constitution::from_toml(&toml, "again.toml").unwrap();
        assert_eq!(c, again, "{text:?}\n{toml}");
    }
}

#[test]
fn render_by_name_or_source_strictly() {
    let c = Constitution::from_toml(MINIMAL, "x.toml").unwrap();
    let vars = serde_json::json!({
        "critique_request": "Is it kind?",
        "prompt": "Hello",
        "response": "Go away.",
    });
    let by_name = c.render("critique", &vars).unwrap();
    assert_eq!(by_name, c.render(&c.templates.critique, &vars).unwrap());
    assert_eq!(by_name, "Is it kind?");
    let restating = "User: {{ prompt }}\nAssistant: {{ response }}\n{{ critique_request }}";
    assert_eq!(
        c.render(restating, &vars).unwrap(),
        "User: Hello\nAssistant: Go away.\nIs it kind?"
    );

    let message = c
        .render("revision", &serde_json::json!({}))
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("rendering the revision template: undefined value"),
        "{message}"
    );
    // Text that looks like a template inside a variable is not expanded.
    let out = c
        .render(
            "revision",
            &serde_json::json!({"revision_request": "{{ 1 + 1 }}"}),
        )
        .unwrap();
    assert!(out.starts_with("{{ 1 + 1 }}"), "{out}");
}

#[test]
fn default_templates_render_every_stage() {
    let c = Constitution::from_toml(MINIMAL, "x.toml").unwrap();
    let label_vars = serde_json::json!({
        "conversation": "User: hi",
        "question": "Which is kinder?",
        "response_a": "Hello!",
        "response_b": "What?",
    });
    let label = c.render("label", &label_vars).unwrap();
    assert!(label.contains("(A) Hello!\n\n(B) What?"), "{label}");
    let cot = c.render("label_cot", &label_vars).unwrap();
    assert!(cot.contains("Which is kinder?"), "{cot}");
    assert_eq!(c.templates.label_answer_prefix, "The answer is: ");
    let rate_vars = serde_json::json!({
        "conversation": "User: hi",
        "question": "Which is kinder?",
        "response": "Hello!",
    });
    for (name, ask) in [
        ("rate", "Answer with one digit."),
        ("rate_cot", "Think it through"),
    ] {
        let rate = c.render(name, &rate_vars).unwrap();
        assert!(
            rate.contains("Assistant: Hello!")
                && rate.contains("Which is kinder?")
                && rate.contains(ask),
            "{rate}"
        );
    }
    assert_eq!(c.templates.rate_answer_prefix, "Rating: ");
    assert_eq!(TEMPLATE_NAMES.len(), 6);
}

/// The rating templates came after constitutions were hashed: left at
/// their defaults they leave the hash as it was; changed, they change it.
#[test]
fn rating_templates_change_the_hash_only_when_set_to_something_else() {
    let plain = Constitution::from_toml(MINIMAL, "x.toml").unwrap();
    let mut same = plain.clone();
    same.templates.rate = Templates::default().rate;
    assert_eq!(plain.hash(), same.hash());
    let mut other = plain.clone();
    other.templates.rate_answer_prefix = "Score: ".into();
    assert_ne!(plain.hash(), other.hash());
    let mut reasoned = plain.clone();
    reasoned.templates.rate_cot = "{{ conversation }} {{ response }} {{ question }}".into();
    assert_ne!(plain.hash(), reasoned.hash());
    assert_ne!(other.hash(), reasoned.hash());
}

#[test]
fn load_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let message = Constitution::load(&missing).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!("{}: cannot read", missing.display())),
        "{message}"
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, MINIMAL.replace("revision = ", "revison = ")).unwrap();
    let message = Constitution::load(&bad).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!(
            "{}:8: critique_principles[0].revison",
            bad.display()
        )),
        "{message}"
    );
    std::fs::write(&bad, b"name = \"\xff\"").unwrap();
    let message = Constitution::load(&bad).unwrap_err().to_string();
    assert!(message.contains("not UTF-8"), "{message}");
}

#[test]
fn validate_checks_constitutions_built_in_code() {
    let mut c = Constitution::from_toml(MINIMAL, "x.toml").unwrap();
    c.validate("code").unwrap();
    c.preference_principles.clear();
    let message = c.validate("code").unwrap_err().to_string();
    assert!(
        message.starts_with("code: preference_principles: no preference principles"),
        "{message}"
    );
}

// --- import -------------------------------------------------------------------

const HF: &str = r#"{
  "constitutions": [
    {"critic": "Name one way the answer is unkind.", "revision": "Rewrite the answer kindly."},
    {"critic": "Name one way the answer is unsafe.", "revision": "Rewrite the answer safely."}
  ],
  "system_chat": [
    [
      {"role": "user", "content": "Can I borrow your bike?"},
      {"role": "assistant", "content": "No. Buy your own."},
      {"role": "user", "content": "Name one way the answer is unkind."},
      {"role": "assistant", "content": "It is curt."},
      {"role": "user", "content": "Rewrite the answer kindly."},
      {"role": "assistant", "content": "I have no bike, sorry!"}
    ]
  ]
}"#;

const PAPER: &str = r#"{
  "zeta": {"prompt": ["Is the answer unkind?", "unused alternative"], "edit_request": "Make it kind."},
  "alpha": {"prompt": ["Is the answer unsafe?"], "edit_request": "Make it safe."}
}"#;

fn source<'a>(text: &'a str, origin: &'a str) -> ImportSource<'a> {
    ImportSource { text, origin }
}

#[test]
fn import_hf_recipe() {
    let prefs = r#"["Which answer is kinder?", "Which answer is safer?"]"#;
    let imported = import(
        source(HF, "hf.json"),
        Some(source(prefs, "prefs.json")),
        &ImportOptions::new("hf"),
    )
    .unwrap();
    assert_eq!(imported.layout, ImportLayout::HfRecipe);
    assert!(imported.warnings.is_empty(), "{:?}", imported.warnings);
    let c = &imported.constitution;
    assert_eq!(c.name, "hf");
    assert_eq!(c.version, "1");
    assert_eq!(
        c.description,
        "Imported from hf.json (HuggingFace CAI recipe layout)."
    );
    let ids: Vec<&str> = c
        .critique_principles
        .iter()
        .map(|p| p.id.as_str())
        .collect();
    assert_eq!(ids, ["p1", "p2"]);
    assert_eq!(
        c.critique_principles[1].revision,
        "Rewrite the answer safely."
    );
    assert_eq!(c.preference_principles[1].id, "p2");
    assert_eq!(c.critique_examples.len(), 1);
    assert_eq!(c.critique_examples[0].critique, "It is curt.");
    assert_eq!(c.critique_examples[0].revision, "I have no bike, sorry!");
    assert_eq!(c.templates, Templates::default());
    // What import writes, check accepts.
    let again = Constitution::from_toml(&c.to_toml(), "out.toml").unwrap();
    assert_eq!(&again, c);
}

#[test]
fn import_hf_variants() {
    // Only the list of principles: no examples, and a warning about preferences.
    let list = r#"[{"critic": "Is it rude?", "revision": "Be polite."}]"#;
    let imported = import(source(list, "l.json"), None, &ImportOptions::new("l")).unwrap();
    assert_eq!(imported.layout, ImportLayout::HfRecipe);
    assert_eq!(imported.constitution.critique_principles.len(), 1);
    assert_eq!(imported.warnings.len(), 1);
    assert!(imported.warnings[0].starts_with("no preference principles"));
    assert!(imported.constitution.validate("l").is_err());

    // A flattened system_chat, with a system message, splits into conversations of six.
    let value: serde_json::Value = serde_json::from_str(HF).unwrap();
    let mut flat = value.clone();
    let mut messages = vec![serde_json::json!({"role": "system", "content": "Be good."})];
    let conversation = value["system_chat"][0].as_array().unwrap();
    messages.extend(conversation.iter().cloned());
    messages.extend(conversation.iter().cloned());
    flat["system_chat"] = serde_json::Value::from(messages);
    let imported = import(
        source(&flat.to_string(), "flat.json"),
        None,
        &ImportOptions::new("flat"),
    )
    .unwrap();
    assert_eq!(imported.constitution.critique_examples.len(), 2);

    // A conversation of the wrong shape names itself.
    let mut bad = value;
    bad["system_chat"][0].as_array_mut().unwrap().pop();
    let message = import(
        source(&bad.to_string(), "bad.json"),
        None,
        &ImportOptions::new("bad"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        message.starts_with("bad.json: system_chat[0]: expected six messages"),
        "{message}"
    );
    assert!(message.contains("found 5"), "{message}");

    let message = import(
        source(r#"{"constitutions": [{"critic": "x"}]}"#, "m.json"),
        None,
        &ImportOptions::new("m"),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(message, "m.json: constitutions[0].revision: missing");
}

#[test]
fn import_paper_layout_keeps_key_order() {
    let prefs = r#"{"kinder": "Which answer is kinder?"}"#;
    let imported = import(
        source(PAPER, "CritiqueRevisionInstructions.json"),
        Some(source(prefs, "prefs.json")),
        &ImportOptions::new("paper"),
    )
    .unwrap();
    assert_eq!(imported.layout, ImportLayout::PaperInstructions);
    let c = &imported.constitution;
    let ids: Vec<&str> = c
        .critique_principles
        .iter()
        .map(|p| p.id.as_str())
        .collect();
    assert_eq!(ids, ["zeta", "alpha"]);
    assert_eq!(c.critique_principles[0].critique, "Is the answer unkind?");
    assert_eq!(c.critique_principles[0].revision, "Make it kind.");
    assert_eq!(c.preference_principles[0].id, "kinder");
    assert!(c.critique_examples.is_empty());
    c.validate("paper").unwrap();
}

#[test]
fn import_errors_are_clear() {
    let options = ImportOptions::new("x");
    let empty = r#"{"harmful0": {"prompt": [], "edit_request": "Fix it."}}"#;
    let message = import(source(empty, "p.json"), None, &options)
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        "p.json: harmful0.prompt: empty list: expected at least one critique request"
    );
    let message = import(source("{\"a\": 1}", "u.json"), None, &options)
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("u.json: not a layout charter can import"),
        "{message}"
    );
    let message = import(source("[1,", "j.json"), None, &options)
        .unwrap_err()
        .to_string();
    assert!(message.starts_with("j.json:1: invalid JSON"), "{message}");
    let message = import(
        source(PAPER, "p.json"),
        Some(source("[\"ok\", 3]", "prefs.json")),
        &options,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(message, "prefs.json: [1]: expected a string");
    let message = import(source("[]", "e.json"), None, &options)
        .unwrap_err()
        .to_string();
    assert!(message.contains("no critique principles"), "{message}");
    let dup = r#"{"a": {"prompt": ["x"], "edit_request": "y"}, "a": {"prompt": ["z"], "edit_request": "w"}}"#;
    let message = import(source(dup, "d.json"), None, &options)
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("d.json: critique_principles[1].id: duplicate id `a`"),
        "{message}"
    );
}

#[test]
fn import_files_reads_and_bounds_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hf.json");
    std::fs::write(&path, HF).unwrap();
    let imported = import_files(&path, None, &ImportOptions::new("hf")).unwrap();
    assert_eq!(imported.constitution.critique_principles.len(), 2);
    let big = dir.path().join("big.json");
    std::fs::write(&big, vec![b' '; MAX_FILE_BYTES as usize + 1]).unwrap();
    let message = import_files(&big, None, &ImportOptions::new("big"))
        .unwrap_err()
        .to_string();
    assert!(message.contains("larger than"), "{message}");
}
