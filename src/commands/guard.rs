//! `--guard`: calibrated classifiers (`charter train classifier`) around a
//! policy's generation, for `chat` and `respond`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use charter_model::ModelDir;
use charter_stages::StreamGuard;
use charter_train::{Calibration, Guard, GuardRole, GuardScore, Tokens, read_calibration};

/// The `--guard` flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct GuardFlags {
    /// Classifier directories to guard generation with (an input guard, an
    /// output guard, or one of each, comma-separated), each calibrated with
    /// `charter classify calibrate`. A blocked prompt or flagged answer
    /// becomes one fixed refusal.
    #[arg(long, value_name = "DIR[,DIR]", value_delimiter = ',')]
    pub(crate) guard: Vec<PathBuf>,
    /// Answer tokens generated between two checks of the output guard
    /// (smaller stops sooner after the flag, larger costs less).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub(crate) guard_every: usize,
}

struct Calibrated {
    guard: Guard,
    calibration: Calibration,
    dir: PathBuf,
}

/// An input and an output guard, each optional, on the policy's tokens.
pub(crate) struct Guards {
    input: Option<Calibrated>,
    output: Option<Calibrated>,
    every: usize,
}

fn tokenizer_hash(dir: &Path) -> Result<String> {
    let model = ModelDir::open(dir)?;
    Ok(charter_model::hash_file(&model.tokenizer_path())?)
}

impl Guards {
    /// The guards `flags` name for the policy in `policy`; `None` without any.
    pub(crate) fn open(flags: &GuardFlags, policy: &Path) -> Result<Option<Guards>> {
        if flags.guard.is_empty() {
            return Ok(None);
        }
        if flags.guard_every == 0 {
            bail!("--guard-every must be at least 1");
        }
        let policy_tokenizer = tokenizer_hash(policy)?;
        let mut guards = Guards {
            input: None,
            output: None,
            every: flags.guard_every,
        };
        for dir in &flags.guard {
            let calibration = read_calibration(dir)?;
            let guard = Guard::open(dir, usize::MAX)
                .with_context(|| format!("opening the guard {}", dir.display()))?;
            if let Some(hash) = guard.policy_hash() {
                // A probe reads the policy's own states: only that export's.
                let policy_hash = ModelDir::open(policy)?.provenance.content_hash;
                if hash != policy_hash {
                    bail!(
                        "{}: the probe was trained on the states of another policy (hash {}), \
                         not {} (hash {}): train a probe for this one with `charter train probe`",
                        dir.display(),
                        &hash[..16.min(hash.len())],
                        policy.display(),
                        &policy_hash[..16.min(policy_hash.len())]
                    );
                }
            } else if tokenizer_hash(dir)? != policy_tokenizer {
                bail!(
                    "{}: the guard's tokenizer differs from the policy's ({}): a guard reads \
                     the policy's tokens, so train it from the same base model",
                    dir.display(),
                    policy.display()
                );
            }
            let slot = match guard.role() {
                GuardRole::Input => &mut guards.input,
                GuardRole::Output => &mut guards.output,
            };
            if let Some(other) = slot {
                bail!(
                    "two {} guards: {} and {}",
                    guard.role().as_str(),
                    other.dir.display(),
                    dir.display()
                );
            }
            *slot = Some(Calibrated {
                guard,
                calibration,
                dir: dir.clone(),
            });
        }
        Ok(Some(guards))
    }
}

impl Guards {
    /// The input guard and its calibrated threshold.
    pub(crate) fn input(&self) -> Option<(&Guard, f64)> {
        self.input
            .as_ref()
            .map(|c| (&c.guard, c.calibration.threshold))
    }

    /// The output guard and its calibrated threshold.
    pub(crate) fn output(&self) -> Option<(&Guard, f64)> {
        self.output
            .as_ref()
            .map(|c| (&c.guard, c.calibration.threshold))
    }
}

/// The guard's scores of conversations (`ids`, and the answer's start),
/// scored in one batch.
fn score(
    c: &Calibrated,
    rows: Vec<(Vec<u32>, usize)>,
) -> charter_stages::Result<Vec<Option<GuardScore>>> {
    let rows: Vec<Option<Tokens>> = rows
        .into_iter()
        .map(|(ids, prompt_len)| Some(Tokens { ids, prompt_len }))
        .collect();
    c.guard
        .score_tokens(&rows, rows.len().max(1), &mut |_| {})
        .map_err(|e| charter_stages::Error::Guard(format!("{}: {e}", c.dir.display())))
}

impl StreamGuard for Guards {
    fn blocks_prompt(&mut self, prompt: &[u32]) -> charter_stages::Result<bool> {
        Ok(self.blocks_prompts(&[prompt])?[0])
    }

    fn blocks_prompts(&mut self, prompts: &[&[u32]]) -> charter_stages::Result<Vec<bool>> {
        let Some(c) = &self.input else {
            return Ok(vec![false; prompts.len()]);
        };
        let rows = prompts.iter().map(|p| (p.to_vec(), p.len())).collect();
        Ok(score(c, rows)?
            .into_iter()
            .map(|s| s.is_some_and(|s| s.p >= c.calibration.threshold))
            .collect())
    }

    fn first_flagged(
        &mut self,
        prompt: &[u32],
        answer: &[u32],
    ) -> charter_stages::Result<Option<usize>> {
        Ok(self.first_flagged_many(&[(prompt, answer)])?[0])
    }

    fn first_flagged_many(
        &mut self,
        rows: &[(&[u32], &[u32])],
    ) -> charter_stages::Result<Vec<Option<usize>>> {
        let Some(c) = &self.output else {
            return Ok(vec![None; rows.len()]);
        };
        // An empty answer has nothing to flag.
        let scored: Vec<usize> = (0..rows.len()).filter(|&i| !rows[i].1.is_empty()).collect();
        let batch = scored
            .iter()
            .map(|&i| ([rows[i].0, rows[i].1].concat(), rows[i].0.len()))
            .collect();
        let mut flags = vec![None; rows.len()];
        for (i, s) in scored.into_iter().zip(score(c, batch)?) {
            flags[i] = s.and_then(|s| s.first_over(c.calibration.threshold));
        }
        Ok(flags)
    }

    fn every(&self) -> usize {
        self.every
    }

    fn readout(&self) -> Option<charter_gen::Readout> {
        let c = self.output.as_ref()?;
        c.guard.readout(c.calibration.threshold)
    }

    fn describe(&self) -> serde_json::Value {
        let one = |c: &Option<Calibrated>| {
            c.as_ref().map(|c| {
                serde_json::json!({
                    "model_hash": c.calibration.guard_hash,
                    "threshold": c.calibration.threshold,
                    "probe": c.guard.policy_hash().is_some(),
                })
            })
        };
        serde_json::json!({
            "input": one(&self.input),
            "output": one(&self.output),
            "every": self.every,
        })
    }
}
