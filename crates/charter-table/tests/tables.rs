//! Writing, reading, hashing and resuming tables, end to end through Parquet files.

// Test helpers panic with context on any failure: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use charter_table::{
    ColumnType, Error, InputRef, Label, Opened, Output, PROMPTS, Prompt, Provenance, RESPONSES,
    Record, Response, Role, ShardedWriter, TableFile, TableWriter, partial_dir,
};

fn provenance(stage: &str) -> Provenance {
    Provenance {
        stage: stage.into(),
        stage_version: 1,
        settings: serde_json::json!({"b": 2, "a": 1}),
        inputs: vec![InputRef {
            name: "in".into(),
            content_hash: "00".into(),
        }],
        model_hash: None,
        constitution_hash: None,
    }
}

fn prompts(n: usize) -> Vec<Prompt> {
    (0..n)
        .map(|i| {
            Prompt {
                id: String::new(),
                text: format!("prompt number {i} with some text"),
                source: "test".into(),
                source_row: i as u64 + 1,
                tags: if i % 3 == 0 {
                    vec![]
                } else {
                    vec![format!("tag:{}", i % 3), "x".into()]
                },
            }
            .with_id()
        })
        .collect()
}

fn write(path: &Path, rows: &[Prompt], chunk: usize) -> charter_table::TableSummary {
    let mut w = TableWriter::create(
        &Output::Path(path.to_path_buf()),
        &PROMPTS,
        &provenance("test"),
    )
    .unwrap();
    for c in rows.chunks(chunk) {
        w.write_rows(c).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn round_trip_preserves_rows_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.parquet");
    let rows = prompts(40_000);
    let summary = write(&path, &rows, 7_000);
    let table = TableFile::open(&path).unwrap();
    assert_eq!(table.table_name(), Some("prompts"));
    assert_eq!(table.num_rows(), 40_000);
    assert_eq!(table.content_hash(), Some(summary.content_hash.as_str()));
    assert_eq!(table.build_key(), Some(summary.build_key.as_str()));
    assert_eq!(table.metadata()["charter.settings"], r#"{"a":1,"b":2}"#);
    assert_eq!(table.metadata()["charter.rows"], "40000");
    assert_eq!(table.compute_content_hash().unwrap(), summary.content_hash);
    assert_eq!(table.rows::<Prompt>().unwrap(), rows);
    // Only the finished file is left in the directory.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("p.parquet")]);
}

#[test]
fn bytes_do_not_depend_on_batching() {
    let dir = tempfile::tempdir().unwrap();
    let rows = prompts(20_000);
    let a = dir.path().join("a.parquet");
    let b = dir.path().join("b.parquet");
    write(&a, &rows, 20_000);
    write(&b, &rows, 333);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn content_hash_covers_every_column() {
    let dir = tempfile::tempdir().unwrap();
    let rows = prompts(10);
    let a = write(&dir.path().join("a.parquet"), &rows, 10);
    let mut changed = rows.clone();
    changed[9].source_row = 99; // a data column, not part of the id
    let b = write(&dir.path().join("b.parquet"), &changed, 10);
    assert_ne!(a.content_hash, b.content_hash);
    let c = write(&dir.path().join("c.parquet"), &rows[..9], 10);
    assert_ne!(a.content_hash, c.content_hash);
}

#[test]
fn ids_cover_key_columns_only() {
    let p = prompts(1).remove(0);
    let mut q = p.clone();
    q.source = "elsewhere".into();
    q.tags = vec!["t".into()];
    assert_eq!(q.compute_id(), p.id);
    q.text.push('!');
    assert_ne!(q.compute_id(), p.id);
    assert_eq!(p.id.len(), 64);
}

#[test]
fn dropping_a_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.parquet");
    let mut w =
        TableWriter::create(&Output::Path(path.clone()), &PROMPTS, &provenance("test")).unwrap();
    w.write_rows(&prompts(100)).unwrap();
    drop(w);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn unwritable_output_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("p.parquet");
    let err = TableWriter::create(&Output::Path(path.clone()), &PROMPTS, &provenance("test"))
        .err()
        .unwrap();
    assert!(err.to_string().contains("missing-dir"), "{err}");
    assert!(!path.exists());
}

#[test]
fn reading_the_wrong_table_names_both() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.parquet");
    write(&path, &prompts(3), 3);
    let err = TableFile::open(&path)
        .unwrap()
        .rows::<Response>()
        .unwrap_err();
    assert!(matches!(err, Error::WrongTable { .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "{}: expected a `responses` table, found a `prompts` table",
            path.display()
        )
    );
}

#[test]
fn column_mismatches_are_listed_by_column() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.parquet");
    // A `prompts` table whose `source_row` is text and which lacks `tags`.
    let schema = Arc::new(arrow_schema::Schema::new(vec![
        arrow_schema::Field::new("id", arrow_schema::DataType::Utf8, false),
        arrow_schema::Field::new("text", arrow_schema::DataType::Utf8, false),
        arrow_schema::Field::new("source", arrow_schema::DataType::Utf8, false),
        arrow_schema::Field::new("source_row", arrow_schema::DataType::Utf8, false),
    ]));
    let col = |v: &str| Arc::new(arrow_array::StringArray::from(vec![v])) as arrow_array::ArrayRef;
    let batch = arrow_array::RecordBatch::try_new(
        schema.clone(),
        vec![col("i"), col("t"), col("s"), col("1")],
    )
    .unwrap();
    let mut w = TableWriter::with_schema(
        &Output::Path(path.clone()),
        &PROMPTS,
        schema,
        &provenance("t"),
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    let err = TableFile::open(&path)
        .unwrap()
        .expect(&PROMPTS)
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("column `source_row`: expected uint64, found Utf8"),
        "{msg}"
    );
    assert!(
        msg.contains("column `tags`: expected list<utf8>, found no such column"),
        "{msg}"
    );
}

#[test]
fn truncated_and_foreign_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.parquet");
    write(&path, &prompts(50), 50);
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.parquet");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = TableFile::open(&cut).err().unwrap();
    assert!(matches!(err, Error::NotParquet { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}: not a readable Parquet file", cut.display()))
    );

    let text = dir.path().join("notes.parquet");
    std::fs::write(&text, "just some text\n").unwrap();
    assert!(matches!(
        TableFile::open(&text).err().unwrap(),
        Error::NotParquet { .. }
    ));
}

#[test]
fn nullable_columns_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labels.parquet");
    let row = Label {
        id: String::new(),
        pair_id: "p".into(),
        prompt_id: "q".into(),
        prompt: "prompt".into(),
        response_a_id: "a".into(),
        response_b_id: "b".into(),
        response_a: "A".into(),
        response_b: "B".into(),
        principle_id: "harm".into(),
        principle: "Which is less harmful?".into(),
        model: "m".into(),
        model_hash: "mh".into(),
        constitution: "c".into(),
        constitution_hash: "ch".into(),
        cot: false,
        swap: false,
        seed: 7,
        p_a: 0.75,
        p_a_ab: 0.75,
        p_a_ba: None,
        cot_ab: Some("because".into()),
        cot_ba: None,
        chosen: "A".into(),
        rejected: "B".into(),
        chosen_id: "a".into(),
        rejected_id: "b".into(),
    }
    .with_id();
    let mut w = TableWriter::create(
        &Output::Path(path.clone()),
        &charter_table::LABELS,
        &provenance("t"),
    )
    .unwrap();
    w.write_rows(std::slice::from_ref(&row)).unwrap();
    w.finish().unwrap();
    assert_eq!(
        TableFile::open(&path).unwrap().rows::<Label>().unwrap(),
        vec![row]
    );
}

