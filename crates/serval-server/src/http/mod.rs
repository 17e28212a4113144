//! The REST front end: TF Serving's `/v1` API, the Open Inference Protocol's `/v2` API and
//! Prometheus `/metrics`, on one axum router.

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::budget::Reservation;
use crate::error::{Result, ServerError};
use crate::pipeline::{Limits, Pipeline};

mod tfserving;
pub(crate) mod v2;

pub use v2::server_extensions;

/// Shared state of the REST handlers, behind one `Arc`: axum clones the state for every request
/// (middleware and handler), and one reference count is cheaper than one per field.
pub type AppState = std::sync::Arc<RestState>;

/// What the REST handlers share.
pub struct RestState {
    /// The protocol-neutral request path.
    pub pipeline: Pipeline,
    /// Renders `/metrics`; `None` when metrics are served on their own port.
    pub metrics: Option<PrometheusHandle>,
    /// The tokens requests must carry; `None` lets every request in.
    pub auth: Option<std::sync::Arc<crate::auth::AuthTokens>>,
}

/// The whole REST API, and `pages` beside it.
pub fn router(state: AppState, pages: Option<Router>) -> Router {
    let routes = Router::new()
        .merge(tfserving::routes())
        .merge(v2::routes())
        .route("/metrics", get(metrics))
        .with_state(state.clone())
        .merge(pages.unwrap_or_default())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            shed_load,
        ))
        .layer(axum::middleware::from_fn(refuse_cross_origin_changes))
        .layer(axum::middleware::from_fn_with_state(state, authorize));
    // Around the whole router, not each route (which is what `Router::layer` wraps), so that
    // the 405s' `Allow` header is there to quote.
    Router::new()
        .fallback_service(routes)
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn(trace_client))
}

/// Puts each request in an `http` span naming the client's address, so the pipeline's events
/// (and the outcome logged here at debug level) say who sent it.
async fn trace_client(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument;
    let client = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0);
    let span = tracing::info_span!(
        "http",
        client = client.map(tracing::field::display),
        method = %request.method(),
        path = %request.uri().path(),
        token = tracing::field::Empty,
    );
    async move {
        let response = next.run(request).await;
        tracing::debug!(status = response.status().as_u16(), "answered");
        response
    }
    .instrument(span)
    .await
}

/// Gives the refusals axum makes itself (405 for a method a route lacks, its extractors'
/// rejections) the `{"error": ...}` body every other error has: tritonclient reports an empty
/// or text body as "client received an empty response from the server". Every refusal of a
/// request with a body also says `Connection: close`.
async fn json_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    // Both clone without allocating (standard methods; the URI's bytes are shared).
    let method = request.method().clone();
    let uri = request.uri().clone();
    let has_body = request.headers().contains_key(header::TRANSFER_ENCODING)
        || request
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    // A refusal may come before the body was read; hyper then closes the connection after the
    // answer, and a client that is not told so sends its next request into the closed socket.
    let mut response = response;
    if has_body {
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let mut message = match text.trim() {
        "" => status.canonical_reason().unwrap_or("error").to_owned(),
        said => said.to_owned(),
    };
    if status == StatusCode::METHOD_NOT_ALLOWED {
        let allowed = parts
            .headers
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        message = format!(
            "{method} is not allowed on {} (allowed: {allowed})",
            uri.path()
        );
    }
    let body = serde_json::json!({ "error": message }).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

/// Lets a request in only with a token whose scopes cover its path (when the server has
/// tokens), before anything else reads it; the token's name goes into the request's span.
async fn authorize(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(tokens) = &state.auth else {
        return next.run(request).await;
    };
    let access = crate::auth::Access::of_rest(request.uri().path());
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match tokens.authorize(access, header) {
        Ok(name) => {
            if let Some(name) = name {
                tracing::Span::current().record("token", name);
            }
            next.run(request).await
        }
        Err(refused) => refused.into_response(),
    }
}

/// Refuses requests that change the server's state (load and unload, ground truth, reported
/// predictions) when a browser sends them from another site's page. A cross-origin "simple"
/// POST (`text/plain`, no preflight) would otherwise reach the handler with the operator's
/// network access; clients outside a browser send no `Origin` and are not affected.
async fn refuse_cross_origin_changes(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    let changes_state = request.method() != axum::http::Method::GET
        && (path.starts_with("/v2/repository/")
            || (path.starts_with("/v1/models/") && path.ends_with("/labels"))
            || (path.starts_with("/v2/models/") && path.ends_with("/log")));
    if changes_state && let Some(origin) = foreign_origin(request.headers()) {
        return ServerError::Forbidden(format!(
            "{path} changes the server's state and is refused from a page of another origin \
             ({origin}); call it from a client outside the browser or from this server's own pages"
        ))
        .into_response();
    }
    next.run(request).await
}

/// The request's `Origin`, when it names a site other than the `Host` it was sent to.
fn foreign_origin(headers: &HeaderMap) -> Option<String> {
    let origin = headers
        .get(header::ORIGIN)?
        .to_str()
        .unwrap_or("(unreadable)");
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let authority = origin.split_once("://").map(|(_, rest)| rest);
    let same = authority.is_some_and(|a| Some(a) == host);
    (!same).then(|| origin.chars().take(100).collect())
}

/// Refuses POSTs with 429 before their bodies are read while the server already handles as many
/// requests as it may; health, metadata and metrics (GETs) always answer, so probes see the
/// truth under overload. The place itself is taken once the body is in ([`read_admitted_body`]):
/// a client sending its body slowly holds a connection, not one of the places.
async fn shed_load(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.method() == axum::http::Method::POST && state.pipeline.is_saturated() {
        return ServerError::Busy(state.pipeline.limits().max_concurrent_requests).into_response();
    }
    next.run(request).await
}

/// A router serving only `/metrics`, for a dedicated metrics port.
pub fn metrics_router(handle: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(move || async move { handle.render() }))
        .fallback(not_found)
}

