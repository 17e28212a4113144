//! The SQL functions: `predict(model[, version], values...)` and `mint_key()`.
//!
//! `predict` runs the model once per Arrow record batch (not per row) and returns a struct of
//! the signature's outputs plus `serval_error`, the reason a row could not be predicted (like
//! BigQuery's per-row status columns). The struct's type depends on the model, so it is derived
//! from the literal model name at planning time.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{ArrayRef, AsArray, StringArray, StructArray, new_null_array};
use datafusion::arrow::compute::{CastOptions, cast, cast_with_options};
use datafusion::arrow::datatypes::{
    DataType as ArrowType, Field, FieldRef, Fields, TimeUnit, TimestampMicrosecondType,
};
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_datafusion_err, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use serval_core::{Model, Signature as ModelSignature, Tensor, TensorSpec};

use serval_log::{LoggedRequest, PredictionLog, Source};

use crate::catalog::ModelCatalog;
use serval_arrow::{self as convert, FeatureColumn, RowErrors};

/// Name of the struct field holding why a row was not predicted (null when it was).
pub const ERROR_FIELD: &str = "serval_error";

/// What `predict` does with a row it cannot predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OnError {
    /// Fail the query, naming the column and value.
    #[default]
    Fail,
    /// Drop the row from the output (done by the job's filter on [`ERROR_FIELD`]); counted.
    Skip,
    /// Keep the row with null outputs and the reason in [`ERROR_FIELD`]; counted.
    Null,
}

/// How many errors [`PredictReport`] keeps verbatim.
const KEPT_ERRORS: usize = 5;

/// Counters shared by every partition running `predict`, read by progress bars and summaries.
#[derive(Debug, Default)]
pub struct PredictReport {
    rows: AtomicU64,
    failed: AtomicU64,
    model_calls: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

impl PredictReport {
    /// Rows `predict` has seen.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// Rows it could not predict.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Engine calls made (one per record batch for batchable models).
    pub fn model_calls(&self) -> u64 {
        self.model_calls.load(Ordering::Relaxed)
    }

    /// The first few reasons rows failed.
    pub fn first_errors(&self) -> Vec<String> {
        self.first_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn record(&self, rows: usize, errors: &RowErrors) {
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
        if errors.failed() == 0 {
            return;
        }
        self.failed
            .fetch_add(errors.failed() as u64, Ordering::Relaxed);
        let mut kept = self.first_errors.lock().unwrap_or_else(|p| p.into_inner());
        let room = KEPT_ERRORS.saturating_sub(kept.len());
        kept.extend(errors.iter().take(room).map(|(_, e)| e.to_owned()));
    }
}

/// `predict('model[:signature]'[, 'version'], values...)`.
///
/// Values are columns, lists or structs. A single-input model takes them in order as the
/// features of each row (a struct contributes its fields, a list its elements); a model with
/// several inputs takes one value per input, matched by column or struct field name
/// (`named_struct('input_a', col1, 'input_b', col2)` renames), else by position.
#[derive(Debug)]
pub struct PredictUdf {
    signature: Signature,
    catalog: Arc<ModelCatalog>,
    on_error: OnError,
    report: Arc<PredictReport>,
    log: Option<BatchLog>,
}

/// Where [`LOGGED_PREDICT`] records what it predicts.
#[derive(Debug)]
pub struct BatchLog {
    /// The prediction log.
    pub log: Arc<PredictionLog>,
    /// The request id of every record: the job's id.
    pub job_id: String,
    /// The records' time when the input gives none, µs since the Unix epoch (UTC).
    pub started_us: i64,
}

/// `predict` that also logs each predicted row in a prediction log (`serval batch
/// --prediction-log`): `serval_logged_predict(model, version, key, time, values...)`, where
/// `time` (a timestamp, a date, RFC 3339 text, or null for the job's start) is the record's.
pub const LOGGED_PREDICT: &str = "serval_logged_predict";

impl PartialEq for PredictUdf {
    fn eq(&self, other: &PredictUdf) -> bool {
        Arc::ptr_eq(&self.catalog, &other.catalog)
            && self.on_error == other.on_error
            && self.log.as_ref().map(|l| Arc::as_ptr(&l.log))
                == other.log.as_ref().map(|l| Arc::as_ptr(&l.log))
    }
}

impl Eq for PredictUdf {}

impl Hash for PredictUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.on_error.hash(state);
    }
}

