//! `serval eval`: windowed model-quality metrics over the prediction log.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serval_batch::ModelCatalog;
use serval_core::config::MonitorTask;
use serval_eval::deliver::{Delivery, Retry};
use serval_eval::drift::Method;
use serval_eval::{
    EvalOptions, MetricValues, Monitor, MonitorOptions, Reference, WindowReport, WindowSpec,
};

use crate::RepositoryArgs;

/// The log `serval eval` and `serval eval watch` read.
#[derive(Args)]
pub struct PredictionLogArg {
    /// The prediction log (`serval serve --prediction-log DIR`): a directory or object-store URL.
    #[arg(
        long = "prediction-log",
        value_name = "DIR",
        env = "SERVAL_PREDICTION_LOG"
    )]
    prediction_log: String,
}

/// Arguments of `serval eval watch`.
#[derive(Args)]
pub struct WatchArgs {
    #[command(flatten)]
    repository: RepositoryArgs,
    #[command(flatten)]
    log: PredictionLogArg,
    #[command(flatten)]
    monitor: MonitorArgs,
    /// Evaluate once and exit (for cron, CI and tests).
    #[arg(long)]
    once: bool,
}

/// How continuous evaluation runs, shared with `serval serve --evaluate-every`.
#[derive(Args)]
pub struct MonitorArgs {
    /// Time between evaluations (30s, 5m, 1h; `serval eval watch`: 5m by default, `serval serve`:
    /// no evaluation without it).
    #[arg(long = "evaluate-every", value_name = "DURATION")]
    pub every: Option<String>,
    /// The windows evaluated (a length aligned to UTC, or Nrows).
    #[arg(long = "evaluate-window", value_name = "WINDOW", default_value = "1d")]
    window: String,
    /// Only these models (default: every model of the repository).
    #[arg(long = "evaluate-model", value_name = "MODEL")]
    models: Vec<String>,
    /// POST every alert here (besides each model's `webhooks` under [monitor]); retried with
    /// exponential backoff and jitter.
    #[arg(long, value_name = "URL")]
    webhook: Vec<String>,
    /// Key of the HMAC-SHA256 signature sent in `x-serval-signature-256: sha256=<hex>`.
    #[arg(long, env = "SERVAL_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Attempts per webhook, the first included.
    #[arg(long, default_value_t = 5)]
    webhook_attempts: u32,
    /// Names this evaluator's alert files (default: hostname and start time).
    #[arg(long = "evaluator-id")]
    evaluator_id: Option<String>,
}

impl MonitorArgs {
    /// The interval between polls.
    pub fn interval(&self) -> anyhow::Result<Duration> {
        let every = self.every.as_deref().unwrap_or("5m");
        match every.parse::<WindowSpec>() {
            Ok(WindowSpec::Time { micros }) => Ok(Duration::from_micros(micros as u64)),
            _ => bail!("--evaluate-every {every}: expected a duration like 30s, 5m or 1h"),
        }
    }

    /// Polls on a thread of its own every interval, for the life of the process (`serval
    /// serve`): the first poll at once.
    pub fn spawn(
        &self,
        repository: serval_core::ModelRepository,
        location: &str,
    ) -> anyhow::Result<()> {
        let interval = self.interval()?;
        let mut monitor = self.monitor(repository, location)?;
        std::thread::Builder::new()
            .name("serval-evaluate".into())
            .spawn(move || {
                loop {
                    poll_and_report(&mut monitor);
                    std::thread::sleep(interval);
                }
            })?;
        Ok(())
    }

    /// A monitor of `repository`'s models over the log at `location`.
    pub fn monitor(
        &self,
        repository: serval_core::ModelRepository,
        location: &str,
    ) -> anyhow::Result<Monitor> {
        let window: WindowSpec = self.window.parse().map_err(|e: serval_eval::EvalError| {
            anyhow::anyhow!("{}", e.to_string().replace("--window", "--evaluate-window"))
        })?;
        let options = MonitorOptions {
            models: self.models.clone(),
            window,
            delivery: Delivery {
                webhooks: self.webhook.clone(),
                secret: self.webhook_secret.as_ref().map(|s| s.as_bytes().to_vec()),
                retry: Retry {
                    attempts: self.webhook_attempts.max(1),
                    ..Delivery::default().retry
                },
            },
            replica_id: self
                .evaluator_id
                .clone()
                .unwrap_or_else(|| format!("eval-{}", serval_log::default_replica_id())),
            memory_limit: Some(1024 * 1024 * 1024),
        };
        let root = serval_log::LogRoot::parse(location)?;
        Ok(Monitor::new(
            Arc::new(ModelCatalog::new(repository)),
            root,
            options,
        )?)
    }
}

