//! What a user sets for a training run, as one struct: the `train`
//! commands' flags and a build file's `train` stage are both
//! [`TrainConfig`], so a setting, its default and its check live here and
//! nowhere else.

use charter_model::Dtype;
use serde::Deserialize;

use crate::device::DeviceChoice;
use crate::jobs::{GuardRole, Task};
use crate::lora::LoraSettings;
use crate::train::{Schedule, TrainSettings};
use crate::{Error, Result};

/// A training run's settings as given: [`TrainConfig::settings`] resolves
/// and checks them.
#[derive(Debug, Clone, PartialEq, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the examples.
    #[arg(long, value_name = "N", default_value_t = TrainConfig::default().epochs)]
    pub epochs: usize,
    /// Peak learning rate [default: 1e-5, or 2e-4 with --lora-rank].
    #[arg(long, value_name = "LR")]
    pub lr: Option<f64>,
    /// Schedule after warm-up.
    #[arg(long, value_enum, default_value_t = TrainConfig::default().schedule)]
    pub schedule: Schedule,
    /// Steps of linear warm-up.
    #[arg(long, value_name = "N", default_value_t = TrainConfig::default().warmup_steps)]
    pub warmup_steps: usize,
    /// Examples per forward pass (a preference pair counts once).
    #[arg(long, value_name = "B", default_value_t = TrainConfig::default().batch_size)]
    pub batch_size: usize,
    /// Forward passes per optimizer step.
    #[arg(long, value_name = "N", default_value_t = TrainConfig::default().grad_accum)]
    pub grad_accum: usize,
    /// Tokens per conversation (prompt and answer); longer answers are cut.
    #[arg(long, value_name = "N", default_value_t = TrainConfig::default().max_len)]
    pub max_len: usize,
    /// AdamW weight decay.
    #[arg(long, value_name = "W", default_value_t = TrainConfig::default().weight_decay)]
    pub weight_decay: f64,
    /// Seeds the example order (and the preference model's held-out split).
    /// (A build file sets it in `[build]` or the stage's `seed`.)
    #[serde(skip)]
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Steps between checkpoints (0: only on Ctrl-C).
    #[arg(long, value_name = "N", default_value_t = TrainConfig::default().checkpoint_every)]
    pub checkpoint_every: usize,
    /// Train rank-R LoRA adapters on every block's projections, with every
    /// other weight frozen; the output has them merged in (and alone in
    /// DIR/adapter, PEFT's layout).
    #[arg(long, value_name = "R")]
    pub lora_rank: Option<usize>,
    /// LoRA scale numerator: updates are scaled by ALPHA / R [default: R].
    #[arg(long, value_name = "ALPHA", requires = "lora_rank")]
    pub lora_alpha: Option<f64>,
    /// Where to train.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Weight type of the output's generation graph (training itself is f32).
    #[arg(long, value_enum, default_value_t = Dtype::Int8)]
    pub dtype: Dtype,
}

impl Default for TrainConfig {
    fn default() -> Self {
        let d = TrainSettings::default();
        TrainConfig {
            epochs: d.epochs,
            lr: None,
            schedule: d.schedule,
            warmup_steps: d.warmup_steps,
            batch_size: d.batch_size,
            grad_accum: d.grad_accum,
            max_len: d.max_len,
            weight_decay: d.weight_decay,
            seed: d.seed,
            checkpoint_every: d.checkpoint_every,
            lora_rank: None,
            lora_alpha: None,
            device: DeviceChoice::Auto,
            dtype: Dtype::Int8,
        }
    }
}

impl TrainConfig {
    /// The loop's settings, defaults filled in and checked; the error
    /// names the setting.
    pub fn settings(&self) -> Result<TrainSettings> {
        let lora = match (self.lora_rank, self.lora_alpha) {
            (Some(rank), alpha) => Some(LoraSettings {
                rank,
                alpha: alpha.unwrap_or(rank as f64),
            }),
            (None, Some(_)) => {
                return Err(Error::invalid(
                    "lora_alpha",
                    "scales LoRA adapters: set `lora_rank` too",
                ));
            }
            (None, None) => None,
        };
        let settings = TrainSettings {
            epochs: self.epochs,
            lr: self
                .lr
                .unwrap_or_else(|| TrainSettings::default_lr(lora.is_some())),
            schedule: self.schedule,
            warmup_steps: self.warmup_steps,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            max_len: self.max_len,
            weight_decay: self.weight_decay,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            lora,
        };
        settings.validate()?;
        Ok(settings)
    }
}

/// The training objectives, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Supervised fine-tuning.
    Sft,
    /// A preference model.
    Pm,
    /// DPO.
    Dpo,
    /// A constitutional classifier's input guard.
    Classifier,
    /// Online RL (its settings are [`RlSettings`](crate::RlSettings)).
    Rl,
}

/// A training objective and its own setting, as a build file gives them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskConfig {
    /// `sft`, `pm`, `dpo`, `classifier` or `rl`.
    pub objective: Option<TaskKind>,
    /// `pm`, `classifier`: share of rows held out for the accuracy and calibration report.
    pub held_out: Option<f64>,
    /// `classifier`: weight of the category label in the target; the rest
    /// is the labeller's P(blocked).
    pub label_weight: Option<f64>,
    /// `dpo`: how far the policy may move from the reference.
    pub beta: Option<f64>,
    /// `classifier`: `input` (the default) or `output`.
    pub role: Option<GuardRole>,
}

impl TaskConfig {
    /// The task, checked; a setting of another objective is an error naming it.
    pub fn task(&self) -> Result<Task> {
        let Some(kind) = self.objective else {
            return Err(Error::invalid(
                "objective",
                "a `train` stage needs `objective`: \"sft\", \"pm\", \"dpo\", \"classifier\" \
                 or \"rl\"",
            ));
        };
        if self.held_out.is_some() && !matches!(kind, TaskKind::Pm | TaskKind::Classifier) {
            return Err(Error::invalid(
                "held_out",
                "applies to `objective = \"pm\"` and `\"classifier\"` only",
            ));
        }
        if self.role.is_some() && kind != TaskKind::Classifier {
            return Err(Error::invalid(
                "role",
                "applies to `objective = \"classifier\"` only",
            ));
        }
        if self.label_weight.is_some() && kind != TaskKind::Classifier {
            return Err(Error::invalid(
                "label_weight",
                "applies to `objective = \"classifier\"` only",
            ));
        }
        if self.beta.is_some() && kind != TaskKind::Dpo {
            return Err(Error::invalid(
                "beta",
                "applies to `objective = \"dpo\"` only",
            ));
        }
        let task = match kind {
            TaskKind::Sft => Task::Sft,
            TaskKind::Pm => Task::Pm {
                held_out: self.held_out.unwrap_or(Task::DEFAULT_HELD_OUT),
            },
            TaskKind::Dpo => Task::Dpo {
                beta: self.beta.unwrap_or(Task::DEFAULT_BETA),
            },
            TaskKind::Classifier => Task::Classifier {
                role: self.role.unwrap_or(GuardRole::Input),
                held_out: self.held_out.unwrap_or(Task::DEFAULT_HELD_OUT),
                label_weight: self.label_weight.unwrap_or(Task::DEFAULT_LABEL_WEIGHT),
            },
            TaskKind::Rl => Task::Rl,
        };
        task.validate()?;
        Ok(task)
    }
}
