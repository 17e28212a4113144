//! Batch serving: the same exported model run over files and object storage with SQL.
//!
//! [`session`] builds an Apache DataFusion session with `predict(...)` and `mint_key()`
//! registered and object-store URLs (`s3://`, `gs://`, `az://`) resolved on first use;
//! [`job`] is `serval batch`: one model over one input, written atomically with a `_SUCCESS`
//! manifest. Models are loaded once per process ([`ModelCatalog`]) and run once per Arrow
//! record batch, never per row.
#![deny(missing_docs)]

mod catalog;
pub mod job;
pub mod prediction_log;
pub mod session;
mod udf;

pub use catalog::ModelCatalog;
pub use job::{BatchJob, BatchRun, FileFormat};
pub use session::{SessionOptions, batch_session};
pub use udf::{
    BatchLog, ERROR_FIELD, LOGGED_PREDICT, MintKeyUdf, OnError, PredictReport, PredictUdf,
};

/// Why a batch job or query failed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Loading or running the model failed.
    #[error(transparent)]
    Core(#[from] serval_core::Error),
    /// The query engine failed (bad SQL, unreadable input, a row error under `--on-error fail`).
    #[error(transparent)]
    Engine(#[from] datafusion::error::DataFusionError),
    /// An object store URL is unusable.
    #[error(transparent)]
    Storage(#[from] serval_storage::StorageError),
    /// Reading or writing the output failed.
    #[error("output {location}")]
    Output {
        /// The output location.
        location: String,
        /// The store's error.
        source: datafusion::object_store::Error,
    },
    /// Committing a local output failed (staging, renaming, syncing).
    #[error("output {location}: {step}: {source}")]
    Commit {
        /// The output location.
        location: String,
        /// What was being done.
        step: &'static str,
        /// The file system's error.
        source: std::io::Error,
    },
    /// The job's arguments do not fit the input or the model.
    #[error("{0}")]
    Invalid(String),
}
