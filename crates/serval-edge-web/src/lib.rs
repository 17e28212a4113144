//! `/edge` in `serval serve`: phase 1 of a two-phase prediction in the visitor's browser, on
//! the same code as `serval edge` (`serval-edge-wasm`: tract compiled to WebAssembly), and
//! phase 2 on this server for the instances the policy forwards, with each answer marked by
//! the phase that gave it.
//!
//! The module and its JavaScript bindings are built by this crate's build script and
//! compiled into the binary with the page (nothing comes from a CDN). A model is offered to
//! browsers, its ONNX file downloadable here, only when its `config.toml` has an `[edge]`
//! section (its cascade policy): serving a model's weights is the repository owner's choice.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serval_core::ModelRepository;
use serval_core::cascade::CascadePolicy;
use serval_server::error::ServerError;

const INDEX: &str = include_str!("../assets/index.html");
const SCRIPT: &str = include_str!("../assets/edge.js");
const STYLE: &str = include_str!("../assets/edge.css");
/// Why the build has no engine (empty when it has one).
const WHY_NO_WASM: &str = include_str!(concat!(env!("OUT_DIR"), "/why-no-wasm.txt"));

#[cfg(edge_wasm)]
mod engine {
    pub const BINDINGS: Option<&str> = Some(include_str!(concat!(
        env!("OUT_DIR"),
        "/pkg/serval_edge_wasm.js"
    )));
    pub const WASM: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/pkg/serval_edge_wasm_bg.wasm"));
    pub const WASM_GZ: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/pkg/serval_edge_wasm_bg.wasm.gz"));
}

#[cfg(not(edge_wasm))]
mod engine {
    pub const BINDINGS: Option<&str> = None;
    pub const WASM: &[u8] = &[];
    pub const WASM_GZ: &[u8] = &[];
}

/// Whether this binary carries the page's WebAssembly engine, and if not, why.
pub fn engine_status() -> Result<(), &'static str> {
    match engine::BINDINGS {
        Some(_) => Ok(()),
        None => Err(WHY_NO_WASM),
    }
}

/// The page's routes, under `/edge`, over the models of `repository` that have `[edge]`.
pub fn router(repository: ModelRepository) -> axum::Router {
    axum::Router::new()
        .route("/edge", get(|| text("text/html; charset=utf-8", INDEX)))
        .route(
            "/edge/edge.js",
            get(|| text("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/edge/edge.css",
            get(|| text("text/css; charset=utf-8", STYLE)),
        )
        .route("/edge/pkg/serval_edge_wasm.js", get(bindings))
        .route("/edge/pkg/serval_edge_wasm_bg.wasm", get(module))
        .route("/edge/api/models", get(models))
        .route("/edge/api/models/{model}", get(model))
        .route(
            "/edge/models/{model}/versions/{version}/model.onnx",
            get(model_file),
        )
        .with_state(Arc::new(repository))
}

async fn text(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn no_engine() -> ServerError {
    ServerError::NotEnabled(format!(
        "this serval was built without the browser edge runtime: {WHY_NO_WASM}"
    ))
}

async fn bindings() -> Result<Response, ServerError> {
    let bindings = engine::BINDINGS.ok_or_else(no_engine)?;
    Ok(text("text/javascript; charset=utf-8", bindings).await)
}

/// The module, gzip-compressed (built so) for the browsers that accept it, which is all of
/// them: a page's download is most of its start-up.
async fn module(request: HeaderMap) -> Result<Response, ServerError> {
    engine::BINDINGS.ok_or_else(no_engine)?;
    let gzip = request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/wasm"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        Ok((headers, engine::WASM_GZ).into_response())
    } else {
        Ok((headers, engine::WASM).into_response())
    }
}

/// A model offered to browsers: its policy, and the version whose file the page loads.
struct Offered {
    version: u64,
    config: serval_core::ModelConfig,
    policy: CascadePolicy,
}

fn offered(repository: &ModelRepository, name: &str) -> Result<Offered, ServerError> {
    let config = repository.config(name)?;
    let policy = config.edge.clone().ok_or_else(|| {
        ServerError::NotFound(format!(
            "model '{name}' is not offered to browsers (its config.toml has no [edge] section)"
        ))
    })?;
    let version = repository.version_or_default(name, None, &config)?;
    Ok(Offered {
        version,
        config,
        policy,
    })
}

/// The models with an `[edge]` section, and whether this build can run them.
async fn models(
    State(repository): State<Arc<ModelRepository>>,
) -> Result<Json<serde_json::Value>, ServerError> {
    let names = repository.model_names()?;
    let models: Vec<serde_json::Value> = names
        .iter()
        .filter_map(|name| {
            let offered = offered(&repository, name).ok()?;
            Some(serde_json::json!({
                "name": name,
                "version": offered.version.to_string(),
                "phase2": offered.policy.phase2,
            }))
        })
        .collect();
    let engine = engine_status();
    Ok(Json(serde_json::json!({
        "engine": { "available": engine.is_ok(), "why": engine.err() },
        "models": models,
    })))
}

/// One model: its config (the engine reads the policy and class labels from it), where to get
/// its file, and where its forwards go.
async fn model(
    State(repository): State<Arc<ModelRepository>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ServerError> {
    let offered = offered(&repository, &name)?;
    let phase2 = match &offered.policy.phase2 {
        Some(phase2) => {
            // Its key input's name, as the phase-2 model's config sets it.
            let key = repository.config(phase2)?.key;
            let infer = match &offered.policy.phase2_version {
                Some(v) => format!("/v2/models/{phase2}/versions/{v}/infer"),
                None => format!("/v2/models/{phase2}/infer"),
            };
            serde_json::json!({ "model": phase2, "key": key, "infer": infer })
        }
        None => serde_json::Value::Null,
    };
    Ok(Json(serde_json::json!({
        "name": name,
        "version": offered.version.to_string(),
        "file": format!("/edge/models/{name}/versions/{}/model.onnx", offered.version),
        "config": offered.config,
        "phase2": phase2,
    })))
}

/// The ONNX file of a version of a model with `[edge]`.
async fn model_file(
    State(repository): State<Arc<ModelRepository>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ServerError> {
    offered(&repository, &name)?;
    let version: u64 = version
        .parse()
        .map_err(|_| ServerError::BadRequest(format!("version '{version}' is not a number")))?;
    let path: PathBuf = repository.model_file(&name, version)?;
    let bytes = tokio::fs::read(&path).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ServerError::NotFound(format!("model '{name}' has no version {version}"))
        } else {
            ServerError::Unavailable(format!("cannot read model '{name}' version {version}: {e}"))
        }
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        bytes,
    )
        .into_response())
}
