//! SFT: the answers of `revisions` (and `responses`) tables, loss on answer
//! tokens only (SL-CAI).

use std::path::PathBuf;

use super::{
    Job, Outcome, Task, adapter_files, fingerprint, finish, prepare, run_of, trainable, up_to_date,
};
use crate::data::{Tokens, read_sft};
use crate::loss::sft_loss;
use crate::metrics::MetricRow;
use crate::train::{Finished, Objective};
use crate::{Decoder, Result};

struct Sft {
    rows: Vec<(String, Tokens)>,
}

impl Objective<Decoder> for Sft {
    fn examples(&self) -> usize {
        self.rows.len()
    }
    fn id(&self, i: usize) -> &str {
        &self.rows[i].0
    }
    fn tokens(&self, i: usize) -> usize {
        self.rows[i].1.ids.len()
    }
    fn weight(&self, i: usize) -> usize {
        self.rows[i].1.answer_len()
    }
    fn loss(
        &self,
        model: &Decoder,
        batch: &[usize],
        denominator: f64,
    ) -> Result<(burn::tensor::Tensor<1>, Option<(usize, usize)>)> {
        let rows: Vec<&Tokens> = batch.iter().map(|&i| &self.rows[i].1).collect();
        Ok((sft_loss(model, &rows, denominator)?, None))
    }
}

/// Supervised fine-tuning on `revisions` (and `responses`) tables: the loss
/// covers answer tokens only.
pub fn train_sft(
    job: &Job<'_>,
    inputs: &[PathBuf],
    progress: &mut dyn FnMut(&MetricRow, usize),
) -> Result<Outcome> {
    let p = prepare(job)?;
    let (examples, refs) = read_sft(inputs)?;
    let mut rows = Vec::with_capacity(examples.len());
    let mut skipped = 0;
    for e in &examples {
        match p.formatter.encode(&e.prompt, &e.response, e.complete)? {
            Some(t) => rows.push((e.id.clone(), t)),
            None => skipped += 1,
        }
    }
    let extra = Task::Sft.settings();
    let fp = fingerprint("sft", job, &p.base, &refs, &extra);
    if let Some(done) = up_to_date(job.out, &fp) {
        return Ok(done);
    }
    let objective = Sft { rows };
    let run = run_of(job, &fp);
    let model = trainable(job, &p.device)?;
    match run.train(model, &objective, progress)? {
        Finished::Interrupted { step, checkpoint } => Ok(Outcome::Interrupted { step, checkpoint }),
        Finished::Done(model, metrics) => finish(
            job,
            &p,
            "sft",
            refs,
            extra,
            objective.rows.len(),
            skipped,
            model.to_tensors()?,
            &metrics,
            None,
            &adapter_files(&model, &p.base)?,
            &fp,
        ),
    }
}
