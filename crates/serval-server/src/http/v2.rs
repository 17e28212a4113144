//! The Open Inference Protocol v2 REST API (Triton, KServe, MLServer), with Triton's binary
//! tensor extension: health, server and model metadata, model config, and `infer`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use serval_core::instances::FlatView;
use serval_core::{Tensor, TensorSpec};

use super::{
    AppState, check_instances, header_timeout, json_bytes, json_ok, parse_json, read_body,
};
use crate::codec;
use crate::error::{Result, ServerError};
use crate::infer::{InferRequest, take_key_tensor};
use crate::store::{ServedVersion, VersionSelector};

/// Header giving the JSON part's length when binary tensor data follows it.
const HEADER_LENGTH: &str = "inference-header-content-length";

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
        .route("/v2/models/{model}/config", get(model_config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(model_config),
        )
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        )
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{model}/stats", get(model_stats))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(model_stats),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer))
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
    if state.inferencer.server_ready() {
        Ok(axum::Json(json!({"ready": true})).into_response())
    } else {
        Err(ServerError::Unavailable(
            "not ready: no model serves yet, or (with --strict-readiness) some model failed to \
             load; see /v2/repository/index"
                .into(),
        ))
    }
}

fn resolve(state: &AppState, model: &str, version: Option<&str>) -> Result<Arc<ServedVersion>> {
    state
        .inferencer
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
struct ModelPath {
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
    let served_model = state.inferencer.store().model(model)?;
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

async fn model_config(State(state): State<AppState>, Path(p): Path<ModelPath>) -> Result<Response> {
    config(&state, &p.model, p.version.as_deref())
}

/// Triton's model repository extension: every version and its state.
async fn repository_index(State(state): State<AppState>) -> Result<Response> {
    let index: Vec<Value> = state
        .inferencer
        .store()
        .index()
        .into_iter()
        .map(|s| json!({"name": s.name, "version": if s.version == 0 { String::new() } else { s.version.to_string() }, "state": s.state, "reason": s.reason}))
        .collect();
    json_ok(&index)
}

/// Loads (or reloads) a model now; answers once it serves or says why it cannot.
async fn repository_load(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Response> {
    let store = state.inferencer.store_handle();
    tokio::task::spawn_blocking(move || store.load_model(&model))
        .await
        .map_err(|e| ServerError::Unavailable(format!("load task failed: {e}")))??;
    json_ok(&json!({}))
}

/// Stops serving a model (in-flight requests finish) until it is loaded again.
async fn repository_unload(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Response> {
    // Waits for any reconciliation in progress, so it runs off the async threads like a load.
    let store = state.inferencer.store_handle();
    tokio::task::spawn_blocking(move || store.unload_model(&model))
        .await
        .map_err(|e| ServerError::Unavailable(format!("unload task failed: {e}")))??;
    json_ok(&json!({}))
}

async fn all_stats(State(state): State<AppState>) -> Result<Response> {
    let stats: Vec<Value> = state
        .inferencer
        .store()
        .models()
        .iter()
        .flat_map(|m| m.versions.values().map(|v| version_stats(&m.name, v)))
        .collect();
    json_ok(&json!({ "model_stats": stats }))
}

/// Statistics of every loaded version, or of the one named.
async fn model_stats(State(state): State<AppState>, Path(p): Path<ModelPath>) -> Result<Response> {
    let stats: Vec<Value> = match p.version.as_deref() {
        None => {
            let served_model = state.inferencer.store().model(&p.model)?;
            served_model
                .versions
                .values()
                .map(|v| version_stats(&p.model, v))
                .collect()
        }
        version => {
            let served = resolve(&state, &p.model, version)?;
            vec![version_stats(&p.model, &served)]
        }
    };
    json_ok(&json!({ "model_stats": stats }))
}

/// Triton's statistics extension for one version, plus its memory footprint and queue depth.
fn version_stats(model: &str, served: &crate::store::ServedVersion) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let s = served.batcher.stats();
    let success = s.success.load(Relaxed);
    json!({
        "name": model,
        "version": served.model.version().to_string(),
        "inference_count": s.inferences.load(Relaxed),
        "execution_count": s.executions.load(Relaxed),
        "inference_stats": {
            "success": {"count": success},
            "fail": {"count": s.failure.load(Relaxed)},
            "queue": {"count": success, "ns": s.queue_ns.load(Relaxed)},
            "compute_infer": {"count": s.executions.load(Relaxed), "ns": s.compute_ns.load(Relaxed)},
        },
        "engine_panics": s.engine_panics.load(Relaxed),
        "queue_size": served.batcher.queued(),
        "engine_threads": served.batcher.workers(),
        "memory": {"rss_bytes_at_load": served.rss_bytes_at_load, "process_rss_bytes": crate::store::resident_bytes()},
    })
}

/// A minimal Triton model configuration, enough for perf_analyzer to drive the model.
fn config(state: &AppState, model: &str, version: Option<&str>) -> Result<Response> {
    let served = resolve(state, model, version)?;
    let m = &served.model;
    let signature = m.signature(None)?;
    let batchable = m.is_batchable();
    let max_batch_size = if batchable {
        m.config().batching.max_batch_size
    } else {
        0
    };
    let tensors = |specs: &[TensorSpec]| -> Vec<Value> {
        specs
            .iter()
            .map(|s| {
                let dims = if batchable { &s.shape_i64()[1..] } else { &s.shape_i64()[..] };
                json!({"name": s.name, "data_type": format!("TYPE_{}", triton_type(s)), "dims": dims})
            })
            .collect()
    };
    json_ok(&json!({
        "name": model,
        "platform": "onnxruntime_onnx",
        "backend": m.backend_choice().kind.as_str(),
        "backend_reason": m.backend_choice().reason,
        "max_batch_size": max_batch_size,
        "input": tensors(&signature.inputs),
        "output": tensors(&signature.outputs),
        "dynamic_batching": {
            "max_queue_delay_microseconds": m.config().batching.max_queue_delay_us,
            "preferred_batch_size": m.config().batching.preferred_batch_sizes,
        },
        // The engine threads are Triton's CPU model instances.
        "instance_group": [{"kind": "KIND_CPU", "count": served.batcher.workers()}],
        "version_policy": {"latest": {"num_versions": 1}},
    }))
}

fn triton_type(spec: &TensorSpec) -> &'static str {
    match spec.data_type {
        serval_core::DataType::Bytes => "STRING",
        other => other.as_str(),
    }
}

#[derive(Deserialize)]
struct InferRequestBody {
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputTensor>,
    outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Deserialize)]
struct InputTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    data: Option<codec::JsonData>,
}

