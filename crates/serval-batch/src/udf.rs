//! The SQL functions: `predict(model[, version], values...)` and `mint_key()`.
//!
//! `predict` runs the model once per Arrow record batch (not per row) and returns a struct of
//! the signature's outputs plus `serval_error`, the reason a row could not be predicted (like
//! BigQuery's per-row status columns). The struct's type depends on the model, so it is derived
//! from the literal model name at planning time.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{ArrayRef, StringArray, StructArray, new_null_array};
use datafusion::arrow::datatypes::{DataType as ArrowType, Field, FieldRef, Fields};
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_datafusion_err, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use serval_core::{Model, Signature as ModelSignature, Tensor, TensorSpec};

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
}

impl PartialEq for PredictUdf {
    fn eq(&self, other: &PredictUdf) -> bool {
        Arc::ptr_eq(&self.catalog, &other.catalog) && self.on_error == other.on_error
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
    first_value: usize,
}

impl Target {
    /// Reads the literal model (and optional version) arguments.
    fn parse(literals: &[Option<&ScalarValue>]) -> Result<Target> {
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
        let first_value = if version.is_some() { 2 } else { 1 };
        if literals.len() <= first_value {
            return exec_err!(
                "predict('{spec}'): no values given; pass the feature columns after the model name"
            );
        }
        Ok(Target {
            model,
            signature,
            version,
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
        }
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
        "predict"
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
        let target = Target::parse(args.scalar_arguments)?;
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
        let target = Target::parse(&literals)?;
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
        let inputs = inputs
            .into_iter()
            .map(|(n, t)| (n, convert::select_rows(t, &ok)))
            .collect();
        let outputs = self.run(&model, &signature, inputs, &ok, &mut errors)?;
        self.report.record(rows, &errors);
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
