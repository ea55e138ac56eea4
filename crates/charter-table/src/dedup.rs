//! Deduplication of text: exact (after normalisation) and near-duplicate
//! (MinHash LSH over word n-grams, confirmed by exact Jaccard similarity).
//!
//! Both are deterministic: rows are considered in input order and the first
//! row of a duplicate group survives. A near duplicate is only ever dropped
//! for its similarity to a row that is kept, so similarity does not chain
//! (A ≈ B ≈ C does not drop C when C is far from A and B was dropped).
//!
//! MinHash signatures and exact keys are computed in parallel; the LSH pass
//! that decides survivors is sequential, which is what makes it deterministic.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use rayon::prelude::*;
use unicode_normalization::UnicodeNormalization;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::error::{Error, Result};

/// Normalises text for exact-duplicate hashing: Unicode NFC, trimmed, every
/// run of whitespace collapsed to one space. Case is kept.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for c in text.nfc() {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
        } else {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            out.push(c);
        }
    }
    out
}

/// Near-duplicate detection settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NearDupOptions {
    /// Jaccard similarity of word n-gram sets at or above which two texts are duplicates.
    pub threshold: f64,
    /// MinHash signature length.
    pub num_perm: usize,
    /// Words per shingle.
    pub ngram: usize,
}

impl Default for NearDupOptions {
    fn default() -> Self {
        NearDupOptions {
            threshold: 0.8,
            num_perm: 128,
            ngram: 5,
        }
    }
}

/// What to deduplicate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DedupOptions {
    /// Drop rows whose normalised text equals an earlier row's.
    pub exact: bool,
    /// Drop rows similar to an earlier kept row.
    pub near: Option<NearDupOptions>,
}

impl Default for DedupOptions {
    fn default() -> Self {
        DedupOptions {
            exact: true,
            near: Some(NearDupOptions::default()),
        }
    }
}

/// The fate of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The row survives.
    Keep,
    /// Same normalised text as the earlier row `of`.
    Exact {
        /// Index of the first row with this text.
        of: usize,
    },
    /// Similar to the earlier, kept row `of`.
    Near {
        /// Index of the kept row it matched.
        of: usize,
    },
}

/// Counts of a dedup run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DedupCounts {
    /// Rows kept.
    pub kept: u64,
    /// Rows dropped as exact duplicates.
    pub exact: u64,
    /// Rows dropped as near duplicates.
    pub near: u64,
}

impl DedupCounts {
    /// Tallies verdicts.
    pub fn of(verdicts: &[Verdict]) -> Self {
        let mut c = DedupCounts::default();
        for v in verdicts {
            match v {
                Verdict::Keep => c.kept += 1,
                Verdict::Exact { .. } => c.exact += 1,
                Verdict::Near { .. } => c.near += 1,
            }
        }
        c
    }
}

/// Decides which of `texts` survive; one verdict per text, in order.
pub fn dedup<S: AsRef<str> + Sync>(texts: &[S], options: &DedupOptions) -> Result<Vec<Verdict>> {
    let mut verdicts = vec![Verdict::Keep; texts.len()];
    if options.exact {
        let keys: Vec<u128> = texts.par_iter().map(|t| exact_key(t.as_ref())).collect();
        let mut first: HashMap<u128, usize, PassThrough> =
            HashMap::with_capacity_and_hasher(keys.len(), PassThrough::default());
        for (i, k) in keys.into_iter().enumerate() {
            match first.get(&k) {
                Some(&of) => verdicts[i] = Verdict::Exact { of },
                None => {
                    first.insert(k, i);
                }
            }
        }
    }
    if let Some(near) = &options.near {
        near_dedup(texts, near, &mut verdicts)?;
    }
    Ok(verdicts)
}

/// The exact-duplicate key of a text: 128 bits of blake3 over its normal form.
pub fn exact_key(text: &str) -> u128 {
    let hash = blake3::hash(normalize(text).as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&hash.as_bytes()[..16]);
    u128::from_le_bytes(b)
}

/// Probability, at the threshold itself, that a pair of texts shares a band.
pub const RECALL_AT_THRESHOLD: f64 = 0.99;

/// LSH banding `(bands, rows per band)` for a Jaccard `threshold` with
/// `num_perm` hashes: the most selective banding (most rows per band) whose
/// S-curve `1 - (1 - s^r)^b` still makes a pair at the threshold a candidate
/// with probability at least [`RECALL_AT_THRESHOLD`]. Candidates are
/// confirmed by exact Jaccard, so a looser filter costs only comparisons,
/// while a missed candidate is a duplicate kept.
pub fn lsh_params(threshold: f64, num_perm: usize) -> (usize, usize) {
    let num_perm = num_perm.max(1);
    let recall = |b: usize, r: usize| 1.0 - (1.0 - threshold.powi(r as i32)).powi(b as i32);
    (1..=num_perm)
        .rev()
        .map(|r| (num_perm / r, r))
        .find(|&(b, r)| recall(b, r) >= RECALL_AT_THRESHOLD)
        .unwrap_or((num_perm, 1))
}

