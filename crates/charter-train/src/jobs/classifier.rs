//! A constitutional classifier's input guard: the backbone with the
//! preference model's scalar head, read at the last token of the user's
//! turn, fitted by cross-entropy to soft targets (`σ(score)` is
//! P(blocked)); held-out calibration and AUROC against the categories'
//! labels.

use std::path::Path;

use super::pm::held_out;
use super::{
    HeldOut, Job, Outcome, Task, fingerprint, finish, prepare, run_of, scalar_model_files,
    trainable, up_to_date,
};
use crate::data::{Formatter, Tokens, read_targets};
use crate::loss::{PreferenceModel, agreement, soft_pair_loss};
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

/// Tokenises the examples, dropping those longer than `max_len`.
fn rows(
    formatter: &Formatter,
    examples: Vec<crate::data::ClassifierExample>,
) -> Result<(Vec<Row>, usize)> {
    let mut rows = Vec::with_capacity(examples.len());
    let mut skipped = 0;
    for e in examples {
        let tokens = match &e.answer {
            None => formatter.encode_prompt(&e.text)?,
            Some(answer) => formatter.encode(&e.text, answer, false)?,
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

fn scores(
    model: &PreferenceModel,
    rows: &[Row],
    batch: &[usize],
) -> Result<burn::tensor::Tensor<1>> {
    let tokens: Vec<&Tokens> = batch.iter().map(|&i| &rows[i].tokens).collect();
    model.scores(&tokens)
}

/// Cross-entropy of `σ(score)` against each row's soft target.
struct Pointwise<'r> {
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
        let z = scores(model, self.rows, batch)?;
        let p: Vec<f64> = batch.iter().map(|&i| self.rows[i].target).collect();
        let agree = agreement(&values(z.clone().into_data())?, &p);
        Ok((soft_pair_loss(z, &p, denominator), Some(agree)))
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

fn evaluate(model: &PreferenceModel, rows: &[Row], batch_size: usize) -> Result<HeldOut> {
    let mut z = Vec::with_capacity(rows.len());
    let indices: Vec<usize> = (0..rows.len()).collect();
    for batch in indices.chunks(batch_size.max(1)) {
        z.extend(values(scores(model, rows, batch)?.into_data())?);
    }
    let p: Vec<f64> = rows.iter().map(|r| r.target).collect();
    let mut report = super::calibration(&z, &p);
    let z: Vec<f64> = z.into_iter().map(f64::from).collect();
    let harmful: Vec<bool> = rows.iter().map(|r| r.harmful).collect();
    report.auroc = auroc(&z, &harmful);
    Ok(report)
}

/// Trains an input guard on a `targets` table, holding out
/// `held_out_share` of the rows for the report.
pub fn train_classifier(
    job: &Job<'_>,
    targets: &Path,
    held_out_share: f64,
    label_weight: f64,
    progress: &mut dyn FnMut(&MetricRow, usize),
) -> Result<Outcome> {
    let task = Task::Classifier {
        held_out: held_out_share,
        label_weight,
    };
    task.validate()?;
    let p = prepare(job)?;
    let (examples, input) = read_targets(targets, label_weight)?;
    let (rows, skipped) = rows(&p.formatter, examples)?;
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
    match run.train(model, &Pointwise { rows: &train }, progress)? {
        Finished::Interrupted { step, checkpoint } => Ok(Outcome::Interrupted { step, checkpoint }),
        Finished::Done(model, metrics) => {
            let report = match test.is_empty() {
                true => None,
                false => Some(evaluate(&model, &test, job.settings.batch_size)?),
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
