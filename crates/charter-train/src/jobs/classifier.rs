//! A constitutional classifier: the backbone with the preference model's
//! scalar head, fitted by cross-entropy to soft targets (`σ(score)` is
//! P(blocked)); held-out calibration and AUROC against the categories'
//! labels.
//!
//! An input guard reads the head at the last token of the user's turn. An
//! output guard reads it at every answer token, so it can stop a stream
//! as soon as a prefix scores over its threshold; it trains with
//! [`streaming_loss`]: each prefix is pulled towards the row's target and,
//! with weight [`STREAM_MAX_WEIGHT`], so is the row's highest prefix
//! score, which is what the guard acts on. (Sharma et al. 2025 train the
//! output classifier on a blend of the per-token prediction and its
//! cumulative maximum; this is that blend with a fixed weight.)

use std::path::Path;

use super::GuardRole;
use super::pm::held_out;
use super::{
    HeldOut, Job, Outcome, Task, fingerprint, finish, prepare, run_of, scalar_model_files,
    trainable, up_to_date,
};
use crate::data::{Formatter, Tokens, read_targets};
use crate::loss::{PreferenceModel, agreement, soft_pair_loss, streaming_loss};
use crate::metrics::MetricRow;
use crate::tensor::values;
use crate::train::{Finished, Objective};
use crate::{Error, Result};

/// A tokenised example.
struct Row {
    id: String,
    tokens: Tokens,
    target: f64,
    harmful: bool,
}

/// Weight of the highest prefix score in an output guard's loss; the
/// rest is the mean over every answer prefix.
pub(crate) const STREAM_MAX_WEIGHT: f64 = 0.5;

/// Tokenises the examples (an output guard's with their answers),
/// dropping those longer than `max_len`.
fn rows(
    formatter: &Formatter,
    role: GuardRole,
    examples: Vec<crate::data::ClassifierExample>,
    path: &Path,
) -> Result<(Vec<Row>, usize)> {
    let mut rows = Vec::with_capacity(examples.len());
    let mut skipped = 0;
    for (i, e) in examples.into_iter().enumerate() {
        let tokens = match (role, &e.answer) {
            (GuardRole::Input, _) => formatter.encode_prompt(&e.text)?,
            (GuardRole::Output, Some(answer)) => formatter.encode(&e.text, answer, false)?,
            (GuardRole::Output, None) => {
                return Err(Error::Input(format!(
                    "{}: row {}: no answer: an output guard trains on targets judged with \
                     their answers (`charter target -i RESPONSES --queries QUERIES`)",
                    path.display(),
                    i + 1
                )));
            }
        };
        match tokens {
            Some(tokens) => rows.push(Row {
                id: e.id,
                tokens,
                target: e.target,
                harmful: e.harmful,
            }),
            None => skipped += 1,
        }
    }
    Ok((rows, skipped))
}

/// The guard's score of each row of `batch`: the input guard's one score,
/// or the output guard's highest over the answer's prefixes.
fn scores(
    model: &PreferenceModel,
    role: GuardRole,
    rows: &[Row],
    batch: &[usize],
) -> Result<Vec<f32>> {
    let tokens: Vec<&Tokens> = batch.iter().map(|&i| &rows[i].tokens).collect();
    match role {
        GuardRole::Input => values(model.scores(&tokens)?.into_data()),
        GuardRole::Output => Ok(model
            .answer_prefix_scores(&tokens)?
            .iter()
            .map(|z| z.iter().copied().fold(f32::NEG_INFINITY, f32::max))
            .collect()),
    }
}

/// Cross-entropy of `σ(score)` against each row's soft target (for an
/// output guard, of every answer prefix's score and of the highest).
struct Pointwise<'r> {
    role: GuardRole,
    rows: &'r [Row],
}

impl Objective<PreferenceModel> for Pointwise<'_> {
    fn examples(&self) -> usize {
        self.rows.len()
    }
    fn id(&self, i: usize) -> &str {
        &self.rows[i].id
    }
    fn tokens(&self, i: usize) -> usize {
        self.rows[i].tokens.ids.len()
    }
    fn weight(&self, _: usize) -> usize {
        1
    }
    fn loss(
        &self,
        model: &PreferenceModel,
        batch: &[usize],
        denominator: f64,
    ) -> Result<(burn::tensor::Tensor<1>, Option<(usize, usize)>)> {
        let p: Vec<f64> = batch.iter().map(|&i| self.rows[i].target).collect();
        let tokens: Vec<&Tokens> = batch.iter().map(|&i| &self.rows[i].tokens).collect();
        match self.role {
            GuardRole::Input => {
                let z = model.scores(&tokens)?;
                let agree = agreement(&values(z.clone().into_data())?, &p);
                Ok((soft_pair_loss(z, &p, denominator), Some(agree)))
            }
            GuardRole::Output => {
                let z = model.prefix_scores(&tokens)?;
                let width = z.dims()[1];
                let all = values(z.clone().into_data())?;
                let highest: Vec<f32> = tokens
                    .iter()
                    .enumerate()
                    .map(|(r, t)| {
                        all[r * width + t.prompt_len..r * width + t.ids.len()]
                            .iter()
                            .copied()
                            .fold(f32::NEG_INFINITY, f32::max)
                    })
                    .collect();
                let loss = streaming_loss(z, &tokens, &p, STREAM_MAX_WEIGHT, denominator);
                Ok((loss, Some(agreement(&highest, &p))))
            }
        }
    }
}

