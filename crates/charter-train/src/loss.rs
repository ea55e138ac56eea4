//! The three objectives: SFT cross-entropy on answer tokens, the preference
//! model's soft Bradley–Terry loss, and DPO with soft targets.
//!
//! Losses come back as *sums* over the batch divided by a caller-given
//! denominator, so that micro-batches of one optimizer step add up to the
//! mean over the whole step (gradient accumulation is then exact).

use burn::module::{Module, Param};
use burn::tensor::activation::log_sigmoid;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::data::Tokens;
use crate::kernels;
use crate::tensor::{param_with_id, values};
use crate::{Decoder, Error, Result};

/// Rows right-padded into one `[batch, width]` id tensor.
fn pad(model: &Decoder, rows: &[&Tokens]) -> Result<(Tensor<2, Int>, usize)> {
    let width = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
    if width < 2 {
        return Err(Error::Input(
            "a training row needs at least two tokens".to_string(),
        ));
    }
    let mut ids = Vec::with_capacity(rows.len() * width);
    for row in rows {
        if row.prompt_len == 0 || row.prompt_len > row.ids.len() {
            return Err(Error::Input(format!(
                "a row of {} tokens cannot have a prompt of {}",
                row.ids.len(),
                row.prompt_len
            )));
        }
        ids.extend(row.ids.iter().copied());
        ids.extend(std::iter::repeat_n(0, width - row.ids.len()));
    }
    let id_rows: Vec<&[u32]> = ids.chunks(width).collect();
    let ids = model.ids(&id_rows, &model.device())?;
    Ok((ids, width))
}

/// The log-probability `[n]` of every answer token of `rows`, and an
/// `[batch, n]` 0/1 matrix of which row each belongs to.
///
/// Only the positions that predict an answer token (position `i` of a row
/// whose token `i + 1` is past the prompt) go through the LM head and the
/// softmax over the vocabulary: prompt and padding positions, whose logits
/// the loss would mask out, cost nothing there. (For a small model the
/// vocabulary-wide head and softmax are a large share of a step.)
fn answer_token_logps(model: &Decoder, rows: &[&Tokens]) -> Result<(Tensor<1>, Tensor<2>)> {
    let (ids, width) = pad(model, rows)?;
    let b = rows.len();
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    let mut owners = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        for i in row.prompt_len - 1..row.ids.len() - 1 {
            positions.push((r * width + i) as i64);
            targets.push(i64::from(row.ids[i + 1]));
            owners.push(r);
        }
    }
    let n = positions.len();
    // No answer token at all: one stand-in position that no row owns keeps
    // the graph well-formed and adds exactly zero.
    let stand_in = n == 0;
    if stand_in {
        positions.push(0);
        targets.push(0);
    }
    let width_n = positions.len();
    let mut owner = vec![0f32; b * width_n];
    for (k, &r) in owners.iter().enumerate() {
        owner[r * width_n + k] = 1.0;
    }
    let device = model.device();
    let h = model.config().hidden_size;
    let hidden = model.hidden(ids).reshape([b * width, h]);
    let positions = Tensor::<1, Int>::from_data(TensorData::new(positions, [width_n]), &device);
    let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [width_n]), &device);
    let picked = hidden.select(0, positions);
    let vocab = model.config().vocab_size;
    let logp = match kernels::fused(&picked) {
        true => kernels::token_logp(model.lm_head(picked), targets),
        false => head_logps(model, picked, targets, head_rows(vocab)),
    };
    let owner = Tensor::<2>::from_data(TensorData::new(owner, [b, width_n]), &device);
    Ok((logp, owner))
}

/// Largest logits tensor [`head_logps`] makes at once, in bytes.
const HEAD_CHUNK_BYTES: usize = 64 << 20;

/// Rows of `[rows, vocab]` f32 logits that fit in [`HEAD_CHUNK_BYTES`].
fn head_rows(vocab: usize) -> usize {
    (HEAD_CHUNK_BYTES / (4 * vocab.max(1))).max(1)
}

