//! Serval's prediction log: every prediction recorded durably with its key, for the continued
//! evaluation that joins ground truth to it later.
//!
//! The request path hands a [`LoggedRequest`] to [`PredictionLog::submit`]; a writer thread
//! appends one [`PredictionRecord`] per instance to a checksummed write-ahead
//! [`segment`], fsynced by group commit; closed segments are rolled into Parquet,
//! `<root>/predictions/model=<m>/date=<YYYY-MM-DD>/<replica>-<segment>.parquet`, which any engine
//! reads (DataFusion in `serval sql`, pyarrow, Spark).
#![deny(missing_docs)]

mod error;
mod record;
mod roll;
pub mod segment;
mod writer;

pub use error::LogError;
pub use record::{LoggedRequest, PredictionRecord, Source, sampled};
pub use roll::{PREDICTIONS_DIR, predictions_schema, roll_segment};
pub use writer::{Ack, LogOptions, LogStats, PredictionLog, WAL_DIR, default_replica_id};
