//! The write-ahead format's error type.

use std::path::{Path, PathBuf};

/// Why a segment or a directory lock could not be read or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    /// A file or directory could not be read or written (disk full, read-only, missing).
    #[error("{path}: {message}")]
    Io {
        /// What was being accessed.
        path: PathBuf,
        /// The operating system's reason.
        message: String,
        /// Its kind, for callers that count disk-full apart from the rest.
        kind: std::io::ErrorKind,
    },
    /// A file where a segment was expected is not one (nothing was changed in it).
    #[error("{0} is not a write-ahead segment; move it out of the write-ahead directory")]
    NotASegment(PathBuf),
    /// One record is larger than a segment accepts.
    #[error("a record of {0} bytes exceeds the segment limit")]
    RecordTooLarge(usize),
}

impl WalError {
    /// An I/O failure on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> WalError {
        WalError::Io {
            path: path.to_owned(),
            message: source.to_string(),
            kind: source.kind(),
        }
    }
}
