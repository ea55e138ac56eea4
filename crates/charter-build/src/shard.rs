//! A build spread over machines: each shard runs the row-parallel stages
//! on its prompts' rows, a merge puts the tables back together exactly as
//! one machine writes them, then the global stages run once.
//!
//! Stages fall in three places ([`Placement`]):
//!
//! - **ahead**: `table`, `import` and `dedup` stages that only read other
//!   such stages. Every shard builds its own copy under its directory
//!   (they are cheap and deterministic), so shards never write the same file;
//! - **sharded**: `respond`, `critique`, `revise`, `pair` and `label`
//!   stages whose inputs are ahead or sharded and whose model is not one the
//!   build trains. In a shard's plan ([`BuildPlan::for_shard`]) each reads
//!   its shard's rows — a `slice` stage cuts them from an ahead table — and
//!   writes under `<out>/shards/<I>-of-<N>/` with its own build key and
//!   journal: a finished shard is its own completion marker;
//! - **global**: everything else (`train`, `eval`, `export`, `score`, and
//!   anything downstream of them), run once after the merge.
//!
//! The merged plan ([`BuildPlan::merged`]) is the build itself with each
//! sharded stage's run replaced by a merge of its shards' tables, which
//! records the provenance — and so the build key and the bytes — of an
//! unsharded run. `pair` stages run again instead (they read no model and
//! take a moment). A shard that is missing, or was built from other inputs
//! or settings than the build file now gives, stops the merge with its name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use charter_table::{ParentKey, Shard, ShardedWriter, TableFile, merge_shards};

use crate::error::{Error, Result};
use crate::file::{BuildPlan, PlannedStage, StageKind, StageOp};
use crate::plan::{Verdict, expected_provenance};
use crate::run::{StageOutcome, table_written, unless_finished};

/// Where a stage runs in a sharded build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On every shard, before the sharded stages.
    Ahead,
    /// On each shard, for its prompts' rows.
    Sharded,
    /// Once, after the merge.
    Global,
}

impl Placement {
    /// The word shown in a plan.
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Ahead => "ahead",
            Placement::Sharded => "sharded",
            Placement::Global => "global",
        }
    }
}

/// What one shard has done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardState {
    /// Every stage of the shard's plan is up to date.
    Done,
    /// Some of it: the stages up to date, of how many, and rows an
    /// interrupted stage has committed.
    Partial {
        /// Stages up to date.
        done: usize,
        /// Stages in the shard's plan.
        stages: usize,
        /// `(stage, rows)` of interrupted stages' journals.
        committed: Vec<(String, u64)>,
    },
    /// Nothing built yet.
    Missing,
}

impl BuildPlan {
    /// Where each stage runs in a sharded build, in run order.
    pub fn placements(&self) -> Vec<Placement> {
        let mut placed: BTreeMap<&str, Placement> = BTreeMap::new();
        for stage in &self.stages {
            let deps: Vec<Placement> = stage
                .dependencies()
                .iter()
                .map(|d| placed.get(d).copied().unwrap_or(Placement::Global))
                .collect();
            let row_parallel = matches!(
                stage.kind,
                StageKind::Respond
                    | StageKind::Critique
                    | StageKind::Revise
                    | StageKind::Pair
                    | StageKind::Label
                    | StageKind::Rate
                    | StageKind::Filter
            );
            let place = if row_parallel
                && stage.model_stages.is_empty()
                && deps.iter().all(|p| *p != Placement::Global)
            {
                Placement::Sharded
            } else if matches!(
                stage.kind,
                StageKind::Table | StageKind::Import | StageKind::Dedup
            ) && deps.iter().all(|p| *p == Placement::Ahead)
            {
                Placement::Ahead
            } else {
                Placement::Global
            };
            placed.insert(&stage.name, place);
        }
        self.stages
            .iter()
            .map(|s| placed[s.name.as_str()])
            .collect()
    }

    /// The directory shard `shard` writes in.
    pub fn shard_dir(&self, shard: Shard) -> PathBuf {
        self.out.join("shards").join(shard.dir_name())
    }

    /// The shard counts of the shard directories under `<out>/shards/`.
    pub fn shard_counts(&self) -> Vec<u32> {
        let mut counts = BTreeSet::new();
        if let Ok(entries) = std::fs::read_dir(self.out.join("shards")) {
            for e in entries.flatten() {
                let name = e.file_name();
                if let Some((_, n)) = name.to_str().and_then(|n| n.split_once("-of-"))
                    && let Ok(n) = n.parse::<u32>()
                {
                    counts.insert(n);
                }
            }
        }
        counts.into_iter().collect()
    }

