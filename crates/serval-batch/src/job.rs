//! `serval batch`: one model over one input (files, globs, object-store URLs), like BigQuery's
//! `ML.PREDICT(MODEL m, TABLE t)`: every input column (or the key and chosen ones) plus one
//! column per signature output.
//!
//! Output is committed so that a reader sees the previous complete output or the new complete
//! one, never a mix and never part of one, whenever the job is killed:
//! - On a local file system, DataFusion writes into a hidden sibling of the output directory,
//!   `.<name>.serval-<job>/`; the files are renamed to `part-<job>-<n>.<ext>`, synced, and the
//!   [`BatchManifest`] is written there as `_SUCCESS`; then the directory takes the output's
//!   place in one `rename` (over an existing output, one `renameat2(RENAME_EXCHANGE)`), and the
//!   old output, now in the sibling, is deleted.
//! - On an object store, which has no directories to rename, DataFusion writes into
//!   `<output>/_temporary/<job>/` (ignored by DataFusion and Spark readers), the files are
//!   renamed to `part-<job>-<n>.<ext>` beside the old ones, the new `_SUCCESS` replaces the old
//!   in one put, and only then are the old files deleted: `_SUCCESS` names the complete output
//!   at every moment (as Hadoop's committers' readers require), and `--overwrite` destroys
//!   nothing before the new output is complete.
//!
//! The next job on the same output deletes what a killed one left (staging directories, and
//! on object stores parts that no `_SUCCESS` names). One job per output at a time.

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::datatypes::{DataType as ArrowType, Field, Schema};
use datafusion::common::DFSchema;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::FunctionRegistry;
use datafusion::functions::core::expr_fn::coalesce;
use datafusion::functions_nested::expr_fn::array_element;
use datafusion::logical_expr::{Expr, col, lit};
use datafusion::object_store::path::Path as ObjectPath;
use datafusion::object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext};
use futures::TryStreamExt;
use serval_core::manifest::{BatchManifest, MANIFEST_FILE, PredictionColumn};
use serval_core::{Model, Signature};

use crate::udf::{BatchLog, ERROR_FIELD, LOGGED_PREDICT, OnError, PredictReport, PredictUdf};
use crate::{BatchError, ModelCatalog, SessionOptions, batch_session};

/// A file format for input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// Apache Parquet.
    Parquet,
    /// CSV with a header row.
    Csv,
    /// JSON Lines: one object per line.
    Jsonl,
}

impl FileFormat {
    /// The format a file name's extension implies.
    pub fn from_extension(name: &str) -> Option<FileFormat> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "parquet" | "pq" => Some(FileFormat::Parquet),
            "csv" => Some(FileFormat::Csv),
            "jsonl" | "ndjson" | "json" => Some(FileFormat::Jsonl),
            _ => None,
        }
    }

    /// The extension files of this format are written with.
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::Parquet => "parquet",
            FileFormat::Csv => "csv",
            FileFormat::Jsonl => "jsonl",
        }
    }
}

/// What to predict and where to write it.
#[derive(Debug, Clone)]
pub struct BatchJob {
    /// Model name.
    pub model: String,
    /// Version number or label; the model's default when `None`.
    pub version: Option<String>,
    /// Signature; `serving_default` when `None`.
    pub signature: Option<String>,
    /// A file, a directory, a glob (`data/*.csv`) or an object-store URL.
    pub input: String,
    /// Input format; from the input's extension when `None`.
    pub input_format: Option<FileFormat>,
    /// Output directory or object-store URL.
    pub output: String,
    /// Output format.
    pub format: FileFormat,
    /// Key column; the model config's key field when `None`, minted when the input has neither.
    pub key: Option<String>,
    /// Input columns to copy to the output besides the key; all when `None`.
    pub columns: Option<Vec<String>>,
    /// Columns feeding the model, in order; when `None`, the column named like a single input,
    /// else every numeric, boolean or list column except the key.
    pub features: Option<Vec<String>>,
    /// Replace an output that already holds files.
    pub overwrite: bool,
    /// Engine knobs and the row error policy.
    pub session: SessionOptions,
    /// Also record every predicted row here (`source = batch`, the job's id as request id).
    pub prediction_log: Option<Arc<serval_log::PredictionLog>>,
    /// Column holding each row's time for the log (back-testing over history); the job's start
    /// time when `None`.
    pub time_column: Option<String>,
}

