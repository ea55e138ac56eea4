//! The three training jobs end to end: read the table, tokenise, train,
//! write a complete model directory with a record of what built it.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use burn::tensor::Device;
use charter_model::{
    Dtype, ModelDir, OutputLock, SafetensorsFile, SafetensorsWriter, Tensors, claim_trained_output,
    write_trained,
};
use charter_table::InputRef;
use serde::Serialize;

use crate::data::Formatter;
use crate::loss::PreferenceModel;
use crate::metrics::MetricRow;
use crate::train::{Checkpointed, Run, TrainSettings};
use crate::{Decoder, DeviceChoice, Error, Result};

mod classifier;
mod dpo;
mod pairs;
mod pm;
mod rl;
mod sft;

pub(crate) use classifier::STREAM_MAX_WEIGHT;
pub use classifier::{auroc, train_classifier};
pub use dpo::train_dpo;
pub(crate) use pm::held_out;
pub use pm::{calibration, train_pm};
pub use rl::{
    EvalRow, IterationRow, RewardSource, RlProgress, RlSettings, rl_fingerprint, rloo_advantages,
    train_rl,
};
pub use sft::train_sft;

/// What every job takes.
pub struct Job<'a> {
    /// The model directory to start from.
    pub model: &'a Path,
    /// The output model directory.
    pub out: &'a Path,
    /// Loop settings.
    pub settings: TrainSettings,
    /// Where to train.
    pub device: DeviceChoice,
    /// Weight type of the output's generation graph.
    pub dtype: Dtype,
    /// Continue an interrupted run from its checkpoint.
    pub resume: bool,
    /// Set to checkpoint and stop after the current step.
    pub interrupt: &'a AtomicBool,
}

/// The record of a training run, written as `charter-train.json` into the
/// output directory.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    /// `sft`, `pm`, `dpo` or `classifier`.
    pub objective: &'static str,
    /// The model trained from: its name and content hash.
    pub base_model: InputRef,
    /// Input tables by name and content hash.
    pub inputs: Vec<InputRef>,
    /// Loop settings.
    pub settings: TrainSettings,
    /// Objective settings (DPO's β, the PM's held-out share).
    pub objective_settings: serde_json::Value,
    /// The device trained on.
    pub device: String,
    /// Examples trained on.
    pub examples: usize,
    /// Rows dropped because the prompt alone filled `max_len`.
    pub skipped: usize,
    /// Optimizer steps.
    pub steps: usize,
    /// Mean loss of the last step.
    pub final_loss: f64,
    /// PM: evaluation on the held-out labels.
    pub held_out: Option<HeldOut>,
    /// The charter release.
    pub created_by: String,
    /// blake3 over what determines the result (objective, base model,
    /// inputs, settings, output dtype): a rerun with the same one is up to date.
    pub fingerprint: String,
}

/// A preference model's quality on held-out labels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct HeldOut {
    /// Held-out pairs.
    pub pairs: usize,
    /// Share of leaning labels (`p_a ≠ 0.5`) whose side the PM picks.
    pub accuracy: f64,
    /// Mean soft cross-entropy against `p_a`.
    pub loss: f64,
    /// Mean squared gap between σ(score_a − score_b) and `p_a`.
    pub brier: f64,
    /// Expected calibration error over 10 equal-width bins of σ(score_a − score_b).
    pub ece: f64,
    /// A classifier's area under the ROC curve against its rows' category labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auroc: Option<f64>,
}

/// How a job ended.
pub enum Outcome {
    /// The model directory is written.
    Written {
        /// The new model directory.
        dir: Box<ModelDir>,
        /// What built it.
        report: Box<TrainReport>,
    },
    /// The output already holds this run's result (same fingerprint).
    UpToDate {
        /// The model directory.
        dir: Box<ModelDir>,
        /// Its `charter-train.json`.
        record: serde_json::Value,
    },
    /// Interrupted after `step` steps; `--resume` continues from `checkpoint`.
    Interrupted {
        /// Steps done.
        step: usize,
        /// The checkpoint directory.
        checkpoint: PathBuf,
    },
}