/// `log softmax(hidden · headᵀ)[target]` per row, `chunk` rows at a time.
///
/// wgpu caps a buffer's size (wgpu's defaults: 256 MiB per buffer, 128 MiB
/// per storage binding; Mesa's software driver refused the 302 MB logits of
/// the default model's 1,536 answer positions at batch 8 × 256), so off
/// flex the logits are never made whole. On flex the fused kernel takes
/// them whole: chunking there would add a full-size LM-head gradient per
/// chunk.
fn head_logps(
    model: &Decoder,
    hidden: Tensor<2>,
    targets: Tensor<1, Int>,
    chunk: usize,
) -> Tensor<1> {
    let n = targets.dims()[0];
    if n <= chunk {
        return kernels::token_logp(model.lm_head(hidden), targets);
    }
    let parts = (0..n)
        .step_by(chunk)
        .map(|start| {
            let len = chunk.min(n - start);
            let logits = model.lm_head(hidden.clone().narrow(0, start, len));
            kernels::token_logp(logits, targets.clone().narrow(0, start, len))
        })
        .collect();
    Tensor::cat(parts, 0)
}

/// Summed next-token cross-entropy over the answer tokens of `rows`,
/// divided by `denominator` (the step's answer-token count).
pub fn sft_loss(model: &Decoder, rows: &[&Tokens], denominator: f64) -> Result<Tensor<1>> {
    Ok(answer_logps(model, rows)?.sum().neg() / denominator)
}

/// Sum of the answer tokens' log-probabilities per row, `[batch]`.
pub fn answer_logps(model: &Decoder, rows: &[&Tokens]) -> Result<Tensor<1>> {
    let (logp, owner) = answer_token_logps(model, rows)?;
    let n = logp.dims()[0];
    Ok(owner.matmul(logp.reshape([n, 1])).reshape([rows.len()]))
}

/// The log-probability of every answer token of `rows` as values, one
/// `Vec` per row (no gradient is kept).
pub fn answer_token_values(model: &Decoder, rows: &[&Tokens]) -> Result<Vec<Vec<f64>>> {
    let (logp, _) = answer_token_logps(model, rows)?;
    let flat = values(logp.into_data())?;
    let mut out = Vec::with_capacity(rows.len());
    let mut at = 0;
    for row in rows {
        let n = row.answer_len();
        out.push(flat[at..at + n].iter().map(|&v| f64::from(v)).collect());
        at += n;
    }
    Ok(out)
}

/// The clipped policy-gradient loss of online RL (PPO's surrogate, Schulman
/// et al. 2017, taken per token with the answer's advantage on each):
///
/// `−Σ_t min(ρ_t·A, clip(ρ_t, 1 − ε, 1 + ε)·A)` over the answer tokens of
/// `rows`, divided by `denominator` (the step's answer-token count), where
/// `ρ_t = π(token)/π_old(token)` against the log-probabilities `old` the
/// rows were sampled with and `A` is the row's advantage.
///
/// Returns the loss and how many tokens the clip held (their gradient is zero).
pub fn clipped_policy_loss(
    model: &Decoder,
    rows: &[&Tokens],
    old: &[&[f64]],
    advantages: &[f64],
    clip: f64,
    denominator: f64,
) -> Result<(Tensor<1>, usize)> {
    let (logp, _) = answer_token_logps(model, rows)?;
    let n = logp.dims()[0];
    let (mut old_t, mut adv_t) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for ((row, old), &a) in rows.iter().zip(old).zip(advantages) {
        if old.len() != row.answer_len() {
            return Err(Error::Input(format!(
                "{} sampling log-probabilities for an answer of {} tokens",
                old.len(),
                row.answer_len()
            )));
        }
        old_t.extend(old.iter().map(|&v| v as f32));
        adv_t.extend(std::iter::repeat_n(a as f32, old.len()));
    }
    if old_t.is_empty() {
        // The stand-in position of a batch without answer tokens.
        old_t.push(0.0);
        adv_t.push(0.0);
    }
    let device = model.device();
    let old = Tensor::<1>::from_data(TensorData::new(old_t, [n]), &device);
    let adv = Tensor::<1>::from_data(TensorData::new(adv_t.clone(), [n]), &device);
    let ratio = (logp - old).exp();
    let (lo, hi) = ((1.0 - clip) as f32, (1.0 + clip) as f32);
    let clipped = values(ratio.clone().into_data())?
        .iter()
        .zip(&adv_t)
        .filter(|&(&r, &a)| (a > 0.0 && r > hi) || (a < 0.0 && r < lo))
        .count();
    let surrogate = (ratio.clone() * adv.clone()).min_pair(ratio.clamp(lo, hi) * adv);
    Ok((surrogate.sum().neg() / denominator, clipped))
}

