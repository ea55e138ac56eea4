//! The crate's error type.

/// Errors from planning or running a build: the build file's own problems,
/// and what its stages meet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A stage failed.
    #[error(transparent)]
    Stage(#[from] charter_stages::Error),
    /// Reading or writing a table.
    #[error(transparent)]
    Table(#[from] charter_table::Error),
    /// Loading a model.
    #[error(transparent)]
    Model(#[from] charter_model::Error),
    /// Running a model.
    #[error(transparent)]
    Gen(#[from] charter_gen::Error),
    /// A constitution that cannot be read or is malformed.
    #[error(transparent)]
    Constitution(#[from] charter_stages::ConstitutionError),
    /// Training a model.
    #[error(transparent)]
    Train(#[from] charter_train::Error),
    /// The build file, or a setting in it, is invalid.
    #[error("{0}")]
    Settings(String),
    /// Stopped by the user; what was done is kept and the next run continues it.
    #[error("{0}")]
    Interrupted(String),
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