async fn metrics(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => handle.render().into_response(),
        None => {
            ServerError::NotFound("metrics are served on the metrics port".into()).into_response()
        }
    }
}

async fn not_found(uri: axum::http::Uri) -> ServerError {
    ServerError::NotFound(format!("no route for {}", uri.path()))
}

/// A request's body, read and admitted: its place under the in-flight limit and its share of
/// the memory budget are held while this lives.
pub(crate) struct AdmittedBody {
    /// The body.
    pub bytes: Bytes,
    /// The request's reservation, holding the body so far.
    pub memory: Reservation,
    _place: tokio::sync::OwnedSemaphorePermit,
}

/// Reads the body into the memory budget, then takes the request's place under the server's
/// in-flight limit (429 when none is left).
pub(crate) async fn read_admitted_body(
    headers: &HeaderMap,
    body: Body,
    pipeline: &Pipeline,
) -> Result<AdmittedBody> {
    let memory = pipeline.reserve();
    let bytes = read_body(headers, body, pipeline.limits(), &memory).await?;
    Ok(AdmittedBody {
        bytes,
        memory,
        _place: pipeline.try_admit()?,
    })
}

/// Reads the body, refusing more than the limit with 413 before buffering it when possible,
/// a body arriving slower than the minimum rate with 408, and one the memory budget has no
/// room for with 429 (a declared length is reserved before the first byte is read).
///
/// Only an over-limit body is a 413: a body that cannot be read (malformed chunked encoding,
/// a connection error) is a 400.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limits: &Limits,
    memory: &Reservation,
) -> Result<Bytes> {
    let too_large = |n: &dyn std::fmt::Display| {
        ServerError::PayloadTooLarge(format!(
            "request body of {n} bytes exceeds the limit of {} bytes",
            limits.max_body_bytes
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(length) = declared {
        if length > limits.max_body_bytes {
            return Err(too_large(&length));
        }
        memory.grow(length)?;
    }
    let started = tokio::time::Instant::now();
    let mut body = body;
    // One buffer of the declared size: gathering chunks and joining them would hold the body
    // twice, and copy it once more, on the I/O thread.
    let mut whole = bytes::BytesMut::with_capacity(declared.unwrap_or(0));
    let mut first: Option<Bytes> = None;
    let mut total = 0usize;
    loop {
        let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx));
        let frame = match tokio::time::timeout_at(started + limits.body_rate.allowed(total), next)
            .await
        {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => {
                return Err(ServerError::SlowBody(format!(
                    "the request body arrived at less than {} bytes/s ({total} bytes in {:.1} s)",
                    limits.body_rate.min_bytes_per_sec,
                    started.elapsed().as_secs_f64()
                )));
            }
        };
        let frame = frame
            .map_err(|e| ServerError::BadRequest(format!("cannot read the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total > limits.max_body_bytes {
                return Err(too_large(&format_args!(
                    "more than {}",
                    limits.max_body_bytes
                )));
            }
            if declared.is_none() {
                memory.grow(data.len())?;
            }
            // A body of one chunk is kept as it came, without a copy.
            match first.take() {
                None if whole.is_empty() => first = Some(data),
                earlier => {
                    whole.extend_from_slice(&earlier.unwrap_or_default());
                    whole.extend_from_slice(&data);
                }
            }
        }
    }
    Ok(first.unwrap_or_else(|| whole.freeze()))
}

/// A JSON response from pre-serialized bytes.
pub(crate) fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Serializes `value` as a 200 JSON response.
pub(crate) fn json_ok(value: &impl serde::Serialize) -> Result<Response> {
    let body = serde_json::to_vec(value)
        .map_err(|e| ServerError::BadRequest(format!("cannot encode response: {e}")))?;
    Ok(json_bytes(StatusCode::OK, body))
}

/// Parses a JSON body, naming the position of a syntax error. For bodies whose bulk the
/// target type keeps as raw text or streams into tensors; see [`parse_json_tree`] otherwise.
pub(crate) fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T> {
    serde_json::from_slice::<Object<T>>(bytes)
        .map(|Object(value)| value)
        .map_err(|e| ServerError::BadRequest(format!("malformed JSON request: {e}")))
}

/// A request body (or part of one) that must be a JSON object: serde's derived structs also
/// take a list of their fields in order, so `[null, [[1, 2]]]` would otherwise pass for
/// `{"instances": [[1, 2]]}`.
pub(crate) struct Object<T>(pub T);

impl<T> std::ops::Deref for Object<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Fields<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Fields<T> {
            type Value = T;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Fields(std::marker::PhantomData))
            .map(Object)
    }
}

