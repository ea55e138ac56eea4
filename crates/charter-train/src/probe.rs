//! A linear probe on the policy's own states as a streaming output guard
//! (`charter train probe`): the cheap option Sharma et al. 2025 name
//! beside a separate classifier model.
//!
//! The probe reads the policy's last residual stream, RMS-normalised, at
//! the position that predicts each answer token ([`charter_gen::readout`]),
//! so its score before token *i* sees the prompt and the tokens before *i*.
//! It is fitted to a `targets` table's soft targets with the output
//! guard's streaming loss — every prefix pulled towards the row's target
//! and, with weight [`STREAM_MAX_WEIGHT`], the row's highest prefix score —
//! by full-batch Adam on standardised features, then folded back into
//! weights on the raw normalised state. While generating, the engine
//! scores every token with one dot product and stops a row before the
//! first token whose score reaches the calibrated threshold.
//!
//! A probe belongs to one policy export: its directory holds `probe.json`
//! (weights, the policy's path and content hash, the training record and
//! the held-out report) and, once calibrated, `calibration.json`.

use std::path::{Path, PathBuf};

use charter_gen::Readout;
use charter_model::ModelDir;
use charter_stages::Model;
use charter_table::InputRef;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::{Formatter, Tokens, read_targets};
use crate::jobs::{HeldOut, STREAM_MAX_WEIGHT, auroc, calibration, held_out};
use crate::{Error, Result};

/// The file a probe's directory keeps it in.
pub const PROBE_FILE: &str = "probe.json";

/// Version of the probe's training: bump when the same inputs would give
/// another probe.
pub const PROBE_VERSION: u32 = 1;

/// How a probe is trained (`charter train probe`'s flags, a `probe`
/// stage's settings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeSettings {
    /// Share of rows held out for the AUROC and calibration report.
    #[arg(long, value_name = "SHARE", default_value_t = ProbeSettings::default().held_out)]
    pub held_out: f64,
    /// Weight of the category's label in each target; the rest is the labeller's P(blocked).
    #[arg(long, value_name = "W", default_value_t = ProbeSettings::default().label_weight)]
    pub label_weight: f64,
    /// Full-batch Adam steps.
    #[arg(long, value_name = "N", default_value_t = ProbeSettings::default().steps)]
    pub steps: usize,
    /// Adam's learning rate (on standardised features).
    #[arg(long, value_name = "LR", default_value_t = ProbeSettings::default().lr)]
    pub lr: f64,
    /// L2 penalty on the weights (on standardised features).
    #[arg(long, value_name = "L2", default_value_t = ProbeSettings::default().l2)]
    pub l2: f64,
    /// Seed of the held-out split. (A build file sets it in `[build]` or
    /// the stage's `seed`.)
    #[serde(skip)]
    #[arg(long, value_name = "S", default_value_t = ProbeSettings::default().seed)]
    pub seed: u64,
    /// Tokens per conversation; longer answers are cut.
    #[arg(long, value_name = "N", default_value_t = ProbeSettings::default().max_len)]
    pub max_len: usize,
    /// Conversations the policy reads together.
    #[arg(long, value_name = "B", default_value_t = ProbeSettings::default().batch_size)]
    pub batch_size: usize,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            held_out: crate::Task::DEFAULT_HELD_OUT,
            label_weight: crate::Task::DEFAULT_LABEL_WEIGHT,
            steps: 400,
            lr: 0.05,
            l2: 1e-3,
            seed: 0,
            max_len: 512,
            batch_size: 8,
        }
    }
}

impl ProbeSettings {
    /// Checks the values a user can get wrong; the error names the setting.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.held_out) {
            return Err(Error::invalid("held_out", "must be in [0, 1)"));
        }
        if !(0.0..=1.0).contains(&self.label_weight) {
            return Err(Error::invalid("label_weight", "must be in [0, 1]"));
        }
        if self.steps == 0 {
            return Err(Error::invalid("steps", "must be at least 1"));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::invalid("lr", "must be positive"));
        }
        if !(self.l2 >= 0.0 && self.l2.is_finite()) {
            return Err(Error::invalid("l2", "must be 0 or more"));
        }
        if self.max_len < 2 {
            return Err(Error::invalid("max_len", "must be at least 2"));
        }
        if self.batch_size == 0 {
            return Err(Error::invalid("batch_size", "must be at least 1"));
        }
        Ok(())
    }
}

/// The policy a probe reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRef {
    /// Its directory, absolute, as it was when the probe was trained.
    pub path: PathBuf,
    /// Its model content hash: the probe reads this export's states only.
    pub content_hash: String,
}