/// Area under the ROC curve of `scores` for telling `positive` rows from
/// the rest (ties count half); `None` without rows of both kinds.
pub fn auroc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Mann–Whitney U from mid-ranks.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += order[i..=j].iter().filter(|&&k| positive[k]).count() as f64 * mid;
        i = j + 1;
    }
    let pos = positive.iter().filter(|&&p| p).count() as f64;
    let neg = positive.len() as f64 - pos;
    (pos > 0.0 && neg > 0.0).then(|| (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

fn evaluate(
    model: &PreferenceModel,
    role: GuardRole,
    rows: &[Row],
    batch_size: usize,
) -> Result<HeldOut> {
    let mut z = Vec::with_capacity(rows.len());
    let indices: Vec<usize> = (0..rows.len()).collect();
    for batch in indices.chunks(batch_size.max(1)) {
        z.extend(scores(model, role, rows, batch)?);
    }
    let p: Vec<f64> = rows.iter().map(|r| r.target).collect();
    let mut report = super::calibration(&z, &p);
    let z: Vec<f64> = z.into_iter().map(f64::from).collect();
    let harmful: Vec<bool> = rows.iter().map(|r| r.harmful).collect();
    report.auroc = auroc(&z, &harmful);
    Ok(report)
}

/// Trains an input or output guard on a `targets` table, holding out
/// `held_out_share` of the rows for the report.
pub fn train_classifier(
    job: &Job<'_>,
    targets: &Path,
    role: GuardRole,
    held_out_share: f64,
    label_weight: f64,
    progress: &mut dyn FnMut(&MetricRow, usize),
) -> Result<Outcome> {
    let task = Task::Classifier {
        role,
        held_out: held_out_share,
        label_weight,
    };
    task.validate()?;
    let p = prepare(job)?;
    let (examples, input) = read_targets(targets, label_weight)?;
    let (rows, skipped) = rows(&p.formatter, role, examples, targets)?;
    let (test, train): (Vec<Row>, Vec<Row>) = rows
        .into_iter()
        .partition(|r| held_out(job.settings.seed, &r.id, held_out_share));
    if train.is_empty() {
        return Err(Error::Input(format!(
            "{}: no rows left to train on after holding out {held_out_share}",
            targets.display()
        )));
    }
    let refs = vec![input];
    let extra = task.settings();
    let fp = fingerprint(task.name(), job, &p.base, &refs, &extra);
    if let Some(done) = up_to_date(job.out, &fp) {
        return Ok(done);
    }
    let run = run_of(job, &fp);
    let model = PreferenceModel::new(trainable(job, &p.device)?, None)?;
    match run.train(model, &Pointwise { role, rows: &train }, progress)? {
        Finished::Interrupted { step, checkpoint } => Ok(Outcome::Interrupted { step, checkpoint }),
        Finished::Done(model, metrics) => {
            let report = match test.is_empty() {
                true => None,
                false => Some(evaluate(&model, role, &test, job.settings.batch_size)?),
            };
            let files = scalar_model_files(&model, &p.base)?;
            finish(
                job,
                &p,
                task.name(),
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

#[cfg(test)]
mod tests {
    use super::auroc;

    #[test]
    fn auroc_counts_ordered_pairs_and_half_the_ties() {
        assert_eq!(
            auroc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            Some(1.0)
        );
        assert_eq!(
            auroc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]),
            Some(0.0)
        );
        assert_eq!(auroc(&[0.5, 0.5], &[true, false]), Some(0.5));
        // Pairs (pos, neg): (0.4, 0.1) win, (0.4, 0.6) lose, (0.7, 0.1) win, (0.7, 0.6) win.
        assert_eq!(
            auroc(&[0.1, 0.4, 0.6, 0.7], &[false, true, false, true]),
            Some(0.75)
        );
        assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
    }
}
