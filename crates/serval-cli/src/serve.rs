//! `serval serve`: the online server.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serval_server::ServerConfig;
use serval_server::budget::MemoryBudget;
use serval_server::pipeline::Limits;

use crate::RepositoryArgs;

/// Arguments of `serval serve`.
#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    repository: RepositoryArgs,
    /// Continuous evaluation of the prediction log (with `--evaluate-every`), as `serval eval
    /// watch` does: windowed metrics as gauges, alerts delivered and recorded.
    #[command(flatten)]
    monitor: crate::eval::MonitorArgs,
    /// Address to listen on.
    #[arg(long, env = "SERVAL_HOST", default_value = "0.0.0.0")]
    host: IpAddr,
    /// HTTP port (TF Serving REST, OIP v2 REST, /metrics); 0 picks a free port.
    #[arg(long, env = "SERVAL_HTTP_PORT", default_value_t = 8000)]
    http_port: u16,
    /// gRPC port (OIP v2 `inference.GRPCInferenceService`); 0 picks a free port.
    #[arg(long, env = "SERVAL_GRPC_PORT", default_value_t = 8001)]
    grpc_port: u16,
    /// Metrics port, or `same` to serve /metrics on the HTTP port.
    #[arg(long, env = "SERVAL_METRICS_PORT", default_value = "same")]
    metrics_port: String,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, env = "SERVAL_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Most instances in one request (413 beyond).
    #[arg(long, env = "SERVAL_MAX_INSTANCES", default_value_t = 100_000)]
    max_instances: usize,
    /// Memory all requests in flight may hold together, in MiB: their bodies and what decoding
    /// them takes (429 / RESOURCE_EXHAUSTED beyond). Default: a quarter of the memory the
    /// process may use (its cgroup's limit, else the machine's).
    #[arg(long, env = "SERVAL_MAX_REQUEST_MEMORY_MIB")]
    max_request_memory_mib: Option<usize>,
    /// Threads for network I/O and request decoding (TF Serving's --rest_api_num_threads); the
    /// default is one per core. Inference runs on each model's own engine threads, not these.
    #[arg(long, env = "SERVAL_IO_THREADS")]
    io_threads: Option<usize>,
    /// Seconds between repository re-scans (file notifications also trigger one); 0 never reloads.
    #[arg(long, env = "SERVAL_POLL_INTERVAL_SECS", default_value_t = 2.0)]
    poll_interval_secs: f64,
    /// Requests handled at once across all models (429 beyond); a request takes its place once
    /// its body is in, so a client sending slowly holds only its connection.
    #[arg(long, env = "SERVAL_MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    max_concurrent_requests: usize,
    /// Per-request deadline in milliseconds, queueing included (504 beyond).
    #[arg(long, env = "SERVAL_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    request_timeout_ms: u64,
    /// On SIGTERM or Ctrl-C, seconds to let open requests finish before the connections still
    /// open are closed and the process exits (the prediction log is flushed either way).
    /// Kubernetes' default grace period is 30 s: keep this below the pod's.
    #[arg(long, env = "SERVAL_SHUTDOWN_TIMEOUT_SECS", default_value_t = 25.0)]
    shutdown_timeout_secs: f64,
    /// Answer requests whose keys a `serval batch` output holds from it: MODEL=DIR (Parquet
    /// output with `_SUCCESS`; reloaded when a new one appears). Repeat for several models.
    #[arg(long, value_name = "MODEL=DIR", value_parser = parse_mount)]
    precomputed: Vec<(String, PathBuf)>,
    /// Report the server ready only when every model is (Triton's --strict-readiness, whose
    /// default is true). Serval's default is false: one model that cannot load does not take
    /// the others out of a load balancer; each model has its own readiness endpoint.
    #[arg(long, env = "SERVAL_STRICT_READINESS")]
    strict_readiness: bool,
    #[command(flatten)]
    log: PredictionLogArgs,
    #[command(flatten)]
    transport: TransportArgs,
}