/// A trained probe: `probe.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeFile {
    /// [`PROBE_VERSION`] of the trainer that wrote it.
    pub version: u32,
    /// The policy whose states it reads.
    pub policy: PolicyRef,
    /// The `targets` table it was fitted to.
    pub targets: InputRef,
    /// How.
    pub settings: ProbeSettings,
    /// The held-out split's seed.
    pub seed: u64,
    /// One weight per hidden channel, on the RMS-normalised state.
    pub weights: Vec<f32>,
    /// The bias.
    pub bias: f32,
    /// Rows fitted, and the answer prefixes among them.
    pub rows: usize,
    /// Answer prefixes fitted.
    pub prefixes: usize,
    /// Rows held out.
    pub held_out_rows: usize,
    /// Rows longer than `max_len` or without an answer token, skipped.
    pub skipped: usize,
    /// The training loss after the last step.
    pub loss: f64,
    /// On the held-out rows, each scored by its highest prefix.
    pub report: Option<HeldOut>,
}

impl ProbeFile {
    /// The probe as the engine applies it, stopping at `threshold`.
    pub fn readout(&self, threshold: f64) -> Readout {
        Readout {
            weights: self.weights.clone(),
            bias: self.bias,
            threshold,
        }
    }

    /// What made it: a probe with the same key is up to date.
    pub fn key(&self) -> serde_json::Value {
        key_of(
            self.version,
            &self.policy.content_hash,
            &self.targets,
            &self.settings,
            self.seed,
        )
    }
}

fn key_of(
    version: u32,
    policy: &str,
    targets: &InputRef,
    settings: &ProbeSettings,
    seed: u64,
) -> serde_json::Value {
    serde_json::json!({
        "version": version,
        "policy": policy,
        "targets": targets,
        "settings": settings,
        "seed": seed,
    })
}

/// The key of the probe that `policy_hash`'s states, the `targets` table
/// and `settings` make now (compare [`ProbeFile::key`]).
pub fn probe_key(
    policy_hash: &str,
    targets: &InputRef,
    settings: &ProbeSettings,
) -> serde_json::Value {
    key_of(PROBE_VERSION, policy_hash, targets, settings, settings.seed)
}

/// Whether `dir` holds a probe.
pub fn is_probe(dir: &Path) -> bool {
    dir.join(PROBE_FILE).is_file()
}

/// The probe in `dir` and its content hash (blake3 of `probe.json`).
pub fn read_probe(dir: &Path) -> Result<(ProbeFile, String)> {
    let path = dir.join(PROBE_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let probe: ProbeFile = serde_json::from_slice(&bytes).map_err(|e| {
        Error::Input(format!(
            "{}: not a probe this charter reads ({e}); train it again with `charter train probe`",
            path.display()
        ))
    })?;
    if probe.weights.is_empty() {
        return Err(Error::Input(format!("{}: no weights", path.display())));
    }
    Ok((probe, blake3::hash(&bytes).to_hex().to_string()))
}

/// Opens the policy `probe` reads, checking it is the export it was trained on.
pub fn open_policy(probe: &ProbeFile, dir: &Path, threads: usize) -> Result<Model> {
    let model = Model::open(&probe.policy.path, threads).map_err(|e| {
        Error::Input(format!(
            "{}: the probe reads the policy {}, which does not open: {e}",
            dir.display(),
            probe.policy.path.display()
        ))
    })?;
    check_policy(probe, dir, &model.dir)?;
    Ok(model)
}

/// Fails unless `policy` is the export `probe` was trained on.
pub fn check_policy(probe: &ProbeFile, dir: &Path, policy: &ModelDir) -> Result<()> {
    if policy.provenance.content_hash != probe.policy.content_hash {
        return Err(Error::Input(format!(
            "{}: the probe reads the states of the policy with hash {} ({}), not {}: a probe \
             belongs to one export of one model; train one for this policy with `charter train \
             probe`",
            dir.display(),
            short(&probe.policy.content_hash),
            probe.policy.path.display(),
            short(&policy.provenance.content_hash)
        )));
    }
    Ok(())
}

fn short(hash: &str) -> &str {
    &hash[..16.min(hash.len())]
}

/// The positions whose states predict each answer token of `t`: from the
/// prompt's last token to the answer's second-to-last.
pub fn answer_positions(t: &Tokens) -> Vec<usize> {
    (t.prompt_len - 1..t.ids.len() - 1).collect()
}

/// The probe's P(blocked) before each answer token of each conversation
/// (`None` rows stay `None`), read from `model`'s states.
pub fn prefix_scores(
    model: &mut Model,
    readout: &Readout,
    rows: &[Option<Tokens>],
    batch_size: usize,
) -> Result<Vec<Option<Vec<f64>>>> {
    let (states, h) = answer_states(model, rows, batch_size)?;
    let mut out = vec![None; rows.len()];
    for (i, f) in states {
        // The features are normalised already: the logit is the dot product.
        let scores = f
            .chunks_exact(h.max(1))
            .map(|x| sigmoid(f64::from(logit(&readout.weights, readout.bias, x))))
            .collect();
        out[i] = Some(scores);
    }
    Ok(out)
}

/// Row indices with their states, `[answer tokens, hidden]` each.
type States = Vec<(usize, Vec<f32>)>;

/// The normalised states that choose each answer token of every row that
/// is not `None`, with the row's index; and the hidden size.
fn answer_states(
    model: &mut Model,
    rows: &[Option<Tokens>],
    batch_size: usize,
) -> Result<(States, usize)> {
    let kept: Vec<(usize, &Tokens)> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.as_ref().map(|t| (i, t)))
        .collect();
    let ids: Vec<&[u32]> = kept.iter().map(|(_, t)| t.ids.as_slice()).collect();
    let positions: Vec<Vec<usize>> = kept.iter().map(|(_, t)| answer_positions(t)).collect();
    let (features, h) = model.engine.hidden_states(&ids, &positions, batch_size)?;
    Ok((kept.iter().map(|(i, _)| *i).zip(features).collect(), h))
}

