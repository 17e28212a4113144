//! The loaded models: every served version of every model, with version labels and defaults.

use std::collections::BTreeMap;
use std::sync::Arc;

use serval_core::{Model, ModelConfig, ModelRepository};

use crate::batcher::Batcher;
use crate::error::{Result, ServerError};

/// How a request names a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSelector {
    /// The model's default version.
    Default,
    /// A version number.
    Number(u64),
    /// A version label such as `stable`.
    Label(String),
}

impl VersionSelector {
    /// Parses a protocol's version string: empty means default, digits a number.
    pub fn parse(version: Option<&str>) -> Result<VersionSelector> {
        match version {
            None | Some("") => Ok(VersionSelector::Default),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|&v| v > 0)
                .map(VersionSelector::Number)
                .ok_or_else(|| {
                    ServerError::BadRequest(format!("version '{v}' is not a positive integer"))
                }),
        }
    }
}

/// One loaded version with its queue and engine threads.
pub struct ServedVersion {
    /// The loaded model.
    pub model: Arc<Model>,
    /// Its dynamic batcher.
    pub batcher: Batcher,
    /// Growth of the process's resident memory while this version loaded (its footprint).
    pub rss_bytes_at_load: u64,
}

/// Every served version of one model.
pub struct ServedModel {
    /// Model name.
    pub name: String,
    /// Its configuration.
    pub config: ModelConfig,
    /// Loaded versions by number.
    pub versions: BTreeMap<u64, Arc<ServedVersion>>,
}

impl ServedModel {
    /// Resolves a selector to a loaded version.
    pub fn resolve(&self, selector: &VersionSelector) -> Result<&Arc<ServedVersion>> {
        let available = || {
            self.versions
                .keys()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let number = match selector {
            VersionSelector::Default => self
                .config
                .versions
                .default
                .filter(|v| self.versions.contains_key(v))
                .or_else(|| self.versions.keys().next_back().copied())
                .ok_or_else(|| {
                    ServerError::Unavailable(format!("model '{}' has no loaded version", self.name))
                })?,
            VersionSelector::Number(v) => *v,
            VersionSelector::Label(label) => {
                *self.config.versions.labels.get(label).ok_or_else(|| {
                    ServerError::NotFound(format!(
                        "model '{}' has no version label '{label}'",
                        self.name
                    ))
                })?
            }
        };
        self.versions.get(&number).ok_or_else(|| {
            ServerError::Core(serval_core::Error::VersionNotFound {
                model: self.name.clone(),
                version: number.to_string(),
                available: available(),
            })
        })
    }
}

/// All models of the repository, loaded once at start-up.
pub struct ModelStore {
    models: BTreeMap<String, ServedModel>,
    /// Models that failed to load, with the reason (reported by status endpoints).
    failures: BTreeMap<String, String>,
}

impl ModelStore {
    /// Loads every model the repository holds; a model that fails is recorded, not fatal.
    pub fn load(repository: &ModelRepository) -> serval_core::Result<ModelStore> {
        let mut models = BTreeMap::new();
        let mut failures = BTreeMap::new();
        for name in repository.model_names()? {
            match load_model(repository, &name) {
                Ok(model) => {
                    models.insert(name, model);
                }
                Err(err) => {
                    tracing::error!(model = %name, error = %err, "model failed to load");
                    failures.insert(name, err.to_string());
                }
            }
        }
        Ok(ModelStore { models, failures })
    }

    /// The named model, or 404 (or 503 when it failed to load).
    pub fn model(&self, name: &str) -> Result<&ServedModel> {
        if let Some(model) = self.models.get(name) {
            return Ok(model);
        }
        match self.failures.get(name) {
            Some(reason) => Err(ServerError::Unavailable(format!(
                "model '{name}' is not available: {reason}"
            ))),
            None => Err(ServerError::Core(serval_core::Error::ModelNotFound(
                name.to_owned(),
            ))),
        }
    }

    /// Loaded models by name.
    pub fn models(&self) -> impl Iterator<Item = &ServedModel> {
        self.models.values()
    }

    /// Whether every model in the repository loaded.
    pub fn all_ready(&self) -> bool {
        self.failures.is_empty()
    }
}

fn load_model(repository: &ModelRepository, name: &str) -> serval_core::Result<ServedModel> {
    let config = repository.config(name)?;
    let mut versions = BTreeMap::new();
    for version in repository.served_versions(name, &config)? {
        let rss_before = resident_bytes();
        let model = Arc::new(repository.load(name, Some(version))?);
        let rss_bytes_at_load = resident_bytes().saturating_sub(rss_before);
        let workers = model
            .config()
            .instances
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let batcher = Batcher::start(model.clone(), workers);
        tracing::info!(
            model = %name,
            version,
            backend = model.backend_choice().kind.as_str(),
            workers,
            rss_kib = rss_bytes_at_load / 1024,
            "loaded"
        );
        versions.insert(
            version,
            Arc::new(ServedVersion {
                model,
                batcher,
                rss_bytes_at_load,
            }),
        );
    }
    Ok(ServedModel {
        name: name.to_owned(),
        config,
        versions,
    })
}

/// Resident set size of this process, from `/proc/self/statm` (0 where unavailable).
pub fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .unwrap_or(0);
    pages * 4096
}