const WEIGHTS: &str = "weights.safetensors";
const SCORE_FILE: &str = "score.safetensors";
const REPORT_FILE: &str = "charter-train.json";

fn read_tensors(path: &Path) -> Result<Tensors> {
    Ok(SafetensorsFile::open(path)?.read_all()?)
}

fn write_tensors(path: &Path, tensors: &Tensors) -> Result<()> {
    let mut w = SafetensorsWriter::create(path)?;
    for (name, (shape, values)) in tensors {
        w.push(name, shape, values)?;
    }
    Ok(w.finish(&[("format", "pt")])?)
}

/// A safetensors file's bytes.
fn tensor_bytes(tensors: &Tensors) -> Result<Vec<u8>> {
    let tmp = tempfile::NamedTempFile::new().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    write_tensors(tmp.path(), tensors)?;
    std::fs::read(tmp.path()).map_err(|e| Error::io(tmp.path(), e))
}

// A checkpoint holds what training changes: every weight, or with LoRA only
// the adapters (the frozen weights come from the base model again).
impl Checkpointed for Decoder {
    fn save(&self, dir: &Path) -> Result<()> {
        write_tensors(&dir.join(WEIGHTS), &self.trainable_tensors()?)
    }

    fn load(self, dir: &Path) -> Result<Self> {
        self.restore(&read_tensors(&dir.join(WEIGHTS))?)
    }
}

impl Checkpointed for PreferenceModel {
    fn save(&self, dir: &Path) -> Result<()> {
        let mut tensors = self.backbone.trainable_tensors()?;
        let h = self.backbone.config().hidden_size;
        tensors.insert("score.weight".into(), (vec![1, h], self.score_values()?));
        write_tensors(&dir.join(WEIGHTS), &tensors)
    }

    fn load(self, dir: &Path) -> Result<Self> {
        let mut tensors = read_tensors(&dir.join(WEIGHTS))?;
        let (_, score) = tensors
            .remove("score.weight")
            .ok_or_else(|| Error::MissingWeight("score.weight".into()))?;
        let backbone = self.backbone.restore(&tensors)?;
        PreferenceModel::new(backbone, Some(score))
    }
}

/// The model a job trains: the base model, with adapters when the settings
/// ask for LoRA (seeded by the run's seed).
fn trainable(job: &Job<'_>, device: &Device) -> Result<Decoder> {
    let model = Decoder::open(job.model, device)?;
    match job.settings.lora {
        Some(lora) => model.with_lora(lora, job.settings.seed),
        None => Ok(model),
    }
}

/// With LoRA, the adapters alone in PEFT's layout (`adapter/adapter_model.safetensors`
/// and `adapter/adapter_config.json`) to write beside the merged weights.
/// They sit in a subdirectory so that no second `*.safetensors` file lies
/// beside `model.safetensors`.
fn adapter_files(model: &Decoder, base: &ModelDir) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let Some(lora) = model.lora() else {
        return Ok(Vec::new());
    };
    let config = crate::lora::peft_config(&lora, &base.provenance.name);
    let config = serde_json::to_vec_pretty(&config)
        .map_err(|e| Error::Data(format!("adapter config: {e}")))?;
    Ok(vec![
        (
            "adapter/adapter_model.safetensors",
            tensor_bytes(&model.adapter_tensors()?)?,
        ),
        ("adapter/adapter_config.json", config),
    ])
}

/// What a model with a scalar head writes beside its weights: the head
/// (`score.safetensors`) and, with LoRA, the adapters.
fn scalar_model_files(
    model: &PreferenceModel,
    base: &ModelDir,
) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let h = model.backbone.config().hidden_size;
    let mut score = Tensors::new();
    score.insert("score.weight".into(), (vec![1, h], model.score_values()?));
    let mut files = vec![(SCORE_FILE, tensor_bytes(&score)?)];
    files.extend(adapter_files(&model.backbone, base)?);
    Ok(files)
}

/// A preference model directory's score head, `[hidden]` values.
pub fn read_score_head(dir: &Path) -> Result<Vec<f32>> {
    let mut tensors = read_tensors(&dir.join(SCORE_FILE))?;
    tensors
        .remove("score.weight")
        .map(|(_, v)| v)
        .ok_or_else(|| Error::MissingWeight(format!("score.weight in {}", dir.display())))
}

