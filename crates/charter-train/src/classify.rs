//! Using an input guard (`charter train classifier --role input`):
//! calibrating its threshold on benign rows, and adding its score and
//! verdict to a table.
//!
//! A guard has no default threshold: `calibrate` picks the one at which a
//! target share of benign rows is blocked and writes it, with the benign
//! table's content hash and the false-positive rate reached (and its 95%
//! Wilson interval), to `calibration.json` in the guard's directory.
//! `classify_table` refuses a guard without one.
//!
//! A guard is a classifier model (`charter train classifier`) or a probe
//! on the policy's own states (`charter train probe`, an output guard);
//! both score the same way here.

use std::path::Path;
use std::sync::{Arc, Mutex};

use arrow_array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field};
use charter_model::ModelDir;
use charter_table::{InputRef, Output, Provenance, TableFile, TableSummary, finished_table};
use serde::{Deserialize, Serialize};

use crate::data::{Formatter, Tokens};
use crate::jobs::{GuardRole, open_preference_model};
use crate::probe::{ProbeFile, check_policy, is_probe, open_policy, prefix_scores, read_probe};
use crate::score::{ScoreSettings, in_batches, scalar_scores, string_column, with_columns};
use crate::{DeviceChoice, Error, Result, select_device};

/// The file a calibrated guard keeps its threshold in.
pub const CALIBRATION_FILE: &str = charter_model::CALIBRATION_FILE;

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

/// The columns a guard of `role` reads in a table named `table`: the
/// user's message, and for an output guard the answer.
fn columns(role: GuardRole, table: &str) -> Option<(&'static str, Option<&'static str>)> {
    match (role, table) {
        (GuardRole::Input, "prompts" | "queries" | "targets") => Some(("text", None)),
        (GuardRole::Input, "responses" | "revisions") => Some(("prompt", None)),
        (GuardRole::Output, "responses" | "revisions") => Some(("prompt", Some("text"))),
        (GuardRole::Output, "targets") => Some(("text", Some("answer"))),
        _ => None,
    }
}

/// A trained guard, opened for scoring on the CPU.
pub struct Guard {
    kind: Kind,
    formatter: Formatter,
    /// The classifier's model hash, or the probe's.
    hash: String,
    role: GuardRole,
}

enum Kind {
    /// A classifier model with a scalar head.
    Model(crate::PreferenceModel),
    /// A probe, and the policy it reads (opened when first scoring).
    Probe {
        probe: ProbeFile,
        dir: std::path::PathBuf,
        policy: Mutex<Option<Box<charter_stages::Model>>>,
    },
}

/// The content hash of the guard in `dir`: its model's, or its probe's.
pub fn guard_hash(dir: &Path) -> Result<String> {
    match is_probe(dir) {
        true => Ok(read_probe(dir)?.1),
        false => Ok(ModelDir::open(dir)?.provenance.content_hash),
    }
}

/// How a guard scored one row.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardScore {
    /// P(blocked): the input guard's, or the output guard's highest over
    /// the answer's prefixes.
    pub p: f64,
    /// For an output guard, P(blocked) after each answer token.
    pub prefixes: Vec<f64>,
}

impl GuardScore {
    /// The first answer token whose prefix scores at or over `threshold`:
    /// the stream stops before emitting it.
    pub fn first_over(&self, threshold: f64) -> Option<usize> {
        self.prefixes.iter().position(|&p| p >= threshold)
    }
}

impl Guard {
    /// What the classifier in `dir` guards, from its training record.
    pub fn role_of(dir: &Path) -> Result<GuardRole> {
        if is_probe(dir) {
            return Ok(GuardRole::Output);
        }
        let record = crate::read_report(dir)?;
        if record["objective"] != "classifier" {
            return Err(Error::Input(format!(
                "{}: not a classifier (its record says objective {}): train one with \
                 `charter train classifier`",
                dir.display(),
                record["objective"]
            )));
        }
        Ok(match record["objective_settings"]["role"].as_str() {
            Some("output") => GuardRole::Output,
            _ => GuardRole::Input,
        })
    }

