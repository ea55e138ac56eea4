//! Tables split by prompt and merged back.
//!
//! A build spread over N machines gives each the rows of the prompts whose
//! shard is its own: shard = blake3(prompt id) mod N. Every row of every
//! table after `prompts` carries the id of the prompt at its root
//! (`prompt_id`), so a prompt's samples, critique chains, pairs and labels
//! all land in one shard, and since row seeds derive from the prompt id,
//! what a shard makes does not depend on N.
//!
//! In Python: `int.from_bytes(blake3.blake3(prompt_id.encode()).digest()[:8], "little") % n`.
//!
//! - [`slice_table`] keeps a table's rows of one shard (after an optional
//!   leading `limit`), in order.
//! - [`merge_shards`] puts the shards' outputs of a stage back in the order
//!   an unsharded run writes: each output row sits at the position of its
//!   parent row in the stage's (merged) input, and rows of one parent keep
//!   their order. Through [`TableWriter`] the result is byte-identical to
//!   the unsharded table.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

use arrow_array::{Array, BooleanArray, RecordBatch, StringArray};
use arrow_select::filter::filter_record_batch;

use crate::error::{Error, Result};
use crate::provenance::{InputRef, Provenance};
use crate::read::{Batches, TableFile};
use crate::schema::TableSpec;
use crate::write::{Output, TableSummary, TableWriter};

/// One shard of N: the rows whose prompt hashes to `index` mod `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shard {
    /// 0-based index, below `count`.
    pub index: u32,
    /// How many shards the rows are split into.
    pub count: u32,
}

impl Shard {
    /// A shard; `index` must be below `count`.
    pub fn new(index: u32, count: u32) -> Result<Self> {
        if count == 0 || index >= count {
            return Err(Error::Invalid(format!(
                "shard {index}/{count}: the index must be from 0 to the count minus one"
            )));
        }
        Ok(Shard { index, count })
    }

    /// Parses `I/N`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            Error::Invalid(format!(
                "shard `{s}`: expected INDEX/COUNT with 0 ≤ INDEX < COUNT, e.g. 0/4"
            ))
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index = i.trim().parse().map_err(|_| bad())?;
        let count = n.trim().parse().map_err(|_| bad())?;
        Shard::new(index, count).map_err(|_| bad())
    }

    /// The shard of the prompt with this id among `count`.
    pub fn of(prompt_id: &str, count: u32) -> u32 {
        let hash = blake3::hash(prompt_id.as_bytes());
        let mut low = [0u8; 8];
        low.copy_from_slice(&hash.as_bytes()[..8]);
        (u64::from_le_bytes(low) % u64::from(count.max(1))) as u32
    }

    /// Whether the prompt with this id is in this shard.
    pub fn holds(&self, prompt_id: &str) -> bool {
        Shard::of(prompt_id, self.count) == self.index
    }

    /// `I-of-N`, the name of the shard's directory.
    pub fn dir_name(&self) -> String {
        format!("{}-of-{}", self.index, self.count)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The column holding the id of the prompt at a row's root: `id` in a
/// prompts table, `prompt_id` in every other.
pub fn prompt_column(table: &TableFile) -> Result<&'static str> {
    let name = if table.table_name() == Some("prompts") {
        "id"
    } else {
        "prompt_id"
    };
    match table.schema().field_with_name(name) {
        Ok(f) if f.data_type() == &arrow_schema::DataType::Utf8 => Ok(name),
        _ => Err(Error::Column {
            path: table.path().to_path_buf(),
            column: name.to_string(),
            problem: "a table is split into shards by the prompt id in this string column, \
                      which it lacks"
                .into(),
        }),
    }
}

fn strings<'a>(batch: &'a RecordBatch, column: &str, path: &Path) -> Result<&'a StringArray> {
    batch
        .column_by_name(column)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| Error::Column {
            path: path.to_path_buf(),
            column: column.to_string(),
            problem: "missing, or not a string column".into(),
        })
}

/// Version of the slice stage.
pub const SLICE_VERSION: u32 = 1;

