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

pub mod auth;
pub mod batcher;
pub mod budget;
pub mod codec;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod precomputed;
pub mod store;
pub mod transport;
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
    /// Connection limits, timeouts and TLS, on both ports.
    pub transport: transport::TransportConfig,
    /// The tokens requests must carry (REST and gRPC); `None` lets every request in.
    pub auth: Option<Arc<auth::AuthTokens>>,
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
        auth: config.auth.clone(),
    });
    let transport = &config.transport;
    let http_listener = transport::Listener::new(
        bind(config.http_addr).await?,
        transport::Protocol::Http1,
        transport,
    )?;
    let grpc_listener = transport::Listener::new(
        bind(config.grpc_addr).await?,
        transport::Protocol::Http2,
        transport,
    )?;
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
    let http_server = serve_http(
        http_listener,
        http::router(state, config.pages),
        transport.header_read_timeout,
        stopped(stop_rx.clone()),
    );
    let grpc_server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(transport.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(transport.http2_keepalive_timeout))
        .max_concurrent_streams(transport.max_concurrent_streams)
        // A call whose message trickles in is cut like a slow REST body; the request's own
        // deadline (which starts once the message is in) fires first otherwise.
        .timeout(transport.header_read_timeout + config.request_timeout)
        .trace_fn(|request| {
            let client = request
                .extensions()
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|info| info.remote_addr());
            tracing::info_span!(
                "grpc",
                client = client.map(tracing::field::display),
                path = %request.uri().path(),
                token = tracing::field::Empty,
            )
        })
        .layer(grpc::AdmissionLayer {
            pipeline: pipeline.clone(),
            tokens: config.auth.clone(),
        })
        .add_service(grpc::InferenceService::server(pipeline))
        .serve_with_incoming_shutdown(grpc_listener.incoming(), stopped(stop_rx.clone()));
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
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] transport::TlsError),
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

fn local(listener: &transport::Listener) -> String {
    listener
        .local_addr()
        .map_or_else(|e| e.to_string(), |a| a.to_string())
}

/// Serves HTTP/1.1 on each accepted connection until `stop`, then lets the open ones finish
/// their requests. hyper's own builder rather than `axum::serve`, for the header timeout.
async fn serve_http(
    listener: transport::Listener,
    router: axum::Router,
    header_read_timeout: Duration,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use futures::StreamExt;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    // Boxed, so that dropping it below does drop it.
    let mut incoming = Box::pin(listener.incoming());
    tokio::pin!(stop);
    loop {
        let connection = tokio::select! {
            next = incoming.next() => match next {
                Some(Ok(connection)) => connection,
                Some(Err(_)) | None => break,
            },
            () = &mut stop => break,
        };
        let client = connection.remote_addr();
        let router = router.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(client));
                tower_service::Service::call(&mut router.clone(), request)
            },
        );
        let served = graceful
            .watch(builder.serve_connection(hyper_util::rt::TokioIo::new(connection), service));
        tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::debug!(%client, error = %e, "connection closed");
            }
        });
    }
    // Dropping the stream stops the accept loop, which closes the listening socket.
    drop(incoming);
    graceful.shutdown().await;
    Ok(())
}
