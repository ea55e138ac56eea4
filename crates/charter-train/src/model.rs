//! The llama-family decoder as a burn module.
//!
//! Weights keep HuggingFace's names and layout (`[out, in]` linear weights,
//! rotate-half Q/K rows), as `model.safetensors` in a charter model directory
//! stores them; rotary embeddings are applied in rotate-half form to match, so
//! nothing is permuted on load.

use std::path::Path;

use std::cell::Cell;

use burn::module::{Module, Param};
use burn::tensor::Gradients;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use charter_model::{ModelConfig, ModelDir, Tensors};

use crate::kernels;
use crate::lora::{Adapter, LayerAdapters, LoraSettings, TARGETS, peft_name};
use crate::tensor::{param_with_id, values};
use crate::{Error, Result};

/// One transformer block: attention and SwiGLU MLP, each pre-normed.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    input_norm: Param<Tensor<1>>,
    q_proj: Param<Tensor<2>>,
    k_proj: Param<Tensor<2>>,
    v_proj: Param<Tensor<2>>,
    q_bias: Option<Param<Tensor<1>>>,
    k_bias: Option<Param<Tensor<1>>>,
    v_bias: Option<Param<Tensor<1>>>,
    o_proj: Param<Tensor<2>>,
    post_norm: Param<Tensor<1>>,
    gate_proj: Param<Tensor<2>>,
    up_proj: Param<Tensor<2>>,
    down_proj: Param<Tensor<2>>,
    /// Low-rank adapters, when training with LoRA.
    lora: Option<LayerAdapters>,
}

/// The decoder: token embedding, blocks, final norm and LM head (tied to the
/// embedding when `lm_head` is `None`).
#[derive(Module, Debug)]
pub struct Decoder {
    embed: Param<Tensor<2>>,
    layers: Vec<DecoderLayer>,
    norm: Param<Tensor<1>>,
    lm_head: Option<Param<Tensor<2>>>,
    #[module(skip)]
    config: ModelConfig,
    /// Adapter settings when the blocks carry adapters.
    #[module(skip)]
    lora: Option<LoraSettings>,
}

/// Shape checks and conversion of named f32 weights into burn parameters.
///
/// Parameters get ids `0, 1, 2, …` in load order rather than random ones, so
/// an optimizer state saved in a checkpoint finds its parameters again when
/// the model is loaded anew.
struct Loader<'a> {
    tensors: &'a Tensors,
    device: &'a Device,
    next_id: Cell<u64>,
}

impl Loader<'_> {
    fn get(&self, name: &str, want: &[usize]) -> Result<TensorData> {
        let (shape, values) = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::MissingWeight(name.to_string()))?;
        if shape != want {
            return Err(Error::Shape {
                name: name.to_string(),
                got: shape.clone(),
                want: want.to_vec(),
            });
        }
        Ok(TensorData::new(values.clone(), shape.clone()))
    }

    fn param<const D: usize>(&self, data: TensorData) -> Param<Tensor<D>> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        param_with_id(id, Tensor::from_data(data, self.device))
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Param<Tensor<2>>> {
        Ok(self.param(self.get(name, &[rows, cols])?))
    }

    fn vector(&self, name: &str, len: usize) -> Result<Param<Tensor<1>>> {
        Ok(self.param(self.get(name, &[len])?))
    }

    fn optional_vector(&self, name: &str, len: usize) -> Result<Option<Param<Tensor<1>>>> {
        match self.tensors.contains_key(name) {
            true => self.vector(name, len).map(Some),
            false => Ok(None),
        }
    }
}

/// A low-rank adapter and its scale, applied beside a frozen weight.
type Lora<'a> = Option<(&'a Adapter, f64)>;

/// `x · Wᵀ (+ b) (+ s · (x · Aᵀ) · Bᵀ)` for `x` `[batch, seq, in]`, `W`
/// `[out, in]` and an optional adapter.
fn linear(
    x: Tensor<3>,
    weight: &Param<Tensor<2>>,
    bias: Option<&Param<Tensor<1>>>,
    lora: Lora<'_>,
) -> Tensor<3> {
    let [b, t, i] = x.dims();
    let w = weight.val();
    let out = w.dims()[0];
    let x = x.reshape([b * t, i]);
    let mut y = kernels::linear(x.clone(), w);
    if let Some(bias) = bias {
        y = y + bias.val().unsqueeze::<2>();
    }
    if let Some((adapter, scale)) = lora {
        // Scaled at rank width, where it is cheapest.
        let low = kernels::linear(x, adapter.a.val()) * scale;
        y = y + kernels::linear(low, adapter.b.val());
    }
    y.reshape([b, t, out])
}

