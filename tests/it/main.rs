//! End-to-end tests of the `charter` binary: one integration binary, one module per area.

// Test helpers panic with context on any failure: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod build;
mod classifier;
mod constitution;
mod dedup;
mod default_model;
mod default_prompts;
mod filter;
mod foreign_parquet;
mod gc;
mod import;
mod inspect;
mod model_dirs;
mod model_import;
mod modes;
mod outputs;
mod report;
mod respond;
mod rl;
mod shard;
mod stages;
mod train;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `charter` with `args`, feeding `stdin` if given.
pub(crate) fn charter(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_charter"));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().expect("charter runs");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Runs `charter` and asserts it succeeded; returns stdout.
pub(crate) fn ok(args: &[&str]) -> Vec<u8> {
    let out = charter(args, None);
    assert!(
        out.status.success(),
        "charter {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs `charter`, asserts it failed, and returns stderr.
pub(crate) fn fails(args: &[&str], stdin: Option<&[u8]>) -> String {
    let out = charter(args, stdin);
    assert!(!out.status.success(), "charter {args:?} should have failed");
    String::from_utf8(out.stderr).unwrap()
}

/// The small constitution most tests use.
pub(crate) fn constitution() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/small-constitution.toml")
        .to_str()
        .unwrap()
        .to_string()
}

/// Writes a file into `dir` and returns its path as a string.
pub(crate) fn file(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_string()
}

/// `charter inspect --json` of a table.
pub(crate) fn inspect(path: &str) -> serde_json::Value {
    serde_json::from_slice(&ok(&["inspect", path, "--json", "--head", "100"])).unwrap()
}

/// `each` of the cells of `columns`, for every row of a charter table.
pub(crate) fn table_rows<T>(
    path: &str,
    columns: &[&str],
    mut each: impl FnMut(&[charter_table::Value<'_>]) -> T,
) -> Vec<T> {
    let table = charter_table::TableFile::open(Path::new(path)).unwrap();
    let mut rows = Vec::new();
    for batch in table.batches().unwrap() {
        let batch = batch.unwrap();
        let columns: Vec<_> = columns
            .iter()
            .map(|name| {
                let i = batch.schema().index_of(name).unwrap();
                charter_table::column_cells(&batch, i).unwrap()
            })
            .collect();
        for i in 0..batch.num_rows() {
            let row: Vec<_> = columns.iter().map(|c| c[i].clone()).collect();
            rows.push(each(&row));
        }
    }
    rows
}

/// Writes `rows` as a finished charter table at `path`, made by hand
/// (provenance stage `stage`, no inputs).
pub(crate) fn write_records<R: charter_table::Record>(path: &Path, stage: &str, rows: &[R]) {
    use charter_table::{Output, TableWriter};
    let provenance = hand_made(stage);
    let mut w =
        TableWriter::create(&Output::Path(path.to_path_buf()), R::SPEC, &provenance).unwrap();
    w.write_rows(rows).unwrap();
    w.finish().unwrap();
}

/// The provenance of a table a test writes by hand, as if stage `stage` had.
pub(crate) fn hand_made(stage: &str) -> charter_table::Provenance {
    charter_table::Provenance {
        stage: stage.into(),
        stage_version: 1,
        settings: serde_json::json!({}),
        inputs: vec![],
        model_hash: None,
        constitution_hash: None,
    }
}
