//! Choosing the next token: a repetition penalty and an n-gram ban on the
//! row's own history, then greedy, temperature, top-k and top-p, with a
//! per-row random stream so a row's tokens never depend on its neighbours.

use std::collections::HashMap;

/// Sampling settings, shared by every row of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 keeps every token.
    pub top_p: f32,
    /// Keep only the k most likely tokens; 0 keeps every token.
    pub top_k: usize,
    /// The repetition penalty of CTRL (<https://arxiv.org/abs/1909.05858>,
    /// §4.1) as Hugging Face transformers' `RepetitionPenaltyLogitsProcessor`
    /// applies it: the logit of every token id already in the row's
    /// sequence, prompt included, is divided by it when positive and
    /// multiplied by it otherwise, once however often the id occurs.
    /// 1 is off; above 1 discourages repeats. Applied before temperature.
    pub repetition_penalty: f32,
    /// A token that would complete an n-gram of this size already in the
    /// row's sequence, prompt included, is never chosen (transformers'
    /// `NoRepeatNGramLogitsProcessor`); 0 is off. Applied before temperature.
    pub no_repeat_ngram_size: usize,
}

impl Sampling {
    /// Greedy decoding.
    pub const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        repetition_penalty: 1.0,
        no_repeat_ngram_size: 0,
    };
}

/// One row's sequence so far (prompt and generated tokens), as much of it
/// as the repetition settings need: the distinct token ids for the penalty
/// and, for the n-gram ban, every (n-1)-gram with the tokens that followed
/// it. Both are updated a token at a time, so a step costs the number of
/// distinct ids plus one lookup, never a scan of the history or the
/// vocabulary. With both settings off it holds nothing and does nothing.
#[derive(Debug, Clone)]
pub struct RowHistory {
    /// The repetition penalty; 1 is off.
    penalty: f32,
    /// Bit `i` set: token `i` is in the sequence (ids below the vocabulary only).
    seen: Vec<u64>,
    /// The ids whose bit is set, in order of first appearance.
    distinct: Vec<u32>,
    /// The n-gram size; 0 is off.
    n: usize,
    /// The sequence, kept only for the n-gram ban.
    tokens: Vec<u32>,
    /// Each (n-1)-gram of the sequence → the tokens that followed it, each
    /// once. Only looked up, never iterated: hash order cannot reach a token.
    followers: HashMap<Box<[u32]>, Vec<u32>>,
}

impl RowHistory {
    /// The history of a row that starts with `prompt`, for a model of
    /// `vocab` logits.
    pub fn new(s: &Sampling, vocab: usize, prompt: &[u32]) -> Self {
        let penalty = s.repetition_penalty;
        let mut history = RowHistory {
            penalty,
            seen: if penalty == 1.0 {
                Vec::new()
            } else {
                vec![0; vocab.div_ceil(64)]
            },
            distinct: Vec::new(),
            n: s.no_repeat_ngram_size,
            tokens: Vec::new(),
            followers: HashMap::new(),
        };
        for &token in prompt {
            history.push(token);
        }
        history
    }

    /// Appends a token to the sequence.
    pub fn push(&mut self, token: u32) {
        if self.penalty != 1.0
            && let Some(word) = self.seen.get_mut(token as usize / 64)
        {
            let bit = 1u64 << (token % 64);
            if *word & bit == 0 {
                *word |= bit;
                self.distinct.push(token);
            }
        }
        if self.n > 0 {
            self.tokens.push(token);
            let end = self.tokens.len();
            if end >= self.n {
                let prefix = &self.tokens[end - self.n..end - 1];
                match self.followers.get_mut(prefix) {
                    Some(next) if !next.contains(&token) => next.push(token),
                    Some(_) => {}
                    None => {
                        self.followers.insert(prefix.into(), vec![token]);
                    }
                }
            }
        }
    }

    /// The tokens that would complete an n-gram already in the sequence.
    fn banned(&self) -> &[u32] {
        let end = self.tokens.len();
        if self.n == 0 || end + 1 < self.n {
            return &[];
        }
        self.followers
            .get(&self.tokens[end + 1 - self.n..])
            .map_or(&[], Vec::as_slice)
    }

