//! Triton's model repository extension: the index of every version and its state, load and
//! unload.

use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{Value, json};

use crate::error::Result;
use crate::http::{AppState, json_ok};

/// Triton's model repository extension: every version and its state.
pub(super) async fn index(State(state): State<AppState>) -> Result<Response> {
    let index: Vec<Value> = state
        .pipeline
        .store()
        .index()
        .into_iter()
        .map(|s| json!({"name": s.name, "version": if s.version == 0 { String::new() } else { s.version.to_string() }, "state": s.state, "reason": s.reason}))
        .collect();
    json_ok(&index)
}

/// Loads (or reloads) a model now; answers once it serves or says why it cannot.
pub(super) async fn load(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Response> {
    state.pipeline.load_model(&model).await?;
    json_ok(&json!({}))
}

/// Stops serving a model (in-flight requests finish) until it is loaded again.
pub(super) async fn unload(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Response> {
    state.pipeline.unload_model(&model).await?;
    json_ok(&json!({}))
}
