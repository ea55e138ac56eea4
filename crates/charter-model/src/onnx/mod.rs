//! charter's own ONNX export of decoder models.

pub mod bench_graph;
mod builder;
mod int4;
mod llama;
mod proto;

pub use llama::{Activations, BlockOffsets, Head, WeightFormat, WeightSource, export, export_f32};
