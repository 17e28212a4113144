//! Typed errors, sorted by who is to blame: the client, the repository's author, or the engine.
//!
//! Protocol front ends map [`Error`] to status codes in one table each; nothing here knows
//! about HTTP or gRPC.

use std::path::PathBuf;

/// A request's content is invalid: wrong name, shape, type or value. Always the client's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InputError {
    message: String,
}

impl InputError {
    /// An input error with the given message (no trailing period, names the culprit).
    pub fn new(message: impl Into<String>) -> InputError {
        InputError {
            message: message.into(),
        }
    }

    /// Prefixes the message with where the problem is, e.g. `instance 3`.
    pub fn context(self, place: impl std::fmt::Display) -> InputError {
        InputError {
            message: format!("{place}: {}", self.message),
        }
    }
}

/// Everything that can go wrong in `serval-core`.
///
/// `Clone` so that one failure can answer every request of a batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request is malformed (client's fault).
    #[error(transparent)]
    InvalidInput(#[from] InputError),
    /// No model of that name is in the repository (client's fault).
    #[error("model '{0}' is not in the repository")]
    ModelNotFound(String),
    /// The model exists but not the requested version (client's fault).
    #[error("model '{model}' has no version {version} (available: {available})")]
    VersionNotFound {
        /// Model name.
        model: String,
        /// Requested version.
        version: String,
        /// Versions that do exist, comma separated.
        available: String,
    },
    /// The model version has no signature of that name (client's fault).
    #[error("model '{model}' has no signature '{signature}' (available: {available})")]
    SignatureNotFound {
        /// Model name.
        model: String,
        /// Requested signature.
        signature: String,
        /// Signatures that do exist, comma separated.
        available: String,
    },
    /// The repository, a model file or a config is unusable (the repository author's fault).
    #[error("{}", describe_load(.model, .version, .path, .reason))]
    Load {
        /// Model name, when known.
        model: Option<String>,
        /// Version, when known.
        version: Option<u64>,
        /// The file or directory at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The engine failed while running a valid request (backend failure).
    #[error("inference failed in model '{model}' version {version}: {reason}")]
    Inference {
        /// Model name.
        model: String,
        /// Version.
        version: u64,
        /// Engine's message.
        reason: String,
    },
}

fn describe_load(
    model: &Option<String>,
    version: &Option<u64>,
    path: &std::path::Path,
    reason: &str,
) -> String {
    match (model, version) {
        (Some(m), Some(v)) => format!("model '{m}' version {v} ({}): {reason}", path.display()),
        (Some(m), None) => format!("model '{m}' ({}): {reason}", path.display()),
        _ => format!("{}: {reason}", path.display()),
    }
}

/// Shorthand for `Result<T, serval_core::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
