//! `serval profile`: a version's reference profile, from its training data.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use serval_batch::{BatchJob, FileFormat};
use serval_eval::profile::{DEFAULT_PROFILE_SAMPLE, Profile};

use crate::RepositoryArgs;
use crate::batch::EngineArgs;

/// Arguments of `serval profile`.
#[derive(Args)]
pub struct ProfileArgs {
    #[command(flatten)]
    repository: RepositoryArgs,
    /// Model name.
    model: String,
    /// Version profiled (default: the model's default, else the highest).
    #[arg(long)]
    version: Option<String>,
    /// Signature whose outputs are profiled (default: serving_default).
    #[arg(long)]
    signature: Option<String>,
    /// The reference data (usually the training set): a file, a directory, a glob or an
    /// object-store URL, in Parquet, CSV or JSON Lines, read as `serval batch` reads its input.
    #[arg(long)]
    data: String,
    /// Columns fed to the model, in order (default: as `serval batch` picks them).
    #[arg(long, value_delimiter = ',')]
    features: Option<Vec<String>>,
    /// Values kept per column for drift tests; a reference with more rows keeps a uniform
    /// sample of them.
    #[arg(long, default_value_t = DEFAULT_PROFILE_SAMPLE)]
    sample_size: usize,
    /// Where to write the profile (default: `reference_profile.json` beside the version's
    /// model.onnx, where `serval eval` looks for it).
    #[arg(long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
}

/// Runs the model over the data into a scratch prediction log (so the inputs and outputs are
/// profiled exactly as served predictions are logged), then profiles that log.
pub fn run(args: ProfileArgs) -> anyhow::Result<()> {
    let catalog = args.engine.catalog(&args.repository)?;
    let version = catalog.get(&args.model, args.version.as_deref())?.version();
    let scratch = tempfile::tempdir().context("cannot create a scratch directory")?;
    let log_dir = scratch.path().join("log");
    std::fs::create_dir_all(&log_dir)?;
    let log_location = log_dir.display().to_string();
    let job = BatchJob {
        model: args.model.clone(),
        version: Some(version.to_string()),
        signature: args.signature.clone(),
        input: args.data.clone(),
        input_format: None,
        output: scratch.path().join("predictions").display().to_string(),
        format: FileFormat::Parquet,
        key: None,
        columns: Some(Vec::new()),
        features: args.features.clone(),
        overwrite: false,
        session: args.engine.session(),
        prediction_log: Some(Arc::new(crate::batch::open_batch_log(
            &log_location,
            Some(scratch.path()),
        )?)),
        time_column: None,
    };
    crate::batch::run_job(catalog.clone(), job, false)?;
    let root = serval_log::LogRoot::parse(&log_location)?;
    let profile = crate::batch::runtime()?.block_on(serval_eval::profile_log(
        catalog.clone(),
        &root,
        &args.model,
        args.signature.as_deref(),
        Some(version),
        format!("data {}", args.data),
        args.sample_size,
    ))?;
    let path = match args.output {
        Some(path) => path,
        None => {
            anyhow::ensure!(
                args.repository.remote()?.is_none(),
                "the repository is in an object store: write the profile with --output FILE and upload it beside the version's model.onnx"
            );
            Profile::path(catalog.repository().root(), &args.model, version)
        }
    };
    profile.write(&path)?;
    eprintln!(
        "profiled {} rows, {} columns of {} version {} into {}",
        profile.rows,
        profile.columns.len(),
        args.model,
        version,
        path.display()
    );
    Ok(())
}
