//! Achieved matmul throughput against the machine's measured peak, through
//! ONNX Runtime on one intra-op thread.
//!
//! 1. Peak: large square f32 `MatMul`s (`--peak` sizes, default 512³,
//!    1024³ and 2048³); the best of them is the practical peak.
//! 2. Every linear layer of the default model (SmolLM2-135M) at decode batch
//!    sizes, in each weight format the exporter writes: f32 `MatMul`, and
//!    `MatMulNBits` 8- and 4-bit with int8 activations (accuracy level 4) and
//!    integer zero points, 4-bit with residual block offsets (what
//!    `--dtype int4` exports) with int8 and with f32 activations (accuracy
//!    level 0, as its Q/K/V projection runs); plus the f32 LM head `Gemm`.
//!
//! Each graph holds the one layer alone (`charter_model::onnx::bench_graph`),
//! with the output bound to a preallocated buffer. Reported: GFLOP/s as
//! `2·M·K·N / time` (median of several timed batches of runs) and its share
//! of the peak; then, per format and batch size, the time one decode step
//! spends in matmuls (30 layers + the LM head) and the tokens/s that alone
//! would allow.
//!
//! Run: `cargo bench --bench matmul -- [--batches 1,8,32,64] [--threads 1] [--peak 512,1024,2048]`

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::time::{Duration, Instant};

use charter_model::onnx::bench_graph::{BenchLinear, single_linear};
use charter_model::onnx::{Activations, BlockOffsets};
use ort::session::{Session, builder::GraphOptimizationLevel};
use ort::value::Tensor;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// Seconds per run of `y = x · Wᵀ` for `m` rows: the median over 7 timed
/// batches of runs, each batch at least ~40 ms, after a warm-up.
fn time_linear(op: BenchLinear, m: usize, k: usize, n: usize, threads: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let path = single_linear(dir.path(), k, n, op).unwrap();
    let env = charter_gen::runtime::init().unwrap();
    let mut session = Session::builder(env)
        .unwrap()
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .unwrap()
        .with_intra_threads(threads)
        .unwrap()
        .commit_from_file(&path)
        .unwrap();
    let x: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 2.0)
        .collect();
    let x = Tensor::from_array(([m, k], x)).unwrap();
    let mut y = Tensor::<f32>::new(&ort::memory::Allocator::default(), [m, n]).unwrap();
    let mut binding = session.create_binding().unwrap();
    binding.bind_input("x", &x).unwrap();
    binding.bind_output("y", &mut y).unwrap();
    let mut run = || {
        session.run_binding(&binding).unwrap();
    };
    let t = Instant::now();
    let mut warm = 0;
    while warm < 3 || t.elapsed() < Duration::from_millis(100) {
        run();
        warm += 1;
    }
    let per = t.elapsed().as_secs_f64() / warm as f64;
    let iters = ((0.04 / per).ceil() as usize).max(1);
    let mut times: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                run();
            }
            t.elapsed().as_secs_f64() / iters as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn gflops(m: usize, k: usize, n: usize, secs: f64) -> f64 {
    2.0 * (m * k * n) as f64 / secs / 1e9
}