/// The soft pairwise loss `-(p·log σ(z) + (1 - p)·log σ(-z))` summed over
/// pairs and divided by `denominator`, for margins `z` `[pairs]` and
/// targets `p` (probability that A is better). With `z = 0` every pair
/// costs ln 2.
pub fn soft_pair_loss(z: Tensor<1>, p: &[f64], denominator: f64) -> Tensor<1> {
    let device = z.device();
    let p: Vec<f32> = p.iter().map(|&v| v as f32).collect();
    let n = p.len();
    let p = Tensor::<1>::from_data(TensorData::new(p, [n]), &device);
    let q = p.clone().neg() + 1.0;
    let loss = p * log_sigmoid(z.clone()) + q * log_sigmoid(z.neg());
    loss.sum().neg() / denominator
}

/// A streaming guard's loss on `[batch, width]` prefix scores `z` of
/// `rows`, whose every answer prefix is to predict its row's soft target
/// `p` (P(blocked)):
///
/// `(1 − w)·mean_t BCE(p, σ(z_t)) + w·BCE(p, σ(max_t z_t))` per row, over
/// the answer positions `t` (the prefix ending at each answer token),
/// summed and divided by `denominator`.
///
/// The first term asks every prefix to see where the answer is going; the
/// second scores the row the way the guard acts, by the highest prefix
/// score so far (σ is monotone, so `max σ(z_t) = σ(max z_t)`), which
/// lets a harmful answer's early prefixes stay low as long as a later one
/// is flagged, while a harmless answer must keep every prefix low.
pub fn streaming_loss(
    z: Tensor<2>,
    rows: &[&Tokens],
    p: &[f64],
    max_weight: f64,
    denominator: f64,
) -> Tensor<1> {
    let device = z.device();
    let [b, width] = z.dims();
    let (mut per_token, mut target, mut mask) = (
        vec![0f32; b * width],
        vec![0f32; b * width],
        vec![-1e4f32; b * width],
    );
    for (r, row) in rows.iter().enumerate() {
        let n = row.answer_len().max(1) as f32;
        for t in row.prompt_len..row.ids.len() {
            per_token[r * width + t] = (1.0 - max_weight as f32) / n;
            target[r * width + t] = p[r] as f32;
            mask[r * width + t] = 0.0;
        }
    }
    let tensor = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [b, width]), &device);
    let (w, q) = (tensor(per_token), tensor(target));
    let each = q.clone() * log_sigmoid(z.clone()) + (q.neg() + 1.0) * log_sigmoid(z.clone().neg());
    let tokens = (each * w).sum();
    let highest = (z + tensor(mask)).max_dim(1).reshape([b]);
    let p32: Vec<f32> = p.iter().map(|&v| v as f32).collect();
    let p = Tensor::<1>::from_data(TensorData::new(p32, [b]), &device);
    let rows_max =
        p.clone() * log_sigmoid(highest.clone()) + (p.neg() + 1.0) * log_sigmoid(highest.neg());
    (tokens + rows_max.sum() * max_weight).neg() / denominator
}

/// How many margins point the way the label leans (`p > 0.5` and `z > 0`,
/// or `p < 0.5` and `z < 0`), and how many labels lean at all.
pub fn agreement(z: &[f32], p: &[f64]) -> (usize, usize) {
    let mut agree = 0;
    let mut leaning = 0;
    for (&z, &p) in z.iter().zip(p) {
        if p != 0.5 {
            leaning += 1;
            if (p > 0.5) == (z > 0.0) && z != 0.0 {
                agree += 1;
            }
        }
    }
    (agree, leaning)
}