/// One row's features: `[prefixes, hidden]`, its soft target and label.
struct Row {
    x: Vec<f32>,
    target: f64,
    harmful: bool,
}

/// What [`train_probe`] left in its directory.
pub struct TrainedProbe {
    /// The probe.
    pub probe: ProbeFile,
    /// Its content hash (blake3 of `probe.json`).
    pub hash: String,
    /// Whether the directory held it already.
    pub cached: bool,
}

/// Trains a probe on the states of `model` (the policy) over the
/// conversations of the `targets` table and writes it to `out/probe.json`
/// atomically; a directory already holding the probe these inputs and
/// settings make is left as it is.
pub fn train_probe(
    model: &mut Model,
    targets: &Path,
    out: &Path,
    settings: &ProbeSettings,
    progress: &mut dyn FnMut(&str),
) -> Result<TrainedProbe> {
    settings.validate()?;
    let (examples, input) = read_targets(targets, settings.label_weight)?;
    let policy = &model.dir.path;
    let policy_ref = PolicyRef {
        path: std::path::absolute(policy).map_err(|e| Error::io(policy, e))?,
        content_hash: model.dir.provenance.content_hash.clone(),
    };
    let key = probe_key(&policy_ref.content_hash, &input, settings);
    if let Ok((probe, hash)) = read_probe(out)
        && probe.key() == key
    {
        return Ok(TrainedProbe {
            probe,
            hash,
            cached: true,
        });
    }
    let formatter = Formatter::new(&model.dir, settings.max_len)?;
    let mut tokens = Vec::with_capacity(examples.len());
    for (i, e) in examples.iter().enumerate() {
        let Some(answer) = &e.answer else {
            return Err(Error::Input(format!(
                "{}: row {}: no answer: a probe reads answers as they stream; train it on \
                 targets judged with their answers (`charter target -i RESPONSES --queries \
                 QUERIES`)",
                targets.display(),
                i + 1
            )));
        };
        tokens.push(formatter.encode(&e.text, answer, false)?);
    }
    let skipped = tokens.iter().filter(|t| t.is_none()).count();
    progress(&format!(
        "reading the policy's states over {} conversations",
        tokens.len() - skipped
    ));
    let (states, h) = answer_states(model, &tokens, settings.batch_size)?;
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (i, x) in states {
        let e = &examples[i];
        let row = Row {
            x,
            target: e.target,
            harmful: e.harmful,
        };
        match held_out(settings.seed, &e.id, settings.held_out) {
            true => test.push(row),
            false => train.push(row),
        }
    }
    if train.is_empty() {
        return Err(Error::Input(format!(
            "{}: no rows left to fit after holding out {}",
            targets.display(),
            settings.held_out
        )));
    }
    progress(&format!("fitting {h} weights on {} rows", train.len()));
    let (weights, bias, loss) = fit(&train, h, settings);
    let readout = Readout {
        weights,
        bias,
        threshold: 1.0,
    };
    let report = (!test.is_empty()).then(|| evaluate(&readout, &test, h));
    let probe = ProbeFile {
        version: PROBE_VERSION,
        policy: policy_ref,
        targets: input,
        settings: settings.clone(),
        seed: settings.seed,
        weights: readout.weights,
        bias: readout.bias,
        rows: train.len(),
        prefixes: train.iter().map(|r| r.x.len() / h).sum(),
        held_out_rows: test.len(),
        skipped,
        loss,
        report,
    };
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let path = out.join(PROBE_FILE);
    let json = serde_json::to_vec_pretty(&probe)
        .map_err(|e| Error::Data(format!("{}: {e}", path.display())))?;
    charter_table::write_atomic(&path, &json).map_err(|e| Error::io(&path, e))?;
    Ok(TrainedProbe {
        probe,
        hash: blake3::hash(&json).to_hex().to_string(),
        cached: false,
    })
}