/// The provenance of the slice of `input` that [`slice_table`] writes.
pub fn slice_provenance(
    input: &TableFile,
    shard: Shard,
    limit: Option<usize>,
) -> Result<Provenance> {
    Ok(Provenance {
        stage: "slice".into(),
        stage_version: SLICE_VERSION,
        settings: serde_json::json!({
            "shard": shard.index,
            "shards": shard.count,
            "limit": limit,
        }),
        inputs: vec![InputRef {
            name: input.table_name().unwrap_or("input").to_string(),
            content_hash: input.content_hash_or_compute()?,
        }],
        model_hash: None,
        constitution_hash: None,
    })
}

/// Writes the rows of `input` that belong to `shard` — among its first
/// `limit` rows, when given — to `out`, in order, with `provenance`.
pub fn slice_table(
    input: &TableFile,
    shard: Shard,
    limit: Option<usize>,
    provenance: &Provenance,
    out: &Path,
) -> Result<TableSummary> {
    let spec = input.core_spec()?;
    let column = prompt_column(input)?;
    let mut writer = TableWriter::with_schema(
        &Output::Path(out.to_path_buf()),
        spec,
        input.schema().clone(),
        provenance,
    )?;
    let mut left = limit.unwrap_or(usize::MAX);
    for batch in input.batches()? {
        if left == 0 {
            break;
        }
        let batch = batch?;
        let batch = batch.slice(0, batch.num_rows().min(left));
        left -= batch.num_rows();
        let ids = strings(&batch, column, input.path())?;
        let keep: BooleanArray = (0..ids.len())
            .map(|i| Some(ids.is_valid(i) && shard.holds(ids.value(i))))
            .collect();
        let kept = filter_record_batch(&batch, &keep)
            .map_err(|e| Error::arrow("selecting a shard's rows", e))?;
        writer.write(&kept)?;
    }
    writer.finish()
}

/// How [`merge_shards`] finds a row's place: the column of the output
/// naming its parent, and the column of the input that names rows.
#[derive(Debug, Clone, Copy)]
pub struct ParentKey<'a> {
    /// The output column holding the parent's id (`prompt_id`, `parent_id`, …).
    pub child: &'a str,
    /// The input column the parent's id is found in (`id`).
    pub parent: &'a str,
}

/// A shard's output table, read batch by batch in order.
struct Cursor<'a> {
    table: &'a TableFile,
    batches: Batches,
    batch: Option<RecordBatch>,
    /// Parent position of each row of `batch`.
    positions: Vec<u64>,
    row: usize,
    last: u64,
    /// Where `batch` sits in the pending chunk's batches, once referenced.
    slot: Option<usize>,
}

impl Cursor<'_> {
    /// The parent position of the current row, reading the next batch when
    /// this one is done; `None` at the end.
    fn peek(&mut self, parents: &HashMap<String, u64>, key: ParentKey<'_>) -> Result<Option<u64>> {
        while self.batch.as_ref().is_none_or(|b| self.row >= b.num_rows()) {
            let Some(batch) = self.batches.next() else {
                self.batch = None;
                return Ok(None);
            };
            let batch = batch?;
            let ids = strings(&batch, key.child, self.table.path())?;
            self.positions = (0..ids.len())
                .map(|i| {
                    parents.get(ids.value(i)).copied().ok_or_else(|| {
                        Error::Invalid(format!(
                            "{}: row's `{}` {} is not a row of the merged input: the shard was \
                             built from other inputs",
                            self.table.path().display(),
                            key.child,
                            ids.value(i)
                        ))
                    })
                })
                .collect::<Result<_>>()?;
            self.batch = Some(batch);
            self.row = 0;
            self.slot = None;
        }
        let position = self.positions[self.row];
        if position < self.last {
            return Err(Error::Invalid(format!(
                "{}: rows are not in the order of the input they were made from",
                self.table.path().display()
            )));
        }
        Ok(Some(position))
    }
}

/// Rows gathered before a merge writes them.
const MERGE_CHUNK: usize = 8192;

