//! Row ids and table content hashes.
//!
//! Both are blake3 over a canonical byte encoding of cells, so they depend on
//! values only — not on the Arrow layout (`Utf8` or `LargeUtf8`), row groups,
//! compression, or the machine. The encoding is part of charter's file format:
//! changing it changes every id, so it is versioned by the `v1` in its domain
//! tags and pinned by golden-value tests.
//!
//! The cell encoding (v1) is specified with the cells themselves, in
//! `value.rs`.
//!
//! # Row id
//!
//! `blake3("charter.row.v1" 0x00 table 0x00 (name 0x00 cell)*)`, lowercase hex,
//! over the table's `key` columns in schema order (see `schemas/`). Keys are
//! the row's inputs — its parents' ids, the model, the settings and the seed —
//! so the id names the work and is known before a generation stage runs it.
//!
//! # Content hash
//!
//! `blake3("charter.table.v1" 0x00 table 0x00 ncols:u64 (name 0x00 type 0x00)* cell* nrows:u64)`,
//! lowercase hex, over every column of every row in row order, `type` being
//! the logical type name (`utf8`, `list<utf8>`, …).

use arrow_array::RecordBatch;

use crate::error::{Error, Result};
use crate::schema::ColumnType;
use crate::value::{ColumnView, Value, encode_value};

const ROW_DOMAIN: &[u8] = b"charter.row.v1\0";
const TABLE_DOMAIN: &[u8] = b"charter.table.v1\0";

/// The id of a row of `table` whose key columns hold `keys` (name, cell), in schema order.
pub fn row_id<'a>(table: &str, keys: impl IntoIterator<Item = (&'a str, Value<'a>)>) -> String {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(ROW_DOMAIN);
    buf.extend_from_slice(table.as_bytes());
    buf.push(0);
    for (name, value) in keys {
        buf.extend_from_slice(name.as_bytes());
        buf.push(0);
        encode_value(&value, &mut buf);
    }
    blake3::hash(&buf).to_hex().to_string()
}

/// Streams a table's rows into its content hash.
///
/// Cells are encoded into a buffer that is handed to blake3 in large chunks,
/// so hashing runs near blake3's own speed rather than paying its per-call
/// overhead on every short cell.
pub struct ContentHasher {
    hasher: blake3::Hasher,
    buf: Vec<u8>,
    columns: Vec<String>,
    rows: u64,
    bytes: u64,
}

const FLUSH_AT: usize = 1 << 16;

impl ContentHasher {
    /// A hasher for `table` with these columns (name, logical type) in file order.
    pub fn new<'a>(table: &str, columns: impl IntoIterator<Item = (&'a str, ColumnType)>) -> Self {
        let mut buf = Vec::with_capacity(FLUSH_AT + 4096);
        buf.extend_from_slice(TABLE_DOMAIN);
        buf.extend_from_slice(table.as_bytes());
        buf.push(0);
        let columns: Vec<(&str, ColumnType)> = columns.into_iter().collect();
        buf.extend_from_slice(&(columns.len() as u64).to_le_bytes());
        for (name, ty) in &columns {
            buf.extend_from_slice(name.as_bytes());
            buf.push(0);
            buf.extend_from_slice(ty.name().as_bytes());
            buf.push(0);
        }
        ContentHasher {
            hasher: blake3::Hasher::new(),
            buf,
            columns: columns.iter().map(|(n, _)| n.to_string()).collect(),
            rows: 0,
            bytes: 0,
        }
    }

    /// Adds the rows of `batch`, whose columns must be those given to [`ContentHasher::new`].
    pub fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        let schema = batch.schema();
        if schema.fields().len() != self.columns.len()
            || schema
                .fields()
                .iter()
                .zip(&self.columns)
                .any(|(f, c)| f.name() != c)
        {
            return Err(Error::Invalid(format!(
                "content hash: batch columns {:?} differ from table columns {:?}",
                schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>(),
                self.columns
            )));
        }
        let views = batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(array, field)| {
                ColumnView::new(array.as_ref()).ok_or_else(|| {
                    Error::Invalid(format!(
                        "content hash: column `{}` has type {}, which charter does not hash",
                        field.name(),
                        field.data_type()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        for row in 0..batch.num_rows() {
            for view in &views {
                match view.long_str(row) {
                    // Long text goes straight to the hasher rather than through the buffer.
                    Some(s) => {
                        self.buf.push(0x05);
                        self.buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
                        self.flush();
                        self.hasher.update(s.as_bytes());
                        self.bytes += s.len() as u64;
                    }
                    None => view.encode(row, &mut self.buf),
                }
            }
            if self.buf.len() >= FLUSH_AT {
                self.flush();
            }
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    fn flush(&mut self) {
        self.bytes += self.buf.len() as u64;
        self.hasher.update(&self.buf);
        self.buf.clear();
    }

    /// Rows hashed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes of canonical encoding hashed so far (for throughput figures).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The content hash, lowercase hex.
    pub fn finish(mut self) -> String {
        self.buf.extend_from_slice(&self.rows.to_le_bytes());
        self.flush();
        self.hasher.finalize().to_hex().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_pinned() {
        let mut out = Vec::new();
        for v in [
            Value::Null,
            Value::Bool(true),
            Value::UInt(1),
            Value::Int(-1),
            Value::Float(f64::NAN),
            Value::Str("é"),
            Value::List(vec!["a"]),
        ] {
            encode_value(&v, &mut out);
        }
        let expected: Vec<u8> = [
            &[0x00][..],
            &[0x01, 0x01],
            &[0x02, 1, 0, 0, 0, 0, 0, 0, 0],
            &[0x03, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0x04, 0, 0, 0, 0, 0, 0, 0xf8, 0x7f],
            &[0x05, 2, 0, 0, 0, 0, 0, 0, 0, 0xc3, 0xa9],
            &[
                0x06, 1, 0, 0, 0, 0, 0, 0, 0, 0x05, 1, 0, 0, 0, 0, 0, 0, 0, b'a',
            ],
        ]
        .concat();
        assert_eq!(out, expected);
    }

    #[test]
    fn row_id_golden_value() {
        // Pinned: changing this value changes every id charter has ever written.
        let id = row_id("prompts", [("text", Value::Str("How do I pick a lock?"))]);
        assert_eq!(id, GOLDEN_PROMPT_ID);
    }

    // Computed independently from the documented encoding (Python `blake3`).
    const GOLDEN_PROMPT_ID: &str =
        "a5ac203cb32f5e992da2b6b49c4b2b89bbf1172c96eb33a6f287e8e9d630f42a";
}
