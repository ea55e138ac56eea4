//! Parquet compressed with any codec other tools write reads the same: rows, content hash, prompts.

// Test helpers panic with context on any failure: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, LargeStringArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;
use charter_table::TableFile;
use charter_table::import::{Format, ImportOptions, ReadCounts, read_prompts};
use parquet::arrow::ArrowWriter;
use parquet::basic::{BrotliLevel, Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};

const PROMPTS: [&str; 3] = [
    "How do I pick a lock?",
    "Write a poem about the sea.",
    "Explain Snappy in one line.",
];

/// Every codec the Parquet format defines that pyarrow, polars, pandas or DuckDB write.
fn codecs() -> Vec<Compression> {
    vec![
        Compression::UNCOMPRESSED,
        Compression::SNAPPY,
        Compression::GZIP(GzipLevel::default()),
        Compression::LZ4,
        Compression::LZ4_RAW,
        Compression::BROTLI(BrotliLevel::default()),
        Compression::ZSTD(ZstdLevel::default()),
    ]
}

/// A prompts file as another tool would write it: a `prompt` column, a
/// `category` column (as `large_string`, polars' and pandas' choice), `codec`.
fn foreign_parquet(codec: Compression) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("prompt", DataType::Utf8, true),
        Field::new("category", DataType::LargeUtf8, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(PROMPTS.to_vec())),
        Arc::new(LargeStringArray::from(vec!["a", "b", "c"])),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let props = WriterProperties::builder().set_compression(codec).build();
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, schema, Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    // The file really is compressed with `codec`.
    let reader = SerializedFileReader::new(Bytes::from(bytes.clone())).unwrap();
    let column = reader.metadata().row_group(0).column(0);
    assert_eq!(column.compression(), codec, "{codec}");
    bytes
}

#[test]
fn every_codec_reads_to_the_same_rows_and_content_hash() {
    let mut hashes = Vec::new();
    for codec in codecs() {
        let name = format!("{codec}.parquet");
        let table = TableFile::from_bytes(Path::new(&name), foreign_parquet(codec))
            .unwrap_or_else(|e| panic!("{codec}: {e}"));
        assert_eq!(table.num_rows(), 3, "{codec}");
        let rows: usize = table
            .batches()
            .unwrap()
            .map(|b| b.unwrap_or_else(|e| panic!("{codec}: {e}")).num_rows())
            .sum();
        assert_eq!(rows, 3, "{codec}");
        hashes.push((codec, table.compute_content_hash().unwrap()));
    }
    let (_, first) = &hashes[0];
    for (codec, hash) in &hashes {
        assert_eq!(hash, first, "{codec}: the content hash ignores compression");
    }
}

#[test]
fn every_codec_imports_as_prompts() {
    for codec in codecs() {
        let name = format!("{codec}.parquet");
        let mut out = Vec::new();
        let mut counts = ReadCounts::default();
        read_prompts(
            Path::new(&name),
            &foreign_parquet(codec),
            Format::Parquet,
            &ImportOptions::default(),
            &mut out,
            &mut counts,
        )
        .unwrap_or_else(|e| panic!("{codec}: {e}"));
        assert_eq!(counts.read, 3, "{codec}");
        let texts: Vec<&str> = out.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(texts, PROMPTS, "{codec}");
        assert_eq!(out[1].tags, ["category:b"], "{codec}");
    }
}
