//! What a build will cost before it runs: each stage's rows, from the
//! plan's shape and the tables that exist, times the seconds and tokens per
//! row that earlier runs measured (every build report records them, and a
//! cached stage carries its last measured rate forward).

use std::collections::BTreeMap;
use std::path::Path;

use charter_table::TableFile;
use serde_json::Value as Json;

use crate::file::{BuildPlan, StageKind, StageOp};
use crate::shard::Placement;

/// Seconds and tokens per output row of a stage, as last measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Wall seconds per row.
    pub seconds_per_row: f64,
    /// Tokens generated (or trained on) per row.
    pub tokens_per_row: f64,
}

/// A stage's expected rows and cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// The stage.
    pub stage: String,
    /// Where it runs in a sharded build.
    pub placement: Placement,
    /// Rows (examples for `train`, comparisons for `eval`) it will make,
    /// when the plan and its inputs say.
    pub rows: Option<u64>,
    /// The rate measured by an earlier run, if any.
    pub rate: Option<Rate>,
}

impl Estimate {
    /// Expected wall seconds on the machine that measured the rate.
    pub fn seconds(&self) -> Option<f64> {
        Some(self.rows? as f64 * self.rate?.seconds_per_row)
    }

    /// Expected tokens.
    pub fn tokens(&self) -> Option<f64> {
        Some(self.rows? as f64 * self.rate?.tokens_per_row)
    }
}

/// The rate of one stage entry of a build report: measured when it ran,
/// else carried over.
pub fn measured_rate(entry: &Json) -> Option<Rate> {
    let (status, rows, resumed) = (
        entry["status"].as_str()?,
        entry["rows"].as_u64()?,
        entry["resumed_rows"].as_u64().unwrap_or(0),
    );
    let done = rows.saturating_sub(resumed);
    if matches!(status, "ran" | "resumed") && done > 0 {
        return Some(Rate {
            seconds_per_row: entry["seconds"].as_f64()? / done as f64,
            tokens_per_row: entry["tokens"].as_u64()? as f64 / done as f64,
        });
    }
    Some(Rate {
        seconds_per_row: entry["seconds_per_row"].as_f64()?,
        tokens_per_row: entry["tokens_per_row"].as_f64()?,
    })
}

/// The rates a build report at `path` holds, by stage.
pub fn report_rates(path: &Path) -> BTreeMap<String, Rate> {
    let Some(report) = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Json>(&b).ok())
    else {
        return BTreeMap::new();
    };
    report["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["stage"].as_str()?.to_string(), measured_rate(e)?)))
        .collect()
}

impl BuildPlan {
    /// Every stage's expected rows and cost, in run order. Rates come from
    /// this build's report, else from its shards' reports (work a merge
    /// only gathers was measured there).
    pub fn estimate(&self) -> Vec<Estimate> {
        let mut rates = report_rates(&self.report_path());
        if let Ok(entries) = std::fs::read_dir(self.out.join("shards")) {
            let mut dirs: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            dirs.sort();
            for dir in dirs {
                for (stage, rate) in report_rates(&dir.join("build-report.json")) {
                    rates.entry(stage).or_insert(rate);
                }
            }
        }
        let placements = self.placements();
        let mut rows: BTreeMap<&str, Option<u64>> = BTreeMap::new();
        let mut out = Vec::with_capacity(self.stages.len());
        for (stage, placement) in self.stages.iter().zip(placements) {
            let input = |name: &Option<String>| {
                name.as_deref().and_then(|n| rows.get(n).copied().flatten())
            };
            let first = input(&stage.input);
            let existing = || TableFile::open(&stage.output).ok().map(|t| t.num_rows());
            let op = match &stage.op {
                StageOp::Merge { op, .. } => op.as_ref(),
                op => op,
            };
            let n = match op {
                StageOp::Table | StageOp::Import { .. } => existing(),
                StageOp::Dedup(_) | StageOp::Filter(_) | StageOp::Target(_) => existing().or(first),
                StageOp::Augment(s) => existing()
                    .or(first
                        .map(|n| n * (s.transforms.len() as u64 + u64::from(!s.only_augmented)))),
                StageOp::Respond(s) => first
                    .map(|n| n.min(s.limit.map_or(u64::MAX, |l| l as u64)) * u64::from(s.samples)),
                StageOp::Pair if stage.against.is_none() => first.map(|n| n / 2),
                StageOp::Train(_) => {
                    let mix: Option<u64> = stage
                        .mix
                        .iter()
                        .map(|m| rows.get(m.as_str()).copied().flatten())
                        .sum();
                    first.zip(mix).map(|(a, b)| a + b)
                }
                StageOp::Eval(e) => first.map(|n| {
                    n.min(e.settings.limit.map_or(u64::MAX, |l| l as u64))
                        * u64::from(e.settings.samples)
                }),
                StageOp::Slice { shard, limit } => first
                    .map(|n| n.min(limit.map_or(u64::MAX, |l| l as u64)) / u64::from(shard.count)),
                _ => first,
            };
            rows.insert(&stage.name, n);
            out.push(Estimate {
                stage: stage.name.clone(),
                placement,
                rows: n,
                rate: match stage.kind {
                    StageKind::Table => None,
                    _ => rates.get(&stage.name).copied(),
                },
            });
        }
        out
    }
}
