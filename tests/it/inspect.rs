//! `charter inspect`: text and JSON views, verification, damaged files, statistics and samples.

use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int32Array, RecordBatch, StringArray};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use serde_json::Value;

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

/// Writes `columns` as a Parquet file with no charter metadata, `rows_per_group` rows to a row group.
fn foreign_table(path: &Path, columns: Vec<(&str, ArrayRef)>, rows_per_group: usize) -> String {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(rows_per_group))
        .build();
    let f = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(f, batch.schema(), Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    path.to_str().unwrap().to_string()
}

fn json(args: &[&str]) -> Value {
    serde_json::from_slice(&ok(args)).unwrap()
}

#[track_caller]
fn assert_near(got: &Value, want: f64) {
    let g = got
        .as_f64()
        .unwrap_or_else(|| panic!("{got} is not a number"));
    assert!((g - want).abs() < 1e-9, "got {g}, want {want}");
}

#[test]
fn inspect_stats_summarise_each_column() {
    let dir = tempfile::tempdir().unwrap();
    let mut tags = ListBuilder::new(StringBuilder::new());
    for row in [
        Some(&["x"][..]),
        Some(&[]),
        None,
        Some(&["x", "y"]),
        Some(&["x"]),
        Some(&["a", "b", "c"]),
    ] {
        match row {
            Some(items) => {
                items.iter().for_each(|t| tags.values().append_value(t));
                tags.append(true);
            }
            None => tags.append(false),
        }
    }
    let table = foreign_table(
        &dir.path().join("t.parquet"),
        vec![
            (
                "score",
                Arc::new(Float64Array::from(vec![
                    Some(1.0),
                    None,
                    Some(8.0),
                    Some(f64::NAN),
                    Some(2.0),
                    Some(4.0),
                ])) as ArrayRef,
            ),
            (
                "count",
                Arc::new(Int32Array::from(vec![
                    Some(3),
                    Some(3),
                    None,
                    Some(-2),
                    Some(10),
                    Some(3),
                ])),
            ),
            (
                "text",
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    Some("héllo"),
                    None,
                    Some("a"),
                    Some(""),
                    Some("ab"),
                ])),
            ),
            (
                "flag",
                Arc::new(BooleanArray::from(vec![
                    Some(true),
                    Some(false),
                    Some(true),
                    None,
                    Some(true),
                    Some(false),
                ])),
            ),
            ("tags", Arc::new(tags.finish())),
        ],
        4,
    );
    let t = json(&["inspect", &table, "--stats", "--json", "--head", "0"]);
    let s = &t["stats"];
    for column in ["score", "count", "text", "flag", "tags"] {
        assert_eq!(s[column]["rows"], 6, "{column}");
        assert_eq!(s[column]["nulls"], 1, "{column}");
    }

    // Sorted values 1, 2, 4, 8 (NaN apart); the q-quantile at h = 3q between ranks.
    assert_eq!(s["score"]["type"], "float64");
    assert_eq!(s["score"]["nan"], 1);
    assert_eq!(s["score"]["distinct"], 5);
    let v = &s["score"]["values"];
    for (key, want) in [
        ("min", 1.0),
        ("mean", 3.75),
        ("p05", 1.15),
        ("p25", 1.75),
        ("p50", 3.0),
        ("p75", 5.0),
        ("p95", 7.4),
        ("max", 8.0),
    ] {
        assert_near(&v[key], want);
    }

    // Sorted -2, 3, 3, 3, 10: h = 4q; the minimum and maximum stay integers.
    assert_eq!(s["count"]["distinct"], 3);
    let v = &s["count"]["values"];
    assert_eq!(v["min"], -2);
    assert_eq!(v["max"], 10);
    for (key, want) in [
        ("mean", 3.4),
        ("p05", -1.0),
        ("p25", 3.0),
        ("p50", 3.0),
        ("p95", 8.6),
    ] {
        assert_near(&v[key], want);
    }

    // Lengths in characters, not bytes: 1, 5, 1, 0, 2.
    assert_eq!(s["text"]["distinct"], 4);
    let v = &s["text"]["chars"];
    for (key, want) in [
        ("min", 0.0),
        ("mean", 1.8),
        ("p50", 1.0),
        ("p90", 3.8),
        ("max", 5.0),
    ] {
        assert_near(&v[key], want);
    }
    let top: Vec<(&str, u64)> = s["text"]["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["value"].as_str().unwrap(), e["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(top, [("a", 2), ("", 1), ("ab", 1), ("héllo", 1)]);

    assert_eq!(
        (&s["flag"]["true"], &s["flag"]["false"]),
        (&3.into(), &2.into())
    );

    // Item counts 1, 0, 2, 1, 3.
    assert_eq!(s["tags"]["type"], "list<utf8>");
    assert_eq!(s["tags"]["distinct"], 4);
    let v = &s["tags"]["items"];
    for (key, want) in [
        ("min", 0.0),
        ("mean", 1.4),
        ("p50", 1.0),
        ("p90", 2.6),
        ("max", 3.0),
    ] {
        assert_near(&v[key], want);
    }

    let text = String::from_utf8(ok(&["inspect", &table, "--stats"])).unwrap();
    assert!(text.contains("NaN 1"), "{text}");
    assert!(text.contains("true 3, false 2"), "{text}");
    assert!(text.lines().all(|l| l.chars().count() <= 120), "{text}");
}

