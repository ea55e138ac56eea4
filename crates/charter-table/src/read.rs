//! Reading tables: checking what a file holds, then its rows.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use bytes::Bytes;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::error::{Error, Result};
use crate::hash::ContentHasher;
use crate::provenance::{KEY_BUILD_KEY, KEY_CONTENT_HASH, KEY_SCHEMA_VERSION, KEY_TABLE};
use crate::record::Record;
use crate::schema::{ColumnType, TableSpec};
use crate::value::{ColumnView, Value};

/// Rows per record batch when reading.
const READ_BATCH_ROWS: usize = 8_192;

/// An opened table file: its metadata and schema are read; rows are read on demand.
///
/// `-` opens standard input, which is read into memory first (Parquet needs
/// random access to its footer).
pub struct TableFile {
    path: PathBuf,
    source: Source,
    schema: SchemaRef,
    metadata: BTreeMap<String, String>,
    rows: u64,
}

enum Source {
    File(File),
    Bytes(Bytes),
}

/// The whole content of `path`; `-` reads standard input.
pub fn read_input(path: &Path) -> Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| Error::io("<stdin>", e))?;
        Ok(buf)
    } else {
        std::fs::read(path).map_err(|e| Error::io(path, e))
    }
}

impl TableFile {
    /// Opens a Parquet file (or standard input for `-`) and reads its footer.
    /// A pipe (a shell's `<(command)`) is read whole into memory, as
    /// standard input is: Parquet's footer is at the end.
    pub fn open(path: &Path) -> Result<Self> {
        if path == Path::new("-") {
            return Self::from_bytes(Path::new("<stdin>"), read_input(path)?);
        }
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let regular = file
            .metadata()
            .map_err(|e| Error::io(path, e))?
            .file_type()
            .is_file();
        if !regular {
            let mut buf = Vec::new();
            file.read_to_end(&mut buf).map_err(|e| Error::io(path, e))?;
            return Self::from_bytes(path, buf);
        }
        let clone = file.try_clone().map_err(|e| Error::io(path, e))?;
        Self::with_footer(path, clone, Source::File(file))
    }