    /// Applies the repetition penalty and the n-gram ban to the logits of
    /// the row's next token, in place; call it before [`sample`]. When the
    /// ban would leave no token at all (only possible with a vocabulary
    /// smaller than the n-grams seen), it is lifted for that step rather
    /// than leave nothing to choose.
    pub fn apply(&self, logits: &mut [f32]) {
        if self.penalty != 1.0 {
            for &id in &self.distinct {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l < 0.0 {
                        *l * self.penalty
                    } else {
                        *l / self.penalty
                    };
                }
            }
        }
        let banned = self.banned();
        let in_range = banned
            .iter()
            .filter(|&&t| (t as usize) < logits.len())
            .count();
        if in_range < logits.len() {
            for &t in banned {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// A counter-based random stream (splitmix64) for one row. Written out here
/// rather than taken from a crate so the stream, and with it every sampled
/// token, stays the same across dependency upgrades.
#[derive(Debug, Clone)]
pub struct RowRng {
    state: u64,
}

impl RowRng {
    /// The stream for a row seed.
    pub fn new(seed: u64) -> Self {
        RowRng {
            state: seed ^ 0x6a09_e667_f3bc_c909,
        }
    }

    /// The next value in [0, 1), with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Index of the largest logit (the first, on ties).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best
}

/// Picks the next token from one row's logits (after [`RowHistory::apply`]).
/// One random draw per call (none when greedy), so the stream advances the
/// same way on every run.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut RowRng) -> usize {
    if s.temperature <= 0.0 {
        return argmax(logits);
    }
    let t = f64::from(s.temperature);
    // Candidates sorted by logit, descending; ties by id for determinism.
    let mut ids: Vec<usize> = (0..logits.len()).collect();
    let k = if s.top_k > 0 {
        s.top_k.min(ids.len())
    } else {
        ids.len()
    };
    let cmp = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
    if k < ids.len() {
        ids.select_nth_unstable_by(k - 1, cmp);
        ids.truncate(k);
    }
    ids.sort_unstable_by(cmp);
    let max = f64::from(logits[ids[0]]);
    let mut probs: Vec<f64> = ids
        .iter()
        .map(|&i| ((f64::from(logits[i]) - max) / t).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    for p in &mut probs {
        *p /= total;
    }
    if s.top_p < 1.0 {
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            cum += p;
            if cum >= f64::from(s.top_p) {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        ids.truncate(keep);
        let total: f64 = probs.iter().sum();
        for p in &mut probs {
            *p /= total;
        }
    }
    let u = rng.next_f64();
    let mut cum = 0.0;
    for (i, p) in probs.iter().enumerate() {
        cum += p;
        if u < cum {
            return ids[i];
        }
    }
    // Rounding left `u` above the sum: the last candidate that can occur
    // (not one banned to probability 0).
    let last = probs
        .iter()
        .rposition(|&p| p > 0.0)
        .unwrap_or(probs.len() - 1);
    ids[last]
}

/// Natural log of the softmax probability of `target` under the first `vocab` logits.
pub fn log_softmax_at(logits: &[f32], vocab: usize, target: usize) -> f64 {
    let row = &logits[..vocab];
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row
        .iter()
        .map(|&v| (f64::from(v) - f64::from(max)).exp())
        .sum();
    f64::from(row[target]) - f64::from(max) - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, 1.0]), 1);
        let mut rng = RowRng::new(1);
        assert_eq!(sample(&[0.0, 3.0, 1.0], &Sampling::GREEDY, &mut rng), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_cuts_the_tail() {
        let logits = [1.0, 5.0, 4.9, -3.0];
        let s = Sampling {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 1,
            ..Sampling::GREEDY
        };
        let mut rng = RowRng::new(7);
        for _ in 0..20 {
            assert_eq!(sample(&logits, &s, &mut rng), 1);
        }
        // p(1) ≈ 0.51, p(2) ≈ 0.46: top_p = 0.9 keeps exactly those two.
        let s = Sampling {
            temperature: 1.0,
            top_p: 0.9,
            top_k: 0,
            ..Sampling::GREEDY
        };
        let mut seen = [0; 4];
        for _ in 0..2000 {
            seen[sample(&logits, &s, &mut rng)] += 1;
        }
        assert_eq!(seen[0] + seen[3], 0);
        assert!(seen[1] > 800 && seen[2] > 800, "{seen:?}");
    }

    #[test]
    fn sampling_follows_the_distribution_and_the_seed() {
        let logits = [0.0f32, (3.0f32).ln()]; // p = 0.25, 0.75
        let s = Sampling {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            ..Sampling::GREEDY
        };
        let mut rng = RowRng::new(42);
        let ones = (0..20_000)
            .filter(|_| sample(&logits, &s, &mut rng) == 1)
            .count();
        assert!((ones as f64 / 20_000.0 - 0.75).abs() < 0.02, "{ones}");
        let draw = |seed| {
            let mut r = RowRng::new(seed);
            (0..32)
                .map(|_| sample(&logits, &s, &mut r))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
    }

    fn with(repetition_penalty: f32, no_repeat_ngram_size: usize) -> Sampling {
        Sampling {
            repetition_penalty,
            no_repeat_ngram_size,
            ..Sampling::GREEDY
        }
    }

    #[test]
    fn the_penalty_divides_positive_logits_and_multiplies_negative_ones() {
        // Ids 0, 2 and 3 are in the prompt, 2 twice: penalised once each.
        let history = RowHistory::new(&with(2.0, 0), 5, &[2, 0, 2, 3]);
        let mut logits = [4.0f32, 4.0, -1.5, 0.0, -3.0];
        history.apply(&mut logits);
        assert_eq!(logits, [2.0, 4.0, -3.0, 0.0, -3.0]);
        // Generated tokens count as well as the prompt's.
        let mut history = history;
        history.push(4);
        let mut logits = [4.0f32, 4.0, -1.5, 0.0, -3.0];
        history.apply(&mut logits);
        assert_eq!(logits, [2.0, 4.0, -3.0, 0.0, -6.0]);
        // A penalty below 1 favours repeats; ids beyond the logits are ignored.
        let history = RowHistory::new(&with(0.5, 0), 3, &[1, 7]);
        let mut logits = [1.0f32, 1.0, 1.0];
        history.apply(&mut logits);
        assert_eq!(logits, [1.0, 2.0, 1.0]);
    }

    #[test]
    fn greedy_moves_off_a_penalised_token() {
        let logits = [1.0f32, 3.0, 2.0];
        let mut rng = RowRng::new(0);
        let pick = |s: &Sampling, prompt: &[u32], rng: &mut RowRng| {
            let mut l = logits;
            RowHistory::new(s, 3, prompt).apply(&mut l);
            sample(&l, s, rng)
        };
        assert_eq!(pick(&Sampling::GREEDY, &[1], &mut rng), 1);
        // 3 / 1.2 = 2.5 still beats 2; 3 / 2 = 1.5 does not.
        assert_eq!(pick(&with(1.2, 0), &[1], &mut rng), 1);
        assert_eq!(pick(&with(2.0, 0), &[1], &mut rng), 2);
        // The same with temperature: the penalty comes first.
        let hot = Sampling {
            temperature: 1.0,
            top_k: 1,
            ..with(2.0, 0)
        };
        assert_eq!(pick(&hot, &[1], &mut rng), 2);
    }

    #[test]
    fn a_token_that_would_repeat_an_n_gram_is_banned() {
        // Bigrams of 5 1 2 1 3 1: (5,1) (1,2) (2,1) (1,3) (3,1). After a 1,
        // the tokens 2 and 3 would repeat one.
        let s = with(1.0, 2);
        let mut history = RowHistory::new(&s, 6, &[5, 1, 2, 1, 3]);
        history.push(1);
        let mut logits = [0.0f32; 6];
        history.apply(&mut logits);
        let inf = f32::NEG_INFINITY;
        assert_eq!(logits, [0.0, 0.0, inf, inf, 0.0, 0.0]);
        // Greedy and sampling both avoid them.
        let mut rng = RowRng::new(3);
        let mut logits = [0.0f32, 0.0, 9.0, 8.0, 0.0, 0.0];
        history.apply(&mut logits);
        assert_eq!(sample(&logits, &s, &mut rng), 0);
        let hot = Sampling {
            temperature: 1.0,
            ..s
        };
        for _ in 0..200 {
            let t = sample(&logits, &hot, &mut rng);
            assert!(t != 2 && t != 3, "{t}");
        }
        // After a 3 only 1 is banned; trigrams need two tokens of context.
        history.push(3);
        let mut logits = [0.0f32; 6];
        history.apply(&mut logits);
        assert_eq!(logits, [0.0, inf, 0.0, 0.0, 0.0, 0.0]);
        let history = RowHistory::new(&with(1.0, 3), 6, &[4]);
        let mut logits = [0.0f32; 6];
        history.apply(&mut logits);
        assert_eq!(logits, [0.0; 6]);
        // Size 1 bans every token seen.
        let history = RowHistory::new(&with(1.0, 1), 4, &[0, 2]);
        let mut logits = [0.0f32; 4];
        history.apply(&mut logits);
        assert_eq!(logits, [inf, 0.0, inf, 0.0]);
    }

    #[test]
    fn a_ban_of_every_token_is_lifted() {
        let history = RowHistory::new(&with(1.0, 1), 2, &[0, 1]);
        let mut logits = [1.0f32, 2.0];
        history.apply(&mut logits);
        assert_eq!(logits, [1.0, 2.0]);
    }

    #[test]
    fn the_defaults_leave_the_logits_alone() {
        let history = RowHistory::new(&Sampling::GREEDY, 4, &[0, 1, 0, 1]);
        let mut logits = [1.0f32, -2.0, 3.0, 0.5];
        history.apply(&mut logits);
        assert_eq!(logits, [1.0, -2.0, 3.0, 0.5]);
        assert!(history.seen.is_empty() && history.tokens.is_empty());
    }

    #[test]
    fn log_softmax_normalises() {
        let logits = [1.0f32, 2.0, 3.0];
        let total: f64 = (0..3).map(|i| log_softmax_at(&logits, 3, i).exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
    }
}
