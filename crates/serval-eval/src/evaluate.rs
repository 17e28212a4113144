//! `serval eval`: a model's logged predictions joined with their labels, per window, version and
//! slice.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, AsArray, Float64Array, Int64Array, ListArray, RecordBatch, StringArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type};
use datafusion::prelude::{DataFrame, SessionContext, col, lit};
use datafusion::scalar::ScalarValue;
use futures::TryStreamExt;
use serde::Serialize;
use serval_batch::ModelCatalog;
use serval_batch::prediction_log::{ModelTable, TensorColumn};
use serval_core::config::{MonitorConfig, MonitorTask};
use serval_core::{DataType as TensorType, Signature};
use serval_log::LogRoot;

use crate::EvalError;
use crate::collect::{ColumnQuality, Prepared, TensorCollectors, cast_to, violations};
use crate::drift::{self, DriftResult, Method};
use crate::metrics::{
    ClassTable, ClassificationAccumulator, ClassificationMetrics, ConfidenceEstimate,
    RegressionAccumulator, RegressionMetrics, argmax,
};
use crate::profile::{ColumnProfile, DEFAULT_PROFILE_SAMPLE, Histogram, Profile, WINDOW_SAMPLE};
use crate::rules::{self, Alert};
use crate::window::WindowSpec;

/// Labelled rows a window needs for metrics when neither the options nor `[monitor]` say.
const DEFAULT_MIN_LABELLED: usize = 30;

/// What to evaluate and how to group it.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// The model, as named in the repository and the log.
    pub model: String,
    /// Only this version's records (default: every version, each reported on its own).
    pub version: Option<u64>,
    /// The signature whose records are evaluated (default: `serving_default`).
    pub signature: Option<String>,
    /// How records are grouped.
    pub window: WindowSpec,
    /// Records at or after this time (µs since the epoch, UTC).
    pub from_us: Option<i64>,
    /// Records before this time.
    pub to_us: Option<i64>,
    /// A column of the model's typed table (an input, an output or a record column) whose
    /// values split every window.
    pub slice: Option<String>,
    /// Fewer labelled rows in a window give no metrics (default: `[monitor] min_labelled`, 30).
    pub min_labelled: Option<usize>,
    /// The output holding the prediction (default: `[monitor]`, else inferred).
    pub prediction: Option<String>,
    /// The output holding per-class scores (default: `[monitor]`, else inferred).
    pub scores: Option<String>,
    /// Classification or regression (default: `[monitor]`, else inferred).
    pub task: Option<MonitorTask>,
    /// Bytes the query may hold before sorting and joining spill to disk.
    pub memory_limit: Option<usize>,
    /// What windows are compared with for drift and data quality.
    pub reference: Reference,
    /// The drift test of every column (default: Evidently's choice by type and size).
    pub drift_method: Option<Method>,
    /// The drift threshold (default: the method's).
    pub drift_threshold: Option<f64>,
    /// Add each drift column's reference and window histograms to the reports (for plots).
    pub histograms: bool,
}

impl EvalOptions {
    /// Every record of `model`'s default signature, compared with the stored profiles, and
    /// everything else inferred.
    pub fn new(model: impl Into<String>, window: WindowSpec) -> EvalOptions {
        EvalOptions {
            model: model.into(),
            version: None,
            signature: None,
            window,
            from_us: None,
            to_us: None,
            slice: None,
            min_labelled: None,
            prediction: None,
            scores: None,
            task: None,
            memory_limit: None,
            reference: Reference::Stored,
            drift_method: None,
            drift_threshold: None,
            histograms: false,
        }
    }
}

/// What windows are compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum Reference {
    /// Each version's stored profile (`serval profile`), where it has one.
    Stored,
    /// The model's records in a time range of the same log.
    Log {
        /// Records at or after this time (µs).
        from_us: Option<i64>,
        /// Records before this time (µs).
        to_us: Option<i64>,
    },
}

