//! `serval`: the one binary. Parses flags and calls the library crates; no serving logic here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serval_core::{ModelRepository, RepositoryOptions};
use serval_storage::RemoteRepository;

/// mimalloc: the request path allocates on the async threads and frees on the engine threads
/// (and back); glibc malloc serialises that on arena locks (futex wake-ups in the profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod batch;
mod edge;
mod eval;
mod inspect;
mod labels;
mod models;
mod predict;
mod profile;
mod quantize;
mod serve;

/// Serval: serve exported ONNX models resiliently — in-process, online, in bulk.
#[derive(Parser)]
#[command(name = "serval", version, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every model of a repository over TF Serving REST, Open Inference Protocol v2 REST and gRPC.
    Serve(Box<serve::ServeArgs>),
    /// Predict JSON Lines or CSV instances in-process (the prediction-library mode).
    Predict(predict::PredictArgs),
    /// List, load or unload models on a running server (Triton's repository API).
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Predict a whole dataset (Parquet, CSV, JSON Lines; local or object storage) into files, like ML.PREDICT.
    Batch(batch::BatchArgs),
    /// Run SQL with `predict(...)` over files and object-store URLs.
    Sql(batch::SqlArgs),
    /// Model quality per window and version from the prediction log and its labels.
    Eval(eval::EvalArgs),
    /// Evaluate every model's newest windows again and again; deliver each alert its rules
    /// fire once (webhooks, `on_alert` command) and record it in the log's `alerts` table.
    /// Spelled `serval eval watch`.
    #[command(name = "eval-watch", hide = true)]
    EvalWatch(eval::WatchArgs),
    /// Store a version's reference profile (its training data's inputs and outputs) for drift.
    Profile(profile::ProfileArgs),
    /// Ground truth for logged predictions, joined to them by key.
    #[command(subcommand)]
    Labels(labels::LabelsCommand),
    /// Post-training quantization of an ONNX file (int8 weights, dynamic int8, float16), with
    /// sizes and, given labelled data, accuracy before and after.
    Quantize(quantize::QuantizeArgs),
    /// Two-phase predictions on the device: phase 1 in-process, forwards to phase 2 on a server,
    /// an offline queue while it is unreachable.
    Edge(edge::EdgeArgs),
    /// Show models, versions, signatures and the engine chosen for each (like saved_model_cli show).
    Inspect(inspect::InspectArgs),
}

/// Where the models are and how to load them.
#[derive(Args)]
struct RepositoryArgs {
    /// Model repository: <repo>/<model>/<version>/model.onnx, optional <repo>/<model>/config.toml.
    /// A directory, or an object store URL (s3://bucket/prefix, gs://..., az://...) mirrored locally.
    repository: String,
    /// Path of libonnxruntime.so for the ONNX Runtime backend (default: the onnxruntime Python package).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_library: Option<PathBuf>,
    /// Where object-store repositories are mirrored (default: $XDG_CACHE_HOME/serval or ~/.cache/serval).
    #[arg(long, env = "SERVAL_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

/// Where Serval keeps local copies: `--cache-dir`, else `$SERVAL_CACHE_DIR`,
/// `$XDG_CACHE_HOME/serval` or `~/.cache/serval`.
fn cache_root(explicit: Option<&std::path::Path>) -> PathBuf {
    explicit
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("SERVAL_CACHE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(std::env::temp_dir)
                .join("serval")
        })
}

/// Options for a prediction log at `location`, a local directory or an object-store URL. An
/// object store's write-ahead segments need a local disk: `wal`, else a folder per URL under
/// the cache directory (each process takes its own folder inside, as with a local log).
fn log_options(
    location: &str,
    wal: Option<PathBuf>,
    cache_dir: Option<&std::path::Path>,
) -> anyhow::Result<serval_log::LogOptions> {
    let root = serval_log::LogRoot::parse(location)?;
    let wal_root = match (&root, wal) {
        (_, Some(wal)) => Some(wal),
        (serval_log::LogRoot::Dir(_), None) => None,
        (serval_log::LogRoot::Store { url, .. }, None) => {
            let folder: String = url
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            Some(cache_root(cache_dir).join("prediction-log").join(folder))
        }
    };
    let mut options = serval_log::LogOptions::new(root);
    options.wal_root = wal_root;
    Ok(options)
}

impl RepositoryArgs {
    /// The remote repository, when the location is an object store URL.
    fn remote(&self) -> anyhow::Result<Option<RemoteRepository>> {
        Ok(RemoteRepository::parse(
            &self.repository,
            &cache_root(self.cache_dir.as_deref()),
        )?)
    }

    /// Opens a local repository as is; mirrors a remote one first.
    fn open(&self) -> anyhow::Result<ModelRepository> {
        let local = match self.remote()? {
            Some(remote) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(remote.sync())?;
                remote.local_dir().to_path_buf()
            }
            None => PathBuf::from(&self.repository),
        };
        self.open_local(local)
    }

    fn open_local(&self, dir: PathBuf) -> anyhow::Result<ModelRepository> {
        let options = RepositoryOptions {
            ort_library: self.ort_library.clone(),
            instances: None,
        };
        Ok(ModelRepository::open(dir, options)?)
    }
}

/// `serval eval watch ...` is the hidden `eval-watch` command: clap cannot give `eval` both
/// required arguments of its own and a subcommand.
fn spelled_commands(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = args.collect();
    if args.get(1).is_some_and(|a| a == "eval") && args.get(2).is_some_and(|a| a == "watch") {
        args.splice(1..3, [std::ffi::OsString::from("eval-watch")]);
    }
    args
}

fn main() -> ExitCode {
    // tract raises anyhow errors on hot paths; capturing backtraces for them doubles latency.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SERVAL_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse_from(spelled_commands(std::env::args_os()));
    let res = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Predict(args) => predict::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Models(command) => models::run(command),
        Command::Batch(args) => batch::run(args),
        Command::Sql(args) => batch::run_sql(args),
        Command::Labels(command) => labels::run(command),
        Command::Eval(args) => eval::run(args),
        Command::EvalWatch(args) => eval::run_watch(args),
        Command::Profile(args) => profile::run(args),
        Command::Edge(args) => edge::run(args),
        Command::Quantize(args) => quantize::run(args),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
