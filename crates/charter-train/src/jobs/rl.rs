//! Online RL: the policy samples answers, a reward scores them, and a
//! clipped policy-gradient step with a KL penalty to the starting policy
//! moves it — RL-CAI as Bai et al. (2022) train it against a preference
//! model, and direct RLAIF (Lee et al. 2023), where the labeller's rating is
//! the reward and no preference model is trained.
//!
//! One iteration:
//!
//! 1. **Export.** The current weights are written as a model directory (the
//!    same export as every trained model) and the ONNX engine samples from
//!    it: batched, KV-cached decoding rather than a token loop in the
//!    trainer. `prompts_per_iteration` prompts (a seeded pass over the
//!    prompts table) are answered `samples` times each at temperature 1,
//!    nothing truncated, so the answers are draws from the policy itself.
//! 2. **Score.** The reward is a preference model's scalar (`pm:DIR`), the
//!    labeller's expected rating 1–9 against a principle drawn per answer
//!    (from its sampling seed), mapped to [-1, 1] (`labeller:DIR`, the
//!    `rate` stage's scoring; with `rate_cot` after reasoning sampled from a
//!    seed drawn from the answer's), or 1 when the answer contains a text and 0
//!    otherwise (`contains:TEXT`, a rule a user can check by eye). Model
//!    rewards are cached across runs by content hash (`RewardCache`).
//! 3. **KL.** Every answer token's log-probability under the policy is
//!    the one it was sampled with (the engine records it), and under the
//!    starting policy the engine scores it (an f32 export of the start, one
//!    forward pass; ONNX Runtime's kernels rather than the trainer's); an
//!    answer's KL is
//!    `Σ_t log π(t) − log π_ref(t)` over its tokens (the sampled, "k1"
//!    estimate of KL(π ‖ π_ref), unbiased for answers drawn from π), and the
//!    shaped reward is `reward − kl_coef · kl` (the penalty folded into the
//!    reward, as in Ziegler et al. 2019 and the RLOO trainer).
//! 4. **Advantage.** Leave-one-out (RLOO, Ahmadian et al. 2024): an answer's
//!    shaped reward minus the mean of its prompt's other samples'. No value
//!    head; the prompt's other samples are the baseline.
//! 5. **Update.** `epochs` passes over the iteration's answers in steps of
//!    `batch_size × grad_accum` answers, each minimising PPO's clipped
//!    surrogate per token ([`clipped_policy_loss`]) against the
//!    log-probabilities the answers were sampled with (step 3's), so later
//!    steps of an iteration, slightly off-policy, cannot move far.
//!
//! Every answer, its reward, KL and advantage go to `rollouts.parquet` in
//! the output (a content-hashed `rollouts` table); one row per iteration
//! (reward, KL, entropy, answer length, clip fraction, tokens/s) goes to
//! `iterations.parquet`, and one per optimizer step to `metrics.parquet`.
//! A checkpoint after every iteration holds the weights, the optimizer and
//! the rows so far: `--resume` continues with the same weights and the same
//! samples as an uninterrupted run.
//!
//! The iteration's export is f32 whatever the output's `--dtype`: the
//! answers are then draws from the weights the trainer updates, and the
//! export takes 4.5 s on the default model where an int8 one (quantising
//! every matrix) takes 30 s. The sampling log-probabilities come from ONNX
//! Runtime and the trainer's from burn: at a step's start the ratios are 1
//! up to rounding, not exactly.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use burn::optim::{GradientsAccumulator, GradientsParams};
use charter_gen::{GenerateOptions, Request, Sampling};
use charter_model::{ModelDir, claim_trained_output, write_trained};
use charter_stages::{Constitution, Model, RateSettings, Rater, row_seed};
use charter_table::{InputRef, Prompt, ROLLOUTS, Record, Rollout, TableFile, TableWriter};
use serde::{Deserialize, Serialize};

use super::{
    Job, Outcome, Prepared, adapter_files, fingerprint, finish, prepare, trainable, up_to_date,
};
use crate::data::{Formatter, Tokens, input_ref};
use crate::heap::RetainedHeap;
use crate::loss::{PreferenceModel, clipped_policy_loss, scalar};
use crate::metrics::MetricRow;
use crate::train::{beside, checkpoint_dir, hash_order, resume_from, write_checkpoint};
use crate::{Decoder, Error, Result, select_device};

/// What scores an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum RewardSource {
    /// A preference model directory (`charter train pm`): its scalar.
    Pm(PathBuf),
    /// A labeller model directory: its expected rating 1–9 against a
    /// principle of the constitution, mapped to [-1, 1] (direct RLAIF).
    Labeller(PathBuf),
    /// 1 when the answer contains the text, else 0.
    Contains(String),
}