/// A planned job: progress can be watched while [`BatchRun::execute`] runs.
pub struct BatchRun {
    ctx: SessionContext,
    report: Arc<PredictReport>,
    job: BatchJob,
    model: Arc<Model>,
    signature: Signature,
    key_column: String,
    predictions: Vec<PredictionColumn>,
    expected_rows: Option<u64>,
    plan: datafusion::dataframe::DataFrame,
}

impl BatchRun {
    /// Reads the input's schema, resolves the key and feature columns and plans the query.
    pub async fn plan(catalog: Arc<ModelCatalog>, job: BatchJob) -> Result<BatchRun, BatchError> {
        let model = catalog.get(&job.model, job.version.as_deref())?;
        let signature = model.signature(job.signature.as_deref())?.clone();
        let (ctx, report) = batch_session(catalog.clone(), job.session);
        let format = match job
            .input_format
            .or_else(|| FileFormat::from_extension(input_name(&job.input)))
            .or_else(|| local_dir_format(&job.input))
        {
            Some(f) => f,
            None => {
                return Err(BatchError::Invalid(format!(
                    "cannot tell the format of '{}' from its name; pass --input-format parquet|csv|jsonl",
                    job.input
                )));
            }
        };
        register_table(&ctx, "input", &job.input, format).await?;
        let input = ctx.table("input").await?;
        let schema = input.schema().clone();
        let expected_rows = match format {
            // Parquet footers hold row counts: counting reads no data.
            FileFormat::Parquet => Some(input.clone().count().await? as u64),
            _ => None,
        };

        if let Some(time) = &job.time_column {
            if job.prediction_log.is_none() {
                return Err(BatchError::Invalid(
                    "--time-column sets the time of logged predictions; it needs --prediction-log"
                        .into(),
                ));
            }
            require_columns(&schema, std::slice::from_ref(time), "--time-column")?;
        }
        let config = model.config();
        let mint = mint_key(&ctx)?;
        let mint_missing = config.mint_keys.then(|| mint.clone());
        let (key_column, key_expr) = match &job.key {
            Some(key) => {
                require_columns(&schema, std::slice::from_ref(key), "--key")?;
                (key.clone(), key_expr(&schema, key, mint_missing))
            }
            None if schema.has_column_with_unqualified_name(&config.key) => (
                config.key.clone(),
                key_expr(&schema, &config.key, mint_missing),
            ),
            None => (config.key.clone(), Some(mint.alias(&config.key))),
        };
        // Logged keys must be the output's keys: a minted key is minted once, in a projection of
        // its own that the predicting one reads.
        let (input, schema, key_expr) = match (&job.prediction_log, key_expr) {
            (Some(_), Some(key_expr)) => {
                let staged = input.select(
                    schema
                        .fields()
                        .iter()
                        .filter(|f| *f.name() != key_column)
                        .map(|f| col(quoted(f.name())))
                        .chain([key_expr])
                        .collect::<Vec<Expr>>(),
                )?;
                let schema = staged.schema().clone();
                (staged, schema, None)
            }
            (_, key_expr) => (input, schema, key_expr),
        };
        let features = match &job.features {
            Some(f) => {
                require_columns(&schema, f, "--features")?;
                f.clone()
            }
            None => default_features(&schema, &signature, &key_column, format)?,
        };
        if features.is_empty() {
            return Err(BatchError::Invalid(format!(
                "the input has no numeric columns to feed signature '{}' (inputs: {}); name them with --features",
                signature.name,
                signature.input_names()
            )));
        }
        let kept: Vec<String> = match &job.columns {
            Some(cols) => {
                require_columns(&schema, cols, "--columns")?;
                std::iter::once(key_column.clone())
                    .chain(cols.iter().filter(|c| **c != key_column).cloned())
                    .collect()
            }
            // The key first: JSON Lines columns come back sorted by name.
            None => std::iter::once(key_column.clone())
                .filter(|k| schema.has_column_with_unqualified_name(k))
                .chain(
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().clone())
                        .filter(|c| *c != key_column),
                )
                .collect(),
        };
        let mut projection: Vec<Expr> = kept
            .iter()
            .map(|c| match (&key_expr, *c == key_column) {
                (Some(e), true) => e.clone(),
                _ => col(quoted(c)),
            })
            .collect();
        if !schema.has_column_with_unqualified_name(&key_column) {
            projection.insert(
                0,
                key_expr.clone().unwrap_or_else(|| col(quoted(&key_column))),
            );
        }
        let output_names: Vec<String> = projection
            .iter()
            .map(|e| e.schema_name().to_string())
            .collect();