/// Connections: TLS, tokens, limits and the timeouts that close stalled clients.
#[derive(clap::Args)]
pub struct TransportArgs {
    /// TLS certificate chain (PEM) for both ports; re-read when the file changes, so a renewed
    /// certificate needs no restart.
    #[arg(
        long,
        env = "SERVAL_TLS_CERT",
        requires = "tls_key",
        value_name = "FILE"
    )]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(
        long,
        env = "SERVAL_TLS_KEY",
        requires = "tls_cert",
        value_name = "FILE"
    )]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by these CAs (PEM), on both ports: mutual TLS.
    #[arg(
        long,
        env = "SERVAL_TLS_CLIENT_CA",
        requires = "tls_cert",
        value_name = "FILE"
    )]
    tls_client_ca: Option<PathBuf>,
    /// Bearer tokens clients must send (`Authorization: Bearer <token>`, the same in gRPC
    /// metadata): one per line, `<token> <scope>[,<scope>...] [<name>]`, scopes `infer`,
    /// `labels`, `admin`, `metrics`, `pages`. Without it every request is let in.
    #[arg(long, env = "SERVAL_AUTH_TOKENS", value_name = "FILE")]
    auth_tokens: Option<PathBuf>,
    /// With --auth-tokens: the endpoint classes open without a token (`health`, `metrics`,
    /// `pages`, or `none`).
    #[arg(long, env = "SERVAL_AUTH_OPEN", default_value = "health,metrics")]
    auth_open: String,
    /// Open connections per port; a connection beyond it is closed at once.
    #[arg(long, env = "SERVAL_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,
    /// Seconds for a TLS handshake and for each HTTP request head; on HTTP/1.1 it also closes a
    /// keep-alive connection that sends no next request in that time (Kestrel's 30 s).
    #[arg(long, env = "SERVAL_HEADER_READ_TIMEOUT_SECS", default_value_t = 30.0)]
    header_read_timeout_secs: f64,
    /// A request body slower than this on average, after the grace period, is refused with 408
    /// (Kestrel's 240 bytes/s); 0 sets no minimum.
    #[arg(
        long,
        env = "SERVAL_BODY_MIN_RATE",
        default_value_t = 240,
        value_name = "BYTES_PER_SEC"
    )]
    body_min_rate: u64,
    /// Seconds every request body gets before --body-min-rate applies.
    #[arg(long, env = "SERVAL_BODY_READ_GRACE_SECS", default_value_t = 5.0)]
    body_read_grace_secs: f64,
    /// Seconds without a byte either way after which a connection is closed (both ports); must
    /// exceed the request timeout.
    #[arg(long, env = "SERVAL_IDLE_TIMEOUT_SECS", default_value_t = 120.0)]
    idle_timeout_secs: f64,
    /// gRPC: seconds between HTTP/2 pings on a quiet connection.
    #[arg(
        long,
        env = "SERVAL_HTTP2_KEEPALIVE_INTERVAL_SECS",
        default_value_t = 60.0
    )]
    http2_keepalive_interval_secs: f64,
    /// gRPC: seconds a ping's answer may take before the connection is dropped.
    #[arg(
        long,
        env = "SERVAL_HTTP2_KEEPALIVE_TIMEOUT_SECS",
        default_value_t = 20.0
    )]
    http2_keepalive_timeout_secs: f64,
    /// gRPC: calls open at once on one connection.
    #[arg(long, env = "SERVAL_MAX_CONCURRENT_STREAMS", default_value_t = 128)]
    max_concurrent_streams: u32,
}

impl TransportArgs {
    fn config(
        &self,
        request_timeout: Duration,
    ) -> anyhow::Result<serval_server::transport::TransportConfig> {
        let idle_timeout = seconds(self.idle_timeout_secs, "--idle-timeout-secs")?;
        anyhow::ensure!(
            idle_timeout > request_timeout,
            "--idle-timeout-secs ({} s) must exceed the request timeout ({} s): a connection \
             waiting for its answer moves no byte",
            idle_timeout.as_secs_f64(),
            request_timeout.as_secs_f64()
        );
        anyhow::ensure!(
            self.max_connections > 0,
            "--max-connections must be at least 1"
        );
        anyhow::ensure!(
            self.max_concurrent_streams > 0,
            "--max-concurrent-streams must be at least 1"
        );
        Ok(serval_server::transport::TransportConfig {
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(serval_server::transport::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.tls_client_ca.clone(),
                }),
                _ => None,
            },
            max_connections: self.max_connections,
            header_read_timeout: seconds(
                self.header_read_timeout_secs,
                "--header-read-timeout-secs",
            )?,
            idle_timeout,
            http2_keepalive_interval: seconds(
                self.http2_keepalive_interval_secs,
                "--http2-keepalive-interval-secs",
            )?,
            http2_keepalive_timeout: seconds(
                self.http2_keepalive_timeout_secs,
                "--http2-keepalive-timeout-secs",
            )?,
            max_concurrent_streams: self.max_concurrent_streams,
        })
    }

    fn body_rate(&self) -> anyhow::Result<serval_server::pipeline::BodyRate> {
        Ok(serval_server::pipeline::BodyRate {
            min_bytes_per_sec: self.body_min_rate,
            grace: seconds(self.body_read_grace_secs, "--body-read-grace-secs")?,
        })
    }

    fn auth(&self) -> anyhow::Result<Option<Arc<serval_server::auth::AuthTokens>>> {
        use serval_server::auth::{AccessSet, AuthTokens};
        let Some(path) = &self.auth_tokens else {
            return Ok(None);
        };
        let open = AccessSet::parse(&self.auth_open, "--auth-open class")
            .map_err(|e| anyhow::anyhow!("--auth-open: {e}"))?;
        Ok(Some(Arc::new(AuthTokens::from_file(path, open)?)))
    }
}