    /// The plan one shard runs: the sharded stages on its rows, after the
    /// ahead stages they read, all under [`BuildPlan::shard_dir`].
    pub fn for_shard(&self, shard: Shard) -> Result<BuildPlan> {
        let placements = self.placements();
        if !placements.contains(&Placement::Sharded) {
            return Err(Error::Settings(format!(
                "{}: no stage runs row by row (respond, critique, revise, pair, label on a \
                 model the build does not train), so there is nothing to shard",
                self.file.display()
            )));
        }
        // The ahead stages the sharded ones need, transitively.
        let mut needed: BTreeSet<&str> = BTreeSet::new();
        for (stage, place) in self.stages.iter().zip(&placements).rev() {
            if *place == Placement::Sharded || needed.contains(stage.name.as_str()) {
                needed.insert(&stage.name);
                needed.extend(stage.dependencies());
            }
        }
        let placed: BTreeMap<&str, Placement> = self
            .stages
            .iter()
            .map(|s| s.name.as_str())
            .zip(placements.iter().copied())
            .collect();
        let dir = self.shard_dir(shard);
        let at = |name: &str| dir.join(format!("{name}.parquet"));
        let mut stages: Vec<PlannedStage> = Vec::new();
        let mut slices: BTreeMap<(String, Option<usize>), String> = BTreeMap::new();
        for (stage, place) in self.stages.iter().zip(&placements) {
            match place {
                Placement::Global => {}
                Placement::Ahead if !needed.contains(stage.name.as_str()) => {}
                Placement::Ahead => {
                    let mut s = stage.clone();
                    if s.kind != StageKind::Table {
                        s.output = at(&s.name);
                    }
                    stages.push(s);
                }
                Placement::Sharded => {
                    let mut s = stage.clone();
                    s.output = at(&s.name);
                    s.shard = Some(shard);
                    // Of a merged plan: the stage a shard runs.
                    if let StageOp::Merge { op, .. } = &s.op {
                        s.op = (**op).clone();
                    }
                    // A respond stage's `limit` counts the whole input's
                    // rows: the slice applies it before keeping the shard's.
                    let limit = match &mut s.op {
                        StageOp::Respond(r) => r.limit.take(),
                        _ => None,
                    };
                    for slot in [&mut s.input, &mut s.against] {
                        let Some(input) = slot.as_mut() else { continue };
                        if placed.get(input.as_str()) != Some(&Placement::Ahead) {
                            continue;
                        }
                        let key = (input.clone(), limit);
                        if let Some(name) = slices.get(&key) {
                            *input = name.clone();
                            continue;
                        }
                        let name = match limit {
                            Some(l) => format!("{input}.first-{l}.shard"),
                            None => format!("{input}.shard"),
                        };
                        stages.push(PlannedStage {
                            name: name.clone(),
                            kind: StageKind::Slice,
                            input: Some(input.clone()),
                            against: None,
                            mix: Vec::new(),
                            model_stages: Vec::new(),
                            output: at(&name),
                            model: None,
                            constitution: None,
                            op: StageOp::Slice { shard, limit },
                            shard: Some(shard),
                        });
                        slices.insert(key, name.clone());
                        *input = name;
                    }
                    stages.push(s);
                }
            }
        }
        Ok(BuildPlan {
            file: self.file.clone(),
            out: dir,
            stages,
            positions: self.positions.clone(),
        })
    }

    /// The plan that merges `shards` shards: the build, with every sharded
    /// stage but `pair` and `filter` (cheap, and reading no model: rerun
    /// on the merged input) made by merging its shards' tables.
    pub fn merged(&self, shards: u32) -> Result<BuildPlan> {
        Shard::new(0, shards)?;
        let placements = self.placements();
        let mut plan = self.clone();
        for (stage, place) in plan.stages.iter_mut().zip(placements) {
            if place == Placement::Sharded
                && !matches!(stage.kind, StageKind::Pair | StageKind::Filter)
            {
                let op = std::mem::replace(&mut stage.op, StageOp::Pair);
                stage.op = StageOp::Merge {
                    shards,
                    op: Box::new(op),
                };
            }
        }
        Ok(plan)
    }

