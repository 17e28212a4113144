//! `serval batch` and `serval sql`: batch serving on the embedded DataFusion engine.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serval_batch::{
    BatchJob, BatchRun, FileFormat, ModelCatalog, OnError, PredictReport, SessionOptions,
};
use serval_core::config::BackendPreference;

use crate::RepositoryArgs;

/// Arguments of `serval batch`.
#[derive(Args)]
pub struct BatchArgs {
    #[command(flatten)]
    repository: RepositoryArgs,
    /// Model name.
    model: String,
    /// Input: a file, a directory, a glob (`data/*.csv`) or an object-store URL (s3://, gs://, az://).
    #[arg(long, short)]
    input: String,
    /// Output directory or object-store URL; `_SUCCESS` is written there last.
    #[arg(long, short)]
    output: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "parquet")]
    format: Format,
    /// Input format (default: from the input's extension).
    #[arg(long, value_enum)]
    input_format: Option<Format>,
    /// Key column carried to the output (default: the model's key field; minted when absent).
    #[arg(long)]
    key: Option<String>,
    /// Input columns copied to the output besides the key (default: all).
    #[arg(long, value_delimiter = ',')]
    columns: Option<Vec<String>>,
    /// Columns fed to the model, in order (default: the column named like the input, else every
    /// numeric, boolean or list column except the key).
    #[arg(long, value_delimiter = ',')]
    features: Option<Vec<String>>,
    /// Version number or label (default: the model's default, else the highest served).
    #[arg(long)]
    version: Option<String>,
    /// Signature (default: serving_default).
    #[arg(long)]
    signature: Option<String>,
    #[command(flatten)]
    engine: EngineArgs,
    /// Replace an output directory that already holds files.
    #[arg(long)]
    overwrite: bool,
    /// Print the physical plan instead of running.
    #[arg(long)]
    explain: bool,
    /// Also log every predicted row in this prediction log (`source = batch`, the job's id as
    /// request id), as `serval serve --prediction-log` does, for continued evaluation.
    #[arg(long = "prediction-log", value_name = "DIR")]
    prediction_log: Option<String>,
    /// Column holding each row's time for the log (a timestamp, a date or RFC 3339 text), so a
    /// job over history back-tests; default: the job's start.
    #[arg(long, value_name = "COL")]
    time_column: Option<String>,
}

/// Knobs shared by `serval batch`, `serval sql` and `serval profile`.
#[derive(Args)]
pub(crate) struct EngineArgs {
    /// Rows that cannot be predicted: fail the job, skip them, or keep them with null predictions
    /// and the reason in `serval_error`. Skipped and null rows are counted and reported.
    #[arg(long, value_enum, default_value = "fail")]
    on_error: OnErrorArg,
    /// Partitions processed at once (default: cores).
    #[arg(long)]
    partitions: Option<usize>,
    /// Rows per record batch, hence per model call.
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: u64,
    /// Engine for every model, overriding `backend` in their config.toml (default: ONNX Runtime
    /// when its library is found, faster on the large batches of a batch job; else each config's).
    #[arg(long, value_enum)]
    backend: Option<BackendArg>,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Auto,
    Tract,
    Ort,
}

impl EngineArgs {
    pub(crate) fn catalog(&self, repository: &RepositoryArgs) -> anyhow::Result<Arc<ModelCatalog>> {
        let catalog = ModelCatalog::new(repository.open()?);
        let ort_available =
            serval_core::backend::ort_status(repository.ort_library.as_deref()).is_ok();
        Ok(Arc::new(match self.backend {
            // Batch jobs feed thousands of rows per call: ONNX Runtime, when present, measured
            // 1.5-2x tract's throughput there (docs/benchmarks.md).
            None if ort_available => catalog.with_backend(BackendPreference::Ort),
            None => catalog,
            Some(BackendArg::Auto) => catalog.with_backend(BackendPreference::Auto),
            Some(BackendArg::Tract) => catalog.with_backend(BackendPreference::Tract),
            Some(BackendArg::Ort) => catalog.with_backend(BackendPreference::Ort),
        }))
    }

