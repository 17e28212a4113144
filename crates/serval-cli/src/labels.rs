//! `serval labels`: ground truth for logged predictions, joined to them by key.

use anyhow::Context;
use serval_batch::FileFormat;

/// What to do with labels.
#[derive(clap::Subcommand)]
pub enum LabelsCommand {
    /// Import labels from a CSV, JSON Lines or Parquet file into a prediction log (as
    /// `POST /v1/models/<m>/labels` does on a running server). A later label of a key replaces an
    /// earlier one; of a key given twice in the file the last row counts. A row without a key or a
    /// label stops the import before anything is written.
    Import(ImportArgs),
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The prediction log (`serval serve --prediction-log DIR`): a directory or object-store URL.
    #[arg(
        long = "prediction-log",
        env = "SERVAL_PREDICTION_LOG",
        value_name = "DIR"
    )]
    prediction_log: String,
    /// The model whose predictions the labels are for.
    #[arg(long)]
    model: String,
    /// The labels: a file, a directory or a glob; the format from the extension.
    file: String,
    /// Column holding the prediction key.
    #[arg(long, default_value = "key")]
    key: String,
    /// Column holding the label (a class name, a number or a boolean).
    #[arg(long, default_value = "label")]
    label: String,
}

pub fn run(command: LabelsCommand) -> anyhow::Result<()> {
    let LabelsCommand::Import(args) = command;
    let mut options = crate::log_options(&args.prediction_log, None, None)?;
    options.replica_id = format!("labels-import-{}", serval_log::default_replica_id());
    let root = options.root.clone();
    if let Some(dir) = root.local_dir() {
        anyhow::ensure!(
            dir.is_dir(),
            "--prediction-log {}: no such directory",
            dir.display()
        );
    }
    let format =
        FileFormat::from_extension(args.file.trim_end_matches('/')).with_context(|| {
            format!(
                "{}: cannot tell the format from the name (.parquet, .csv, .jsonl)",
                args.file
            )
        })?;
    let runtime = crate::batch::runtime()?;
    let labels = runtime.block_on(serval_batch::prediction_log::read_labels(
        &args.file,
        format,
        &args.key,
        &args.label,
    ))?;
    let rows = labels.len();
    let received_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros() as i64;
    let batch = serval_log::LabelBatch::new(args.model.clone(), received_us, labels);
    let keys = batch.len();
    let log = serval_log::PredictionLog::open(options)?;
    let written = log
        .submit_labels(batch, true)?
        .context("a synced write is acknowledged")?
        .blocking_recv();
    // Closing rolls the segment into Parquet: the labels are queryable when this returns.
    log.close();
    written
        .unwrap_or(Err(serval_log::LogError::Closed))
        .context("the labels could not be written")?;
    let orphans = runtime.block_on(serval_batch::prediction_log::count_orphan_labels(
        &root,
        &args.model,
    ))?;
    println!(
        "{}",
        serde_json::json!({"model": args.model, "rows": rows, "keys": keys, "orphans": orphans})
    );
    Ok(())
}
