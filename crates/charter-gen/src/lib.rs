//! charter's generation engine on ONNX Runtime (`ort`, loaded dynamically).
//!
//! - [`runtime`]: finds and loads the ONNX Runtime library once per process;
//! - [`Decoder`]: one forward pass of an exported decoder with a KV cache;
//! - [`Engine`]: batched generation with continuous batching, and scoring;
//! - [`readout`]: a linear probe on the decoder's own states, applied while generating;
//! - [`sampling`]: repetition penalty and n-gram ban, then greedy,
//!   temperature, top-k, top-p with per-row seeds.
//!
//! No Arrow here: stages in other crates turn tables into token batches.

mod decoder;
mod engine;
mod error;
pub mod readout;
pub mod runtime;
pub mod sampling;

pub use decoder::{Decoder, DecoderDims, KvCache, available_threads};
pub use engine::{
    Completion, Engine, EngineStats, FinishReason, GenerateOptions, MIN_SHARED_PREFIX, Request,
    StepHook,
};
pub use error::{Error, Result};
pub use readout::Readout;
pub use sampling::Sampling;
