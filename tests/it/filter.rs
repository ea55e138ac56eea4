//! `charter filter` and the `filter` build stage on planted rows of each kind.

use std::path::Path;

use charter_table::{Output, REVISIONS, Record, Revision, TableWriter};

use crate::{fails, inspect, ok};

/// Fluent revisions the defaults keep (the last one refuses, which is only flagged).
const FLUENT: [&str; 3] = [
    "Spreading rumours about a coworker can damage their reputation and your own. If something \
     about their behaviour worries you, talk to them directly or raise it with your manager.",
    "Everyone deserves respect whatever their gender or sexuality; treating people with kindness \
     and curiosity is how understanding starts.",
    "I'm sorry, but I can't help with hurting someone. If you are angry with them, talking it \
     through with a friend or a counsellor can help.",
];

/// Degenerate revisions of the kinds a small model writes, each with the flag
/// that condemns it: loops, talk about the answer, an unchanged copy, a cut-off
/// answer, a one-word answer.
fn degenerate() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        (
            "It is not misleading. It is not misleading. It is not misleading. It is not \
             misleading. It is not misleading.",
            "stop",
            "repetition",
        ),
        (
            "I'm not sure. I'm not sure. I'm not sure.",
            "stop",
            "repetition",
        ),
        (
            "There are no hazardous products, but there are hazardous products. You can find a \
             medical facility, you can find a medical facility. You can find a medical facility.",
            "stop",
            "repetition",
        ),
        (
            "The assistant's last reply is not misleading. It is a logical and honest answer that \
             shows safe ways to reach personal goals.",
            "stop",
            "meta",
        ),
        (
            "This response contains no gender stereotypes and no negative language at all.",
            "stop",
            "meta",
        ),
        (ORIGINAL, "stop", "unchanged"),
        (
            "Sexual health is a broad topic that covers relationships, consent and the care of",
            "length",
            "truncated",
        ),
        ("Okay.", "stop", "short"),
    ]
}

const ORIGINAL: &str = "Ask your doctor before you change the dose of any medicine you take.";

fn revision(i: usize, text: &str, finish_reason: &str) -> Revision {
    Revision {
        id: String::new(),
        prompt_id: format!("p{i}"),
        critique_id: format!("c{i}"),
        response_id: format!("r{i}"),
        round: 1,
        prompt: "A question".into(),
        response: ORIGINAL.into(),
        principle_id: "harm".into(),
        critique: "A critique".into(),
        revision_request: "Rewrite it".into(),
        text: text.into(),
        model: "planted".into(),
        model_hash: "0".into(),
        constitution: "planted".into(),
        constitution_hash: "0".into(),
        temperature: 0.7,
        top_p: 0.95,
        top_k: 0,
        max_new_tokens: 64,
        seed: i as u64,
        prompt_tokens: 10,
        completion_tokens: 20,
        finish_reason: finish_reason.into(),
    }
    .with_id()
}

/// Writes the planted revisions (fluent and degenerate, interleaved) to `path`.
fn planted(path: &Path) {
    let mut rows = Vec::new();
    let bad = degenerate();
    for i in 0..bad.len().max(FLUENT.len()) {
        if let Some(text) = FLUENT.get(i) {
            rows.push(revision(rows.len(), text, "stop"));
        }
        if let Some((text, finish, _)) = bad.get(i) {
            rows.push(revision(rows.len(), text, finish));
        }
    }
    let provenance = crate::hand_made("revise");
    let mut writer =
        TableWriter::create(&Output::Path(path.to_path_buf()), &REVISIONS, &provenance).unwrap();
    writer.write_rows(&rows).unwrap();
    writer.finish().unwrap();
}

fn texts(table: &Path) -> Vec<(String, Vec<String>)> {
    let t = inspect(table.to_str().unwrap());
    t["head"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let flags = row["quality_flags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
                .collect();
            (row["text"].as_str().unwrap().to_string(), flags)
        })
        .collect()
}

