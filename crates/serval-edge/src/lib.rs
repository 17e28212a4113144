//! Serval's edge runtime, the device half of the book's Two-Phase Predictions pattern.
//!
//! A small phase-1 model runs in-process on tract ([`load_phase1`], from bytes: no repository,
//! no ONNX Runtime). The [`CascadePolicy`](serval_core::cascade::CascadePolicy) shared with the
//! server decides per instance whether phase 1's answer stands or the instance goes to the
//! large phase-2 model ([`Phase1`]: no network, disk or clock, what the browser build runs too) on a server ([`Phase2Client`], Open Inference Protocol v2 REST, retried
//! with backoff). While phase 2 is out of reach, forwards wait in a durable [`OfflineQueue`]
//! (the prediction log's write-ahead segments) and phase 1's answer is returned marked
//! provisional; they are replayed in order, with their keys, once phase 2 answers again.
//!
//! ```no_run
//! use serval_core::cascade::CascadePolicy;
//! use serval_edge::{EdgeRuntime, Phase1, Phase2Client, Phase2Options, load_phase1};
//!
//! let bytes = std::fs::read("examples/models/digits_phase1/1/model.onnx")?;
//! let phase1 = load_phase1("digits_phase1", &bytes, Default::default())?;
//! let policy = CascadePolicy::from_toml("[forward]\nconfidence = [0.0, 0.95]\n")?;
//! let phase2 = Phase2Client::new(Phase2Options::new("http://127.0.0.1:8000", "digits_phase2"));
//! let mut edge = EdgeRuntime::new(Phase1::new(phase1, policy)?, Some(phase2), None);
//! let instances = [serde_json::json!({"key": "a", "features": vec![0.0; 64]})];
//! let mut print = |answers: &[serval_edge::Answer]| -> Result<(), serval_edge::EdgeError> {
//!     answers.iter().for_each(|a| println!("{}: phase {}", a.key, a.phase));
//!     Ok(())
//! };
//! edge.answer(&instances, &mut print)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod error;
mod phase2;
mod queue;
mod runtime;

pub use error::EdgeError;
pub use phase2::{Phase2Answer, Phase2Client, Phase2Options, infer_request, split_reply};
pub use queue::{OfflineQueue, QueueOptions, WhenFull};
pub use runtime::{
    Answer, EdgeRuntime, EdgeStats, FIRST_OUTAGE_PROBE, Judged, Phase1, ReportOptions, load_phase1,
};
