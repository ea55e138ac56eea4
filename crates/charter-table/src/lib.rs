//! charter's tables: typed Parquet IO with content hashes and provenance.
//!
//! Every table charter writes is one Parquet file that polars, pandas,
//! pyarrow and DuckDB open as they are. This crate defines those tables and
//! everything that makes them a reproducible data system:
//!
//! - [`tables`]: the core tables (`prompts` … `labels`) as typed rows;
//! - row ids and table content hashes over a canonical encoding ([`hash`]);
//! - provenance metadata and build keys ([`Provenance`]);
//! - an atomic writer ([`TableWriter`]) and a resumable, journaled one ([`ShardedWriter`]);
//! - a reader that checks table name, schema version and columns ([`TableFile`]);
//! - prompt import from JSONL, CSV, Parquet and text ([`import`]);
//! - exact and MinHash near-duplicate dedup ([`dedup`](mod@dedup));
//! - tables split by prompt into shards and merged back ([`shard`](mod@shard)).
//!
//! It has no ML dependencies.
//!
//! # Example
//!
//! ```
//! use charter_table::{Output, Prompt, Provenance, Record, TableFile, TableWriter, PROMPTS};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("prompts.parquet");
//! let provenance = Provenance {
//!     stage: "example".into(),
//!     stage_version: 1,
//!     settings: serde_json::json!({}),
//!     inputs: vec![],
//!     model_hash: None,
//!     constitution_hash: None,
//! };
//! let row = Prompt {
//!     id: String::new(),
//!     text: "How do I pick a lock?".into(),
//!     source: "example".into(),
//!     source_row: 1,
//!     tags: vec![],
//! }
//! .with_id();
//! let mut writer = TableWriter::create(&Output::Path(path.clone()), &PROMPTS, &provenance)?;
//! writer.write_rows(&[row.clone()])?;
//! let summary = writer.finish()?;
//!
//! let table = TableFile::open(&path)?;
//! assert_eq!(table.content_hash(), Some(summary.content_hash.as_str()));
//! assert_eq!(table.rows::<Prompt>()?, vec![row]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod dedup;
mod error;
pub mod hash;
pub mod import;
mod lock;
mod provenance;
mod read;
mod record;
mod resume;
mod schema;
pub mod shard;
pub mod tables;
mod value;
mod write;

pub use error::{Error, Result};
pub use hash::{ContentHasher, row_id};
pub use lock::{
    LOCK_MARKER, LockFile, OutputLock, claim_output, lock_file, lock_is_held, lock_path,
};
pub use provenance::{
    InputRef, KEY_BUILD_KEY, KEY_CONSTITUTION_HASH, KEY_CONTENT_HASH, KEY_CREATED_BY, KEY_INPUTS,
    KEY_MODEL_HASH, KEY_ROWS, KEY_SCHEMA_VERSION, KEY_SETTINGS, KEY_STAGE, KEY_STAGE_VERSION,
    KEY_TABLE, Provenance, canonical_json,
};
pub use read::{Batches, TableFile, column_cells, read_input};
pub use record::Record;
pub use resume::{Interrupted, Opened, ResumeState, ShardedWriter, finished_table, partial_dir};
pub use schema::{ColumnSpec, ColumnType, Role, TableSpec};
pub use shard::{ParentKey, Shard, merge_shards, prompt_column, slice_provenance, slice_table};
pub use tables::{
    ALL_TABLES, CRITIQUES, Critique, LABELS, Label, PAIRS, PROMPTS, Pair, Prompt, QUERIES, Query,
    RATINGS, RESPONSES, REVISIONS, ROLLOUTS, Rating, Response, Revision, Rollout, TARGETS, Target,
    table_spec,
};
pub use value::{ColumnValue, Value};
pub use write::{
    Output, ROW_GROUP_ROWS, TableSummary, TableWriter, output_tempfile, sync_parent, write_atomic,
};

/// Re-exported for callers that build or inspect record batches.
pub use arrow_array::RecordBatch;