/// One poll: each alert fired as a JSON line on stdout (with its deliveries), problems on
/// stderr. Returns how many models could not be evaluated.
pub fn poll_and_report(monitor: &mut Monitor) -> usize {
    let now = chrono::Utc::now().timestamp_micros();
    let poll = monitor.poll(now);
    for (model, error) in &poll.errors {
        tracing::error!(model, error, "cannot evaluate");
    }
    let mut out = std::io::stdout().lock();
    for (alert, delivered) in &poll.fired {
        let line = serde_json::json!({"alert": alert, "delivery": delivered});
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
    tracing::info!(
        windows = poll.windows,
        fired = poll.fired.len(),
        "evaluated"
    );
    poll.errors.len()
}

pub fn run_watch(args: WatchArgs) -> anyhow::Result<()> {
    let interval = args.monitor.interval()?;
    let mut monitor = args
        .monitor
        .monitor(args.repository.open()?, &args.log.prediction_log)?;
    loop {
        let failed = poll_and_report(&mut monitor);
        if args.once {
            // A watcher keeps going past a model it cannot evaluate; a single run (cron, CI)
            // must not pass when one was skipped.
            anyhow::ensure!(
                failed == 0,
                "{failed} model(s) could not be evaluated (see above)"
            );
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

/// Arguments of `serval eval`.
#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    repository: RepositoryArgs,
    #[command(flatten)]
    log: PredictionLogArg,
    /// The model whose logged predictions are evaluated.
    #[arg(long)]
    model: String,
    /// Only this version (default: every version, each in windows of its own).
    #[arg(long)]
    version: Option<u64>,
    /// The signature whose records are evaluated (default: serving_default).
    #[arg(long)]
    signature: Option<String>,
    /// Window: a length aligned to UTC (30s, 15m, 1h, 1d: midnight to midnight) or a count of
    /// records in time order (5000rows).
    #[arg(long, default_value = "1d")]
    window: String,
    /// Only records at or after this time (RFC 3339, or YYYY-MM-DD for midnight UTC).
    #[arg(long)]
    from: Option<String>,
    /// Only records before this time (RFC 3339, or YYYY-MM-DD).
    #[arg(long)]
    to: Option<String>,
    /// Split every window by this column of the model's log table (an input, an output, or a
    /// record column such as `source` or `protocol`).
    #[arg(long)]
    slice: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Fewer labelled rows in a window give no metrics, only the count (default: `min_labelled`
    /// under [monitor] in config.toml, else 30).
    #[arg(long)]
    min_labelled: Option<usize>,
    /// The output holding the predicted class or value (default: inferred from the signature).
    #[arg(long)]
    prediction: Option<String>,
    /// The output holding per-class scores (default: inferred from the signature).
    #[arg(long)]
    scores: Option<String>,
    /// What the model predicts (default: inferred from its outputs).
    #[arg(long, value_enum)]
    task: Option<TaskArg>,
    /// Compare windows with the model's records from this time on (RFC 3339 or a date) instead
    /// of each version's stored profile (`serval profile`).
    #[arg(long)]
    reference_from: Option<String>,
    /// End (exclusive) of the reference records (with --reference-from, or alone: everything
    /// before it).
    #[arg(long)]
    reference_to: Option<String>,
    /// Drift test for every column (ks, chisquare, z, wasserstein, psi, jensenshannon, kl_div,
    /// hellinger; default: Evidently's choice by column type and reference size). Columns it
    /// does not apply to keep the default choice.
    #[arg(long)]
    drift_method: Option<String>,
    /// Drift threshold (default: the method's: p-value 0.05, distances 0.1).
    #[arg(long)]
    drift_threshold: Option<f64>,
    /// MiB the query may hold (sorting records by time, joining labels) before it spills to
    /// temporary files.
    #[arg(long, default_value_t = 1024)]
    memory_limit_mib: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Clone, Copy, ValueEnum)]
enum TaskArg {
    Classification,
    Regression,
}

/// `--from`/`--to`: RFC 3339, or a date meaning its midnight UTC.
fn parse_time(flag: &str, text: &str) -> anyhow::Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_micros());
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_micros())
        .with_context(|| {
            format!(
                "{flag} {text}: expected RFC 3339 (2026-03-01T12:00:00Z) or a date (2026-03-01)"
            )
        })
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let window: WindowSpec = args.window.parse()?;
    let options = EvalOptions {
        model: args.model.clone(),
        version: args.version,
        signature: args.signature.clone(),
        window,
        from_us: args
            .from
            .as_deref()
            .map(|t| parse_time("--from", t))
            .transpose()?,
        to_us: args
            .to
            .as_deref()
            .map(|t| parse_time("--to", t))
            .transpose()?,
        slice: args.slice.clone(),
        min_labelled: args.min_labelled,
        prediction: args.prediction.clone(),
        scores: args.scores.clone(),
        task: args.task.map(|t| match t {
            TaskArg::Classification => MonitorTask::Classification,
            TaskArg::Regression => MonitorTask::Regression,
        }),
        memory_limit: Some(args.memory_limit_mib.saturating_mul(1024 * 1024)),
        reference: match (&args.reference_from, &args.reference_to) {
            (None, None) => Reference::Stored,
            (from, to) => Reference::Log {
                from_us: from
                    .as_deref()
                    .map(|t| parse_time("--reference-from", t))
                    .transpose()?,
                to_us: to
                    .as_deref()
                    .map(|t| parse_time("--reference-to", t))
                    .transpose()?,
            },
        },
        drift_method: args
            .drift_method
            .as_deref()
            .map(|name| {
                Method::parse(name).with_context(|| {
                    let known: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
                    format!(
                        "--drift-method {name}: expected one of {}",
                        known.join(", ")
                    )
                })
            })
            .transpose()?,
        drift_threshold: args.drift_threshold,
        histograms: false,
    };
    if let (Some(from), Some(to)) = (options.from_us, options.to_us)
        && from >= to
    {
        bail!(
            "--from {} is not before --to {}",
            args.from.unwrap_or_default(),
            args.to.unwrap_or_default()
        );
    }
    let catalog = Arc::new(ModelCatalog::new(args.repository.open()?));
    let root = serval_log::LogRoot::parse(&args.log.prediction_log)?;
    let reports =
        crate::batch::runtime()?.block_on(serval_eval::evaluate(catalog, &root, &options))?;
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &reports)?;
            writeln!(out)?;
        }
        Format::Csv => write_csv(&mut out, &reports)?,
        Format::Table => write_table(&mut out, &reports)?,
    }
    Ok(())
}

