//! The crate's error type.

use std::path::PathBuf;

/// Errors from reading, writing, hashing and deduplicating tables.
///
/// Every variant names what a user needs to find the problem: the file, the
/// table, the column or the row.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a file.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// The file is not a readable Parquet file (truncated, corrupt, or some other format).
    #[error("{path}: not a readable Parquet file: {source}")]
    NotParquet {
        /// The file that failed to parse.
        path: PathBuf,
        /// What the Parquet reader reported.
        source: parquet::errors::ParquetError,
    },

    /// Parquet failed while reading or writing data.
    #[error("{path}: Parquet error: {source}")]
    Parquet {
        /// The file being read or written.
        path: PathBuf,
        /// What the Parquet library reported.
        source: parquet::errors::ParquetError,
    },

    /// An Arrow operation failed (building or slicing record batches).
    #[error("{context}: {source}")]
    Arrow {
        /// What was being done.
        context: String,
        /// What Arrow reported.
        source: arrow_schema::ArrowError,
    },

    /// The file holds a different table than the caller expected.
    #[error("{path}: expected a `{expected}` table, found {found}")]
    WrongTable {
        /// The file that was opened.
        path: PathBuf,
        /// The table the caller asked for.
        expected: String,
        /// What the file's metadata says it holds.
        found: String,
    },

    /// The table's schema version is not the one this build of charter reads.
    #[error(
        "{path}: `{table}` table has schema version {found}, this charter reads version {expected}"
    )]
    SchemaVersion {
        /// The file that was opened.
        path: PathBuf,
        /// The table name.
        table: String,
        /// The version this build supports.
        expected: u32,
        /// The version recorded in the file.
        found: String,
    },

    /// The columns of the file do not match the table's schema.
    #[error("{path}: columns do not match the `{table}` schema:\n{}", .mismatches.join("\n"))]
    Columns {
        /// The file that was opened.
        path: PathBuf,
        /// The table name.
        table: String,
        /// One line per mismatch: the column, what was expected and what was found.
        mismatches: Vec<String>,
    },

    /// A column the caller asked for is missing or has the wrong type.
    #[error("{path}: column `{column}`: {problem}")]
    Column {
        /// The file that was opened.
        path: PathBuf,
        /// The column name.
        column: String,
        /// What is wrong with it.
        problem: String,
    },

    /// A value in a row is invalid for its column.
    #[error("{path}: row {row}, column `{column}`: {problem}")]
    Value {
        /// The file that was read.
        path: PathBuf,
        /// Zero-based row index in the table.
        row: u64,
        /// The column name.
        column: String,
        /// What is wrong with the value.
        problem: String,
    },

    /// A table file's metadata is missing or malformed.
    #[error("{path}: metadata `{key}`: {problem}")]
    Metadata {
        /// The file that was read.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// What is wrong with it.
        problem: String,
    },

    /// A resumable writer's journal is inconsistent with the files beside it.
    #[error("{path}: {problem}")]
    Journal {
        /// The journal file or shard.
        path: PathBuf,
        /// What is inconsistent.
        problem: String,
    },

    /// A problem in an input file at a line (JSONL, CSV, text) or row (Parquet).
    #[error("{path}:{line}: {problem}")]
    Input {
        /// The input file (`<stdin>` for standard input).
        path: PathBuf,
        /// 1-based line or row.
        line: u64,
        /// What is wrong.
        problem: String,
    },

    /// Another process is writing the same output.
    #[error(
        "{output}: being written by {owner}; refusing to write it too (lock file {lock}: if that \
         process is gone, remove the file)"
    )]
    Locked {
        /// The output both want to write.
        output: PathBuf,
        /// The lock file that claims it.
        lock: PathBuf,
        /// Who holds the claim.
        owner: String,
    },

    /// The output path is one of the inputs (or the same file under another name).
    #[error("{output}: is the input {input}; writing it would destroy the input")]
    OutputIsInput {
        /// The input.
        input: PathBuf,
        /// The output that resolves to it.
        output: PathBuf,
    },

    /// The output path is an existing directory, where a table file should go.
    #[error("{path}: is a directory; a table is written to a file path")]
    OutputIsDirectory {
        /// The directory.
        path: PathBuf,
    },

    /// An invalid option value.
    #[error("{0}")]
    Invalid(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn arrow(context: impl Into<String>, source: arrow_schema::ArrowError) -> Self {
        Error::Arrow {
            context: context.into(),
            source,
        }
    }
}
