//! The preference model: a scalar head on the decoder, fitted to soft labels;
//! held-out accuracy and calibration.

use std::path::Path;

use super::pairs::{PairRow, Pairwise, both_sides, pair_rows};
use super::{
    HeldOut, Job, Outcome, Task, fingerprint, finish, prepare, run_of, scalar_model_files,
    trainable, up_to_date,
};
use crate::data::read_labels;
use crate::loss::{PreferenceModel, agreement};
use crate::metrics::MetricRow;
use crate::tensor::values;
use crate::train::Finished;
use crate::{Error, Result};

/// Score margins `score(A) − score(B)` for pairs `batch`.
fn pm_margins(
    model: &PreferenceModel,
    rows: &[PairRow],
    batch: &[usize],
) -> Result<burn::tensor::Tensor<1>> {
    let n = batch.len();
    let scores = model.scores(&both_sides(rows, batch))?;
    Ok(scores.clone().narrow(0, 0, n) - scores.narrow(0, n, n))
}

/// Whether a row is held out: blake3 of (seed, id) below the share.
pub(crate) fn held_out(seed: u64, id: &str, share: f64) -> bool {
    let mut h = blake3::Hasher::new();
    h.update(b"held-out\0");
    h.update(&seed.to_le_bytes());
    h.update(id.as_bytes());
    let bytes = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes.as_bytes()[..8]);
    (u64::from_le_bytes(first) as f64 / u64::MAX as f64) < share
}

/// Evaluates a preference model on `rows`.
fn evaluate_pm(model: &PreferenceModel, rows: &[PairRow], batch_size: usize) -> Result<HeldOut> {
    let mut z = Vec::with_capacity(rows.len());
    let indices: Vec<usize> = (0..rows.len()).collect();
    for batch in indices.chunks(batch_size.max(1)) {
        z.extend(values(pm_margins(model, rows, batch)?.into_data())?);
    }
    let p: Vec<f64> = rows.iter().map(|r| r.p_a).collect();
    Ok(calibration(&z, &p))
}

/// Accuracy, soft cross-entropy, Brier score and ECE of margins `z`
/// (score or log-ratio differences, A minus B) against labels `p`.
pub fn calibration(z: &[f32], p: &[f64]) -> HeldOut {
    let (agree, leaning) = agreement(z, p);
    let n = z.len().max(1) as f64;
    let mut loss = 0.0;
    let mut brier = 0.0;
    // Per bin of predicted probability: (sum of predictions, sum of labels).
    let mut bins = [(0f64, 0f64); 10];
    for (&z, &p) in z.iter().zip(p) {
        let z = f64::from(z);
        let q = 1.0 / (1.0 + (-z).exp());
        loss -= p * log_sigmoid(z) + (1.0 - p) * log_sigmoid(-z);
        brier += (q - p).powi(2);
        let bin = ((q * 10.0) as usize).min(9);
        bins[bin].0 += q;
        bins[bin].1 += p;
    }
    // Σ_bins (count/n)·|mean q − mean p| = Σ_bins |Σq − Σp| / n.
    let ece = bins.iter().map(|(q, p)| (q - p).abs()).sum::<f64>() / n;
    HeldOut {
        pairs: z.len(),
        accuracy: if leaning > 0 {
            agree as f64 / leaning as f64
        } else {
            f64::NAN
        },
        loss: loss / n,
        brier: brier / n,
        ece,
        auroc: None,
    }
}

/// `log σ(x)`, stable for large |x|.
fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

/// Trains a preference model (the backbone with a scalar head) on a
/// `labels` table against the soft labels, holding out `held_out_share`
/// of the pairs for the report.
pub fn train_pm(
    job: &Job<'_>,
    labels: &Path,
    held_out_share: f64,
    progress: &mut dyn FnMut(&MetricRow, usize),
) -> Result<Outcome> {
    (Task::Pm {
        held_out: held_out_share,
    })
    .validate()?;
    let p = prepare(job)?;
    let (examples, input) = read_labels(labels)?;
    let (rows, skipped) = pair_rows(&p.formatter, &examples)?;
    let (test, train): (Vec<PairRow>, Vec<PairRow>) = rows
        .into_iter()
        .partition(|r| held_out(job.settings.seed, &r.id, held_out_share));
    if train.is_empty() {
        return Err(Error::Input(format!(
            "{}: no pairs left to train on after holding out {held_out_share}",
            labels.display()
        )));
    }
    let extra = Task::Pm {
        held_out: held_out_share,
    }
    .settings();
    let refs = vec![input];
    let fp = fingerprint("pm", job, &p.base, &refs, &extra);
    if let Some(done) = up_to_date(job.out, &fp) {
        return Ok(done);
    }
    let run = run_of(job, &fp);
    let model = PreferenceModel::new(trainable(job, &p.device)?, None)?;
    let objective = Pairwise {
        rows: &train,
        margins: Box::new(|model: &PreferenceModel, batch: &[usize]| {
            pm_margins(model, &train, batch)
        }),
    };
    match run.train(model, &objective, progress)? {
        Finished::Interrupted { step, checkpoint } => Ok(Outcome::Interrupted { step, checkpoint }),
        Finished::Done(model, metrics) => {
            let report = match test.is_empty() {
                true => None,
                false => Some(evaluate_pm(&model, &test, job.settings.batch_size)?),
            };
            let files = scalar_model_files(&model, &p.base)?;
            finish(
                job,
                &p,
                "pm",
                refs,
                extra,
                train.len(),
                skipped,
                model.backbone.to_tensors()?,
                &metrics,
                report,
                &files,
                &fp,
            )
        }
    }
}