/// One window of one version (and slice).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowReport {
    /// RFC 3339, UTC. A row window spans its first to its last record.
    pub window_start: String,
    /// RFC 3339, UTC, exclusive for time windows.
    pub window_end: String,
    /// The model version that made the predictions.
    pub version: u64,
    /// The slice column's value (only with a slice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slice: Option<String>,
    /// Predictions in the window (each key once per version).
    pub rows: u64,
    /// Predictions with a label.
    pub labelled: u64,
    /// `labelled / rows`.
    pub label_coverage: f64,
    /// Labels that could not be scored (a regression label without a number).
    #[serde(skip_serializing_if = "is_zero")]
    pub unusable_labels: u64,
    /// Realised metrics over the labelled rows.
    pub metrics: WindowMetrics,
    /// Metrics expected from the scores of every row, labelled or not (confidence-based
    /// performance estimation: blind to concept drift); empty without scores.
    pub estimated: BTreeMap<&'static str, f64>,
    /// Drift per input and output element, against the version's reference (empty without one).
    pub drift: BTreeMap<String, DriftResult>,
    /// Share of the tested columns that drifted (`null` without a reference).
    pub drift_share: Option<f64>,
    /// Columns whose values broke the reference's range, categories or variety, or were missing.
    pub data_quality: BTreeMap<String, ColumnQuality>,
    /// Each drift column's reference and window distributions (with `histograms`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub histograms: BTreeMap<String, Histogram>,
    /// Rules (`[[monitor.rules]]`) that fired in this window.
    pub alerts: Vec<Alert>,
    #[serde(skip)]
    start_us: i64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A window's realised metrics: numbers, or why there are none.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowMetrics {
    /// What the model predicts.
    pub task: MonitorTask,
    /// The numbers, or the count that was too small for them.
    #[serde(flatten)]
    pub values: MetricValues,
}

/// The numbers of [`WindowMetrics`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MetricValues {
    /// A classifier's metrics.
    Classification(ClassificationMetrics),
    /// A regressor's metrics.
    Regression(RegressionMetrics),
    /// Too few labelled rows for numbers worth reading.
    Insufficient {
        /// The counts.
        insufficient_data: InsufficientData,
    },
}

/// Too few labelled rows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct InsufficientData {
    /// Labelled rows in the window.
    pub labelled: u64,
    /// Labelled rows a window needs.
    pub required: usize,
}

/// Evaluates `options.model`'s logged predictions in the log at `root`, in order of window start,
/// version and slice.
pub async fn evaluate(
    catalog: Arc<ModelCatalog>,
    root: &LogRoot,
    options: &EvalOptions,
) -> Result<Vec<WindowReport>, EvalError> {
    let log = LogQuery::open(catalog.clone(), root, options).await?;
    let target = Target::choose(&log.table, &log.signature, options)?;
    let rules = log.table.model.config().monitor.rules.clone();
    rules::validate(&rules)?;
    let references = match &options.reference {
        Reference::Stored => References::Stored {
            repository: catalog.repository().root().to_path_buf(),
            model: options.model.clone(),
            loaded: HashMap::new(),
        },
        Reference::Log { from_us, to_us } => {
            let rows = log
                .rows(
                    "serval_eval_reference",
                    options.version,
                    *from_us,
                    *to_us,
                    None,
                    &target,
                    &log.table.columns,
                )
                .await?;
            let source = format!(
                "log {}..{}",
                from_us.map(rfc3339).unwrap_or_default(),
                to_us.map(rfc3339).unwrap_or_default()
            );
            let profile = log.profile(rows, source, DEFAULT_PROFILE_SAMPLE).await?;
            References::One(Arc::new(profile))
        }
    };
    // Inputs are decoded from the log's JSON only when a reference can use them: metrics alone
    // read the outputs.
    let tensors = if references.may_exist(&catalog, options.version) {
        log.table.columns.clone()
    } else {
        Vec::new()
    };
    let frame = log
        .rows(
            "serval_eval_source",
            options.version,
            options.from_us,
            options.to_us,
            options.slice.as_deref(),
            &target,
            &tensors,
        )
        .await?;
    let mut stream = frame.execute_stream().await?;
    let drift_tests = DriftTests::new(options, &log.table.model.config().monitor)?;
    let mut windows = Windows::new(options, &target, references, tensors, drift_tests);
    while let Some(batch) = stream.try_next().await? {
        windows.add(&batch)?;
    }
    let mut reports = windows.finish();
    rules::apply(&options.model, &rules, &mut reports)?;
    Ok(reports)
}