    /// Opens a Parquet file held in memory; `path` names it in messages.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let bytes = Bytes::from(bytes);
        Self::with_footer(path, bytes.clone(), Source::Bytes(bytes))
    }

    /// Reads the footer through `reader` and keeps `source` for the rows.
    fn with_footer<T: parquet::file::reader::ChunkReader + 'static>(
        path: &Path,
        reader: T,
        source: Source,
    ) -> Result<Self> {
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(reader).map_err(|e| Error::NotParquet {
                path: path.to_path_buf(),
                source: e,
            })?;
        let (schema, metadata, rows) = footer(&builder);
        Ok(TableFile {
            path: path.to_path_buf(),
            source,
            schema,
            metadata,
            rows,
        })
    }

    /// The path it was opened from (`<stdin>` for standard input).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The Arrow schema of the file.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The file's key/value metadata (charter's provenance and any other keys).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Row count from the file's footer.
    pub fn num_rows(&self) -> u64 {
        self.rows
    }

    /// The `charter.table` name, if the file is a charter table.
    pub fn table_name(&self) -> Option<&str> {
        self.metadata.get(KEY_TABLE).map(String::as_str)
    }

    /// The recorded content hash.
    pub fn content_hash(&self) -> Option<&str> {
        self.metadata.get(KEY_CONTENT_HASH).map(String::as_str)
    }

    /// The recorded content hash, or for a file that records none (a table
    /// written by another tool) the hash of its rows, computed.
    pub fn content_hash_or_compute(&self) -> Result<String> {
        match self.content_hash() {
            Some(h) => Ok(h.to_string()),
            None => self.compute_content_hash(),
        }
    }

    /// The recorded build key.
    pub fn build_key(&self) -> Option<&str> {
        self.metadata.get(KEY_BUILD_KEY).map(String::as_str)
    }

    /// The core table this file says it holds, checked as [`TableFile::expect`] does.
    pub fn core_spec(&self) -> Result<&'static TableSpec> {
        let name = self.table_name().ok_or_else(|| Error::Metadata {
            path: self.path.clone(),
            key: KEY_TABLE.to_string(),
            problem: "missing: not a charter table".to_string(),
        })?;
        let spec = crate::tables::table_spec(name).ok_or_else(|| Error::Metadata {
            path: self.path.clone(),
            key: KEY_TABLE.to_string(),
            problem: format!("unknown table `{name}`"),
        })?;
        self.expect(spec)?;
        Ok(spec)
    }

    /// Checks that the file holds `spec`'s table at its schema version with
    /// its columns, reporting every column mismatch.
    pub fn expect(&self, spec: &TableSpec) -> Result<()> {
        match self.table_name() {
            Some(name) if name == spec.name => {}
            found => {
                return Err(Error::WrongTable {
                    path: self.path.clone(),
                    expected: spec.name.to_string(),
                    found: match found {
                        Some(name) => format!("a `{name}` table"),
                        None => "no `charter.table` metadata (not a charter table)".to_string(),
                    },
                });
            }
        }
        let version = self
            .metadata
            .get(KEY_SCHEMA_VERSION)
            .map(String::as_str)
            .unwrap_or("none");
        if version != spec.version.to_string() {
            return Err(Error::SchemaVersion {
                path: self.path.clone(),
                table: spec.name.to_string(),
                expected: spec.version,
                found: version.to_string(),
            });
        }
        spec.check_schema(&self.path, &self.schema)
    }

    /// Reads all rows as record batches.
    pub fn batches(&self) -> Result<Batches> {
        let parquet_err = |e| Error::Parquet {
            path: self.path.clone(),
            source: e,
        };
        let reader = match &self.source {
            Source::File(f) => {
                let f = f.try_clone().map_err(|e| Error::io(&self.path, e))?;
                ParquetRecordBatchReaderBuilder::try_new(f)
                    .and_then(|b| b.with_batch_size(READ_BATCH_ROWS).build())
                    .map_err(parquet_err)?
            }
            Source::Bytes(bytes) => ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
                .and_then(|b| b.with_batch_size(READ_BATCH_ROWS).build())
                .map_err(parquet_err)?,
        };
        Ok(Batches {
            reader,
            path: self.path.clone(),
        })
    }

    /// Reads every row of `R`'s table, after checking the file holds that table.
    pub fn rows<R: Record>(&self) -> Result<Vec<R>> {
        self.expect(R::SPEC)?;
        let mut out = Vec::with_capacity(self.rows as usize);
        for batch in self.batches()? {
            let batch = batch?;
            out.extend(R::from_batch(&batch, &self.path, out.len() as u64)?);
        }
        Ok(out)
    }

    /// Recomputes the content hash from the rows.
    pub fn compute_content_hash(&self) -> Result<String> {
        let name = self.table_name().unwrap_or("");
        let columns = self
            .schema
            .fields()
            .iter()
            .map(|f| {
                ColumnType::of_arrow(f.data_type())
                    .map(|t| (f.name().as_str(), t))
                    .ok_or_else(|| Error::Column {
                        path: self.path.clone(),
                        column: f.name().clone(),
                        problem: format!("type {} is not one charter hashes", f.data_type()),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut hasher = ContentHasher::new(name, columns);
        for batch in self.batches()? {
            hasher.update(&batch?)?;
        }
        Ok(hasher.finish())
    }
}

fn footer<T: parquet::file::reader::ChunkReader>(
    builder: &ParquetRecordBatchReaderBuilder<T>,
) -> (SchemaRef, BTreeMap<String, String>, u64) {
    let meta = builder.metadata().file_metadata();
    let kv = meta
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .filter(|e| e.key != "ARROW:schema")
                .map(|e| (e.key.clone(), e.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    (builder.schema().clone(), kv, meta.num_rows().max(0) as u64)
}

/// An iterator over a table's record batches.
pub struct Batches {
    reader: ParquetRecordBatchReader,
    path: PathBuf,
}

impl Iterator for Batches {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.reader.next().map(|r| {
            r.map_err(|e| Error::Arrow {
                context: format!("{}: reading rows", self.path.display()),
                source: e,
            })
        })
    }
}

/// The cells of column `index` of `batch`, or `None` if charter cannot read its type.
pub fn column_cells(batch: &RecordBatch, index: usize) -> Option<Vec<Value<'_>>> {
    let view = ColumnView::new(batch.column(index).as_ref())?;
    Some((0..batch.num_rows()).map(|i| view.value(i)).collect())
}
