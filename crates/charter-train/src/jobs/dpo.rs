//! DPO with soft targets against a frozen reference whose log-probabilities
//! are cached by content hash and computed resumably.

use std::path::Path;
use std::sync::atomic::Ordering;

use charter_model::ModelDir;
use charter_table::InputRef;

use super::pairs::{PairRow, Pairwise, both_sides, pair_rows};
use super::{
    Job, Outcome, Task, adapter_files, fingerprint, finish, prepare, run_of, trainable, up_to_date,
};
use crate::data::read_labels;
use crate::heap::RetainedHeap;
use crate::loss::{answer_logps, dpo_margins};
use crate::metrics::MetricRow;
use crate::tensor::values;
use crate::train::Finished;
use crate::{Decoder, Error, Result, select_device};

/// Reference log-probabilities by pair id, as the cache stores them.
type LogpMap = std::collections::BTreeMap<String, [f64; 2]>;

fn read_logp_map(path: &Path) -> Option<LogpMap> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_logp_map(path: &Path, map: &LogpMap) -> Result<()> {
    let text = serde_json::to_string(map).map_err(|e| Error::Data(e.to_string()))?;
    charter_table::write_atomic(path, text.as_bytes()).map_err(|e| Error::io(path, e))
}

/// Answer log-probabilities `[A, B]` of every pair under `base` (no
/// gradients), cached in `cache_dir` by content hash of (model, labels
/// table, `max_len`).
///
/// Runs on the job's device in its batch size. Pairs done so far are kept
/// in `<key>.partial.json` after every batch, so a killed or interrupted
/// pass resumes with the pairs it lacks. `None`: the job's interrupt flag
/// was set, and what was done is saved.
fn reference_logps(
    base: &ModelDir,
    rows: &[PairRow],
    input: &InputRef,
    job: &Job<'_>,
    cache_dir: &Path,
) -> Result<Option<Vec<[f64; 2]>>> {
    let (max_len, batch_size) = (job.settings.max_len, job.settings.batch_size);
    let key = blake3::hash(
        serde_json::json!({
            "reference": base.provenance.content_hash,
            "labels": input.content_hash,
            "max_len": max_len,
            "format": 1,
        })
        .to_string()
        .as_bytes(),
    )
    .to_hex()
    .to_string();
    let path = cache_dir.join(format!("{key}.json"));
    let partial = cache_dir.join(format!("{key}.partial.json"));
    let lookup = |map: &LogpMap| -> Option<Vec<[f64; 2]>> {
        rows.iter().map(|r| map.get(&r.id).copied()).collect()
    };
    if let Some(found) = read_logp_map(&path).as_ref().and_then(lookup) {
        return Ok(Some(found));
    }
    let mut map = read_logp_map(&partial).unwrap_or_default();
    let missing: Vec<usize> = (0..rows.len())
        .filter(|&i| !map.contains_key(&rows[i].id))
        .collect();
    if !missing.is_empty() {
        std::fs::create_dir_all(cache_dir).map_err(|e| Error::io(cache_dir, e))?;
        let _heap = RetainedHeap::enter();
        let device = select_device(job.device, false)?;
        let model = Decoder::open(&base.path, &device)?;
        for batch in missing.chunks(batch_size.max(1)) {
            if job.interrupt.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let n = batch.len();
            let logps = values(answer_logps(&model, &both_sides(rows, batch))?.into_data())?;
            for (k, &i) in batch.iter().enumerate() {
                let pair = [f64::from(logps[k]), f64::from(logps[n + k])];
                map.insert(rows[i].id.clone(), pair);
            }
            write_logp_map(&partial, &map)?;
        }
    }
    let found = lookup(&map).ok_or_else(|| Error::Data("reference log-probs incomplete".into()))?;
    write_logp_map(&path, &map)?;
    let _ = std::fs::remove_file(&partial);
    Ok(Some(found))
}

/// DPO on a `labels` table with soft targets: each pair's loss weighs both
/// directions by `p_a`. The reference is the starting model.
pub fn train_dpo(
    job: &Job<'_>,
    labels: &Path,
    beta: f64,
    cache_dir: &Path,
    progress: &mut dyn FnMut(&MetricRow, usize),
) -> Result<Outcome> {
    (Task::Dpo { beta }).validate()?;
    let p = prepare(job)?;
    let (examples, input) = read_labels(labels)?;
    let (rows, skipped) = pair_rows(&p.formatter, &examples)?;
    if rows.is_empty() {
        return Err(Error::Input(format!(
            "{}: no pair fits in --max-len {}",
            labels.display(),
            job.settings.max_len
        )));
    }
    let extra = Task::Dpo { beta }.settings();
    let fp = fingerprint("dpo", job, &p.base, std::slice::from_ref(&input), &extra);
    if let Some(done) = up_to_date(job.out, &fp) {
        return Ok(done);
    }
    let Some(reference) = reference_logps(&p.base, &rows, &input, job, cache_dir)? else {
        return Ok(Outcome::Interrupted {
            step: 0,
            checkpoint: cache_dir.to_path_buf(),
        });
    };
    let refs = vec![input];
    let run = run_of(job, &fp);
    let objective = Pairwise {
        rows: &rows,
        margins: Box::new(|model: &Decoder, batch: &[usize]| {
            let reference: Vec<[f64; 2]> = batch.iter().map(|&i| reference[i]).collect();
            dpo_margins(model, &both_sides(&rows, batch), &reference, beta)
        }),
    };
    let model = trainable(job, &p.device)?;
    match run.train(model, &objective, progress)? {
        Finished::Interrupted { step, checkpoint } => Ok(Outcome::Interrupted { step, checkpoint }),
        Finished::Done(model, metrics) => finish(
            job,
            &p,
            "dpo",
            refs,
            extra,
            rows.len(),
            skipped,
            model.to_tensors()?,
            &metrics,
            None,
            &adapter_files(&model, &p.base)?,
            &fp,
        ),
    }
}
