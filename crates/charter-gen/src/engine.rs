//! Batched generation with continuous batching.
//!
//! Up to `batch_size` rows decode together, one token per step. When a row
//! finishes it leaves the batch and waiting prompts are prefilled and join
//! it, so the batch stays full and throughput grows with its size. Rows are
//! left-padded to a common cache length; the attention mask hides the
//! padding and each row keeps its own positions, so a row's tokens do not
//! depend on which rows it shares a batch with (greedy output is identical
//! at any batch size; sampling draws from the row's own seeded stream).

use crate::decoder::{Decoder, DecoderDims, KvCache};
use crate::error::{Error, Result};
use crate::sampling::{RowRng, Sampling, log_softmax_at, sample};

/// One prompt to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The rendered prompt's token ids.
    pub prompt: Vec<u32>,
    /// The row's seed (derive it from the build seed and the row id).
    pub seed: u64,
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop condition.
    Stop,
    /// `max_new_tokens`, or the context window, was reached.
    Length,
    /// The prompt alone does not fit the context window: nothing was generated.
    Context,
}

impl FinishReason {
    /// The name recorded in tables: `stop`, `length`, `context`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Context => "context",
        }
    }
}

/// A finished row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Index of the request in the slice given to [`Engine::generate`].
    pub index: usize,
    /// Generated tokens, including the stop token if one ended the row.
    pub tokens: Vec<u32>,
    /// Why generation stopped.
    pub finish: FinishReason,
}

/// Generation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// How tokens are chosen.
    pub sampling: Sampling,
    /// Cap on generated tokens per row.
    pub max_new_tokens: usize,
    /// Tokens that end a row (EOS).
    pub stop_ids: Vec<u32>,
    /// Rows decoded together.
    pub batch_size: usize,
    /// The model's context window (prompt + generated tokens).
    pub max_context: usize,
}

/// Prompts prefilled together when rows join: bounds the `[rows, seq, vocab]` logits.
const PREFILL_ROWS: usize = 8;

struct Row {
    index: usize,
    rng: RowRng,
    tokens: Vec<u32>,
    next_pos: i64,
}

/// The batched generator over a [`Decoder`].
pub struct Engine {
    decoder: Decoder,
}

impl Engine {
    /// An engine running `decoder`.
    pub fn new(decoder: Decoder) -> Self {
        Engine { decoder }
    }

    /// The decoder's dimensions.
    pub fn dims(&self) -> DecoderDims {
        self.decoder.dims()
    }

