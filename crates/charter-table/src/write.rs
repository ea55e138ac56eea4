//! Writing a table to one Parquet file, atomically.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use crate::error::{Error, Result};
use crate::hash::ContentHasher;
use crate::lock::{OutputLock, claim_output};
use crate::provenance::{KEY_CONTENT_HASH, KEY_ROWS, Provenance};
use crate::record::Record;
use crate::schema::{ColumnType, TableSpec};

/// Rows per Parquet row group. Rows are re-chunked to exactly this size
/// before writing, so the file's bytes depend only on its rows — not on how
/// the caller batched them, or on where a resumed run stopped.
pub const ROW_GROUP_ROWS: usize = 16_384;

/// Writes `bytes` to `path` through a synced temporary file beside it, so a
/// failure or a kill leaves the old file or none, never part of the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = output_tempfile(path)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// A temporary file beside `path`, to be renamed onto it once complete:
/// `.NAME.XXXXXX.partial` in the same directory, so the rename is atomic.
///
/// Its mode is the one `File::create` gives, 0666 less the process umask,
/// not tempfile's private 0600: the rename keeps the mode, and a table or
/// report must be as readable as any other file its user writes.
pub fn output_tempfile(path: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".partial");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // The kernel applies the umask to the mode asked for at creation.
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(parent_dir(path))
}

/// What a finished write produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSummary {
    /// Rows written.
    pub rows: u64,
    /// The table's content hash.
    pub content_hash: String,
    /// The build key recorded in the file.
    pub build_key: String,
}

/// Where a table goes: a path, or standard output (`-`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A file path.
    Path(PathBuf),
    /// Standard output.
    Stdout,
}

impl Output {
    /// `-` means standard output; anything else is a path.
    pub fn parse(s: &str) -> Output {
        if s == "-" {
            Output::Stdout
        } else {
            Output::Path(PathBuf::from(s))
        }
    }

    /// Claims the output before any work (see [`claim_output`]); standard
    /// output needs no claim.
    pub fn claim(&self, inputs: &[&Path]) -> Result<Option<OutputLock>> {
        Ok(match self {
            Output::Path(path) => Some(claim_output(path, inputs)?),
            Output::Stdout => None,
        })
    }

    /// A name for messages.
    pub fn display(&self) -> String {
        match self {
            Output::Path(p) => p.display().to_string(),
            Output::Stdout => "<stdout>".to_string(),
        }
    }
}

/// Writer properties shared by every file charter writes: fixed, so output is reproducible.
pub(crate) fn writer_properties(kv: Option<Vec<KeyValue>>) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_key_value_metadata(kv)
        .build()
}

/// Writes one table to a Parquet file with its provenance and content hash.
///
/// Rows go to a temporary file beside the output; [`TableWriter::finish`]
/// syncs it and renames it into place, so the output path holds either the
/// previous file or the complete new one, never a partial one. Dropping the
/// writer without finishing removes the temporary file.
pub struct TableWriter {
    output: Output,
    tmp: tempfile::NamedTempFile,
    writer: Option<ArrowWriter<File>>,
    hasher: ContentHasher,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    build_key: String,
    schema: SchemaRef,
    // Held until the file is in place; `None` for standard output.
    _claim: Option<OutputLock>,
}

impl TableWriter {
    /// A writer for a core table with its standard schema.
    pub fn create(
        output: &Output,
        spec: &'static TableSpec,
        provenance: &Provenance,
    ) -> Result<Self> {
        Self::with_schema(output, spec, spec.arrow_schema(), provenance)
    }

