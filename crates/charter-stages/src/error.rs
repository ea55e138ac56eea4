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
    /// A setting out of its range, named as build files name it (the
    /// command line's flag is the same name with dashes: `top_p` is
    /// `--top-p`).
    #[error("setting `{field}`: {problem}")]
    InvalidSetting {
        /// The setting.
        field: &'static str,
        /// What is wrong with its value.
        problem: String,
    },
    /// A row's prompt does not fit the model's context window.
    #[error("row {row}: {tokens} tokens do not fit the model's context of {limit}")]
    ContextOverflow {
        /// The row (its id).
        row: String,
        /// Tokens the row needs.
        tokens: usize,
        /// The model's context window.
        limit: usize,
    },
    /// Invalid settings.
    #[error("{0}")]
    Settings(String),
    /// A guard (a classifier run beside generation) failed.
    #[error("guard: {0}")]
    Guard(String),
    /// Asked to stop (a signal): the rows so far are committed.
    #[error(
        "stopped when asked to, with {rows} rows committed: run the same command again to \
         continue from there"
    )]
    Stopped {
        /// Rows committed in the output's journal.
        rows: u64,
    },
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
    pub(crate) fn invalid(field: &'static str, problem: impl Into<String>) -> Self {
        Error::InvalidSetting {
            field,
            problem: problem.into(),
        }
    }

    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
