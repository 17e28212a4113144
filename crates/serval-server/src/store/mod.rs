//! The served models: a snapshot of every loaded version, swapped atomically when the
//! repository changes.
//!
//! Requests clone the current snapshot (`Arc`) and keep the versions they resolved alive, so a
//! swap never disturbs them: in-flight requests finish on the version they started on, and an
//! old version's engine threads exit once its last request is answered. A version is published
//! only after it loaded and passed warm-up; a version that fails is reported and never replaces
//! a serving one.

mod engine_threads;
mod reconcile;
mod routing;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serde::Serialize;
use serval_core::{Model, ModelConfig, ModelRepository};

pub use engine_threads::resident_bytes;
use reconcile::Fingerprint;
pub use routing::VersionSelector;

use crate::batcher::Batcher;
use crate::error::{Result, ServerError};

/// One loaded version with its queue and engine threads.
pub struct ServedVersion {
    /// The loaded model.
    pub model: Arc<Model>,
    /// Its dynamic batcher.
    pub batcher: Batcher,
    /// Growth of the process's resident memory while this version loaded (its footprint).
    pub rss_bytes_at_load: u64,
    /// What the files looked like when loaded, to skip reloading unchanged versions.
    fingerprint: Fingerprint,
}

/// Every served version of one model.
pub struct ServedModel {
    /// Model name.
    pub name: String,
    /// Its configuration.
    pub config: ModelConfig,
    /// Loaded (warmed-up) versions by number.
    pub versions: BTreeMap<u64, Arc<ServedVersion>>,
    /// Counts requests naming no version, for the canary split when not sticky.
    unkeyed_requests: AtomicU64,
}

/// State of one version, as the repository API and TF Serving status report it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VersionStatus {
    /// Model name.
    pub name: String,
    /// Version number.
    pub version: u64,
    /// `READY`, `UNAVAILABLE` (failed to load) or `UNLOADED`.
    pub state: &'static str,
    /// Why it is not ready.
    pub reason: String,
}

/// Every model of the repository, kept in step with the files.
pub struct ModelStore {
    repository: ModelRepository,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Serializes reconciliation, so concurrent identical load requests load once.
    reconcile_lock: Mutex<()>,
}

#[derive(Default)]
struct Snapshot {
    models: BTreeMap<String, Arc<ServedModel>>,
    /// Model-level failures (unreadable config, nothing loadable), by model.
    failures: BTreeMap<String, String>,
    /// Version-level failures, by model and version.
    version_failures: BTreeMap<(String, u64), String>,
    /// Models unloaded through the API: the watcher leaves them alone until loaded again.
    unloaded: BTreeSet<String>,
    /// The files a failed version was tried with, so it is retried only once they change.
    failed_fingerprint: BTreeMap<(String, u64), Fingerprint>,
    /// Models still serving older state because their latest update failed, with the reason.
    stale: BTreeMap<String, String>,
}

impl ModelStore {
    /// Loads every model of the repository; a model that fails is recorded, not fatal.
    pub fn load(repository: ModelRepository) -> serval_core::Result<ModelStore> {
        let store = ModelStore {
            repository,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            reconcile_lock: Mutex::new(()),
        };
        store.reconcile_all()?;
        Ok(store)
    }

    /// The repository being served.
    pub fn repository(&self) -> &ModelRepository {
        &self.repository
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The named model, or 404 (or 503 when it has no loadable version).
    pub fn model(&self, name: &str) -> Result<Arc<ServedModel>> {
        let snapshot = self.current();
        if let Some(model) = snapshot.models.get(name) {
            return Ok(model.clone());
        }
        match snapshot.failures.get(name) {
            Some(reason) => Err(ServerError::Unavailable(format!(
                "model '{name}' is not available: {reason}"
            ))),
            None if snapshot.unloaded.contains(name) => Err(ServerError::Unavailable(format!(
                "model '{name}' is unloaded"
            ))),
            None => Err(ServerError::Core(serval_core::Error::ModelNotFound(
                name.to_owned(),
            ))),
        }
    }

    /// Loaded models.
    pub fn models(&self) -> Vec<Arc<ServedModel>> {
        self.current().models.values().cloned().collect()
    }

    /// Whether the server as a whole is ready. `strict` (Triton's `--strict-readiness`): every
    /// model in the repository (not explicitly unloaded) has a ready version. Otherwise one model
    /// that cannot load does not take the others out of service: ready once any model serves.
    pub fn ready(&self, strict: bool) -> bool {
        let snapshot = self.current();
        if strict {
            snapshot.failures.is_empty()
        } else {
            !snapshot.models.is_empty()
        }
    }

    /// Every version the store knows: ready, failed or unloaded.
    pub fn index(&self) -> Vec<VersionStatus> {
        let snapshot = self.current();
        let mut index = Vec::new();
        for model in snapshot.models.values() {
            for &version in model.versions.keys() {
                index.push(VersionStatus {
                    name: model.name.clone(),
                    version,
                    state: "READY",
                    reason: String::new(),
                });
            }
        }
        for ((name, version), reason) in &snapshot.version_failures {
            let serving = snapshot
                .models
                .get(name)
                .is_some_and(|m| m.versions.contains_key(version));
            if !serving {
                index.push(VersionStatus {
                    name: name.clone(),
                    version: *version,
                    state: "UNAVAILABLE",
                    reason: reason.clone(),
                });
            }
        }
        // Models with no version to try (invalid config, no version directory) are listed too.
        for (name, reason) in &snapshot.failures {
            if !snapshot.version_failures.keys().any(|(n, _)| n == name) {
                index.push(VersionStatus {
                    name: name.clone(),
                    version: 0,
                    state: "UNAVAILABLE",
                    reason: reason.clone(),
                });
            }
        }
        for name in &snapshot.unloaded {
            index.push(VersionStatus {
                name: name.clone(),
                version: 0,
                state: "UNLOADED",
                reason: "unloaded by request".into(),
            });
        }
        index.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
        index
    }

    /// Loads (or reloads) one model now, clearing an earlier unload; errors say why nothing serves.
    pub fn load_model(&self, name: &str) -> Result<()> {
        let _guard = self
            .reconcile_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !self.repository.model_names()?.iter().any(|n| n == name) {
            return Err(ServerError::Core(serval_core::Error::ModelNotFound(
                name.to_owned(),
            )));
        }
        let old = self.current();
        let mut next = old.without(name);
        next.unloaded.remove(name);
        self.reconcile_into(name, &old, &mut next);
        let failure = next.failures.get(name).cloned();
        self.publish(next);
        match failure {
            Some(reason) => Err(ServerError::BadRequest(format!(
                "model '{name}' failed to load: {reason}"
            ))),
            None => Ok(()),
        }
    }

    /// Stops serving a model; in-flight requests still finish.
    pub fn unload_model(&self, name: &str) -> Result<()> {
        let _guard = self
            .reconcile_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = self.current();
        if !old.models.contains_key(name)
            && !old.failures.contains_key(name)
            && !old.unloaded.contains(name)
        {
            return Err(ServerError::Core(serval_core::Error::ModelNotFound(
                name.to_owned(),
            )));
        }
        let mut next = old.without(name);
        next.unloaded.insert(name.to_owned());
        tracing::info!(model = %name, "unloaded");
        self.publish(next);
        Ok(())
    }

    fn publish(&self, next: Snapshot) {
        *self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
    }
}