    /// Continues every request; `done` receives each row as it finishes
    /// (not in request order) and may fail with the caller's own error, which
    /// stops generation. `stop` is asked after every token whether the row's
    /// tokens so far end it (stop strings); stop ids are checked first.
    pub fn generate<E: From<Error>>(
        &mut self,
        requests: &[Request],
        options: &GenerateOptions,
        stop: &mut dyn FnMut(usize, &[u32]) -> bool,
        done: &mut dyn FnMut(Completion) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let dims = self.decoder.dims();
        let batch_size = options.batch_size.max(1);
        let mut waiting = requests.iter().enumerate().peekable();
        let mut rows: Vec<Row> = Vec::new();
        let mut cache = KvCache::empty(&dims, 0);
        let mut mask: Vec<i64> = Vec::new(); // [rows, cache.len]
        let mut last: Vec<u32> = Vec::new();

        loop {
            // Admit waiting prompts into free slots.
            while rows.len() < batch_size && waiting.peek().is_some() {
                let room = (batch_size - rows.len()).min(PREFILL_ROWS);
                let mut group = Vec::with_capacity(room);
                while group.len() < room {
                    let Some((index, req)) = waiting.next() else {
                        break;
                    };
                    if req.prompt.is_empty() || req.prompt.len() >= options.max_context {
                        done(Completion {
                            index,
                            tokens: Vec::new(),
                            finish: FinishReason::Context,
                        })?;
                        continue;
                    }
                    group.push((index, req));
                }
                if group.is_empty() {
                    continue;
                }
                let (group_cache, group_mask, logits, width) = self.prefill(&group)?;
                // Join: left-pad whichever side is shorter to a common length.
                let len = cache.len.max(width);
                let keep: Vec<usize> = (0..rows.len()).collect();
                let mut merged = relayout(&cache, &mask, &keep, len, &dims);
                let joined = relayout(
                    &group_cache,
                    &group_mask,
                    &(0..group.len()).collect::<Vec<_>>(),
                    len,
                    &dims,
                );
                for (buf, extra) in merged.0.data.iter_mut().zip(joined.0.data) {
                    buf.extend(extra);
                }
                merged.0.batch += group.len();
                merged.1.extend(joined.1);
                cache = merged.0;
                mask = merged.1;
                for (g, (index, req)) in group.iter().enumerate() {
                    let row_logits = &logits
                        [(g * width + width - 1) * dims.vocab..(g * width + width) * dims.vocab];
                    let mut rng = RowRng::new(req.seed);
                    let token = sample(row_logits, &options.sampling, &mut rng) as u32;
                    rows.push(Row {
                        index: *index,
                        rng,
                        tokens: vec![token],
                        next_pos: req.prompt.len() as i64,
                    });
                    last.push(token);
                }
                self.retire(
                    &mut rows, &mut last, &mut cache, &mut mask, options, stop, done,
                )?;
            }
            if rows.is_empty() {
                return Ok(());
            }

            // One decode step for every row.
            let n = rows.len();
            let mut step_mask = Vec::with_capacity(n * (cache.len + 1));
            for r in 0..n {
                step_mask.extend_from_slice(&mask[r * cache.len..(r + 1) * cache.len]);
                step_mask.push(1);
            }
            let ids: Vec<i64> = last.iter().map(|&t| i64::from(t)).collect();
            let pos: Vec<i64> = rows.iter().map(|r| r.next_pos).collect();
            let past = std::mem::replace(&mut cache, KvCache::empty(&dims, 0));
            let (logits, next) = self.decoder.forward(ids, pos, step_mask.clone(), 1, past)?;
            cache = next;
            mask = step_mask;
            for (r, row) in rows.iter_mut().enumerate() {
                row.next_pos += 1;
                let token = sample(
                    &logits[r * dims.vocab..(r + 1) * dims.vocab],
                    &options.sampling,
                    &mut row.rng,
                ) as u32;
                row.tokens.push(token);
                last[r] = token;
            }
            self.retire(
                &mut rows, &mut last, &mut cache, &mut mask, options, stop, done,
            )?;
        }
    }

    /// Hands finished rows to `done` and drops them (and any padding every
    /// remaining row shares) from the cache.
    #[allow(clippy::too_many_arguments)]
    fn retire<E>(
        &self,
        rows: &mut Vec<Row>,
        last: &mut Vec<u32>,
        cache: &mut KvCache,
        mask: &mut Vec<i64>,
        options: &GenerateOptions,
        stop: &mut dyn FnMut(usize, &[u32]) -> bool,
        done: &mut dyn FnMut(Completion) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let mut keep = Vec::with_capacity(rows.len());
        let mut finished = Vec::new();
        for (r, row) in rows.iter().enumerate() {
            let token = row.tokens[row.tokens.len() - 1];
            let finish = if options.stop_ids.contains(&token) || stop(row.index, &row.tokens) {
                Some(FinishReason::Stop)
            } else if row.tokens.len() >= options.max_new_tokens
                || row.next_pos as usize + 1 >= options.max_context
            {
                Some(FinishReason::Length)
            } else {
                None
            };
            match finish {
                Some(f) => finished.push((r, f)),
                None => keep.push(r),
            }
        }
        if finished.is_empty() {
            return Ok(());
        }
        let dims = self.decoder.dims();
        // Padding columns every kept row starts with can go.
        let trim = keep
            .iter()
            .map(|&r| {
                mask[r * cache.len..(r + 1) * cache.len]
                    .iter()
                    .take_while(|&&m| m == 0)
                    .count()
            })
            .min()
            .unwrap_or(cache.len);
        let (new_cache, new_mask) = relayout(cache, mask, &keep, cache.len - trim, &dims);
        let mut taken: Vec<Option<Row>> = std::mem::take(rows).into_iter().map(Some).collect();
        for (r, finish) in finished {
            if let Some(row) = taken[r].take() {
                done(Completion {
                    index: row.index,
                    tokens: row.tokens,
                    finish,
                })?;
            }
        }
        *last = keep.iter().map(|&r| last[r]).collect();
        *rows = taken.into_iter().flatten().collect();
        *cache = new_cache;
        *mask = new_mask;
        Ok(())
    }