/// Commits `rows` in shards of `shard` rows, stopping (as if killed) after `stop_after` shards.
fn sharded(
    out: &Path,
    rows: &[Response],
    shard: usize,
    stop_after: Option<usize>,
) -> Option<String> {
    let prov = Provenance {
        stage: "respond".into(),
        ..provenance("respond")
    };
    let key = prov.build_key(&RESPONSES);
    let (mut w, state) = match ShardedWriter::open(out, &RESPONSES, &key, &[]).unwrap() {
        Opened::Finished(s) => return Some(s.content_hash),
        Opened::Writer(w, s) => (w, s),
    };
    let done = state.rows as usize;
    assert_eq!(done % shard, 0);
    for (i, chunk) in rows[done..].chunks(shard).enumerate() {
        if stop_after == Some(i) {
            return None;
        }
        w.commit(&Response::to_batch(chunk).unwrap()).unwrap();
    }
    Some(w.finish(&prov).unwrap().content_hash)
}

fn responses(n: usize) -> Vec<Response> {
    (0..n)
        .map(|i| {
            Response {
                id: String::new(),
                prompt_id: format!("p{i}"),
                prompt: "q".into(),
                system: None,
                sample: 0,
                model: "m".into(),
                model_hash: "h".into(),
                temperature: 0.7,
                top_p: 0.9,
                top_k: 0,
                max_new_tokens: 64,
                seed: i as u64,
                text: format!("answer {i}"),
                prompt_tokens: 3,
                completion_tokens: 2,
                finish_reason: "stop".into(),
            }
            .with_id()
        })
        .collect()
}

