//! Batched generation with continuous batching.
//!
//! Up to `batch_size` rows decode together, one token per step, each in its
//! own slot of a [`KvCache`] that ONNX Runtime updates in place. When a row
//! finishes, its slot is handed to a waiting prompt, which is prefilled and
//! copied in, so the batch stays full and throughput grows with its size.
//! Once no prompt is waiting and at most half the slots are busy, the busy
//! ones move into a smaller cache so the tail of a run does not pay for
//! empty slots. Each slot has its own length and positions, so a row's
//! tokens do not depend on which rows it shares a batch with (greedy output
//! is identical at any batch size; sampling draws from the row's own seeded
//! stream). The repetition settings look only at the row's own prompt and
//! tokens, kept beside its random stream.

use std::time::Instant;

use crate::decoder::{Decoder, DecoderDims, KvCache};
use crate::error::{Error, Result};
use crate::readout::Readout;
use crate::sampling::{RowHistory, RowRng, Sampling, log_softmax_at, sample};

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
    /// [`GenerateOptions::readout`] reached its threshold at the last
    /// token: the stream stops before it.
    Flagged,
}

impl FinishReason {
    /// The name recorded in tables: `stop`, `length`, `context`, `flagged`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Context => "context",
            FinishReason::Flagged => "flagged",
        }
    }
}

/// A finished row.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Index of the request in the slice given to [`Engine::generate`].
    pub index: usize,
    /// Generated tokens, including the stop token if one ended the row.
    pub tokens: Vec<u32>,
    /// Why generation stopped.
    pub finish: FinishReason,
    /// With [`GenerateOptions::logprobs`], each token's log-probability
    /// under the model's own distribution; else empty.
    pub logprobs: Vec<f64>,
    /// With [`GenerateOptions::readout`], its probability before each
    /// token (from the state the token was chosen in); else empty.
    pub readout: Vec<f64>,
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
    /// Prefill the tokens every prompt of a call begins with (a stage's
    /// system prompt and worked examples) once, when there are at least
    /// [`MIN_SHARED_PREFIX`] of them, and copy their cache into each row's
    /// slot. The tokens generated are the same with or without it.
    pub share_prefix: bool,
    /// Record each generated token's log-probability under the model's
    /// own distribution (the softmax of its logits, before the repetition
    /// settings, temperature and nucleus act): what online RL needs of the
    /// policy that sampled, at the cost of one pass over each row's logits.
    pub logprobs: bool,
    /// A linear probe on the model's own states, scored before every token
    /// (one dot product): a row whose score reaches the probe's threshold
    /// stops with [`FinishReason::Flagged`], its last token the one the
    /// probe flagged. A streaming output guard at almost no cost.
    pub readout: Option<Readout>,
}

/// The shortest common prefix worth computing once: below it, prefilling
/// the prompts together costs less than prefilling each one's rest alone.
pub const MIN_SHARED_PREFIX: usize = 64;

/// The tokens every one of `prompts` begins with.
fn common_prefix<'a>(mut prompts: impl Iterator<Item = &'a [u32]>) -> &'a [u32] {
    let Some(mut prefix) = prompts.next() else {
        return &[];
    };
    for p in prompts {
        let same = prefix.iter().zip(p).take_while(|(a, b)| a == b).count();
        prefix = &prefix[..same];
    }
    prefix
}

/// Whether a pass of `n` tokens ends in a lone row: ONNX Runtime 1.31's CPU
/// kernels compute the last row of a pass of 128k + 1 tokens (a lone row in
/// a tile of 128) differently from a longer pass (1e-2 in the int8 model's
/// probabilities downstream), so where a pass is split off a shared prefix
/// no pass has such a length.
fn lone(n: usize) -> bool {
    n > 1 && n % 128 == 1
}

/// The most tokens scoring runs in one pass: attention over a pass of n
/// tokens after L holds n × L scores per head, so a long context in one
/// pass would take gigabytes.
const PASS: usize = 1024;

/// The lengths of the passes `n` tokens run in: one pass up to [`PASS`],
/// else passes of at most `PASS`, none of a [`lone`] length.
fn passes(mut n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    while n > PASS {
        let rest = n - PASS;
        let take = if rest == 1 || lone(rest) {
            PASS - 1
        } else {
            PASS
        };
        out.push(take);
        n -= take;
    }
    out.push(n);
    out
}