        let mut args = vec![lit(match &job.signature {
            Some(s) => format!("{}:{s}", job.model),
            None => job.model.clone(),
        })];
        args.push(lit(model.version().to_string()));
        let function = match &job.prediction_log {
            Some(log) => {
                let started_us = chrono::Utc::now().timestamp_micros();
                let logging =
                    PredictUdf::new(catalog.clone(), job.session.on_error, report.clone()).logging(
                        BatchLog {
                            log: log.clone(),
                            job_id: uuid::Uuid::now_v7().to_string(),
                            started_us,
                        },
                    );
                ctx.register_udf(logging.into_udf());
                args.push(col(quoted(&key_column)));
                args.push(match &job.time_column {
                    Some(time) => col(quoted(time)),
                    None => lit(datafusion::common::ScalarValue::Null),
                });
                LOGGED_PREDICT
            }
            None => "predict",
        };
        args.extend(features.iter().map(|f| col(quoted(f))));
        let predict = ctx.udf(function)?.call(args).alias(PREDICTION);
        let plan = input.select(
            projection
                .iter()
                .cloned()
                .chain([predict])
                .collect::<Vec<Expr>>(),
        )?;
        let predictions: Vec<PredictionColumn> = signature
            .outputs
            .iter()
            .map(|o| PredictionColumn {
                output: o.name.clone(),
                column: if output_names.contains(&o.name) {
                    format!("predicted_{}", o.name)
                } else {
                    o.name.clone()
                },
            })
            .collect();
        // Unnesting, not `get_field` per output: DataFusion merges a projection of fields into
        // the one computing the struct, which would run the model once per output.
        let mut plan = plan.unnest_columns(&[PREDICTION])?;
        let field = |name: &str| col(quoted(&format!("{PREDICTION}.{name}")));
        if job.session.on_error == OnError::Skip {
            plan = plan.filter(field(ERROR_FIELD).is_null())?;
        }
        let mut outputs: Vec<Expr> = output_names.iter().map(|c| col(quoted(c))).collect();
        for (p, spec) in predictions.iter().zip(&signature.outputs) {
            match (job.format, serval_arrow::row_type(spec)) {
                // CSV cells hold scalars: a fixed-size list becomes one column per element.
                (FileFormat::Csv, ArrowType::FixedSizeList(_, len)) => {
                    outputs.extend((0..len).map(|i| {
                        array_element(field(&p.output), lit(i64::from(i) + 1))
                            .alias(format!("{}_{i}", p.column))
                    }))
                }
                (FileFormat::Csv, ArrowType::List(_)) => {
                    return Err(BatchError::Invalid(format!(
                        "output '{}' has a dynamic shape {:?}, which CSV cannot hold; use --format parquet or jsonl",
                        p.output,
                        spec.shape_i64()
                    )));
                }
                _ => outputs.push(field(&p.output).alias(&p.column)),
            }
        }
        if job.session.on_error == OnError::Null {
            outputs.push(field(ERROR_FIELD).alias(ERROR_FIELD));
        }
        let plan = plan.select(outputs)?;
        Ok(BatchRun {
            ctx,
            report,
            job,
            model,
            signature,
            key_column,
            predictions,
            expected_rows,
            plan,
        })
    }

    /// Counters `predict` updates as batches go through.
    pub fn report(&self) -> Arc<PredictReport> {
        self.report.clone()
    }

    /// Rows the input holds, when known without reading it (Parquet).
    pub fn expected_rows(&self) -> Option<u64> {
        self.expected_rows
    }

    /// The physical plan, for `--explain`.
    pub async fn explain(&self) -> Result<String, BatchError> {
        let plan = self.plan.clone().create_physical_plan().await?;
        Ok(datafusion::physical_plan::displayable(plan.as_ref())
            .indent(true)
            .to_string())
    }

    /// Runs the job and commits its output; the manifest is what `_SUCCESS` now holds.
    pub async fn execute(self) -> Result<BatchManifest, BatchError> {
        let started_at = now_rfc3339();
        let clock = Instant::now();
        let job_id = uuid::Uuid::now_v7().simple().to_string();
        let out = Output::open(&self.ctx, &self.job.output)?;
        out.remove_stale().await;
        out.check_empty(self.job.overwrite).await?;
        let staging = out.staging_url(&job_id)?;
        let options = DataFrameWriteOptions::new();
        let written = match self.job.format {
            FileFormat::Parquet => self.plan.write_parquet(&staging, options, None).await,
            FileFormat::Csv => self.plan.write_csv(&staging, options, None).await,
            FileFormat::Jsonl => self.plan.write_json(&staging, options, None).await,
        };
        let written = match written {
            Ok(w) => w,
            Err(e) => {
                out.abort(&job_id).await;
                return Err(e.into());
            }
        };
        serval_storage::fault_point("staged");
        let rows_out = written
            .first()
            .and_then(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::UInt64Array>()
            })
            .map_or(0, |c| c.value(0));
        let files = out.name_parts(&job_id, self.job.format).await?;
        serval_storage::fault_point("named");
        let manifest = BatchManifest {
            model: self.model.name().to_owned(),
            version: self.model.version(),
            signature: self.signature.name.clone(),
            key_column: self.key_column,
            predictions: self.predictions,
            format: self.job.format.extension().to_owned(),
            files,
            rows_in: self.report.rows(),
            rows_out,
            rows_failed: self.report.failed(),
            started_at,
            finished_at: now_rfc3339(),
        };
        out.publish(&job_id, &manifest).await?;
        tracing::debug!(
            seconds = clock.elapsed().as_secs_f64(),
            "batch job committed"
        );
        Ok(manifest)
    }
}