/// The model a call names, and where its values start.
struct Target {
    model: String,
    signature: Option<String>,
    version: Option<String>,
    /// Where the key and time arguments of a logging call are.
    logged_at: Option<usize>,
    first_value: usize,
}

impl Target {
    /// Reads the literal model (and optional version) arguments; a logging call's key and time
    /// follow them.
    fn parse(literals: &[Option<&ScalarValue>], logging: bool) -> Result<Target> {
        let text = |i: usize| {
            literals
                .get(i)
                .copied()
                .flatten()
                .and_then(|v| v.try_as_str().flatten())
        };
        let Some(spec) = text(0) else {
            return exec_err!(
                "predict: the first argument must be the model name as a string literal, e.g. predict('iris_lr', ...)"
            );
        };
        let (model, signature) = match spec.split_once(':') {
            Some((m, s)) => (m.to_owned(), Some(s.to_owned())),
            None => (spec.to_owned(), None),
        };
        let version = text(1).map(str::to_owned);
        let after_version = if version.is_some() { 2 } else { 1 };
        let logged_at = logging.then_some(after_version);
        let first_value = after_version + if logging { 2 } else { 0 };
        if literals.len() <= first_value {
            return exec_err!(
                "predict('{spec}'): no values given; pass the feature columns after the model name"
            );
        }
        Ok(Target {
            model,
            signature,
            version,
            logged_at,
            first_value,
        })
    }
}

impl PredictUdf {
    /// A `predict` over `catalog`'s models applying `on_error`, counting into `report`.
    pub fn new(
        catalog: Arc<ModelCatalog>,
        on_error: OnError,
        report: Arc<PredictReport>,
    ) -> PredictUdf {
        PredictUdf {
            // Volatile, not Stable: DataFusion would otherwise merge `SELECT p['a'], p['b'] FROM
            // (SELECT predict(...) AS p ...)` into two predict calls per batch, and fold calls
            // whose arguments are all literals at planning time.
            signature: Signature::variadic_any(Volatility::Volatile),
            catalog,
            on_error,
            report,
            log: None,
        }
    }

    /// The [`LOGGED_PREDICT`] variant, recording every predicted row in `log`.
    pub fn logging(mut self, log: BatchLog) -> PredictUdf {
        self.log = Some(log);
        self
    }

    /// Wrapped for registration with a session.
    pub fn into_udf(self) -> ScalarUDF {
        ScalarUDF::new_from_impl(self)
    }

    fn model(&self, target: &Target) -> Result<(Arc<Model>, ModelSignature)> {
        let model = self
            .catalog
            .get(&target.model, target.version.as_deref())
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let signature = model
            .signature(target.signature.as_deref())
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .clone();
        Ok((model, signature))
    }

    /// Runs the rows that can be predicted; failures of the whole call become row failures
    /// unless the policy is to fail.
    fn run(
        &self,
        model: &Model,
        signature: &ModelSignature,
        inputs: Vec<(String, Tensor)>,
        ok: &[usize],
        errors: &mut RowErrors,
    ) -> Result<Option<Vec<(String, Tensor)>>> {
        if ok.is_empty() {
            return Ok(None);
        }
        let result = if model.is_batchable() {
            self.report.model_calls.fetch_add(1, Ordering::Relaxed);
            model.predict(Some(&signature.name), inputs)
        } else {
            run_row_by_row(model, signature, inputs, &self.report)
        };
        match result {
            Ok(outputs) => Ok(Some(outputs)),
            Err(e) if self.on_error == OnError::Fail => {
                Err(exec_datafusion_err!("predict('{}'): {e}", model.name()))
            }
            Err(e) => {
                errors.fail_all(&e.to_string());
                Ok(None)
            }
        }
    }
}

/// Models with a fixed batch size of one run each row alone.
fn run_row_by_row(
    model: &Model,
    signature: &ModelSignature,
    inputs: Vec<(String, Tensor)>,
    report: &PredictReport,
) -> serval_core::Result<Vec<(String, Tensor)>> {
    let rows = inputs.first().map_or(0, |(_, t)| t.rows());
    let mut per_row = Vec::with_capacity(rows);
    for row in 0..rows {
        let single = inputs
            .iter()
            .map(|(n, t)| (n.clone(), t.slice_rows(row, row + 1)))
            .collect();
        report.model_calls.fetch_add(1, Ordering::Relaxed);
        per_row.push(model.predict(Some(&signature.name), single)?);
    }
    let names: Vec<String> = signature.outputs.iter().map(|s| s.name.clone()).collect();
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let parts: Vec<Tensor> = per_row.iter().map(|outs| outs[i].1.clone()).collect();
            Tensor::concat_rows(&parts)
                .map(|t| (name, t))
                .map_err(serval_core::Error::from)
        })
        .collect()
}