/// Prompts prefilled together when rows join: bounds the prefill's activations.
const PREFILL_ROWS: usize = 8;

struct Row {
    index: usize,
    rng: RowRng,
    /// The prompt and generated tokens, as the repetition settings see them.
    history: RowHistory,
    tokens: Vec<u32>,
    /// Each token's log-probability, with [`GenerateOptions::logprobs`].
    logprobs: Vec<f64>,
    /// The readout's probability before each token.
    readout: Vec<f64>,
    /// Positions in the cache: the prompt and every generated token but the last.
    len: usize,
}

/// Where an engine's time went, summed over its calls.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineStats {
    /// Prompt tokens prefilled.
    pub prefill_tokens: u64,
    /// Seconds in prefill runs (each row's first token comes from its prefill).
    pub prefill_secs: f64,
    /// Tokens generated by decode steps (every token after a row's first).
    pub decode_tokens: u64,
    /// Seconds in decode steps, sampling included.
    pub decode_secs: f64,
    /// Tokens run by [`Engine::score_choices`]: contexts (less any shared
    /// prefix) and choices.
    pub scored_tokens: u64,
    /// Context tokens [`Engine::score_choices`] took from a shared prefix's
    /// cache instead of running them.
    pub reused_tokens: u64,
}

/// The batched generator over a [`Decoder`].
pub struct Engine {
    decoder: Decoder,
    stats: EngineStats,
}

impl Engine {
    /// An engine running `decoder`.
    pub fn new(decoder: Decoder) -> Self {
        Engine {
            decoder,
            stats: EngineStats::default(),
        }
    }

    /// Time and tokens of prefill and decode so far.
    pub fn stats(&self) -> EngineStats {
        self.stats
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
        self.generate_stepped(requests, options, &mut |_| {}, stop, done)
    }

