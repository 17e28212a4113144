//! The prediction log (`serval serve --prediction-log DIR`) as SQL tables, and ground truth read
//! from files for it.
//!
//! Tables: `predictions` (every model's records), `label_history` (every label received),
//! `labels` (the latest label of each model's key: a later label replaces an earlier one) and
//! `orphan_labels` (labels of keys that have no logged prediction).

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::error::DataFusionError;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use futures::TryStreamExt;
use serval_log::Label;

use crate::BatchError;
use crate::job::{FileFormat, register_table};

/// Registers a prediction log's tables. A log with nothing rolled yet has empty tables, not an
/// error.
pub async fn register_prediction_log(
    ctx: &SessionContext,
    root: &std::path::Path,
) -> Result<(), BatchError> {
    if !root.is_dir() {
        return Err(BatchError::Invalid(format!(
            "--prediction-log {}: no such directory",
            root.display()
        )));
    }
    let tables = [
        (
            "predictions",
            serval_log::PREDICTIONS_DIR,
            serval_log::predictions_schema(),
        ),
        (
            "label_history",
            serval_log::LABELS_DIR,
            serval_log::labels_schema(),
        ),
    ];
    for (name, folder, schema) in tables {
        let dir = root.join(folder);
        std::fs::create_dir_all(&dir)
            .map_err(|e| BatchError::Invalid(format!("{}: {e}", dir.display())))?;
        let options = ParquetReadOptions::default()
            .schema(&schema)
            .table_partition_cols(vec![
                ("model".to_owned(), DataType::Utf8),
                ("date".to_owned(), DataType::Utf8),
            ]);
        ctx.register_parquet(name, format!("{}/", dir.display()), options)
            .await?;
    }
    // Latest wins; a tie (two labels for a key in the same microsecond, from two replicas) is
    // broken by the text, so every query agrees.
    ctx.sql(
        "CREATE VIEW labels AS SELECT key, model, label, label_value, ts FROM (
           SELECT *, row_number() OVER (PARTITION BY model, key ORDER BY ts DESC, label DESC)
             AS serval_rank
           FROM label_history)
         WHERE serval_rank = 1",
    )
    .await?;
    ctx.sql(
        "CREATE VIEW orphan_labels AS SELECT * FROM labels l WHERE NOT EXISTS (
           SELECT 1 FROM predictions p WHERE p.model = l.model AND p.key = l.key)",
    )
    .await?;
    Ok(())
}

/// Counts a model's labels (the latest per key) whose key has no logged prediction: truth for
/// predictions never made, or not logged (sampled out, dropped, or still in a write-ahead segment).
pub async fn count_orphan_labels(root: &std::path::Path, model: &str) -> Result<u64, BatchError> {
    let ctx = SessionContext::new();
    register_prediction_log(&ctx, root).await?;
    let batches = ctx
        .sql("SELECT count(*) FROM orphan_labels WHERE model = $1")
        .await?
        .with_param_values(vec![ScalarValue::from(model)])?
        .collect()
        .await?;
    Ok(batches.iter().find(|b| b.num_rows() == 1).map_or(0, |b| {
        b.column(0).as_primitive::<Int64Type>().value(0) as u64
    }))
}

/// Reads `(key, label)` pairs from a CSV, JSON Lines or Parquet file (or folder), in file order.
/// Keys of any type are taken as text; a missing column or an empty key or label is an error
/// naming the row, so an import records all of a file or nothing.
pub async fn read_labels(
    input: &str,
    format: FileFormat,
    key_column: &str,
    label_column: &str,
) -> Result<Vec<(String, Label)>, BatchError> {
    // One partition: rows come back in file order, so of a key given twice the last counts.
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    register_table(&ctx, "label_file", input, format).await?;
    let frame = ctx.table("label_file").await?;
    let available = || {
        frame
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (flag, column) in [("--key", key_column), ("--label", label_column)] {
        if frame.schema().field_with_unqualified_name(column).is_err() {
            return Err(BatchError::Invalid(format!(
                "{input} has no column '{column}' ({flag}); its columns: {}",
                available()
            )));
        }
    }
    let mut stream = frame
        .clone()
        .select_columns(&[key_column, label_column])?
        .execute_stream()
        .await?;
    let mut labels = Vec::new();
    while let Some(batch) = stream.try_next().await? {
        let keys = cast(batch.column(0), &DataType::Utf8).map_err(DataFusionError::from)?;
        let keys = keys.as_string::<i32>();
        let raw = batch.column(1);
        let texts = cast(raw, &DataType::Utf8).map_err(DataFusionError::from)?;
        let texts = texts.as_string::<i32>();
        let booleans = raw.as_boolean_opt();
        for i in 0..batch.num_rows() {
            let row = labels.len() + 1;
            let bad = |why: &str| {
                BatchError::Invalid(format!(
                    "{input}, row {row}: {why}; no label of the file was imported"
                ))
            };
            let key = match keys.is_valid(i).then(|| keys.value(i)) {
                Some(key) if !key.is_empty() => key.to_owned(),
                _ => return Err(bad(&format!("the key ('{key_column}') is empty"))),
            };
            if !texts.is_valid(i) {
                return Err(bad(&format!("the label ('{label_column}') is empty")));
            }
            let mut label = Label::text(texts.value(i).to_owned());
            if let Some(booleans) = booleans {
                label.value = Some(f64::from(u8::from(booleans.value(i))));
            }
            labels.push((key, label));
        }
    }
    Ok(labels)
}