/// Profiles a model's logged records (every input and output element): the reference of
/// `serval profile`.
pub async fn profile_log(
    catalog: Arc<ModelCatalog>,
    root: &LogRoot,
    model: &str,
    signature: Option<&str>,
    version: Option<u64>,
    source: String,
    sample_size: usize,
) -> Result<Profile, EvalError> {
    let options = EvalOptions {
        signature: signature.map(str::to_owned),
        ..EvalOptions::new(model, WindowSpec::Rows(u64::MAX))
    };
    let log = LogQuery::open(catalog, root, &options).await?;
    let nothing = Target::nothing();
    let rows = log
        .rows(
            "serval_profile_source",
            version,
            None,
            None,
            None,
            &nothing,
            &log.table.columns,
        )
        .await?;
    let mut profile = log.profile(rows, source, sample_size).await?;
    profile.version = version.unwrap_or(profile.version);
    Ok(profile)
}

/// A model's typed log table in a session of its own.
struct LogQuery {
    ctx: SessionContext,
    table: ModelTable,
    signature: Signature,
}

/// Columns of [`LogQuery::rows`] before the tensors'.
const FIXED_COLUMNS: usize = 7;

impl LogQuery {
    async fn open(
        catalog: Arc<ModelCatalog>,
        root: &LogRoot,
        options: &EvalOptions,
    ) -> Result<LogQuery, EvalError> {
        let session = serval_batch::SessionOptions {
            memory_limit: options.memory_limit,
            ..serval_batch::SessionOptions::default()
        };
        let (ctx, _) = serval_batch::batch_session(catalog.clone(), session);
        // Joining the labels by sorting both sides rather than hashing one: a hash join's table
        // cannot spill, so under the memory limit it failed past a few million labels, where a
        // sort-merge join spills like the sorts around it.
        ctx.sql("SET datafusion.optimizer.prefer_hash_join = false")
            .await?;
        serval_batch::prediction_log::register_prediction_log(&ctx, root).await?;
        let (table, _) =
            serval_batch::prediction_log::model_table(&ctx, &catalog, &options.model).await?;
        let signature = table.model.signature(options.signature.as_deref())?.clone();
        Ok(LogQuery {
            ctx,
            table,
            signature,
        })
    }

    /// The rows to evaluate, in time order: each key's latest record per version, with its
    /// label. Columns: `ts`, `version`, `slice`, `prediction`, `scores`, `label`, `label_value`,
    /// then `tensors`.
    #[allow(clippy::too_many_arguments)]
    async fn rows(
        &self,
        view: &str,
        version: Option<u64>,
        from_us: Option<i64>,
        to_us: Option<i64>,
        slice: Option<&str>,
        target: &Target,
        tensors: &[TensorColumn],
    ) -> Result<DataFrame, EvalError> {
        let timestamp = |us: i64| {
            lit(ScalarValue::TimestampMicrosecond(
                Some(us),
                Some("UTC".into()),
            ))
        };
        let mut frame = self
            .table
            .frame
            .clone()
            .filter(col("signature").eq(lit(self.signature.name.as_str())))?;
        if let Some(version) = version {
            frame = frame.filter(col("version").eq(lit(version)))?;
        }
        if let Some(from) = from_us {
            frame = frame.filter(col("ts").gt_eq(timestamp(from)))?;
        }
        if let Some(to) = to_us {
            frame = frame.filter(col("ts").lt(timestamp(to)))?;
        }
        if let Some(slice) = slice
            && frame.schema().field_with_unqualified_name(slice).is_err()
        {
            let columns: Vec<&str> = frame
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            return Err(EvalError::Invalid(format!(
                "--slice {slice}: the log of model '{}' has no such column (columns: {})",
                self.table.model.name(),
                columns.join(", ")
            )));
        }
        self.ctx.register_table(view, frame.into_view())?;
        let column = |c: Option<&TensorColumn>| {
            c.map_or("NULL".to_owned(), |c| format!("p.{}", ident(&c.column)))
        };
        let slice = slice.map_or("NULL".to_owned(), |s| {
            format!("CAST(p.{} AS VARCHAR)", ident(s))
        });
        let tensors: String = tensors
            .iter()
            .map(|c| format!(", p.{}", ident(&c.column)))
            .collect();
        // Of a key logged twice by one version (a retried request), the latest record counts.
        let sql = format!(
            "SELECT p.ts, p.version, {slice} AS slice, {prediction} AS prediction,
                    {scores} AS scores, l.label, l.label_value{tensors}
             FROM (SELECT *, row_number() OVER (PARTITION BY version, key ORDER BY ts DESC)
                     AS serval_dup
                   FROM {view}) p
             LEFT JOIN labels l ON l.model = '{model}' AND l.key = p.key
             WHERE p.serval_dup = 1
             ORDER BY p.ts, p.version",
            prediction = column(target.prediction.as_ref()),
            scores = column(target.scores.as_ref().map(|(c, _)| c)),
            model = self.table.model.name().replace('\'', "''"),
        );
        Ok(self.ctx.sql(&sql).await?)
    }