    /// As [`Engine::generate`], and `step` sees every row in flight
    /// (request index, tokens so far) together after each step, before
    /// `stop` is asked about each: a check that is cheaper in a batch (a
    /// classifier beside the policy) runs there.
    pub fn generate_stepped<E: From<Error>>(
        &mut self,
        requests: &[Request],
        options: &GenerateOptions,
        step: &mut StepHook<'_>,
        stop: &mut dyn FnMut(usize, &[u32]) -> bool,
        done: &mut dyn FnMut(Completion) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let dims = self.decoder.dims();
        self.decoder.keep_hidden(options.readout.is_some())?;
        // The readout's probability of each of a run's rows, from the
        // states the decoder kept.
        let probe = |decoder: &Decoder| -> Vec<f64> {
            let Some(readout) = &options.readout else {
                return Vec::new();
            };
            decoder
                .hidden()
                .chunks_exact(readout.weights.len())
                .map(|h| readout.probability(h))
                .collect()
        };
        let fits = |r: &Request| !r.prompt.is_empty() && r.prompt.len() < options.max_context;
        // Room for the longest prompt plus every token it may feed back.
        let capacity = requests
            .iter()
            .filter(|r| fits(r))
            .map(|r| r.prompt.len() + options.max_new_tokens.max(1))
            .max()
            .unwrap_or(0)
            .min(options.max_context);
        let busy_max = options.batch_size.max(1).min(requests.len().max(1));
        // Neither the prefix's pass nor the pass after it ends in a lone row.
        let common = match options.share_prefix {
            true => common_prefix(requests.iter().filter(|r| fits(r)).map(|r| &r.prompt[..])),
            false => &[],
        };
        let shared = match common.len() {
            n if n < MIN_SHARED_PREFIX => &[],
            n if lone(n) => &common[..n - 1],
            _ => common,
        };
        let reuses =
            |p: &[u32]| shared.len() >= 2 && p.starts_with(shared) && p.len() >= shared.len() + 3;
        let mut prefix: Option<KvCache> = None;
        let mut waiting = requests.iter().enumerate().peekable();
        let mut kv = KvCache::new(&dims, busy_max, capacity.max(1))?;
        let mut slots: Vec<Option<Row>> = (0..busy_max).map(|_| None).collect();

        loop {
            // Admit waiting prompts into free slots.
            loop {
                let free: Vec<usize> = (0..slots.len()).filter(|&s| slots[s].is_none()).collect();
                if free.is_empty() || waiting.peek().is_none() {
                    break;
                }
                let mut group: Vec<(usize, &Request)> = Vec::new();
                while group.len() < free.len().min(PREFILL_ROWS) {
                    let Some((index, req)) = waiting.next() else {
                        break;
                    };
                    if !fits(req) {
                        done(Completion {
                            index,
                            tokens: Vec::new(),
                            finish: FinishReason::Context,
                            logprobs: Vec::new(),
                            readout: Vec::new(),
                        })?;
                        continue;
                    }
                    group.push((index, req));
                }
                if group.is_empty() {
                    continue;
                }
                let started = Instant::now();
                // Prompts that start with the shared prefix each run alone
                // after a copy of its cache; the others are prefilled together.
                let (alone, together): (Vec<usize>, Vec<usize>) =
                    (0..group.len()).partition(|&g| reuses(&group[g].1.prompt));
                let prompts: Vec<&[u32]> = together
                    .iter()
                    .map(|&g| group[g].1.prompt.as_slice())
                    .collect();
                let mut logits = vec![0f32; group.len() * dims.vocab];
                let mut first = vec![None; group.len()];
                if !prompts.is_empty() {
                    let slots: Vec<usize> = together.iter().map(|&g| free[g]).collect();
                    let out = self.decoder.prefill(&prompts, &mut kv, &slots)?;
                    let scores = probe(&self.decoder);
                    for (k, &g) in together.iter().enumerate() {
                        logits[g * dims.vocab..(g + 1) * dims.vocab]
                            .copy_from_slice(&out[k * dims.vocab..(k + 1) * dims.vocab]);
                        first[g] = scores.get(k).copied();
                    }
                    self.stats.prefill_tokens +=
                        prompts.iter().map(|p| p.len() as u64).sum::<u64>();
                }
                for &g in &alone {
                    let prompt = &group[g].1.prompt;
                    if prefix.is_none() {
                        let mut cache = KvCache::new(&dims, 1, shared.len())?;
                        self.decoder.prefill(&[shared], &mut cache, &[0])?;
                        self.stats.prefill_tokens += shared.len() as u64;
                        prefix = Some(cache);
                    }
                    let from = if lone(prompt.len() - shared.len()) {
                        shared.len() - 1
                    } else {
                        shared.len()
                    };
                    let mut own = KvCache::new(&dims, 1, prompt.len())?;
                    if let Some(cache) = &prefix {
                        own.copy_slot(0, cache, 0, from);
                    }
                    let out = self.decoder.advance(&prompt[from..], from, &mut own)?;
                    first[g] = probe(&self.decoder).first().copied();
                    kv.copy_slot(free[g], &own, 0, prompt.len());
                    logits[g * dims.vocab..(g + 1) * dims.vocab].copy_from_slice(&out);
                    self.stats.prefill_tokens += (prompt.len() - from) as u64;
                    self.stats.reused_tokens += from as u64;
                }
                for (g, (index, req)) in group.iter().enumerate() {
                    let mut rng = RowRng::new(req.seed);
                    let mut history = RowHistory::new(&options.sampling, dims.vocab, &req.prompt);
                    let row = &mut logits[g * dims.vocab..(g + 1) * dims.vocab];
                    let (token, logprob) = next_token(row, options, &mut history, &mut rng);
                    slots[free[g]] = Some(Row {
                        index: *index,
                        rng,
                        history,
                        tokens: vec![token],
                        logprobs: logprob.into_iter().collect(),
                        readout: first[g].into_iter().collect(),
                        len: req.prompt.len(),
                    });
                }
                self.stats.prefill_secs += started.elapsed().as_secs_f64();
                retire(&mut slots, options, step, stop, done)?;
            }
            let busy = slots.iter().filter(|s| s.is_some()).count();
            if busy == 0 {
                return Ok(());
            }
            // The tail: nothing waits and at most half the slots work.
            if waiting.peek().is_none() && busy <= slots.len() / 2 {
                let mut smaller = KvCache::new(&dims, busy, kv.capacity())?;
                let mut moved = Vec::with_capacity(busy);
                for (s, row) in slots.iter_mut().enumerate() {
                    if let Some(row) = row.take() {
                        smaller.copy_slot(moved.len(), &kv, s, row.len);
                        moved.push(Some(row));
                    }
                }
                kv = smaller;
                slots = moved;
            }

            // One decode step for every slot.
            let started = Instant::now();
            let tokens: Vec<u32> = slots
                .iter()
                .map(|s| s.as_ref().map_or(0, |r| r.tokens[r.tokens.len() - 1]))
                .collect();
            let lens: Vec<usize> = slots
                .iter()
                .map(|s| s.as_ref().map_or(0, |r| r.len))
                .collect();
            let mut logits = self.decoder.decode(&tokens, &lens, &mut kv)?;
            let scores = probe(&self.decoder);
            for (s, row) in slots.iter_mut().enumerate() {
                if let Some(row) = row {
                    row.len += 1;
                    row.readout.extend(scores.get(s).copied());
                    let next = &mut logits[s * dims.vocab..(s + 1) * dims.vocab];
                    let (token, logprob) =
                        next_token(next, options, &mut row.history, &mut row.rng);
                    row.tokens.push(token);
                    row.logprobs.extend(logprob);
                }
            }
            self.stats.decode_tokens += busy as u64;
            self.stats.decode_secs += started.elapsed().as_secs_f64();
            retire(&mut slots, options, step, stop, done)?;
        }
    }

