//! Using an input guard (`charter train classifier --role input`):
//! calibrating its threshold on benign rows, and adding its score and
//! verdict to a table.
//!
//! A guard has no default threshold: `calibrate` picks the one at which a
//! target share of benign rows is blocked and writes it, with the benign
//! table's content hash and the false-positive rate reached (and its 95%
//! Wilson interval), to `calibration.json` in the guard's directory.
//! `classify_table` refuses a guard without one.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field};
use charter_model::ModelDir;
use charter_table::{InputRef, Output, Provenance, TableFile, TableSummary, finished_table};
use serde::{Deserialize, Serialize};

use crate::data::{Formatter, Tokens};
use crate::jobs::open_preference_model;
use crate::score::{ScoreSettings, scalar_scores, string_column, with_columns};
use crate::{DeviceChoice, Error, Result, select_device};

/// The file a calibrated guard keeps its threshold in.
pub const CALIBRATION_FILE: &str = "calibration.json";

/// Version of the classify stage.
pub const CLASSIFY_VERSION: u32 = 1;

/// A guard's calibrated threshold and how it was reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Rows with P(blocked) at or above it are blocked.
    pub threshold: f64,
    /// The share of benign rows asked to be blocked at most.
    pub target_fpr: f64,
    /// The share of the calibration rows blocked at the threshold.
    pub achieved_fpr: f64,
    /// 95% Wilson interval of the false-positive rate.
    pub fpr_interval: (f64, f64),
    /// Benign rows scored.
    pub rows: usize,
    /// Of them, blocked at the threshold.
    pub blocked: usize,
    /// The benign table, by name and content hash.
    pub table: InputRef,
    /// The guard's model content hash.
    pub guard_hash: String,
}

/// 95% Wilson score interval of `k` successes in `n` trials.
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n, z) = (k as f64, n as f64, 1.959_963_984_540_054);
    let p = k / n;
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// The threshold that blocks at most `target_fpr` of `benign` scores:
/// halfway between the last score allowed through and the one above it.
pub fn threshold_for(benign: &[f64], target_fpr: f64) -> f64 {
    let mut sorted = benign.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let allowed = (target_fpr * sorted.len() as f64).floor() as usize;
    // Blocking the `allowed` highest scores: the threshold sits above the next one.
    let below = sorted.get(allowed).copied().unwrap_or(0.0);
    let above = if allowed == 0 {
        1.0
    } else {
        sorted[allowed - 1]
    };
    if above > below {
        (above + below) / 2.0
    } else {
        // Ties at the boundary: block none of them.
        next_up(below)
    }
}

