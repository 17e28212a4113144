//! Reconciliation: bringing the served snapshot in line with the repository's files, one model
//! at a time, without ever replacing a serving version by one that fails to load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, PoisonError};
use std::time::SystemTime;

use serval_core::config::{ModelKind, VersionPolicy};
use serval_core::model::MODEL_FILE;
use serval_core::warmup::WARMUP_FILE;
use serval_core::{Model, ModelConfig};

use super::engine_threads::{default_workers, resident_bytes};
use super::{ModelStore, ServedModel, ServedVersion, Snapshot, VersionSelector};
use crate::batcher::Batcher;
use crate::metrics;

impl ModelStore {
    /// Brings every model in line with the repository (the watcher's and `index`'s entry point).
    pub fn reconcile_all(&self) -> serval_core::Result<()> {
        let _guard = self
            .reconcile_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut names = self.repository.model_names()?;
        // Cascades after the models they chain, so they are built over this pass's versions.
        names.sort_by_key(|name| {
            self.repository
                .config(name)
                .is_ok_and(|c| c.kind == ModelKind::Cascade)
        });
        let old = self.current();
        let mut next = Snapshot {
            unloaded: old.unloaded.clone(),
            ..Snapshot::default()
        };
        for name in names.iter().filter(|n| !old.unloaded.contains(*n)) {
            self.reconcile_into(name, &old, &mut next);
        }
        self.publish(next);
        Ok(())
    }

    /// Computes the model's next state from the files, keeping serving versions when loads fail.
    pub(super) fn reconcile_into(&self, name: &str, old: &Snapshot, next: &mut Snapshot) {
        let current = old.models.get(name);
        let config = match self.repository.config(name) {
            Ok(config) => config,
            Err(err) => return keep_on_failure(name, current, old, next, self.reason(&err)),
        };
        let desired = match self.repository.served_versions(name, &config) {
            Ok(desired) => desired,
            // Every version was deleted: nothing is kept serving from files that are gone.
            Err(err)
                if self
                    .repository
                    .versions_on_disk(name)
                    .is_ok_and(|v| v.is_empty()) =>
            {
                return drop_model(name, current, old, next, self.reason(&err));
            }
            Err(err) => return keep_on_failure(name, current, old, next, self.reason(&err)),
        };
        // `latest(n)` means the n newest versions that work: a broken newest version falls back
        // to the one before it instead of leaving the model on something older (or on nothing).
        let (candidates, wanted) = match &config.versions.policy {
            VersionPolicy::Latest(n) => {
                let mut on_disk = self.repository.versions_on_disk(name).unwrap_or(desired);
                on_disk.reverse();
                (on_disk, *n)
            }
            _ => (desired, usize::MAX),
        };
        let config_changed = current.is_some_and(|m| m.config != config);
        let shared_config = Arc::new(config.clone());
        // A cascade's phases are the versions this snapshot serves (other models ask for none).
        let served = match config.kind {
            ModelKind::Cascade => next.models.clone(),
            ModelKind::Onnx => BTreeMap::new(),
        };
        let phases = move |name: &str, version: Option<&str>| served_phase(&served, name, version);
        let mut versions = BTreeMap::new();
        for version in candidates {
            if versions.len() >= wanted {
                break;
            }
            let dir = self.repository.root().join(name).join(version.to_string());
            // A version whose model file was deleted is gone, not broken: unloaded like a
            // deleted directory (TF Serving's rule), never kept serving from memory.
            if config.kind == ModelKind::Onnx && !dir.join(MODEL_FILE).exists() {
                continue;
            }
            let fingerprint = Fingerprint::of(&dir, &self.repository.root().join(name));
            let loaded = current.and_then(|m| m.versions.get(&version));
            if let Some(loaded) = loaded
                && !config_changed
                && loaded.fingerprint == fingerprint
                && same_phases(&loaded.model, &phases)
            {
                versions.insert(version, loaded.clone());
                continue;
            }
            // An identical failed version is not retried until its files change.
            if loaded.is_none()
                && let Some(reason) = old.version_failures.get(&(name.to_owned(), version))
                && old.failed_fingerprints(name, version) == Some(&fingerprint)
            {
                next.version_failures
                    .insert((name.to_owned(), version), reason.clone());
                next.failed_fingerprint
                    .insert((name.to_owned(), version), fingerprint);
                continue;
            }
            let loading = self.load_version(
                name,
                version,
                shared_config.clone(),
                fingerprint.clone(),
                &phases,
            );
            match loading {
                Ok(served) => {
                    versions.insert(version, Arc::new(served));
                }
                Err(err) => {
                    tracing::error!(model = %name, version, error = %err, "version failed to load; not serving it");
                    metrics::record_load_failure(name, version);
                    next.version_failures
                        .insert((name.to_owned(), version), self.reason(&err));
                    next.failed_fingerprint
                        .insert((name.to_owned(), version), fingerprint);
                    // Never replace a serving version with a broken one.
                    if let Some(loaded) = loaded {
                        versions.insert(version, loaded.clone());
                    }
                }
            }
        }
        if versions.is_empty() {
            let reasons: Vec<String> = next
                .version_failures
                .iter()
                .filter(|((n, _), _)| n == name)
                .map(|((_, v), r)| format!("version {v}: {r}"))
                .collect();
            if reasons.is_empty() {
                let reason = format!("no version holds a {MODEL_FILE} any more");
                return drop_model(name, current, old, next, reason);
            }
            return keep_on_failure(name, current, old, next, reasons.join("; "));
        }
        if current.is_none_or(|m| m.versions.keys().ne(versions.keys()) || config_changed) {
            tracing::info!(model = %name, versions = ?versions.keys().collect::<Vec<_>>(), "serving");
        }
        let config = if versions.values().all(|v| v.model.config() == &config) {
            config
        } else {
            // A reload under the new config failed: keep describing what actually serves.
            current.map_or(config, |m| m.config.clone())
        };
        next.models.insert(
            name.to_owned(),
            Arc::new(ServedModel {
                name: name.to_owned(),
                config,
                versions,
                unkeyed_requests: AtomicU64::new(0),
            }),
        );
    }