/// The struct `predict` returns for a signature.
fn output_fields(signature: &ModelSignature) -> Fields {
    let mut fields: Vec<Field> = signature
        .outputs
        .iter()
        .map(|spec| Field::new(&spec.name, convert::row_type(spec), true))
        .collect();
    fields.push(Field::new(ERROR_FIELD, ArrowType::Utf8, true));
    Fields::from(fields)
}

/// Pairs each signature input with the columns feeding it.
fn bind_inputs(
    signature: &ModelSignature,
    columns: Vec<FeatureColumn>,
) -> Result<Vec<(&TensorSpec, Vec<FeatureColumn>)>> {
    if let [only] = signature.inputs.as_slice() {
        return Ok(vec![(only, columns)]);
    }
    let named = columns
        .iter()
        .all(|c| signature.inputs.iter().any(|s| s.name == c.name));
    if named && columns.len() == signature.inputs.len() {
        return Ok(signature
            .inputs
            .iter()
            .map(|spec| {
                (
                    spec,
                    columns
                        .iter()
                        .filter(|c| c.name == spec.name)
                        .cloned()
                        .collect(),
                )
            })
            .collect());
    }
    if columns.len() == signature.inputs.len() {
        return Ok(signature
            .inputs
            .iter()
            .zip(columns)
            .map(|(s, c)| (s, vec![c]))
            .collect());
    }
    exec_err!(
        "signature '{}' takes {} inputs ({}); pass one value per input, named after it or in that order",
        signature.name,
        signature.inputs.len(),
        signature.input_names()
    )
}