fn next_up(x: f64) -> f64 {
    if x >= 1.0 {
        1.0
    } else {
        f64::from_bits(x.to_bits() + 1)
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Which column holds the user's message a guard reads, and which rows of
/// the table are benign (all, or those labelled harmless).
fn message_column(table: &str) -> Option<&'static str> {
    match table {
        "prompts" | "queries" | "targets" => Some("text"),
        "responses" | "revisions" => Some("prompt"),
        _ => None,
    }
}

struct Guard {
    model: crate::PreferenceModel,
    formatter: Formatter,
    dir: ModelDir,
}

impl Guard {
    fn open(dir: &Path, max_len: usize) -> Result<Self> {
        let record = crate::read_report(dir)?;
        if record["objective"] != "classifier" {
            return Err(Error::Input(format!(
                "{}: not a classifier (its record says objective {}): train one with \
                 `charter train classifier`",
                dir.display(),
                record["objective"]
            )));
        }
        let model_dir = ModelDir::open(dir)?;
        let device = select_device(DeviceChoice::Cpu, false)?;
        Ok(Guard {
            model: open_preference_model(dir, &device)?,
            formatter: Formatter::new(&model_dir, max_len)?,
            dir: model_dir,
        })
    }

    /// P(blocked) of each message; `None` for one longer than `max_len`.
    fn probabilities(
        &self,
        messages: &StringArray,
        batch_size: usize,
        done: &mut dyn FnMut(usize),
    ) -> Result<Vec<Option<f64>>> {
        let tokens = (0..messages.len())
            .map(|i| self.formatter.encode_prompt(messages.value(i)))
            .collect::<Result<Vec<Option<Tokens>>>>()?;
        Ok(scalar_scores(&self.model, &tokens, batch_size, done)?
            .into_iter()
            .map(|z| z.map(sigmoid))
            .collect())
    }
}

fn open_table(path: &Path) -> Result<(TableFile, &'static str)> {
    let table = TableFile::open(path)?;
    let name = table.core_spec()?.name;
    let column = message_column(name).ok_or_else(|| {
        Error::Input(format!(
            "{}: a guard reads prompts, queries, targets, responses or revisions tables, not a \
             `{name}` table",
            path.display()
        ))
    })?;
    Ok((table, column))
}

/// Scores the benign rows of `input` (every row of a prompts, responses or
/// revisions table; the `harmless` rows of a queries or targets table),
/// picks the threshold that blocks at most `target_fpr` of them and writes
/// it to the guard's `calibration.json`.
pub fn calibrate(
    guard_dir: &Path,
    input: &Path,
    target_fpr: f64,
    settings: &ScoreSettings,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Calibration> {
    settings.validate()?;
    if !(0.0..1.0).contains(&target_fpr) {
        return Err(Error::invalid(
            "target_fpr",
            format!("must be in [0, 1), got {target_fpr}"),
        ));
    }
    let (table, column) = open_table(input)?;
    let guard = Guard::open(guard_dir, settings.max_len)?;
    let total = table.num_rows();
    let mut benign = Vec::new();
    let mut seen = 0u64;
    for batch in table.batches()? {
        let batch = batch?;
        let messages = string_column(&batch, column, input)?;
        let keep: Vec<bool> = match batch.column_by_name("label") {
            Some(_) => {
                let labels = string_column(&batch, "label", input)?;
                (0..batch.num_rows())
                    .map(|i| labels.value(i) == "harmless")
                    .collect()
            }
            None => vec![true; batch.num_rows()],
        };
        let p = guard.probabilities(messages, settings.batch_size, &mut |_| {})?;
        benign.extend(
            p.into_iter()
                .zip(keep)
                .filter_map(|(p, keep)| p.filter(|_| keep)),
        );
        seen += batch.num_rows() as u64;
        progress(seen, total);
    }
    if benign.is_empty() {
        return Err(Error::Input(format!(
            "{}: no benign rows that fit max_len {} to calibrate on",
            input.display(),
            settings.max_len
        )));
    }
    let threshold = threshold_for(&benign, target_fpr);
    let blocked = benign.iter().filter(|&&p| p >= threshold).count();
    let calibration = Calibration {
        threshold,
        target_fpr,
        achieved_fpr: blocked as f64 / benign.len() as f64,
        fpr_interval: wilson(blocked, benign.len()),
        rows: benign.len(),
        blocked,
        table: InputRef {
            name: table.core_spec()?.name.to_string(),
            content_hash: table.content_hash_or_compute()?,
        },
        guard_hash: guard.dir.provenance.content_hash.clone(),
    };
    let path = guard_dir.join(CALIBRATION_FILE);
    let json = serde_json::to_vec_pretty(&calibration)
        .map_err(|e| Error::Data(format!("{}: {e}", path.display())))?;
    charter_table::write_atomic(&path, &json).map_err(|e| Error::io(&path, e))?;
    Ok(calibration)
}

/// A guard's calibration, checked to belong to it.
pub fn read_calibration(guard_dir: &Path) -> Result<Calibration> {
    let path = guard_dir.join(CALIBRATION_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::Input(format!(
            "{}: {e}: a guard needs a calibrated threshold; run `charter classify calibrate -m \
             {} -i BENIGN_TABLE --target-fpr F` first",
            path.display(),
            guard_dir.display()
        ))
    })?;
    let c: Calibration =
        serde_json::from_str(&text).map_err(|e| Error::Data(format!("{}: {e}", path.display())))?;
    let dir = ModelDir::open(guard_dir)?;
    if c.guard_hash != dir.provenance.content_hash {
        return Err(Error::Input(format!(
            "{}: calibrated for another model (hash {}): calibrate this one again",
            path.display(),
            &c.guard_hash[..16.min(c.guard_hash.len())]
        )));
    }
    Ok(c)
}

/// Adds `guard_score` (P(blocked), null for a message longer than
/// `max_len`) and `guard_verdict` (`blocked` or `allowed`) to a prompts,
/// queries, targets, responses or revisions table.
pub fn classify_table(
    guard_dir: &Path,
    input: &Path,
    output: &Output,
    settings: &ScoreSettings,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(TableSummary, bool)> {
    settings.validate()?;
    let _claim = output.claim(&[input])?;
    let (table, column) = open_table(input)?;
    for existing in ["guard_score", "guard_verdict"] {
        if table.schema().column_with_name(existing).is_some() {
            return Err(Error::Input(format!(
                "{}: the table already has a `{existing}` column",
                input.display()
            )));
        }
    }
    let calibration = read_calibration(guard_dir)?;
    let spec = table.core_spec()?;
    let provenance = Provenance {
        stage: "classify".into(),
        stage_version: CLASSIFY_VERSION,
        settings: serde_json::json!({
            "max_len": settings.max_len,
            "threshold": calibration.threshold,
        }),
        inputs: vec![InputRef {
            name: spec.name.to_string(),
            content_hash: table.content_hash_or_compute()?,
        }],
        model_hash: Some(calibration.guard_hash.clone()),
        constitution_hash: None,
    };
    if let Output::Path(out) = output
        && let Some(summary) = finished_table(out, spec, &provenance.build_key(spec))
    {
        return Ok((summary, true));
    }
    let guard = Guard::open(guard_dir, settings.max_len)?;
    let total = table.num_rows();
    let mut done = 0u64;
    let fields = vec![
        Field::new("guard_score", DataType::Float64, true),
        Field::new("guard_verdict", DataType::Utf8, true),
    ];
    let summary = with_columns(
        &table,
        output,
        &provenance,
        fields,
        &mut |batch: &RecordBatch| {
            let messages = string_column(batch, column, input)?;
            let p = guard.probabilities(messages, settings.batch_size, &mut |n| {
                done += n as u64;
                progress(done, total);
            })?;
            let verdicts: StringArray = p
                .iter()
                .map(|p| {
                    p.map(|p| {
                        if p >= calibration.threshold {
                            "blocked"
                        } else {
                            "allowed"
                        }
                    })
                })
                .collect();
            Ok(vec![
                Arc::new(Float64Array::from(p)) as ArrayRef,
                Arc::new(verdicts) as ArrayRef,
            ])
        },
    )?;
    Ok((summary, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_blocks_at_most_the_target_share() {
        let benign: Vec<f64> = (0..100).map(|i| f64::from(i) / 100.0).collect();
        let t = threshold_for(&benign, 0.05);
        assert_eq!(benign.iter().filter(|&&p| p >= t).count(), 5);
        let t = threshold_for(&benign, 0.0);
        assert_eq!(benign.iter().filter(|&&p| p >= t).count(), 0);
        // Ties at the boundary are all let through.
        let tied = [0.9, 0.9, 0.9, 0.1];
        let t = threshold_for(&tied, 0.5);
        assert_eq!(tied.iter().filter(|&&p| p >= t).count(), 0);
    }

    #[test]
    fn wilson_intervals_hold_the_rate_and_stay_in_range() {
        let (lo, hi) = wilson(5, 100);
        assert!(lo < 0.05 && 0.05 < hi && lo > 0.0, "{lo} {hi}");
        // Known value: 5/100 → (0.0215, 0.1118).
        assert!((lo - 0.0215).abs() < 1e-3 && (hi - 0.1118).abs() < 1e-3);
        assert_eq!(wilson(0, 10).0, 0.0);
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }
}
