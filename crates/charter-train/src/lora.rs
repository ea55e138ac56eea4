//! Low-rank adapters (LoRA, Hu et al. 2021) on the decoder's linear
//! projections.
//!
//! With adapters on, every base weight is frozen and each projection
//! `W` `[out, in]` of every block (q, k, v, o, gate, up, down) computes
//! `x·Wᵀ + s·(x·Aᵀ)·Bᵀ` with `A` `[r, in]`, `B` `[out, r]` and
//! `s = alpha / r`. `B` starts at zero, so training starts from exactly the
//! base model; only `A` and `B` get gradients and optimizer state. A trained
//! model is written with `W + s·B·A` merged in, so it loads like any other,
//! and the adapters alone are kept beside it in PEFT's layout.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::tensor::param_with_id;
use crate::{Error, Result};

/// Adapter shape and scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoraSettings {
    /// Rank `r` of every adapter.
    pub rank: usize,
    /// Scale numerator: the update is `alpha / rank · B·A`.
    pub alpha: f64,
}

impl LoraSettings {
    /// Checks the values a user can get wrong.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::invalid("lora_rank", "must be at least 1"));
        }
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return Err(Error::invalid(
                "lora_alpha",
                format!("must be > 0, got {}", self.alpha),
            ));
        }
        Ok(())
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// The projections adapters attach to, in HuggingFace's names.
pub(crate) const TARGETS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// Parameter ids of adapters start here: after every decoder parameter and
/// the preference model's score head, and the same on every load.
const FIRST_ID: u64 = 1 << 41;

/// One adapter: `A` `[rank, in]` and `B` `[out, rank]`.
#[derive(Module, Debug)]
pub struct Adapter {
    pub(crate) a: Param<Tensor<2>>,
    pub(crate) b: Param<Tensor<2>>,
}

impl Adapter {
    /// A fresh adapter for a `[out, in]` weight: `A` uniform in
    /// `±1/√in` from a stream keyed by (`seed`, `name`), `B` zero.
    pub(crate) fn new(
        name: &str,
        index: u64,
        [out, inp]: [usize; 2],
        rank: usize,
        seed: u64,
        device: &Device,
    ) -> Self {
        let bound = 1.0 / (inp as f64).sqrt();
        let a = TensorData::new(uniform(seed, name, rank * inp, bound), [rank, inp]);
        let b = TensorData::new(vec![0f32; out * rank], [out, rank]);
        Self::from_data(index, a, b, device)
    }

    /// An adapter with the given `A` `[rank, in]` and `B` `[out, rank]`.
    pub(crate) fn from_data(index: u64, a: TensorData, b: TensorData, device: &Device) -> Self {
        Self {
            a: param_with_id(FIRST_ID + 2 * index, Tensor::from_data(a, device)),
            b: param_with_id(FIRST_ID + 2 * index + 1, Tensor::from_data(b, device)),
        }
    }

    /// `s·B·A`, the adapter's change to its `[out, in]` weight.
    pub(crate) fn delta(&self, scale: f64) -> Tensor<2> {
        self.b.val().matmul(self.a.val()) * scale
    }
}

/// A block's adapters, in [`TARGETS`] order.
#[derive(Module, Debug)]
pub struct LayerAdapters {
    pub(crate) q: Adapter,
    pub(crate) k: Adapter,
    pub(crate) v: Adapter,
    pub(crate) o: Adapter,
    pub(crate) gate: Adapter,
    pub(crate) up: Adapter,
    pub(crate) down: Adapter,
}

impl LayerAdapters {
    /// The adapters with their target names, in [`TARGETS`] order.
    pub(crate) fn each(&self) -> [(&'static str, &Adapter); 7] {
        [
            (TARGETS[0], &self.q),
            (TARGETS[1], &self.k),
            (TARGETS[2], &self.v),
            (TARGETS[3], &self.o),
            (TARGETS[4], &self.gate),
            (TARGETS[5], &self.up),
            (TARGETS[6], &self.down),
        ]
    }

    /// Builds a block's seven adapters with `make(target index, target)`.
    pub(crate) fn build(
        mut make: impl FnMut(usize, &'static str) -> Result<Adapter>,
    ) -> Result<Self> {
        Ok(Self {
            q: make(0, TARGETS[0])?,
            k: make(1, TARGETS[1])?,
            v: make(2, TARGETS[2])?,
            o: make(3, TARGETS[3])?,
            gate: make(4, TARGETS[4])?,
            up: make(5, TARGETS[5])?,
            down: make(6, TARGETS[6])?,
        })
    }
}

/// PEFT's tensor name for a target's `A` or `B` in block `layer`.
pub(crate) fn peft_name(layer: usize, target: &str, which: char) -> String {
    format!("base_model.model.model.layers.{layer}.{target}.lora_{which}.weight")
}

/// `n` values uniform in `[-bound, bound)` from blake3's output stream keyed
/// by (`seed`, `name`): the same on every machine.
fn uniform(seed: u64, name: &str, n: usize, bound: f64) -> Vec<f32> {
    let mut h = blake3::Hasher::new();
    h.update(b"lora-init\0");
    h.update(&seed.to_le_bytes());
    h.update(name.as_bytes());
    let mut stream = h.finalize_xof();
    let mut bytes = vec![0u8; 4 * n];
    stream.fill(&mut bytes);
    bytes
        .chunks_exact(4)
        .map(|c| {
            let u = f64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])) / 4_294_967_296.0;
            ((2.0 * u - 1.0) * bound) as f32
        })
        .collect()
}

/// `adapter_config.json` for PEFT: rank, alpha and targets of `settings`
/// over the base model `base`.
pub(crate) fn peft_config(settings: &LoraSettings, base: &str) -> serde_json::Value {
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": settings.rank,
        "lora_alpha": settings.alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "target_modules": TARGETS.map(|t| t.rsplit('.').next().unwrap_or(t)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_keyed_and_bounded() {
        let a = uniform(0, "x", 1000, 0.1);
        assert_eq!(a, uniform(0, "x", 1000, 0.1));
        assert_ne!(a, uniform(1, "x", 1000, 0.1));
        assert_ne!(a, uniform(0, "y", 1000, 0.1));
        assert!(a.iter().all(|v| (-0.1..0.1).contains(v)));
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / 1000.0;
        assert!(mean.abs() < 0.01, "{mean}");
    }

    #[test]
    fn settings_are_checked() {
        let ok = LoraSettings {
            rank: 8,
            alpha: 16.0,
        };
        assert!(ok.validate().is_ok());
        assert_eq!(ok.scale(), 2.0);
        assert!(LoraSettings { rank: 0, ..ok }.validate().is_err());
        assert!(LoraSettings { alpha: 0.0, ..ok }.validate().is_err());
    }
}
