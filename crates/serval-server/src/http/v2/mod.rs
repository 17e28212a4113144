//! The Open Inference Protocol v2 REST API (Triton, KServe, MLServer), with Triton's binary
//! tensor extension: health, server and model metadata, model config, and `infer`.

pub(crate) mod infer;
mod log;
mod repository;
mod stats;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;
use serval_core::TensorSpec;

use super::{AppState, json_ok};
use crate::error::{Result, ServerError};
use crate::store::{ServedVersion, VersionSelector};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route(
            "/v2/health/live",
            get(|| async { axum::Json(json!({"live": true})) }),
        )
        .route("/v2/health/ready", get(server_ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{model}/config", get(stats::model_config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(stats::model_config),
        )
        .route("/v2/repository/index", post(repository::index))
        .route("/v2/repository/models/{model}/load", post(repository::load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository::unload),
        )
        .route("/v2/models/stats", get(stats::all_stats))
        .route("/v2/models/{model}/stats", get(stats::model_stats))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(stats::model_stats),
        )
        .route("/v2/models/{model}/infer", post(infer::infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer::infer),
        )
        .route("/v2/models/{model}/log", post(log::log))
        .route("/v2/models/{model}/versions/{version}/log", post(log::log))
}

/// What `GET /v2` answers (shared with gRPC `ServerMetadata`).
pub fn server_extensions() -> Vec<&'static str> {
    vec![
        "binary_tensor_data",
        "model_configuration",
        "model_repository",
        "statistics",
        "schedule_policy",
    ]
}

async fn server_metadata() -> Response {
    axum::Json(json!({"name": "serval", "version": env!("CARGO_PKG_VERSION"), "extensions": server_extensions()})).into_response()
}

async fn server_ready(State(state): State<AppState>) -> Result<Response> {
    if state.pipeline.server_ready() {
        Ok(axum::Json(json!({"ready": true})).into_response())
    } else {
        Err(ServerError::Unavailable(
            "not ready: no model serves yet, or (with --strict-readiness) some model failed to \
             load; see /v2/repository/index"
                .into(),
        ))
    }
}

pub(super) fn resolve(
    state: &AppState,
    model: &str,
    version: Option<&str>,
) -> Result<Arc<ServedVersion>> {
    state
        .pipeline
        .store()
        .model(model)?
        .resolve(&VersionSelector::parse(version)?)
}

/// Tensor metadata as OIP lists it.
#[derive(Serialize)]
pub(crate) struct TensorMetadata {
    name: String,
    datatype: &'static str,
    shape: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<TensorParameters>,
}

/// What an output tensor's columns are, for an output the graph makes as `{class: p}` maps.
#[derive(Serialize)]
pub(crate) struct TensorParameters {
    class_labels: Vec<String>,
}

pub(crate) fn tensor_metadata(
    specs: &[TensorSpec],
    class_maps: &std::collections::BTreeMap<String, Vec<String>>,
) -> Vec<TensorMetadata> {
    specs
        .iter()
        .map(|s| TensorMetadata {
            name: s.name.clone(),
            datatype: s.data_type.as_str(),
            shape: s.shape_i64(),
            parameters: class_maps.get(&s.name).map(|labels| TensorParameters {
                class_labels: labels.clone(),
            }),
        })
        .collect()
}

/// `/v2/models/{model}[/versions/{version}]/...`: the version is optional in every model route.
#[derive(Deserialize)]
pub(super) struct ModelPath {
    model: String,
    version: Option<String>,
}

async fn model_metadata(
    State(state): State<AppState>,
    Path(p): Path<ModelPath>,
) -> Result<Response> {
    metadata(&state, &p.model, p.version.as_deref())
}

fn metadata(state: &AppState, model: &str, version: Option<&str>) -> Result<Response> {
    let served = resolve(state, model, version)?;
    let served_model = state.pipeline.store().model(model)?;
    let signature = served.model.signature(None)?;
    json_ok(&json!({
        "name": model,
        "versions": served_model.versions.keys().map(u64::to_string).collect::<Vec<_>>(),
        "platform": "onnx_onnxv1",
        "inputs": tensor_metadata(&signature.inputs, &Default::default()),
        "outputs": tensor_metadata(&signature.outputs, &signature.class_maps),
    }))
}

async fn model_ready(State(state): State<AppState>, Path(p): Path<ModelPath>) -> Result<Response> {
    resolve(&state, &p.model, p.version.as_deref())?;
    Ok(axum::Json(json!({"name": p.model, "ready": true})).into_response())
}