    pub(crate) fn session(&self) -> SessionOptions {
        let defaults = SessionOptions::default();
        SessionOptions {
            partitions: self.partitions.unwrap_or(defaults.partitions),
            batch_size: self.batch_size as usize,
            on_error: match self.on_error {
                OnErrorArg::Fail => OnError::Fail,
                OnErrorArg::Skip => OnError::Skip,
                OnErrorArg::Null => OnError::Null,
            },
            memory_limit: None,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Parquet,
    Csv,
    Jsonl,
}

impl From<Format> for FileFormat {
    fn from(f: Format) -> FileFormat {
        match f {
            Format::Parquet => FileFormat::Parquet,
            Format::Csv => FileFormat::Csv,
            Format::Jsonl => FileFormat::Jsonl,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum OnErrorArg {
    Fail,
    Skip,
    Null,
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub fn run(args: BatchArgs) -> anyhow::Result<()> {
    let catalog = args.engine.catalog(&args.repository)?;
    let job = BatchJob {
        model: args.model,
        version: args.version,
        signature: args.signature,
        input: args.input,
        input_format: args.input_format.map(FileFormat::from),
        output: args.output.clone(),
        format: args.format.into(),
        key: args.key,
        columns: args.columns,
        features: args.features,
        overwrite: args.overwrite,
        session: args.engine.session(),
        prediction_log: match &args.prediction_log {
            Some(dir) => Some(Arc::new(open_batch_log(
                dir,
                args.repository.cache_dir.as_deref(),
            )?)),
            None => None,
        },
        time_column: args.time_column.clone(),
    };
    run_job(catalog, job, args.explain)
}

/// Runs a job (or prints its plan), reporting its counts on stderr; closes its prediction log,
/// so what it logged is rolled and queryable when this returns.
pub(crate) fn run_job(
    catalog: Arc<ModelCatalog>,
    job: BatchJob,
    explain: bool,
) -> anyhow::Result<()> {
    let log = job.prediction_log.clone();
    let output = job.output.clone();
    let result = runtime()?.block_on(async move {
        let run = BatchRun::plan(catalog, job).await?;
        if explain {
            println!("{}", run.explain().await?);
            return Ok(());
        }
        let progress = Progress::start(run.report(), run.expected_rows());
        let clock = Instant::now();
        let result = run.execute().await;
        let report = progress.finish();
        let manifest = result?;
        let seconds = clock.elapsed().as_secs_f64();
        eprintln!(
            "{} rows in, {} rows out, {} failed, {:.2} s ({:.0} rows/s); model {} version {}; {} file(s) in {}",
            manifest.rows_in,
            manifest.rows_out,
            manifest.rows_failed,
            seconds,
            manifest.rows_in as f64 / seconds.max(1e-9),
            manifest.model,
            manifest.version,
            manifest.files.len(),
            output,
        );
        for reason in report.first_errors() {
            eprintln!("  failed row: {reason}");
        }
        Ok(())
    });
    if let Some(log) = log {
        // Closing writes out and rolls what the job logged: queryable once this returns.
        log.close();
        let stats = log.stats();
        let rolled = stats.rolled.load(std::sync::atomic::Ordering::Relaxed);
        let dropped = stats.dropped.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("{rolled} predictions logged, {dropped} could not be");
        anyhow::ensure!(dropped == 0, "{dropped} predictions could not be logged");
    }
    result
}

/// Record batches a batch job's prediction log queues before the job waits for its writer.
const BATCH_LOG_QUEUE: usize = 16;

/// A prediction log for one batch job: its own write-ahead folder, like a replica's.
pub(crate) fn open_batch_log(
    dir: &str,
    cache_dir: Option<&std::path::Path>,
) -> anyhow::Result<serval_log::PredictionLog> {
    let mut options = crate::log_options(dir, None, cache_dir)?;
    options.replica_id = format!("batch-{}", serval_log::default_replica_id());
    // A batch job's queue entries are whole record batches (thousands of rows with their
    // tensors), and the job waits when the queue is full: a few keep the writer busy, while the
    // online default of 10,000 held up to 17 GB of a 10 M-row job.
    options.queue_capacity = BATCH_LOG_QUEUE;
    Ok(serval_log::PredictionLog::open(options)?)
}

/// A progress bar on a terminal, a log line every few seconds otherwise.
struct Progress {
    report: Arc<PredictReport>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Progress {
    fn start(report: Arc<PredictReport>, expected: Option<u64>) -> Progress {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let watched = report.clone();
        tokio::spawn(async move {
            let tty = std::io::stderr().is_terminal();
            let bar = tty.then(|| {
                let bar = match expected {
                    Some(n) => indicatif::ProgressBar::new(n),
                    None => indicatif::ProgressBar::new_spinner(),
                };
                let template = match expected {
                    Some(_) => "{bar:40} {human_pos}/{human_len} rows  {per_sec}  ETA {eta}",
                    None => "{spinner} {human_pos} rows  {per_sec}",
                };
                if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                    bar.set_style(style);
                }
                bar
            });
            let tick = if tty {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(10)
            };
            let clock = Instant::now();
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = tokio::time::sleep(tick) => {}
                }
                let rows = watched.rows();
                match &bar {
                    Some(bar) => bar.set_position(rows),
                    None => tracing::info!(
                        rows,
                        failed = watched.failed(),
                        rows_per_s = (rows as f64 / clock.elapsed().as_secs_f64()).round(),
                        "batch progress"
                    ),
                }
            }
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
        });
        Progress { report, stop }
    }

    fn finish(self) -> Arc<PredictReport> {
        let _ = self.stop.send(true);
        self.report
    }
}

/// Arguments of `serval sql`.
#[derive(Args)]
pub struct SqlArgs {
    #[command(flatten)]
    repository: RepositoryArgs,
    /// SQL statements separated by `;`. Files and object-store URLs can be queried directly
    /// (`FROM 'data/*.parquet'`); `predict('model'[, 'version'], columns...)` returns a struct of
    /// the model's outputs; `COPY (...) TO 'out/' STORED AS PARQUET` writes results.
    query: String,
    /// Register a table: NAME=PATH (file, directory, glob or URL; format from the extension).
    #[arg(long = "table", value_name = "NAME=PATH")]
    tables: Vec<String>,
    /// Register a prediction log (`serval serve --prediction-log DIR`): `predictions` (every
    /// model: key, version, signature, ts, request_id, protocol, source, queue_us, compute_us,
    /// inputs and outputs as JSON text, model, date); one table per logged model, named after it,
    /// with a typed column per input and output; `label_history`, `labels` (the latest label per
    /// model and key) and `orphan_labels`.
    #[arg(
        long = "prediction-log",
        env = "SERVAL_PREDICTION_LOG",
        value_name = "DIR"
    )]
    prediction_log: Option<String>,
    #[command(flatten)]
    engine: EngineArgs,
}

pub fn run_sql(args: SqlArgs) -> anyhow::Result<()> {
    let catalog = args.engine.catalog(&args.repository)?;
    runtime()?.block_on(async move {
        let (ctx, report) = serval_batch::batch_session(catalog.clone(), args.engine.session());
        for table in &args.tables {
            let Some((name, path)) = table.split_once('=') else {
                bail!("--table {table}: expected NAME=PATH");
            };
            let format = FileFormat::from_extension(path.trim_end_matches('/'))
                .with_context(|| format!("--table {table}: cannot tell the format from the name (.parquet, .csv, .jsonl)"))?;
            serval_batch::job::register_table(&ctx, name, path, format).await?;
        }
        if let Some(root) = &args.prediction_log {
            let root = &serval_log::LogRoot::parse(root)?;
            serval_batch::prediction_log::register_prediction_log(&ctx, root).await?;
            for (model, why) in
                serval_batch::prediction_log::register_model_tables(&ctx, &catalog, root).await?
            {
                eprintln!("note: no typed columns from {model} of the log: {why}");
            }
        }
        // One statement at a time: a statement may read what the previous one wrote.
        for statement in serval_batch::session::parse_script(&args.query)? {
            serval_batch::session::statement_frame(&ctx, statement)
                .await?
                .show()
                .await?;
        }
        if report.failed() > 0 {
            eprintln!("{} of {} rows could not be predicted", report.failed(), report.rows());
            for reason in report.first_errors() {
                eprintln!("  failed row: {reason}");
            }
        }
        Ok(())
    })
}
