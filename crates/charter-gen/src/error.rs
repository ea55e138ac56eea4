//! The crate's error type.

use std::path::PathBuf;

/// Errors from loading ONNX Runtime, opening sessions and running them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// ONNX Runtime could not be loaded (the message says where it looked and why).
    #[error("{0}")]
    Runtime(String),

    /// A file the model directory must have is missing.
    #[error("{}: missing (is this a charter model directory?)", .0.display())]
    MissingFile(PathBuf),

    /// ONNX Runtime refused to create a session for a graph.
    #[error("{path}: cannot open the ONNX graph: {reason}")]
    Session {
        /// The graph file.
        path: PathBuf,
        /// What ONNX Runtime reported.
        reason: String,
    },

    /// A forward pass failed.
    #[error("ONNX Runtime: {0}")]
    Run(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
