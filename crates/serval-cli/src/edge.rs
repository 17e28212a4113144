//! `serval edge`: the device half of two-phase predictions as a command. Reads JSON Lines
//! instances, answers each with phase 1 (the `--phase1` ONNX file, on tract) unless the policy
//! forwards it to phase 2 on `--server`, and writes one JSON Lines answer per instance (plus
//! phase 2's later answers to forwards that waited in the `--queue`).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::predict::{InputFormat, Line, read_lines};
use anyhow::{Context, bail};
use clap::Args;
use serval_core::ModelConfig;
use serval_core::cascade::CascadePolicy;
use serval_edge::{
    EdgeRuntime, OfflineQueue, Phase1, Phase2Client, Phase2Options, QueueOptions, ReportOptions,
    WhenFull, load_phase1,
};

/// `serval edge` arguments.
#[derive(Args)]
pub struct EdgeArgs {
    /// The phase-1 ONNX file. Its `config.toml` (class labels, key name) is read from beside it
    /// or, in a repository's layout (`<model>/<version>/model.onnx`), from the model folder.
    #[arg(long)]
    phase1: PathBuf,
    /// The phase-1 model's config.toml, when it is not beside the file.
    #[arg(long)]
    phase1_config: Option<PathBuf>,
    /// The cascade policy (TOML: `[forward] classes = [...]`, `confidence = [low, high]`,
    /// `when = "any"|"all"`, optional `scores`, `signature`, `phase2`). Default: the phase-1
    /// config's `[edge]` section, else forward when phase 1's top probability is below 0.9.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// The server running phase 2 (e.g. http://127.0.0.1:8000). Without it every forward waits
    /// in the queue (or, without a queue, keeps phase 1's provisional answer).
    #[arg(long)]
    server: Option<String>,
    /// The phase-2 model's name on the server (default: the policy's `phase2`).
    #[arg(long)]
    model: Option<String>,
    /// The phase-2 version (number or label); the server's default when omitted.
    #[arg(long)]
    version: Option<String>,
    /// Where forwards wait while phase 2 is unreachable (durable across restarts).
    #[arg(long)]
    queue: Option<PathBuf>,
    /// The most forwards the queue holds.
    #[arg(long, default_value_t = 100_000)]
    queue_max_records: u64,
    /// The most bytes the queue holds.
    #[arg(long, default_value_t = 256)]
    queue_max_mib: u64,
    /// When the queue is full: refuse new forwards, or drop the oldest.
    #[arg(long, value_enum, default_value = "refuse")]
    when_full: WhenFullArg,
    /// Instances, JSON Lines or CSV (`-` for stdin). Without it, only the queue is replayed.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Input format (default: from the file extension; JSON Lines for `-`).
    #[arg(long, value_enum)]
    format: Option<InputFormat>,
    /// Where answers go (default stdout).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Lines answered together (and forwarded together).
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Instances per phase-2 request.
    #[arg(long, default_value_t = 64)]
    forward_batch: usize,
    /// Attempts per phase-2 request before a forward is queued.
    #[arg(long, default_value_t = 3)]
    attempts: u32,
    /// Each phase-2 attempt's time limit, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// After phase 2 is found unreachable, how long to wait (milliseconds) before trying it
    /// again, doubling up to 30 s while it stays down; meanwhile forwards go straight to the
    /// queue. 0 tries on every batch.
    #[arg(long, default_value_t = serval_edge::FIRST_OUTAGE_PROBE.as_millis() as u64)]
    outage_probe_ms: u64,
    /// The share of phase-1 predictions (by key) reported to the server's prediction log
    /// (`source = edge`), so the device's model is evaluated too; 0 reports none. Each report
    /// carries the instance's inputs and outputs: on the digits example, 1 % costs about half
    /// the bytes of the forwards themselves.
    #[arg(long, default_value_t = 0.01)]
    report_sample: f64,
    /// The phase-1 model's name in the server's repository (default: its name here).
    #[arg(long)]
    report_model: Option<String>,
    /// The phase-1 version in the server's repository (default: the server's default).
    #[arg(long)]
    report_version: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum WhenFullArg {
    Refuse,
    DropOldest,
}

/// The default policy: forward what phase 1 is unsure of.
const DEFAULT_POLICY: &str = "[forward]\nconfidence = [0.0, 0.9]\n";

pub fn run(args: EdgeArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.phase1)
        .with_context(|| format!("cannot read --phase1 {}", args.phase1.display()))?;
    let config = phase1_config(&args)?;
    let name = model_name(&args.phase1);
    let policy = match (&args.policy, &config.edge) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --policy {}", path.display()))?;
            CascadePolicy::from_toml(&text)
                .map_err(|e| anyhow::anyhow!("--policy {}: {e}", path.display()))?
        }
        (None, Some(edge)) => edge.clone(),
        (None, None) => CascadePolicy::from_toml(DEFAULT_POLICY).map_err(anyhow::Error::msg)?,
    };
    let phase1 = load_phase1(&name, &bytes, config)?;
    let phase2 = match (&args.server, args.model.as_ref().or(policy.phase2.as_ref())) {
        (Some(server), Some(model)) => {
            let mut options = Phase2Options::new(server.clone(), model.clone());
            options.version = args.version.clone().or(policy.phase2_version.clone());
            options.max_batch = args.forward_batch.max(1);
            options.retry.attempts = args.attempts.max(1);
            options.retry.timeout = Duration::from_millis(args.timeout_ms.max(1));
            Some(Phase2Client::new(options))
        }
        (Some(_), None) => {
            bail!("--server needs --model (or `phase2` in the policy) naming the phase-2 model")
        }
        (None, _) => None,
    };
    let queue = match &args.queue {
        Some(dir) => Some(OfflineQueue::open(
            dir,
            QueueOptions {
                max_records: args.queue_max_records,
                max_bytes: args.queue_max_mib.saturating_mul(1024 * 1024),
                when_full: match args.when_full {
                    WhenFullArg::Refuse => WhenFull::Refuse,
                    WhenFullArg::DropOldest => WhenFull::DropOldest,
                },
                ..QueueOptions::default()
            },
        )?),
        None => None,
    };
    if !(0.0..=1.0).contains(&args.report_sample) {
        bail!(
            "--report-sample must be between 0 and 1, got {}",
            args.report_sample
        );
    }
    let phase1 = Phase1::new(phase1, policy).map_err(|e| anyhow::anyhow!("--policy: {e}"))?;
    let mut edge = EdgeRuntime::new(phase1, phase2, queue)
        .with_outage_probe(Duration::from_millis(args.outage_probe_ms));
    if args.server.is_some() && args.report_sample > 0.0 {
        edge = edge.with_report(ReportOptions {
            model: args.report_model.clone().unwrap_or(name),
            version: args.report_version.clone(),
            sample_rate: args.report_sample,
        });
    }
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create --output {}", path.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let mut write = |answers: &[serval_edge::Answer]| -> anyhow::Result<()> {
        for answer in answers {
            serde_json::to_writer(&mut out, answer)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        Ok(())
    };
    if let Some(input) = &args.input {
        let phase1 = edge.phase1();
        let signature = phase1.model().signature(Some(phase1.signature()))?;
        let key = phase1.model().config().key.clone();
        let lines = read_lines(input, args.format, signature, &[key.as_str()])?;
        let mut batch: Vec<Line> = Vec::new();
        for line in lines {
            batch.push(line?);
            if batch.len() >= args.batch_size.max(1) {
                answer(&mut edge, &mut batch, &mut write)?;
            }
        }
        if !batch.is_empty() {
            answer(&mut edge, &mut batch, &mut write)?;
        }
    }
    edge.replay(&mut write)?;
    let stats = edge.stats();
    eprintln!(
        "serval edge: {} instances, {} answered on the device, {} forwarded ({} answered by phase 2, {} from the queue), {} queued, {} refused by a full queue, {} dropped from it, {} refused by phase 2; {} still waiting; {} phase-1 predictions reported to the log ({} failed)",
        stats.instances,
        stats.local,
        stats.forwarded,
        stats.phase2_answered,
        stats.replayed,
        stats.queued,
        stats.queue_refused,
        stats.queue_dropped,
        stats.phase2_refused,
        edge.queued(),
        stats.reported,
        stats.reports_failed
    );
    if args.server.is_none() && args.queue.is_none() && stats.forwarded > 0 {
        bail!(
            "{} instances needed phase 2 but neither --server nor --queue was given",
            stats.forwarded
        );
    }
    Ok(())
}