/// Name of the struct column `predict` fills before it is split into output columns.
const PREDICTION: &str = "__serval_prediction";

/// Column references are case-sensitive and may hold spaces ("mean radius").
fn quoted(name: &str) -> datafusion::common::Column {
    datafusion::common::Column::new_unqualified(name)
}

fn input_name(input: &str) -> &str {
    input
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(input)
}

/// Registers a file, directory, glob or URL as table `name`.
pub async fn register_table(
    ctx: &SessionContext,
    name: &str,
    input: &str,
    format: FileFormat,
) -> Result<(), BatchError> {
    register(ctx, name, input, Reading::Table(format)).await
}

/// Registers JSON Lines files as table `name` of one text column, [`LINE_COLUMN`], a row per
/// line, for a caller that parses each line itself: DataFusion's JSON reader refuses a field
/// whose type changes from line to line (a label `"cat"` on one line, `3` on the next).
pub async fn register_json_lines_as_text(
    ctx: &SessionContext,
    name: &str,
    input: &str,
) -> Result<(), BatchError> {
    register(ctx, name, input, Reading::JsonLinesAsText).await
}

/// The one column of [`register_json_lines_as_text`]'s table.
pub const LINE_COLUMN: &str = "line";

/// How a registered file is read.
#[derive(Debug, Clone, Copy)]
enum Reading {
    /// As its format's table.
    Table(FileFormat),
    /// JSON Lines as a CSV of one field: split on a byte that valid JSON never holds
    /// unescaped, with no quoting, so each line arrives whole.
    JsonLinesAsText,
}

impl Reading {
    const SEPARATOR: u8 = 0x1f;
    const NO_QUOTE: u8 = 0x1e;

    fn extension(self) -> &'static str {
        match self {
            Reading::Table(format) => format.extension(),
            Reading::JsonLinesAsText => FileFormat::Jsonl.extension(),
        }
    }

    fn line_schema() -> Schema {
        Schema::new(vec![Field::new(LINE_COLUMN, ArrowType::Utf8, true)])
    }
}

async fn register(
    ctx: &SessionContext,
    name: &str,
    input: &str,
    reading: Reading,
) -> Result<(), BatchError> {
    // A named file keeps its own extension; directories and globs select by the format's.
    let file = input_name(input);
    let has_glob = file.contains(['*', '?', '[']);
    if has_glob && input.contains("://") {
        return register_url_glob(ctx, name, input, file, reading).await;
    }
    let ext = match file.rsplit_once('.') {
        Some((_, e)) if !has_glob && !input.ends_with('/') => format!(".{e}"),
        _ => format!(".{}", reading.extension()),
    };
    register_files(ctx, name, input, reading, &ext).await
}

