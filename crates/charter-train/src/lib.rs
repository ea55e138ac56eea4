//! charter's in-tree trainer: the llama-family decoder (llama, mistral,
//! qwen2) as a burn module, and the three objectives of Constitutional AI's
//! training half over charter's tables — SFT on revisions (SL-CAI), a
//! preference model on AI-feedback labels, and DPO with soft targets
//! (RL-CAI).
//!
//! It trains on burn's pure-Rust `flex` CPU backend, or on wgpu when built
//! with the `wgpu` feature; see [`DeviceChoice`]. On flex, attention's
//! causal softmax, the answer tokens' log-probabilities, RMSNorm and SwiGLU
//! run as fused kernels with hand-written backward passes (the `kernels`
//! module); elsewhere the same functions are composed from burn's tensor
//! operations. The decoder keeps the model directory's HuggingFace weight
//! layout and applies rotary embeddings in rotate-half form, so
//! `model.safetensors` loads without permuting Q/K rows. Outputs are
//! complete model directories (re-exported through `charter-model`) that
//! generation uses directly.

mod adamw;
mod classify;
mod config;
mod data;
mod device;
mod error;
mod gemm;
mod heap;
mod jobs;
mod kernels;
pub mod lora;
mod loss;
mod metrics;
mod model;
mod probe;
mod score;
mod tensor;
mod train;

pub use adamw::adamw;
pub use classify::{
    CALIBRATION_FILE, CLASSIFY_VERSION, Calibration, Guard, GuardScore, calibrate, classify_table,
    guard_hash, read_calibration, threshold_for, wilson,
};
pub use config::{TaskConfig, TaskKind, TrainConfig};
pub use data::{
    ClassifierExample, Formatter, PreferenceExample, SftExample, Tokens, read_labels, read_sft,
    read_targets,
};
pub use device::{DeviceChoice, Selected, describe, select, select_device};
pub use error::{Error, Result};
pub use heap::RetainedHeap;
pub use jobs::{
    EvalRow, GuardRole, HeldOut, IterationRow, Job, Outcome, RewardSource, RlProgress, RlSettings,
    Task, TrainReport, auroc, calibration, default_reference_cache, default_reward_cache,
    open_preference_model, read_report, read_score_head, recorded_fingerprint, rl_fingerprint,
    rloo_advantages, run_task, task_fingerprint, train_classifier, train_dpo, train_pm, train_rl,
    train_sft,
};
pub use lora::LoraSettings;
pub use loss::{
    PreferenceModel, agreement, answer_logps, answer_token_values, clipped_policy_loss,
    dpo_margins, scalar, sft_loss, soft_pair_loss, streaming_loss,
};
pub use metrics::MetricRow;
pub use model::{Decoder, DecoderLayer};
pub use probe::{
    PROBE_FILE, PROBE_VERSION, PolicyRef, ProbeFile, ProbeSettings, TrainedProbe, answer_positions,
    check_policy, is_probe, open_policy, prefix_scores, probe_key, read_probe, train_probe,
};
pub use score::{SCORE_VERSION, ScoreSettings, ScoreSummary, score_provenance, score_table};
pub use train::{
    Checkpointed, Finished, Objective, Run, Schedule, TrainSettings, checkpoint_dir,
    checkpoint_progress,
};

pub use burn::tensor::Device;