/// DPO margins `β·((log π(a) − log π_ref(a)) − (log π(b) − log π_ref(b)))`
/// for pairs whose A and B conversations are `rows[..n]` and `rows[n..]`,
/// with the reference model's answer log-probs `reference` (`[a, b]` per pair).
pub fn dpo_margins(
    model: &Decoder,
    rows: &[&Tokens],
    reference: &[[f64; 2]],
    beta: f64,
) -> Result<Tensor<1>> {
    let n = reference.len();
    if rows.len() != 2 * n {
        return Err(Error::Input(format!(
            "{} conversations for {n} pairs",
            rows.len()
        )));
    }
    let logps = answer_logps(model, rows)?;
    let device = model.device();
    let ref_margin: Vec<f32> = reference.iter().map(|[a, b]| (a - b) as f32).collect();
    let ref_margin = Tensor::<1>::from_data(TensorData::new(ref_margin, [n]), &device);
    let policy_margin = logps.clone().narrow(0, 0, n) - logps.narrow(0, n, n);
    Ok((policy_margin - ref_margin) * beta)
}

/// A preference model: the decoder's final hidden state at a
/// conversation's last token, projected to a scalar score.
#[derive(Module, Debug)]
pub struct PreferenceModel {
    /// The language model backbone (its LM head goes unused).
    pub backbone: Decoder,
    /// The score head `[1, hidden]` (HuggingFace's `score.weight`).
    pub score: Param<Tensor<2>>,
}

/// Parameter id of the score head: after every decoder parameter.
const SCORE_ID: u64 = 1 << 40;

impl PreferenceModel {
    /// A preference model on `backbone` with a zero score head (every
    /// score 0 until trained), or with the head `score` (`hidden` values).
    pub fn new(backbone: Decoder, score: Option<Vec<f32>>) -> Result<Self> {
        let h = backbone.config().hidden_size;
        let values = score.unwrap_or_else(|| vec![0.0; h]);
        if values.len() != h {
            return Err(Error::Shape {
                name: "score.weight".to_string(),
                got: vec![values.len()],
                want: vec![1, h],
            });
        }
        let device: Device = backbone.device();
        let head = Tensor::<2>::from_data(TensorData::new(values, [1, h]), &device);
        Ok(PreferenceModel {
            backbone,
            score: param_with_id(SCORE_ID, head),
        })
    }

    /// Scores `[batch]` of whole conversations `rows` (prompt and answer),
    /// read at each row's last token.
    pub fn scores(&self, rows: &[&Tokens]) -> Result<Tensor<1>> {
        let (ids, width) = pad(&self.backbone, rows)?;
        let h = self.backbone.config().hidden_size;
        let b = rows.len();
        let hidden = self.backbone.hidden(ids).reshape([b * width, h]);
        let last: Vec<i64> = rows
            .iter()
            .enumerate()
            .map(|(r, row)| (r * width + row.ids.len() - 1) as i64)
            .collect();
        let device = self.backbone.device();
        let last = Tensor::<1, Int>::from_data(TensorData::new(last, [b]), &device);
        let picked = hidden.select(0, last);
        Ok(picked.matmul(self.score.val().transpose()).reshape([b]))
    }

    /// Scores `[batch, width]` at every position of `rows` (prompt, answer
    /// and padding alike): position `i` reads tokens `0..=i` only, so the
    /// score of every prefix comes from one forward pass.
    pub fn prefix_scores(&self, rows: &[&Tokens]) -> Result<Tensor<2>> {
        let (ids, width) = pad(&self.backbone, rows)?;
        let h = self.backbone.config().hidden_size;
        let b = rows.len();
        let hidden = self.backbone.hidden(ids).reshape([b * width, h]);
        Ok(hidden
            .matmul(self.score.val().transpose())
            .reshape([b, width]))
    }

    /// Each row's scores at its answer positions: entry `j` reads the
    /// prompt and answer tokens `0..=j`.
    pub fn answer_prefix_scores(&self, rows: &[&Tokens]) -> Result<Vec<Vec<f32>>> {
        let z = values(self.prefix_scores(rows)?.into_data())?;
        let width = z.len() / rows.len().max(1);
        Ok(rows
            .iter()
            .enumerate()
            .map(|(r, row)| z[r * width + row.prompt_len..r * width + row.ids.len()].to_vec())
            .collect())
    }

    /// The score head's values.
    pub fn score_values(&self) -> Result<Vec<f32>> {
        values(self.score.val().into_data())
    }
}