    /// Every input and output element of `rows`.
    async fn profile(
        &self,
        rows: DataFrame,
        source: String,
        sample_size: usize,
    ) -> Result<Profile, EvalError> {
        let mut collectors = TensorCollectors::new(&self.table.columns, None, sample_size);
        let mut count = 0u64;
        let mut stream = rows.execute_stream().await?;
        while let Some(batch) = stream.try_next().await? {
            let prepared = prepare_tensors(&batch)?;
            for row in 0..batch.num_rows() {
                collectors.add_row(&prepared, row, None);
            }
            count += batch.num_rows() as u64;
        }
        Ok(Profile {
            model: self.table.model.name().to_owned(),
            version: self.table.model.version(),
            signature: self.signature.name.clone(),
            source,
            rows: count,
            // A column no record has (another signature's output) is no reference.
            columns: collectors
                .finish()
                .into_iter()
                .filter(|(_, profile, _)| profile.count > 0)
                .map(|(name, profile, _)| (name, profile))
                .collect(),
        })
    }
}

fn prepare_tensors(batch: &RecordBatch) -> Result<Vec<Prepared>, EvalError> {
    batch.columns()[FIXED_COLUMNS..]
        .iter()
        .map(Prepared::of)
        .collect()
}

/// Where each version's reference comes from.
enum References {
    Stored {
        repository: PathBuf,
        model: String,
        loaded: HashMap<u64, Option<Arc<Profile>>>,
    },
    One(Arc<Profile>),
}

impl References {
    /// Whether any version evaluated can have a reference (a stored profile on disk).
    fn may_exist(&self, catalog: &ModelCatalog, version: Option<u64>) -> bool {
        match self {
            References::One(_) => true,
            References::Stored {
                repository, model, ..
            } => catalog
                .repository()
                .versions_on_disk(model)
                .unwrap_or_default()
                .into_iter()
                .filter(|v| version.is_none_or(|wanted| wanted == *v))
                .any(|v| Profile::path(repository, model, v).is_file()),
        }
    }

    fn of(&mut self, version: u64) -> Result<Option<Arc<Profile>>, EvalError> {
        match self {
            References::One(profile) => Ok(Some(profile.clone())),
            References::Stored {
                repository,
                model,
                loaded,
            } => {
                if let Some(known) = loaded.get(&version) {
                    return Ok(known.clone());
                }
                let profile =
                    Profile::read(&Profile::path(repository, model, version))?.map(Arc::new);
                loaded.insert(version, profile.clone());
                Ok(profile)
            }
        }
    }
}

/// The outputs a model is judged by.
#[derive(Debug, Clone)]
struct Target {
    task: MonitorTask,
    /// The predicted class or value.
    prediction: Option<TensorColumn>,
    /// Per-class scores, and how many classes they have.
    scores: Option<(TensorColumn, Option<usize>)>,
    classes: ClassTable,
    min_labelled: usize,
}

impl Target {
    /// No prediction to judge: a pass that only profiles.
    fn nothing() -> Target {
        Target {
            task: MonitorTask::Classification,
            prediction: None,
            scores: None,
            classes: ClassTable::default(),
            min_labelled: 0,
        }
    }