/// Opens a preference model directory written by [`train_pm`].
pub fn open_preference_model(dir: &Path, device: &Device) -> Result<PreferenceModel> {
    let backbone = Decoder::open(dir, device)?;
    PreferenceModel::new(backbone, Some(read_score_head(dir)?))
}

/// blake3 over the job's identity: objective, base model, inputs, settings
/// and the output's dtype.
fn fingerprint(
    objective: &str,
    job: &Job<'_>,
    base: &ModelDir,
    inputs: &[InputRef],
    extra: &serde_json::Value,
) -> String {
    let json = serde_json::json!({
        "objective": objective,
        "base": base.provenance.content_hash,
        "inputs": inputs,
        "settings": job.settings,
        "extra": extra,
        "dtype": job.dtype.as_str(),
    });
    blake3::hash(json.to_string().as_bytes())
        .to_hex()
        .to_string()
}

/// The output, if it is a finished run with this fingerprint.
fn up_to_date(out: &Path, fingerprint: &str) -> Option<Outcome> {
    let text = std::fs::read_to_string(out.join(REPORT_FILE)).ok()?;
    let record: serde_json::Value = serde_json::from_str(&text).ok()?;
    if record["fingerprint"] != fingerprint {
        return None;
    }
    let dir = ModelDir::open(out).ok()?;
    Some(Outcome::UpToDate {
        dir: Box::new(dir),
        record,
    })
}

/// The loop for `job`, checkpointing under `fingerprint`.
fn run_of<'a>(job: &'a Job<'_>, fingerprint: &str) -> Run<'a> {
    Run {
        settings: &job.settings,
        out: job.out,
        fingerprint: fingerprint.to_string(),
        resume: job.resume,
        interrupt: job.interrupt,
    }
}

/// Pieces every job computes the same way.
struct Prepared {
    base: ModelDir,
    device: Device,
    /// The device in words, for the report.
    device_name: String,
    formatter: Formatter,
    /// The output, claimed for the whole run; taken when the result is written.
    claim: std::cell::Cell<Option<OutputLock>>,
}

fn prepare(job: &Job<'_>) -> Result<Prepared> {
    job.settings.validate()?;
    // Before any training, and held until the result is in place: no other
    // process writes the output meanwhile, and the result may replace an
    // earlier run's model directory, never a file or a directory charter
    // did not write.
    let claim = claim_trained_output(job.out)?;
    let base = ModelDir::open(job.model)?;
    let selected = crate::device::select(job.device, true)?;
    let formatter = Formatter::new(&base, job.settings.max_len)?;
    Ok(Prepared {
        base,
        device: selected.device,
        device_name: selected.description,
        formatter,
        claim: std::cell::Cell::new(Some(claim)),
    })
}

#[allow(clippy::too_many_arguments)]
fn finish(
    job: &Job<'_>,
    prepared: &Prepared,
    objective: &'static str,
    inputs: Vec<InputRef>,
    objective_settings: serde_json::Value,
    examples: usize,
    skipped: usize,
    tensors: Tensors,
    metrics: &[MetricRow],
    held_out: Option<HeldOut>,
    extra: &[(&str, Vec<u8>)],
    fingerprint: &str,
) -> Result<Outcome> {
    let report = TrainReport {
        objective,
        base_model: InputRef {
            name: prepared.base.provenance.name.clone(),
            content_hash: prepared.base.provenance.content_hash.clone(),
        },
        inputs,
        settings: job.settings.clone(),
        objective_settings,
        device: prepared.device_name.clone(),
        examples,
        skipped,
        steps: metrics.len(),
        final_loss: metrics.last().map_or(f64::NAN, |m| m.loss),
        held_out,
        created_by: concat!("charter ", env!("CARGO_PKG_VERSION")).to_string(),
        fingerprint: fingerprint.to_string(),
    };
    let record = serde_json::to_vec_pretty(&report)
        .map_err(|e| Error::Data(format!("training record: {e}")))?;
    let metrics = crate::metrics::to_parquet(metrics)?;
    let mut files: Vec<(&str, &[u8])> = vec![
        (REPORT_FILE, record.as_slice()),
        ("metrics.parquet", metrics.as_slice()),
    ];
    files.extend(extra.iter().map(|(n, b)| (*n, b.as_slice())));
    let name = job
        .out
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lock = prepared.claim.take().ok_or_else(|| {
        Error::Data(format!(
            "{}: the output was already written by this run",
            job.out.display()
        ))
    })?;
    let dir = write_trained(lock, &prepared.base, &tensors, job.dtype, name, &files)?;
    let checkpoint = crate::train::checkpoint_dir(job.out);
    if checkpoint.exists() {
        std::fs::remove_dir_all(&checkpoint).map_err(|e| Error::io(&checkpoint, e))?;
    }
    Ok(Outcome::Written {
        dir: Box::new(dir),
        report: Box::new(report),
    })
}

