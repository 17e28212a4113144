//! `POST /v2/models/{m}[/versions/{v}]/log`, Serval's extension beside `infer`: predictions made
//! elsewhere (the edge runtime's phase 1) recorded in the prediction log with `source = edge`,
//! so the device's model is evaluated like the server's.
//!
//! Body: `{"signature"?: s, "predictions": [{"key", "timestamp_us"?, "inputs": {...},
//! "outputs": {...}}, ...]}`; answer `{"accepted": n}`. All records or none are taken.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;

use super::ModelPath;
use crate::error::Result;
use crate::http::{AppState, json_ok, parse_json_tree, read_admitted_body};
use crate::pipeline::ReportedPrediction;
use crate::store::VersionSelector;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogRequest {
    #[serde(default)]
    signature: Option<String>,
    predictions: Vec<ReportedPrediction>,
}

pub(super) async fn log(
    State(state): State<AppState>,
    Path(ModelPath { model, version }): Path<ModelPath>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let body = read_admitted_body(&headers, body, &state.pipeline).await?;
    let request: LogRequest = parse_json_tree(&body.bytes, &body.memory)?;
    let version = VersionSelector::parse(version.as_deref())?;
    let accepted = state
        .pipeline
        .record_reported(
            &model,
            &version,
            request.signature.as_deref(),
            request.predictions,
        )
        .await?;
    json_ok(&serde_json::json!({ "accepted": accepted }))
}
