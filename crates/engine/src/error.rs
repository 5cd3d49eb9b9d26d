//! The engine's error type: every failure a user can cause is a value naming its source.

use std::path::PathBuf;

/// Errors of the engine crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its content is malformed (bad JSON, missing or ill-typed field).
    #[error("{}: {msg}", path.display())]
    Malformed { path: PathBuf, msg: String },
    /// The tokenizer failed on an input (or lacks a token the engine needs).
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template failed to compile or to render, or rendered an unusable prompt.
    #[error("chat template {origin}: {msg}")]
    Template { origin: String, msg: String },
    /// A sampling parameter is out of range, or the logits cannot be sampled.
    #[error("sampling: {0}")]
    Sampling(String),
}

/// `Result` with the engine's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn malformed(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Malformed {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