/// DataFusion expands globs only in local paths; an object-store URL's last segment is matched
/// here instead (`s3://bucket/in/part-*.parquet`).
async fn register_url_glob(
    ctx: &SessionContext,
    name: &str,
    input: &str,
    pattern: &str,
    reading: Reading,
) -> Result<(), BatchError> {
    use datafusion::datasource::file_format::{
        csv::CsvFormat, json::JsonFormat, parquet::ParquetFormat,
    };
    use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig};
    let bad = |e: &dyn std::fmt::Display| BatchError::Invalid(format!("'{input}': {e}"));
    let dir = url::Url::parse(&input[..input.len() - pattern.len()]).map_err(|e| bad(&e))?;
    let glob = glob::Pattern::new(pattern).map_err(|e| bad(&e))?;
    let url = ListingTableUrl::try_new(dir, Some(glob))?;
    let file_format: Arc<dyn datafusion::datasource::file_format::FileFormat> = match reading {
        Reading::Table(FileFormat::Parquet) => Arc::new(ParquetFormat::default()),
        Reading::Table(FileFormat::Csv) => Arc::new(CsvFormat::default().with_has_header(true)),
        Reading::Table(FileFormat::Jsonl) => Arc::new(JsonFormat::default()),
        Reading::JsonLinesAsText => Arc::new(
            CsvFormat::default()
                .with_has_header(false)
                .with_delimiter(Reading::SEPARATOR)
                .with_quote(Reading::NO_QUOTE),
        ),
    };
    // The glob selects the files; no extension filter on top of it.
    let options = ListingOptions::new(file_format).with_file_extension("");
    let config = ListingTableConfig::new(url).with_listing_options(options);
    let config = match reading {
        Reading::JsonLinesAsText => config.with_schema(Arc::new(Reading::line_schema())),
        Reading::Table(_) => config.infer_schema(&ctx.state()).await?,
    };
    ctx.register_table(name, Arc::new(ListingTable::try_new(config)?))?;
    Ok(())
}

async fn register_files(
    ctx: &SessionContext,
    name: &str,
    input: &str,
    reading: Reading,
    ext: &str,
) -> Result<(), BatchError> {
    let format = match reading {
        Reading::Table(format) => format,
        Reading::JsonLinesAsText => {
            let schema = Reading::line_schema();
            let options = CsvReadOptions::new()
                .has_header(false)
                .delimiter(Reading::SEPARATOR)
                .quote(Reading::NO_QUOTE)
                .schema(&schema)
                .file_extension(ext);
            ctx.register_csv(name, input, options).await?;
            return Ok(());
        }
    };
    match format {
        FileFormat::Parquet => {
            ctx.register_parquet(
                name,
                input,
                ParquetReadOptions::default().file_extension(ext),
            )
            .await?
        }
        FileFormat::Csv => {
            ctx.register_csv(name, input, CsvReadOptions::new().file_extension(ext))
                .await?
        }
        FileFormat::Jsonl => {
            ctx.register_json(name, input, JsonReadOptions::default().file_extension(ext))
                .await?
        }
    }
    Ok(())
}

/// The one format of the data files in a local directory (files starting with `_` or `.`, like
/// `_SUCCESS`, are not data).
fn local_dir_format(input: &str) -> Option<FileFormat> {
    let mut formats = std::fs::read_dir(input)
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| !name.starts_with(['_', '.']))
        .map(|name| FileFormat::from_extension(&name));
    let first = formats.next()??;
    formats.all(|f| f == Some(first)).then_some(first)
}

