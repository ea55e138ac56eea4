//! What can be wrong with a constitution, said so a person can find and fix it.

use std::fmt;
use std::path::PathBuf;

/// Errors from reading, checking, importing or rendering a constitution.
#[derive(Debug, thiserror::Error)]
pub enum ConstitutionError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file parsed badly or broke a rule: one line per problem.
    #[error("{}", Problems { origin, problems })]
    Invalid {
        /// The file (or other source) the problems are in.
        origin: String,
        /// Every problem found, in file order where known.
        problems: Vec<Problem>,
    },
    /// A template failed to render with the variables given.
    #[error("rendering the {template} template: {message}")]
    Render {
        /// The template's name (`critique`, …, or `template` for source text).
        template: String,
        /// What went wrong.
        message: String,
    },
}

impl ConstitutionError {
    pub(crate) fn invalid(origin: &str, problems: Vec<Problem>) -> Self {
        Self::Invalid {
            origin: origin.to_owned(),
            problems,
        }
    }
}

/// One problem in a constitution or import source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line in the source, where known.
    pub line: Option<usize>,
    /// The field, as a path (`critique_principles[3].revision`); empty for the whole file.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// A problem with the file as a whole.
    pub(crate) fn file(message: impl Into<String>) -> Self {
        Self {
            line: None,
            field: String::new(),
            message: message.into(),
        }
    }

    /// `ORIGIN:LINE: FIELD: MESSAGE`, leaving out what is unknown.
    pub fn display<'a>(&'a self, origin: &'a str) -> impl fmt::Display + 'a {
        DisplayProblem {
            origin,
            problem: self,
        }
    }
}

struct DisplayProblem<'a> {
    origin: &'a str,
    problem: &'a Problem,
}

impl fmt::Display for DisplayProblem<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.problem;
        write!(f, "{}", self.origin)?;
        if let Some(line) = p.line {
            write!(f, ":{line}")?;
        }
        if !p.field.is_empty() {
            write!(f, ": {}", p.field)?;
        }
        write!(f, ": {}", p.message)
    }
}

struct Problems<'a> {
    origin: &'a str,
    problems: &'a [Problem],
}

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", p.display(self.origin))?;
        }
        Ok(())
    }
}