    /// Opens the classifier in `dir`; conversations are cut to `max_len` tokens.
    pub fn open(dir: &Path, max_len: usize) -> Result<Self> {
        let role = Guard::role_of(dir)?;
        if is_probe(dir) {
            let (probe, hash) = read_probe(dir)?;
            let policy = ModelDir::open(&probe.policy.path).map_err(|e| {
                Error::Input(format!(
                    "{}: the probe reads the policy {}, which does not open: {e}",
                    dir.display(),
                    probe.policy.path.display()
                ))
            })?;
            check_policy(&probe, dir, &policy)?;
            return Ok(Guard {
                formatter: Formatter::new(&policy, max_len)?,
                kind: Kind::Probe {
                    probe,
                    dir: dir.to_path_buf(),
                    policy: Mutex::new(None),
                },
                hash,
                role,
            });
        }
        let model_dir = ModelDir::open(dir)?;
        let device = select_device(DeviceChoice::Cpu, false)?;
        Ok(Guard {
            kind: Kind::Model(open_preference_model(dir, &device)?),
            formatter: Formatter::new(&model_dir, max_len)?,
            hash: model_dir.provenance.content_hash,
            role,
        })
    }

    /// The guard's content hash (its model's, or its probe's).
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// A probe's readout for the engine, stopping at `threshold`; `None`
    /// for a classifier model.
    pub fn readout(&self, threshold: f64) -> Option<charter_gen::Readout> {
        match &self.kind {
            Kind::Probe { probe, .. } => Some(probe.readout(threshold)),
            Kind::Model(_) => None,
        }
    }

    /// The content hash of the policy a probe reads; `None` for a
    /// classifier model.
    pub fn policy_hash(&self) -> Option<&str> {
        match &self.kind {
            Kind::Probe { probe, .. } => Some(&probe.policy.content_hash),
            Kind::Model(_) => None,
        }
    }

    /// What it guards.
    pub fn role(&self) -> GuardRole {
        self.role
    }

    /// The guard's tokenizer and chat template.
    pub fn formatter(&self) -> &Formatter {
        &self.formatter
    }

    /// P(blocked) of each conversation (message, and answer for an output
    /// guard); `None` for one longer than `max_len` or without an answer.
    pub fn score(
        &self,
        rows: &[(&str, Option<&str>)],
        batch_size: usize,
        done: &mut dyn FnMut(usize),
    ) -> Result<Vec<Option<GuardScore>>> {
        let tokens = rows
            .iter()
            .map(|&(message, answer)| match (self.role, answer) {
                (GuardRole::Input, _) => self.formatter.encode_prompt(message),
                (GuardRole::Output, Some(answer)) => self.formatter.encode(message, answer, false),
                (GuardRole::Output, None) => Ok(None),
            })
            .collect::<Result<Vec<Option<Tokens>>>>()?;
        self.score_tokens(&tokens, batch_size, done)
    }

    /// As [`Guard::score`], on conversations already tokenised with the
    /// guard's tokenizer (an output guard's answer after `prompt_len`).
    pub fn score_tokens(
        &self,
        rows: &[Option<Tokens>],
        batch_size: usize,
        done: &mut dyn FnMut(usize),
    ) -> Result<Vec<Option<GuardScore>>> {
        let model = match &self.kind {
            Kind::Model(model) => model,
            Kind::Probe { probe, dir, policy } => {
                let mut policy = policy
                    .lock()
                    .map_err(|_| Error::Input("a probe's policy: poisoned lock".into()))?;
                if policy.is_none() {
                    *policy = Some(Box::new(open_policy(probe, dir, 0)?));
                }
                let Some(policy) = policy.as_mut() else {
                    unreachable!("opened above")
                };
                let readout = probe.readout(1.0);
                let scored = prefix_scores(policy, &readout, rows, batch_size)?;
                done(rows.len());
                return Ok(scored
                    .into_iter()
                    .map(|s| {
                        s.map(|prefixes| GuardScore {
                            p: prefixes.iter().copied().fold(0.0, f64::max),
                            prefixes,
                        })
                    })
                    .collect());
            }
        };
        if self.role == GuardRole::Input {
            return Ok(scalar_scores(model, rows, batch_size, done)?
                .into_iter()
                .map(|z| {
                    z.map(|z| GuardScore {
                        p: sigmoid(z),
                        prefixes: Vec::new(),
                    })
                })
                .collect());
        }
        in_batches(rows, batch_size, done, &mut |tokens| {
            Ok(model
                .answer_prefix_scores(tokens)?
                .into_iter()
                .map(|z| {
                    let prefixes: Vec<f64> = z.into_iter().map(|z| sigmoid(f64::from(z))).collect();
                    let p = prefixes.iter().copied().fold(0.0, f64::max);
                    GuardScore { p, prefixes }
                })
                .collect())
        })
    }
}

/// A batch's (message, answer) pairs from the columns a guard reads.
fn conversations<'a>(
    batch: &'a RecordBatch,
    (message, answer): (&str, Option<&str>),
    path: &Path,
) -> Result<Vec<(&'a str, Option<&'a str>)>> {
    let messages = string_column(batch, message, path)?;
    let answers = answer.map(|a| string_column(batch, a, path)).transpose()?;
    Ok((0..batch.num_rows())
        .map(|i| {
            let answer = answers.filter(|a| a.is_valid(i)).map(|a| a.value(i));
            (messages.value(i), answer)
        })
        .collect())
}