    /// Why a model or version does not load, as clients and the index show it: paths relative
    /// to the repository, which is where the operator looks (and where a client has no business
    /// learning the server's directory layout).
    fn reason(&self, err: &serval_core::Error) -> String {
        let text = err.to_string();
        let root = self.repository.root().display().to_string();
        match root.is_empty() {
            true => text,
            false => text.replace(&format!("{root}/"), "").replace(&root, "."),
        }
    }

    fn load_version(
        &self,
        name: &str,
        version: u64,
        config: Arc<ModelConfig>,
        fingerprint: Fingerprint,
        phases: &serval_core::cascade::PhaseSource<'_>,
    ) -> serval_core::Result<ServedVersion> {
        let rss_before = resident_bytes();
        // Loading includes warm-up (and the engine fallback it may trigger).
        let model = Arc::new(
            self.repository
                .load_version_with(name, version, config, phases)?,
        );
        let rss_bytes_at_load = resident_bytes().saturating_sub(rss_before);
        let workers = model
            .config()
            .instances
            .unwrap_or_else(|| default_workers(&model));
        let batcher = Batcher::start(model.clone(), workers);
        tracing::info!(
            model = %name,
            version,
            backend = model.backend_choice().kind.as_str(),
            reason = %model.backend_choice().reason,
            workers,
            rss_kib = rss_bytes_at_load / 1024,
            "loaded and warmed up"
        );
        Ok(ServedVersion {
            model,
            batcher,
            rss_bytes_at_load,
            fingerprint,
        })
    }
}