    /// A writer for `spec`'s table with an explicit Arrow schema: the table's
    /// columns, possibly followed by extra ones (as when rewriting a table a
    /// notebook has added columns to).
    pub fn with_schema(
        output: &Output,
        spec: &'static TableSpec,
        schema: SchemaRef,
        provenance: &Provenance,
    ) -> Result<Self> {
        let columns = schema
            .fields()
            .iter()
            .map(|f| {
                ColumnType::of_arrow(f.data_type())
                    .map(|t| (f.name().as_str(), t))
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "column `{}` has type {}, which charter tables cannot hold",
                            f.name(),
                            f.data_type()
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let hasher = ContentHasher::new(spec.name, columns);

        let claim = output.claim(&[])?;
        let tmp = match output {
            Output::Path(path) => output_tempfile(path).map_err(|e| Error::io(path, e))?,
            // Only copied to stdout, so it may stay private.
            Output::Stdout => {
                tempfile::NamedTempFile::new().map_err(|e| Error::io(std::env::temp_dir(), e))?
            }
        };
        let file = tmp.reopen().map_err(|e| Error::io(tmp.path(), e))?;

        let kv = provenance
            .metadata(spec)
            .into_iter()
            .map(|(k, v)| KeyValue::new(k, v))
            .collect::<Vec<_>>();
        let build_key = provenance.build_key(spec);
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(writer_properties(Some(kv))))
            .map_err(|e| Error::Parquet {
                path: PathBuf::from(output.display()),
                source: e,
            })?;
        Ok(TableWriter {
            output: output.clone(),
            tmp,
            writer: Some(writer),
            hasher,
            pending: Vec::new(),
            pending_rows: 0,
            build_key,
            schema,
            _claim: claim,
        })
    }

    /// Appends typed rows.
    pub fn write_rows<R: Record>(&mut self, rows: &[R]) -> Result<()> {
        self.write(&R::to_batch(rows)?)
    }

    /// Appends a record batch with the writer's schema.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.schema().fields() != self.schema.fields() {
            return Err(Error::Invalid(format!(
                "{}: batch schema {:?} differs from the table's {:?}",
                self.output.display(),
                batch
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| (f.name(), f.data_type()))
                    .collect::<Vec<_>>(),
                self.schema
                    .fields()
                    .iter()
                    .map(|f| (f.name(), f.data_type()))
                    .collect::<Vec<_>>()
            )));
        }
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.hasher.update(batch)?;
        self.pending_rows += batch.num_rows();
        self.pending.push(batch.clone());
        if self.pending_rows >= ROW_GROUP_ROWS {
            self.drain(false)?;
        }
        Ok(())
    }

    /// Writes pending rows as whole row groups of [`ROW_GROUP_ROWS`]; with
    /// `all`, also the final, shorter one.
    fn drain(&mut self, all: bool) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let merged = arrow_select::concat::concat_batches(&self.schema, &self.pending)
            .map_err(|e| Error::arrow("merging batches", e))?;
        self.pending.clear();
        let mut offset = 0;
        while merged.num_rows() - offset >= ROW_GROUP_ROWS || (all && offset < merged.num_rows()) {
            let len = ROW_GROUP_ROWS.min(merged.num_rows() - offset);
            self.write_group(&merged.slice(offset, len))?;
            offset += len;
        }
        self.pending_rows = merged.num_rows() - offset;
        if self.pending_rows > 0 {
            self.pending.push(merged.slice(offset, self.pending_rows));
        }
        Ok(())
    }

    fn write_group(&mut self, batch: &RecordBatch) -> Result<()> {
        let path = PathBuf::from(self.output.display());
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| Error::Invalid("writer already closed".into()))?;
        writer.write(batch).map_err(|e| Error::Parquet {
            path: path.clone(),
            source: e,
        })?;
        writer
            .flush()
            .map_err(|e| Error::Parquet { path, source: e })
    }

    /// Rows accepted so far.
    pub fn rows(&self) -> u64 {
        self.hasher.rows()
    }

    /// Writes the footer with the content hash and moves the file into place.
    pub fn finish(mut self) -> Result<TableSummary> {
        self.drain(true)?;
        let TableWriter {
            output,
            tmp,
            writer,
            hasher,
            build_key,
            _claim: claim,
            ..
        } = self;
        let path = PathBuf::from(output.display());
        let rows = hasher.rows();
        let content_hash = hasher.finish();
        let mut writer = writer.ok_or_else(|| Error::Invalid("writer already closed".into()))?;
        writer.append_key_value_metadata(KeyValue::new(
            KEY_CONTENT_HASH.to_string(),
            content_hash.clone(),
        ));
        writer.append_key_value_metadata(KeyValue::new(KEY_ROWS.to_string(), rows.to_string()));
        let file = writer.into_inner().map_err(|e| Error::Parquet {
            path: path.clone(),
            source: e,
        })?;
        file.sync_all().map_err(|e| Error::io(tmp.path(), e))?;
        drop(file);

        match &output {
            Output::Path(out) => {
                tmp.persist(out).map_err(|e| Error::io(out, e.error))?;
                sync_parent(out);
            }
            Output::Stdout => {
                let mut src = File::open(tmp.path()).map_err(|e| Error::io(tmp.path(), e))?;
                let mut stdout = std::io::stdout().lock();
                std::io::copy(&mut src, &mut stdout).map_err(|e| Error::io("<stdout>", e))?;
                stdout.flush().map_err(|e| Error::io("<stdout>", e))?;
            }
        }
        drop(claim);
        Ok(TableSummary {
            rows,
            content_hash,
            build_key,
        })
    }
}

/// The directory a path lives in (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `out` with `suffix` appended to its file name: the names charter keeps
/// beside an output (`<out>.partial`, `<out>.lock`).
pub(crate) fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    out.with_file_name(name)
}

/// Makes a rename of or in `path`'s directory durable; best effort.
pub fn sync_parent(path: &Path) {
    sync_dir(parent_dir(path));
}

/// Makes a rename durable. Best effort: not every filesystem allows syncing a directory.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