/// One row per window, the JSON's nested objects flattened to dotted column names (lists as
/// JSON text).
fn write_csv(out: &mut impl Write, reports: &[WindowReport]) -> anyhow::Result<()> {
    fn flatten(prefix: &str, value: &serde_json::Value, row: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    let name = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    flatten(&name, value, row);
                }
            }
            serde_json::Value::String(s) => row.push((prefix.to_owned(), s.clone())),
            serde_json::Value::Null => row.push((prefix.to_owned(), String::new())),
            other => row.push((prefix.to_owned(), other.to_string())),
        }
    }
    let rows: Vec<Vec<(String, String)>> = reports
        .iter()
        .map(|report| {
            let mut row = Vec::new();
            flatten("", &serde_json::to_value(report)?, &mut row);
            Ok(row)
        })
        .collect::<anyhow::Result<_>>()?;
    // The window's identity first, then everything else (serde_json's maps are sorted).
    let mut header: Vec<&str> = vec![
        "window_start",
        "window_end",
        "version",
        "slice",
        "rows",
        "labelled",
        "label_coverage",
    ];
    header.retain(|name| rows.iter().flatten().any(|(n, _)| n == name));
    for (name, _) in rows.iter().flatten() {
        if !header.contains(&name.as_str()) {
            header.push(name);
        }
    }
    let mut writer = csv::Writer::from_writer(out);
    writer.write_record(&header)?;
    for row in &rows {
        writer.write_record(header.iter().map(|name| {
            row.iter()
                .find(|(n, _)| n == name)
                .map_or("", |(_, v)| v.as_str())
        }))?;
    }
    writer.flush()?;
    Ok(())
}

/// A line per window with the headline numbers.
fn write_table(out: &mut impl Write, reports: &[WindowReport]) -> anyhow::Result<()> {
    if reports.is_empty() {
        writeln!(out, "no logged predictions match")?;
        return Ok(());
    }
    let sliced = reports.iter().any(|r| r.slice.is_some());
    write!(
        out,
        "{:<22} {:<22} {:>7}",
        "window_start", "window_end", "version"
    )?;
    if sliced {
        write!(out, " {:<16}", "slice")?;
    }
    writeln!(
        out,
        " {:>8} {:>8} {:>8}  metrics",
        "rows", "labelled", "coverage"
    )?;
    for r in reports {
        write!(
            out,
            "{:<22} {:<22} {:>7}",
            r.window_start, r.window_end, r.version
        )?;
        if sliced {
            write!(out, " {:<16}", r.slice.as_deref().unwrap_or(""))?;
        }
        let number = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.4}"));
        let metrics = match &r.metrics.values {
            MetricValues::Classification(m) => format!(
                "accuracy {} macro_f1 {} roc_auc {} log_loss {}",
                number(Some(m.accuracy)),
                number(Some(m.macro_f1)),
                number(m.roc_auc),
                number(m.log_loss)
            ),
            MetricValues::Regression(m) => format!(
                "mae {} rmse {} mape {} r2 {}",
                number(Some(m.mae)),
                number(Some(m.rmse)),
                number(Some(m.mape)),
                number(m.r2)
            ),
            MetricValues::Insufficient { insufficient_data } => format!(
                "insufficient data ({} of {} labelled rows)",
                insufficient_data.labelled, insufficient_data.required
            ),
        };
        writeln!(
            out,
            " {:>8} {:>8} {:>8.3}  {metrics}",
            r.rows, r.labelled, r.label_coverage
        )?;
    }
    Ok(())
}
