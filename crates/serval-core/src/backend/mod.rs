//! The engine contract: run one batch of named tensors through one loaded graph.
//!
//! A [`Backend`] is loaded once per model version and shared by every thread; engines keep
//! per-thread run state in a [`pool::Pool`], so nothing is loaded on the request path.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::config::BackendPreference;
use crate::graph::{GraphInfo, TractHazard};
use crate::tensor::Tensor;

#[cfg(feature = "ort")]
pub mod ort;
pub mod pool;
pub mod tract;

/// Where a graph's bytes come from: a file (whose directory holds any external tensor data) or
/// memory (the edge runtime's `Model::from_bytes`).
#[derive(Debug, Clone, Copy)]
pub enum ModelSource<'a> {
    /// An ONNX file on disk.
    File(&'a Path),
    /// A whole ONNX file in memory.
    Bytes(&'a [u8]),
}

/// A loaded graph, ready to run batches from any thread.
pub trait Backend: Send + Sync {
    /// Runs one batch. `inputs` are in graph input order; outputs come back in graph output order.
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, String>;
}

/// Which engine runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// tract, pure Rust.
    Tract,
    /// ONNX Runtime through the `ort` crate.
    Ort,
    /// No engine of its own: a cascade runs its phase models on theirs.
    Cascade,
}

impl BackendKind {
    /// Short name (`tract`, `ort`).
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Tract => "tract",
            BackendKind::Ort => "ort",
            BackendKind::Cascade => "cascade",
        }
    }
}

/// The engine chosen for a model version, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendChoice {
    /// The engine.
    pub kind: BackendKind,
    /// Why it was chosen, for `serval inspect`.
    pub reason: String,
}

/// The engines to try for `graph`, in order, each with the reason it would be chosen; or why
/// none can run it. The loader takes the first that loads and passes warm-up.
///
/// With ONNX Runtime present, `auto` prefers it: it is the reference every exporter tests
/// against, and it matches or beats tract on every measured model (docs/benchmarks.md). tract
/// comes second, as the fallback where ONNX Runtime fails, unless a known hazard says it would
/// refuse the graph or answer wrongly. Without ONNX Runtime, tract runs what it can run
/// correctly. `ort_status` is `Ok(())` when ONNX Runtime is loaded, else the reason it is not.
pub fn candidates(
    preference: BackendPreference,
    graph: &GraphInfo,
    ort_status: Result<(), &str>,
) -> Result<Vec<BackendChoice>, String> {
    let fatal: Vec<&str> = graph
        .tract_hazards
        .iter()
        .filter(|h| h.is_fatal())
        .map(TractHazard::reason)
        .collect();
    let slow: Vec<&str> = graph
        .tract_hazards
        .iter()
        .filter(|h| !h.is_fatal())
        .map(TractHazard::reason)
        .collect();
    let choice = |kind, reason: String| BackendChoice { kind, reason };
    match preference {
        BackendPreference::Tract if !fatal.is_empty() => Err(format!(
            "backend = \"tract\" refused: {}; use backend = \"ort\" or \"auto\"",
            fatal.join("; ")
        )),
        BackendPreference::Tract => Ok(vec![choice(
            BackendKind::Tract,
            "configured: backend = \"tract\"".into(),
        )]),
        BackendPreference::Ort => match ort_status {
            Ok(()) => Ok(vec![choice(
                BackendKind::Ort,
                "configured: backend = \"ort\"".into(),
            )]),
            Err(why) => Err(format!(
                "backend = \"ort\" but ONNX Runtime is unavailable: {why}"
            )),
        },
        BackendPreference::Auto => match (ort_status, fatal.is_empty()) {
            (Ok(()), tract_may_run) => {
                let mut order = vec![choice(
                    BackendKind::Ort,
                    "auto: ONNX Runtime is present and preferred".into(),
                )];
                if tract_may_run {
                    order.push(choice(
                        BackendKind::Tract,
                        "auto: tract, as the fallback".into(),
                    ));
                }
                Ok(order)
            }
            (Err(why), true) => {
                let mut reason = format!(
                    "auto: ONNX Runtime unavailable ({why}); tract runs every operator of this graph"
                );
                if !slow.is_empty() {
                    reason = format!("{reason}, but {}", slow.join("; "));
                }
                Ok(vec![choice(BackendKind::Tract, reason)])
            }
            (Err(why), false) => Err(format!(
                "needs ONNX Runtime because {}; but it is unavailable: {why}",
                fatal.join("; ")
            )),
        },
    }
}

/// Loads `source` on the chosen engine with `instances` parallel run states.
pub fn load(
    kind: BackendKind,
    source: ModelSource<'_>,
    graph: &GraphInfo,
    instances: usize,
) -> Result<Arc<dyn Backend>, String> {
    match kind {
        BackendKind::Tract => {
            let model_dir = match source {
                ModelSource::File(path) => path.parent(),
                ModelSource::Bytes(_) => None,
            };
            Ok(Arc::new(tract::TractBackend::load(
                model_dir, graph, instances,
            )?))
        }
        #[cfg(feature = "ort")]
        BackendKind::Ort => Ok(Arc::new(ort::OrtBackend::load(source, graph, instances)?)),
        #[cfg(not(feature = "ort"))]
        BackendKind::Ort => {
            let _ = source;
            Err("this build of Serval has no ONNX Runtime support (feature `ort`)".into())
        }
        BackendKind::Cascade => {
            Err("a cascade has no graph to load: it runs its phases on their engines".into())
        }
    }
}

/// Whether ONNX Runtime can be used in this process, initialising it on first call.
///
/// The library is looked up in `explicit`, then `ORT_DYLIB_PATH`, then the `onnxruntime`
/// Python package; only the first call's `explicit` counts (the runtime is process-wide).
pub fn ort_status(explicit: Option<&Path>) -> Result<(), String> {
    #[cfg(feature = "ort")]
    return ort::runtime(explicit).map(|_| ());
    #[cfg(not(feature = "ort"))]
    {
        let _ = explicit;
        Err("this build of Serval has no ONNX Runtime support (feature `ort`)".into())
    }
}
