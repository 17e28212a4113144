//! Rolling a closed segment into Parquet: one file per table, model and UTC date it holds, named after
//! the segment, so replicas never collide and rolling the same segment twice (a crash between
//! writing the Parquet and removing the segment) rewrites the same files with the same rows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Builder, StringBuilder, TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::error::LogError;
use crate::record::{Entry, LabelRecord, PredictionRecord};
use crate::root::Destination;
use serval_wal::{self as segment, sync_dir};

/// Folder of the `predictions` table under the log's root.
pub const PREDICTIONS_DIR: &str = "predictions";

/// Folder of the `labels` table (ground truth by key) under the log's root.
pub const LABELS_DIR: &str = "labels";

/// The columns of every predictions file. `model` and `date` are not among them: they are the
/// hive partitions of the path (`model=<m>/date=<YYYY-MM-DD>/`). Inputs and outputs are JSON
/// text, so files written by versions with different signatures share one schema.
pub fn predictions_schema() -> SchemaRef {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        text("key", true),
        Field::new("version", DataType::UInt64, false),
        text("signature", false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        text("request_id", false),
        text("protocol", false),
        text("source", false),
        Field::new("queue_us", DataType::UInt64, false),
        Field::new("compute_us", DataType::UInt64, false),
        text("inputs", true),
        text("outputs", true),
    ]))
}

/// The columns of every labels file (`model` and `date` are partitions, as for predictions).
pub fn labels_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("label_value", DataType::Float64, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]))
}

/// Folder of the `alerts` table (every rule that fired, with what became of its deliveries).
pub const ALERTS_DIR: &str = "alerts";

/// The columns of every alerts file (`model` and `date`, the day it fired, are partitions).
pub fn alerts_schema() -> SchemaRef {
    let ts = |name: &str| {
        Field::new(
            name,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        )
    };
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let float = |name: &str| Field::new(name, DataType::Float64, false);
    let count = |name: &str| Field::new(name, DataType::UInt64, false);
    Arc::new(Schema::new(vec![
        count("version"),
        text("slice", true),
        ts("window_start"),
        ts("window_end"),
        text("rule", false),
        text("metric", false),
        float("value"),
        text("condition", false),
        float("threshold"),
        count("windows"),
        text("severity", false),
        count("rows"),
        float("label_coverage"),
        ts("fired_at"),
        text("delivery", false),
    ]))
}

/// Writes one file of a table, `<table>/model=<m>/date=<d>/<stem>.parquet`, in one atomic step
/// (for tables written outside the segment path, such as `alerts`). Not from inside an async
/// runtime: an object store is written on a runtime of its own.
pub fn write_table_file(
    root: &crate::LogRoot,
    table: &str,
    model: &str,
    date: &str,
    stem: &str,
    batch: RecordBatch,
) -> Result<(), LogError> {
    let file = partition_file(table, model, date, stem);
    Destination::new(root.clone())?.put(&file, encode(&file, Ok(batch))?)
}

/// A segment's records sorted into the files they go to.
#[derive(Default)]
struct Tables {
    predictions: BTreeMap<(String, String), Vec<PredictionRecord>>,
    labels: BTreeMap<(String, String), Vec<LabelRecord>>,
}

/// Rolls one segment into Parquet under the destination's root and removes it. Returns the
/// records rolled.
pub(crate) fn roll_segment(segment_path: &Path, root: &Destination) -> Result<usize, LogError> {
    let recovered = segment::recover(segment_path)?;
    let mut tables = Tables::default();
    let mut unreadable = 0usize;
    for payload in &recovered.records {
        match serde_json::from_slice::<Entry>(payload) {
            Ok(Entry::Prediction(record)) => {
                let file = (record.model.clone(), utc_date(record.ts_us));
                tables.predictions.entry(file).or_default().push(record);
            }
            Ok(Entry::Label(record)) => {
                let file = (record.model.clone(), utc_date(record.ts_us));
                tables.labels.entry(file).or_default().push(record);
            }
            // Checksummed, so only a record from a future format gets here.
            Err(_) => unreadable += 1,
        }
    }
    if unreadable > 0 {
        tracing::error!(segment = %segment_path.display(), unreadable, "records of an unknown format were skipped");
    }
    let stem = segment_path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("segment");
    let mut rolled = 0;
    for ((model, date), records) in &tables.predictions {
        let file = partition_file(PREDICTIONS_DIR, model, date, stem);
        root.put(&file, encode(&file, predictions_batch(records))?)?;
        rolled += records.len();
    }
    for ((model, date), records) in &tables.labels {
        let file = partition_file(LABELS_DIR, model, date, stem);
        root.put(&file, encode(&file, labels_batch(records))?)?;
        rolled += records.len();
    }
    std::fs::remove_file(segment_path).map_err(|e| LogError::io(segment_path, e))?;
    sync_dir(segment_path)?;
    Ok(rolled)
}