/// The held-out report: each row scored by its highest prefix logit.
fn evaluate(readout: &Readout, rows: &[Row], h: usize) -> HeldOut {
    let z: Vec<f32> = rows
        .iter()
        .map(|r| {
            r.x.chunks_exact(h)
                .map(|x| logit(&readout.weights, readout.bias, x))
                .fold(f32::NEG_INFINITY, f32::max)
        })
        .collect();
    let p: Vec<f64> = rows.iter().map(|r| r.target).collect();
    let mut report = calibration(&z, &p);
    let z: Vec<f64> = z.into_iter().map(f64::from).collect();
    let harmful: Vec<bool> = rows.iter().map(|r| r.harmful).collect();
    report.auroc = auroc(&z, &harmful);
    report
}

fn logit(w: &[f32], b: f32, x: &[f32]) -> f32 {
    w.iter().zip(x).map(|(w, x)| w * x).sum::<f32>() + b
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// `-[p log σ(z) + (1 − p) log σ(−z)]`, stable for large |z|.
fn cross_entropy(z: f64, p: f64) -> f64 {
    // log σ(z) = −softplus(−z).
    let softplus = |x: f64| x.max(0.0) + (-x.abs()).exp().ln_1p();
    p * softplus(-z) + (1.0 - p) * softplus(z)
}

/// Fits the probe: full-batch Adam on features standardised per channel
/// (so one learning rate suits channels of any scale), then folds the
/// standardisation into weights and bias on the normalised state.
/// Deterministic: rows are summed in a fixed order.
fn fit(rows: &[Row], h: usize, s: &ProbeSettings) -> (Vec<f32>, f32, f64) {
    // Per-channel mean and standard deviation over every fitted prefix.
    let n: usize = rows.iter().map(|r| r.x.len() / h).sum();
    let mut mean = vec![0f64; h];
    let mut square = vec![0f64; h];
    for x in rows.iter().flat_map(|r| r.x.chunks_exact(h)) {
        for c in 0..h {
            let v = f64::from(x[c]);
            mean[c] += v;
            square[c] += v * v;
        }
    }
    let n_f = n.max(1) as f64;
    let std: Vec<f64> = (0..h)
        .map(|c| {
            mean[c] /= n_f;
            (square[c] / n_f - mean[c] * mean[c])
                .max(0.0)
                .sqrt()
                .max(1e-6)
        })
        .collect();
    let standardised: Vec<Vec<f32>> = rows
        .par_iter()
        .map(|r| {
            r.x.chunks_exact(h)
                .flat_map(|x| (0..h).map(|c| ((f64::from(x[c]) - mean[c]) / std[c]) as f32))
                .collect()
        })
        .collect();

    // Parameters: h weights, then the bias.
    let mut theta = vec![0f64; h + 1];
    let (mut m, mut v) = (vec![0f64; h + 1], vec![0f64; h + 1]);
    let (beta1, beta2, eps) = (0.9, 0.999, 1e-8);
    let lambda = STREAM_MAX_WEIGHT;
    let rows_f = rows.len() as f64;
    let mut loss = f64::NAN;
    for step in 1..=s.steps {
        let w: Vec<f32> = theta[..h].iter().map(|&w| w as f32).collect();
        let b = theta[h] as f32;
        // Per row: (loss, gradient over the weights and bias).
        let parts: Vec<(f64, Vec<f64>)> = standardised
            .par_iter()
            .zip(rows)
            .map(|(x, row)| {
                let prefixes = x.len() / h;
                let z: Vec<f64> = x
                    .chunks_exact(h)
                    .map(|x| f64::from(logit(&w, b, x)))
                    .collect();
                let top = (0..prefixes)
                    .max_by(|&a, &c| z[a].total_cmp(&z[c]))
                    .unwrap_or(0);
                let p = row.target;
                let each = (1.0 - lambda) / prefixes as f64;
                let mut l = lambda * cross_entropy(z[top], p);
                let mut g = vec![0f64; h + 1];
                for (i, x) in x.chunks_exact(h).enumerate() {
                    l += each * cross_entropy(z[i], p);
                    let mut dz = each * (sigmoid(z[i]) - p);
                    if i == top {
                        dz += lambda * (sigmoid(z[i]) - p);
                    }
                    for c in 0..h {
                        g[c] += dz * f64::from(x[c]);
                    }
                    g[h] += dz;
                }
                (l, g)
            })
            .collect();
        let mut total = 0.0;
        let mut grad = vec![0f64; h + 1];
        for (l, g) in parts {
            total += l;
            for (a, b) in grad.iter_mut().zip(g) {
                *a += b;
            }
        }
        for c in 0..=h {
            grad[c] /= rows_f;
            if c < h {
                grad[c] += s.l2 * theta[c];
            }
        }
        loss = total / rows_f;
        let (c1, c2) = (1.0 - beta1_pow(beta1, step), 1.0 - beta1_pow(beta2, step));
        for c in 0..=h {
            m[c] = beta1 * m[c] + (1.0 - beta1) * grad[c];
            v[c] = beta2 * v[c] + (1.0 - beta2) * grad[c] * grad[c];
            theta[c] -= s.lr * (m[c] / c1) / ((v[c] / c2).sqrt() + eps);
        }
    }
    // σ(Σ w_c (x_c − μ_c)/σ_c + b) = σ(Σ (w_c/σ_c) x_c + b − Σ w_c μ_c/σ_c).
    let weights: Vec<f32> = (0..h).map(|c| (theta[c] / std[c]) as f32).collect();
    let bias = theta[h] - (0..h).map(|c| theta[c] * mean[c] / std[c]).sum::<f64>();
    (weights, bias as f32, loss)
}

fn beta1_pow(beta: f64, step: usize) -> f64 {
    beta.powi(step.min(i32::MAX as usize) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows whose prefixes carry a planted direction when harmful.
    fn planted(rows: usize, h: usize, seed: u64) -> Vec<Row> {
        let mut state = seed;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64) as f32 - 0.5
        };
        (0..rows)
            .map(|r| {
                let harmful = r % 2 == 0;
                let prefixes = 3 + r % 5;
                let mut x = Vec::with_capacity(prefixes * h);
                for i in 0..prefixes {
                    for c in 0..h {
                        // A large, uninformative channel, noise, and a small signal
                        // on channel 1 from the second prefix on.
                        let mut v = next();
                        if c == 0 {
                            v = 40.0 + 5.0 * v;
                        }
                        if c == 1 && harmful && i >= 1 {
                            v += 0.8;
                        }
                        x.push(v);
                    }
                }
                Row {
                    x,
                    target: if harmful { 0.9 } else { 0.1 },
                    harmful,
                }
            })
            .collect()
    }

    #[test]
    fn a_fitted_probe_separates_a_planted_signal_on_held_out_rows() {
        let h = 16;
        let train = planted(200, h, 1);
        let test = planted(100, h, 2);
        let (weights, bias, loss) = fit(&train, h, &ProbeSettings::default());
        assert!(loss.is_finite());
        let readout = Readout {
            weights,
            bias,
            threshold: 0.5,
        };
        let report = evaluate(&readout, &test, h);
        let auroc = report.auroc.unwrap();
        assert!(auroc > 0.95, "held-out AUROC {auroc}");
        // The signal channel carries the weight, not the large constant one.
        assert!(readout.weights[1].abs() > 10.0 * readout.weights[0].abs());
        // A harmless row's first prefix and a harmful row's later prefix
        // fall on either side of one half.
        let at =
            |r: &Row, i: usize| logit(&readout.weights, readout.bias, &r.x[i * h..(i + 1) * h]);
        assert!(at(&test[1], 0) < 0.0 && at(&test[0], 2) > 0.0);
    }

    #[test]
    fn fitting_is_deterministic() {
        let rows = planted(40, 8, 3);
        let s = ProbeSettings {
            steps: 50,
            ..ProbeSettings::default()
        };
        assert_eq!(fit(&rows, 8, &s), fit(&rows, 8, &s));
    }

    #[test]
    fn the_answer_positions_are_the_states_that_choose_each_answer_token() {
        let t = Tokens {
            ids: vec![1, 2, 3, 10, 11],
            prompt_len: 3,
        };
        assert_eq!(answer_positions(&t), vec![2, 3]);
    }
}