impl std::str::FromStr for RewardSource {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.split_once(':') {
            Some(("pm", dir)) if !dir.is_empty() => Ok(RewardSource::Pm(dir.into())),
            Some(("labeller", dir)) if !dir.is_empty() => Ok(RewardSource::Labeller(dir.into())),
            Some(("contains", text)) if !text.is_empty() => {
                Ok(RewardSource::Contains(text.to_string()))
            }
            _ => Err(format!(
                "`{s}`: expected pm:DIR (a preference model), labeller:DIR (a model that rates \
                 answers against the constitution) or contains:TEXT"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for RewardSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Online RL's own settings: `charter train rl`'s flags.
#[derive(Debug, Clone, PartialEq, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct RlSettings {
    /// The reward: pm:DIR (a preference model), labeller:DIR (direct RLAIF:
    /// the model's rating against the constitution's principles) or
    /// contains:TEXT (1 when the answer contains TEXT).
    #[arg(long, value_name = "SOURCE")]
    pub reward: RewardSource,
    /// The constitution whose preference principles a labeller rates against.
    #[arg(short, long, value_name = "TOML")]
    pub constitution: Option<PathBuf>,
    /// Let a labeller reward reason before it rates (`rate --cot`): its
    /// reasoning is sampled per answer, seeded by the answer, so each
    /// reward costs a generation rather than one pass.
    #[arg(long)]
    pub rate_cot: bool,
    /// Sample, score and update this many times.
    #[arg(long, value_name = "N", default_value_t = RlSettings::DEFAULT_ITERATIONS)]
    pub iterations: usize,
    /// Prompts answered per iteration.
    #[arg(long, value_name = "N", default_value_t = RlSettings::DEFAULT_PROMPTS)]
    pub prompts_per_iteration: usize,
    /// Answers sampled per prompt (at least 2: each is the others' baseline).
    #[arg(long, value_name = "K", default_value_t = RlSettings::DEFAULT_SAMPLES)]
    pub samples: usize,
    /// Cap on an answer's tokens.
    #[arg(long, value_name = "N", default_value_t = RlSettings::DEFAULT_MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    /// Weight of the KL penalty to the starting policy in the shaped reward.
    #[arg(long, value_name = "BETA", default_value_t = RlSettings::DEFAULT_KL_COEF)]
    pub kl_coef: f64,
    /// PPO's ε: how far a step may move an answer token's probability ratio.
    #[arg(long, value_name = "EPS", default_value_t = RlSettings::DEFAULT_CLIP)]
    pub clip: f64,
    /// Rows the engine decodes together while sampling.
    #[arg(long, value_name = "B", default_value_t = RlSettings::DEFAULT_ROLLOUT_BATCH)]
    pub rollout_batch: usize,
    /// ONNX Runtime threads for sampling and rating; 0: every core.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub threads: usize,
    /// Held-out prompts for the over-optimisation curve: at the start, every
    /// --eval-every iterations and at the end, the policy answers them, the
    /// reward scores its answers, and the judge compares them with the
    /// starting policy's in both orders.
    #[arg(long, value_name = "TABLE")]
    pub eval_prompts: Option<PathBuf>,
    /// Iterations between evaluations.
    #[arg(long, value_name = "N", default_value_t = RlSettings::DEFAULT_EVAL_EVERY)]
    pub eval_every: usize,
    /// Held-out prompts per evaluation.
    #[arg(long, value_name = "N", default_value_t = RlSettings::DEFAULT_EVAL_LIMIT)]
    pub eval_limit: usize,
    /// The model that judges the win rate against the starting policy, by
    /// the constitution's principles [default: the labeller of a
    /// labeller reward].
    #[arg(long, value_name = "DIR")]
    pub judge: Option<PathBuf>,
    /// Directory of rewards kept across runs by content hash (reward model,
    /// principle, prompt, answer) [default for `charter train rl` and
    /// builds: $XDG_CACHE_HOME/charter/rewards or ~/.cache/charter/rewards].
    /// Not part of a run's fingerprint: a cached reward is the one computing
    /// it would give.
    #[arg(long, value_name = "DIR")]
    pub reward_cache: Option<PathBuf>,
}

impl Default for RlSettings {
    /// Every setting at its default, and no reward yet (a build file's
    /// stage must name one).
    fn default() -> Self {
        RlSettings::new(RewardSource::Contains(String::new()))
    }
}

impl RlSettings {
    /// Iterations unless told otherwise.
    pub const DEFAULT_ITERATIONS: usize = 4;
    /// Prompts per iteration unless told otherwise.
    pub const DEFAULT_PROMPTS: usize = 8;
    /// Samples per prompt unless told otherwise.
    pub const DEFAULT_SAMPLES: usize = 4;
    /// Answer tokens unless told otherwise.
    pub const DEFAULT_MAX_NEW_TOKENS: usize = 64;
    /// KL weight unless told otherwise (the RLOO trainer's).
    pub const DEFAULT_KL_COEF: f64 = 0.05;
    /// PPO's clip unless told otherwise.
    pub const DEFAULT_CLIP: f64 = 0.2;
    /// Sampling batch unless told otherwise.
    pub const DEFAULT_ROLLOUT_BATCH: usize = 32;
    /// Iterations between evaluations unless told otherwise.
    pub const DEFAULT_EVAL_EVERY: usize = 2;
    /// Held-out prompts per evaluation unless told otherwise.
    pub const DEFAULT_EVAL_LIMIT: usize = 16;

    /// A run with `reward` and every other setting at its default.
    pub fn new(reward: RewardSource) -> Self {
        RlSettings {
            reward,
            constitution: None,
            rate_cot: false,
            iterations: Self::DEFAULT_ITERATIONS,
            prompts_per_iteration: Self::DEFAULT_PROMPTS,
            samples: Self::DEFAULT_SAMPLES,
            max_new_tokens: Self::DEFAULT_MAX_NEW_TOKENS,
            kl_coef: Self::DEFAULT_KL_COEF,
            clip: Self::DEFAULT_CLIP,
            rollout_batch: Self::DEFAULT_ROLLOUT_BATCH,
            threads: 0,
            eval_prompts: None,
            eval_every: Self::DEFAULT_EVAL_EVERY,
            eval_limit: Self::DEFAULT_EVAL_LIMIT,
            judge: None,
            reward_cache: None,
        }
    }

    /// Checks the values a user can get wrong; the error names the setting.
    pub fn validate(&self) -> Result<()> {
        for (field, value, least) in [
            ("iterations", self.iterations, 1),
            ("prompts_per_iteration", self.prompts_per_iteration, 1),
            ("samples", self.samples, 2),
            ("max_new_tokens", self.max_new_tokens, 1),
            ("rollout_batch", self.rollout_batch, 1),
            ("eval_every", self.eval_every, 1),
            ("eval_limit", self.eval_limit, 1),
        ] {
            if value < least {
                return Err(Error::invalid(
                    field,
                    format!("must be at least {least}, got {value}"),
                ));
            }
        }
        if !(self.kl_coef >= 0.0 && self.kl_coef.is_finite()) {
            return Err(Error::invalid(
                "kl_coef",
                format!("must be >= 0, got {}", self.kl_coef),
            ));
        }
        if !(self.clip > 0.0 && self.clip < 1.0) {
            return Err(Error::invalid(
                "clip",
                format!("must be in (0, 1), got {}", self.clip),
            ));
        }
        let labeller = matches!(self.reward, RewardSource::Labeller(_));
        let eval = self.eval_prompts.is_some();
        if self.constitution.is_none() && (labeller || eval) {
            return Err(Error::invalid(
                "constitution",
                "a labeller reward and the evaluation's judge rate against a constitution's \
                 principles: name one",
            ));
        }
        if self.constitution.is_some() && !labeller && !eval {
            return Err(Error::invalid(
                "constitution",
                "only a labeller reward or an evaluation (`eval_prompts`) reads a constitution",
            ));
        }
        if self.rate_cot && !labeller {
            return Err(Error::invalid(
                "rate_cot",
                "only a labeller reward rates: use it with `--reward labeller:DIR`",
            ));
        }
        if eval && !labeller && self.judge.is_none() {
            return Err(Error::invalid(
                "judge",
                "the evaluation needs a judge: name a model directory (a labeller reward's \
                 model is the judge unless another is named)",
            ));
        }
        if self.judge.is_some() && !eval {
            return Err(Error::invalid(
                "judge",
                "judges the evaluation: set `eval_prompts` too",
            ));
        }
        Ok(())
    }

    /// The judge of the evaluation: the named one, else the labeller.
    fn judge(&self) -> Option<&Path> {
        match (&self.judge, &self.reward) {
            (Some(j), _) => Some(j),
            (None, RewardSource::Labeller(l)) => Some(l),
            _ => None,
        }
    }
}

/// One iteration's summary, a row of `iterations.parquet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterationRow {
    /// 1-based.
    pub iteration: u64,
    /// Mean reward of the iteration's answers.
    pub reward: f64,
    /// Standard deviation of the reward over the answers.
    pub reward_std: f64,
    /// Mean KL (per answer) from the starting policy.
    pub kl: f64,
    /// Mean shaped reward (reward − kl_coef · kl).
    pub shaped_reward: f64,
    /// Mean per-token entropy of the policy, estimated from the sampled
    /// tokens (their mean −log π).
    pub entropy: f64,
    /// Mean answer length in tokens.
    pub answer_tokens: f64,
    /// Share of answers that ended with end of turn (the rest hit the cap).
    pub stop_share: f64,
    /// Share of answer tokens the clip held during the update.
    pub clip_fraction: f64,
    /// Answer tokens sampled per second (the engine on the export).
    pub rollout_tokens_per_s: f64,
    /// Tokens (prompt and answer) through the trainer per second in the update.
    pub update_tokens_per_s: f64,
    /// Seconds writing the policy's export.
    pub export_s: f64,
    /// Seconds sampling.
    pub rollout_s: f64,
    /// Seconds computing rewards.
    pub reward_s: f64,
    /// Share of the iteration's rewards read from the reward cache.
    pub reward_cached: f64,
    /// Seconds computing the policy's and reference's log-probabilities.
    pub logp_s: f64,
    /// Seconds in the optimizer steps.
    pub update_s: f64,
}

/// One point of the over-optimisation curve, a row of `curve.parquet`:
/// the policy after `iteration` iterations on the held-out prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRow {
    /// Iterations trained (0: the starting policy).
    pub iteration: u64,
    /// Mean training reward of the policy's answers.
    pub reward: f64,
    /// Mean training reward of the starting policy's answers.
    pub start_reward: f64,
    /// The judge's soft win rate of the policy over the starting policy
    /// (both presentation orders averaged).
    pub win_rate: f64,
    /// Lower end of the win rate's 95% interval.
    pub win_rate_low: f64,
    /// Upper end of the win rate's 95% interval.
    pub win_rate_high: f64,
    /// Mean KL from the start of the answers sampled in the last iteration
    /// trained (0 at the start).
    pub kl: f64,
    /// Share of the policy's answers that open with a refusal or evasion
    /// (the `refusal` flag of `charter filter`).
    pub refusal_rate: f64,
    /// Mean words per answer.
    pub answer_words: f64,
    /// The reward is above the one at the best earlier win rate while the
    /// win rate has fallen below that best beyond its own 95% interval:
    /// the policy is being optimised against the reward, not the judge
    /// ([`over_optimised`]).
    pub over_optimised: bool,
}

/// What a run reports as it goes.
pub enum RlProgress<'a> {
    /// An optimizer step is done (of `total`).
    Step(&'a MetricRow, usize),
    /// An iteration is done (of `total`).
    Iteration(&'a IterationRow, usize),
    /// A point of the over-optimisation curve.
    Eval(&'a EvalRow),
}

/// The loaded reward and its cache.
struct Scorer {
    kind: ScorerKind,
    cache: Option<RewardCache>,
    /// Rewards read from the cache since the last [`Scorer::take_hits`].
    hits: usize,
}

/// What computes a reward.
enum ScorerKind {
    Pm {
        model: Box<PreferenceModel>,
        formatter: Box<Formatter>,
    },
    Labeller {
        model: Box<Model>,
        constitution: Box<Constitution>,
        settings: RateSettings,
    },
    Contains(String),
}

/// The reward loaded, with its cache under `rl.reward_cache` (none for a
/// rule reward, which costs nothing to recompute).
fn open_reward(rl: &RlSettings, job: &Job<'_>) -> Result<Scorer> {
    let cache = |identity: serde_json::Value| {
        rl.reward_cache
            .as_deref()
            .map(|dir| RewardCache::new(dir, &identity))
    };
    let (kind, cache) = match &rl.reward {
        RewardSource::Pm(dir) => {
            let pm_dir = ModelDir::open(dir)?;
            let device = select_device(job.device, false)?;
            let model = super::open_preference_model(dir, &device)?;
            let formatter = Formatter::new(&pm_dir, job.settings.max_len)?;
            let identity = serde_json::json!({
                "pm": pm_dir.provenance.content_hash,
                "max_len": job.settings.max_len,
            });
            let kind = ScorerKind::Pm {
                model: Box::new(model),
                formatter: Box::new(formatter),
            };
            (kind, cache(identity))
        }
        RewardSource::Labeller(dir) => {
            let Some(path) = &rl.constitution else {
                unreachable!("validated: a labeller reward has a constitution")
            };
            let constitution = load_constitution(path)?;
            let model = Model::open(dir, rl.threads)?;
            let settings = rate_settings(rl, job.settings.seed);
            // The rating template and system prompt as well as the model:
            // the key adds the principle, the prompt and the answer (and,
            // with chain of thought, the reasoning's seed).
            let mut identity = serde_json::json!({
                "labeller": ModelDir::open(dir)?.provenance.content_hash,
                "rate_version": charter_stages::RATE_VERSION,
                "constitution": constitution.hash(),
                "system": settings.generation.system,
            });
            if rl.rate_cot {
                identity["cot"] = reasoning_settings(rl);
            }
            let kind = ScorerKind::Labeller {
                model: Box::new(model),
                constitution: Box::new(constitution),
                settings,
            };
            (kind, cache(identity))
        }
        RewardSource::Contains(text) => (ScorerKind::Contains(text.clone()), None),
    };
    Ok(Scorer {
        kind,
        cache,
        hits: 0,
    })
}

/// One answer's reward, and the rater's reasoning behind it (a labeller
/// reward with chain of thought).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reward {
    value: f64,
    reasoning: Option<String>,
}

impl Reward {
    fn plain(value: f64) -> Self {
        Reward {
            value,
            reasoning: None,
        }
    }
}

/// Rewards already computed, kept by content hash across runs: one small
/// file per answer, `<dir>/<identity>/<key[..2]>/<key>`, holding the reward
/// as text (with reasoning, a JSON object of both). The identity hashes
/// what decides a reward besides the answer (the reward model's content
/// hash and its scoring settings); the key adds
/// the principle (for a labeller), the prompt and the answer. Each entry is
/// written to a temporary file and renamed into place, so runs sharing the
/// directory never read half of one; an unreadable entry is a miss.
struct RewardCache {
    dir: PathBuf,
}

impl RewardCache {
    fn new(root: &Path, identity: &serde_json::Value) -> Self {
        let hash = blake3::hash(identity.to_string().as_bytes()).to_hex();
        RewardCache {
            dir: root.join(&hash.as_str()[..32]),
        }
    }

    /// The key of one answer's reward: its parts, length-prefixed.
    fn key(parts: &[&str]) -> String {
        let mut h = blake3::Hasher::new();
        for part in parts {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().to_hex().to_string()
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(key)
    }

    fn get(&self, key: &str) -> Option<Reward> {
        let text = std::fs::read_to_string(self.path(key)).ok()?;
        let reward = match text.starts_with('{') {
            true => serde_json::from_str::<Reward>(&text).ok()?,
            false => Reward::plain(text.trim().parse::<f64>().ok()?),
        };
        reward.value.is_finite().then_some(reward)
    }

    fn put(&self, key: &str, reward: &Reward) -> Result<()> {
        let path = self.path(key);
        let Some(parent) = path.parent() else {
            unreachable!("a cache entry's path has a parent")
        };
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let mut file = tempfile::NamedTempFile::new_in(parent).map_err(|e| Error::io(parent, e))?;
        let text = match &reward.reasoning {
            None => format!("{}\n", reward.value),
            Some(_) => format!("{}\n", serde_json::json!(reward)),
        };
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(|e| Error::io(&path, e))?;
        file.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        Ok(())
    }
}

/// The rating settings of a labeller reward: the run's seed, and with
/// `rate_cot` the default sampling of the reasoning.
fn rate_settings(rl: &RlSettings, seed: u64) -> RateSettings {
    let mut settings = RateSettings {
        cot: rl.rate_cot,
        ..RateSettings::default()
    };
    settings.generation.seed = seed;
    settings
}

/// How a labeller reward's reasoning is sampled, as fingerprints record it
/// (the seed is the run's, recorded beside it).
fn reasoning_settings(rl: &RlSettings) -> serde_json::Value {
    let mut v = rate_settings(rl, 0).canonical();
    if let Some(o) = v.as_object_mut() {
        o.remove("seed");
    }
    v
}

fn load_constitution(path: &Path) -> Result<Constitution> {
    Constitution::load(path).map_err(|e| Error::Input(format!("{}: {e}", path.display())))
}

/// What determines a run besides the loop's settings, base model and
/// prompts, from recorded hashes alone: the reward's identity, the
/// evaluation's, and the RL settings.
fn rl_extra(rl: &RlSettings) -> Result<serde_json::Value> {
    rl.validate()?;
    let constitution = rl
        .constitution
        .as_deref()
        .map(|c| load_constitution(c).map(|c| c.hash()))
        .transpose()?;
    let model_hash =
        |dir: &Path| -> Result<String> { Ok(ModelDir::open(dir)?.provenance.content_hash) };
    let reward = match &rl.reward {
        RewardSource::Pm(dir) => serde_json::json!({"pm": model_hash(dir)?}),
        RewardSource::Labeller(dir) => {
            let mut v = serde_json::json!({
                "labeller": model_hash(dir)?,
                "constitution": constitution,
                "rate_version": charter_stages::RATE_VERSION,
                "principle_from": "sampling seed",
            });
            if rl.rate_cot {
                v["cot"] = reasoning_settings(rl);
            }
            v
        }
        RewardSource::Contains(text) => serde_json::json!({"contains": text}),
    };
    let eval = match (&rl.eval_prompts, rl.judge()) {
        (Some(path), Some(judge)) => serde_json::json!({
            "prompts": input_ref(path, &TableFile::open(path)?)?,
            "every": rl.eval_every,
            "limit": rl.eval_limit,
            "judge": model_hash(judge)?,
            "constitution": constitution,
        }),
        _ => serde_json::Value::Null,
    };
    Ok(serde_json::json!({
        "eval": eval,
        "reward": reward,
        "iterations": rl.iterations,
        "prompts_per_iteration": rl.prompts_per_iteration,
        "samples": rl.samples,
        "max_new_tokens": rl.max_new_tokens,
        "kl_coef": rl.kl_coef,
        "clip": rl.clip,
        "rollout_batch": rl.rollout_batch,
    }))
}

/// The fingerprint a run of `rl` from `job.model` on `prompts` would
/// record, from recorded hashes alone: equal to a finished output's
/// exactly when that output is up to date.
pub fn rl_fingerprint(job: &Job<'_>, prompts: &Path, rl: &RlSettings) -> Result<String> {
    let base = ModelDir::open(job.model)?;
    let input = input_ref(prompts, &TableFile::open(prompts)?)?;
    Ok(fingerprint(
        "rl",
        job,
        &base,
        std::slice::from_ref(&input),
        &rl_extra(rl)?,
    ))
}

impl Scorer {
    /// Rewards of `answers` (row id, prompt, answer text): from the cache
    /// where it has them, computed (and cached) where not.
    fn score(
        &mut self,
        answers: &[(String, &str, String)],
        batch_size: usize,
    ) -> Result<Vec<Reward>> {
        match &mut self.kind {
            ScorerKind::Contains(text) => Ok(answers
                .iter()
                .map(|(_, _, a)| Reward::plain(f64::from(u8::from(a.contains(text.as_str())))))
                .collect()),
            ScorerKind::Pm { model, formatter } => {
                let keys: Vec<String> = answers
                    .iter()
                    .map(|(_, p, a)| RewardCache::key(&[p, a]))
                    .collect();
                let scores = cached(self.cache.as_ref(), &keys, &mut self.hits, |missing| {
                    let rows = missing
                        .iter()
                        .map(|&i| formatter.encode(answers[i].1, &answers[i].2, true))
                        .collect::<Result<Vec<_>>>()?;
                    let scores =
                        crate::score::scalar_scores(model, &rows, batch_size, &mut |_| {})?;
                    Ok(scores.into_iter().map(|s| s.map(Reward::plain)).collect())
                })?;
                // A conversation the PM cannot fit gets the lowest reward of
                // the batch: never a reason to prefer an answer.
                let floor = scores
                    .iter()
                    .flatten()
                    .map(|r| r.value)
                    .fold(f64::INFINITY, f64::min);
                let floor = Reward::plain(if floor.is_finite() { floor } else { 0.0 });
                Ok(scores
                    .into_iter()
                    .map(|s| s.unwrap_or_else(|| floor.clone()))
                    .collect())
            }
            ScorerKind::Labeller {
                model,
                constitution,
                settings,
            } => {
                let rater = Rater::new(model, constitution, settings)?;
                let keys: Vec<String> = answers
                    .iter()
                    .map(|(id, p, a)| {
                        let principle = &rater.principle(id).question;
                        if settings.cot {
                            let seed = rater.reasoning_seed(id).to_string();
                            RewardCache::key(&[principle, &seed, p, a])
                        } else {
                            RewardCache::key(&[principle, p, a])
                        }
                    })
                    .collect();
                let scores = cached(self.cache.as_ref(), &keys, &mut self.hits, |missing| {
                    let rows: Vec<(&str, &str, &str)> = missing
                        .iter()
                        .map(|&i| {
                            let (id, p, a) = &answers[i];
                            (id.as_str(), *p, a.as_str())
                        })
                        .collect();
                    Ok(rater
                        .rate(model, &rows)?
                        .into_iter()
                        .map(|r| {
                            Some(Reward {
                                value: r.reward(),
                                reasoning: r.reasoning,
                            })
                        })
                        .collect())
                })?;
                Ok(scores
                    .into_iter()
                    .map(|s| s.unwrap_or_else(|| Reward::plain(0.0)))
                    .collect())
            }
        }
    }

    /// Rewards read from the cache since the last call.
    fn take_hits(&mut self) -> usize {
        std::mem::take(&mut self.hits)
    }
}

/// Rewards of the answers with `keys`: each from `cache` when it holds the
/// key, the rest from `compute` (given their indices, in order), which are
/// then cached. `None` (an answer the reward could not score) is not cached.
fn cached(
    cache: Option<&RewardCache>,
    keys: &[String],
    hits: &mut usize,
    compute: impl FnOnce(&[usize]) -> Result<Vec<Option<Reward>>>,
) -> Result<Vec<Option<Reward>>> {
    let mut out: Vec<Option<Reward>> = keys.iter().map(|k| cache.and_then(|c| c.get(k))).collect();
    let missing: Vec<usize> = (0..keys.len()).filter(|&i| out[i].is_none()).collect();
    *hits += keys.len() - missing.len();
    if missing.is_empty() {
        return Ok(out);
    }
    let fresh = compute(&missing)?;
    for (&i, reward) in missing.iter().zip(fresh) {
        if let (Some(c), Some(r)) = (cache, &reward) {
            c.put(&keys[i], r)?;
        }
        out[i] = reward;
    }
    Ok(out)
}

/// A checkpoint's bookkeeping.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    fingerprint: String,
    /// Iterations done.
    iteration: usize,
    /// Optimizer steps done.
    step: usize,
    metrics: Vec<MetricRow>,
    iterations: Vec<IterationRow>,
    evals: Vec<EvalRow>,
    /// Every answer so far (kept in the checkpoint as a `rollouts` table).
    #[serde(skip)]
    rollouts: Vec<Rollout>,
}

// The same name as the other objectives' state, with the same `fingerprint`,
// `step` and `metrics`: `checkpoint_progress` reads either.
const STATE_FILE: &str = "state.json";
const ROLLOUTS_FILE: &str = "rollouts.parquet";
const ITERATIONS_FILE: &str = "iterations.parquet";
const CURVE_FILE: &str = "curve.parquet";

/// A prompt the policy answers: its row and rendered tokens.
struct Question {
    prompt: Prompt,
    tokens: Tokens,
}

/// The prompt indices of iteration `it` (0-based): consecutive places in
/// seeded passes over the prompts, each pass a permutation by blake3 of
/// (seed, pass, prompt id).
fn iteration_prompts(questions: &[Question], seed: u64, it: usize, per: usize) -> Vec<usize> {
    let n = questions.len();
    let order = |pass: usize| -> Vec<usize> {
        hash_order(n, |i, h| {
            h.update(b"charter.rl.prompts\0");
            h.update(&seed.to_le_bytes());
            h.update(&(pass as u64).to_le_bytes());
            h.update(questions[i].prompt.id.as_bytes());
        })
    };
    let mut out = Vec::with_capacity(per);
    let mut cached: Option<(usize, Vec<usize>)> = None;
    for k in it * per..(it + 1) * per {
        let (pass, at) = (k / n, k % n);
        if cached.as_ref().is_none_or(|(p, _)| *p != pass) {
            cached = Some((pass, order(pass)));
        }
        if let Some((_, o)) = &cached {
            out.push(o[at]);
        }
    }
    out
}

/// Leave-one-out advantages of `shaped` rewards in groups of `k`
/// consecutive answers (one prompt's samples).
pub fn rloo_advantages(shaped: &[f64], k: usize) -> Vec<f64> {
    shaped
        .chunks(k)
        .flat_map(|group| {
            let total: f64 = group.iter().sum();
            let others = (group.len() - 1).max(1) as f64;
            group.iter().map(move |r| r - (total - r) / others)
        })
        .collect()
}

/// One sampled answer before it is scored.
struct Sample {
    question: usize,
    sample: usize,
    seed: u64,
    tokens: Tokens,
    text: String,
    stopped: bool,
    /// Each answer token's log-probability under the policy that sampled it.
    logprobs: Vec<f64>,
}

/// Samples `samples` answers to each of `chosen` from `model` with the engine. Returns them in (prompt, sample) order and the
/// seconds spent.
fn sample(
    model: &mut Model,
    questions: &[Question],
    chosen: &[usize],
    rl: &RlSettings,
    seed: u64,
    iteration: usize,
) -> Result<(Vec<Sample>, f64)> {
    let started = Instant::now();
    let k = rl.samples;
    let mut requests = Vec::with_capacity(chosen.len() * k);
    let mut owners = Vec::with_capacity(chosen.len() * k);
    for &q in chosen {
        for s in 0..k {
            let seed = row_seed(
                "rl",
                seed,
                &[
                    &iteration.to_string(),
                    &questions[q].prompt.id,
                    &s.to_string(),
                ],
            );
            requests.push(Request {
                prompt: questions[q].tokens.ids.clone(),
                seed,
            });
            owners.push((q, s, seed));
        }
    }
    let options = GenerateOptions {
        // Draws from the policy itself: no temperature, nucleus or penalty.
        sampling: Sampling {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
        },
        max_new_tokens: rl.max_new_tokens,
        stop_ids: model.stop_ids.clone(),
        batch_size: rl.rollout_batch,
        max_context: model.max_context(),
        share_prefix: false,
        logprobs: true,
        readout: None,
    };
    let mut done: Vec<Option<charter_gen::Completion>> = vec![None; requests.len()];
    model
        .engine
        .generate::<Error>(&requests, &options, &mut |_, _| false, &mut |c| {
            let i = c.index;
            done[i] = Some(c);
            Ok(())
        })?;
    let mut out = Vec::with_capacity(requests.len());
    for ((q, s, seed), d) in owners.into_iter().zip(done) {
        let Some(charter_gen::Completion {
            tokens: generated,
            finish,
            logprobs,
            ..
        }) = d
        else {
            return Err(Error::Data("the engine left a rollout unfinished".into()));
        };
        let stopped = finish == charter_gen::FinishReason::Stop;
        if generated.is_empty() {
            return Err(Error::Data(format!(
                "prompt {}: nothing was sampled (the prompt fills the context)",
                questions[q].prompt.id
            )));
        }
        let text = model.decode(&generated)?;
        let prompt = &questions[q].tokens;
        let mut ids = prompt.ids.clone();
        ids.extend_from_slice(&generated);
        out.push(Sample {
            question: q,
            sample: s,
            seed,
            tokens: Tokens {
                ids,
                prompt_len: prompt.prompt_len,
            },
            text,
            stopped,
            logprobs,
        });
    }
    Ok((out, started.elapsed().as_secs_f64()))
}

/// Per-token log-probabilities of every sample's answer under `model`
/// (ONNX Runtime's f32 forward pass, which agrees with the trainer's up to
/// rounding), `batch` answers per pass.
fn engine_logps(model: &mut Model, samples: &[Sample], batch: usize) -> Result<Vec<Vec<f64>>> {
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = samples
        .iter()
        .map(|x| {
            let (prompt, answer) = x.tokens.ids.split_at(x.tokens.prompt_len);
            (prompt.to_vec(), answer.to_vec())
        })
        .collect();
    Ok(model.engine.score(&pairs, batch)?)
}

/// Answers scored per forward pass for the KL: the logits of a pass are
/// rows × answer tokens × vocabulary (100 MB on the default model).
const SCORE_BATCH: usize = 8;

/// Writes `tensors` (`base`'s architecture) as the f32 model directory
/// `export`, for the engine.
fn export_f32(
    export: &Path,
    base: &ModelDir,
    tensors: &charter_model::Tensors,
) -> Result<ModelDir> {
    let lock = claim_trained_output(export)?;
    let name = export
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dtype = charter_model::Dtype::F32;
    Ok(write_trained(lock, base, tensors, dtype, name, &[])?)
}

/// Where the starting policy is exported for the KL: beside the output.
fn reference_dir(out: &Path) -> PathBuf {
    beside(out, ".reference")
}

/// Where the iteration's policy is exported: beside the output.
fn policy_dir(out: &Path) -> PathBuf {
    beside(out, ".policy")
}

/// The answers of `order` as shuffled optimizer steps: a permutation by
/// blake3 of (seed, iteration, epoch, prompt id, sample). Not by row id:
/// that hashes the run's settings and the policy's model hash, so two runs
/// that differ in one setting (a KL weight, say) would also train in
/// different orders, and the comparison would measure the order's noise.
fn update_order(rows: &[Rollout], seed: u64, iteration: usize, epoch: usize) -> Vec<usize> {
    hash_order(rows.len(), |i, h| {
        h.update(&seed.to_le_bytes());
        h.update(&(iteration as u64).to_le_bytes());
        h.update(&(epoch as u64).to_le_bytes());
        h.update(rows[i].prompt_id.as_bytes());
        h.update(&rows[i].sample.to_le_bytes());
    })
}

/// Where the evaluations keep their tables: beside the output.
fn eval_dir(out: &Path) -> PathBuf {
    beside(out, ".eval")
}

/// What an evaluation needs besides the policy.
struct Evaluation<'a> {
    prompts: TableFile,
    start: &'a Path,
    judge: &'a Path,
    constitution: Constitution,
    settings: charter_stages::PolicyEvalSettings,
    /// Where each point's tables go (`iteration-N/`).
    dir: PathBuf,
}

impl Evaluation<'_> {
    /// The policy in `policy` after `iteration` iterations against the start:
    /// `charter eval policy`'s tables in `iteration-N/`, and the reward of
    /// both policies' answers. The starting policy's answers are made once
    /// and copied into each later point's directory, where they are found
    /// finished.
    fn point(
        &self,
        policy: &Path,
        iteration: usize,
        scorer: &mut Scorer,
        batch_size: usize,
        earlier: &[EvalRow],
        kl: f64,
    ) -> Result<EvalRow> {
        let previous = earlier.last();
        let work = self.dir.join(format!("iteration-{iteration}"));
        let first = self.dir.join("iteration-0").join("a-responses.parquet");
        let here = work.join("a-responses.parquet");
        if iteration > 0 && first.exists() && !here.exists() {
            std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
            std::fs::copy(&first, &here).map_err(|e| Error::io(&here, e))?;
        }
        let contestants = charter_stages::Contestants {
            a: self.start,
            b: policy,
            labeller: self.judge,
        };
        let report = charter_stages::eval_policy(
            &self.prompts,
            contestants,
            &self.constitution,
            &self.settings,
            &work,
            &mut |_, _| {},
        )?;
        let answers = |name: &str| -> Result<Vec<charter_table::Response>> {
            Ok(TableFile::open(&work.join(name))?.rows()?)
        };
        let (a, b) = (
            answers("a-responses.parquet")?,
            answers("b-responses.parquet")?,
        );
        let mut rewards = |rows: &[charter_table::Response]| -> Result<f64> {
            let keyed: Vec<(String, &str, String)> = rows
                .iter()
                .map(|r| (r.id.clone(), r.prompt.as_str(), r.text.clone()))
                .collect();
            Ok(mean(
                scorer
                    .score(&keyed, batch_size)?
                    .into_iter()
                    .map(|r| r.value),
            ))
        };
        // The start's answers are the same at every point: scored once.
        let reward = rewards(&b)?;
        let start_reward = match previous {
            Some(p) => p.start_reward,
            None => rewards(&a)?,
        };
        let filter = charter_stages::FilterSettings::default();
        let judge = filter.judge();
        let refusal_rate = mean(b.iter().map(|r| {
            let flags = judge.flags(&r.text, None, None, true);
            f64::from(u8::from(flags.contains(&charter_stages::Flag::Refusal)))
        }));
        Ok(EvalRow {
            iteration: iteration as u64,
            reward,
            start_reward,
            win_rate: report.win_rate,
            win_rate_low: report.win_rate_ci.0,
            win_rate_high: report.win_rate_ci.1,
            kl,
            refusal_rate,
            answer_words: mean(b.iter().map(|r| r.text.split_whitespace().count() as f64)),
            over_optimised: over_optimised(earlier, reward, report.win_rate_ci.1),
        })
    }
}