impl Snapshot {
    /// A copy of this snapshot without `name`'s state.
    pub(super) fn without(&self, name: &str) -> Snapshot {
        let mut next = Snapshot {
            models: self.models.clone(),
            failures: self.failures.clone(),
            version_failures: self.version_failures.clone(),
            unloaded: self.unloaded.clone(),
            failed_fingerprint: self.failed_fingerprint.clone(),
            stale: self.stale.clone(),
        };
        next.stale.remove(name);
        next.models.remove(name);
        next.failures.remove(name);
        next.version_failures.retain(|(n, _), _| n != name);
        next.failed_fingerprint.retain(|(n, _), _| n != name);
        next
    }

    fn failed_fingerprints(&self, name: &str, version: u64) -> Option<&Fingerprint> {
        self.failed_fingerprint.get(&(name.to_owned(), version))
    }
}

/// The served version a cascade names as a phase.
fn served_phase(
    models: &BTreeMap<String, Arc<ServedModel>>,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<Model>, String> {
    let served = models
        .get(name)
        .ok_or_else(|| format!("model '{name}' is not serving (see its own status)"))?;
    let selector = VersionSelector::parse(version).map_err(|e| e.to_string())?;
    let version = served.resolve(&selector).map_err(|e| e.to_string())?;
    Ok(version.model.clone())
}

/// Whether a loaded version still runs on the phases that `phases` picks now (always, for a
/// model that is not a cascade): a phase that was reloaded, or whose default moved, rebuilds
/// the cascade over the new version.
fn same_phases(model: &Model, phases: &serval_core::cascade::PhaseSource<'_>) -> bool {
    let Some(cascade) = model.cascade() else {
        return true;
    };
    let config = model.config().cascade.as_ref();
    let phase1 = config.map(|c| phases(&c.phase1, c.phase1_version.as_deref()));
    let policy = cascade.policy();
    let phase2 = policy
        .phase2
        .as_deref()
        .map(|name| phases(name, policy.phase2_version.as_deref()));
    let same = |now: Option<Result<Arc<Model>, String>>, loaded: &Arc<Model>| {
        now.and_then(Result::ok)
            .is_some_and(|now| Arc::ptr_eq(&now, loaded))
    };
    same(phase1, cascade.phase1()) && same(phase2, cascade.phase2())
}

/// Keeps whatever served before (if anything) and records why the update failed, logging
/// only when the reason is new (the watcher re-checks every few seconds).
fn keep_on_failure(
    name: &str,
    current: Option<&Arc<ServedModel>>,
    old: &Snapshot,
    next: &mut Snapshot,
    reason: String,
) {
    let is_new = old.failures.get(name) != Some(&reason) && old.stale.get(name) != Some(&reason);
    match current {
        Some(model) => {
            if is_new {
                tracing::error!(model = %name, error = %reason, "update failed; still serving the previous versions");
            }
            next.models.insert(name.to_owned(), model.clone());
            next.stale.insert(name.to_owned(), reason);
        }
        None => {
            if is_new {
                tracing::error!(model = %name, error = %reason, "model failed to load");
            }
            next.failures.insert(name.to_owned(), reason);
        }
    }
}

/// Stops serving a model whose versions are gone from the repository, recording why.
fn drop_model(
    name: &str,
    current: Option<&Arc<ServedModel>>,
    old: &Snapshot,
    next: &mut Snapshot,
    reason: String,
) {
    if current.is_some() || old.failures.get(name) != Some(&reason) {
        tracing::warn!(model = %name, reason = %reason, "no longer serving: its files are gone");
    }
    next.failures.insert(name.to_owned(), reason);
}

/// Modification times and sizes of the files a version is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Fingerprint(Vec<(PathBuf, Option<(SystemTime, u64)>)>);

impl Fingerprint {
    fn of(version_dir: &Path, model_dir: &Path) -> Fingerprint {
        let files = [
            version_dir.join(MODEL_FILE),
            version_dir.join(WARMUP_FILE),
            model_dir.join(serval_core::config::CONFIG_FILE),
        ];
        Fingerprint(
            files
                .into_iter()
                .map(|path| {
                    let stamp = std::fs::metadata(&path)
                        .ok()
                        .and_then(|m| Some((m.modified().ok()?, m.len())));
                    (path, stamp)
                })
                .collect(),
        )
    }
}