/// A positive, finite number of seconds from a flag.
fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    match Duration::try_from_secs_f64(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => anyhow::bail!("{flag} must be a positive, finite number of seconds, got {value}"),
    }
}

/// Where and how predictions are logged.
#[derive(clap::Args)]
pub struct PredictionLogArgs {
    /// Log every answered prediction with its key under DIR (Parquet,
    /// `DIR/predictions/model=<m>/date=<d>/`), a local directory or an object-store URL
    /// (s3://, gs://, az://, configured from the environment); per-model `[logging]` in config.toml sets the
    /// sample rate, what is kept and the durability. Several replicas may share one DIR.
    #[arg(
        long = "prediction-log",
        env = "SERVAL_PREDICTION_LOG",
        value_name = "DIR"
    )]
    dir: Option<String>,
    /// Where the write-ahead segments go (default `DIR/_wal`, or a folder under the cache
    /// directory when DIR is an object-store URL): each process takes a folder of its own there,
    /// and rolls the folders of processes that died.
    #[arg(
        long = "prediction-log-wal",
        env = "SERVAL_PREDICTION_LOG_WAL",
        value_name = "DIR"
    )]
    wal: Option<PathBuf>,
    /// Names this process's log files; unique per replica (default: hostname and start time).
    #[arg(long, env = "SERVAL_REPLICA_ID")]
    replica_id: Option<String>,
    /// Group-commit interval of buffered records, in milliseconds: what a power loss may cost.
    #[arg(
        long = "prediction-log-sync-ms",
        env = "SERVAL_PREDICTION_LOG_SYNC_MS",
        default_value_t = 100
    )]
    sync_ms: u64,
    /// Seconds before an open segment is rolled into Parquet (also rolled past 64 MiB and at
    /// shutdown): how soon `serval sql` sees a prediction.
    #[arg(
        long = "prediction-log-roll-secs",
        env = "SERVAL_PREDICTION_LOG_ROLL_SECS",
        default_value_t = 60
    )]
    roll_secs: u64,
    /// Requests queued for the log writer; beyond it buffered records are dropped (counted in
    /// serval_prediction_log_dropped_total) and synced requests fail with 503. A `kill -9` loses
    /// at most what this queue holds plus one sync interval.
    #[arg(
        long = "prediction-log-queue",
        env = "SERVAL_PREDICTION_LOG_QUEUE",
        default_value_t = 10_000
    )]
    queue: usize,
}

impl PredictionLogArgs {
    fn options(
        &self,
        cache_dir: Option<&std::path::Path>,
    ) -> anyhow::Result<Option<serval_log::LogOptions>> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        anyhow::ensure!(
            self.sync_ms > 0,
            "--prediction-log-sync-ms must be at least 1"
        );
        anyhow::ensure!(
            self.roll_secs > 0,
            "--prediction-log-roll-secs must be at least 1"
        );
        let mut options = crate::log_options(dir, self.wal.clone(), cache_dir)?;
        if let Some(id) = &self.replica_id {
            options.replica_id = id.clone();
        }
        options.sync_interval = Duration::from_millis(self.sync_ms);
        options.roll_interval = Duration::from_secs(self.roll_secs);
        options.queue_capacity = self.queue;
        Ok(Some(options))
    }
}