/// Hashed word n-grams of a text, sorted and deduplicated: lowercased
/// alphanumeric words, so case and punctuation do not separate near duplicates.
/// A text shorter than `ngram` words is one shingle of all its words.
pub fn shingles(text: &str, ngram: usize) -> Vec<u64> {
    let mut words: Vec<u64> = Vec::with_capacity(32);
    let mut word = String::new();
    for c in text.nfc() {
        if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else if !word.is_empty() {
            words.push(xxh3_64(word.as_bytes()));
            word.clear();
        }
    }
    if !word.is_empty() {
        words.push(xxh3_64(word.as_bytes()));
    }
    if words.is_empty() {
        return Vec::new();
    }
    let n = ngram.max(1).min(words.len());
    let mut out: Vec<u64> = words
        .windows(n)
        .map(|w| {
            let mut bytes = [0u8; 8 * 16];
            let len = w.len().min(16);
            for (i, h) in w.iter().take(len).enumerate() {
                bytes[i * 8..i * 8 + 8].copy_from_slice(&h.to_le_bytes());
            }
            xxh3_64(&bytes[..len * 8])
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Jaccard similarity of two sorted, deduplicated sets.
pub fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let (mut i, mut j, mut common) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                common += 1;
                i += 1;
                j += 1;
            }
        }
    }
    common as f64 / (a.len() + b.len() - common) as f64
}

/// MinHash over shingle hashes with `num_perm` multiply-shift hash functions
/// drawn from a fixed seed, so signatures are the same on every machine.
struct MinHasher {
    mul: Vec<u64>,
    add: Vec<u64>,
}

impl MinHasher {
    fn new(num_perm: usize) -> Self {
        let mut state = 0x6368_6172_7465_7231u64; // "charter1"
        let mut next = || {
            // splitmix64
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut mul = Vec::with_capacity(num_perm);
        let mut add = Vec::with_capacity(num_perm);
        for _ in 0..num_perm {
            mul.push(next() | 1);
            add.push(next());
        }
        MinHasher { mul, add }
    }

    fn signature(&self, shingles: &[u64], out: &mut [u32]) {
        out.fill(u32::MAX);
        for &x in shingles {
            for ((o, &m), &a) in out.iter_mut().zip(&self.mul).zip(&self.add) {
                let h = (m.wrapping_mul(x).wrapping_add(a) >> 32) as u32;
                *o = (*o).min(h);
            }
        }
    }
}

fn near_dedup<S: AsRef<str> + Sync>(
    texts: &[S],
    opts: &NearDupOptions,
    verdicts: &mut [Verdict],
) -> Result<()> {
    if !(opts.threshold > 0.0 && opts.threshold <= 1.0) {
        return Err(Error::Invalid(format!(
            "near-duplicate threshold must be in (0, 1], got {}",
            opts.threshold
        )));
    }
    if opts.num_perm == 0 || opts.num_perm > 1024 || opts.ngram == 0 {
        return Err(Error::Invalid(format!(
            "near-duplicate settings out of range: num_perm {} (1..=1024), ngram {} (>= 1)",
            opts.num_perm, opts.ngram
        )));
    }
    let (bands, rows) = lsh_params(opts.threshold, opts.num_perm);
    let hasher = MinHasher::new(bands * rows);
    const NO_KEYS: u64 = 0;

    // Band keys of every candidate row, computed in parallel.
    let mut keys = vec![NO_KEYS; texts.len() * bands];
    keys.par_chunks_mut(bands)
        .zip(texts.par_iter())
        .zip(verdicts.par_iter())
        .for_each_init(
            || vec![0u32; bands * rows],
            |sig, ((out, text), verdict)| {
                if *verdict != Verdict::Keep {
                    return;
                }
                let sh = shingles(text.as_ref(), opts.ngram);
                if sh.is_empty() {
                    return;
                }
                hasher.signature(&sh, sig);
                for (band, key) in out.iter_mut().enumerate() {
                    let bytes: Vec<u8> = sig[band * rows..(band + 1) * rows]
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect();
                    *key = xxh3_64_with_seed(&bytes, band as u64).max(1);
                }
            },
        );

    // Sequential pass: each band key heads a linked list of kept rows.
    const NIL: u32 = u32::MAX;
    let mut heads: HashMap<u64, u32, PassThrough> =
        HashMap::with_capacity_and_hasher(texts.len() * bands / 2, PassThrough::default());
    let mut nodes: Vec<(u32, u32)> = Vec::new(); // (row, next)
    let mut checked: Vec<u32> = Vec::new();
    for i in 0..texts.len() {
        let row_keys = &keys[i * bands..(i + 1) * bands];
        if verdicts[i] != Verdict::Keep || row_keys[0] == NO_KEYS {
            continue;
        }
        checked.clear();
        let mut own: Option<Vec<u64>> = None;
        let mut found = None;
        'bands: for key in row_keys {
            let mut n = heads.get(key).copied().unwrap_or(NIL);
            while n != NIL {
                let (cand, next) = nodes[n as usize];
                if !checked.contains(&cand) {
                    checked.push(cand);
                    let own = own.get_or_insert_with(|| shingles(texts[i].as_ref(), opts.ngram));
                    let other = shingles(texts[cand as usize].as_ref(), opts.ngram);
                    if jaccard(own, &other) >= opts.threshold {
                        found = Some(cand as usize);
                        break 'bands;
                    }
                }
                n = next;
            }
        }
        match found {
            Some(of) => verdicts[i] = Verdict::Near { of },
            None => {
                for key in row_keys {
                    let next = heads.get(key).copied().unwrap_or(NIL);
                    heads.insert(*key, nodes.len() as u32);
                    nodes.push((i as u32, next));
                }
            }
        }
    }
    Ok(())
}

