//! `charter dedup` on an existing table.

use crate::{fails, file, inspect, ok};

#[test]
fn dedup_keeps_first_rows_and_schema() {
    let dir = tempfile::tempdir().unwrap();
    let input = file(
        dir.path(),
        "p.txt",
        "Explain how vaccines train the immune system to recognise a virus quickly and safely\n\
         explain how vaccines train the immune system to recognise a virus quickly and safely!\n\
         Something else entirely\n",
    );
    let table = dir.path().join("all.parquet");
    ok(&[
        "prompts",
        "import",
        &input,
        "-o",
        table.to_str().unwrap(),
        "--no-near-dup",
    ]);
    assert_eq!(inspect(table.to_str().unwrap())["rows"], 3);

    let out = dir.path().join("dedup.parquet");
    let summary: serde_json::Value = serde_json::from_slice(&ok(&[
        "dedup",
        "-i",
        table.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    assert_eq!(summary["near_duplicates"], 1);
    assert_eq!(summary["kept"], 2);
    let t = inspect(out.to_str().unwrap());
    assert_eq!(t["table"], "prompts");
    assert_eq!(t["metadata"]["charter.stage"], "dedup");
    let before = inspect(table.to_str().unwrap());
    assert_eq!(
        t["metadata"]["charter.inputs"][0]["content_hash"],
        before["content_hash"]
    );
    assert_eq!(t["head"][0], before["head"][0]);
    assert_eq!(t["head"][1], before["head"][2]);
}

#[test]
fn dedup_refuses_a_missing_column_and_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = file(dir.path(), "p.txt", "a\nb\n");
    let table = dir.path().join("all.parquet");
    ok(&["prompts", "import", &input, "-o", table.to_str().unwrap()]);
    let out = dir.path().join("out.parquet");
    let err = fails(
        &[
            "dedup",
            "-i",
            table.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--column",
            "body",
        ],
        None,
    );
    assert!(
        err.contains("no column `body` (text columns: id, text, source)"),
        "{err}"
    );

    let junk = file(dir.path(), "junk.parquet", "not parquet at all");
    let err = fails(&["dedup", "-i", &junk, "-o", out.to_str().unwrap()], None);
    assert!(
        err.contains("junk.parquet: not a readable Parquet file"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn dedup_refuses_tables_of_another_schema() {
    use std::sync::Arc;

    use arrow_schema::{DataType, Field, Schema};
    use charter_table::{Output, PROMPTS, TableWriter};

    let dir = tempfile::tempdir().unwrap();
    // Claims to be a `prompts` table but has a numeric `text` column and no `tags`.
    let path = dir.path().join("odd.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::UInt64, false),
    ]));
    let batch = arrow_array::RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(arrow_array::StringArray::from(vec!["x"])),
            Arc::new(arrow_array::UInt64Array::from(vec![1u64])),
        ],
    )
    .unwrap();
    let provenance = crate::hand_made("hand-made");
    let mut w =
        TableWriter::with_schema(&Output::Path(path.clone()), &PROMPTS, schema, &provenance)
            .unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();

    let out = dir.path().join("out.parquet");
    let err = fails(
        &[
            "dedup",
            "-i",
            path.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        err.contains("columns do not match the `prompts` schema"),
        "{err}"
    );
    assert!(
        err.contains("column `text`: expected utf8, found UInt64"),
        "{err}"
    );
    assert!(
        err.contains("column `source`: expected utf8, found no such column"),
        "{err}"
    );
    assert!(!out.exists());

    // A Parquet file without charter's metadata is not a charter table.
    let foreign = dir.path().join("foreign.parquet");
    let file = std::fs::File::create(&foreign).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let err = fails(
        &[
            "dedup",
            "-i",
            foreign.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        err.contains("metadata `charter.table`: missing: not a charter table"),
        "{err}"
    );
}