/// Parses JSON into a type that holds a node per value (`serde_json::Value`s, lists of
/// objects), once the tree's cost is in the request's memory reservation: such a tree takes
/// up to some 30 times the text (`0,` is two bytes, its `Value` 32 and its list slot more).
/// Small texts are charged that worst case; large ones have their values counted first, in
/// a pass that allocates nothing.
pub(crate) fn parse_json_tree<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    memory: &Reservation,
) -> Result<T> {
    memory.grow(json_tree_bytes(bytes))?;
    parse_json(bytes)
}

/// Bytes a `Value` tree of `text` takes, at most (see [`parse_json_tree`]).
pub(crate) fn json_tree_bytes(text: &[u8]) -> usize {
    const SMALL: usize = 64 * 1024;
    if text.len() <= SMALL {
        return text.len() * JSON_NODE_BYTES / 2;
    }
    let nodes = serval_core::instances::json_nodes_within(text, usize::MAX).unwrap_or(usize::MAX);
    nodes.saturating_mul(JSON_NODE_BYTES) + text.len()
}

/// What one JSON value costs in a tree: a 32-byte `Value`, and its slot in a list grown by
/// doubling.
pub(crate) const JSON_NODE_BYTES: usize = 64;

/// Response header naming the version that answered (TF Serving's body has no place for it).
pub const VERSION_HEADER: &str = "serval-model-version";

/// Response header marking an answer taken from a batch job's precomputed table: the job's
/// finish time (RFC 3339), i.e. how old the predictions are.
pub const PRECOMPUTED_HEADER: &str = "serval-precomputed-at";

/// Adds [`PRECOMPUTED_HEADER`] when the answer was precomputed.
pub(crate) fn mark_precomputed(
    response: &mut axum::response::Response,
    precomputed_at: Option<&str>,
) {
    if let Some(value) = precomputed_at.and_then(|at| axum::http::HeaderValue::from_str(at).ok()) {
        response.headers_mut().insert(PRECOMPUTED_HEADER, value);
    }
}

/// Header carrying a client's deadline in milliseconds (capped by the server's own).
pub const TIMEOUT_HEADER: &str = "serval-timeout-ms";

/// The client's deadline from [`TIMEOUT_HEADER`], if sent.
pub(crate) fn header_timeout(headers: &HeaderMap) -> Result<Option<std::time::Duration>> {
    match headers.get(TIMEOUT_HEADER) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map(|ms| Some(std::time::Duration::from_millis(ms)))
            .ok_or_else(|| {
                ServerError::BadRequest(format!(
                    "{TIMEOUT_HEADER} must be a whole number of milliseconds, at least 1"
                ))
            }),
    }
}
