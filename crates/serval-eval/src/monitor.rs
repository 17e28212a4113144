//! Continuous evaluation (`serval eval watch`, `serval serve --evaluate-every`): every poll
//! evaluates each model's newest windows, publishes them as Prometheus gauges, and delivers and
//! records each alert once: an alert already in the log's `alerts` table (from an earlier poll, a
//! process before a restart, or another evaluator) is not fired again.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::array::{
    ArrayRef, Float64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
    UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, TimestampMicrosecondType, UInt64Type};
use futures::TryStreamExt;
use serval_batch::ModelCatalog;
use serval_log::LogRoot;

use crate::deliver::{Delivered, Delivery};
use crate::evaluate::{EvalOptions, WindowReport, evaluate};
use crate::rules::Alert;
use crate::{EvalError, WindowSpec};

/// What a monitor evaluates and where alerts go.
#[derive(Debug, Clone)]
pub struct MonitorOptions {
    /// The models (default: every model of the repository).
    pub models: Vec<String>,
    /// The windows evaluated.
    pub window: WindowSpec,
    /// Webhooks, signing and retries.
    pub delivery: Delivery,
    /// Names this evaluator's alert files (so replicas never overwrite each other's).
    pub replica_id: String,
    /// Bytes each evaluation may hold before it spills.
    pub memory_limit: Option<usize>,
}

/// One poll's outcome.
#[derive(Debug, Default)]
pub struct Poll {
    /// Windows evaluated, over every model.
    pub windows: usize,
    /// Alerts fired for the first time, with what became of their deliveries.
    pub fired: Vec<(Alert, Delivered)>,
    /// Models that could not be evaluated, with why.
    pub errors: Vec<(String, String)>,
}

/// Evaluates the newest windows of a repository's models over one log, poll after poll.
pub struct Monitor {
    catalog: Arc<ModelCatalog>,
    root: LogRoot,
    options: MonitorOptions,
    runtime: tokio::runtime::Runtime,
}

/// What makes an alert the same alert: rule, model, version, slice and window.
type AlertKey = (String, String, u64, Option<String>, i64);

