//! The prediction log (`serval serve --prediction-log DIR`) as SQL tables, and ground truth read
//! from files for it.
//!
//! Tables: `predictions` (every model's records), `label_history` (every label received),
//! `alerts` (every rule that fired, `serval eval watch`),
//! `labels` (the latest label of each model's key: a later label replaces an earlier one) and
//! `orphan_labels` (labels of keys that have no logged prediction), and one typed table per
//! model ([`register_model_tables`]).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, FixedSizeListArray, Float64Array, ListArray,
    StringArray, StructArray, make_array,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Int64Type};
use datafusion::common::{TableReference, exec_datafusion_err};
use datafusion::error::DataFusionError;
use datafusion::functions::core::expr_fn::get_field;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, col,
    lit,
};
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use futures::TryStreamExt;
use serval_core::{Model, Signature as ModelSignature, TensorSpec};
use serval_log::{Label, LogRoot};

use crate::BatchError;
use crate::job::{FileFormat, LINE_COLUMN, register_json_lines_as_text, register_table};

/// Registers a prediction log's tables. A log with nothing rolled yet has empty tables, not an
/// error.
pub async fn register_prediction_log(
    ctx: &SessionContext,
    root: &LogRoot,
) -> Result<(), BatchError> {
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
        (
            "alerts",
            serval_log::ALERTS_DIR,
            serval_log::alerts_schema(),
        ),
    ];
    for (name, folder, schema) in tables {
        let options = ParquetReadOptions::default()
            .schema(&schema)
            .table_partition_cols(vec![
                ("model".to_owned(), DataType::Utf8),
                ("date".to_owned(), DataType::Utf8),
            ]);
        ctx.register_parquet(name, table_url(ctx, root, folder)?, options)
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

/// The URL of one of the log's tables, readable by `ctx`: a local folder (created when missing,
/// so an empty log reads as empty tables), or an object-store prefix, whose store is registered.
fn table_url(ctx: &SessionContext, root: &LogRoot, folder: &str) -> Result<String, BatchError> {
    match root {
        LogRoot::Dir(dir) => {
            if !dir.is_dir() {
                return Err(BatchError::Invalid(format!(
                    "--prediction-log {}: no such directory",
                    dir.display()
                )));
            }
            let table = dir.join(folder);
            std::fs::create_dir_all(&table)
                .map_err(|e| BatchError::Invalid(format!("{}: {e}", table.display())))?;
            Ok(format!("{}/", table.display()))
        }
        LogRoot::Store { url, store, .. } => {
            let mut base = url::Url::parse(url)
                .map_err(|e| BatchError::Invalid(format!("--prediction-log {url}: {e}")))?;
            base.set_path("");
            ctx.register_object_store(&base, store.clone());
            Ok(format!("{url}/{folder}/"))
        }
    }
}

/// The models with logged predictions (the `model=<m>` partitions).
async fn logged_models(root: &LogRoot) -> Result<Vec<String>, BatchError> {
    let partitions: Vec<String> = match root {
        LogRoot::Dir(dir) => {
            let table = dir.join(serval_log::PREDICTIONS_DIR);
            std::fs::read_dir(&table)
                .map_err(|e| BatchError::Invalid(format!("{}: {e}", table.display())))?
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .collect()
        }
        LogRoot::Store { url, store, prefix } => {
            let table = prefix.clone().join(serval_log::PREDICTIONS_DIR);
            store
                .list_with_delimiter(Some(&table))
                .await
                .map_err(|source| BatchError::Output {
                    location: url.clone(),
                    source,
                })?
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename().map(str::to_owned))
                .collect()
        }
    };
    let mut models: Vec<String> = partitions
        .iter()
        .filter_map(|name| name.strip_prefix("model=").map(str::to_owned))
        .collect();
    models.sort();
    Ok(models)
}

