//! charter's model files: a GGUF reader with dequantisation, tokenizers
//! built from a GGUF vocabulary, chat templates, safetensors, and model
//! directories.
//!
//! - [`Gguf`] opens a GGUF file (versions 2 and 3), reads its metadata and
//!   tensor infos eagerly and tensor data on demand with positioned reads;
//!   every count, length and offset is checked against the real file size,
//!   so a corrupt or hostile file gives an [`Error`], never a panic or a huge
//!   allocation.
//! - [`Metadata`] holds the key-value pairs with typed getters
//!   ([`Metadata::get_u32`], [`Metadata::get_str`], [`Metadata::get_str_array`], …).
//! - [`dequantize`] turns F32, F16, BF16, Q8_0, Q4_0 and Q4_1 data into f32;
//!   [`Gguf::blocks`] gives the raw Q4_0, Q4_1 and Q8_0 blocks
//!   ([`BlockQ4_0`], [`BlockQ4_1`], [`BlockQ8_0`]) for repacking without
//!   dequantising.
//! - [`tokenizer_json_from_gguf`] writes a HuggingFace `tokenizer.json` for a
//!   GGUF's byte-level BPE vocabulary; [`TextTokenizer`] loads one and
//!   encodes text with special tokens on (the chat template's own text) or
//!   off (untrusted data, where `<|im_end|>` stays ordinary text).
//! - [`ChatTemplate`] renders a model's Jinja chat template as HuggingFace
//!   does; [`encode_chat`] gives a conversation's token ids with control
//!   tokens only where the template writes them.
//! - [`import_gguf`] and [`import_hf`] turn a GGUF file or a HuggingFace
//!   safetensors checkpoint (llama, mistral, qwen2: [`ModelConfig::from_hf_config`],
//!   [`HfCheckpoint`]) into a [`ModelDir`]: config, tokenizer, chat template,
//!   an ONNX graph, and `model.safetensors` (f32, HuggingFace names and
//!   layout) read back with [`ModelDir::load_weights`]. A directory is
//!   written beside its output and swapped in under a lock ([`OutputLock`]),
//!   never over anything charter did not write ([`check_output`]), and
//!   records its files so that one changed in place is noticed.
//!   [`SafetensorsFile`] and [`SafetensorsWriter`] read F32/F16/BF16 and
//!   write f32 safetensors files tensor by tensor.
//!
//! Shapes: GGUF stores dimensions innermost first (ggml's `ne`);
//! [`TensorInfo::shape`] reports them outermost first, as PyTorch does, and
//! dequantised data is row-major in that shape.
//!
//! # Example
//!
//! A minimal GGUF v3 file, built by hand: no tensors, one metadata entry.
//!
//! ```
//! use charter_model::Gguf;
//!
//! let mut bytes = b"GGUF".to_vec();
//! bytes.extend(3u32.to_le_bytes()); // version
//! bytes.extend(0u64.to_le_bytes()); // tensor count
//! bytes.extend(1u64.to_le_bytes()); // metadata count
//! let key = "general.architecture";
//! bytes.extend((key.len() as u64).to_le_bytes());
//! bytes.extend(key.as_bytes());
//! bytes.extend(8u32.to_le_bytes()); // value type: string
//! bytes.extend(5u64.to_le_bytes());
//! bytes.extend(b"llama");
//!
//! let gguf = Gguf::parse_bytes(&bytes)?;
//! assert_eq!(gguf.version(), 3);
//! assert_eq!(gguf.metadata().get_str("general.architecture")?, "llama");
//! assert!(gguf.tensors().is_empty());
//!
//! // Cut short, the same file is an error that says where and why.
//! let err = Gguf::parse_bytes(&bytes[..bytes.len() - 2]).unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "<memory>: at byte 56, metadata `general.architecture`: \
//!      string value has length 5, but only 3 bytes remain in the file (size 67)"
//! );
//! # Ok::<(), charter_model::Error>(())
//! ```

mod chat;
mod config;
mod error;
mod ggml;
mod gguf;
mod hf;
mod metadata;
mod model_dir;
pub mod onnx;
mod output;
mod quant;
mod reader;
mod tiny;
mod tokenizer;
mod tokenizer_config;
mod weights;

pub use chat::{ChatTemplate, Message, encode_chat};
pub use config::ModelConfig;
pub use error::{Error, Result};
pub use ggml::GgmlType;
pub use gguf::{DEFAULT_ALIGNMENT, Gguf, KEY_ALIGNMENT, TensorInfo};
pub use half::f16;
pub use hf::{HfCheckpoint, HfTensors};
pub use metadata::{Array, Metadata, Value, ValueType};
pub use model_dir::{
    CALIBRATION_FILE, Dtype, FileRecord, GRAPH_VERSION, ModelDir, ModelProvenance, PROVENANCE_FILE,
    REQUIRED_FILES, Replace, WEIGHTS_FILE, check_output, claim_trained_output, hash_file,
    hash_hf_dir, import_gguf, import_hf, write_dir, write_trained,
};
pub use output::{LOCK_MARKER, OutputLock, lock_is_held, lock_path, partial_path};
pub use quant::{BLOCK_LEN, Block, BlockQ4_0, BlockQ4_1, BlockQ8_0, dequantize};
pub use tiny::{
    TINY_CHAT_TEMPLATE, TINY_SPECIAL_TOKENS, TinyWeights, tiny_config, tiny_tokenizer_json,
    write_tiny, write_tiny_with,
};
pub use tokenizer::{TextTokenizer, tokenizer_json_from_gguf};
pub use tokenizer_config::TokenizerConfig;
pub use weights::{SafetensorsFile, SafetensorsWriter, Tensors};