#[derive(Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// An `infer` response's JSON part, serialized straight from the output tensors: building a
/// `serde_json::Value` tree first cost an allocation per number.
#[derive(Serialize)]
struct InferResponseBody<'a> {
    /// Echoed only when the request had one (OIP: an optional string, never `null`).
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    model_name: &'a str,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<ResponseParameters<'a>>,
    outputs: Vec<OutputTensor<'a>>,
}

#[derive(Serialize)]
struct ResponseParameters<'a> {
    precomputed_at: &'a str,
}

#[derive(Serialize)]
struct OutputTensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParameters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<FlatView<'a>>,
}

/// Triton's binary extension: the output's bytes follow the JSON part.
#[derive(Serialize)]
struct BinaryParameters {
    binary_data_size: usize,
}

async fn infer(
    State(state): State<AppState>,
    Path(ModelPath { model, version }): Path<ModelPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let bytes = read_body(&headers, body, &state.limits).await?;
    let selector = VersionSelector::parse(version.as_deref())?;
    let served_model = state.inferencer.store().model(&model)?;
    state
        .inferencer
        .shed_if_saturated(&served_model, &selector, "v2_rest")?;
    let json_len = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| {
                    ServerError::BadRequest(format!(
                        "{HEADER_LENGTH} must be a non-negative integer"
                    ))
                })?,
        ),
    };
    let (json_part, mut binary) = match json_len {
        Some(n) if n > bytes.len() => {
            return Err(ServerError::BadRequest(format!(
                "{HEADER_LENGTH} is {n} but the body has only {} bytes",
                bytes.len()
            )));
        }
        Some(0) => {
            return Err(ServerError::BadRequest(
                "raw binary requests (header length 0) are not supported; send a JSON header"
                    .into(),
            ));
        }
        Some(n) => (&bytes[..n], &bytes[n..]),
        None => (&bytes[..], &[][..]),
    };
    let request: InferRequestBody = parse_json(json_part)?;
    let key_name = served_model.config.key.clone();
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in &request.inputs {
        let data_type = codec::data_type_of(&input.name, &input.datatype)?;
        let shape = codec::shape_of(&input.name, &input.shape)?;
        let tensor = match (input.parameters.get("binary_data_size"), &input.data) {
            (Some(size), _) => {
                let size = size
                    .as_u64()
                    .and_then(|s| usize::try_from(s).ok())
                    .ok_or_else(|| {
                        ServerError::BadRequest(format!(
                            "input '{}': binary_data_size must be a non-negative integer",
                            input.name
                        ))
                    })?;
                if size > binary.len() {
                    return Err(ServerError::BadRequest(format!(
                        "input '{}': binary_data_size {size} exceeds the {} bytes of binary data left",
                        input.name,
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                codec::decode_raw(&input.name, data_type, shape, mine)?
            }
            (None, Some(data)) => codec::decode_json(&input.name, data_type, shape, data)?,
            (None, None) => {
                return Err(ServerError::BadRequest(format!(
                    "input '{}' has neither data nor binary_data_size",
                    input.name
                )));
            }
        };
        inputs.push((input.name.clone(), tensor));
    }
    if !binary.is_empty() {
        return Err(ServerError::BadRequest(format!(
            "{} bytes of binary data are not claimed by any input's binary_data_size",
            binary.len()
        )));
    }
    let keys = take_key_tensor(&mut inputs, &key_name)?;
    check_instances(inputs.first().map_or(0, |(_, t)| t.rows()), &state.limits)?;
    let signature = match request.parameters.get("signature_name") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let response = state
        .inferencer
        .infer(InferRequest {
            model: model.clone(),
            version: selector,
            signature,
            inputs,
            keys,
            protocol: "v2_rest",
            timeout: match request.parameters.get("timeout") {
                // Triton's schedule-policy extension: the timeout parameter is in microseconds.
                Some(v) => Some(Duration::from_micros(v.as_u64().ok_or_else(|| {
                    ServerError::BadRequest(
                        "parameter 'timeout' must be a non-negative integer (microseconds)".into(),
                    )
                })?)),
                None => header_timeout(&headers)?,
            },
        })
        .await?;
    let key_tensor = response.key_tensor();
    let mut outputs: Vec<(&str, &Tensor)> = response
        .outputs
        .iter()
        .map(|(n, t)| (n.as_str(), t))
        .collect();
    if let Some(requested) = &request.outputs {
        for r in requested {
            if r.name != key_name && !outputs.iter().any(|(n, _)| *n == r.name) {
                return Err(ServerError::BadRequest(format!(
                    "requested output '{}' is not an output of model '{model}' (outputs: {})",
                    r.name,
                    outputs
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        outputs.retain(|(n, _)| requested.iter().any(|r| r.name == *n));
    }
    if let Some(key_tensor) = &key_tensor {
        outputs.push((key_name.as_str(), key_tensor));
    }
    let all_binary = request
        .parameters
        .get("binary_data_output")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let wants_binary = |name: &str| {
        request
            .outputs
            .as_ref()
            .and_then(|rs| rs.iter().find(|r| r.name == name))
            .and_then(|r| r.parameters.get("binary_data"))
            .and_then(Value::as_bool)
            .unwrap_or(all_binary)
    };
    let mut tail = Vec::new();
    let mut encoded = Vec::with_capacity(outputs.len());
    for (name, tensor) in &outputs {
        if wants_binary(name) {
            let raw = codec::encode_raw(tensor);
            let parameters = BinaryParameters {
                binary_data_size: raw.len(),
            };
            tail.extend_from_slice(&raw);
            encoded.push(OutputTensor {
                name,
                datatype: tensor.data_type().as_str(),
                shape: tensor.shape(),
                parameters: Some(parameters),
                data: None,
            });
        } else {
            encoded.push(OutputTensor {
                name,
                datatype: tensor.data_type().as_str(),
                shape: tensor.shape(),
                parameters: None,
                data: Some(FlatView(tensor)),
            });
        }
    }
    let header_json = InferResponseBody {
        id: request.id.as_deref(),
        model_name: &model,
        model_version: response.version.to_string(),
        parameters: response
            .precomputed_at
            .as_deref()
            .map(|at| ResponseParameters { precomputed_at: at }),
        outputs: encoded,
    };
    let mut body = serde_json::to_vec(&header_json)
        .map_err(|e| ServerError::BadRequest(format!("cannot encode response: {e}")))?;
    if tail.is_empty() {
        let mut res = json_bytes(StatusCode::OK, body);
        super::mark_precomputed(&mut res, response.precomputed_at.as_deref());
        return Ok(res);
    }
    let json_len = body.len();
    body.extend_from_slice(&tail);
    let mut res = (StatusCode::OK, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    res.headers_mut()
        .insert(HEADER_LENGTH, HeaderValue::from(json_len));
    super::mark_precomputed(&mut res, response.precomputed_at.as_deref());
    Ok(res)
}