fn open_table(
    path: &Path,
    role: GuardRole,
) -> Result<(TableFile, (&'static str, Option<&'static str>))> {
    let table = TableFile::open(path)?;
    let name = table.core_spec()?.name;
    let read = columns(role, name).ok_or_else(|| {
        let kinds = match role {
            GuardRole::Input => "prompts, queries, targets, responses or revisions tables",
            GuardRole::Output => "the answers of responses, revisions or targets tables",
        };
        Error::Input(format!(
            "{}: an {} guard reads {kinds}, not a `{name}` table",
            path.display(),
            role.as_str()
        ))
    })?;
    Ok((table, read))
}

/// Scores the benign rows of `input` (every row of a prompts, responses or
/// revisions table; the `harmless` rows of a queries or targets table),
/// picks the threshold that blocks at most `target_fpr` of them and writes
/// it to the guard's `calibration.json`. An output guard is calibrated on
/// answers: a row counts as blocked when any prefix of its answer is.
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
    let guard = Guard::open(guard_dir, settings.max_len)?;
    let (table, read) = open_table(input, guard.role)?;
    let total = table.num_rows();
    let mut benign = Vec::new();
    let mut seen = 0u64;
    for batch in table.batches()? {
        let batch = batch?;
        let keep: Vec<bool> = match batch.column_by_name("label") {
            Some(_) => {
                let labels = string_column(&batch, "label", input)?;
                (0..batch.num_rows())
                    .map(|i| labels.value(i) == "harmless")
                    .collect()
            }
            None => vec![true; batch.num_rows()],
        };
        let rows = conversations(&batch, read, input)?;
        let scores = guard.score(&rows, settings.batch_size, &mut |_| {})?;
        benign.extend(
            scores
                .into_iter()
                .zip(keep)
                .filter_map(|(s, keep)| s.filter(|_| keep).map(|s| s.p)),
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
        guard_hash: guard.hash.clone(),
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
    if c.guard_hash != guard_hash(guard_dir)? {
        return Err(Error::Input(format!(
            "{}: calibrated for another model (hash {}): calibrate this one again",
            path.display(),
            &c.guard_hash[..16.min(c.guard_hash.len())]
        )));
    }
    Ok(c)
}

/// Adds `guard_score` (P(blocked), null for a row longer than `max_len`)
/// and `guard_verdict` (`blocked` or `allowed`) to a prompts, queries,
/// targets, responses or revisions table; an output guard reads the
/// answers and also adds `guard_token`, the answer token a stream would
/// stop before (null when it would not stop).
pub fn classify_table(
    guard_dir: &Path,
    input: &Path,
    output: &Output,
    settings: &ScoreSettings,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(TableSummary, bool)> {
    settings.validate()?;
    let _claim = output.claim(&[input])?;
    let calibration = read_calibration(guard_dir)?;
    let role = Guard::role_of(guard_dir)?;
    let (table, read) = open_table(input, role)?;
    let mut added = vec![
        Field::new("guard_score", DataType::Float64, true),
        Field::new("guard_verdict", DataType::Utf8, true),
    ];
    if role == GuardRole::Output {
        added.push(Field::new("guard_token", DataType::UInt32, true));
    }
    if let Some(existing) = added
        .iter()
        .find(|f| table.schema().column_with_name(f.name()).is_some())
    {
        return Err(Error::Input(format!(
            "{}: the table already has a `{}` column",
            input.display(),
            existing.name()
        )));
    }
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
    let t = calibration.threshold;
    let summary = with_columns(&table, output, &provenance, added, &mut |batch| {
        let rows = conversations(batch, read, input)?;
        let scores = guard.score(&rows, settings.batch_size, &mut |n| {
            done += n as u64;
            progress(done, total);
        })?;
        let p: Float64Array = scores.iter().map(|s| s.as_ref().map(|s| s.p)).collect();
        let verdicts: StringArray = scores
            .iter()
            .map(|s| {
                s.as_ref()
                    .map(|s| if s.p >= t { "blocked" } else { "allowed" })
            })
            .collect();
        let mut columns = vec![Arc::new(p) as ArrayRef, Arc::new(verdicts) as ArrayRef];
        if role == GuardRole::Output {
            let at: UInt32Array = scores
                .iter()
                .map(|s| s.as_ref().and_then(|s| s.first_over(t)).map(|i| i as u32))
                .collect();
            columns.push(Arc::new(at));
        }
        Ok(columns)
    })?;
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
