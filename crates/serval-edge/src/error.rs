//! The edge runtime's error type.

use std::path::PathBuf;

/// Why the edge runtime could not answer, forward or queue.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EdgeError {
    /// The phase-1 model could not be loaded or run, or refused the input.
    #[error(transparent)]
    Model(#[from] serval_core::Error),
    /// The policy or configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// Phase 2 answered, but not with what was asked (a different model, missing keys).
    #[error("phase 2 {0}")]
    Phase2(String),
    /// Phase 2 could not be reached (every attempt failed): the forward is queued.
    #[error(transparent)]
    Unreachable(serval_client::PostError),
    /// The offline queue's disk failed.
    #[error(transparent)]
    Wal(#[from] serval_wal::WalError),
    /// The offline queue is at its bound and refuses new forwards.
    #[error("the offline queue is full ({records} records, {bytes} bytes): not forwarded")]
    QueueFull {
        /// Records waiting.
        records: u64,
        /// Payload bytes waiting.
        bytes: u64,
    },
    /// Another live process owns the queue directory.
    #[error("offline queue {0} is in use by another serval edge process")]
    QueueInUse(PathBuf),
    /// An answer or a queue record could not be encoded as JSON (a bug: tensors always encode).
    #[error("cannot encode as JSON: {0}")]
    Encode(String),
    /// The queue was closed.
    #[error("the offline queue is closed")]
    Closed,
}

impl EdgeError {
    /// A short label for counting (`model`, `unreachable`, `queue_full`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            EdgeError::Model(_) => "model",
            EdgeError::Config(_) => "config",
            EdgeError::Phase2(_) => "phase2",
            EdgeError::Unreachable(_) => "unreachable",
            EdgeError::Wal(_) => "queue_io",
            EdgeError::QueueFull { .. } => "queue_full",
            EdgeError::QueueInUse(_) => "queue_in_use",
            EdgeError::Encode(_) => "encode",
            EdgeError::Closed => "closed",
        }
    }
}