    fn choose(
        table: &ModelTable,
        signature: &Signature,
        options: &EvalOptions,
    ) -> Result<Target, EvalError> {
        let monitor = &table.model.config().monitor;
        let spec_of = |name: &str| signature.outputs.iter().find(|o| o.name == name);
        let column_of = |name: &str, flag: &str| -> Result<TensorColumn, EvalError> {
            match (spec_of(name), table.output(name)) {
                (Some(_), Some(column)) => Ok(column.clone()),
                _ => Err(EvalError::Invalid(format!(
                    "{flag} {name}: signature '{}' of model '{}' has no such output (outputs: {})",
                    signature.name,
                    table.model.name(),
                    signature
                        .outputs
                        .iter()
                        .map(|o| o.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            }
        };
        let per_instance =
            |shape: &[Option<usize>]| shape.len() == 1 || shape.get(1..) == Some(&[Some(1)][..]);
        let is_class = |t: TensorType| {
            matches!(
                t,
                TensorType::Int64
                    | TensorType::Int32
                    | TensorType::Int16
                    | TensorType::Int8
                    | TensorType::Uint8
                    | TensorType::Uint16
                    | TensorType::Uint32
                    | TensorType::Uint64
                    | TensorType::Bool
                    | TensorType::Bytes
            )
        };
        let is_float =
            |t: TensorType| matches!(t, TensorType::Fp32 | TensorType::Fp64 | TensorType::Fp16);
        let named = |explicit: &Option<String>, configured: &Option<String>, flag: &str| {
            explicit
                .as_ref()
                .or(configured.as_ref())
                .map(|name| column_of(name, flag))
                .transpose()
        };
        let mut prediction = named(&options.prediction, &monitor.prediction, "--prediction")?;
        let mut scores = named(&options.scores, &monitor.scores, "--scores")?;
        if scores.is_none() && prediction.is_none() {
            scores = signature
                .outputs
                .iter()
                .find(|o| {
                    is_float(o.data_type)
                        && o.shape.len() == 2
                        && o.shape[1].is_some_and(|c| c >= 2)
                })
                .and_then(|o| table.output(&o.name).cloned());
        }
        if prediction.is_none() {
            prediction = signature
                .outputs
                .iter()
                .find(|o| is_class(o.data_type) && per_instance(&o.shape))
                .and_then(|o| table.output(&o.name).cloned());
        }
        let task = match options.task.or(monitor.task) {
            Some(task) => task,
            None if prediction.is_some() || scores.is_some() => MonitorTask::Classification,
            None => MonitorTask::Regression,
        };
        if task == MonitorTask::Regression && prediction.is_none() {
            prediction = signature
                .outputs
                .iter()
                .find(|o| is_float(o.data_type) && per_instance(&o.shape))
                .and_then(|o| table.output(&o.name).cloned());
        }
        if prediction.is_none() && scores.is_none() {
            return Err(EvalError::Invalid(format!(
                "cannot tell which output of model '{}' (signature '{}') is its prediction: name it with --prediction (or `prediction` under [monitor] in config.toml)",
                table.model.name(),
                signature.name
            )));
        }
        if task == MonitorTask::Regression && prediction.is_none() {
            return Err(EvalError::Invalid(format!(
                "model '{}' has no output with one number per instance to evaluate as a regression: name it with --prediction",
                table.model.name()
            )));
        }
        let width = scores
            .as_ref()
            .and_then(|s| spec_of(&s.tensor))
            .and_then(|spec| spec.shape.get(1).copied().flatten());
        let class_labels = match scores
            .as_ref()
            .and_then(|s| signature.class_maps.get(&s.tensor))
        {
            Some(labels) => labels.clone(),
            None => table.model.config().class_labels.clone(),
        };
        Ok(Target {
            task,
            classes: ClassTable::new(&class_labels, width),
            scores: scores.map(|s| (s, width)),
            prediction,
            min_labelled: options
                .min_labelled
                .or(monitor.min_labelled)
                .unwrap_or(DEFAULT_MIN_LABELLED),
        })
    }
}

/// Which drift test each column gets: the options' (the command line's) first, then the
/// column's `[monitor.drift]`, then the model's `[monitor]`; none means Evidently's choice.
#[derive(Debug, Clone, Default)]
struct DriftTests {
    /// From the options.
    forced: (Option<Method>, Option<f64>),
    /// `[monitor.drift]`, by column.
    columns: HashMap<String, (Option<Method>, Option<f64>)>,
    /// `[monitor] drift_method`, `drift_threshold`.
    model: (Option<Method>, Option<f64>),
}

impl DriftTests {
    fn new(options: &EvalOptions, monitor: &MonitorConfig) -> Result<DriftTests, EvalError> {
        let parse = |name: &Option<String>, place: &str| {
            name.as_deref()
                .map(|n| {
                    Method::parse(n).ok_or_else(|| {
                        let known: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
                        EvalError::Invalid(format!(
                            "{place} = \"{n}\" in config.toml of model '{}': expected one of {}",
                            options.model,
                            known.join(", ")
                        ))
                    })
                })
                .transpose()
        };
        let columns = monitor
            .drift
            .iter()
            .map(|(column, c)| {
                let place = format!("[monitor.drift] \"{column}\".method");
                Ok((column.clone(), (parse(&c.method, &place)?, c.threshold)))
            })
            .collect::<Result<_, EvalError>>()?;
        Ok(DriftTests {
            forced: (options.drift_method, options.drift_threshold),
            columns,
            model: (
                parse(&monitor.drift_method, "[monitor] drift_method")?,
                monitor.drift_threshold,
            ),
        })
    }

    fn of(&self, column: &str) -> (Option<Method>, Option<f64>) {
        let (method, threshold) = self.columns.get(column).copied().unwrap_or_default();
        (
            self.forced.0.or(method).or(self.model.0),
            self.forced.1.or(threshold).or(self.model.1),
        )
    }
}

/// Quotes an identifier for SQL.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The open windows, one per version and slice, and the reports of the closed ones.
struct Windows {
    spec: WindowSpec,
    target: Target,
    references: References,
    tensors: Vec<TensorColumn>,
    drift_tests: DriftTests,
    histograms: bool,
    open: HashMap<(u64, Option<String>), OpenWindow>,
    closed: Vec<WindowReport>,
}

struct OpenWindow {
    start_us: i64,
    last_us: i64,
    rows: u64,
    unusable_labels: u64,
    accumulator: Accumulator,
    /// The version's reference and this window's values of its columns.
    drift: Option<(Arc<Profile>, TensorCollectors)>,
}

enum Accumulator {
    /// The labelled rows, and every row's scores for the estimate.
    Classification(ClassificationAccumulator, ConfidenceEstimate),
    Regression(RegressionAccumulator),
}

impl Accumulator {
    fn labelled(&self) -> usize {
        match self {
            Accumulator::Classification(a, _) => a.len(),
            Accumulator::Regression(a) => a.len(),
        }
    }
}

/// One batch's columns, cast to the types the windows read.
struct Columns {
    ts: Int64Array,
    version: UInt64Array,
    slice: Option<StringArray>,
    prediction: Prediction,
    scores: Option<ListArray>,
    label: StringArray,
    label_value: Float64Array,
}

enum Prediction {
    None,
    Id(Int64Array),
    Name(StringArray),
    Value(Float64Array),
}

impl Columns {
    fn of(batch: &RecordBatch, target: &Target) -> Result<Columns, EvalError> {
        let column = |i: usize| batch.column(i);
        let ts = cast_to(column(0), &DataType::Int64)?.as_primitive().clone();
        let version = cast_to(column(1), &DataType::UInt64)?
            .as_primitive()
            .clone();
        let slice = match column(2).data_type() {
            DataType::Null => None,
            _ => Some(
                cast_to(column(2), &DataType::Utf8)?
                    .as_string::<i32>()
                    .clone(),
            ),
        };
        let prediction = match (column(3).data_type(), target.task) {
            (DataType::Null, _) => Prediction::None,
            (_, MonitorTask::Regression) => Prediction::Value(
                cast_to(column(3), &DataType::Float64)?
                    .as_primitive()
                    .clone(),
            ),
            (DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View, _) => Prediction::Name(
                cast_to(column(3), &DataType::Utf8)?
                    .as_string::<i32>()
                    .clone(),
            ),
            _ => Prediction::Id(cast_to(column(3), &DataType::Int64)?.as_primitive().clone()),
        };
        let scores = match column(4).data_type() {
            DataType::Null => None,
            _ => {
                let list = DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)));
                Some(cast_to(column(4), &list)?.as_list::<i32>().clone())
            }
        };
        Ok(Columns {
            ts,
            version,
            slice,
            prediction,
            scores,
            label: cast_to(column(5), &DataType::Utf8)?
                .as_string::<i32>()
                .clone(),
            label_value: cast_to(column(6), &DataType::Float64)?
                .as_primitive()
                .clone(),
        })
    }

    fn scores(&self, row: usize) -> Option<&[f64]> {
        let list = self.scores.as_ref()?;
        if list.is_null(row) {
            return None;
        }
        let offsets = list.value_offsets();
        let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
        let values = list.values().as_primitive::<Float64Type>();
        values.values().get(start..end)
    }
}

impl Windows {
    fn new(
        options: &EvalOptions,
        target: &Target,
        references: References,
        tensors: Vec<TensorColumn>,
        drift_tests: DriftTests,
    ) -> Windows {
        Windows {
            spec: options.window,
            target: target.clone(),
            references,
            tensors,
            drift_tests,
            histograms: options.histograms,
            open: HashMap::new(),
            closed: Vec::new(),
        }
    }