// ---------------------------------------------------------------- planning

/// What a constitutional classifier guards.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum GuardRole {
    /// The user's message, before the model answers: one score, read at
    /// the end of the user's turn.
    Input,
    /// The answer as it is generated: a score at every answer token, and
    /// the stream stops at the first one over the threshold.
    Output,
}

impl GuardRole {
    /// `input` or `output`.
    pub fn as_str(self) -> &'static str {
        match self {
            GuardRole::Input => "input",
            GuardRole::Output => "output",
        }
    }
}

/// A training job by objective, with its objective's own setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Task {
    /// Supervised fine-tuning on revisions/responses tables.
    Sft,
    /// A preference model on labels, holding out this share for evaluation.
    Pm {
        /// Share of pairs held out.
        held_out: f64,
    },
    /// DPO on labels.
    Dpo {
        /// The KL weight β.
        beta: f64,
    },
    /// A constitutional classifier's guard on targets.
    Classifier {
        /// What it reads: the user's message, or the answer as it streams.
        role: GuardRole,
        /// Share of rows held out.
        held_out: f64,
        /// Weight of the category label in the target (the rest is the labeller's).
        label_weight: f64,
    },
    /// Online RL on prompts; its settings are an [`RlSettings`] and it runs
    /// with [`train_rl`].
    Rl,
}

impl Task {
    /// The preference model's held-out share unless one is given.
    pub const DEFAULT_HELD_OUT: f64 = 0.1;
    /// DPO's β unless one is given.
    pub const DEFAULT_BETA: f64 = 0.1;
    /// A classifier's weight of the category label in its target unless one
    /// is given: half, since a small labeller's P(blocked) alone can sit
    /// near chance (SmolLM2-135M: AUROC 0.44 on its own queries).
    pub const DEFAULT_LABEL_WEIGHT: f64 = 0.5;

    /// `sft`, `pm` or `dpo`.
    pub fn name(self) -> &'static str {
        match self {
            Task::Sft => "sft",
            Task::Pm { .. } => "pm",
            Task::Dpo { .. } => "dpo",
            Task::Classifier { .. } => "classifier",
            Task::Rl => "rl",
        }
    }

    /// The objective's own settings, as recorded in `objective_settings`.
    pub fn settings(self) -> serde_json::Value {
        match self {
            Task::Sft | Task::Rl => serde_json::json!({}),
            Task::Pm { held_out } => serde_json::json!({ "held_out": held_out }),
            Task::Dpo { beta } => serde_json::json!({ "beta": beta }),
            Task::Classifier {
                role,
                held_out,
                label_weight,
            } => serde_json::json!({
                "role": role.as_str(),
                "held_out": held_out,
                "label_weight": label_weight,
            }),
        }
    }

    /// Checks the objective's own setting; the error names it.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Task::Sft | Task::Rl => Ok(()),
            Task::Pm { held_out } | Task::Classifier { held_out, .. }
                if !(0.0..1.0).contains(&held_out) =>
            {
                Err(Error::invalid(
                    "held_out",
                    format!("must be in [0, 1), got {held_out}"),
                ))
            }
            Task::Classifier { label_weight, .. } if !(0.0..=1.0).contains(&label_weight) => {
                Err(Error::invalid(
                    "label_weight",
                    format!("must be in [0, 1], got {label_weight}"),
                ))
            }
            Task::Dpo { beta } if !(beta > 0.0 && beta.is_finite()) => {
                Err(Error::invalid("beta", format!("must be > 0, got {beta}")))
            }
            Task::Pm { .. } | Task::Dpo { .. } | Task::Classifier { .. } => Ok(()),
        }
    }
}