/// A hasher for keys that are already uniformly distributed hashes.
#[derive(Default)]
struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
    fn write_u128(&mut self, v: u128) {
        self.0 ^= v as u64 ^ (v >> 64) as u64;
    }
}

type PassThrough = BuildHasherDefault<PassThroughHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_collapses_whitespace_and_composes() {
        assert_eq!(normalize("  a \t b\n\nc  "), "a b c");
        // "e" + combining acute becomes the precomposed "é".
        assert_eq!(normalize("cafe\u{301}"), "caf\u{e9}");
        assert_eq!(normalize("Case Kept"), "Case Kept");
        assert_eq!(normalize(" \n "), "");
    }

    #[test]
    fn exact_duplicates_keep_the_first() {
        let texts = [
            "Hello  world",
            "other",
            "hello world",
            " Hello world ",
            "other",
        ];
        let v = dedup(
            &texts,
            &DedupOptions {
                exact: true,
                near: None,
            },
        )
        .unwrap();
        assert_eq!(
            v,
            vec![
                Verdict::Keep,
                Verdict::Keep,
                Verdict::Keep,
                Verdict::Exact { of: 0 },
                Verdict::Exact { of: 1 }
            ]
        );
    }

    #[test]
    fn near_duplicates_are_found_and_do_not_chain() {
        let base = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat by the door";
        let near = "The quick brown fox jumps over the lazy dog, while the cat sleeps on the warm mat by the door!";
        let one_word = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm rug by the door";
        let far = "a completely different sentence about cooking pasta with garlic olive oil and fresh basil leaves";
        let texts = [base, far, near, one_word];
        let v = dedup(&texts, &DedupOptions::default()).unwrap();
        assert_eq!(v[0], Verdict::Keep);
        assert_eq!(v[1], Verdict::Keep);
        assert_eq!(v[2], Verdict::Near { of: 0 });
        // One word changed near the end of 20 leaves 12 of 16 five-grams shared: J = 12/20 < 0.8.
        assert_eq!(v[3], Verdict::Keep);
        let loose = DedupOptions {
            exact: true,
            near: Some(NearDupOptions {
                threshold: 0.5,
                ..Default::default()
            }),
        };
        assert_eq!(dedup(&texts, &loose).unwrap()[3], Verdict::Near { of: 0 });
    }

    #[test]
    fn lsh_params_keep_recall_at_the_threshold() {
        let p = |b: usize, r: usize, s: f64| 1.0 - (1.0 - s.powi(r as i32)).powi(b as i32);
        for (t, n) in [(0.8, 128), (0.5, 128), (0.9, 64), (0.7, 256)] {
            let (b, r) = lsh_params(t, n);
            assert!(b * r <= n);
            assert!(
                p(b, r, t) >= RECALL_AT_THRESHOLD,
                "t={t} n={n}: b={b} r={r}"
            );
            // One more row per band would drop below the target: the filter is as tight as it may be.
            assert!(
                r == n || p(n / (r + 1), r + 1, t) < RECALL_AT_THRESHOLD,
                "t={t} n={n}: b={b} r={r}"
            );
        }
        assert_eq!(lsh_params(0.8, 128), (21, 6));
    }

    #[test]
    fn jaccard_of_sets() {
        assert_eq!(jaccard(&[1, 2, 3], &[2, 3, 4]), 0.5);
        assert_eq!(jaccard(&[], &[]), 1.0);
        assert_eq!(jaccard(&[1], &[]), 0.0);
    }

    #[test]
    fn bad_threshold_is_an_error() {
        let opts = DedupOptions {
            exact: false,
            near: Some(NearDupOptions {
                threshold: 1.5,
                ..Default::default()
            }),
        };
        assert!(dedup(&["a"], &opts).is_err());
    }
}
