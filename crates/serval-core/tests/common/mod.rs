//! Helpers shared by the integration tests and the benchmark: example paths, goldens, and
//! temporary repositories holding copies of example models with an edited `config.toml`.
// Each test crate (and the benchmark) uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use serval_core::{ModelRepository, RepositoryOptions};
use tempfile::TempDir;

/// The examples directory of the workspace.
pub const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

/// Every example model.
pub const MODELS: [&str; 10] = [
    "breast_cancer_gbt",
    "breast_cancer_lr",
    "breast_cancer_mlp",
    "breast_cancer_mlp_large",
    "diabetes_linear",
    "digits_phase1",
    "digits_phase2",
    "iris_forest",
    "iris_logits",
    "iris_lr",
];

/// The example model repository.
pub fn examples_models() -> PathBuf {
    Path::new(EXAMPLES).join("models")
}

/// Options for test repositories: one run state per loaded version keeps loading cheap.
pub fn options() -> RepositoryOptions {
    RepositoryOptions {
        ort_library: None,
        instances: Some(1),
    }
}

/// `examples/golden/<model>.json`.
pub struct Golden {
    /// Instances as sent: `{"key": ..., "features": [...]}`.
    pub rows: Vec<Value>,
    /// Raw graph output name -> one value per row.
    pub outputs: Map<String, Value>,
    /// Signature name -> output name -> one value per row.
    pub signatures: Map<String, Value>,
}

pub fn golden(model: &str) -> Golden {
    let path = Path::new(EXAMPLES)
        .join("golden")
        .join(format!("{model}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let Value::Object(mut golden) = serde_json::from_str(&text).unwrap() else {
        panic!("{} is not a JSON object", path.display());
    };
    let mut take = |field: &str| golden.remove(field).unwrap_or(Value::Null);
    let Value::Array(rows) = take("rows") else {
        panic!("{}: no rows", path.display())
    };
    let Value::Object(outputs) = take("outputs") else {
        panic!("{}: no outputs", path.display())
    };
    let signatures = match take("signatures") {
        Value::Object(s) => s,
        Value::Null => Map::new(),
        other => panic!("{}: bad signatures {other}", path.display()),
    };
    assert_eq!(rows.len(), 25, "{}", path.display());
    Golden {
        rows,
        outputs,
        signatures,
    }
}

/// Copies `examples/models/<model>` into `repo/<model>`.
pub fn copy_model(model: &str, repo: &Path) {
    copy_dir(&examples_models().join(model), &repo.join(model));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Sets top-level `key = value` in `repo/<model>/config.toml`, keeping everything else in it.
pub fn set_config(repo: &Path, model: &str, key: &str, value: impl Into<toml::Value>) {
    let path = repo.join(model).join("config.toml");
    let mut table: toml::Table = match std::fs::read_to_string(&path) {
        Ok(text) => text.parse().unwrap(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    };
    table.insert(key.to_owned(), value.into());
    std::fs::write(&path, toml::to_string(&table).unwrap()).unwrap();
}

/// A temporary repository holding a copy of `model` with `backend = "<backend>"` in its config.
pub fn forced_repo(model: &str, backend: &str) -> (TempDir, ModelRepository) {
    let dir = tempfile::tempdir().unwrap();
    copy_model(model, dir.path());
    set_config(dir.path(), model, "backend", backend);
    let repo = ModelRepository::open(dir.path(), options()).unwrap();
    (dir, repo)
}

/// Whether to run ONNX Runtime cases. When ONNX Runtime cannot be loaded this panics (so CI
/// notices), unless `SERVAL_SKIP_ORT=1` says its absence is expected.
pub fn ort_available() -> bool {
    match serval_core::backend::ort_status(None) {
        Ok(()) => true,
        Err(_) if std::env::var_os("SERVAL_SKIP_ORT").is_some_and(|v| v == "1") => false,
        Err(why) => panic!(
            "ONNX Runtime is unavailable ({why}); install it (pip install onnxruntime) or set \
             SERVAL_SKIP_ORT=1 to skip the ort cases"
        ),
    }
}