/// Runs `task` on `inputs` (SFT reads every table; PM and DPO one labels
/// table). `cache_dir` holds DPO's reference log-probabilities.
pub fn run_task(
    task: Task,
    job: &Job<'_>,
    inputs: &[PathBuf],
    cache_dir: &Path,
    progress: &mut dyn FnMut(&MetricRow, usize),
) -> Result<Outcome> {
    let one = || match inputs {
        [one] => Ok(one.as_path()),
        _ => Err(Error::Input(format!(
            "{} trains on one labels table, got {}",
            task.name(),
            inputs.len()
        ))),
    };
    match task {
        Task::Sft => train_sft(job, inputs, progress),
        Task::Pm { held_out } => train_pm(job, one()?, held_out, progress),
        Task::Dpo { beta } => train_dpo(job, one()?, beta, cache_dir, progress),
        Task::Classifier {
            role,
            held_out,
            label_weight,
        } => train_classifier(job, one()?, role, held_out, label_weight, progress),
        Task::Rl => Err(rl_needs_settings()),
    }
}

fn rl_needs_settings() -> Error {
    Error::Input("online RL runs with `train_rl`: it needs its reward's settings".into())
}

/// The fingerprint a run of `task` on `inputs` would record, computed from
/// the base model's and the tables' recorded hashes without reading any row:
/// equal to a finished output's [`recorded_fingerprint`] exactly when that
/// output is up to date.
pub fn task_fingerprint(task: Task, job: &Job<'_>, inputs: &[PathBuf]) -> Result<String> {
    if task == Task::Rl {
        return Err(rl_needs_settings());
    }
    let base = ModelDir::open(job.model)?;
    let refs = inputs
        .iter()
        .map(|p| crate::data::input_ref(p, &charter_table::TableFile::open(p)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(fingerprint(
        task.name(),
        job,
        &base,
        &refs,
        &task.settings(),
    ))
}

/// The fingerprint recorded in a finished training output, if `out` is one.
pub fn recorded_fingerprint(out: &Path) -> Option<String> {
    let text = std::fs::read_to_string(out.join(REPORT_FILE)).ok()?;
    let record: serde_json::Value = serde_json::from_str(&text).ok()?;
    record["fingerprint"].as_str().map(str::to_string)
}

/// The record (`charter-train.json`) of a finished training output.
pub fn read_report(out: &Path) -> Result<serde_json::Value> {
    let path = out.join(REPORT_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Data(format!("{}: {e}", path.display())))
}

/// Where DPO's reference log-probabilities are cached unless told otherwise:
/// `$XDG_CACHE_HOME/charter/dpo-reference`, else `~/.cache/charter/dpo-reference`.
pub fn default_reference_cache() -> Result<PathBuf> {
    default_cache("dpo-reference", "reference")
}

/// Where online RL's rewards are cached unless told otherwise:
/// `$XDG_CACHE_HOME/charter/rewards`, else `~/.cache/charter/rewards`.
pub fn default_reward_cache() -> Result<PathBuf> {
    default_cache("rewards", "reward")
}

/// `charter/<name>` under the user's cache directory; `what` names the
/// cache in the error when there is none.
fn default_cache(name: &str, what: &str) -> Result<PathBuf> {
    let base = match (std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME")) {
        (Some(x), _) if !x.is_empty() => PathBuf::from(x),
        (_, Some(home)) => PathBuf::from(home).join(".cache"),
        _ => {
            return Err(Error::Input(format!(
                "neither XDG_CACHE_HOME nor HOME is set: name a {what} cache directory"
            )));
        }
    };
    Ok(base.join("charter").join(name))
}