/// Whether a point of the curve with `reward` and a win rate whose 95%
/// interval ends at `win_high` shows over-optimisation against the `earlier`
/// points: its reward is above the one at the best earlier win rate, and
/// even the top of its win rate's interval is below that best. A dip inside
/// the interval is noise of the held-out sample, not a flag.
pub(crate) fn over_optimised(earlier: &[EvalRow], reward: f64, win_high: f64) -> bool {
    earlier
        .iter()
        .max_by(|a, b| a.win_rate.total_cmp(&b.win_rate))
        .is_some_and(|best| reward > best.reward && win_high < best.win_rate)
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (mut total, mut n) = (0.0, 0usize);
    for x in v {
        total += x;
        n += 1;
    }
    if n == 0 { 0.0 } else { total / n as f64 }
}

/// Online RL from `job.model` on the prompts table `prompts`.
pub fn train_rl(
    job: &Job<'_>,
    prompts: &Path,
    rl: &RlSettings,
    progress: &mut dyn FnMut(RlProgress<'_>),
) -> Result<Outcome> {
    rl.validate()?;
    let s = &job.settings;
    let p = prepare(job)?;
    let table = TableFile::open(prompts)?;
    if table.table_name() != Some("prompts") {
        return Err(Error::Input(format!(
            "{}: online RL answers a prompts table, not a `{}` table",
            prompts.display(),
            table.table_name().unwrap_or("?")
        )));
    }
    let input = input_ref(prompts, &table)?;
    let mut questions = Vec::new();
    let mut skipped = 0;
    for prompt in table.rows::<Prompt>()? {
        match p.formatter.encode_prompt(&prompt.text)? {
            Some(tokens) if tokens.prompt_len + rl.max_new_tokens <= s.max_len => {
                questions.push(Question { prompt, tokens });
            }
            _ => skipped += 1,
        }
    }
    if questions.is_empty() {
        return Err(Error::Input(format!(
            "{}: no prompt leaves room for --max-new-tokens {} within --max-len {}",
            prompts.display(),
            rl.max_new_tokens,
            s.max_len
        )));
    }
    let extra = rl_extra(rl)?;
    let fp = fingerprint("rl", job, &p.base, std::slice::from_ref(&input), &extra);
    if let Some(done) = up_to_date(job.out, &fp) {
        return Ok(done);
    }
    let mut scorer = open_reward(rl, job)?;
    let evaluation = match (&rl.eval_prompts, rl.judge(), &rl.constitution) {
        (Some(path), Some(judge), Some(constitution)) => {
            let prompts = TableFile::open(path)?;
            if prompts.table_name() != Some("prompts") {
                return Err(Error::Input(format!(
                    "{}: the evaluation answers a prompts table, not a `{}` table",
                    path.display(),
                    prompts.table_name().unwrap_or("?")
                )));
            }
            let generation = charter_stages::GenSettings {
                max_new_tokens: rl.max_new_tokens as u32,
                seed: s.seed,
                threads: rl.threads,
                ..charter_stages::GenSettings::DEFAULT
            };
            Some(Evaluation {
                prompts,
                start: job.model,
                judge,
                constitution: load_constitution(constitution)?,
                settings: charter_stages::PolicyEvalSettings {
                    samples: 1,
                    limit: Some(rl.eval_limit),
                    swap: true,
                    generation,
                },
                dir: eval_dir(job.out),
            })
        }
        _ => None,
    };
    let _heap = RetainedHeap::enter();
    let mut model = trainable(job, &p.device)?;
    // The starting policy, exported once in f32 for the engine: the KL's
    // reference log-probabilities.
    let reference_dir = reference_dir(job.out);
    let mut reference = {
        let tensors = super::read_tensors(&p.base.weights_path())?;
        let dir = export_f32(&reference_dir, &p.base, &tensors)?;
        Model::open(&dir.path, rl.threads)?
    };
    let mut optimizer = crate::adamw::adamw(s.weight_decay as f32);
    let answers_per_iteration = rl.prompts_per_iteration * rl.samples;
    let steps_per_iteration = answers_per_iteration.div_ceil(s.step_examples()) * s.epochs;
    let total_steps = steps_per_iteration * rl.iterations;

    let checkpoint = checkpoint_dir(job.out);
    let mut state = State {
        fingerprint: fp.clone(),
        iteration: 0,
        step: 0,
        metrics: Vec::new(),
        iterations: Vec::new(),
        evals: Vec::new(),
        rollouts: Vec::new(),
    };
    let (restored, restored_optimizer, saved) = resume_from::<Decoder, State>(
        job.out,
        job.resume,
        STATE_FILE,
        &fp,
        |s| &s.fingerprint,
        model,
        optimizer,
    )?;
    (model, optimizer) = (restored, restored_optimizer);
    if let Some(saved) = saved {
        let rollouts = TableFile::open(&checkpoint.join(ROLLOUTS_FILE))?.rows::<Rollout>()?;
        state = State { rollouts, ..saved };
    }

    let started = Instant::now();
    let export = policy_dir(job.out);
    for it in state.iteration..rl.iterations {
        // 1. Export the current weights and sample from them.
        let t0 = Instant::now();
        let policy = export_f32(&export, &p.base, &model.to_tensors()?)?;
        let export_s = t0.elapsed().as_secs_f64();
        if let Some(e) = &evaluation
            && it % rl.eval_every == 0
            && !state.evals.iter().any(|r| r.iteration == it as u64)
        {
            let kl = state.iterations.last().map_or(0.0, |r| r.kl);
            let row = e.point(
                &policy.path,
                it,
                &mut scorer,
                s.batch_size,
                &state.evals,
                kl,
            )?;
            progress(RlProgress::Eval(&row));
            state.evals.push(row);
        }
        let chosen = iteration_prompts(&questions, s.seed, it, rl.prompts_per_iteration);
        let mut engine = Model::open(&policy.path, rl.threads)?;
        let (samples, rollout_s) = sample(&mut engine, &questions, &chosen, rl, s.seed, it + 1)?;

        // 2. Rewards.
        let t0 = Instant::now();
        let mut rows: Vec<Rollout> = samples
            .iter()
            .map(|x| {
                Rollout {
                    id: String::new(),
                    run: fp.clone(),
                    iteration: it as u64 + 1,
                    prompt_id: questions[x.question].prompt.id.clone(),
                    sample: x.sample as u64,
                    seed: x.seed,
                    policy_hash: policy.provenance.content_hash.clone(),
                    prompt: questions[x.question].prompt.text.clone(),
                    response: x.text.clone(),
                    answer_tokens: x.tokens.answer_len() as u64,
                    finish_reason: if x.stopped { "stop" } else { "length" }.into(),
                    reward: 0.0,
                    reward_reasoning: None,
                    kl: 0.0,
                    shaped_reward: 0.0,
                    advantage: 0.0,
                    policy_logp: 0.0,
                    reference_logp: 0.0,
                }
                .with_id()
            })
            .collect();
        // A labeller's principle is drawn from the answer's sampling seed
        // rather than its row id, which holds the run's fingerprint: a run
        // with other settings that samples the same answer rates it against
        // the same principle, so its reward can come from the cache.
        let keyed: Vec<(String, &str, String)> = rows
            .iter()
            .map(|r| (r.seed.to_string(), r.prompt.as_str(), r.response.clone()))
            .collect();
        scorer.take_hits();
        let rewards = scorer.score(&keyed, s.batch_size)?;
        let reward_cached = scorer.take_hits() as f64 / rewards.len().max(1) as f64;
        let reward_s = t0.elapsed().as_secs_f64();

        // 3. Log-probabilities, KL and advantages.
        let t0 = Instant::now();
        drop(engine);
        let old: Vec<Vec<f64>> = samples.iter().map(|x| x.logprobs.clone()).collect();
        let refs = engine_logps(&mut reference, &samples, SCORE_BATCH)?;
        let logp_s = t0.elapsed().as_secs_f64();
        for ((row, reward), (old, refs)) in rows.iter_mut().zip(rewards).zip(old.iter().zip(&refs))
        {
            row.reward = reward.value;
            row.reward_reasoning = reward.reasoning;
            row.policy_logp = old.iter().sum();
            row.reference_logp = refs.iter().sum();
            row.kl = row.policy_logp - row.reference_logp;
            row.shaped_reward = row.reward - rl.kl_coef * row.kl;
        }
        let shaped: Vec<f64> = rows.iter().map(|r| r.shaped_reward).collect();
        for (row, a) in rows.iter_mut().zip(rloo_advantages(&shaped, rl.samples)) {
            row.advantage = a;
        }

        // 4. The update.
        let t0 = Instant::now();
        let (mut clipped, mut answer_tokens, mut update_tokens) = (0usize, 0usize, 0usize);
        for epoch in 0..s.epochs {
            let order = update_order(&rows, s.seed, it, epoch);
            for chunk in order.chunks(s.step_examples()) {
                let mut chunk = chunk.to_vec();
                chunk.sort_by_key(|&i| std::cmp::Reverse(samples[i].tokens.ids.len()));
                let denominator = chunk
                    .iter()
                    .map(|&i| samples[i].tokens.answer_len())
                    .sum::<usize>();
                let denominator = denominator.max(1) as f64;
                let step_started = Instant::now();
                let mut accumulator = GradientsAccumulator::<Decoder>::new();
                let mut loss_value = 0f64;
                for batch in chunk.chunks(s.batch_size) {
                    let tokens: Vec<&Tokens> = batch.iter().map(|&i| &samples[i].tokens).collect();
                    let olds: Vec<&[f64]> = batch.iter().map(|&i| old[i].as_slice()).collect();
                    let adv: Vec<f64> = batch.iter().map(|&i| rows[i].advantage).collect();
                    let (loss, held) =
                        clipped_policy_loss(&model, &tokens, &olds, &adv, rl.clip, denominator)?;
                    clipped += held;
                    loss_value += f64::from(scalar(&loss)?);
                    let grads = GradientsParams::from_grads(loss.backward(), &model);
                    accumulator.accumulate(&model, grads);
                }
                state.step += 1;
                if !loss_value.is_finite() {
                    return Err(Error::Diverged { step: state.step });
                }
                let lr = s.lr_at(state.step - 1, total_steps);
                model = optimizer.step(lr, model, accumulator.grads());
                let tokens: usize = chunk.iter().map(|&i| samples[i].tokens.ids.len()).sum();
                answer_tokens += chunk
                    .iter()
                    .map(|&i| samples[i].tokens.answer_len())
                    .sum::<usize>();
                update_tokens += tokens;
                let seconds = step_started.elapsed().as_secs_f64();
                let row = MetricRow {
                    step: state.step as u64,
                    epoch: (it + 1) as f64,
                    loss: loss_value,
                    lr,
                    tokens: tokens as u64,
                    tokens_per_s: tokens as f64 / seconds.max(1e-9),
                    accuracy: None,
                    elapsed_s: started.elapsed().as_secs_f64(),
                };
                progress(RlProgress::Step(&row, total_steps));
                state.metrics.push(row);
            }
        }
        let update_s = t0.elapsed().as_secs_f64();

        let sampled: usize = samples.iter().map(|x| x.tokens.answer_len()).sum();
        let n = rows.len() as f64;
        let reward_mean = mean(rows.iter().map(|r| r.reward));
        let summary = IterationRow {
            iteration: it as u64 + 1,
            reward: reward_mean,
            reward_std: mean(rows.iter().map(|r| (r.reward - reward_mean).powi(2))).sqrt(),
            kl: mean(rows.iter().map(|r| r.kl)),
            shaped_reward: mean(rows.iter().map(|r| r.shaped_reward)),
            entropy: -old.iter().flatten().sum::<f64>() / sampled.max(1) as f64,
            answer_tokens: sampled as f64 / n,
            stop_share: samples.iter().filter(|x| x.stopped).count() as f64 / n,
            clip_fraction: clipped as f64 / answer_tokens.max(1) as f64,
            rollout_tokens_per_s: sampled as f64 / rollout_s.max(1e-9),
            update_tokens_per_s: update_tokens as f64 / update_s.max(1e-9),
            export_s,
            rollout_s,
            reward_s,
            reward_cached,
            logp_s,
            update_s,
        };
        progress(RlProgress::Iteration(&summary, rl.iterations));
        state.iterations.push(summary);
        state.rollouts.extend(rows);
        state.iteration = it + 1;

        let interrupted = job.interrupt.load(Ordering::SeqCst);
        if state.iteration < rl.iterations {
            let text = serde_json::to_string(&state)
                .map_err(|e| Error::Checkpoint(format!("{STATE_FILE}: {e}")))?;
            let files = [
                (STATE_FILE, text.into_bytes()),
                (
                    ROLLOUTS_FILE,
                    rollouts_bytes(&state.rollouts, &input, job, &fp)?,
                ),
            ];
            write_checkpoint(job.out, &model, &optimizer, &files)?;
            if interrupted {
                return Ok(Outcome::Interrupted {
                    step: state.step,
                    checkpoint,
                });
            }
        }
    }
    if let Some(e) = &evaluation
        && !state
            .evals
            .iter()
            .any(|r| r.iteration == rl.iterations as u64)
    {
        let policy = export_f32(&export, &p.base, &model.to_tensors()?)?;
        let kl = state.iterations.last().map_or(0.0, |r| r.kl);
        let row = e.point(
            &policy.path,
            rl.iterations,
            &mut scorer,
            s.batch_size,
            &state.evals,
            kl,
        )?;
        progress(RlProgress::Eval(&row));
        state.evals.push(row);
    }
    drop(reference);
    let _ = std::fs::remove_dir_all(&export);
    let _ = std::fs::remove_dir_all(&reference_dir);
    finish_rl(
        job,
        &p,
        input,
        extra,
        questions.len(),
        skipped,
        &model,
        &state,
        &fp,
    )
}

#[allow(clippy::too_many_arguments)]
fn finish_rl(
    job: &Job<'_>,
    p: &Prepared,
    input: InputRef,
    extra: serde_json::Value,
    examples: usize,
    skipped: usize,
    model: &Decoder,
    state: &State,
    fp: &str,
) -> Result<Outcome> {
    let mut files = adapter_files(model, &p.base)?;
    files.push((
        ROLLOUTS_FILE,
        rollouts_bytes(&state.rollouts, &input, job, fp)?,
    ));
    files.push((ITERATIONS_FILE, iterations_bytes(&state.iterations)?));
    if !state.evals.is_empty() {
        files.push((CURVE_FILE, curve_bytes(&state.evals)?));
    }
    finish(
        job,
        p,
        "rl",
        vec![input],
        extra,
        examples,
        skipped,
        model.to_tensors()?,
        &state.metrics,
        None,
        &files,
        fp,
    )
}

/// The rollouts as a `rollouts` table's bytes, with provenance naming the run.
fn rollouts_bytes(rows: &[Rollout], input: &InputRef, job: &Job<'_>, fp: &str) -> Result<Vec<u8>> {
    let dir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let path = dir.path().join(ROLLOUTS_FILE);
    let provenance = charter_table::Provenance {
        stage: "rl".into(),
        stage_version: 1,
        settings: serde_json::json!({ "run": fp, "settings": job.settings }),
        inputs: vec![input.clone()],
        model_hash: None,
        constitution_hash: None,
    };
    let mut writer = TableWriter::create(
        &charter_table::Output::Path(path.clone()),
        &ROLLOUTS,
        &provenance,
    )?;
    writer.write_rows(rows)?;
    writer.finish()?;
    std::fs::read(&path).map_err(|e| Error::io(&path, e))
}

/// A column of per-iteration rows: its name and how to read it.
type Column<R, T> = (&'static str, fn(&R) -> T);

/// Rows as Parquet bytes: `iteration` (UInt64), then one Float64 column per
/// `floats` and one Boolean column per `flags`.
fn row_table<R>(
    what: &str,
    rows: &[R],
    iteration: fn(&R) -> u64,
    floats: &[Column<R, f64>],
    flags: &[Column<R, bool>],
) -> Result<Vec<u8>> {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, BooleanArray, Float64Array, UInt64Array};
    use arrow_schema::{DataType, Field, Schema};

    let mut fields = vec![Field::new("iteration", DataType::UInt64, false)];
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(UInt64Array::from_iter_values(
        rows.iter().map(iteration),
    ))];
    for (name, get) in floats {
        fields.push(Field::new(*name, DataType::Float64, false));
        arrays.push(Arc::new(Float64Array::from_iter_values(
            rows.iter().map(get),
        )));
    }
    for (name, get) in flags {
        fields.push(Field::new(*name, DataType::Boolean, false));
        arrays.push(Arc::new(BooleanArray::from_iter(
            rows.iter().map(|r| Some(get(r))),
        )));
    }
    crate::metrics::parquet_bytes(what, Schema::new(fields), arrays)
}