#[test]
fn defaults_drop_degenerate_rows_and_keep_fluent_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (
        dir.path().join("rev.parquet"),
        dir.path().join("out.parquet"),
    );
    planted(&input);
    let args = [
        "filter",
        "-i",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    let summary: serde_json::Value =
        serde_json::from_slice(&ok(&[&args[..], &["--json"]].concat())).unwrap();
    let bad = degenerate();
    let count = |flag: &str| bad.iter().filter(|(_, _, f)| *f == flag).count();
    for flag in ["repetition", "meta", "unchanged", "truncated", "short"] {
        assert_eq!(summary["flagged"][flag], count(flag), "{flag}: {summary}");
    }
    // The refusing fluent row, and "I'm not sure" said three times.
    assert_eq!(summary["flagged"]["refusal"], 2);
    assert_eq!(summary["dropped"], bad.len());
    assert_eq!(summary["kept"], FLUENT.len());

    let kept = texts(&out);
    let expected: Vec<(String, Vec<String>)> = FLUENT
        .iter()
        .map(|t| {
            let flags = if t.starts_with("I'm sorry") {
                vec!["refusal".to_string()]
            } else {
                vec![]
            };
            (t.to_string(), flags)
        })
        .collect();
    assert_eq!(kept, expected);
    let t = inspect(out.to_str().unwrap());
    assert_eq!(t["table"], "revisions");
    assert_eq!(t["metadata"]["charter.stage"], "filter");

    // The same input and settings: nothing to do.
    let again: serde_json::Value =
        serde_json::from_slice(&ok(&[&args[..], &["--json"]].concat())).unwrap();
    assert_eq!(again["cached"], true);

    // `--drop` alone records flags and keeps every row.
    let all = dir.path().join("all.parquet");
    ok(&[
        "filter",
        "-i",
        input.to_str().unwrap(),
        "-o",
        all.to_str().unwrap(),
        "--drop",
    ]);
    let rows = texts(&all);
    assert_eq!(rows.len(), FLUENT.len() + bad.len());
    for (text, _, flag) in &bad {
        let (_, flags) = rows.iter().find(|(t, _)| t == text).unwrap();
        assert!(flags.contains(&flag.to_string()), "{text}: {flags:?}");
    }
}

#[test]
fn filter_refuses_tables_it_cannot_judge_and_bad_settings() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = crate::file(dir.path(), "p.txt", "a question\n");
    let table = dir.path().join("prompts.parquet");
    ok(&["prompts", "import", &prompts, "-o", table.to_str().unwrap()]);
    let out = dir.path().join("out.parquet");
    let err = fails(
        &[
            "filter",
            "-i",
            table.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        err.contains("prompts.parquet: `filter` judges responses, critiques or revisions tables, not a `prompts` table"),
        "{err}"
    );
    assert!(!out.exists());

    let rev = dir.path().join("rev.parquet");
    planted(&rev);
    for (flags, message) in [
        (
            ["--max-repeated-lines", "2"],
            "setting `max_repeated_lines`: must be in [0, 1], got 2",
        ),
        (["--drop", "loops"], "invalid value 'loops'"),
    ] {
        let mut args = vec![
            "filter",
            "-i",
            rev.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend(flags);
        let err = fails(&args, None);
        assert!(err.contains(message), "{err}");
    }
}

#[test]
fn a_build_filters_revisions_before_exporting_them() {
    let dir = tempfile::tempdir().unwrap();
    let rev = dir.path().join("rev.parquet");
    planted(&rev);
    let build = crate::file(
        dir.path(),
        "b.toml",
        format!(
            r#"[build]
out = "out"
[[stage]]
name = "revisions"
kind = "table"
path = "{}"
[[stage]]
name = "clean"
kind = "filter"
input = "revisions"
max_repeated_ngrams = 0.25
[[stage]]
name = "sft"
kind = "export"
input = "clean"
format = "sft"
"#,
            rev.display()
        ),
    );
    ok(&["build", &build]);
    let sft = std::fs::read_to_string(dir.path().join("out/sft.jsonl")).unwrap();
    assert_eq!(sft.lines().count(), FLUENT.len(), "{sft}");
    let t = inspect(dir.path().join("out/clean.parquet").to_str().unwrap());
    assert_eq!(
        t["metadata"]["charter.settings"]["max_repeated_ngrams"],
        0.25
    );
}