    /// Prefills a group of prompts, left-padded to the longest; returns their
    /// cache, mask, logits `[rows, width, vocab]` and the width.
    fn prefill(
        &mut self,
        group: &[(usize, &Request)],
    ) -> Result<(KvCache, Vec<i64>, Vec<f32>, usize)> {
        let dims = self.decoder.dims();
        let batch = left_pad(group.iter().map(|(_, r)| r.prompt.as_slice()));
        let (logits, cache) = self.decoder.forward(
            batch.ids,
            batch.positions,
            batch.mask.clone(),
            batch.width,
            KvCache::empty(&dims, group.len()),
        )?;
        Ok((cache, batch.mask, logits, batch.width))
    }

    /// Log-probabilities of each continuation's tokens after its context,
    /// `batch_size` pairs per forward pass.
    pub fn score(
        &mut self,
        pairs: &[(Vec<u32>, Vec<u32>)],
        batch_size: usize,
    ) -> Result<Vec<Vec<f64>>> {
        let dims = self.decoder.dims();
        let mut out = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(batch_size.max(1)) {
            let joined: Vec<Vec<u32>> = chunk
                .iter()
                .map(|(c, t)| [c.as_slice(), t].concat())
                .collect();
            let batch = left_pad(joined.iter().map(Vec::as_slice));
            let width = batch.width;
            let (logits, _) = self.decoder.forward(
                batch.ids,
                batch.positions,
                batch.mask,
                width,
                KvCache::empty(&dims, chunk.len()),
            )?;
            for (r, (c, t)) in chunk.iter().enumerate() {
                let start = width - c.len() - t.len() + c.len(); // first continuation position
                let lp = t
                    .iter()
                    .enumerate()
                    .map(|(i, &tok)| {
                        // The logits at position p predict token p + 1.
                        let p = r * width + start + i - 1;
                        log_softmax_at(
                            &logits[p * dims.vocab..(p + 1) * dims.vocab],
                            dims.vocab,
                            tok as usize,
                        )
                    })
                    .collect();
                out.push(lp);
            }
        }
        Ok(out)
    }
}

/// Token sequences left-padded to a common width, with their attention mask
/// (0 on padding) and positions (counting from 0 at each row's first real token).
struct Padded {
    ids: Vec<i64>,
    mask: Vec<i64>,
    positions: Vec<i64>,
    width: usize,
}

fn left_pad<'a>(rows: impl Iterator<Item = &'a [u32]> + Clone) -> Padded {
    let width = rows.clone().map(<[u32]>::len).max().unwrap_or(0);
    let mut p = Padded {
        ids: Vec::new(),
        mask: Vec::new(),
        positions: Vec::new(),
        width,
    };
    for row in rows {
        let pad = width - row.len();
        p.ids
            .extend(std::iter::repeat_n(0, pad).chain(row.iter().map(|&t| i64::from(t))));
        p.mask
            .extend(std::iter::repeat_n(0, pad).chain(std::iter::repeat_n(1, row.len())));
        p.positions
            .extend(std::iter::repeat_n(0, pad).chain(0..row.len() as i64));
    }
    p
}

/// Selects `rows` of a cache and its mask and shifts them to `len` positions,
/// right-aligned: padding is added, or leading positions dropped, on the left.
fn relayout(
    cache: &KvCache,
    mask: &[i64],
    rows: &[usize],
    len: usize,
    d: &DecoderDims,
) -> (KvCache, Vec<i64>) {
    let old = cache.len;
    let hd = d.head_dim;
    let mut data = Vec::with_capacity(cache.data.len());
    for buf in &cache.data {
        let mut out = vec![0f32; rows.len() * d.kv_heads * len * hd];
        for (i, &r) in rows.iter().enumerate() {
            for h in 0..d.kv_heads {
                let src = &buf
                    [((r * d.kv_heads + h) * old) * hd..((r * d.kv_heads + h) * old + old) * hd];
                let dst = &mut out
                    [((i * d.kv_heads + h) * len) * hd..((i * d.kv_heads + h) * len + len) * hd];
                if len >= old {
                    dst[(len - old) * hd..].copy_from_slice(src);
                } else {
                    dst.copy_from_slice(&src[(old - len) * hd..]);
                }
            }
        }
        data.push(out);
    }
    let mut new_mask = vec![0i64; rows.len() * len];
    for (i, &r) in rows.iter().enumerate() {
        let src = &mask[r * old..(r + 1) * old];
        let dst = &mut new_mask[i * len..(i + 1) * len];
        if len >= old {
            dst[len - old..].copy_from_slice(src);
        } else {
            dst.copy_from_slice(&src[old - len..]);
        }
    }
    (
        KvCache {
            batch: rows.len(),
            len,
            data,
        },
        new_mask,
    )
}
