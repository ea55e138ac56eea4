//! `charter inspect`: text and JSON views, verification, damaged files.

use crate::{fails, file, ok};

#[test]
fn inspect_shows_provenance_and_rows() {
    let dir = tempfile::tempdir().unwrap();
    let input = file(dir.path(), "p.txt", "first prompt\nsecond prompt\n");
    let table = dir.path().join("p.parquet");
    let table = table.to_str().unwrap();
    ok(&["prompts", "import", input.as_str(), "-o", table]);
    let text = String::from_utf8(ok(&["inspect", table, "--verify", "--head", "1"])).unwrap();
    assert!(
        text.contains("table         prompts (schema version 1)"),
        "{text}"
    );
    assert!(text.contains("rows          2"), "{text}");
    assert!(text.contains("(verified)"), "{text}");
    assert!(
        text.contains("charter.stage               prompts.import"),
        "{text}"
    );
    assert!(text.contains("first 1 rows"), "{text}");
    assert!(text.contains("\"first prompt\""), "{text}");
    assert!(!text.contains("second prompt"), "{text}");
}

#[test]
fn inspect_fails_on_damaged_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = file(dir.path(), "p.txt", "first prompt\nsecond prompt\n");
    let table = dir.path().join("p.parquet");
    ok(&[
        "prompts",
        "import",
        input.as_str(),
        "-o",
        table.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&table).unwrap();
    let cut = file(dir.path(), "cut.parquet", &bytes[..bytes.len() - 10]);
    let err = fails(&["inspect", &cut], None);
    assert!(
        err.starts_with(&format!("error: {cut}: not a readable Parquet file")),
        "{err}"
    );
}
