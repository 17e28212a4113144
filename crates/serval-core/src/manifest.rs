//! `_SUCCESS`: the manifest a batch job writes last into its output, the mark that the output
//! is complete. Readers (the server's precomputed lookups, users' jobs) trust only outputs
//! that have one, so a crashed job's files are never mistaken for results.

use serde::{Deserialize, Serialize};

/// File name of the manifest, as Hadoop and Spark name their completion marker.
pub const MANIFEST_FILE: &str = "_SUCCESS";

/// What a finished batch job produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchManifest {
    /// Model name.
    pub model: String,
    /// Version that made the predictions.
    pub version: u64,
    /// Signature used.
    pub signature: String,
    /// Column holding each row's key.
    pub key_column: String,
    /// Where each signature output went, in signature order.
    pub predictions: Vec<PredictionColumn>,
    /// Output format (`parquet`, `csv`, `jsonl`).
    pub format: String,
    /// Data files, relative to the output directory.
    pub files: Vec<String>,
    /// Rows read.
    pub rows_in: u64,
    /// Rows written.
    pub rows_out: u64,
    /// Rows that could not be predicted (skipped, or written with null predictions).
    pub rows_failed: u64,
    /// Job start, RFC 3339.
    pub started_at: String,
    /// Job end, RFC 3339: the timestamp of the predictions.
    pub finished_at: String,
}

/// One signature output and the column holding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PredictionColumn {
    /// Signature output name.
    pub output: String,
    /// Column name: the output's, or `predicted_<output>` when an input column had that name.
    pub column: String,
}