    /// What each of `count` shards has done, from their tables and journals.
    pub fn shard_states(&self, count: u32) -> Result<Vec<ShardState>> {
        (0..count)
            .map(|index| {
                let shard = Shard::new(index, count)?;
                let plan = self.for_shard(shard)?;
                if !plan.out.exists() {
                    return Ok(ShardState::Missing);
                }
                let statuses = plan.explain(&[])?;
                let done = statuses
                    .iter()
                    .filter(|s| matches!(s.verdict, Verdict::UpToDate | Verdict::Source))
                    .count();
                if done == statuses.len() {
                    return Ok(ShardState::Done);
                }
                let committed = plan
                    .stages
                    .iter()
                    .filter_map(|s| {
                        ShardedWriter::peek(&s.output)
                            .filter(|left| left.rows > 0)
                            .map(|left| (s.name.clone(), left.rows))
                    })
                    .collect();
                Ok(ShardState::Partial {
                    done,
                    stages: statuses.len(),
                    committed,
                })
            })
            .collect()
    }

    /// Why the shards' tables of stage `name` cannot be merged yet: one
    /// line per shard whose table is missing or out of date. Empty when
    /// every shard has it.
    pub(crate) fn shards_behind(&self, name: &str, count: u32) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        for index in 0..count {
            let shard = Shard::new(index, count)?;
            let mut plan = self.for_shard(shard)?;
            let Some(end) = plan.stages.iter().position(|s| s.name == name) else {
                return Err(Error::Settings(format!(
                    "internal: stage `{name}` is not in shard {shard}'s plan"
                )));
            };
            plan.stages.truncate(end + 1);
            if !plan.out.exists() {
                problems.push(format!(
                    "shard {shard}: missing ({} does not exist)",
                    plan.out.display()
                ));
                continue;
            }
            let statuses = plan.explain(&[])?;
            if let Some(s) = statuses.last()
                && s.verdict != Verdict::UpToDate
            {
                let stage = &plan.stages[end];
                let state = match ShardedWriter::peek(&stage.output) {
                    Some(left) if left.rows > 0 => {
                        format!("partial, {} rows committed", left.rows)
                    }
                    _ if stage.output.exists() => "out of date".to_string(),
                    _ => "missing".to_string(),
                };
                problems.push(format!(
                    "shard {shard}: `{name}` is {state} ({})",
                    s.reasons.join("; ")
                ));
            }
        }
        Ok(problems)
    }

    /// A merged stage: its shards' tables merged into the table an
    /// unsharded run writes, unless that table is already there.
    pub(crate) fn run_merge(&self, stage: &PlannedStage, shards: u32) -> Result<StageOutcome> {
        let inputs = self.input_tables(stage)?;
        // A merge records what the stage records unsharded.
        let (provenance, spec) = expected_provenance(stage, &inputs)?;
        let (cached, table) = unless_finished(&stage.output, spec, &provenance, || {
            let behind = self.shards_behind(&stage.name, shards)?;
            if !behind.is_empty() {
                return Err(Error::Settings(format!(
                    "stage `{}`: cannot merge {shards} shards: {}. Run `charter build {} \
                     --shard I/{shards}` for each of them first",
                    stage.name,
                    behind.join("; "),
                    self.file.display()
                )));
            }
            let tables = (0..shards)
                .map(|index| {
                    let dir = self.shard_dir(Shard {
                        index,
                        count: shards,
                    });
                    Ok(TableFile::open(
                        &dir.join(format!("{}.parquet", stage.name)),
                    )?)
                })
                .collect::<Result<Vec<_>>>()?;
            let child = parent_column(stage.kind).ok_or_else(|| {
                Error::Settings(format!(
                    "internal: stage `{}` ({}) is not merged",
                    stage.name,
                    stage.kind.as_str()
                ))
            })?;
            let input = inputs
                .first()
                .ok_or_else(|| Error::Settings(format!("stage `{}` has no input", stage.name)))?;
            Ok(merge_shards(
                input,
                ParentKey {
                    child,
                    parent: "id",
                },
                &tables,
                spec,
                &provenance,
                &stage.output,
            )?)
        })?;
        Ok(table_written(stage, cached, table))
    }
}

/// The column of a merged stage's output naming the input row it was made from.
fn parent_column(kind: StageKind) -> Option<&'static str> {
    match kind {
        StageKind::Respond => Some("prompt_id"),
        StageKind::Critique => Some("parent_id"),
        StageKind::Revise => Some("critique_id"),
        StageKind::Label => Some("pair_id"),
        StageKind::Rate => Some("item_id"),
        _ => None,
    }
}