/// Merges the shards' tables of one stage into `out` with `provenance`
/// (the provenance an unsharded run of the stage records): rows ordered by
/// the position of their parent (`key.child` → `input`'s `key.parent`), a
/// parent's rows in the order its shard wrote them. Reads the shards
/// batch by batch, so memory holds a chunk of rows, not the table.
pub fn merge_shards(
    input: &TableFile,
    key: ParentKey<'_>,
    shards: &[TableFile],
    spec: &'static TableSpec,
    provenance: &Provenance,
    out: &Path,
) -> Result<TableSummary> {
    let mut parents: HashMap<String, u64> = HashMap::with_capacity(input.num_rows() as usize);
    let mut position = 0u64;
    for batch in input.batches()? {
        let batch = batch?;
        let ids = strings(&batch, key.parent, input.path())?;
        for i in 0..ids.len() {
            parents.entry(ids.value(i).to_string()).or_insert(position);
            position += 1;
        }
    }
    for s in shards {
        s.expect(spec)?;
    }
    let mut writer = TableWriter::create(&Output::Path(out.to_path_buf()), spec, provenance)?;
    let mut cursors = shards
        .iter()
        .map(|table| {
            Ok(Cursor {
                table,
                batches: table.batches()?,
                batch: None,
                positions: Vec::new(),
                row: 0,
                last: 0,
                slot: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // The next row of every shard, smallest parent position (then shard) first.
    let mut heap = BinaryHeap::new();
    for (i, c) in cursors.iter_mut().enumerate() {
        if let Some(p) = c.peek(&parents, key)? {
            heap.push(Reverse((p, i)));
        }
    }
    let mut chunk: Vec<RecordBatch> = Vec::new();
    let mut picks: Vec<(usize, usize)> = Vec::with_capacity(MERGE_CHUNK);
    let flush = |chunk: &mut Vec<RecordBatch>,
                 picks: &mut Vec<(usize, usize)>,
                 cursors: &mut [Cursor<'_>],
                 writer: &mut TableWriter|
     -> Result<()> {
        if picks.is_empty() {
            return Ok(());
        }
        let refs: Vec<&RecordBatch> = chunk.iter().collect();
        let rows = arrow_select::interleave::interleave_record_batch(&refs, picks)
            .map_err(|e| Error::arrow("merging shards", e))?;
        writer.write(&rows)?;
        chunk.clear();
        picks.clear();
        for c in cursors.iter_mut() {
            c.slot = None;
        }
        Ok(())
    };
    while let Some(Reverse((position, i))) = heap.pop() {
        let c = &mut cursors[i];
        let batch = c
            .batch
            .as_ref()
            .ok_or_else(|| Error::Invalid("internal: merge cursor without rows".into()))?;
        let slot = match c.slot {
            Some(s) => s,
            None => {
                chunk.push(batch.clone());
                c.slot = Some(chunk.len() - 1);
                chunk.len() - 1
            }
        };
        picks.push((slot, c.row));
        c.last = position;
        c.row += 1;
        if let Some(p) = c.peek(&parents, key)? {
            heap.push(Reverse((p, i)));
        }
        if picks.len() >= MERGE_CHUNK {
            flush(&mut chunk, &mut picks, &mut cursors, &mut writer)?;
        }
    }
    flush(&mut chunk, &mut picks, &mut cursors, &mut writer)?;
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_s_shard_is_stable_and_spread_evenly() {
        // Pinned (computed with Python's `blake3`: the first 8 bytes of the
        // digest, little-endian, mod N): changing the assignment would
        // orphan every shard on disk.
        for (id, of4, of7) in [("abc", 0, 1), ("prompt-0", 3, 3), ("prompt-1", 0, 4)] {
            assert_eq!((Shard::of(id, 4), Shard::of(id, 7)), (of4, of7), "{id}");
        }
        let ids: Vec<String> = (0..4000).map(|i| format!("prompt-{i}")).collect();
        for n in [1u32, 3, 4, 16] {
            let mut counts = vec![0usize; n as usize];
            for id in &ids {
                counts[Shard::of(id, n) as usize] += 1;
            }
            let expected = ids.len() / n as usize;
            for c in counts {
                assert!(c.abs_diff(expected) < expected / 5 + 10, "n={n}: {c}");
            }
        }
    }

    #[test]
    fn shards_parse_and_reject_what_is_not_one() {
        assert_eq!(Shard::parse("2/4").unwrap(), Shard { index: 2, count: 4 });
        assert_eq!(Shard::parse("0/1").unwrap().dir_name(), "0-of-1");
        for bad in ["4/4", "1/0", "x/2", "3", "-1/2", ""] {
            let e = Shard::parse(bad).unwrap_err().to_string();
            assert!(e.contains("INDEX/COUNT"), "{bad}: {e}");
        }
    }
}