fn require_columns(schema: &DFSchema, wanted: &[String], flag: &str) -> Result<(), BatchError> {
    match wanted
        .iter()
        .find(|c| !schema.has_column_with_unqualified_name(c))
    {
        None => Ok(()),
        Some(missing) => Err(BatchError::Invalid(format!(
            "{flag}: the input has no column '{missing}' (columns: {})",
            schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The key as written: string keys keep their value and get a minted one where null.
fn key_expr(schema: &DFSchema, key: &str, mint: Option<Expr>) -> Option<Expr> {
    use datafusion::arrow::datatypes::DataType as A;
    let is_text = schema
        .field_with_unqualified_name(key)
        .is_ok_and(|f| matches!(f.data_type(), A::Utf8 | A::Utf8View | A::LargeUtf8));
    let mint = mint.filter(|_| is_text)?;
    Some(coalesce(vec![col(quoted(key)), mint]).alias(key))
}

fn mint_key(ctx: &SessionContext) -> Result<Expr, BatchError> {
    Ok(ctx.udf("mint_key")?.call(vec![]))
}

/// The columns named like the signature's inputs; else, for a single input, every column but
/// the key when that is exactly the number of values a row takes (dirty CSV columns read as
/// text still feed the model, and their bad values fail only their rows), else every numeric,
/// boolean or list column but the key, in schema order.
fn default_features(
    schema: &DFSchema,
    signature: &Signature,
    key: &str,
    format: FileFormat,
) -> Result<Vec<String>, BatchError> {
    use datafusion::arrow::datatypes::DataType as A;
    let names: Vec<&str> = signature.inputs.iter().map(|s| s.name.as_str()).collect();
    let named: Vec<String> = names
        .iter()
        .filter(|n| schema.has_column_with_unqualified_name(n))
        .map(|n| n.to_string())
        .collect();
    if named.len() == names.len() {
        return Ok(named);
    }
    if format == FileFormat::Jsonl {
        // JSON objects have no column order (DataFusion reads their keys sorted by name), so
        // guessing would feed features in the wrong order without any error.
        return Err(BatchError::Invalid(format!(
            "JSON Lines input has no column order: name the feature columns in the model's order with --features, or give each row a '{}' list",
            names.join("', '")
        )));
    }
    let others = schema.fields().iter().filter(|f| f.name() != key);
    let row_len = match signature.inputs.as_slice() {
        [only] => only
            .shape
            .get(1..)
            .unwrap_or_default()
            .iter()
            .copied()
            .product::<Option<usize>>(),
        _ => None,
    };
    if row_len.is_some_and(|n| n == others.clone().count()) {
        return Ok(others.map(|f| f.name().clone()).collect());
    }
    Ok(others
        .filter(|f| {
            f.data_type().is_numeric()
                || matches!(
                    f.data_type(),
                    A::Boolean | A::List(_) | A::LargeList(_) | A::FixedSizeList(..)
                )
        })
        .map(|f| f.name().clone())
        .collect())
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The output location as an object store and prefix (local directories included).
struct Output {
    location: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// The directory, when the output is on the local file system.
    local_dir: Option<std::path::PathBuf>,
}

/// Where a local job stages: `.<name>.serval-<job>` beside the output directory, on the same
/// file system so that one rename publishes it.
fn local_staging(dir: &std::path::Path, job_id: &str) -> Option<std::path::PathBuf> {
    let name = dir.file_name()?.to_str()?;
    Some(dir.with_file_name(format!(".{name}.serval-{job_id}")))
}

impl Output {
    fn open(ctx: &SessionContext, location: &str) -> Result<Output, BatchError> {
        let dir = format!("{}/", location.trim_end_matches('/'));
        let url = ListingTableUrl::parse(&dir)?;
        let store = ctx.runtime_env().object_store(url.object_store())?;
        // Object-store paths are relative to the root; `file://` URLs are absolute paths.
        let local_dir = (url.scheme() == "file")
            .then(|| std::path::PathBuf::from(format!("/{}", url.prefix())));
        Ok(Output {
            location: location.to_owned(),
            store,
            prefix: url.prefix().clone(),
            local_dir,
        })
    }

    fn error(&self, source: datafusion::object_store::Error) -> BatchError {
        BatchError::Output {
            location: self.location.clone(),
            source,
        }
    }

    fn io_error(&self, step: &'static str) -> impl FnOnce(std::io::Error) -> BatchError + '_ {
        move |source| BatchError::Commit {
            location: self.location.clone(),
            step,
            source,
        }
    }

    /// Where DataFusion writes the job's files.
    fn staging_url(&self, job_id: &str) -> Result<String, BatchError> {
        match &self.local_dir {
            Some(dir) => {
                let staging = local_staging(dir, job_id).ok_or_else(|| {
                    BatchError::Invalid(format!(
                        "output '{}' must name a directory below the file system's root",
                        self.location
                    ))
                })?;
                Ok(format!("{}/", staging.display()))
            }
            None => Ok(format!(
                "{}/_temporary/{job_id}/",
                self.location.trim_end_matches('/')
            )),
        }
    }

    fn object_staging(&self, job_id: &str) -> ObjectPath {
        self.prefix.clone().join("_temporary").join(job_id)
    }

    /// Top-level files (not `_temporary/`), by path.
    async fn files(&self) -> Result<Vec<ObjectPath>, BatchError> {
        let listing = self.store.list_with_delimiter(Some(&self.prefix)).await;
        match listing {
            Ok(l) => Ok(l.objects.into_iter().map(|o| o.location).collect()),
            Err(datafusion::object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn list(&self, prefix: &ObjectPath) -> Vec<ObjectPath> {
        self.store
            .list(Some(prefix))
            .map_ok(|o| o.location)
            .try_collect()
            .await
            .unwrap_or_default()
    }

    async fn manifest(&self) -> Option<BatchManifest> {
        let path = self.prefix.clone().join(MANIFEST_FILE);
        let bytes = self.store.get(&path).await.ok()?.bytes().await.ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Deletes what killed jobs left (best effort, each deletion logged): local staging
    /// directories beside the output; on object stores, `_temporary/` and the parts that the
    /// current `_SUCCESS` does not name (renamed into place before their job's manifest).
    async fn remove_stale(&self) {
        if let Some(dir) = &self.local_dir {
            let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
                return;
            };
            let ours = format!(".{}.serval-", name.to_string_lossy());
            let stale = std::fs::read_dir(parent)
                .into_iter()
                .flatten()
                .filter_map(|entry| entry.ok())
                .filter(|entry| entry.file_name().to_string_lossy().starts_with(&ours))
                .map(|entry| entry.path())
                .chain(Some(dir.join("_temporary")).filter(|p| p.exists()));
            for path in stale {
                tracing::info!(path = %path.display(), "removing what an earlier killed job left");
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove it");
                }
            }
            return;
        }
        let mut stale = self.list(&self.prefix.clone().join("_temporary")).await;
        if let Some(manifest) = self.manifest().await {
            let named: Vec<ObjectPath> = manifest
                .files
                .iter()
                .map(|f| self.prefix.clone().join(f.as_str()))
                .collect();
            stale.extend(
                self.files()
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|p| {
                        p.filename().is_some_and(|f| f.starts_with("part-")) && !named.contains(p)
                    }),
            );
        }
        for path in stale {
            tracing::info!(%path, "removing what an earlier killed job left");
            if let Err(e) = self.store.delete(&path).await {
                tracing::warn!(%path, error = %e, "cannot remove it");
            }
        }
    }

    async fn check_empty(&self, overwrite: bool) -> Result<(), BatchError> {
        let files = self.files().await?;
        if files.is_empty() || overwrite {
            return Ok(());
        }
        let complete = files.iter().any(|f| f.filename() == Some(MANIFEST_FILE));
        Err(BatchError::Invalid(format!(
            "output '{}' already holds {} file(s){}; pass --overwrite to replace them",
            self.location,
            files.len(),
            if complete {
                ""
            } else {
                " and no _SUCCESS (not a complete Serval output)"
            }
        )))
    }

    /// Gives the staged files their final names, `part-<job>-<n>.<ext>`: inside the local
    /// staging directory, or beside the current output on an object store.
    async fn name_parts(
        &self,
        job_id: &str,
        format: FileFormat,
    ) -> Result<Vec<String>, BatchError> {
        let short = &job_id[job_id.len().saturating_sub(8)..];
        let name = |n: usize| format!("part-{short}-{n:05}.{}", format.extension());
        if let Some(dir) = &self.local_dir {
            let staging = local_staging(dir, job_id).unwrap_or_default();
            let mut staged: Vec<std::path::PathBuf> = std::fs::read_dir(&staging)
                .map_err(self.io_error("listing the staged files"))?
                .map(|entry| entry.map(|e| e.path()))
                .collect::<Result<_, _>>()
                .map_err(self.io_error("listing the staged files"))?;
            staged.sort();
            let mut names = Vec::with_capacity(staged.len());
            for (n, from) in staged.iter().enumerate() {
                let to = staging.join(name(n));
                std::fs::rename(from, &to).map_err(self.io_error("naming a staged file"))?;
                // Durable before the rename that publishes them, not only visible.
                std::fs::File::open(&to)
                    .and_then(|f| f.sync_all())
                    .map_err(self.io_error("syncing a staged file"))?;
                names.push(name(n));
            }
            return Ok(names);
        }
        let mut staged = self.list(&self.object_staging(job_id)).await;
        staged.sort();
        let mut names = Vec::with_capacity(staged.len());
        for (n, from) in staged.iter().enumerate() {
            let to = self.prefix.clone().join(name(n).as_str());
            self.store
                .rename(from, &to)
                .await
                .map_err(|e| self.error(e))?;
            names.push(name(n));
        }
        Ok(names)
    }

    /// Makes the named parts the output, with `manifest` as its `_SUCCESS`, in one step a
    /// reader can observe; then deletes the previous output.
    async fn publish(&self, job_id: &str, manifest: &BatchManifest) -> Result<(), BatchError> {
        let body =
            serde_json::to_vec_pretty(manifest).map_err(|e| BatchError::Invalid(e.to_string()))?;
        let Some(dir) = &self.local_dir else {
            let old = self.files().await?;
            self.store
                .put(
                    &self.prefix.clone().join(MANIFEST_FILE),
                    PutPayload::from(body),
                )
                .await
                .map_err(|e| self.error(e))?;
            serval_storage::fault_point("published");
            for path in old {
                let replaced = path
                    .filename()
                    .is_some_and(|f| f != MANIFEST_FILE && !manifest.files.iter().any(|n| n == f));
                if replaced {
                    self.store.delete(&path).await.map_err(|e| self.error(e))?;
                }
            }
            self.abort(job_id).await;
            return Ok(());
        };
        let staging = local_staging(dir, job_id).unwrap_or_default();
        let manifest_path = staging.join(MANIFEST_FILE);
        std::fs::write(&manifest_path, body)
            .and_then(|()| std::fs::File::open(&manifest_path)?.sync_all())
            .and_then(|()| std::fs::File::open(&staging)?.sync_all())
            .map_err(self.io_error("writing _SUCCESS"))?;
        serval_storage::fault_point("manifest");
        let occupied = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
        if occupied {
            exchange(&staging, dir).map_err(self.io_error("replacing the previous output"))?;
            serval_storage::fault_point("published");
            std::fs::remove_dir_all(&staging)
                .map_err(self.io_error("removing the previous output"))?;
        } else {
            // Over nothing, or over an empty directory (which rename replaces).
            std::fs::rename(&staging, dir).map_err(self.io_error("publishing the output"))?;
            serval_storage::fault_point("published");
        }
        if let Some(parent) = dir.parent() {
            std::fs::File::open(parent)
                .and_then(|f| f.sync_all())
                .map_err(self.io_error("syncing the output's directory"))?;
        }
        Ok(())
    }

    /// Deletes what a failed job staged (best effort: the error being reported matters more).
    async fn abort(&self, job_id: &str) {
        if let Some(staging) = self
            .local_dir
            .as_deref()
            .and_then(|d| local_staging(d, job_id))
        {
            let _ = std::fs::remove_dir_all(staging);
            return;
        }
        for path in self.list(&self.object_staging(job_id)).await {
            let _ = self.store.delete(&path).await;
        }
    }
}

/// Swaps two directories in one step (Linux's `renameat2(RENAME_EXCHANGE)`). Elsewhere, or on
/// a file system without it, two renames: for an instant there is no output (and never a
/// partial one).
fn exchange(a: &std::path::Path, b: &std::path::Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &std::path::Path| {
            std::ffi::CString::new(p.as_os_str().as_bytes())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        };
        let (ca, cb) = (c(a)?, c(b)?);
        // SAFETY: both paths are NUL-terminated strings that live across the call.
        let done = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if done == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINVAL) && error.raw_os_error() != Some(libc::ENOSYS)
        {
            return Err(error);
        }
    }
    // Named like a staging directory, so the next job removes it if this one dies here.
    let mut aside = a.as_os_str().to_owned();
    aside.push(".previous");
    let aside = std::path::PathBuf::from(aside);
    std::fs::rename(b, &aside)?;
    if let Err(e) = std::fs::rename(a, b) {
        // Put the previous output back rather than leave none.
        std::fs::rename(&aside, b)?;
        return Err(e);
    }
    std::fs::rename(&aside, a)
}