#[test]
fn a_killed_sharded_write_resumes_to_the_same_table() {
    let dir = tempfile::tempdir().unwrap();
    let rows = responses(1_000);
    let whole = dir.path().join("whole.parquet");
    let expected = sharded(&whole, &rows, 100, None).unwrap();

    let out = dir.path().join("resumed.parquet");
    assert_eq!(sharded(&out, &rows, 100, Some(3)), None);
    assert!(
        !out.exists(),
        "a partial table must not appear at the output path"
    );
    assert!(partial_dir(&out).join("journal.jsonl").exists());
    // Simulate a kill mid-shard and mid-journal-append.
    std::fs::write(
        partial_dir(&out).join("shard-000003.parquet.tmp"),
        b"PAR1 half",
    )
    .unwrap();
    let mut journal = std::fs::OpenOptions::new()
        .append(true)
        .open(partial_dir(&out).join("journal.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut journal, br#"{"shard":3,"file":"shard-0000"#).unwrap();
    drop(journal);

    assert_eq!(sharded(&out, &rows, 100, Some(2)), None);
    let resumed = sharded(&out, &rows, 100, None).unwrap();
    assert_eq!(resumed, expected);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&whole).unwrap());
    assert!(!partial_dir(&out).exists());
    // A finished build with the same key does nothing.
    assert_eq!(sharded(&out, &rows, 100, Some(0)), Some(expected));
}

#[test]
fn a_corrupt_shard_is_redone() {
    let dir = tempfile::tempdir().unwrap();
    let rows = responses(500);
    let whole = dir.path().join("whole.parquet");
    let expected = sharded(&whole, &rows, 100, None).unwrap();
    let out = dir.path().join("out.parquet");
    assert_eq!(sharded(&out, &rows, 100, Some(4)), None);
    // Damage shard 2: it and every later shard are discarded and redone.
    std::fs::write(partial_dir(&out).join("shard-000002.parquet"), b"garbage").unwrap();
    let prov = provenance("respond");
    let Opened::Writer(_, state) =
        ShardedWriter::open(&out, &RESPONSES, &prov.build_key(&RESPONSES), &[]).unwrap()
    else {
        panic!("expected a writer")
    };
    assert_eq!(state.rows, 200);
    assert_eq!(sharded(&out, &rows, 100, None).unwrap(), expected);
}

#[test]
fn a_partial_build_of_other_settings_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.parquet");
    assert_eq!(sharded(&out, &responses(300), 100, Some(2)), None);
    // Read without changing anything: the key it was built with, the rows it has.
    let left = ShardedWriter::peek(&out).unwrap();
    assert_eq!(
        (left.build_key, left.rows, left.shards),
        (provenance("respond").build_key(&RESPONSES), 200, 2)
    );
    assert_eq!(
        ShardedWriter::peek(&out).unwrap().rows,
        200,
        "peek changed nothing"
    );
    let Opened::Writer(_, state) =
        ShardedWriter::open(&out, &RESPONSES, "another-key", &[]).unwrap()
    else {
        panic!("expected a writer")
    };
    assert!(state.discarded_stale);
    assert_eq!(state.rows, 0);
}

/// The `schemas/` files at the repository root document the same columns as the code.
#[test]
fn schema_files_match_the_code() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
    let mut seen = 0;
    for spec in charter_table::ALL_TABLES {
        let path = root.join(format!("{}.toml", spec.name));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(
            file["table"].as_str(),
            Some(spec.name),
            "{}",
            path.display()
        );
        assert_eq!(
            file["version"].as_integer(),
            Some(i64::from(spec.version)),
            "{}: version",
            path.display()
        );
        let columns = file["column"].as_array().unwrap();
        let found: Vec<(String, String, bool, String)> = columns
            .iter()
            .map(|c| {
                let meaning = c["meaning"].as_str().unwrap_or_default();
                assert!(
                    !meaning.trim().is_empty(),
                    "{}: column {} has no meaning",
                    path.display(),
                    c["name"]
                );
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["type"].as_str().unwrap().to_string(),
                    c["nullable"].as_bool().unwrap(),
                    c["role"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let expected: Vec<(String, String, bool, String)> = spec
            .columns
            .iter()
            .map(|c| {
                (
                    c.name.to_string(),
                    c.ty.name().to_string(),
                    c.nullable,
                    c.role.name().to_string(),
                )
            })
            .collect();
        assert_eq!(found, expected, "{} drifted from the code", path.display());
        for (_, ty, _, _) in &found {
            assert!(ColumnType::parse(ty).is_some());
        }
        assert_eq!(spec.columns[0].role, Role::Id);
        seen += 1;
    }
    let files = std::fs::read_dir(&root).unwrap().filter(|e| {
        e.as_ref()
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "toml")
    });
    assert_eq!(
        files.count(),
        seen,
        "every schema file describes a table in the code"
    );
}

/// The process umask, from `/proc/self/status` (Linux 4.7 and later).
fn umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

#[test]
fn written_files_get_the_mode_the_umask_gives() {
    use std::os::unix::fs::PermissionsExt;

    let Some(umask) = umask() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("p.parquet");
    write(&table, &prompts(3), 3);
    let report = dir.path().join("report.json");
    charter_table::write_atomic(&report, b"{}\n").unwrap();
    for path in [table, report] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        let expected = 0o666 & !umask;
        assert_eq!(
            mode,
            expected,
            "{}: {mode:o}, expected {expected:o}",
            path.display()
        );
    }
}
