//! Parquet written by other tools imports as prompts, whatever codec compresses it.

use std::process::Command;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{BrotliLevel, Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::default_prompts::charter_home;
use crate::{inspect, ok};

/// A `prompt` column with two prompts, compressed with `codec`.
fn prompts_parquet(codec: Compression) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "prompt",
        DataType::Utf8,
        true,
    )]));
    let prompts: ArrayRef = Arc::new(StringArray::from(vec!["first prompt", "second prompt"]));
    let batch = RecordBatch::try_new(schema.clone(), vec![prompts]).unwrap();
    let props = WriterProperties::builder().set_compression(codec).build();
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, schema, Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    bytes
}

#[test]
fn every_codec_imports() {
    let dir = tempfile::tempdir().unwrap();
    let codecs = [
        ("uncompressed", Compression::UNCOMPRESSED),
        ("snappy", Compression::SNAPPY),
        ("gzip", Compression::GZIP(GzipLevel::default())),
        ("lz4", Compression::LZ4),
        ("lz4_raw", Compression::LZ4_RAW),
        ("brotli", Compression::BROTLI(BrotliLevel::default())),
        ("zstd", Compression::ZSTD(ZstdLevel::default())),
    ];
    for (name, codec) in codecs {
        let input = crate::file(
            dir.path(),
            &format!("{name}.parquet"),
            prompts_parquet(codec),
        );
        let out = dir.path().join(format!("{name}.prompts.parquet"));
        let out = out.to_str().unwrap();
        ok(&["prompts", "import", &input, "-o", out]);
        let t = inspect(out);
        assert_eq!(t["rows"], 2, "{name}");
        assert_eq!(t["head"][1]["text"], "second prompt", "{name}");
    }
}

#[test]
fn pyarrow_polars_and_pandas_defaults_import() {
    let dir = tempfile::tempdir().unwrap();
    let python = charter_home().join("venv/bin/python");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/foreign_parquet.py"
    );
    let run = Command::new(&python)
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_charter"))
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} — run scripts/setup first", python.display()));
    assert!(
        run.status.success(),
        "foreign Parquet check failed:\n{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
}
