//! The trainer's error type.

use std::path::{Path, PathBuf};

/// Errors from loading, training or writing models.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a model directory failed.
    #[error(transparent)]
    Model(#[from] charter_model::Error),
    /// Reading a table failed.
    #[error(transparent)]
    Table(#[from] charter_table::Error),
    /// A generation stage (sampling, rating) failed.
    #[error(transparent)]
    Stage(#[from] charter_stages::Error),
    /// The generation engine failed.
    #[error(transparent)]
    Gen(#[from] charter_gen::Error),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A weight the config requires is absent.
    #[error("no tensor {0} in the weights")]
    MissingWeight(String),
    /// A weight has a shape other than the config implies.
    #[error("tensor {name}: shape {got:?}, expected {want:?}")]
    Shape {
        /// The tensor's name.
        name: String,
        /// Its shape in the file.
        got: Vec<usize>,
        /// The shape the config implies.
        want: Vec<usize>,
    },
    /// The requested device is not compiled in or not known.
    #[error("device: {0}")]
    Device(String),
    /// A setting out of its range, named as build files name it (the
    /// command line's flag is the same name with dashes).
    #[error("setting `{field}`: {problem}")]
    InvalidSetting {
        /// The setting.
        field: &'static str,
        /// What is wrong with its value.
        problem: String,
    },
    /// Bad input (tables, token out of range, ...).
    #[error("{0}")]
    Input(String),
    /// A checkpoint could not be written or read back.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The loss became NaN or infinite.
    #[error("the loss is not finite at step {step}: lower --lr")]
    Diverged {
        /// The 1-based step.
        step: usize,
    },
    /// Reading tensor data back failed.
    #[error("tensor data: {0}")]
    Data(String),
}

impl Error {
    pub(crate) fn invalid(field: &'static str, problem: impl Into<String>) -> Self {
        Error::InvalidSetting {
            field,
            problem: problem.into(),
        }
    }

    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

/// The trainer's result type.
pub type Result<T> = std::result::Result<T, Error>;
