//! The crate's error type.

use std::path::PathBuf;

use crate::ggml::GgmlType;

/// Errors from reading model files and from the tokenizers and chat
/// templates built from them.
///
/// Every variant names what a user needs to find the problem: the file, and
/// the byte offset, metadata key or tensor involved, with what was expected
/// and what was found. A file read from memory is named `<memory>`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a file.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// The file does not start with the GGUF magic.
    #[error("{path}: not a GGUF file: expected the magic `GGUF` at byte 0, found {found}")]
    NotGguf {
        /// The file that was opened.
        path: PathBuf,
        /// The first bytes of the file, escaped.
        found: String,
    },

    /// The GGUF version is not one this reader understands.
    #[error(
        "{path}: unsupported GGUF version {found}; charter reads little-endian versions 2 and 3"
    )]
    UnsupportedVersion {
        /// The file that was opened.
        path: PathBuf,
        /// The version found, with its byte order when that is the problem.
        found: String,
    },

    /// The file's structure is malformed at a byte offset: truncated,
    /// implausible counts or lengths, invalid values, duplicate keys.
    #[error("{path}: at byte {offset}, {context}: {problem}")]
    Malformed {
        /// The file being parsed.
        path: PathBuf,
        /// Byte offset in the file where the problem starts.
        offset: u64,
        /// What was being read (the header, a metadata key, a tensor info).
        context: String,
        /// What is wrong: what was expected and what was found.
        problem: String,
    },

    /// A tensor's description or data is invalid, or a request on it cannot be served.
    #[error("{path}: tensor `{tensor}`: {problem}")]
    Tensor {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// What is wrong.
        problem: String,
    },

    /// No tensor has the requested name.
    #[error("{path}: no tensor named `{tensor}`")]
    MissingTensor {
        /// The file that was searched.
        path: PathBuf,
        /// The requested name.
        tensor: String,
    },

    /// A tensor's type cannot be dequantised by this crate.
    #[error(
        "{path}: tensor `{tensor}` has type {ggml_type}, which charter cannot dequantise \
         (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)"
    )]
    UnsupportedType {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The tensor's ggml type.
        ggml_type: GgmlType,
    },

    /// A required metadata key is absent.
    #[error("{path}: metadata key `{key}` is missing")]
    MissingKey {
        /// The file that was searched.
        path: PathBuf,
        /// The requested key.
        key: String,
    },

    /// A metadata value has the wrong type or an out-of-range value.
    #[error("{path}: metadata `{key}`: expected {expected}, found {found}")]
    KeyType {
        /// The file holding the key.
        path: PathBuf,
        /// The key.
        key: String,
        /// The type (and range) the caller asked for.
        expected: String,
        /// The type (and value, where useful) in the file.
        found: String,
    },

    /// A buffer handed to the dequantiser directly has the wrong type or length.
    #[error("cannot dequantise {ggml_type} data: {problem}")]
    Dequantize {
        /// The ggml type of the data.
        ggml_type: GgmlType,
        /// What is wrong.
        problem: String,
    },

    /// A field of a HuggingFace configuration file (`config.json`,
    /// `tokenizer_config.json`) is missing, has the wrong type, or asks for
    /// something charter does not support.
    #[error("{path}: `{field}`: {problem}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// The field, as spelled in the file.
        field: String,
        /// What is wrong, with the value found where it helps.
        problem: String,
    },

    /// Another process holds the output's lock: it is writing the output now.
    #[error("{path}: being written by {owner} (it holds {lock})")]
    Busy {
        /// The output.
        path: PathBuf,
        /// Who holds the lock.
        owner: String,
        /// The lock file.
        lock: PathBuf,
    },

    /// The output path is a file (or a link), where a directory would be written.
    #[error(
        "{path}: exists and is not a directory; a model directory is written only to a new \
         path, an empty directory or a charter model directory"
    )]
    NotADirectory {
        /// The output.
        path: PathBuf,
    },

    /// The output is a non-empty directory that charter did not write.
    #[error(
        "{path}: a non-empty directory that is not a charter model directory (it has no \
         charter-model.json); charter writes a model directory only to a new path, an empty \
         directory or a charter model directory, and left it as it is"
    )]
    NotModelDir {
        /// The output.
        path: PathBuf,
    },

    /// The output holds another model, and replacing it was not asked for.
    #[error(
        "{path}: holds another model ({found}); left as it is, since replacing it was not asked for"
    )]
    ModelExists {
        /// The output.
        path: PathBuf,
        /// What is there: its model hash, or why it does not open.
        found: String,
    },

    /// A model directory to be replaced holds files charter did not write there.
    #[error(
        "{path}: holds files charter did not write ({files}); move them out before replacing it"
    )]
    ForeignFiles {
        /// The model directory.
        path: PathBuf,
        /// The files, comma-separated.
        files: String,
    },

    /// A file of a model directory changed after charter wrote it, so the
    /// recorded model hash no longer describes the directory.
    #[error(
        "{dir}: {file} changed after charter wrote the directory ({change}); the model hash \
         in charter-model.json no longer describes it: write the directory again"
    )]
    Modified {
        /// The model directory.
        dir: PathBuf,
        /// The file, relative to the directory.
        file: String,
        /// What differs.
        change: String,
    },

    /// Something charter does not support (an architecture, a configuration).
    #[error("{0}")]
    Unsupported(String),

    /// The ONNX exporter could not build the graph.
    #[error("ONNX export: {0}")]
    Export(String),

    /// A tokenizer could not be built, loaded or run.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A chat template could not be compiled or rendered, or does something
    /// [`encode_chat`](crate::encode_chat) cannot encode safely.
    #[error("chat template: {0}")]
    ChatTemplate(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        Error::Config {
            path: path.into(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn tensor(
        path: impl Into<PathBuf>,
        tensor: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        Error::Tensor {
            path: path.into(),
            tensor: tensor.into(),
            problem: problem.into(),
        }
    }
}
