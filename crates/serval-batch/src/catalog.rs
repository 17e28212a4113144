//! Models loaded once per process and shared by every partition and query.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serval_core::config::BackendPreference;
use serval_core::{Error as CoreError, Model, ModelRepository};

use crate::BatchError;

/// A repository's models, loaded on first use.
///
/// Shared by model and resolved version, so `predict('m')`, `predict('m', '3')` and
/// `predict('m', 'stable')` share one load when they name the same version.
pub struct ModelCatalog {
    repository: ModelRepository,
    backend: Option<BackendPreference>,
    cache: Mutex<Cache>,
}

/// Loaded models by the version they are, and by how callers named them.
#[derive(Default)]
struct Cache {
    by_version: HashMap<(String, u64), Arc<Model>>,
    by_request: HashMap<(String, Option<String>), Arc<Model>>,
}

impl std::fmt::Debug for ModelCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelCatalog")
            .field("root", &self.repository.root())
            .finish_non_exhaustive()
    }
}

impl ModelCatalog {
    /// A catalog over `repository`; nothing is loaded yet.
    pub fn new(repository: ModelRepository) -> ModelCatalog {
        ModelCatalog {
            repository,
            backend: None,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// Runs every model on this engine whatever its config says: batch jobs feed thousands of
    /// rows per call, where ONNX Runtime's kernels beat tract's even on graphs tract serves
    /// best one request at a time.
    pub fn with_backend(mut self, backend: BackendPreference) -> ModelCatalog {
        self.backend = Some(backend);
        self
    }

    /// The repository models come from.
    pub fn repository(&self) -> &ModelRepository {
        &self.repository
    }

    /// The model at `version` (a number or a label from its config), or its default version.
    pub fn get(&self, model: &str, version: Option<&str>) -> Result<Arc<Model>, BatchError> {
        let request = (model.to_owned(), version.map(str::to_owned));
        // Loading under the lock is deliberate: every partition asks for the same model at once,
        // and it must be loaded exactly once.
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = cache.by_request.get(&request) {
            return Ok(found.clone());
        }
        let number = match version {
            Some(v) => self.resolve_version(model, v)?,
            None => self.default_version(model)?,
        };
        let loaded = match cache.by_version.get(&(model.to_owned(), number)) {
            Some(found) => found.clone(),
            None => {
                let mut config = self.repository.config(model)?;
                if let Some(backend) = self.backend {
                    config.backend = backend;
                }
                let loaded = Arc::new(self.repository.load_version(
                    model,
                    number,
                    Arc::new(config),
                )?);
                cache
                    .by_version
                    .insert((model.to_owned(), number), loaded.clone());
                loaded
            }
        };
        cache.by_request.insert(request, loaded.clone());
        Ok(loaded)
    }

    /// The version `load(model, None)` would pick: the configured default, else the newest served.
    fn default_version(&self, model: &str) -> Result<u64, BatchError> {
        let config = self.repository.config(model)?;
        if let Some(v) = config.versions.default {
            return Ok(v);
        }
        let served = self.repository.served_versions(model, &config)?;
        served
            .last()
            .copied()
            .ok_or_else(|| BatchError::Invalid(format!("model '{model}' has no version to serve")))
    }

    fn resolve_version(&self, model: &str, version: &str) -> Result<u64, BatchError> {
        if let Ok(number) = version.parse::<u64>() {
            return Ok(number);
        }
        let config = self.repository.config(model)?;
        config.versions.labels.get(version).copied().ok_or_else(|| {
            BatchError::Core(CoreError::VersionNotFound {
                model: model.to_owned(),
                version: version.to_owned(),
                available: config
                    .versions
                    .labels
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        })
    }
}
