//! `charter constitution check|import|show`: shipped files, error reports, imports.

use std::path::PathBuf;

use crate::{charter, fails, file, ok};

fn repo(path: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .to_str()
        .unwrap()
        .to_string()
}

fn check_json(path: &str) -> serde_json::Value {
    serde_json::from_slice(&ok(&["constitution", "check", path, "--json"])).unwrap()
}

#[test]
fn shipped_constitutions_check() {
    let harmless = repo("constitutions/harmless.toml");
    let text = String::from_utf8(ok(&["constitution", "check", &harmless])).unwrap();
    assert!(
        text.contains("constitution  harmless (version 1)"),
        "{text}"
    );
    assert!(
        text.contains("critique      16 principles, 2 examples"),
        "{text}"
    );
    assert!(
        text.contains("preference    16 principles, 2 examples"),
        "{text}"
    );

    let json = check_json(&harmless);
    assert_eq!(json["name"], "harmless");
    assert_eq!(json["critique_principles"], 16);
    assert_eq!(json["preference_principles"], 16);
    let hash = json["hash"].as_str().unwrap();
    assert_eq!(hash.len(), 64);
    assert!(text.contains(hash), "{text}");

    let helpful = check_json(&repo("constitutions/helpful-honest.toml"));
    assert_eq!(helpful["name"], "helpful-honest");
    assert!(helpful["critique_principles"].as_u64().unwrap() >= 8);
    assert!(helpful["preference_principles"].as_u64().unwrap() >= 8);
    assert_ne!(helpful["hash"], json["hash"]);
}

#[test]
fn malformed_constitution_fails_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(
        dir.path(),
        "x.toml",
        "name = \"x\"\nversion = \"1\"\n\n\
         [[critique_principles]]\nid = \"a\"\ncritique = \"Is it rude?\"\nrevision = \"Be polite.\"\n\n\
         [[critique_principles]]\nid = \"a\"\ncritique = \"Is it wrong?\"\n\n\
         [[preference_principles]]\nid = \"p\"\nquestion = \"\"\n",
    );
    let out = charter(&["constitution", "check", &path], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.stdout.is_empty());
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!("error: {path}:9: critique_principles[1].revision: missing"),
            format!(
                "{path}:10: critique_principles[1].id: duplicate id `a`: \
                 critique_principles[0] on line 4 has it too"
            ),
            format!("{path}:15: preference_principles[0].question: empty"),
        ],
        "{stderr}"
    );

    let unknown = file(
        dir.path(),
        "u.toml",
        "name = \"x\"\nversion = \"1\"\nauthor = \"me\"\n",
    );
    let stderr = fails(&["constitution", "check", &unknown], None);
    assert!(
        stderr.starts_with(&format!(
            "error: {unknown}:3: author: unknown field `author`"
        )),
        "{stderr}"
    );
    let stderr = fails(&["constitution", "check", "no/such/file.toml"], None);
    assert!(
        stderr.starts_with("error: no/such/file.toml: cannot read"),
        "{stderr}"
    );
}

#[test]
fn import_hf_recipe_with_preferences() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("kind.toml");
    let out = out.to_str().unwrap();
    let source = repo("tests/data/constitutions/hf-recipe.json");
    let prefs = repo("tests/data/constitutions/RLMadisonInstructions.json");
    let result = charter(
        &[
            "constitution",
            "import",
            &source,
            "--preferences",
            &prefs,
            "-o",
            out,
        ],
        None,
    );
    assert!(result.status.success());
    let stderr = String::from_utf8(result.stderr).unwrap();
    assert!(!stderr.contains("warning"), "{stderr}");
    assert!(
        stderr.contains("imported 3 critique and 3 preference principles, 2 examples"),
        "{stderr}"
    );

    let json = check_json(out);
    assert_eq!(json["name"], "kind");
    assert_eq!(json["critique_examples"], 2);
    let text = std::fs::read_to_string(out).unwrap();
    assert!(text.starts_with("# Imported by `charter constitution import` from hf-recipe.json"));
    assert!(text.contains("id = \"p1\""), "{text}");

    // `show` prints an equivalent constitution.
    let shown = file(dir.path(), "shown.toml", ok(&["constitution", "show", out]));
    assert_eq!(check_json(&shown)["hash"], json["hash"]);
}

#[test]
fn import_paper_layout_without_preferences_warns() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("paper.toml");
    let out = out.to_str().unwrap();
    let source = repo("tests/data/constitutions/CritiqueRevisionInstructions.json");
    let result = charter(
        &[
            "constitution",
            "import",
            &source,
            "--name",
            "paper",
            "-o",
            out,
        ],
        None,
    );
    assert!(result.status.success());
    let stderr = String::from_utf8(result.stderr).unwrap();
    assert!(
        stderr.contains("warning: no preference principles"),
        "{stderr}"
    );
    assert!(stderr.contains("--preferences"), "{stderr}");
    let text = std::fs::read_to_string(out).unwrap();
    assert!(text.contains("name = \"paper\""), "{text}");
    let ids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id = "))
        .collect();
    assert_eq!(ids, ["\"unkind0\"", "\"risky1\"", "\"false2\""]);

    let stderr = fails(&["constitution", "check", out], None);
    assert!(
        stderr.contains("preference_principles: no preference principles"),
        "{stderr}"
    );

    // To standard output, with the preferences: a complete constitution.
    let prefs = repo("tests/data/constitutions/RLMadisonInstructions.json");
    let stdout = ok(&[
        "constitution",
        "import",
        &source,
        "--preferences",
        &prefs,
        "-o",
        "-",
    ]);
    let full = file(dir.path(), "full.toml", stdout);
    assert_eq!(check_json(&full)["name"], "CritiqueRevisionInstructions");
}

#[test]
fn failed_import_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bad = file(
        dir.path(),
        "bad.json",
        r#"{"harmful0": {"prompt": [], "edit_request": "Fix it."}}"#,
    );
    let out = dir.path().join("out.toml");
    let stderr = fails(
        &["constitution", "import", &bad, "-o", out.to_str().unwrap()],
        None,
    );
    assert!(
        stderr.contains(&format!(
            "{bad}: harmful0.prompt: empty list: expected at least one critique request"
        )),
        "{stderr}"
    );
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
