//! charter's generation engine on ONNX Runtime (`ort`, loaded dynamically).
//!
//! - [`runtime`]: finds and loads the ONNX Runtime library once per process;
//! - [`Decoder`]: one forward pass of an exported decoder with a KV cache.
//!
//! No Arrow here: stages in other crates turn tables into token batches.

mod decoder;
mod error;
pub mod runtime;

pub use decoder::{Decoder, DecoderDims, KvCache};
pub use error::{Error, Result};
