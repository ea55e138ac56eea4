//! The training loop shared by SFT, the preference model and DPO: seeded
//! order, length bucketing, gradient accumulation, the learning-rate
//! schedule, metrics, and checkpoints that resume bit for bit.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::heap::RetainedHeap;
use crate::lora::LoraSettings;
use crate::metrics::MetricRow;
use crate::{Error, Result};

/// Learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The peak rate throughout.
    Constant,
    /// Half a cosine from the peak rate down to zero at the last step.
    Cosine,
}

/// Settings every objective shares. They are recorded in the output and in
/// checkpoints; a resumed run must use the same ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    /// Passes over the examples.
    pub epochs: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Schedule after warm-up.
    pub schedule: Schedule,
    /// Steps of linear warm-up from 0 to `lr`.
    pub warmup_steps: usize,
    /// Examples per forward pass.
    pub batch_size: usize,
    /// Forward passes per optimizer step.
    pub grad_accum: usize,
    /// Tokens per conversation; longer ones are cut at the end.
    pub max_len: usize,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Seeds the example order.
    pub seed: u64,
    /// Steps between checkpoints (0: only on interruption).
    pub checkpoint_every: usize,
    /// Train low-rank adapters on frozen weights instead of every weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSettings>,
}

impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            epochs: 1,
            lr: 1e-5,
            schedule: Schedule::Cosine,
            warmup_steps: 0,
            batch_size: 4,
            grad_accum: 1,
            max_len: 512,
            weight_decay: 0.0,
            seed: 0,
            checkpoint_every: 50,
            lora: None,
        }
    }
}

impl TrainSettings {
    /// The peak learning rate used unless one is given: LoRA's adapters
    /// start from zero and need a larger step than full fine-tuning.
    pub fn default_lr(lora: bool) -> f64 {
        if lora { 2e-4 } else { 1e-5 }
    }

    /// Checks the values a user can get wrong.
    pub fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("epochs", self.epochs),
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
        ] {
            if value == 0 {
                return Err(Error::invalid(field, "must be at least 1"));
            }
        }
        if self.max_len < 2 {
            return Err(Error::invalid(
                "max_len",
                format!("must be at least 2, got {}", self.max_len),
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::invalid(
                "lr",
                format!("must be > 0, got {}", self.lr),
            ));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::invalid(
                "weight_decay",
                format!("must be >= 0, got {}", self.weight_decay),
            ));
        }
        if let Some(lora) = &self.lora {
            lora.validate()?;
        }
        Ok(())
    }

    /// Examples per optimizer step.
    pub fn step_examples(&self) -> usize {
        self.batch_size * self.grad_accum
    }

    /// The learning rate at 0-based `step` of `total`.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = (step - self.warmup_steps) as f64 / span;
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

/// What a training objective gives the loop.
pub trait Objective<M> {
    /// Number of examples.
    fn examples(&self) -> usize;
    /// The example's row id (seeds its place in the order).
    fn id(&self, i: usize) -> &str;
    /// Tokens the example puts through the model (for bucketing and tokens/s).
    fn tokens(&self, i: usize) -> usize;
    /// The example's share of the step's loss denominator (answer tokens
    /// for SFT, 1 per pair).
    fn weight(&self, i: usize) -> usize;
    /// The loss of examples `batch`, summed and divided by `denominator`,
    /// and, for pairwise objectives, (agreeing, leaning) label counts.
    fn loss(
        &self,
        model: &M,
        batch: &[usize],
        denominator: f64,
    ) -> Result<(Tensor<1>, Option<(usize, usize)>)>;
}

/// How a model is written into and read back from a checkpoint.
pub trait Checkpointed: Module + Sized {
    /// Writes the weights into `dir`.
    fn save(&self, dir: &Path) -> Result<()>;
    /// Reads the weights from `dir`, in place of `self`'s.
    fn load(self, dir: &Path) -> Result<Self>;
}

/// Where a run keeps its checkpoint: `<out>.checkpoint` beside the output.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    beside(out, ".checkpoint")
}

/// `out`'s path with `suffix` added to its name: where a run keeps what
/// belongs to it beside its output.
pub(crate) fn beside(out: &Path, suffix: &str) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    out.with_file_name(name)
}

/// The fingerprint and steps done of the checkpoint beside `out`, if there is one.
pub fn checkpoint_progress(out: &Path) -> Option<(String, usize)> {
    let state: State = read_json(&checkpoint_dir(out).join(STATE_FILE)).ok()?;
    Some((state.fingerprint, state.step))
}

/// A checkpoint's bookkeeping.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    /// Hash of everything that determines the run.
    fingerprint: String,
    /// Optimizer steps done.
    step: usize,
    /// Metrics so far.
    metrics: Vec<MetricRow>,
}

const STATE_FILE: &str = "state.json";
const OPTIMIZER_FILE: &str = "optimizer.bpk";

/// One training run.
pub struct Run<'a> {
    /// The settings.
    pub settings: &'a TrainSettings,
    /// The output directory (the checkpoint lives beside it).
    pub out: &'a Path,
    /// Hash of the inputs, base model, objective and settings.
    pub fingerprint: String,
    /// Continue from the checkpoint.
    pub resume: bool,
    /// Set (by a signal handler) to checkpoint and stop after the current step.
    pub interrupt: &'a AtomicBool,
}

