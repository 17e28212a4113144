//! Serval's online server: one process answering TF Serving REST, Open Inference Protocol v2
//! REST (with Triton's binary extension) and v2 gRPC, plus Prometheus metrics.
//!
//! The request path is protocol → [`pipeline::Pipeline::predict`] → `serval_core::Model`: front
//! ends only decode and encode; routing, limits, keys, deadlines and metrics live in `pipeline`.
#![deny(missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serval_core::ModelRepository;
use tokio::net::TcpListener;

pub mod batcher;
pub mod codec;
pub mod error;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod precomputed;
pub mod store;
pub mod watch;

/// Where and how to serve.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// Separate metrics address; `None` serves `/metrics` on the HTTP port.
    pub metrics_addr: Option<SocketAddr>,
    /// Request limits.
    pub limits: pipeline::Limits,
    /// Deadline for one request (queueing plus compute).
    pub request_timeout: Duration,
    /// How long a graceful shutdown waits for open requests and connections before it closes
    /// them (Kubernetes' default grace period is 30 s; a pod's `preStop` drain comes first).
    pub shutdown_timeout: Duration,
    /// How often to re-scan the repository (besides file notifications); `None` never reloads.
    pub poll_interval: Option<Duration>,
    /// Batch outputs answering requests by key: (model, directory).
    pub precomputed: Vec<(String, std::path::PathBuf)>,
    /// Server readiness needs every model ready (Triton's `--strict-readiness`), rather than
    /// any one.
    pub strict_readiness: bool,
    /// Where every answered prediction is logged, if anywhere.
    pub prediction_log: Option<serval_log::LogOptions>,
    /// Pages served beside the API on the HTTP port (the evaluation dashboard): routes with
    /// their own state, and no fallback.
    pub pages: Option<axum::Router>,
}

/// Loads every model, then serves until `shutdown` resolves; in-flight requests finish first.
pub async fn serve(
    repository: &ModelRepository,
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Before loading: each version looks its metric series up once, from the installed recorder.
    let handle = metrics::install().map_err(ServeError::Metrics)?;
    let store = Arc::new(store::ModelStore::load(repository.clone())?);
    if repository.model_names()?.is_empty() {
        tracing::warn!(repository = %repository.root().display(), "the repository holds no model directories yet (expected <repository>/<model>/<version>/model.onnx); serving none until one appears");
    }
    if let Some((model, _)) = config
        .precomputed
        .iter()
        .find(|(m, _)| store.model(m).is_err())
    {
        return Err(ServeError::Precomputed(format!(
            "--precomputed names model '{model}', which the repository does not serve"
        )));
    }
    let tables = Arc::new(precomputed::PrecomputedTables::mount(
        config.precomputed.clone(),
    ));
    let pipeline = pipeline::Pipeline::new(store.clone(), config.request_timeout, config.limits)
        .with_precomputed(tables.clone())
        .with_strict_readiness(config.strict_readiness);
    let log = match config.prediction_log.clone() {
        Some(options) => {
            let root = options.root.clone();
            let log = Arc::new(serval_log::PredictionLog::open(options)?);
            tracing::info!(root = %root, "logging predictions");
            Some(log)
        }
        None => None,
    };
    let pipeline = match &log {
        Some(log) => pipeline.with_prediction_log(log.clone()),
        None => pipeline,
    };
    let state = Arc::new(http::RestState {
        pipeline: pipeline.clone(),
        metrics: config.metrics_addr.is_none().then(|| handle.clone()),
    });
    let http_listener = bind(config.http_addr).await?;
    let grpc_listener = bind(config.grpc_addr).await?;
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    // Announce bound ports (tests and scripts pass port 0 and read them here).
    tracing::info!(http = %local(&http_listener), grpc = %local(&grpc_listener), "serving");
    println!(
        "serval listening http={} grpc={}",
        local(&http_listener),
        local(&grpc_listener)
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = stop_tx.send(true);
    });
    if let Some(poll) = config.poll_interval {
        tokio::spawn(watch::run(store, poll, stop_rx.clone()));
        if !tables.is_empty() {
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(poll).await;
                    let tables = tables.clone();
                    let _ = tokio::task::spawn_blocking(move || tables.refresh()).await;
                }
            });
        }
    }
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|&stop| stop).await;
    };
    let http_server = axum::serve(
        http_listener,
        http::router(state, config.pages).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stopped(stop_rx.clone()));
    let grpc_server = tonic::transport::Server::builder()
        .trace_fn(|request| {
            let client = request
                .extensions()
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|info| info.remote_addr());
            tracing::info_span!(
                "grpc",
                client = client.map(tracing::field::display),
                path = %request.uri().path()
            )
        })
        .add_service(grpc::InferenceService::server(pipeline))
        .serve_with_incoming_shutdown(tokio_stream_from(grpc_listener), stopped(stop_rx.clone()));
    let metrics_server = async {
        match metrics_listener {
            Some(listener) => {
                axum::serve(listener, http::metrics_router(handle))
                    .with_graceful_shutdown(stopped(stop_rx.clone()))
                    .await
            }
            None => Ok(()),
        }
    };
    let servers = async { tokio::join!(http_server, grpc_server, metrics_server) };
    // A client holding a request half sent (or a stream open) must not keep the process alive
    // past its grace period: the connections still open are then dropped, unanswered.
    let shutdown_timeout = config.shutdown_timeout;
    let deadline = async {
        stopped(stop_rx.clone()).await;
        tokio::time::sleep(shutdown_timeout).await;
    };
    let (http_res, grpc_res, metrics_res) = tokio::select! {
        results = servers => results,
        () = deadline => {
            tracing::warn!(
                timeout_ms = shutdown_timeout.as_millis() as u64,
                "shutdown deadline passed: closing the connections still open"
            );
            (Ok(()), Ok(()), Ok(()))
        }
    };
    if let Some(log) = log {
        // Every answered request is queued by now: write it all out and roll it into Parquet.
        let _ = tokio::task::spawn_blocking(move || log.close()).await;
    }
    http_res.map_err(ServeError::Io)?;
    grpc_res.map_err(|e| ServeError::Grpc(e.to_string()))?;
    metrics_res.map_err(ServeError::Io)?;
    Ok(())
}

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The repository could not be read.
    #[error(transparent)]
    Repository(#[from] serval_core::Error),
    /// A listener failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(String),
    /// A precomputed table is mounted for a model that is not served.
    #[error("{0}")]
    Precomputed(String),
    /// The prediction log could not be opened.
    #[error("prediction log: {0}")]
    Log(#[from] serval_log::LogError),
    /// The metrics recorder could not be installed.
    #[error("metrics: {0}")]
    Metrics(String),
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

fn local(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|e| e.to_string(), |a| a.to_string())
}

/// Adapts a tokio listener to the stream of connections tonic accepts.
fn tokio_stream_from(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
}