impl Monitor {
    /// A monitor on its own single-threaded runtime (call [`Monitor::poll`] from a thread of its
    /// own, never from inside an async runtime).
    pub fn new(
        catalog: Arc<ModelCatalog>,
        root: LogRoot,
        options: MonitorOptions,
    ) -> Result<Monitor, EvalError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| EvalError::Io("an evaluation runtime".into(), e))?;
        Ok(Monitor {
            catalog,
            root,
            options,
            runtime,
        })
    }

    /// Evaluates every model's windows from the one holding `now_us` back as far as its rules
    /// look (a rule over N windows needs N), fires the alerts not yet recorded, and records
    /// them.
    pub fn poll(&mut self, now_us: i64) -> Poll {
        let mut poll = Poll::default();
        let models = if self.options.models.is_empty() {
            self.catalog.repository().model_names().unwrap_or_default()
        } else {
            self.options.models.clone()
        };
        let recorded = match self
            .runtime
            .block_on(recorded_alerts(&self.catalog, &self.root))
        {
            Ok(recorded) => recorded,
            Err(e) => {
                // Without the record every alert would fire again: skip this poll.
                poll.errors.push(("alerts".into(), e.to_string()));
                return poll;
            }
        };
        for model in models {
            match self.poll_model(&model, now_us, &recorded) {
                Ok((windows, fired)) => {
                    poll.windows += windows;
                    poll.fired.extend(fired);
                }
                Err(e) => poll.errors.push((model, e.to_string())),
            }
        }
        poll
    }

    fn poll_model(
        &self,
        model: &str,
        now_us: i64,
        recorded: &HashSet<AlertKey>,
    ) -> Result<(usize, Vec<(Alert, Delivered)>), EvalError> {
        let config = self.catalog.repository().config(model)?;
        let monitor = &config.monitor;
        let lookback = monitor
            .rules
            .iter()
            .map(|r| r.windows.unwrap_or(1).max(r.falling.map_or(0, |n| n + 1)))
            .max()
            .unwrap_or(1);
        let from_us = match self.options.window {
            WindowSpec::Time { micros } => self
                .options
                .window
                .time_window_start(now_us)
                .map(|start| start - (lookback as i64 - 1) * micros),
            WindowSpec::Rows(_) => None,
        };
        let options = EvalOptions {
            from_us,
            memory_limit: self.options.memory_limit,
            ..EvalOptions::new(model, self.options.window)
        };
        let reports =
            self.runtime
                .block_on(evaluate(self.catalog.clone(), &self.root, &options))?;
        publish_gauges(model, &reports);
        let mut fired = Vec::new();
        for alert in reports.iter().flat_map(|r| &r.alerts) {
            if recorded.contains(&key_of(alert)) {
                continue;
            }
            let body = serde_json::to_vec(alert)
                .map_err(|e| EvalError::Invalid(format!("cannot encode an alert: {e}")))?;
            let delivered =
                self.options
                    .delivery
                    .deliver(&body, &monitor.webhooks, &monitor.on_alert);
            tracing::warn!(model, rule = %alert.rule, version = alert.version, window = %alert.window_start, value = alert.value, "alert");
            fired.push((alert.clone(), delivered));
        }
        if !fired.is_empty() {
            self.record(model, now_us, &fired)?;
        }
        Ok((reports.len(), fired))
    }

    /// Appends the alerts to the `alerts` table: one file per model and poll.
    fn record(
        &self,
        model: &str,
        now_us: i64,
        fired: &[(Alert, Delivered)],
    ) -> Result<(), EvalError> {
        let batch = alerts_batch(fired, now_us)?;
        let date = chrono::DateTime::from_timestamp_micros(now_us)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        let stem = format!("{}-{now_us}", self.options.replica_id);
        serval_log::write_table_file(
            &self.root,
            serval_log::ALERTS_DIR,
            model,
            &date,
            &stem,
            batch,
        )
        .map_err(|e| EvalError::Invalid(format!("cannot record alerts of '{model}': {e}")))
    }
}

fn key_of(alert: &Alert) -> AlertKey {
    (
        alert.rule.clone(),
        alert.model.clone(),
        alert.version,
        alert.slice.clone(),
        micros(&alert.window_start),
    )
}

fn micros(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).map_or(i64::MIN, |t| t.timestamp_micros())
}

/// The alerts already in the log's `alerts` table.
async fn recorded_alerts(
    catalog: &Arc<ModelCatalog>,
    root: &LogRoot,
) -> Result<HashSet<AlertKey>, EvalError> {
    let (ctx, _) = serval_batch::batch_session(catalog.clone(), Default::default());
    serval_batch::prediction_log::register_prediction_log(&ctx, root).await?;
    let frame = ctx
        .sql("SELECT rule, model, version, slice, window_start FROM alerts")
        .await?;
    let mut stream = frame.execute_stream().await?;
    let mut recorded = HashSet::new();
    while let Some(batch) = stream.try_next().await? {
        let text = |i: usize| crate::collect::cast_to(batch.column(i), &DataType::Utf8);
        let (rule, model, slice) = (text(0)?, text(1)?, text(3)?);
        let (rule, model, slice) = (
            rule.as_string::<i32>(),
            model.as_string::<i32>(),
            slice.as_string::<i32>(),
        );
        let version = batch.column(2).as_primitive::<UInt64Type>();
        let start = batch.column(4).as_primitive::<TimestampMicrosecondType>();
        for row in 0..batch.num_rows() {
            recorded.insert((
                rule.value(row).to_owned(),
                model.value(row).to_owned(),
                version.value(row),
                (!slice.is_null(row)).then(|| slice.value(row).to_owned()),
                start.value(row),
            ));
        }
    }
    Ok(recorded)
}