impl ScalarUDFImpl for PredictUdf {
    fn name(&self) -> &str {
        if self.log.is_some() {
            LOGGED_PREDICT
        } else {
            "predict"
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[ArrowType]) -> Result<ArrowType> {
        exec_err!(
            "predict's type depends on its model; it is planned through return_field_from_args"
        )
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let target = Target::parse(args.scalar_arguments, self.log.is_some())?;
        let (_, signature) = self.model(&target)?;
        Ok(Arc::new(Field::new(
            self.name(),
            ArrowType::Struct(output_fields(&signature)),
            true,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let literals: Vec<Option<&ScalarValue>> = args
            .args
            .iter()
            .map(|a| match a {
                ColumnarValue::Scalar(s) => Some(s),
                ColumnarValue::Array(_) => None,
            })
            .collect();
        let target = Target::parse(&literals, self.log.is_some())?;
        let (model, signature) = self.model(&target)?;
        let rows = args.number_rows;
        let mut columns = Vec::new();
        for (value, field) in args
            .args
            .iter()
            .zip(&args.arg_fields)
            .skip(target.first_value)
        {
            columns.extend(FeatureColumn::flatten(field.name(), value.to_array(rows)?));
        }
        let mut errors = RowErrors::new(rows);
        let mut inputs = Vec::with_capacity(signature.inputs.len());
        for (spec, cols) in bind_inputs(&signature, columns)? {
            let tensor =
                convert::read_input(spec, &cols, rows, model.config().allow_nan, &mut errors)
                    .map_err(|e| exec_datafusion_err!("predict('{}'): {e}", target.model))?;
            inputs.push((spec.name.clone(), tensor));
        }
        if self.on_error == OnError::Fail
            && let Some((row, reason)) = errors.iter().next()
        {
            self.report.record(rows, &errors);
            return exec_err!(
                "predict('{}'): row {row} of a record batch: {reason} (use --on-error skip or null to keep going)",
                target.model
            );
        }
        let ok = errors.ok_rows();
        let inputs: Vec<(String, Tensor)> = inputs
            .into_iter()
            .map(|(n, t)| (n, convert::select_rows(t, &ok)))
            .collect();
        let logged = match (&self.log, target.logged_at) {
            (Some(log), Some(at)) => Some((log, LoggedRows::read(&args.args[at..at + 2], rows)?)),
            _ => None,
        };
        let logged_inputs = logged.as_ref().map(|_| inputs.clone());
        let started = std::time::Instant::now();
        let outputs = self.run(&model, &signature, inputs, &ok, &mut errors)?;
        self.report.record(rows, &errors);
        if let (Some((log, rows_logged)), Some(inputs), Some(outputs)) =
            (logged, logged_inputs, &outputs)
        {
            let request = rows_logged.request(
                log,
                &model,
                &signature,
                &ok,
                inputs,
                outputs.clone(),
                started.elapsed(),
            );
            log.log
                .submit_waiting(request)
                .map_err(|e| exec_datafusion_err!("predict('{}'): {e}", target.model))?;
        }
        let fields = output_fields(&signature);
        let ok = errors.ok_rows();
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(fields.len());
        match outputs {
            Some(outputs) => {
                for ((_, tensor), field) in outputs.into_iter().zip(fields.iter()) {
                    arrays.push(
                        convert::write_output(
                            tensor,
                            field.data_type(),
                            &ok,
                            rows,
                            errors.validity(),
                        )
                        .map_err(|e| {
                            exec_datafusion_err!(
                                "predict('{}') output '{}': {e}",
                                target.model,
                                field.name()
                            )
                        })?,
                    );
                }
            }
            None => arrays.extend(
                fields
                    .iter()
                    .take(fields.len() - 1)
                    .map(|f| new_null_array(f.data_type(), rows)),
            ),
        }
        arrays.push(Arc::new(errors.reasons()));
        let array = StructArray::try_new(fields, arrays, None)?;
        Ok(ColumnarValue::Array(Arc::new(array)))
    }
}

/// The key and time of each row of a logging call.
struct LoggedRows {
    keys: Vec<Option<String>>,
    times_us: Vec<Option<i64>>,
}

impl LoggedRows {
    fn read(args: &[ColumnarValue], rows: usize) -> Result<LoggedRows> {
        let [key, time] = args else {
            return exec_err!("{LOGGED_PREDICT} takes a key and a time after the model");
        };
        let keys = cast(&key.to_array(rows)?, &ArrowType::Utf8)?;
        let keys = keys
            .as_string::<i32>()
            .iter()
            .map(|k| k.map(str::to_owned))
            .collect();
        let time = time.to_array(rows)?;
        let utc = ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        // Not `safe`: a time that does not parse is an error naming it, not a silent null.
        let strict = CastOptions {
            safe: false,
            ..CastOptions::default()
        };
        let times = if time.data_type() == &ArrowType::Null {
            new_null_array(&utc, rows)
        } else {
            cast_with_options(&time, &utc, &strict)
                .map_err(|e| exec_datafusion_err!("--time-column: {e}"))?
        };
        let times_us = times
            .as_primitive::<TimestampMicrosecondType>()
            .iter()
            .collect();
        Ok(LoggedRows { keys, times_us })
    }

    /// The log's request for the rows that were predicted (`ok`, in order).
    #[allow(clippy::too_many_arguments)]
    fn request(
        self,
        log: &BatchLog,
        model: &Model,
        signature: &ModelSignature,
        ok: &[usize],
        inputs: Vec<(String, Tensor)>,
        outputs: Vec<(String, Tensor)>,
        compute: std::time::Duration,
    ) -> LoggedRequest {
        let logging = &model.config().logging;
        LoggedRequest {
            model: model.name().to_owned(),
            version: model.version(),
            signature: signature.name.clone(),
            timestamp_us: log.started_us,
            instance_timestamps_us: Some(
                ok.iter()
                    .map(|&r| self.times_us[r].unwrap_or(log.started_us))
                    .collect(),
            ),
            request_id: log.job_id.clone(),
            protocol: "batch",
            source: Source::Batch,
            keys: ok.iter().map(|&r| self.keys[r].clone()).collect(),
            inputs: logging.inputs.then_some(inputs),
            outputs: logging.outputs.then_some(outputs),
            // The function deals in rows: axis 0 is the row, whether or not the model batches.
            batched: true,
            queue_us: 0,
            compute_us: compute.as_micros() as u64,
            sample_rate: logging.sample_rate,
        }
    }
}

/// `mint_key()`: a fresh UUIDv7 per row, the same kind of key the server mints.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MintKeyUdf {
    signature: Signature,
}

impl Default for MintKeyUdf {
    fn default() -> MintKeyUdf {
        MintKeyUdf {
            // Volatile: every row gets its own key, never a constant-folded one.
            signature: Signature::nullary(Volatility::Volatile),
        }
    }
}

impl ScalarUDFImpl for MintKeyUdf {
    fn name(&self) -> &str {
        "mint_key"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[ArrowType]) -> Result<ArrowType> {
        Ok(ArrowType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let keys: StringArray = (0..args.number_rows)
            .map(|_| Some(uuid::Uuid::now_v7().to_string()))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(keys)))
    }
}
