//! A resumable writer: rows are committed in shards recorded in a journal, so
//! a killed run picks up after its last committed shard.
//!
//! While a table is being built, `<out>.partial/` holds
//!
//! - `journal.jsonl`: a header line naming the table, schema version and
//!   build key, then one line per committed shard with its row count and the
//!   blake3 of its bytes;
//! - `shard-NNNNNN.parquet`: the committed shards.
//!
//! A shard is written to a temporary name, synced and renamed before its
//! journal line is appended and synced, so the journal only ever names
//! complete shards. On reopening, a torn last journal line, a shard whose
//! bytes do not match its journal line (and every shard after it), and files
//! the journal does not name are discarded. [`ShardedWriter::finish`] merges
//! the shards into the output with [`TableWriter`], renames it into place and
//! removes the directory. Nothing ever appears at the output path until the
//! table is complete.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lock::{OutputLock, claim_output};
use crate::provenance::Provenance;
use crate::read::TableFile;
use crate::schema::TableSpec;
use crate::write::{Output, TableSummary, TableWriter, sync_dir, writer_properties};

const JOURNAL: &str = "journal.jsonl";
const JOURNAL_FORMAT: u32 = 1;

#[derive(Serialize, Deserialize, PartialEq)]
struct Header {
    charter_journal: u32,
    table: String,
    schema_version: u32,
    build_key: String,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    shard: u32,
    file: String,
    rows: u64,
    blake3: String,
}

/// The state found when opening a resumable output.
pub enum Opened {
    /// The output already exists with this build key: nothing to do.
    Finished(TableSummary),
    /// A writer, resuming after any shards a previous run committed.
    Writer(ShardedWriter, ResumeState),
}

/// What a previous, interrupted run left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumeState {
    /// Rows already committed, in commit order.
    pub rows: u64,
    /// Shards already committed.
    pub shards: u32,
    /// A partial build with a different build key was found and discarded.
    pub discarded_stale: bool,
    /// Files the journal did not vouch for (torn writes) were discarded.
    pub discarded_files: u32,
}

/// Writes a table in committed shards; see the module docs.
pub struct ShardedWriter {
    out: PathBuf,
    dir: PathBuf,
    spec: &'static TableSpec,
    build_key: String,
    journal: File,
    entries: Vec<Entry>,
    lock: OutputLock,
}

impl ShardedWriter {
    /// Opens the output `out` of a build with `build_key` (see [`Provenance::build_key`]),
    /// claiming it for this process (see [`claim_output`]: `inputs` are the
    /// files the build reads, which `out` must not be).
    pub fn open(
        out: &Path,
        spec: &'static TableSpec,
        build_key: &str,
        inputs: &[&Path],
    ) -> Result<Opened> {
        let lock = claim_output(out, inputs)?;
        if let Some(summary) = finished_table(out, spec, build_key) {
            let dir = partial_dir(out);
            if dir.exists() {
                fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            }
            return Ok(Opened::Finished(summary));
        }

        let dir = partial_dir(out);
        let header = Header {
            charter_journal: JOURNAL_FORMAT,
            table: spec.name.to_string(),
            schema_version: spec.version,
            build_key: build_key.to_string(),
        };
        let mut state = ResumeState::default();
        let mut entries = Vec::new();
        if dir.exists() {
            match load_journal(&dir, &header)? {
                Some((kept, discarded)) => {
                    entries = kept;
                    state.discarded_files = discarded;
                }
                None => {
                    state.discarded_stale = true;
                    fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
                }
            }
        }
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let journal_path = dir.join(JOURNAL);
        // Rewrite the journal with only the entries kept, then append to it.
        let mut text = serde_json::to_string(&header).unwrap_or_default() + "\n";
        for e in &entries {
            text += &(serde_json::to_string(e).unwrap_or_default() + "\n");
        }
        write_synced(&journal_path, text.as_bytes())?;
        sync_dir(&dir);
        let journal = OpenOptions::new()
            .append(true)
            .open(&journal_path)
            .map_err(|e| Error::io(&journal_path, e))?;
        state.rows = entries.iter().map(|e| e.rows).sum();
        state.shards = entries.len() as u32;
        Ok(Opened::Writer(
            ShardedWriter {
                out: out.to_path_buf(),
                dir,
                spec,
                build_key: build_key.to_string(),
                journal,
                entries,
                lock,
            },
            state,
        ))
    }

    /// Rows committed so far (including those of earlier runs).
    pub fn committed_rows(&self) -> u64 {
        self.entries.iter().map(|e| e.rows).sum()
    }