/// The iteration rows as Parquet bytes.
fn iterations_bytes(rows: &[IterationRow]) -> Result<Vec<u8>> {
    row_table(
        "iterations",
        rows,
        |r| r.iteration,
        &[
            ("reward", |r| r.reward),
            ("reward_std", |r| r.reward_std),
            ("kl", |r| r.kl),
            ("shaped_reward", |r| r.shaped_reward),
            ("entropy", |r| r.entropy),
            ("answer_tokens", |r| r.answer_tokens),
            ("stop_share", |r| r.stop_share),
            ("clip_fraction", |r| r.clip_fraction),
            ("rollout_tokens_per_s", |r| r.rollout_tokens_per_s),
            ("update_tokens_per_s", |r| r.update_tokens_per_s),
            ("export_s", |r| r.export_s),
            ("rollout_s", |r| r.rollout_s),
            ("reward_s", |r| r.reward_s),
            ("reward_cached", |r| r.reward_cached),
            ("logp_s", |r| r.logp_s),
            ("update_s", |r| r.update_s),
        ],
        &[],
    )
}

/// The over-optimisation curve as Parquet bytes.
fn curve_bytes(rows: &[EvalRow]) -> Result<Vec<u8>> {
    row_table(
        "curve",
        rows,
        |r| r.iteration,
        &[
            ("reward", |r| r.reward),
            ("start_reward", |r| r.start_reward),
            ("win_rate", |r| r.win_rate),
            ("win_rate_low", |r| r.win_rate_low),
            ("win_rate_high", |r| r.win_rate_high),
            ("kl", |r| r.kl),
            ("refusal_rate", |r| r.refusal_rate),
            ("answer_words", |r| r.answer_words),
        ],
        &[("over_optimised", |r| r.over_optimised)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_optimisation_needs_the_win_rate_below_its_best_beyond_noise() {
        let point = |reward: f64, win_rate: f64| EvalRow {
            iteration: 0,
            reward,
            start_reward: 0.0,
            win_rate,
            win_rate_low: 0.0,
            win_rate_high: 1.0,
            kl: 0.0,
            refusal_rate: 0.0,
            answer_words: 0.0,
            over_optimised: false,
        };
        let curve = [point(0.1, 0.5), point(0.3, 0.62), point(0.4, 0.58)];
        // The reward above the best win rate's, and the win rate's whole
        // interval below that best (0.62).
        assert!(over_optimised(&curve, 0.5, 0.55));
        // A dip inside the interval is noise.
        assert!(!over_optimised(&curve, 0.5, 0.70));
        // The reward did not rise past the best point's: not the reward's doing.
        assert!(!over_optimised(&curve, 0.2, 0.40));
        // Nothing to compare the first point with.
        assert!(!over_optimised(&[], 0.5, 0.1));
    }

    #[test]
    fn leave_one_out_advantages_sum_to_zero_per_prompt() {
        let a = rloo_advantages(&[1.0, 0.0, 0.0, 3.0, 3.0, 3.0], 3);
        assert_eq!(a[..3], [1.0, -0.5, -0.5]);
        assert_eq!(a[3..], [0.0, 0.0, 0.0]);
    }

    #[test]
    fn reward_sources_parse_and_name_the_mistake() {
        assert_eq!(
            "pm:out/pm".parse::<RewardSource>(),
            Ok(RewardSource::Pm("out/pm".into()))
        );
        assert_eq!(
            "contains:Sure".parse::<RewardSource>(),
            Ok(RewardSource::Contains("Sure".into()))
        );
        let err = "judge:x".parse::<RewardSource>().unwrap_err();
        assert!(err.contains("`judge:x`") && err.contains("pm:DIR"), "{err}");
    }
}
