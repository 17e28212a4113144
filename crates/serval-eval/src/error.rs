//! Why an evaluation failed.

/// Why an evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The model, its signature or the log could not be opened or read.
    #[error(transparent)]
    Batch(#[from] serval_batch::BatchError),
    /// The query engine failed reading the log.
    #[error(transparent)]
    Engine(#[from] datafusion::error::DataFusionError),
    /// The model is unknown to the repository or has no such signature.
    #[error(transparent)]
    Core(#[from] serval_core::Error),
    /// A profile could not be read or written.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// An option does not fit the model or the log (names the option).
    #[error("{0}")]
    Invalid(String),
}
