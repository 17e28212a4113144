//! `/dashboard` in `serval serve`: each model's windows (metrics and estimates against the
//! rules' thresholds, label coverage, drift per column as a heat map, reference and window
//! histograms, alerts), plotted in the browser by ECharts.
//!
//! The page, its script and the plotting library are compiled into the binary: nothing is
//! fetched from a CDN, so the dashboard works offline. Its data comes from `serval-eval`, on a
//! blocking thread (an evaluation is query-engine work, never run on the I/O threads), one
//! evaluation at a time.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serval_batch::ModelCatalog;
use serval_eval::{EvalError, EvalOptions, WindowSpec};
use serval_log::LogRoot;
use serval_server::error::ServerError;

const INDEX: &str = include_str!("../assets/index.html");
const SCRIPT: &str = include_str!("../assets/dashboard.js");
const STYLE: &str = include_str!("../assets/dashboard.css");
const ECHARTS: &str = include_str!("../assets/vendor/echarts.min.js");

/// What the dashboard reads.
#[derive(Clone)]
struct Dashboard {
    catalog: Arc<ModelCatalog>,
    root: LogRoot,
    /// One evaluation at a time: a dashboard left open in many tabs must not take every core.
    evaluating: Arc<tokio::sync::Semaphore>,
}

/// The dashboard's routes, under `/dashboard`, over the models of `catalog` logged in `root`.
pub fn router(catalog: Arc<ModelCatalog>, root: LogRoot) -> axum::Router {
    let state = Dashboard {
        catalog,
        root,
        evaluating: Arc::new(tokio::sync::Semaphore::new(1)),
    };
    axum::Router::new()
        .route(
            "/dashboard",
            get(|| asset("text/html; charset=utf-8", INDEX)),
        )
        .route(
            "/dashboard/dashboard.js",
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/dashboard/dashboard.css",
            get(|| asset("text/css; charset=utf-8", STYLE)),
        )
        .route(
            "/dashboard/echarts.min.js",
            get(|| asset("text/javascript; charset=utf-8", ECHARTS)),
        )
        .route("/dashboard/api/models", get(models))
        .route("/dashboard/api/eval", get(evaluate))
        .with_state(state)
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The repository's models, with their rules (drawn as thresholds).
async fn models(State(state): State<Dashboard>) -> Result<Json<serde_json::Value>, ServerError> {
    let repository = state.catalog.repository();
    let names = repository.model_names().map_err(ServerError::Core)?;
    let models: Vec<serde_json::Value> = names
        .iter()
        .map(|name| {
            let rules = repository
                .config(name)
                .map(|c| c.monitor.rules)
                .unwrap_or_default();
            serde_json::json!({ "name": name, "rules": rules })
        })
        .collect();
    Ok(Json(serde_json::json!({ "models": models })))
}

/// `?model=M[&window=1d][&version=N]`: the model's windows with histograms, and its rules.
async fn evaluate(
    State(state): State<Dashboard>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ServerError> {
    let model = query
        .get("model")
        .ok_or_else(|| ServerError::BadRequest("the query needs model=NAME".into()))?
        .clone();
    let window = query.get("window").map_or("1d", String::as_str);
    let window: WindowSpec = window.parse().map_err(from_eval)?;
    let version = query
        .get("version")
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| ServerError::BadRequest(format!("version={v}: not a number")))
        })
        .transpose()?;
    let rules = state
        .catalog
        .repository()
        .config(&model)
        .map_err(ServerError::Core)?
        .monitor
        .rules;
    let options = EvalOptions {
        version,
        histograms: true,
        memory_limit: Some(512 * 1024 * 1024),
        ..EvalOptions::new(model.clone(), window)
    };
    let _turn = state
        .evaluating
        .acquire()
        .await
        .map_err(|_| ServerError::Unavailable("the server is shutting down".into()))?;
    let (catalog, root) = (state.catalog.clone(), state.root.clone());
    let reports = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ServerError::Unavailable(format!("cannot evaluate: {e}")))?;
        runtime
            .block_on(serval_eval::evaluate(catalog, &root, &options))
            .map_err(from_eval)
    })
    .await
    .map_err(|e| ServerError::Unavailable(format!("the evaluation stopped: {e}")))??;
    Ok(Json(serde_json::json!({
        "model": model,
        "window": window.to_string(),
        "rules": rules,
        "reports": reports,
    })))
}

/// An evaluation error in the server's terms (its one table maps them to statuses).
fn from_eval(e: EvalError) -> ServerError {
    match e {
        EvalError::Core(e) | EvalError::Batch(serval_batch::BatchError::Core(e)) => {
            ServerError::Core(e)
        }
        EvalError::Invalid(message) => ServerError::BadRequest(message),
        other => ServerError::Unavailable(format!("cannot read the prediction log: {other}")),
    }
}
