//! Serval's prediction log: every prediction recorded durably with its key, for the continued
//! evaluation that joins ground truth to it later.
//!
//! The request path hands a [`LoggedRequest`] to [`PredictionLog::submit`]; a writer thread
//! appends one [`PredictionRecord`] per instance to a checksummed write-ahead
//! segment (`serval-wal`), fsynced by group commit; closed segments are rolled into Parquet,
//! `<root>/predictions/model=<m>/date=<YYYY-MM-DD>/<replica>-<segment>.parquet`, which any engine
//! reads (DataFusion in `serval sql`, pyarrow, Spark). Ground truth takes the same path:
//! [`PredictionLog::submit_labels`] appends [`LabelBatch`]es to the same segments, rolled into
//! `<root>/labels/model=<m>/date=<d>/`, to be joined to predictions by key.
#![deny(missing_docs)]

mod error;
mod record;
mod roll;
mod root;
mod writer;

pub use error::LogError;
pub use record::{Label, LabelBatch, LabelRecord, LoggedRequest, PredictionRecord, Source};
pub use roll::{
    ALERTS_DIR, LABELS_DIR, PREDICTIONS_DIR, alerts_schema, labels_schema, predictions_schema,
    write_table_file,
};
pub use root::LogRoot;
pub use writer::{Ack, LogOptions, LogStats, PredictionLog, WAL_DIR, default_replica_id};