    /// The committed rows, shard by shard, in commit order.
    pub fn committed_batches(&self) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for e in &self.entries {
            let table = TableFile::open(&self.dir.join(&e.file))?;
            for b in table.batches()? {
                out.push(b?);
            }
        }
        Ok(out)
    }

    /// Durably commits `batch` (the table's schema) as the next shard.
    pub fn commit(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if batch.schema().fields() != self.spec.arrow_schema().fields() {
            return Err(Error::Invalid(format!(
                "{}: shard does not have the `{}` schema",
                self.out.display(),
                self.spec.name
            )));
        }
        let shard = self.entries.len() as u32;
        let name = format!("shard-{shard:06}.parquet");
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let parquet_err = |e| Error::Parquet {
            path: tmp.clone(),
            source: e,
        };
        let mut w = ArrowWriter::try_new(file, batch.schema(), Some(writer_properties(None)))
            .map_err(parquet_err)?;
        w.write(batch).map_err(parquet_err)?;
        let file = w.into_inner().map_err(parquet_err)?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(file);
        let hash = hash_file(&tmp)?;
        fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        sync_dir(&self.dir);
        let entry = Entry {
            shard,
            file: name,
            rows: batch.num_rows() as u64,
            blake3: hash,
        };
        let line = serde_json::to_string(&entry).unwrap_or_default() + "\n";
        let journal_path = self.dir.join(JOURNAL);
        self.journal
            .write_all(line.as_bytes())
            .map_err(|e| Error::io(&journal_path, e))?;
        self.journal
            .sync_data()
            .map_err(|e| Error::io(&journal_path, e))?;
        self.entries.push(entry);
        Ok(())
    }

    /// Merges the shards into the output, with provenance, and removes the partial directory.
    pub fn finish(self, provenance: &Provenance) -> Result<TableSummary> {
        if provenance.build_key(self.spec) != self.build_key {
            return Err(Error::Invalid(format!(
                "{}: provenance does not match the build key the writer was opened with",
                self.out.display()
            )));
        }
        // Still claimed: the writer's own claim of the same output joins this one.
        let _claim = &self.lock;
        let mut writer =
            TableWriter::create(&Output::Path(self.out.clone()), self.spec, provenance)?;
        for e in &self.entries {
            let table = TableFile::open(&self.dir.join(&e.file))?;
            for b in table.batches()? {
                writer.write(&b?)?;
            }
        }
        let summary = writer.finish()?;
        fs::remove_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        Ok(summary)
    }
}

/// What an interrupted build of an output left, read without changing it
/// (see [`ShardedWriter::peek`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interrupted {
    /// The build key the journal was opened with.
    pub build_key: String,
    /// Rows in the shards the journal names, up to a torn line.
    pub rows: u64,
    /// Those shards.
    pub shards: u32,
}

impl ShardedWriter {
    /// The journal an interrupted build of `out` left in `<out>.partial/`,
    /// read only: for saying what a run would resume (`--dry-run`). Shards'
    /// hashes are not checked here; [`ShardedWriter::open`] checks them
    /// before resuming. `None` when there is no readable journal.
    pub fn peek(out: &Path) -> Option<Interrupted> {
        let file = File::open(partial_dir(out).join(JOURNAL)).ok()?;
        let mut lines = BufReader::new(file).split(b'\n');
        let header: Header = serde_json::from_slice(&lines.next()?.ok()?).ok()?;
        let entries: Vec<Entry> = lines
            .map_while(|l| serde_json::from_slice::<Entry>(&l.ok()?).ok())
            .collect();
        Some(Interrupted {
            build_key: header.build_key,
            rows: entries.iter().map(|e| e.rows).sum(),
            shards: entries.len() as u32,
        })
    }
}

/// The summary of `out` if it is a finished `spec` table of this build.
/// The summary of the table at `out` when it is a finished `spec` table
/// recording `build_key`: a build that would make it again has nothing to do.
pub fn finished_table(out: &Path, spec: &TableSpec, build_key: &str) -> Option<TableSummary> {
    let table = TableFile::open(out).ok()?;
    if table.build_key() != Some(build_key) || table.table_name() != Some(spec.name) {
        return None;
    }
    Some(TableSummary {
        rows: table.num_rows(),
        content_hash: table.content_hash()?.to_string(),
        build_key: build_key.to_string(),
    })
}

/// The directory holding an output's shards while it is built.
pub fn partial_dir(out: &Path) -> PathBuf {
    crate::write::sibling(out, ".partial")
}

/// Loads a journal. `None` if it belongs to another build (or is unreadable);
/// otherwise the entries whose shards check out, and how many files were discarded.
fn load_journal(dir: &Path, header: &Header) -> Result<Option<(Vec<Entry>, u32)>> {
    let path = dir.join(JOURNAL);
    let Ok(file) = File::open(&path) else {
        return Ok(None);
    };
    let mut lines = BufReader::new(file).split(b'\n');
    let found: Option<Header> = lines
        .next()
        .and_then(|l| l.ok())
        .and_then(|l| serde_json::from_slice(&l).ok());
    if found.as_ref() != Some(header) {
        return Ok(None);
    }
    let mut entries = Vec::new();
    for line in lines {
        let Ok(line) = line else { break };
        // A torn final line (the process died mid-append) does not parse: stop there.
        let Ok(entry) = serde_json::from_slice::<Entry>(&line) else {
            break;
        };
        let shard_path = dir.join(&entry.file);
        let ok = entry.shard == entries.len() as u32
            && shard_path.is_file()
            && hash_file(&shard_path).is_ok_and(|h| h == entry.blake3);
        if !ok {
            break;
        }
        entries.push(entry);
    }
    // Anything the kept entries do not name is debris from the interrupted run.
    let mut discarded = 0;
    let read = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut names: Vec<PathBuf> = read.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    for p in names {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name != JOURNAL && !entries.iter().any(|e| e.file == name) {
            fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            discarded += 1;
        }
    }
    Ok(Some((entries, discarded)))
}

fn hash_file(path: &Path) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(File::open(path).map_err(|e| Error::io(path, e))?)
        .map_err(|e| Error::io(path, e))?;
    Ok(hasher.finalize().to_hex().to_string())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
