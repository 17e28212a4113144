//! The log's error type.

use std::path::{Path, PathBuf};

/// Why the log could not record or roll something.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
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
    /// A file in the write-ahead directory is not a segment (nothing was changed in it).
    #[error("{0} is not a prediction log segment; move it out of the write-ahead directory")]
    NotASegment(PathBuf),
    /// One record is larger than a segment accepts.
    #[error("a log record of {0} bytes exceeds the segment limit")]
    RecordTooLarge(usize),
    /// Another live process holds the write-ahead directory.
    #[error("write-ahead directory {0} is in use by another serval process")]
    InUse(PathBuf),
    /// Rolling segments into Parquet failed.
    #[error("cannot write Parquet {path}: {message}")]
    Parquet {
        /// The file being written.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The object store holding the log refused a write, or is misconfigured.
    #[error("prediction log at {url}: {message}")]
    Store {
        /// Where.
        url: String,
        /// Why.
        message: String,
    },
    /// A record could not be encoded as JSON (a bug: tensors always encode).
    #[error("cannot encode a log record: {0}")]
    Encode(String),
    /// The record queue is full (in synced mode the request fails instead of being dropped).
    #[error("the prediction log's queue is full: it cannot keep up")]
    QueueFull,
    /// The log was closed (the server is shutting down).
    #[error("the prediction log is closed")]
    Closed,
}

impl From<serval_wal::WalError> for LogError {
    fn from(error: serval_wal::WalError) -> LogError {
        use serval_wal::WalError;
        match error {
            WalError::Io {
                path,
                message,
                kind,
            } => LogError::Io {
                path,
                message,
                kind,
            },
            WalError::NotASegment(path) => LogError::NotASegment(path),
            WalError::RecordTooLarge(bytes) => LogError::RecordTooLarge(bytes),
        }
    }
}

impl LogError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> LogError {
        LogError::Io {
            path: path.to_owned(),
            message: source.to_string(),
            kind: source.kind(),
        }
    }

    /// A short label for metrics (`queue_full`, `disk_full`, `io`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            LogError::Io {
                kind: std::io::ErrorKind::StorageFull,
                ..
            } => "disk_full",
            LogError::Io {
                kind: std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem,
                ..
            } => "not_writable",
            LogError::Io { .. } => "io",
            LogError::NotASegment(_) => "not_a_segment",
            LogError::RecordTooLarge(_) => "record_too_large",
            LogError::InUse(_) => "in_use",
            LogError::Parquet { .. } => "parquet",
            LogError::Store { .. } => "object_store",
            LogError::Encode(_) => "encode",
            LogError::QueueFull => "queue_full",
            LogError::Closed => "closed",
        }
    }
}