    fn add(&mut self, batch: &RecordBatch) -> Result<(), EvalError> {
        let columns = Columns::of(batch, &self.target)?;
        let tensors = prepare_tensors(batch)?;
        for row in 0..batch.num_rows() {
            let ts = columns.ts.value(row);
            let slice = columns.slice.as_ref().map(|s| {
                if s.is_null(row) {
                    "null".to_owned()
                } else {
                    s.value(row).to_owned()
                }
            });
            let group = (columns.version.value(row), slice);
            let closes = self.open.get(&group).is_some_and(|w| match self.spec {
                WindowSpec::Time { .. } => self.spec.time_window_start(ts) != Some(w.start_us),
                WindowSpec::Rows(n) => w.rows >= n,
            });
            if closes && let Some(window) = self.open.remove(&group) {
                self.close(&group, window);
            }
            if !self.open.contains_key(&group) {
                let window = self.open_window(group.0, ts)?;
                self.open.insert(group.clone(), window);
            }
            let Some(window) = self.open.get_mut(&group) else {
                continue;
            };
            window.rows += 1;
            window.last_us = ts;
            if let Some((reference, collectors)) = &mut window.drift {
                collectors.add_row(&tensors, row, Some(&reference.columns));
            }
            let label = (!columns.label.is_null(row)).then(|| {
                let value =
                    (!columns.label_value.is_null(row)).then(|| columns.label_value.value(row));
                (columns.label.value(row), value)
            });
            let classes = &mut self.target.classes;
            match &mut window.accumulator {
                Accumulator::Regression(acc) => match (&columns.prediction, label) {
                    (_, None) => {}
                    (Prediction::Value(p), Some((_, Some(truth)))) if !p.is_null(row) => {
                        acc.push(truth, p.value(row))
                    }
                    _ => window.unusable_labels += 1,
                },
                Accumulator::Classification(acc, estimate) => {
                    let scores = columns.scores(row);
                    let predicted = match &columns.prediction {
                        Prediction::Id(p) if !p.is_null(row) => {
                            Some(classes.predicted_id(p.value(row)))
                        }
                        Prediction::Name(p) if !p.is_null(row) => {
                            Some(classes.predicted_name(p.value(row)))
                        }
                        Prediction::None => scores.map(|s| argmax(s).0),
                        _ => None,
                    };
                    if let (Some(predicted), Some(scores)) = (predicted, scores) {
                        estimate.push(predicted, scores);
                    }
                    match (predicted, label) {
                        (_, None) => {}
                        (Some(predicted), Some((text, value))) => {
                            let truth = classes.label(text, value);
                            acc.push(truth, predicted, scores);
                        }
                        (None, Some(_)) => window.unusable_labels += 1,
                    }
                }
            }
        }
        Ok(())
    }