/// A one-element tensor's value.
pub fn scalar(t: &Tensor<1>) -> Result<f32> {
    values(t.to_data())?
        .first()
        .copied()
        .ok_or_else(|| Error::Data("empty loss tensor".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// The chunked LM head (used off flex) gives the same log-probs and
    /// hidden-state gradients as the whole head.
    #[test]
    fn chunked_head_matches_whole_head() {
        let dir = tempfile::tempdir().unwrap();
        charter_model::write_tiny(dir.path(), 3).unwrap();
        let device = Device::flex().autodiff();
        let model = Decoder::open(dir.path(), &device).unwrap();
        let (n, h, vocab) = (7, model.config().hidden_size, model.config().vocab_size);
        let hidden = Tensor::<2>::random([n, h], Distribution::Normal(0.0, 1.0), &device);
        let ids: Vec<i64> = (0..n as i64).map(|i| (i * 37) % vocab as i64).collect();
        let targets = Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &device);
        let run = |chunk: usize| {
            let x = hidden.clone().detach().require_grad();
            let logp = head_logps(&model, x.clone(), targets.clone(), chunk);
            let grads = logp.clone().sum().backward();
            let values: Vec<f32> = logp.inner().into_data().try_to_vec().unwrap();
            let grad: Vec<f32> = x.grad(&grads).unwrap().into_data().try_to_vec().unwrap();
            (values, grad)
        };
        let (whole, chunked) = (run(n), run(3));
        for (a, b) in whole
            .0
            .iter()
            .zip(&chunked.0)
            .chain(whole.1.iter().zip(&chunked.1))
        {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert_eq!(head_rows(49_152), 341);
    }

    /// On the answers' own sampling log-probabilities every ratio is 1: the
    /// loss is −Σ A over answer tokens / denominator and nothing is
    /// clipped. Against log-probabilities far below the model's, ratios are
    /// huge: every token of a positive advantage is held at 1 + ε, and one
    /// of a negative advantage is not (its ratio is above 1 − ε).
    #[test]
    fn clipped_policy_loss_is_the_advantage_at_ratio_one_and_holds_large_ratios() {
        let dir = tempfile::tempdir().unwrap();
        charter_model::write_tiny(dir.path(), 3).unwrap();
        let device = Device::flex().autodiff();
        let model = Decoder::open(dir.path(), &device).unwrap();
        let rows = [
            Tokens {
                ids: vec![5, 6, 7, 8, 9],
                prompt_len: 2,
            },
            Tokens {
                ids: vec![5, 6, 10, 11],
                prompt_len: 3,
            },
        ];
        let refs: Vec<&Tokens> = rows.iter().collect();
        let own = answer_token_values(&model, &refs).unwrap();
        assert_eq!(own.iter().map(Vec::len).collect::<Vec<_>>(), [3, 1]);
        let sums: Vec<f32> = values(answer_logps(&model, &refs).unwrap().into_data()).unwrap();
        for (o, s) in own.iter().zip(&sums) {
            assert!((o.iter().sum::<f64>() - f64::from(*s)).abs() < 1e-4);
        }
        // Sampling log-probabilities come from the same weights without
        // autodiff: the same values up to rounding.
        let plain = Decoder::open(dir.path(), &Device::flex()).unwrap();
        let own_plain = answer_token_values(&plain, &refs).unwrap();
        for (a, b) in own.iter().flatten().zip(own_plain.iter().flatten()) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let old: Vec<&[f64]> = own_plain.iter().map(Vec::as_slice).collect();
        let (adv, denominator) = ([0.5, -2.0], 4.0);
        let (loss, clipped) =
            clipped_policy_loss(&model, &refs, &old, &adv, 0.2, denominator).unwrap();
        let want = -(3.0 * 0.5 + 1.0 * -2.0) / denominator;
        assert!((f64::from(scalar(&loss).unwrap()) - want).abs() < 1e-5);
        assert_eq!(clipped, 0);

        let low: Vec<Vec<f64>> = own
            .iter()
            .map(|o| o.iter().map(|v| v - 5.0).collect())
            .collect();
        let old: Vec<&[f64]> = low.iter().map(Vec::as_slice).collect();
        let (loss, clipped) =
            clipped_policy_loss(&model, &refs, &old, &adv, 0.2, denominator).unwrap();
        let ratio = 5f64.exp();
        let want = -(3.0 * 0.5 * 1.2 + 1.0 * -2.0 * ratio) / denominator;
        let got = f64::from(scalar(&loss).unwrap());
        assert!((got - want).abs() < 1e-3 * want.abs(), "{got} vs {want}");
        assert_eq!(clipped, 3);
    }
}