/// Why a run returned.
pub enum Finished<M> {
    /// Every step done: the trained model and the metrics.
    Done(M, Vec<MetricRow>),
    /// Interrupted: a checkpoint was written after `step` steps.
    Interrupted {
        /// Steps done.
        step: usize,
        /// Where the checkpoint is.
        checkpoint: PathBuf,
    },
}

impl Run<'_> {
    /// Steps per epoch and in total for `n` examples.
    pub fn steps(&self, n: usize) -> (usize, usize) {
        let per_epoch = n.div_ceil(self.settings.step_examples());
        (per_epoch, per_epoch * self.settings.epochs)
    }

    /// Trains `model` on `objective`, calling `progress` after every step.
    pub fn train<M, O>(
        &self,
        mut model: M,
        objective: &O,
        progress: &mut dyn FnMut(&MetricRow, usize),
    ) -> Result<Finished<M>>
    where
        M: Checkpointed,
        O: Objective<M>,
    {
        let s = self.settings;
        s.validate()?;
        let _heap = RetainedHeap::enter();
        let n = objective.examples();
        if n == 0 {
            return Err(Error::Input("no examples to train on".to_string()));
        }
        let (per_epoch, total) = self.steps(n);
        let checkpoint = checkpoint_dir(self.out);
        let mut optimizer = crate::adamw::adamw(s.weight_decay as f32);
        let mut metrics = Vec::new();
        let mut start = 0;
        let (restored, restored_optimizer, state) = resume_from::<M, State>(
            self.out,
            self.resume,
            STATE_FILE,
            &self.fingerprint,
            |s| &s.fingerprint,
            model,
            optimizer,
        )?;
        (model, optimizer) = (restored, restored_optimizer);
        if let Some(state) = state {
            start = state.step;
            metrics = state.metrics;
        }

        let mut order: Option<(usize, Vec<usize>)> = None;
        let started = Instant::now();
        for step in start..total {
            let epoch = step / per_epoch;
            if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                order = Some((epoch, shuffled(objective, s.seed, epoch)));
            }
            let Some((_, indices)) = &order else {
                unreachable!("the order was just set")
            };
            let at = (step % per_epoch) * s.step_examples();
            let mut chunk: Vec<usize> = indices[at..(at + s.step_examples()).min(n)].to_vec();
            // Length bucketing within the step: similar lengths share a batch.
            chunk.sort_by_key(|&i| std::cmp::Reverse(objective.tokens(i)));
            let denominator = chunk.iter().map(|&i| objective.weight(i)).sum::<usize>();
            let denominator = denominator.max(1) as f64;

            let t0 = Instant::now();
            let mut accumulator = GradientsAccumulator::<M>::new();
            let mut loss_value = 0f64;
            let mut counts: Option<(usize, usize)> = None;
            for batch in chunk.chunks(s.batch_size) {
                let (loss, agree) = objective.loss(&model, batch, denominator)?;
                loss_value += f64::from(crate::loss::scalar(&loss)?);
                if let Some((a, l)) = agree {
                    let c = counts.get_or_insert((0, 0));
                    c.0 += a;
                    c.1 += l;
                }
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                accumulator.accumulate(&model, grads);
            }
            if !loss_value.is_finite() {
                return Err(Error::Diverged { step: step + 1 });
            }
            let lr = s.lr_at(step, total);
            model = step_optimizer(&mut optimizer, lr, model, accumulator.grads());
            let tokens: usize = chunk.iter().map(|&i| objective.tokens(i)).sum();
            let seconds = t0.elapsed().as_secs_f64();
            let row = MetricRow {
                step: (step + 1) as u64,
                epoch: (step + 1) as f64 / per_epoch as f64,
                loss: loss_value,
                lr,
                tokens: tokens as u64,
                tokens_per_s: tokens as f64 / seconds.max(1e-9),
                accuracy: counts.and_then(|(a, l)| (l > 0).then(|| a as f64 / l as f64)),
                elapsed_s: started.elapsed().as_secs_f64(),
            };
            progress(&row, total);
            metrics.push(row);

            let done = step + 1;
            let interrupted = self.interrupt.load(Ordering::SeqCst);
            let periodic = s.checkpoint_every > 0 && done % s.checkpoint_every == 0;
            if done < total && (interrupted || periodic) {
                self.save_checkpoint(&model, &optimizer, done, &metrics)?;
            }
            if interrupted && done < total {
                return Ok(Finished::Interrupted {
                    step: done,
                    checkpoint,
                });
            }
        }
        Ok(Finished::Done(model, metrics))
    }

    fn save_checkpoint<M: Checkpointed>(
        &self,
        model: &M,
        optimizer: &ModuleOptimizer,
        step: usize,
        metrics: &[MetricRow],
    ) -> Result<()> {
        let state = State {
            fingerprint: self.fingerprint.clone(),
            step,
            metrics: metrics.to_vec(),
        };
        let state = serde_json::to_string_pretty(&state)
            .map_err(|e| Error::Checkpoint(format!("{STATE_FILE}: {e}")))?
            + "\n";
        write_checkpoint(
            self.out,
            model,
            optimizer,
            &[
                ("metrics.parquet", crate::metrics::to_parquet(metrics)?),
                (STATE_FILE, state.into_bytes()),
            ],
        )
    }
}

