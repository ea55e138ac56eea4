//! The crate's error type.

/// Errors from running a stage: the table, model and engine errors it meets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a table.
    #[error(transparent)]
    Table(#[from] charter_table::Error),
    /// Loading the model or tokenizer.
    #[error(transparent)]
    Model(#[from] charter_model::Error),
    /// Running the model.
    #[error(transparent)]
    Gen(#[from] charter_gen::Error),
    /// A constitution that cannot be read, is malformed, or fails to render.
    #[error(transparent)]
    Constitution(#[from] crate::constitution::ConstitutionError),
    /// Invalid settings.
    #[error("{0}")]
    Settings(String),
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