/// Answers one batch of lines; an error names the lines.
fn answer(
    edge: &mut EdgeRuntime,
    batch: &mut Vec<Line>,
    write: &mut impl FnMut(&[serval_edge::Answer]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let (first, last) = (batch[0].number, batch[batch.len() - 1].number);
    let instances: Vec<serde_json::Value> = batch.drain(..).map(|l| l.instance).collect();
    edge.answer(&instances, write)
        .with_context(|| format!("lines {first}-{last}"))
}

/// The phase-1 config: `--phase1-config`, else `config.toml` beside the file, else in the
/// model folder above a version folder.
fn phase1_config(args: &EdgeArgs) -> serval_core::Result<ModelConfig> {
    let beside = args.phase1.with_file_name("config.toml");
    let above = args
        .phase1
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("config.toml"));
    let path = match &args.phase1_config {
        Some(path) => Some(path.clone()),
        None => [Some(beside), above]
            .into_iter()
            .flatten()
            .find(|p| p.is_file()),
    };
    match path {
        Some(path) => Ok(ModelConfig::load_file(&model_name(&args.phase1), &path)?),
        None => Ok(ModelConfig::default()),
    }
}

/// The model's name: its folder in a repository's layout, else the file's stem.
fn model_name(path: &Path) -> String {
    let version_dir = path.parent();
    let is_version = version_dir
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.parse::<u64>().is_ok());
    let name = if is_version {
        version_dir.and_then(Path::parent).and_then(Path::file_name)
    } else {
        path.file_stem()
    };
    name.and_then(|n| n.to_str()).unwrap_or("phase1").to_owned()
}
