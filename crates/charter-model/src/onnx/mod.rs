//! charter's own ONNX export of decoder models.

mod builder;
mod int4;
mod llama;
mod proto;

pub use llama::{WeightFormat, WeightSource, export, export_f32};
