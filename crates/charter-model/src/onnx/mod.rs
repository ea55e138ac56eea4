//! charter's own ONNX export of decoder models.

mod builder;
mod llama;
mod proto;

pub use llama::{WeightSource, export_f32};