/// RMSNorm over the last dimension.
fn rms_norm(x: Tensor<3>, weight: &Param<Tensor<1>>, eps: f64) -> Tensor<3> {
    kernels::rms_norm(x, weight.val(), eps)
}

/// Rotate-half rotary embedding of `x` `[batch, heads, seq, head_dim]` with
/// `cos`/`sin` `[1, 1, seq, head_dim]`.
fn rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let hd = x.dims()[3];
    let half = hd / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

impl DecoderLayer {
    fn load(loader: &Loader<'_>, c: &ModelConfig, l: usize) -> Result<Self> {
        let p = format!("model.layers.{l}");
        let (h, hd) = (c.hidden_size, c.head_dim());
        let (q, kv, ff) = (
            c.num_attention_heads * hd,
            c.num_key_value_heads * hd,
            c.intermediate_size,
        );
        Ok(Self {
            input_norm: loader.vector(&format!("{p}.input_layernorm.weight"), h)?,
            q_proj: loader.matrix(&format!("{p}.self_attn.q_proj.weight"), q, h)?,
            k_proj: loader.matrix(&format!("{p}.self_attn.k_proj.weight"), kv, h)?,
            v_proj: loader.matrix(&format!("{p}.self_attn.v_proj.weight"), kv, h)?,
            q_bias: loader.optional_vector(&format!("{p}.self_attn.q_proj.bias"), q)?,
            k_bias: loader.optional_vector(&format!("{p}.self_attn.k_proj.bias"), kv)?,
            v_bias: loader.optional_vector(&format!("{p}.self_attn.v_proj.bias"), kv)?,
            o_proj: loader.matrix(&format!("{p}.self_attn.o_proj.weight"), h, q)?,
            post_norm: loader.vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
            gate_proj: loader.matrix(&format!("{p}.mlp.gate_proj.weight"), ff, h)?,
            up_proj: loader.matrix(&format!("{p}.mlp.up_proj.weight"), ff, h)?,
            down_proj: loader.matrix(&format!("{p}.mlp.down_proj.weight"), h, ff)?,
            lora: None,
        })
    }

    /// The block's projections in [`TARGETS`] order.
    fn projections(&self) -> [&Param<Tensor<2>>; 7] {
        [
            &self.q_proj,
            &self.k_proj,
            &self.v_proj,
            &self.o_proj,
            &self.gate_proj,
            &self.up_proj,
            &self.down_proj,
        ]
    }

    /// The block on `x` `[batch, seq, hidden]`; `scale` multiplies the
    /// adapters' output, if the block has adapters.
    fn forward(&self, x: Tensor<3>, c: &ModelConfig, rot: &Rotary, scale: f64) -> Tensor<3> {
        let lora = |pick: fn(&LayerAdapters) -> &Adapter| -> Lora<'_> {
            self.lora.as_ref().map(|l| (pick(l), scale))
        };
        let [b, t, _] = x.dims();
        let (nh, kvh, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim());
        let n = rms_norm(x.clone(), &self.input_norm, c.rms_norm_eps);
        let heads = |y: Tensor<3>, count: usize| y.reshape([b, t, count, hd]).swap_dims(1, 2);
        let q = heads(
            linear(
                n.clone(),
                &self.q_proj,
                self.q_bias.as_ref(),
                lora(|l| &l.q),
            ),
            nh,
        );
        let k = heads(
            linear(
                n.clone(),
                &self.k_proj,
                self.k_bias.as_ref(),
                lora(|l| &l.k),
            ),
            kvh,
        );
        let v = heads(
            linear(n, &self.v_proj, self.v_bias.as_ref(), lora(|l| &l.v)),
            kvh,
        );
        let q = rope(q, &rot.cos, &rot.sin);
        let k = rope(k, &rot.cos, &rot.sin);
        // Grouped-query attention: each KV head serves the `group` query
        // heads next to each other, so their rows stack into one matrix of
        // `group · t` rows per KV head (a reshape, no copy) and meet K and V
        // as they are, instead of K and V being copied `group` times.
        let group = nh / kvh;
        let scores = q
            .reshape([b, kvh, group * t, hd])
            .matmul(k.swap_dims(2, 3))
            .reshape([b, nh, t, t]);
        let probs = kernels::causal_softmax(scores, 1.0 / (hd as f64).sqrt(), &rot.causal);
        let ctx = probs
            .reshape([b, kvh, group * t, t])
            .matmul(v)
            .reshape([b, nh, t, hd]);
        let ctx = ctx.swap_dims(1, 2).reshape([b, t, nh * hd]);
        let x = x + linear(ctx, &self.o_proj, None, lora(|l| &l.o));
        let n = rms_norm(x.clone(), &self.post_norm, c.rms_norm_eps);
        let gate = linear(n.clone(), &self.gate_proj, None, lora(|l| &l.gate));
        let act = kernels::swiglu(gate, linear(n, &self.up_proj, None, lora(|l| &l.up)));
        x + linear(act, &self.down_proj, None, lora(|l| &l.down))
    }
}