    fn open_window(&mut self, version: u64, ts: i64) -> Result<OpenWindow, EvalError> {
        let drift = self.references.of(version)?.map(|reference| {
            let collectors =
                TensorCollectors::new(&self.tensors, Some(&reference.columns), WINDOW_SAMPLE);
            (reference, collectors)
        });
        Ok(OpenWindow {
            start_us: match self.spec {
                WindowSpec::Time { .. } => self.spec.time_window_start(ts).unwrap_or(ts),
                WindowSpec::Rows(_) => ts,
            },
            last_us: ts,
            rows: 0,
            unusable_labels: 0,
            accumulator: match self.target.task {
                MonitorTask::Classification => Accumulator::Classification(
                    ClassificationAccumulator::default(),
                    ConfidenceEstimate::default(),
                ),
                MonitorTask::Regression => {
                    Accumulator::Regression(RegressionAccumulator::default())
                }
            },
            drift,
        })
    }

    fn close(&mut self, group: &(u64, Option<String>), window: OpenWindow) {
        let labelled = window.accumulator.labelled() as u64;
        let values = if (labelled as usize) < self.target.min_labelled || labelled == 0 {
            MetricValues::Insufficient {
                insufficient_data: InsufficientData {
                    labelled,
                    required: self.target.min_labelled,
                },
            }
        } else {
            match &window.accumulator {
                Accumulator::Classification(acc, _) => {
                    MetricValues::Classification(acc.finish(&self.target.classes))
                }
                Accumulator::Regression(acc) => MetricValues::Regression(acc.finish()),
            }
        };
        let end_us = match self.spec {
            WindowSpec::Time { micros } => window.start_us + micros,
            WindowSpec::Rows(_) => window.last_us,
        };
        let (drift, drift_share, data_quality, histograms) = match window.drift {
            Some((reference, collectors)) => {
                let current = collectors.finish();
                let drift = self.drift(&reference, &current);
                let share = (!drift.is_empty()).then(|| {
                    drift.values().filter(|d| d.drifted).count() as f64 / drift.len() as f64
                });
                let histograms = if self.histograms {
                    current
                        .iter()
                        .filter(|(name, _, _)| drift.contains_key(name))
                        .filter_map(|(name, window, _)| {
                            let known = reference.columns.get(name)?;
                            Some((name.clone(), Histogram::of(known, window)))
                        })
                        .collect()
                } else {
                    BTreeMap::new()
                };
                (drift, share, violations(&current), histograms)
            }
            None => (BTreeMap::new(), None, BTreeMap::new(), BTreeMap::new()),
        };
        self.closed.push(WindowReport {
            window_start: rfc3339(window.start_us),
            window_end: rfc3339(end_us),
            version: group.0,
            slice: group.1.clone(),
            rows: window.rows,
            labelled,
            label_coverage: labelled as f64 / window.rows as f64,
            unusable_labels: window.unusable_labels,
            metrics: WindowMetrics {
                task: self.target.task,
                values,
            },
            estimated: match &window.accumulator {
                Accumulator::Classification(_, estimate) => estimate.finish(),
                Accumulator::Regression(_) => BTreeMap::new(),
            },
            drift,
            drift_share,
            data_quality,
            histograms,
            alerts: Vec::new(),
            start_us: window.start_us,
        });
    }

