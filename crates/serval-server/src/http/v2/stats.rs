//! Triton's statistics extension and model configuration.

use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{Value, json};
use serval_core::TensorSpec;

use super::{ModelPath, resolve};
use crate::error::Result;
use crate::http::{AppState, json_ok};
use crate::store::ServedVersion;

pub(super) async fn model_config(
    State(state): State<AppState>,
    Path(p): Path<ModelPath>,
) -> Result<Response> {
    config(&state, &p.model, p.version.as_deref())
}

pub(super) async fn all_stats(State(state): State<AppState>) -> Result<Response> {
    let stats: Vec<Value> = state
        .pipeline
        .store()
        .models()
        .iter()
        .flat_map(|m| m.versions.values().map(|v| version_stats(&m.name, v)))
        .collect();
    json_ok(&json!({ "model_stats": stats }))
}

/// Statistics of every loaded version, or of the one named.
pub(super) async fn model_stats(
    State(state): State<AppState>,
    Path(p): Path<ModelPath>,
) -> Result<Response> {
    let stats: Vec<Value> = match p.version.as_deref() {
        None => {
            let served_model = state.pipeline.store().model(&p.model)?;
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
fn version_stats(model: &str, served: &ServedVersion) -> Value {
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
    let mut config = json!({
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
    });
    // A cascade reads as Triton's ensemble of its two phases, with the policy between them.
    if let Some(cascade) = m.cascade() {
        let step = |phase: &serval_core::Model| json!({"model_name": phase.name(), "model_version": phase.version()});
        config["platform"] = json!("ensemble");
        config["ensemble_scheduling"] =
            json!({"step": [step(cascade.phase1()), step(cascade.phase2())]});
        config["cascade_policy"] = json!(cascade.policy());
    }
    json_ok(&config)
}

fn triton_type(spec: &TensorSpec) -> &'static str {
    match spec.data_type {
        serval_core::DataType::Bytes => "STRING",
        other => other.as_str(),
    }
}