fn main() {
    if std::env::args().any(|a| a == "--test") {
        return; // `cargo test --benches`: nothing to check here.
    }
    let threads: usize = arg("--threads", "1").parse().unwrap();
    let batches: Vec<usize> = arg("--batches", "1,8,32,64")
        .split(',')
        .map(|b| b.parse().unwrap())
        .collect();
    let sizes: Vec<usize> = arg("--peak", "512,1024,2048")
        .split(',')
        .map(|b| b.parse().unwrap())
        .collect();

    // The practical peak: the best of a few large square matmuls.
    let mut peak = 0f64;
    for &size in &sizes {
        let secs = time_linear(BenchLinear::MatMul, size, size, size, threads);
        let g = gflops(size, size, size, secs);
        println!(
            "f32 MatMul {size}×{size}×{size}, {threads} thread(s): {:.2} ms, {g:.1} GFLOP/s",
            secs * 1e3
        );
        peak = peak.max(g);
    }
    println!("peak (best of these): {peak:.1} GFLOP/s");

    let blocks = |bits, offsets, activations| BenchLinear::Blocks {
        bits,
        offsets,
        activations,
    };
    let formats = [
        ("f32 MatMul", BenchLinear::MatMul),
        (
            "int8 MatMulNBits",
            blocks(8, BlockOffsets::Integer, Activations::Int8),
        ),
        (
            "int4 MatMulNBits",
            blocks(4, BlockOffsets::Integer, Activations::Int8),
        ),
        (
            "int4 + residual",
            blocks(4, BlockOffsets::Residual, Activations::Int8),
        ),
        (
            "int4 + residual, f32 input",
            blocks(4, BlockOffsets::Residual, Activations::F32),
        ),
    ];
    // SmolLM2-135M: (name, K, N, per layer).
    let layers = [
        ("qkv", 576, 960),
        ("o_proj", 576, 576),
        ("gate_up", 576, 3072),
        ("down", 1536, 576),
    ];
    let n_layers = 30;
    let head = (576, 49152);

    print!("\n| layer (K×N) | op |");
    for m in &batches {
        print!(" M={m} GFLOP/s (% peak) |");
    }
    print!("\n|---|---|");
    for _ in &batches {
        print!("---|");
    }
    println!();
    // Seconds per decode step spent in matmuls, per format and batch size.
    let mut step = vec![vec![0f64; batches.len()]; formats.len()];
    // `--dtype int4` as exported: the Q/K/V projection with f32 input, the
    // other layers with int8 input, all with residual offsets.
    let mut exported_int4 = vec![0f64; batches.len()];
    for &(layer, k, n) in &layers {
        for (f, &(name, op)) in formats.iter().enumerate() {
            print!("| {layer} ({k}×{n}) | {name} |");
            for (b, &m) in batches.iter().enumerate() {
                let secs = time_linear(op, m, k, n, threads);
                step[f][b] += n_layers as f64 * secs;
                let f32_input = if layer == "qkv" {
                    "int4 + residual, f32 input"
                } else {
                    "int4 + residual"
                };
                if name == f32_input {
                    exported_int4[b] += n_layers as f64 * secs;
                }
                let g = gflops(m, k, n, secs);
                print!(" {g:.1} ({:.0}%) |", 100.0 * g / peak);
            }
            println!();
        }
    }
    let (k, n) = head;
    print!("| LM head ({k}×{n}) | f32 Gemm |");
    let mut head_secs = Vec::new();
    for &m in &batches {
        let secs = time_linear(BenchLinear::GemmTransB, m, k, n, threads);
        head_secs.push(secs);
        let g = gflops(m, k, n, secs);
        print!(" {g:.1} ({:.0}%) |", 100.0 * g / peak);
    }
    println!();

    let layer_flop: usize = layers.iter().map(|&(_, k, n)| 2 * k * n).sum::<usize>() * n_layers;
    let head_flop = 2 * head.0 * head.1;
    println!(
        "\nper token: {:.1} MFLOP in the layers, {:.1} MFLOP in the LM head",
        layer_flop as f64 / 1e6,
        head_flop as f64 / 1e6
    );
    println!(
        "\nmatmul time of one decode step ({n_layers} layers + LM head), and the tokens/s it alone allows:\n"
    );
    print!("| layers as |");
    for m in &batches {
        print!(" M={m} ms/step | tok/s | GFLOP/s |");
    }
    print!("\n|---|");
    for _ in &batches {
        print!("---|---|---|");
    }
    println!();
    let rows = formats
        .iter()
        .zip(&step)
        .map(|(&(name, _), s)| (name, s))
        .chain([("int4 as exported (Q/K/V f32 input)", &exported_int4)]);
    for (name, layer_secs) in rows {
        print!("| {name} |");
        for (b, &m) in batches.iter().enumerate() {
            let secs = layer_secs[b] + head_secs[b];
            let flop = (m * (layer_flop + head_flop)) as f64;
            print!(
                " {:.2} | {:.0} | {:.1} |",
                secs * 1e3,
                m as f64 / secs,
                flop / secs / 1e9
            );
        }
        println!();
    }
}
