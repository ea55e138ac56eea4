//! Choosing the next token: greedy, temperature, top-k and top-p, with a
//! per-row random stream so a row's tokens never depend on its neighbours.

/// Sampling settings, shared by every row of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 keeps every token.
    pub top_p: f32,
    /// Keep only the k most likely tokens; 0 keeps every token.
    pub top_k: usize,
}

impl Sampling {
    /// Greedy decoding.
    pub const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
    };
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

/// Picks the next token from one row's logits. One random draw per call
/// (none when greedy), so the stream advances the same way on every run.
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
    ids[ids.len() - 1]
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

    #[test]
    fn log_softmax_normalises() {
        let logits = [1.0f32, 2.0, 3.0];
        let total: f64 = (0..3).map(|i| log_softmax_at(&logits, 3, i).exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
    }
}