/// Counts a model's labels (the latest per key) whose key has no logged prediction: truth for
/// predictions never made, or not logged (sampled out, dropped, or still in a write-ahead segment).
pub async fn count_orphan_labels(root: &LogRoot, model: &str) -> Result<u64, BatchError> {
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
    if format == FileFormat::Jsonl {
        return read_json_labels(&ctx, input, key_column, label_column).await;
    }
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

/// Labels from JSON Lines, each line parsed here: a label may be text on one line and a number
/// on the next (`Label::from_json` keeps both), which a typed column cannot hold.
async fn read_json_labels(
    ctx: &SessionContext,
    input: &str,
    key_column: &str,
    label_column: &str,
) -> Result<Vec<(String, Label)>, BatchError> {
    register_json_lines_as_text(ctx, "label_file", input).await?;
    let mut stream = ctx
        .table("label_file")
        .await?
        .select_columns(&[LINE_COLUMN])?
        .execute_stream()
        .await?;
    let mut labels = Vec::new();
    let mut row = 0;
    while let Some(batch) = stream.try_next().await? {
        let lines = batch.column(0).as_string::<i32>();
        for line in lines.iter().flatten().filter(|l| !l.trim().is_empty()) {
            row += 1;
            let bad = |why: String| {
                BatchError::Invalid(format!(
                    "{input}, row {row}: {why}; no label of the file was imported"
                ))
            };
            let value: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(format!("not a JSON object: {e}")))?;
            let Some(object) = value.as_object() else {
                return Err(bad("not a JSON object".into()));
            };
            let key = match object.get(key_column) {
                Some(serde_json::Value::String(key)) if !key.is_empty() => key.clone(),
                Some(serde_json::Value::Number(key)) => key.to_string(),
                Some(_) => return Err(bad(format!("the key ('{key_column}') is empty"))),
                None => {
                    return Err(bad(format!(
                        "no key field '{key_column}' (--key); its fields: {}",
                        object.keys().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
            };
            let label = match object.get(label_column) {
                None | Some(serde_json::Value::Null) => {
                    return Err(bad(format!("the label ('{label_column}') is empty")));
                }
                Some(value) => Label::from_json(value).map_err(bad)?,
            };
            labels.push((key, label));
        }
    }
    Ok(labels)
}

/// Columns every model's typed table starts with, from `predictions`.
const RECORD_COLUMNS: [&str; 10] = [
    "key",
    "version",
    "signature",
    "ts",
    "request_id",
    "protocol",
    "source",
    "queue_us",
    "compute_us",
    "date",
];

/// Registers one typed table per model with logged predictions and a place in the repository,
/// named after it: the record columns, then one column per input and per output, typed as
/// `serval batch` writes them (a scalar, a fixed-size list, a list). Columns come from the
/// signatures of every version on disk (the default version's type where two differ); a field
/// a record lacks, or whose value does not fit the column, is null. An input
/// or output whose name another column has is prefixed `input_`/`output_`. Returns the models
/// (and versions) left out, with why (not in the repository or not loadable, a name taken by
/// another table).
pub async fn register_model_tables(
    ctx: &SessionContext,
    catalog: &crate::ModelCatalog,
    root: &LogRoot,
) -> Result<Vec<(String, String)>, BatchError> {
    let logged = logged_models(root).await?;
    let mut skipped = Vec::new();
    for model in logged {
        let reference = TableReference::bare(model.as_str());
        if ctx.table_exist(reference.clone())? {
            skipped.push((model, "a table of that name exists".to_owned()));
            continue;
        }
        // Not in the repository, or not loadable: its records stay in `predictions`.
        if let Err(e) = catalog.get(&model, None) {
            skipped.push((model, e.to_string()));
            continue;
        }
        let (table, unloadable) = model_table(ctx, catalog, &model).await?;
        skipped.extend(unloadable);
        ctx.register_table(reference, table.frame.into_view())?;
    }
    Ok(skipped)
}

/// A model's logged predictions with one typed column per input and output.
pub struct ModelTable {
    /// The record columns, then the tensors' columns.
    pub frame: DataFrame,
    /// Which column holds each tensor.
    pub columns: Vec<TensorColumn>,
    /// The default version, whose types win where versions differ.
    pub model: Arc<Model>,
}

/// Where a typed table keeps one input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorColumn {
    /// `true` for an input, `false` for an output.
    pub input: bool,
    /// The tensor's name in the signature.
    pub tensor: String,
    /// The column's name (the tensor's, or prefixed `input_`/`output_` where taken).
    pub column: String,
    /// The column's type.
    pub data_type: DataType,
}

impl ModelTable {
    /// The column of the output named `tensor`.
    pub fn output(&self, tensor: &str) -> Option<&TensorColumn> {
        self.columns.iter().find(|c| !c.input && c.tensor == tensor)
    }

    /// The columns of the inputs, in signature order.
    pub fn inputs(&self) -> impl Iterator<Item = &TensorColumn> {
        self.columns.iter().filter(|c| c.input)
    }
}

/// The typed table of `model`'s log records (needs `predictions` registered), with the
/// versions on disk that could not be loaded (their records read in the other versions'
/// columns).
pub async fn model_table(
    ctx: &SessionContext,
    catalog: &crate::ModelCatalog,
    model: &str,
) -> Result<(ModelTable, Vec<(String, String)>), BatchError> {
    let loaded = catalog.get(model, None)?;
    let mut skipped = Vec::new();
    // Every version on disk adds the inputs and outputs only it has: a model whose signature
    // changed still reads as one table, older records with their own columns.
    let mut versions = vec![loaded.clone()];
    let mut on_disk = catalog
        .repository()
        .versions_on_disk(model)
        .unwrap_or_default();
    on_disk.sort_unstable_by(|a, b| b.cmp(a));
    for version in on_disk.into_iter().filter(|v| *v != loaded.version()) {
        match catalog.get(model, Some(&version.to_string())) {
            Ok(other) => versions.push(other),
            Err(e) => skipped.push((format!("{model} version {version}"), e.to_string())),
        }
    }
    let (frame, columns) = typed_table(ctx, &versions).await?;
    Ok((
        ModelTable {
            frame,
            columns,
            model: loaded,
        },
        skipped,
    ))
}

/// The typed table of a model's versions, the default first: of a name several versions have,
/// the first's type counts.
async fn typed_table(
    ctx: &SessionContext,
    versions: &[Arc<Model>],
) -> Result<(DataFrame, Vec<TensorColumn>), BatchError> {
    let Some(model) = versions.first() else {
        return Err(BatchError::Invalid("a typed table needs a model".into()));
    };
    let fields = |side: fn(&ModelSignature) -> &[TensorSpec]| -> Fields {
        let mut merged: Vec<(String, DataType)> = Vec::new();
        let specs = versions
            .iter()
            .flat_map(|v| v.signatures().iter().map(move |s| (v.is_batchable(), s)))
            .flat_map(|(batched, s)| side(s).iter().map(move |spec| (batched, spec)));
        for (batched, spec) in specs {
            let row_type = instance_type(spec, batched);
            match merged.iter_mut().find(|(name, _)| *name == spec.name) {
                Some((_, known)) => *known = widened(known, &row_type),
                None => merged.push((spec.name.clone(), row_type)),
            }
        }
        merged
            .into_iter()
            .map(|(name, row_type)| Field::new(name, row_type, true))
            .collect()
    };
    let inputs = fields(|s| &s.inputs);
    let outputs = fields(|s| &s.outputs);
    let mut taken: std::collections::HashSet<String> =
        RECORD_COLUMNS.iter().map(|c| (*c).to_owned()).collect();
    let mut exprs: Vec<Expr> = RECORD_COLUMNS.iter().map(|c| col(*c)).collect();
    let mut columns = Vec::new();
    for (side, fields) in [("inputs", &inputs), ("outputs", &outputs)] {
        let decoded = ScalarUDF::from(LoggedTensorsUdf::new(
            format!("serval_{side}_of_{}", model.name()),
            fields.clone(),
        ))
        .call(vec![col(side)]);
        let prefix = if side == "inputs" {
            "input_"
        } else {
            "output_"
        };
        let clashes: std::collections::HashSet<&str> = fields
            .iter()
            .map(|f| f.name().as_str())
            .filter(|name| {
                taken.contains(*name)
                    || (side == "inputs" && outputs.iter().any(|o| o.name() == name))
            })
            .collect();
        for field in fields.iter() {
            let name = field.name();
            let alias = if clashes.contains(name.as_str()) {
                format!("{prefix}{name}")
            } else {
                name.clone()
            };
            taken.insert(alias.clone());
            exprs.push(get_field(decoded.clone(), name.as_str()).alias(alias.as_str()));
            columns.push(TensorColumn {
                input: side == "inputs",
                tensor: name.clone(),
                column: alias,
                data_type: field.data_type().clone(),
            });
        }
    }
    let frame = ctx
        .table("predictions")
        .await?
        .filter(col("model").eq(lit(model.name())))?
        .select(exprs)?;
    Ok((frame, columns))
}

/// The type holding a field two versions type differently: a list of the item when both are
/// lists of it (a width that changed between versions), else the first's.
fn widened(first: &DataType, other: &DataType) -> DataType {
    let item = |t: &DataType| match t {
        DataType::FixedSizeList(f, _) | DataType::List(f) => Some(f.clone()),
        _ => None,
    };
    match (item(first), item(other)) {
        (Some(a), Some(b)) if first != other && a.data_type() == b.data_type() => DataType::List(a),
        _ => first.clone(),
    }
}

/// The Arrow type of one logged instance of a tensor, as `serval batch` types the column: a
/// model that does not batch logs whole tensors, so every axis is the instance's.
fn instance_type(spec: &TensorSpec, batched: bool) -> DataType {
    if batched {
        return serval_arrow::row_type(spec);
    }
    let with_instance_axis = TensorSpec {
        shape: std::iter::once(None)
            .chain(spec.shape.iter().copied())
            .collect(),
        ..spec.clone()
    };
    serval_arrow::row_type(&with_instance_axis)
}

/// Decodes a log's `inputs` or `outputs` JSON text (`{name: value}` per record) into a struct of
/// typed columns: one parse per record, whatever the number of fields. A record without the
/// field, or whose value does not fit the column's shape, has a null there.
#[derive(Debug, PartialEq, Eq, Hash)]
struct LoggedTensorsUdf {
    name: String,
    fields: Fields,
    signature: Signature,
}

impl LoggedTensorsUdf {
    fn new(name: String, fields: Fields) -> LoggedTensorsUdf {
        LoggedTensorsUdf {
            name,
            fields,
            // Volatile: the optimizer must not inline it once per field taken from it.
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Volatile),
        }
    }
}

impl ScalarUDFImpl for LoggedTensorsUdf {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Struct(self.fields.clone()))
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let texts = args
            .args
            .into_iter()
            .next()
            .ok_or_else(|| exec_datafusion_err!("{} takes one argument", self.name))?
            .into_array(args.number_rows)?;
        let texts = texts.as_string::<i32>();
        let records: Vec<serde_json::Map<String, serde_json::Value>> = texts
            .iter()
            .map(|text| {
                text.and_then(|t| serde_json::from_str(t).ok())
                    .unwrap_or_default()
            })
            .collect();
        let columns = self
            .fields
            .iter()
            .map(|field| {
                let values = records.iter().map(|r| r.get(field.name()));
                typed_column(values, field.data_type())
            })
            .collect::<datafusion::common::Result<Vec<ArrayRef>>>()?;
        Ok(ColumnarValue::Array(Arc::new(StructArray::try_new(
            self.fields.clone(),
            columns,
            None,
        )?)))
    }
}

