//! Forward passes of an exported decoder through ONNX Runtime.
//!
//! Three kinds of run, all over the graph described in
//! `charter_model::onnx::llama`:
//!
//! - [`Decoder::prefill`]: right-padded prompts with no past; each row's
//!   cache is copied into a slot of a [`KvCache`] and the logits of its last
//!   token are returned.
//! - [`Decoder::decode`]: one token for every slot of a [`KvCache`]. The
//!   cache buffers are bound as both the past input and the present output,
//!   so `GroupQueryAttention` writes the new position in place: nothing is
//!   copied between steps, whatever the cache length.
//! - [`Decoder::extend`]: several tokens after the cache of one slot, in
//!   place (scoring continuations of a shared context).
//! - [`Decoder::logits_at`]: logits at chosen positions of right-padded
//!   rows (scoring), and [`Decoder::logits_all`] at all of them.
//! - [`Decoder::hidden_all`]: the last residual stream at every position
//!   (a probe's features); with [`Decoder::keep_hidden`], the runs above
//!   also keep it at the positions they return logits for.

use std::borrow::Cow;
use std::path::Path;

use ort::memory::Allocator;
use ort::session::{Session, SessionInputValue, builder::GraphOptimizationLevel};
use ort::value::Tensor;

use crate::error::{Error, Result};

/// The dimensions of a decoder graph, read from the model directory's `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderDims {
    /// Transformer layers.
    pub layers: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Vocabulary size (logit width).
    pub vocab: usize,
}

/// The key/value cache of a batch of slots, in buffers ONNX Runtime reads
/// and writes in place: per layer a key and a value tensor of shape
/// `[batch, kv_heads, capacity, head_dim]`. Which positions of a slot are
/// valid is the caller's bookkeeping (the lengths it passes to
/// [`Decoder::decode`]).
pub struct KvCache {
    /// `2 × layers` tensors: layer 0 key, layer 0 value, layer 1 key, …
    tensors: Vec<Tensor<f32>>,
    dims: DecoderDims,
    batch: usize,
    capacity: usize,
}

impl KvCache {
    /// A cache of `batch` slots of `capacity` positions each.
    pub fn new(dims: &DecoderDims, batch: usize, capacity: usize) -> Result<Self> {
        let allocator = Allocator::default();
        let shape = [batch, dims.kv_heads, capacity, dims.head_dim];
        let tensors = (0..2 * dims.layers)
            .map(|_| Tensor::<f32>::new(&allocator, shape))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Run(format!("cannot allocate the KV cache: {e}")))?;
        Ok(KvCache {
            tensors,
            dims: *dims,
            batch,
            capacity,
        })
    }

    /// Slots in the cache.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Positions per slot.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Copies the first `len` positions of slot `from` of `src` into slot
    /// `to` of this cache.
    pub fn copy_slot(&mut self, to: usize, src: &KvCache, from: usize, len: usize) {
        let (d, hd) = (self.dims, self.dims.head_dim);
        let (cap, src_cap) = (self.capacity, src.capacity);
        for (dst, s) in self.tensors.iter_mut().zip(&src.tensors) {
            let (_, s) = s.extract_tensor();
            let (_, dst) = dst.extract_tensor_mut();
            for h in 0..d.kv_heads {
                let si = ((from * d.kv_heads + h) * src_cap) * hd;
                let di = ((to * d.kv_heads + h) * cap) * hd;
                dst[di..di + len * hd].copy_from_slice(&s[si..si + len * hd]);
            }
        }
    }
}

/// A decoder session.
pub struct Decoder {
    session: Session,
    dims: DecoderDims,
    /// Whether the graph returns `hidden`.
    has_hidden: bool,
    /// Whether runs keep `hidden` at their logit positions.
    keep_hidden: bool,
    /// `[rows, hidden]` of the last run, when kept.
    hidden: Vec<f32>,
}

/// The cores this process may run on: its CPU affinity and cgroup quota
/// taken into account (at least 1).
pub fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