/// `<table>/model=<m>/date=<d>/<stem>.parquet`, relative to the log's root.
fn partition_file(table: &str, model: &str, date: &str, stem: &str) -> String {
    format!(
        "{table}/model={}/date={date}/{stem}.parquet",
        partition_value(model)
    )
}

/// A batch as a Parquet file's bytes (Snappy). Encoded in memory, then written in one step: a
/// full or read-only disk is then an I/O error with its kind (counted as `disk_full`,
/// `not_writable`), not an opaque encoder error, and an object store gets one atomic put.
fn encode(
    file: &str,
    batch: Result<RecordBatch, arrow::error::ArrowError>,
) -> Result<Vec<u8>, LogError> {
    let parquet_error = |e: &dyn std::fmt::Display| LogError::Parquet {
        path: PathBuf::from(file),
        message: e.to_string(),
    };
    let batch = batch.map_err(|e| parquet_error(&e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut encoded = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut encoded, batch.schema(), Some(props))
        .map_err(|e| parquet_error(&e))?;
    writer
        .write(&batch)
        .and_then(|()| writer.close().map(|_| ()))
        .map_err(|e| parquet_error(&e))?;
    Ok(encoded)
}

fn labels_batch(records: &[LabelRecord]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let n = records.len();
    let mut key = StringBuilder::with_capacity(n, n * 36);
    let mut label = StringBuilder::with_capacity(n, n * 8);
    let mut value = Float64Builder::with_capacity(n);
    let mut ts = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    for r in records {
        key.append_value(&r.key);
        label.append_value(&r.label);
        value.append_option(r.value);
        ts.append_value(r.ts_us);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(key.finish()),
        Arc::new(label.finish()),
        Arc::new(value.finish()),
        Arc::new(ts.finish()),
    ];
    RecordBatch::try_new(labels_schema(), columns)
}

fn predictions_batch(
    records: &[PredictionRecord],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let n = records.len();
    let mut key = StringBuilder::with_capacity(n, n * 36);
    let mut version = UInt64Builder::with_capacity(n);
    let mut signature = StringBuilder::with_capacity(n, n * 16);
    let mut ts = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut request_id = StringBuilder::with_capacity(n, n * 36);
    let mut protocol = StringBuilder::with_capacity(n, n * 8);
    let mut source = StringBuilder::with_capacity(n, n * 6);
    let mut queue_us = UInt64Builder::with_capacity(n);
    let mut compute_us = UInt64Builder::with_capacity(n);
    let mut inputs = StringBuilder::with_capacity(n, n * 64);
    let mut outputs = StringBuilder::with_capacity(n, n * 32);
    for r in records {
        key.append_option(r.key.as_deref());
        version.append_value(r.version);
        signature.append_value(&r.signature);
        ts.append_value(r.ts_us);
        request_id.append_value(&r.request_id);
        protocol.append_value(&r.protocol);
        source.append_value(r.source.as_str());
        queue_us.append_value(r.queue_us);
        compute_us.append_value(r.compute_us);
        inputs.append_option(r.inputs.as_deref().map(|v| v.get()));
        outputs.append_option(r.outputs.as_deref().map(|v| v.get()));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(key.finish()),
        Arc::new(version.finish()),
        Arc::new(signature.finish()),
        Arc::new(ts.finish()),
        Arc::new(request_id.finish()),
        Arc::new(protocol.finish()),
        Arc::new(source.finish()),
        Arc::new(queue_us.finish()),
        Arc::new(compute_us.finish()),
        Arc::new(inputs.finish()),
        Arc::new(outputs.finish()),
    ];
    RecordBatch::try_new(predictions_schema(), columns)
}

/// `YYYY-MM-DD` (UTC) of a µs timestamp.
fn utc_date(ts_us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(ts_us)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "1970-01-01".to_owned())
}

/// A model name as a path segment: names are already restricted to path-safe characters by the
/// repository, so this only guards against the separators.
fn partition_value(model: &str) -> String {
    model.replace(['/', '\\'], "_")
}

/// Segments waiting in a write-ahead directory, oldest first.
pub fn segments_in(dir: &Path) -> Result<Vec<PathBuf>, LogError> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| LogError::io(dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    found.sort();
    Ok(found)
}