/// One column of `row_type` from each record's JSON value (nested arrays are flattened in
/// row-major order, as a tensor's row is).
fn typed_column<'a>(
    values: impl Iterator<Item = Option<&'a serde_json::Value>>,
    row_type: &DataType,
) -> datafusion::common::Result<ArrayRef> {
    let (item, width) = match row_type {
        DataType::FixedSizeList(f, len) => (f.data_type().clone(), Some(*len as usize)),
        DataType::List(f) => (f.data_type().clone(), None),
        other => (other.clone(), Some(1)),
    };
    let mut leaves: Vec<&serde_json::Value> = Vec::new();
    let mut lengths: Vec<usize> = Vec::new();
    let mut valid: Vec<bool> = Vec::new();
    let mut row: Vec<&serde_json::Value> = Vec::new();
    for value in values {
        row.clear();
        if let Some(value) = value {
            flatten_json(value, &mut row);
        }
        let fits = value.is_some_and(|v| !v.is_null()) && width.is_none_or(|w| row.len() == w);
        if fits {
            leaves.extend(&row);
            lengths.push(row.len());
        } else {
            // A placeholder of the column's width keeps fixed-size rows aligned.
            let placeholder = width.unwrap_or(0);
            leaves.extend(std::iter::repeat_n(&serde_json::Value::Null, placeholder));
            lengths.push(placeholder);
        }
        valid.push(fits);
    }
    let leaf_array: ArrayRef = if item == DataType::Utf8 {
        Arc::new(leaves.iter().map(|v| v.as_str()).collect::<StringArray>())
    } else if item == DataType::Boolean {
        Arc::new(leaves.iter().map(|v| v.as_bool()).collect::<BooleanArray>())
    } else {
        let numbers: Float64Array = leaves.iter().map(|v| v.as_f64()).collect();
        cast(&numbers, &item)?
    };
    let nulls = NullBuffer::from(valid);
    Ok(match row_type {
        DataType::FixedSizeList(field, len) => Arc::new(FixedSizeListArray::try_new(
            field.clone(),
            *len,
            leaf_array,
            Some(nulls),
        )?),
        DataType::List(field) => Arc::new(ListArray::try_new(
            field.clone(),
            OffsetBuffer::from_lengths(lengths),
            leaf_array,
            Some(nulls),
        )?),
        _ => {
            let data = leaf_array
                .to_data()
                .into_builder()
                .nulls(Some(nulls))
                .build()?;
            make_array(data)
        }
    })
}

fn flatten_json<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
    match value {
        serde_json::Value::Array(items) => items.iter().for_each(|v| flatten_json(v, out)),
        leaf => out.push(leaf),
    }
}