    /// The RMS-normalised last residual stream of each row at each of
    /// `positions[r]` (a probe's features, [`crate::readout::normalise`]),
    /// `[positions, hidden]` flattened per row, with the hidden size. Rows
    /// run `batch_size` at a time in order of length.
    pub fn hidden_states(
        &mut self,
        rows: &[&[u32]],
        positions: &[Vec<usize>],
        batch_size: usize,
    ) -> Result<(Vec<Vec<f32>>, usize)> {
        if positions.len() != rows.len()
            || rows
                .iter()
                .zip(positions)
                .any(|(r, p)| p.iter().any(|&i| i >= r.len()))
        {
            return Err(Error::Run(
                "hidden states: every position must lie inside its row".to_string(),
            ));
        }
        let mut order: Vec<usize> = (0..rows.len()).filter(|&i| !rows[i].is_empty()).collect();
        order.sort_by_key(|&i| rows[i].len());
        let mut out = vec![Vec::new(); rows.len()];
        let mut size = 0;
        for chunk in order.chunks(batch_size.max(1)) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| rows[i]).collect();
            let (hidden, width, h) = self.decoder.hidden_all(&batch)?;
            size = h;
            for (k, &i) in chunk.iter().enumerate() {
                let mut features = vec![0f32; positions[i].len() * h];
                for (j, &at) in positions[i].iter().enumerate() {
                    let from = (k * width + at) * h;
                    crate::readout::normalise(
                        &hidden[from..from + h],
                        &mut features[j * h..(j + 1) * h],
                    );
                }
                out[i] = features;
            }
        }
        Ok((out, size))
    }

    /// Log-probabilities of each continuation's tokens after its context,
    /// `batch_size` pairs per forward pass. Pairs are batched in order of
    /// length, so a batch's padding is small, and logits are computed only
    /// at the positions that predict continuation tokens: memory per batch
    /// is rows × continuation length × vocabulary, whatever the contexts'
    /// lengths.
    pub fn score(
        &mut self,
        pairs: &[(Vec<u32>, Vec<u32>)],
        batch_size: usize,
    ) -> Result<Vec<Vec<f64>>> {
        self.decoder.keep_hidden(false)?;
        let vocab = self.decoder.dims().vocab;
        if let Some(i) = pairs.iter().position(|(c, _)| c.is_empty()) {
            return Err(Error::Run(format!("scoring row {i}: an empty context")));
        }
        // An empty continuation has no tokens to score.
        let mut order: Vec<usize> = (0..pairs.len())
            .filter(|&i| !pairs[i].1.is_empty())
            .collect();
        order.sort_by_key(|&i| pairs[i].0.len() + pairs[i].1.len());
        let mut out: Vec<Vec<f64>> = vec![Vec::new(); pairs.len()];
        for chunk in order.chunks(batch_size.max(1)) {
            let joined: Vec<Vec<u32>> = chunk
                .iter()
                .map(|&i| [pairs[i].0.as_slice(), &pairs[i].1].concat())
                .collect();
            let rows: Vec<&[u32]> = joined.iter().map(Vec::as_slice).collect();
            // The logits at position p predict token p + 1.
            let positions: Vec<Vec<usize>> = chunk
                .iter()
                .map(|&i| {
                    let (c, t) = &pairs[i];
                    (c.len() - 1..c.len() - 1 + t.len()).collect()
                })
                .collect();
            let (logits, kept) = self.decoder.logits_at(&rows, &positions)?;
            for (r, &i) in chunk.iter().enumerate() {
                out[i] = pairs[i]
                    .1
                    .iter()
                    .enumerate()
                    .map(|(k, &tok)| {
                        let p = r * kept + k;
                        log_softmax_at(&logits[p * vocab..(p + 1) * vocab], vocab, tok as usize)
                    })
                    .collect();
            }
        }
        Ok(out)
    }

    /// Per-token log-probabilities of each of `choices` after each of
    /// `contexts`, `[context][choice][token]`: what [`Engine::score`] gives
    /// for every (context, choice) pair, for one pass over each context
    /// instead of one per choice, and none over `shared` after the first.
    ///
    /// `shared` is a prefix many contexts begin with (a constitution's
    /// worked examples): its cache is computed once and copied into the
    /// cache of every context that starts with it, and only the rest of the
    /// context is run after it. Each choice then continues from the
    /// context's cache, fed together with the context's last token so that
    /// every pass after a cache carries two or more tokens and takes the
    /// same kernels as a full pass. On ONNX Runtime's CPU kernels the
    /// results are those of pairwise scoring bit for bit (checked on the
    /// default int8 model for prefixes and heads of 17 to 513 tokens), for
    /// every context whose own part (after `shared`) and prefix are each at
    /// most 1024 tokens. Longer ones run in passes of up to 1024 tokens, so
    /// that memory stays bounded whatever the length, and agree with one
    /// pass up to rounding. The passes that only fill the cache ask the
    /// graph for logits at their last token alone.
    ///
    /// Every context runs alone, in a cache sized by itself: its numbers
    /// depend on it, `shared` and `choices` only, never on which other
    /// contexts share the call, so a sharded build scores exactly as an
    /// unsharded one. (Batching gains little here: a context of a few
    /// hundred tokens already fills the matrix units, and ONNX Runtime runs
    /// several new tokens after a cache one slot at a time.)
    pub fn score_choices(
        &mut self,
        contexts: &[Vec<u32>],
        shared: &[u32],
        choices: &[Vec<u32>],
    ) -> Result<Vec<Vec<Vec<f64>>>> {
        self.decoder.keep_hidden(false)?;
        let dims = self.decoder.dims();
        let vocab = dims.vocab;
        if let Some(i) = contexts.iter().position(|c| c.len() < 2) {
            return Err(Error::Run(format!(
                "scoring row {i}: a context needs at least two tokens"
            )));
        }
        if choices.is_empty() || choices.iter().any(Vec::is_empty) {
            return Err(Error::Run("scoring: every choice needs tokens".into()));
        }
        let longest = choices.iter().map(Vec::len).max().unwrap_or(0);
        // No pass here ends in a lone row: where one would, its last token
        // goes with the next pass instead.
        if longest + 2 >= 128 {
            return Err(Error::Run(format!(
                "scoring: choices of up to 125 tokens (got {longest})"
            )));
        }
        let shared = if lone(shared.len()) {
            &shared[..shared.len() - 1]
        } else {
            shared
        };
        // A context reuses `shared` when at least two of its own tokens
        // are left to run after it (before its last one).
        let reuses =
            |c: &[u32]| shared.len() >= 2 && c.starts_with(shared) && c.len() >= shared.len() + 3;
        // A context's own tokens and the prefix run in `passes`: up to PASS
        // tokens in one, as pairwise scoring runs them; a longer context's
        // numbers differ from one pass by rounding only.
        let mut prefix: Option<KvCache> = None;
        let mut out = Vec::with_capacity(contexts.len());
        for context in contexts {
            let head = context.len() - 1;
            let mut kv = KvCache::new(&dims, 1, head + 1 + longest)?;
            // Positions in the cache before the choices' passes.
            let cached = if reuses(context) {
                if prefix.is_none() {
                    let mut cache = KvCache::new(&dims, 1, shared.len())?;
                    self.fill(shared, 0, &mut cache)?;
                    self.stats.scored_tokens += shared.len() as u64;
                    prefix = Some(cache);
                }
                // Positions taken from the prefix's cache.
                let single = head - shared.len();
                let from = if single <= PASS && lone(single) {
                    shared.len() - 1
                } else {
                    shared.len()
                };
                if let Some(cache) = &prefix {
                    kv.copy_slot(0, cache, 0, from);
                }
                self.fill(&context[..head], from, &mut kv)?;
                self.stats.reused_tokens += from as u64;
                self.stats.scored_tokens += (head - from) as u64;
                head
            } else {
                // One pass ending in a lone row leaves its last token to the choices'.
                let run = if head <= PASS && lone(head) {
                    head - 1
                } else {
                    head
                };
                self.fill(&context[..run], 0, &mut kv)?;
                self.stats.scored_tokens += run as u64;
                run
            };
            let per_choice = choices
                .iter()
                .map(|choice| {
                    let fed: Vec<u32> = context[cached..].iter().chain(choice).copied().collect();
                    let logits = self.decoder.extend(&fed, cached, &mut kv)?;
                    self.stats.scored_tokens += fed.len() as u64;
                    // Logits i predict fed token i + 1: the choice's token
                    // k is fed token `skip + k + 1`.
                    let skip = head - cached;
                    Ok(choice
                        .iter()
                        .enumerate()
                        .map(|(k, &t)| {
                            let row = &logits[(skip + k) * vocab..(skip + k + 1) * vocab];
                            log_softmax_at(row, vocab, t as usize)
                        })
                        .collect())
                })
                .collect::<Result<Vec<Vec<f64>>>>()?;
            out.push(per_choice);
        }
        Ok(out)
    }

    /// Runs `tokens[from..]` into the one slot of `kv`, whose first `from`
    /// positions are already filled, in [`passes`]: a prefill when nothing
    /// is cached yet, then cache-filling passes with logits at their last
    /// token only.
    fn fill(&mut self, tokens: &[u32], from: usize, kv: &mut KvCache) -> Result<()> {
        let mut at = from;
        for n in passes(tokens.len() - from) {
            if at == 0 {
                self.decoder.prefill(&[&tokens[..n]], kv, &[0])?;
            } else {
                self.decoder.advance(&tokens[at..at + n], at, kv)?;
            }
            at += n;
        }
        Ok(())
    }
}