fn alerts_batch(fired: &[(Alert, Delivered)], now_us: i64) -> Result<RecordBatch, EvalError> {
    let n = fired.len();
    let timestamp = || TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let count = || UInt64Builder::with_capacity(n);
    let number = || Float64Builder::with_capacity(n);
    let (mut version, mut windows, mut rows) = (count(), count(), count());
    let (mut start, mut end, mut fired_at) = (timestamp(), timestamp(), timestamp());
    let (mut value, mut threshold, mut coverage) = (number(), number(), number());
    let [
        mut slice,
        mut rule,
        mut metric,
        mut condition,
        mut severity,
        mut delivery,
    ] = std::array::from_fn(|_| StringBuilder::new());
    for (alert, delivered) in fired {
        version.append_value(alert.version);
        slice.append_option(alert.slice.as_deref());
        start.append_value(micros(&alert.window_start));
        end.append_value(micros(&alert.window_end));
        rule.append_value(&alert.rule);
        metric.append_value(&alert.metric);
        value.append_value(alert.value);
        condition.append_value(alert.condition);
        threshold.append_value(alert.threshold);
        windows.append_value(alert.windows as u64);
        severity.append_value(match alert.severity {
            serval_core::config::Severity::Warning => "warning",
            serval_core::config::Severity::Critical => "critical",
        });
        rows.append_value(alert.rows);
        coverage.append_value(alert.label_coverage);
        fired_at.append_value(now_us);
        delivery.append_value(serde_json::to_string(delivered).unwrap_or_default());
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(version.finish()),
        Arc::new(slice.finish()),
        Arc::new(start.finish()),
        Arc::new(end.finish()),
        Arc::new(rule.finish()),
        Arc::new(metric.finish()),
        Arc::new(value.finish()),
        Arc::new(condition.finish()),
        Arc::new(threshold.finish()),
        Arc::new(windows.finish()),
        Arc::new(severity.finish()),
        Arc::new(rows.finish()),
        Arc::new(coverage.finish()),
        Arc::new(fired_at.finish()),
        Arc::new(delivery.finish()),
    ];
    RecordBatch::try_new(serval_log::alerts_schema(), columns)
        .map_err(|e| EvalError::Invalid(format!("cannot build the alerts table: {e}")))
}

/// Each version's newest window as gauges: `serval_eval_metric{model,version,metric}` (every
/// number of `metrics` and `estimated`, label coverage, rows, drift share) and
/// `serval_drift_value{model,version,feature,method}`.
fn publish_gauges(model: &str, reports: &[WindowReport]) {
    let mut newest: Vec<&WindowReport> = Vec::new();
    for report in reports.iter().filter(|r| r.slice.is_none()) {
        match newest.iter_mut().find(|n| n.version == report.version) {
            Some(known) => *known = report,
            None => newest.push(report),
        }
    }
    for report in newest {
        let version = report.version.to_string();
        let gauge = |metric: String, value: f64| {
            metrics::gauge!("serval_eval_metric", "model" => model.to_owned(), "version" => version.clone(), "metric" => metric).set(value);
        };
        if let Ok(serde_json::Value::Object(values)) = serde_json::to_value(&report.metrics) {
            for (name, value) in values {
                if let Some(v) = value.as_f64() {
                    gauge(name, v);
                }
            }
        }
        for (name, value) in &report.estimated {
            gauge(format!("estimated.{name}"), *value);
        }
        gauge("label_coverage".into(), report.label_coverage);
        gauge("rows".into(), report.rows as f64);
        if let Some(share) = report.drift_share {
            gauge("drift_share".into(), share);
        }
        for (feature, drift) in &report.drift {
            metrics::gauge!("serval_drift_value", "model" => model.to_owned(), "version" => version.clone(), "feature" => feature.clone(), "method" => drift.method.name()).set(drift.value);
        }
    }
}
