//! One-layer graphs for benchmarks: a single linear layer stored the way
//! charter's decoder export stores it, so its speed can be measured alone
//! (`benches/matmul.rs`).
//!
//! The graph has one input `x` of shape `[m, k]` (f32, `m` dynamic) and one
//! output `y` of shape `[m, n]`. Weights are pseudo-random, uniform in
//! ±0.05, from a fixed seed.

use std::path::{Path, PathBuf};

use super::builder::{Attr, Dim, GraphBuilder};
use super::llama::{Activations, BlockOffsets, block_linear};
use super::proto::data_type;
use crate::error::Result;

/// Which op computes `y = x · Wᵀ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchLinear {
    /// f32 `MatMul` with the weight stored transposed, `[k, n]`: the f32
    /// export's linear layers.
    MatMul,
    /// f32 `Gemm` with `transB = 1` over a `[n, k]` weight: the LM head.
    GemmTransB,
    /// `com.microsoft` `MatMulNBits`, as the block formats write it.
    Blocks {
        /// Bits per weight: 4 or 8.
        bits: usize,
        /// How block offsets are stored.
        offsets: BlockOffsets,
        /// int8 or f32 input ([`Activations::Int8ExceptQkv`] counts as int8:
        /// the layer is not the Q/K/V projection).
        activations: Activations,
    },
}

/// Writes a graph computing one `[k] → [n]` linear layer with `op` to
/// `dir/model.onnx` (+ `model.onnx.data`) and returns the graph's path.
pub fn single_linear(dir: &Path, k: usize, n: usize, op: BenchLinear) -> Result<PathBuf> {
    let mut g = GraphBuilder::new(&dir.join("model.onnx.data"))?;
    g.input(
        "x",
        data_type::FLOAT,
        &[Dim::Named("m"), Dim::Fixed(k as i64)],
    );
    g.output(
        "y",
        data_type::FLOAT,
        &[Dim::Named("m"), Dim::Fixed(n as i64)],
    );
    // xorshift64*, mapped to ±0.05.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let w: Vec<f32> = (0..n * k)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
            (r as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect();
    let y = match op {
        BenchLinear::MatMul => {
            let mut t = vec![0f32; w.len()];
            for o in 0..n {
                for i in 0..k {
                    t[i * n + o] = w[o * k + i];
                }
            }
            let wt = g.weight_f32("w", &[k, n], &t)?;
            g.node("MatMul", &["x", &wt], vec![])
        }
        BenchLinear::GemmTransB => {
            let w = g.weight_f32("w", &[n, k], &w)?;
            g.node("Gemm", &["x", &w], vec![("transB", Attr::Int(1))])
        }
        BenchLinear::Blocks {
            bits,
            offsets,
            activations,
        } => block_linear(
            &mut g,
            ("x", 2),
            "w",
            &w,
            (n, k),
            bits,
            activations.accuracy_level(false),
            offsets,
        )?,
    };
    g.rename(&y, "y");
    let path = dir.join("model.onnx");
    g.finish(
        &path,
        &[("", 21), ("com.microsoft", 1)],
        &[("charter.export", "bench".to_string())],
    )?;
    Ok(path)
}