/// A parameter of either rank, for walking them by name.
enum Named<'a> {
    Matrix(&'a Param<Tensor<2>>),
    Vector(&'a Param<Tensor<1>>),
}

/// Per-forward constants: rotary tables and the causal mask.
struct Rotary {
    cos: Tensor<4>,
    sin: Tensor<4>,
    causal: Tensor<4, Bool>,
}

impl Rotary {
    fn new(c: &ModelConfig, t: usize, device: &Device) -> Self {
        let hd = c.head_dim();
        let half = hd / 2;
        let (mut cos, mut sin) = (Vec::with_capacity(t * hd), Vec::with_capacity(t * hd));
        for pos in 0..t {
            for d in 0..hd {
                let j = d % half;
                let angle = pos as f64 * c.rope_theta.powf(-(2.0 * j as f64) / hd as f64);
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let table = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [t, hd]), device);
        Self {
            cos: table(cos).unsqueeze::<4>(),
            sin: table(sin).unsqueeze::<4>(),
            causal: Tensor::<2, Bool>::tril_mask([t, t], 0, device).unsqueeze::<4>(),
        }
    }
}

impl Decoder {
    /// Loads `config.json` and `model.safetensors` from a model directory.
    pub fn open(dir: &Path, device: &Device) -> Result<Self> {
        let dir = ModelDir::open(dir)?;
        let tensors = dir.load_weights()?;
        Self::from_tensors(dir.config, &tensors, device)
    }

    /// Builds the decoder from HF-named f32 tensors.
    pub fn from_tensors(config: ModelConfig, tensors: &Tensors, device: &Device) -> Result<Self> {
        let loader = Loader {
            tensors,
            device,
            next_id: Cell::new(0),
        };
        let (h, vocab) = (config.hidden_size, config.vocab_size);
        if config.num_key_value_heads == 0
            || !config
                .num_attention_heads
                .is_multiple_of(config.num_key_value_heads)
        {
            return Err(Error::Input(format!(
                "{} attention heads are not a multiple of {} KV heads",
                config.num_attention_heads, config.num_key_value_heads
            )));
        }
        let layers = (0..config.num_hidden_layers)
            .map(|l| DecoderLayer::load(&loader, &config, l))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = match config.tie_word_embeddings {
            true => None,
            false => Some(loader.matrix("lm_head.weight", vocab, h)?),
        };
        Ok(Self {
            embed: loader.matrix("model.embed_tokens.weight", vocab, h)?,
            layers,
            norm: loader.vector("model.norm.weight", h)?,
            lm_head,
            config,
            lora: None,
        })
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.embed.val().device()
    }

    /// Token ids `[batch, seq]` (`i64`, row-major) as an int tensor, checking
    /// the vocabulary range.
    pub fn ids(&self, rows: &[&[u32]], device: &Device) -> Result<Tensor<2, Int>> {
        let width = rows.first().map_or(0, |r| r.len());
        if width == 0 || rows.iter().any(|r| r.len() != width) {
            return Err(Error::Input(
                "rows must be non-empty and of equal length".to_string(),
            ));
        }
        let vocab = self.config.vocab_size;
        if let Some(bad) = rows
            .iter()
            .flat_map(|r| r.iter())
            .find(|&&t| t as usize >= vocab)
        {
            return Err(Error::Input(format!(
                "token {bad} outside vocabulary {vocab}"
            )));
        }
        let values: Vec<i64> = rows
            .iter()
            .flat_map(|r| r.iter().map(|&t| i64::from(t)))
            .collect();
        Ok(Tensor::from_data(
            TensorData::new(values, [rows.len(), width]),
            device,
        ))
    }

    /// The final-normed hidden states `[batch, seq, hidden]` at every
    /// position of `ids` `[batch, seq]` under a causal mask (positions start
    /// at 0 in every row; right padding does not affect the states of the
    /// tokens before it).
    pub fn hidden(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, t] = ids.dims();
        let device = ids.device();
        let h = self.config.hidden_size;
        let flat = ids.reshape([b * t]);
        let mut x = self.embed.val().select(0, flat).reshape([b, t, h]);
        let rot = Rotary::new(&self.config, t, &device);
        let scale = self.lora.map_or(1.0, |l| l.scale());
        for layer in &self.layers {
            x = layer.forward(x, &self.config, &rot, scale);
        }
        rms_norm(x, &self.norm, self.config.rms_norm_eps)
    }

    /// Logits `[batch, seq, vocab]` at every position of `ids` `[batch, seq]`
    /// (see [`Decoder::hidden`]).
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        linear(self.hidden(ids), head, None, None)
    }

    /// Logits `[n, vocab]` of final-normed hidden states `[n, hidden]`
    /// (rows of [`Decoder::hidden`]).
    pub fn lm_head(&self, hidden: Tensor<2>) -> Tensor<2> {
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        kernels::linear(hidden, head.val())
    }

    /// Every parameter under its HuggingFace name.
    fn named(&self) -> Vec<(String, Named<'_>)> {
        let mut out = vec![
            (
                "model.embed_tokens.weight".to_string(),
                Named::Matrix(&self.embed),
            ),
            ("model.norm.weight".to_string(), Named::Vector(&self.norm)),
        ];
        if let Some(head) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), Named::Matrix(head)));
        }
        for (l, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{l}");
            let matrices = [
                ("self_attn.q_proj.weight", &layer.q_proj),
                ("self_attn.k_proj.weight", &layer.k_proj),
                ("self_attn.v_proj.weight", &layer.v_proj),
                ("self_attn.o_proj.weight", &layer.o_proj),
                ("mlp.gate_proj.weight", &layer.gate_proj),
                ("mlp.up_proj.weight", &layer.up_proj),
                ("mlp.down_proj.weight", &layer.down_proj),
            ];
            out.extend(matrices.map(|(n, w)| (format!("{p}.{n}"), Named::Matrix(w))));
            let vectors = [
                ("input_layernorm.weight", Some(&layer.input_norm)),
                ("post_attention_layernorm.weight", Some(&layer.post_norm)),
                ("self_attn.q_proj.bias", layer.q_bias.as_ref()),
                ("self_attn.k_proj.bias", layer.k_bias.as_ref()),
                ("self_attn.v_proj.bias", layer.v_bias.as_ref()),
            ];
            for (n, v) in vectors {
                if let Some(v) = v {
                    out.push((format!("{p}.{n}"), Named::Vector(v)));
                }
            }
        }
        out
    }

    /// Every weight under its HuggingFace name, as `model.safetensors`
    /// stores it (a tied LM head is not repeated), with any adapters merged
    /// into their weights.
    pub fn to_tensors(&self) -> Result<Tensors> {
        let mut out = Tensors::new();
        if let Some(settings) = self.lora {
            for (l, layer) in self.layers.iter().enumerate() {
                let Some(adapters) = &layer.lora else {
                    continue;
                };
                for ((target, adapter), weight) in
                    adapters.each().into_iter().zip(layer.projections())
                {
                    let merged = weight.val() + adapter.delta(settings.scale());
                    let data = merged.into_data();
                    let shape = data.shape().iter().copied().collect();
                    out.insert(
                        format!("model.layers.{l}.{target}.weight"),
                        (shape, values(data)?),
                    );
                }
            }
        }
        for (name, param) in self.named() {
            if out.contains_key(&name) {
                continue;
            }
            let data = match param {
                Named::Matrix(p) => p.val().into_data(),
                Named::Vector(p) => p.val().into_data(),
            };
            let shape = data.shape().iter().copied().collect();
            out.insert(name, (shape, values(data)?));
        }
        Ok(out)
    }

    /// Puts low-rank adapters of `settings` on every block's projections
    /// and freezes every other weight (see [`crate::lora`]). `A` is drawn
    /// from a stream keyed by `seed`; `B` is zero, so the model's outputs
    /// are unchanged until it trains.
    pub fn with_lora(self, settings: LoraSettings, seed: u64) -> Result<Self> {
        settings.validate()?;
        let device = self.device();
        self.no_grad()
            .attach(settings, |l, target, index, [out, inp]| {
                if settings.rank > out.min(inp) {
                    return Err(Error::invalid(
                        "lora_rank",
                        format!("{} exceeds the {out}×{inp} weight {target}", settings.rank),
                    ));
                }
                Ok(Adapter::new(
                    &format!("model.layers.{l}.{target}"),
                    index,
                    [out, inp],
                    settings.rank,
                    seed,
                    &device,
                ))
            })
    }

    /// Sets every block's adapters to `make(layer, target, index, [out,
    /// in])`, where `index` numbers the adapters in a fixed order (their
    /// parameter ids derive from it).
    fn attach(
        mut self,
        settings: LoraSettings,
        mut make: impl FnMut(usize, &'static str, u64, [usize; 2]) -> Result<Adapter>,
    ) -> Result<Self> {
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let shapes = layer.projections().map(|w| w.val().dims());
            layer.lora = Some(LayerAdapters::build(|i, target| {
                make(l, target, (l * TARGETS.len() + i) as u64, shapes[i])
            })?);
        }
        self.lora = Some(settings);
        Ok(self)
    }

    /// The adapter settings, when the model carries adapters.
    pub fn lora(&self) -> Option<LoraSettings> {
        self.lora
    }

    /// The adapters' `A` `[rank, in]` and `B` `[out, rank]` under PEFT's
    /// names (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`);
    /// empty without adapters.
    pub fn adapter_tensors(&self) -> Result<Tensors> {
        let mut out = Tensors::new();
        for (name, p) in self.named_adapters() {
            let data = p.val().into_data();
            let shape = data.shape().iter().copied().collect();
            out.insert(name, (shape, values(data)?));
        }
        Ok(out)
    }

    /// Every adapter matrix under its PEFT name.
    fn named_adapters(&self) -> Vec<(String, &Param<Tensor<2>>)> {
        let mut out = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            let Some(adapters) = &layer.lora else {
                continue;
            };
            for (target, adapter) in adapters.each() {
                out.push((peft_name(l, target, 'A'), &adapter.a));
                out.push((peft_name(l, target, 'B'), &adapter.b));
            }
        }
        out
    }

    /// What training changes: the adapters with LoRA, else every weight.
    pub fn trainable_tensors(&self) -> Result<Tensors> {
        match self.lora {
            Some(_) => self.adapter_tensors(),
            None => self.to_tensors(),
        }
    }

    /// The model with the weights of [`Decoder::trainable_tensors`] put
    /// back: the adapters with LoRA (the frozen weights stay), else every
    /// weight.
    pub fn restore(self, tensors: &Tensors) -> Result<Self> {
        let device = self.device();
        let Some(settings) = self.lora else {
            return Decoder::from_tensors(self.config.clone(), tensors, &device);
        };
        let loader = Loader {
            tensors,
            device: &device,
            next_id: Cell::new(0),
        };
        let rank = settings.rank;
        self.attach(settings, |l, target, index, [out, inp]| {
            let a = loader.get(&peft_name(l, target, 'A'), &[rank, inp])?;
            let b = loader.get(&peft_name(l, target, 'B'), &[out, rank])?;
            Ok(Adapter::from_data(index, a, b, &device))
        })
    }

    /// The gradient of every weight in `grads` (from `loss.backward()` on
    /// an autodiff device) under its HuggingFace name, and of every adapter
    /// under its PEFT name; weights the loss does not reach, or frozen
    /// ones, are absent.
    pub fn gradients(&self, grads: &Gradients) -> Result<Tensors> {
        let mut out = Tensors::new();
        for (name, param) in self.named() {
            let data = match param {
                Named::Matrix(p) => p.val().grad(grads).map(Tensor::into_data),
                Named::Vector(p) => p.val().grad(grads).map(Tensor::into_data),
            };
            if let Some(data) = data {
                let shape = data.shape().iter().copied().collect();
                out.insert(name, (shape, values(data)?));
            }
        }
        for (name, p) in self.named_adapters() {
            if let Some(data) = p.val().grad(grads).map(Tensor::into_data) {
                let shape = data.shape().iter().copied().collect();
                out.insert(name, (shape, values(data)?));
            }
        }
        Ok(out)
    }

    /// Logits at every position of equal-length `rows`, flattened
    /// `[rows, seq, vocab]` row-major.
    pub fn logits(&self, rows: &[&[u32]]) -> Result<Vec<f32>> {
        let ids = self.ids(rows, &self.device())?;
        values(self.forward(ids).into_data())
    }
}