impl Decoder {
    /// Opens `dir/model.onnx` with `threads` intra-op threads; 0 means
    /// every core available to the process ([`available_threads`]).
    ///
    /// With `CHARTER_ORT_PROFILE=PREFIX` set, ONNX Runtime writes a per-op
    /// timing profile (`PREFIX_<date>.json`, Chrome trace format) when the
    /// decoder is dropped.
    pub fn open(dir: &Path, dims: DecoderDims, threads: usize) -> Result<Self> {
        let env = crate::runtime::init()?;
        let path = dir.join("model.onnx");
        if !path.is_file() {
            return Err(Error::MissingFile(path));
        }
        let ort_err = |e: ort::Error| Error::Session {
            path: path.clone(),
            reason: e.to_string(),
        };
        let mut builder = Session::builder(env)
            .map_err(ort_err)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| ort_err(e.into()))?
            .with_intra_threads(if threads == 0 {
                available_threads()
            } else {
                threads
            })
            .map_err(|e| ort_err(e.into()))?;
        if let Some(prefix) = std::env::var_os("CHARTER_ORT_PROFILE") {
            builder = builder
                .with_profiling(prefix)
                .map_err(|e| ort_err(e.into()))?;
        }
        let session = builder.commit_from_file(&path).map_err(ort_err)?;
        let has = |name: &str| session.inputs().iter().any(|i| i.name() == name);
        if !has("logit_positions") || has("position_ids") {
            return Err(Error::Session {
                path,
                reason: "the graph predates this charter's decoder (no `logit_positions` input); \
                         re-import the model with `charter model import`"
                    .to_string(),
            });
        }
        let has_hidden = session.outputs().iter().any(|o| o.name() == "hidden");
        Ok(Decoder {
            session,
            dims,
            has_hidden,
            keep_hidden: false,
            hidden: Vec::new(),
        })
    }

    /// Whether [`Decoder::prefill`], [`Decoder::decode`] and
    /// [`Decoder::advance`] keep the last residual stream at the positions
    /// they return logits for, for [`Decoder::hidden`]. Fails for a graph
    /// exported before it returned one.
    pub fn keep_hidden(&mut self, on: bool) -> Result<()> {
        if on {
            self.require_hidden()?;
        }
        self.keep_hidden = on;
        self.hidden.clear();
        Ok(())
    }

    fn require_hidden(&self) -> Result<()> {
        match self.has_hidden {
            true => Ok(()),
            false => Err(Error::Run(
                "the graph returns no `hidden` output (exported by an older charter): \
                 re-import the model with `charter model import`"
                    .to_string(),
            )),
        }
    }

    /// With [`Decoder::keep_hidden`], the last run's residual stream at
    /// each row's logit position, `[rows, hidden]`; else empty.
    pub fn hidden(&self) -> &[f32] {
        &self.hidden
    }

    /// The graph's dimensions.
    pub fn dims(&self) -> DecoderDims {
        self.dims
    }

    /// Runs `prompts` (no past) and copies row `i`'s cache into slot
    /// `slots[i]` of `kv`. Returns the logits of each prompt's last token,
    /// `[prompts, vocab]`. Every prompt must be non-empty and fit `kv`.
    pub fn prefill(
        &mut self,
        prompts: &[&[u32]],
        kv: &mut KvCache,
        slots: &[usize],
    ) -> Result<Vec<f32>> {
        let d = self.dims;
        let width = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        if prompts
            .iter()
            .any(|p| p.is_empty() || p.len() > kv.capacity)
        {
            return Err(Error::Run(format!(
                "prefill: every prompt must hold 1 to {} tokens",
                kv.capacity
            )));
        }
        let last: Vec<i64> = prompts.iter().map(|p| p.len() as i64 - 1).collect();
        let batch = right_pad(prompts, width);
        let n = prompts.len();
        let outputs = run(
            &mut self.session,
            d,
            batch.ids,
            batch.mask,
            ([n, 1], last),
            n,
            width,
        )?;
        let run_err = |e: ort::Error| Error::Run(e.to_string());
        let hd = d.head_dim;
        for layer in 0..d.layers {
            for (k, kind) in ["key", "value"].iter().enumerate() {
                let (_, src) = outputs[format!("present.{layer}.{kind}").as_str()]
                    .try_extract_tensor::<f32>()
                    .map_err(run_err)?;
                let (_, dst) = kv.tensors[2 * layer + k].extract_tensor_mut();
                for (i, p) in prompts.iter().enumerate() {
                    for h in 0..d.kv_heads {
                        let si = ((i * d.kv_heads + h) * width) * hd;
                        let di = ((slots[i] * d.kv_heads + h) * kv.capacity) * hd;
                        dst[di..di + p.len() * hd].copy_from_slice(&src[si..si + p.len() * hd]);
                    }
                }
            }
        }
        if self.keep_hidden {
            let (shape, all) = outputs["hidden"]
                .try_extract_tensor::<f32>()
                .map_err(run_err)?;
            let h = shape[2] as usize;
            self.hidden.clear();
            for (i, p) in prompts.iter().enumerate() {
                let at = (i * width + p.len() - 1) * h;
                self.hidden.extend_from_slice(&all[at..at + h]);
            }
        }
        let (_, logits) = outputs["logits"]
            .try_extract_tensor::<f32>()
            .map_err(run_err)?;
        Ok(logits.to_vec())
    }

    /// One decode step for every slot of `kv`: slot `b` holds `lens[b]`
    /// cached positions and gets `tokens[b]` at position `lens[b]`. Returns
    /// `[batch, vocab]` logits. Unused slots still compute; give them
    /// length 0.
    pub fn decode(&mut self, tokens: &[u32], lens: &[usize], kv: &mut KvCache) -> Result<Vec<f32>> {
        let d = self.dims;
        let b = kv.batch;
        if tokens.len() != b || lens.len() != b || lens.iter().any(|&l| l >= kv.capacity) {
            return Err(Error::Run(format!(
                "decode: {b} slots of capacity {} need {b} tokens and lengths below it",
                kv.capacity
            )));
        }
        let total = lens.iter().max().map_or(1, |l| l + 1);
        let mut mask = vec![0i64; b * total];
        for (r, &l) in lens.iter().enumerate() {
            mask[r * total..r * total + l + 1].fill(1);
        }
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let logits =
            self.run_in_place(([b, 1], ids), ([b, total], mask), ([b, 1], vec![0; b]), kv)?;
        debug_assert_eq!(logits.len(), b * d.vocab);
        Ok(logits)
    }

    /// Runs `tokens` (at least two) after the first `len` cached positions
    /// of the one slot of `kv`, appending them to the cache, and returns
    /// `[tokens, vocab]` logits, one row per new token. Two or more new
    /// tokens after a cache take ONNX Runtime's prompt kernels, as a full
    /// pass does; a single token would take the decode kernels, which round
    /// differently, so one is refused. The attention takes several new
    /// tokens after a cache for one slot at a time, hence the single slot.
    pub fn extend(&mut self, tokens: &[u32], len: usize, kv: &mut KvCache) -> Result<Vec<f32>> {
        let logits = self.extend_at(tokens, len, kv, (0..tokens.len() as i64).collect())?;
        debug_assert_eq!(logits.len(), tokens.len() * self.dims.vocab);
        Ok(logits)
    }

    /// [`Decoder::extend`] with logits at the last new token only (one
    /// vocabulary row, not one per token; the cache it writes is the same).
    pub fn advance(&mut self, tokens: &[u32], len: usize, kv: &mut KvCache) -> Result<Vec<f32>> {
        let last = tokens.len() as i64 - 1;
        self.extend_at(tokens, len, kv, vec![last])
    }

    fn extend_at(
        &mut self,
        tokens: &[u32],
        len: usize,
        kv: &mut KvCache,
        positions: Vec<i64>,
    ) -> Result<Vec<f32>> {
        let m = tokens.len();
        if kv.batch != 1 || m < 2 || len + m > kv.capacity {
            return Err(Error::Run(format!(
                "extend: needs a one-slot cache and 2 or more tokens after {len} cached \
                 positions within its capacity {} (got {} slots, {m} tokens)",
                kv.capacity, kv.batch
            )));
        }
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let kept = positions.len();
        self.run_in_place(
            ([1, m], ids),
            ([1, len + m], vec![1; len + m]),
            ([1, kept], positions),
            kv,
        )
    }

    /// One run with `kv` bound as both the past input and the present
    /// output, so the new positions are written into it in place; returns
    /// the logits at `positions`. Each input is `(shape, values)`.
    fn run_in_place(
        &mut self,
        ids: ([usize; 2], Vec<i64>),
        mask: ([usize; 2], Vec<i64>),
        positions: ([usize; 2], Vec<i64>),
        kv: &mut KvCache,
    ) -> Result<Vec<f32>> {
        let run_err = |e: ort::Error| Error::Run(e.to_string());
        let mut binding = self.session.create_binding().map_err(run_err)?;
        for (name, value) in [
            ("input_ids", ids),
            ("attention_mask", mask),
            ("logit_positions", positions),
        ] {
            binding
                .bind_input(name, &Tensor::from_array(value).map_err(run_err)?)
                .map_err(run_err)?;
        }
        for (i, t) in kv.tensors.iter_mut().enumerate() {
            let (layer, kind) = (i / 2, if i % 2 == 0 { "key" } else { "value" });
            binding
                .bind_input(format!("past_key_values.{layer}.{kind}"), &*t)
                .map_err(run_err)?;
            binding
                .bind_output(format!("present.{layer}.{kind}"), t)
                .map_err(run_err)?;
        }
        binding
            .bind_output_to_device("logits", self.session.allocator().memory_info())
            .map_err(run_err)?;
        if self.keep_hidden {
            binding
                .bind_output_to_device("hidden", self.session.allocator().memory_info())
                .map_err(run_err)?;
        }
        let outputs = self.session.run_binding(&binding).map_err(run_err)?;
        if self.keep_hidden {
            // One position per row (a decode step), or the last of one row.
            let (shape, all) = outputs["hidden"]
                .try_extract_tensor::<f32>()
                .map_err(run_err)?;
            let (rows, h) = (shape[0] as usize, shape[2] as usize);
            let at = all.len() - rows * h;
            self.hidden.clear();
            match shape[1] {
                1 => self.hidden.extend_from_slice(all),
                _ => self.hidden.extend_from_slice(&all[at..]),
            }
        }
        let (_, logits) = outputs["logits"]
            .try_extract_tensor::<f32>()
            .map_err(run_err)?;
        Ok(logits.to_vec())
    }

    /// The last residual stream at every position of `rows` (no past),
    /// right-padded to the longest: `[rows, width, hidden]`, with the width
    /// and the hidden size. Only each row's last position goes through the
    /// LM head.
    pub fn hidden_all(&mut self, rows: &[&[u32]]) -> Result<(Vec<f32>, usize, usize)> {
        self.require_hidden()?;
        if rows.iter().any(|p| p.is_empty()) {
            return Err(Error::Run("hidden states: an empty row".to_string()));
        }
        let width = rows.iter().map(|p| p.len()).max().unwrap_or(0);
        let n = rows.len();
        let last: Vec<i64> = rows.iter().map(|p| p.len() as i64 - 1).collect();
        let batch = right_pad(rows, width);
        let outputs = run(
            &mut self.session,
            self.dims,
            batch.ids,
            batch.mask,
            ([n, 1], last),
            n,
            width,
        )?;
        let (shape, hidden) = outputs["hidden"]
            .try_extract_tensor::<f32>()
            .map_err(|e| Error::Run(e.to_string()))?;
        Ok((hidden.to_vec(), width, shape[2] as usize))
    }

    /// Logits at every position of `rows` (no past), right-padded to the
    /// longest: `[rows, width, vocab]`, with the width.
    pub fn logits_all(&mut self, rows: &[&[u32]]) -> Result<(Vec<f32>, usize)> {
        let positions: Vec<Vec<usize>> = rows.iter().map(|r| (0..r.len()).collect()).collect();
        let width = rows.iter().map(|p| p.len()).max().unwrap_or(0);
        let (logits, kept) = self.logits_at(rows, &positions)?;
        debug_assert!(rows.is_empty() || kept == width);
        Ok((logits, kept))
    }

    /// Logits at `positions[r]` of each row `r` (no past, right-padded):
    /// `[rows, kept, vocab]`, with `kept` the most positions any row asks
    /// for (a row asking for fewer gets its last one repeated). Only those
    /// positions go through the final norm and the LM head, so memory is
    /// rows × kept × vocabulary whatever the rows' lengths.
    pub fn logits_at(
        &mut self,
        rows: &[&[u32]],
        positions: &[Vec<usize>],
    ) -> Result<(Vec<f32>, usize)> {
        let width = rows.iter().map(|p| p.len()).max().unwrap_or(0);
        if rows.iter().any(|p| p.is_empty()) {
            return Err(Error::Run("scoring: an empty row".to_string()));
        }
        if positions.len() != rows.len()
            || rows
                .iter()
                .zip(positions)
                .any(|(r, p)| p.is_empty() || p.iter().any(|&i| i >= r.len()))
        {
            return Err(Error::Run(
                "scoring: every row needs positions inside it".to_string(),
            ));
        }
        let n = rows.len();
        let kept = positions.iter().map(Vec::len).max().unwrap_or(0);
        let batch = right_pad(rows, width);
        let flat: Vec<i64> = positions
            .iter()
            .flat_map(|p| {
                let last = p[p.len() - 1];
                (0..kept).map(move |i| p.get(i).copied().unwrap_or(last) as i64)
            })
            .collect();
        let outputs = run(
            &mut self.session,
            self.dims,
            batch.ids,
            batch.mask,
            ([n, kept], flat),
            n,
            width,
        )?;
        let (_, logits) = outputs["logits"]
            .try_extract_tensor::<f32>()
            .map_err(|e| Error::Run(e.to_string()))?;
        Ok((logits.to_vec(), kept))
    }
}