/// Continues from the checkpoint beside `out`, if there is one: the model's
/// weights, the optimizer's state and the run's state (JSON in `file`).
/// A checkpoint without `resume`, or of another run (its state's
/// fingerprint, read by `fingerprint_of`, is not `fingerprint`), is an
/// error: nothing is overwritten.
pub(crate) fn resume_from<M: Checkpointed, T: serde::de::DeserializeOwned>(
    out: &Path,
    resume: bool,
    file: &str,
    fingerprint: &str,
    fingerprint_of: fn(&T) -> &str,
    model: M,
    optimizer: ModuleOptimizer,
) -> Result<(M, ModuleOptimizer, Option<T>)> {
    let checkpoint = checkpoint_dir(out);
    if !checkpoint.exists() {
        return Ok((model, optimizer, None));
    }
    if !resume {
        return Err(Error::Input(format!(
            "{}: an interrupted run's checkpoint is there; pass --resume to continue it, \
             or remove it to start over",
            checkpoint.display()
        )));
    }
    let state: T = read_json(&checkpoint.join(file))?;
    if fingerprint_of(&state) != fingerprint {
        return Err(Error::Input(format!(
            "{}: the checkpoint is of a different run (other inputs, base model or \
             settings); remove it to start over",
            checkpoint.display()
        )));
    }
    let model = model.load(&checkpoint)?;
    let optimizer = optimizer
        .load(checkpoint.join(OPTIMIZER_FILE))
        .map_err(|e| Error::Checkpoint(format!("{}: {e:?}", checkpoint.display())))?;
    Ok((model, optimizer, Some(state)))
}

/// Writes the checkpoint beside `out` — the model's weights, the optimizer's
/// state and `files` — into a temporary directory, then swaps it in whole.
pub(crate) fn write_checkpoint<M: Checkpointed>(
    out: &Path,
    model: &M,
    optimizer: &ModuleOptimizer,
    files: &[(&str, Vec<u8>)],
) -> Result<()> {
    let dir = checkpoint_dir(out);
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".checkpoint.")
        .suffix(".partial")
        .tempdir_in(parent)
        .map_err(|e| Error::io(parent, e))?;
    model.save(tmp.path())?;
    optimizer
        .save(tmp.path().join(OPTIMIZER_FILE))
        .map_err(|e| Error::Checkpoint(format!("{}: {e:?}", tmp.path().display())))?;
    for (name, bytes) in files {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
    }
    swap_in(tmp, &dir)
}

/// Puts the finished checkpoint `tmp` in place as `dir`; an old one is
/// removed only once the new one is in place.
fn swap_in(tmp: tempfile::TempDir, dir: &Path) -> Result<()> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let old = parent.join(format!(
        ".{}.old",
        dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, dir).map_err(|e| Error::io(dir, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// One optimizer step (a free function so the generic bound sits in one place).
fn step_optimizer<M: Module>(
    optimizer: &mut ModuleOptimizer,
    lr: f64,
    model: M,
    grads: GradientsParams,
) -> M {
    optimizer.step(lr, model, grads)
}

/// The example order of `epoch`: indices sorted by blake3 of (seed, epoch,
/// row id), a permutation that depends on the rows, not their file order.
fn shuffled<M, O: Objective<M>>(objective: &O, seed: u64, epoch: usize) -> Vec<usize> {
    hash_order(objective.examples(), |i, h| {
        h.update(&seed.to_le_bytes());
        h.update(&(epoch as u64).to_le_bytes());
        h.update(objective.id(i).as_bytes());
    })
}

/// The indices `0..n` sorted by blake3 of what `key` feeds the hasher for
/// each: a seeded permutation that depends on the rows' identities, not
/// their file order.
pub(crate) fn hash_order(n: usize, key: impl Fn(usize, &mut blake3::Hasher)) -> Vec<usize> {
    let mut keyed: Vec<([u8; 32], usize)> = (0..n)
        .map(|i| {
            let mut h = blake3::Hasher::new();
            key(i, &mut h);
            (*h.finalize().as_bytes(), i)
        })
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, i)| i).collect()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_reaches_zero() {
        let s = TrainSettings {
            lr: 1.0,
            warmup_steps: 2,
            ..TrainSettings::default()
        };
        let lrs: Vec<f64> = (0..6).map(|i| s.lr_at(i, 6)).collect();
        assert_eq!(&lrs[..3], &[0.5, 1.0, 1.0]);
        assert!(
            lrs[3] < 1.0 && lrs[4] < lrs[3] && lrs[5] < lrs[4],
            "{lrs:?}"
        );
        let constant = TrainSettings {
            schedule: Schedule::Constant,
            ..s
        };
        assert_eq!(constant.lr_at(5, 6), 1.0);
    }
}
