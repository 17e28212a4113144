//! Serval's core: the model repository, signatures, tensors, inference backends and
//! pre/post-processing — everything needed to serve an exported ONNX model in-process.
//!
//! The main roles:
//! - [`ModelRepository`] reads `<root>/<model>/<version>/model.onnx` and the optional
//!   `config.toml` ([`ModelConfig`]) beside the versions, and loads [`Model`]s;
//! - a [`Model`] is one loaded version: its [`Signature`]s, the engine chosen for it
//!   ([`backend::BackendChoice`]: tract or ONNX Runtime) and the validated
//!   [`Model::predict`] path over [`Tensor`]s;
//! - [`instances::predict_instances`] is the row format with keys: JSON instances in,
//!   keyed predictions out.
//!
//! `serval-core` knows nothing about HTTP, gRPC or the CLI; front ends convert [`Error`]s.
//!
//! # Example
//!
//! ```
//! use serval_core::{ModelRepository, RepositoryOptions, instances::predict_instances};
//! use serde_json::json;
//!
//! let repository = ModelRepository::open("../../examples/models", RepositoryOptions::default())?;
//! let model = repository.load("iris_logits", None)?;
//! let instances = [json!({"key": "flower-1", "features": [5.1, 3.5, 1.4, 0.2]})];
//! let predictions = predict_instances(&model, Some("classify"), &instances)?;
//! let row = serde_json::to_value(predictions.row(0))?;
//! assert_eq!(row["key"], "flower-1");
//! assert_eq!(row["label"], "setosa");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod backend;
pub mod cascade;
pub mod config;
pub mod error;
pub mod graph;
pub mod instances;
pub mod manifest;
pub mod model;
mod postprocess;
pub mod repository;
pub mod signature;
pub mod tensor;
pub mod warmup;

pub use config::ModelConfig;
pub use error::{Error, InputError, Result};
pub use graph::TensorSpec;
pub use model::{Model, ValidInputs};
pub use repository::{ModelRepository, RepositoryOptions};
pub use signature::{DEFAULT_SIGNATURE, Signature};
pub use tensor::{DataType, Tensor, TensorData};