/// A prompt run (no past) of `n` right-padded rows of `width` tokens.
fn run(
    session: &mut Session,
    d: DecoderDims,
    ids: Vec<i64>,
    mask: Vec<i64>,
    positions: ([usize; 2], Vec<i64>),
    n: usize,
    width: usize,
) -> Result<ort::session::SessionOutputs<'_>> {
    let run_err = |e: ort::Error| Error::Run(e.to_string());
    let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
        Vec::with_capacity(3 + 2 * d.layers);
    inputs.push((
        "input_ids".into(),
        Tensor::from_array(([n, width], ids))
            .map_err(run_err)?
            .into(),
    ));
    inputs.push((
        "attention_mask".into(),
        Tensor::from_array(([n, width], mask))
            .map_err(run_err)?
            .into(),
    ));
    inputs.push((
        "logit_positions".into(),
        Tensor::from_array(positions).map_err(run_err)?.into(),
    ));
    for layer in 0..d.layers {
        for kind in ["key", "value"] {
            let empty: Vec<f32> = Vec::new();
            inputs.push((
                format!("past_key_values.{layer}.{kind}").into(),
                Tensor::from_array(([n, d.kv_heads, 0, d.head_dim], empty))
                    .map_err(run_err)?
                    .into(),
            ));
        }
    }
    session.run(inputs).map_err(run_err)
}

/// Token rows right-padded with id 0 to `width`, and their attention mask.
struct Padded {
    ids: Vec<i64>,
    mask: Vec<i64>,
}

fn right_pad(rows: &[&[u32]], width: usize) -> Padded {
    let mut p = Padded {
        ids: Vec::with_capacity(rows.len() * width),
        mask: Vec::with_capacity(rows.len() * width),
    };
    for row in rows {
        let pad = width - row.len();
        p.ids.extend(
            row.iter()
                .map(|&t| i64::from(t))
                .chain(std::iter::repeat_n(0, pad)),
        );
        p.mask
            .extend(std::iter::repeat_n(1, row.len()).chain(std::iter::repeat_n(0, pad)));
    }
    p
}