    /// Each column's test against the reference: the configured method where it applies to
    /// the column, else Evidently's choice. Columns with no values on either side are left out.
    fn drift(
        &self,
        reference: &Profile,
        current: &[(String, ColumnProfile, ColumnQuality)],
    ) -> BTreeMap<String, DriftResult> {
        let mut results = BTreeMap::new();
        for (name, window, _) in current {
            let Some(known) = reference.columns.get(name) else {
                continue;
            };
            if window.count == 0 || known.count == 0 {
                continue;
            }
            let (method, threshold) = self.drift_tests.of(name);
            let result = known.with_sample(|r| {
                window.with_sample(|c| match method.map(|m| drift::test(m, r, c, threshold)) {
                    Some(Ok(result)) => Ok(result),
                    _ => drift::test(drift::auto_method(r, c), r, c, threshold),
                })
            });
            match result {
                Ok(result) => {
                    results.insert(name.clone(), result);
                }
                Err(e) => {
                    tracing::warn!(column = %name, error = %e, "no drift test for this column")
                }
            }
        }
        results
    }

    fn finish(mut self) -> Vec<WindowReport> {
        let open: Vec<_> = self.open.drain().collect();
        for (group, window) in open {
            self.close(&group, window);
        }
        self.closed.sort_by(|a, b| {
            (a.start_us, a.version, &a.slice).cmp(&(b.start_us, b.version, &b.slice))
        });
        self.closed
    }
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| us.to_string())
}