#[test]
fn inspect_sample_is_seeded_and_in_table_order() {
    let dir = tempfile::tempdir().unwrap();
    let lines: String = (0..60).map(|i| format!("prompt {i} of sixty\n")).collect();
    let input = file(dir.path(), "p.txt", lines);
    let table = dir.path().join("p.parquet");
    let table = table.to_str().unwrap();
    ok(&["prompts", "import", &input, "-o", table, "--no-near-dup"]);
    let sample = |n: &str, seed: &str| {
        let t = json(&["inspect", table, "--json", "--sample", n, "--seed", seed]);
        assert_eq!(t["seed"], seed.parse::<u64>().unwrap());
        let rows: Vec<u64> = serde_json::from_value(t["sample_rows"].clone()).unwrap();
        let texts: Vec<String> = t["sample"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["text"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(rows.len(), texts.len());
        (rows, texts)
    };
    let (rows, texts) = sample("10", "1");
    assert_eq!(rows.len(), 10);
    assert!(rows.windows(2).all(|w| w[0] < w[1]), "{rows:?}");
    assert_eq!(sample("10", "1"), (rows.clone(), texts));
    assert_ne!(sample("10", "2").0, rows);
    let (all, _) = sample("100", "3");
    assert_eq!(all, (0..60).collect::<Vec<u64>>());

    // The text view prints the drawn rows with their row numbers.
    let text = String::from_utf8(ok(&["inspect", table, "--sample", "2", "--seed", "1"])).unwrap();
    assert!(text.contains("2 of 60 rows drawn with seed 1"), "{text}");
    assert!(
        text.contains(&format!("  [{}]", sample("2", "1").0[0])),
        "{text}"
    );
}

#[test]
fn inspect_sample_ignores_row_groups_of_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let values: Vec<String> = (0..50).map(|i| format!("value {i}")).collect();
    let drawn = |rows_per_group: usize| {
        let column = Arc::new(StringArray::from(values.clone())) as ArrayRef;
        let path = dir.path().join(format!("v{rows_per_group}.parquet"));
        let table = foreign_table(&path, vec![("v", column)], rows_per_group);
        let t = json(&["inspect", &table, "--json", "--sample", "5", "--seed", "9"]);
        assert_eq!(t["table"], Value::Null);
        t["sample"].clone()
    };
    let one_group = drawn(50);
    assert_eq!(one_group.as_array().unwrap().len(), 5);
    assert_eq!(drawn(7), one_group);
}

#[test]
fn inspect_refuses_bad_sample_flags() {
    let dir = tempfile::tempdir().unwrap();
    let column = Arc::new(StringArray::from(vec!["a"])) as ArrayRef;
    let table = foreign_table(&dir.path().join("t.parquet"), vec![("v", column)], 1);
    for (args, flag) in [
        (&["--sample", "0"][..], "--sample"),
        (&["--sample", "-1"], "--sample"),
        (&["--sample", "two"], "--sample"),
        (&["--seed", "1"], "--sample"),
        (&["--sample", "1", "--seed", "x"], "--seed"),
        (&["--sample", "1", "--seed", "-1"], "--seed"),
    ] {
        let err = fails(&[&["inspect", table.as_str()], args].concat(), None);
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}