/// A row's next token from its logits: the repetition settings, then
/// sampling; and its log-probability under the logits as the model gave
/// them, when the options ask for it.
fn next_token(
    logits: &mut [f32],
    options: &GenerateOptions,
    history: &mut RowHistory,
    rng: &mut RowRng,
) -> (u32, Option<f64>) {
    let raw = options.logprobs.then(|| logits.to_vec());
    history.apply(logits);
    let token = sample(logits, &options.sampling, rng) as u32;
    history.push(token);
    let logprob = raw.map(|r| log_softmax_at(&r, r.len(), token as usize));
    (token, logprob)
}

/// A per-step view of the rows in flight: (request index, tokens so far).
pub type StepHook<'a> = dyn FnMut(&[(usize, &[u32])]) + 'a;

/// Shows the rows to `step`, then hands finished rows to `done` and frees their slots.
fn retire<E>(
    slots: &mut [Option<Row>],
    options: &GenerateOptions,
    step: &mut StepHook<'_>,
    stop: &mut dyn FnMut(usize, &[u32]) -> bool,
    done: &mut dyn FnMut(Completion) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let rows: Vec<(usize, &[u32])> = slots
        .iter()
        .flatten()
        .map(|r| (r.index, r.tokens.as_slice()))
        .collect();
    step(&rows);
    for slot in slots.iter_mut() {
        let Some(row) = slot else { continue };
        let token = row.tokens[row.tokens.len() - 1];
        let flagged = options
            .readout
            .as_ref()
            .is_some_and(|r| row.readout.last().is_some_and(|&p| p >= r.threshold));
        let finish = if flagged {
            Some(FinishReason::Flagged)
        } else if options.stop_ids.contains(&token) || stop(row.index, &row.tokens) {
            Some(FinishReason::Stop)
        } else if row.tokens.len() >= options.max_new_tokens || row.len + 1 >= options.max_context {
            Some(FinishReason::Length)
        } else {
            None
        };
        if let Some(finish) = finish
            && let Some(row) = slot.take()
        {
            done(Completion {
                index: row.index,
                tokens: row.tokens,
                finish,
                logprobs: row.logprobs,
                readout: row.readout,
            })?;
        }
    }
    Ok(())
}