fn parse_mount(value: &str) -> Result<(String, PathBuf), String> {
    match value.split_once('=') {
        Some((model, dir)) if !model.is_empty() && !dir.is_empty() => {
            Ok((model.to_owned(), PathBuf::from(dir)))
        }
        _ => Err(format!("expected MODEL=DIR, got '{value}'")),
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let metrics_addr = match args.metrics_port.as_str() {
        "same" => None,
        port => Some(SocketAddr::new(
            args.host,
            port.parse().map_err(|_| {
                anyhow::anyhow!("--metrics-port must be a port number or `same`, got '{port}'")
            })?,
        )),
    };
    let request_timeout = Duration::from_millis(args.request_timeout_ms);
    let mut config = ServerConfig {
        http_addr: SocketAddr::new(args.host, args.http_port),
        grpc_addr: SocketAddr::new(args.host, args.grpc_port),
        metrics_addr,
        limits: Limits {
            max_body_bytes: args.max_body_bytes,
            max_instances: args.max_instances,
            max_concurrent_requests: args.max_concurrent_requests,
            body_rate: args.transport.body_rate()?,
            max_request_memory: args
                .max_request_memory_mib
                .map_or_else(MemoryBudget::default_limit, |mib| mib << 20),
        },
        request_timeout,
        shutdown_timeout: Duration::try_from_secs_f64(args.shutdown_timeout_secs).map_err(
            |_| {
                anyhow::anyhow!(
                    "--shutdown-timeout-secs must be a finite, non-negative number of seconds"
                )
            },
        )?,
        poll_interval: (args.poll_interval_secs > 0.0)
            .then(|| Duration::try_from_secs_f64(args.poll_interval_secs))
            .transpose()
            .map_err(|_| {
                anyhow::anyhow!("--poll-interval-secs must be a finite number of seconds")
            })?,
        precomputed: args.precomputed,
        strict_readiness: args.strict_readiness,
        prediction_log: args.log.options(args.repository.cache_dir.as_deref())?,
        pages: None,
        transport: args.transport.config(request_timeout)?,
        auth: args.transport.auth()?,
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.io_threads {
        anyhow::ensure!(threads > 0, "--io-threads must be at least 1");
        runtime.worker_threads(threads);
    }
    let runtime = runtime.enable_all().build()?;
    let repository = match args.repository.remote()? {
        Some(remote) => {
            runtime.block_on(remote.sync())?;
            let repository = args
                .repository
                .open_local(remote.local_dir().to_path_buf())?;
            // Keep the mirror in step; the server's watcher then loads what changed.
            let interval = config.poll_interval.unwrap_or(Duration::from_secs(10));
            runtime.spawn(async move {
                loop {
                    tokio::time::sleep(interval).await;
                    if let Err(e) = remote.sync().await {
                        tracing::error!(error = %e, "cannot mirror the remote repository; serving the last copy");
                    }
                }
            });
            repository
        }
        None => args.repository.open()?,
    };
    let mut pages = serval_edge_web::router(repository.clone());
    if let Some(location) = &args.log.dir {
        // The dashboard reads the log this server writes (and whatever else is in it).
        pages = pages.merge(serval_dashboard::router(
            Arc::new(serval_batch::ModelCatalog::new(repository.clone())),
            serval_log::LogRoot::parse(location)?,
        ));
    }
    config.pages = Some(pages);
    if args.monitor.every.is_some() {
        let Some(location) = &args.log.dir else {
            anyhow::bail!(
                "--evaluate-every needs --prediction-log: it evaluates the logged predictions"
            );
        };
        // The recorder first: the evaluator's gauges are served on /metrics.
        serval_server::metrics::install().map_err(|e| anyhow::anyhow!("metrics: {e}"))?;
        args.monitor.spawn(repository.clone(), location)?;
    }
    let shutdown = {
        let _context = runtime.enter();
        shutdown_signal()
    };
    let served = runtime.block_on(serval_server::serve(&repository, config, shutdown));
    // Connections cut at the shutdown deadline may still have tasks parked on the runtime;
    // they are not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    served?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM, whichever comes first. The handlers are installed now, not
/// when the future is first polled: a SIGTERM right after the ports are announced must still
/// be a graceful stop (which rolls the prediction log), not the default death.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).ok();
        let mut interrupt = signal(SignalKind::interrupt()).ok();
        async move {
            tokio::select! {
                () = received(terminate.as_mut()) => {},
                () = received(interrupt.as_mut()) => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Waits for a signal whose handler is installed, or forever when it could not be.
#[cfg(unix)]
async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}
