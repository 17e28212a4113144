//! The served models: a snapshot of every loaded version, swapped atomically when the
//! repository changes.
//!
//! Requests clone the current snapshot (`Arc`) and keep the versions they resolved alive, so a
//! swap never disturbs them: in-flight requests finish on the version they started on, and an
//! old version's engine threads exit once its last request is answered. A version is published
//! only after it loaded and passed warm-up; a version that fails is reported and never replaces
//! a serving one.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use serde::Serialize;
use serval_core::config::VersionPolicy;
use serval_core::model::MODEL_FILE;
use serval_core::warmup::{WARMUP_FILE, zero_inputs};
use serval_core::{Model, ModelConfig, ModelRepository};

use crate::batcher::Batcher;
use crate::error::{Result, ServerError};
use crate::metrics;

/// How a request names a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSelector {
    /// The model's default version (or its canary, by the configured split).
    Default,
    /// A version number.
    Number(u64),
    /// A version label such as `stable`.
    Label(String),
}

impl VersionSelector {
    /// Parses a protocol's version string: empty means default, digits a number, a word a label.
    pub fn parse(version: Option<&str>) -> Result<VersionSelector> {
        match version {
            None | Some("") => Ok(VersionSelector::Default),
            Some(v) if v.bytes().all(|b| b.is_ascii_digit()) => v
                .parse::<u64>()
                .ok()
                .filter(|&v| v > 0)
                .map(VersionSelector::Number)
                .ok_or_else(|| {
                    ServerError::BadRequest(format!("version '{v}' is not a positive integer"))
                }),
            Some(label)
                if label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
            {
                Ok(VersionSelector::Label(label.to_owned()))
            }
            Some(v) => Err(ServerError::BadRequest(format!(
                "version '{v}' is neither a number nor a label"
            ))),
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

impl ServedModel {
    /// Resolves a selector to a loaded version; `Default` is the configured default (no canary).
    pub fn resolve(&self, selector: &VersionSelector) -> Result<Arc<ServedVersion>> {
        let number = match selector {
            VersionSelector::Default => self.default_version()?,
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
        self.versions.get(&number).cloned().ok_or_else(|| {
            ServerError::Core(serval_core::Error::VersionNotFound {
                model: self.name.clone(),
                version: number.to_string(),
                available: self
                    .versions
                    .keys()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        })
    }

    /// Resolves the version for an inference: like [`ServedModel::resolve`], but requests naming no
    /// version are split between the default and the canary. With `sticky`, the split hashes
    /// `routing_key` so the same key always reaches the same version.
    pub fn route(
        &self,
        selector: &VersionSelector,
        routing_key: Option<&str>,
    ) -> Result<Arc<ServedVersion>> {
        if *selector == VersionSelector::Default
            && let Some(canary) = &self.config.versions.canary
            && let Some(canary_version) = self.versions.get(&canary.version)
        {
            // Basis points, so fractional percentages split exactly.
            let bucket = match (canary.sticky, routing_key) {
                (true, Some(key)) => {
                    let mut hasher = std::hash::DefaultHasher::new();
                    key.hash(&mut hasher);
                    hasher.finish() % 10_000
                }
                // A fixed stride through 0..10000 (coprime with it) spreads consecutive requests evenly.
                _ => {
                    self.unkeyed_requests
                        .fetch_add(1, Ordering::Relaxed)
                        .wrapping_mul(7_919)
                        % 10_000
                }
            };
            if (bucket as f64) < canary.percent * 100.0 {
                return Ok(canary_version.clone());
            }
        }
        self.resolve(selector)
    }

    /// Whether every version `selector` could route to has a full queue, so a request for it
    /// would be refused whatever its body holds.
    pub fn saturated(&self, selector: &VersionSelector) -> bool {
        let canary = match selector {
            VersionSelector::Default => self
                .config
                .versions
                .canary
                .as_ref()
                .and_then(|c| self.versions.get(&c.version)),
            _ => None,
        };
        self.resolve(selector)
            .is_ok_and(|v| v.batcher.is_full() && canary.is_none_or(|c| c.batcher.is_full()))
    }

    fn default_version(&self) -> Result<u64> {
        let canary = self.config.versions.canary.as_ref().map(|c| c.version);
        self.config
            .versions
            .default
            .filter(|v| self.versions.contains_key(v))
            // The canary only gets its configured share, never the whole default traffic.
            .or_else(|| {
                self.versions
                    .keys()
                    .rev()
                    .find(|&&v| Some(v) != canary || self.versions.len() == 1)
                    .copied()
            })
            .ok_or_else(|| {
                ServerError::Unavailable(format!("model '{}' has no loaded version", self.name))
            })
    }
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

    /// Brings every model in line with the repository (the watcher's and `index`'s entry point).
    pub fn reconcile_all(&self) -> serval_core::Result<()> {
        let _guard = self
            .reconcile_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let names = self.repository.model_names()?;
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

    /// Computes the model's next state from the files, keeping serving versions when loads fail.
    fn reconcile_into(&self, name: &str, old: &Snapshot, next: &mut Snapshot) {
        let current = old.models.get(name);
        let config = match self.repository.config(name) {
            Ok(config) => config,
            Err(err) => return keep_on_failure(name, current, old, next, err.to_string()),
        };
        let desired = match self.repository.served_versions(name, &config) {
            Ok(desired) => desired,
            Err(err) => return keep_on_failure(name, current, old, next, err.to_string()),
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
        let mut versions = BTreeMap::new();
        for version in candidates {
            if versions.len() >= wanted {
                break;
            }
            let dir = self.repository.root().join(name).join(version.to_string());
            let fingerprint = Fingerprint::of(&dir, &self.repository.root().join(name));
            let loaded = current.and_then(|m| m.versions.get(&version));
            if let Some(loaded) = loaded
                && !config_changed
                && loaded.fingerprint == fingerprint
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
            match self.load_version(name, version, shared_config.clone(), fingerprint.clone()) {
                Ok(served) => {
                    versions.insert(version, Arc::new(served));
                }
                Err(err) => {
                    tracing::error!(model = %name, version, error = %err, "version failed to load; not serving it");
                    metrics::record_load_failure(name, version);
                    next.version_failures
                        .insert((name.to_owned(), version), err.to_string());
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
            let reason = next
                .version_failures
                .iter()
                .filter(|((n, _), _)| n == name)
                .map(|((_, v), r)| format!("version {v}: {r}"))
                .collect::<Vec<_>>()
                .join("; ");
            return keep_on_failure(name, current, old, next, reason);
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

    fn load_version(
        &self,
        name: &str,
        version: u64,
        config: Arc<ModelConfig>,
        fingerprint: Fingerprint,
    ) -> serval_core::Result<ServedVersion> {
        let rss_before = resident_bytes();
        // Loading includes warm-up (and the engine fallback it may trigger).
        let model = Arc::new(self.repository.load_version(name, version, config)?);
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
    fn without(&self, name: &str) -> Snapshot {
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

/// Modification times and sizes of the files a version is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Vec<(PathBuf, Option<(SystemTime, u64)>)>);

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

/// Per-row engine time, at a full batch, below which one engine thread outruns the HTTP front end
/// on every core: the front end spends at least about 5 µs of CPU per request (an empty axum
/// handler's cost on the bench machine), so a thread computing a row in under 5 µs / cores keeps
/// up with all of them.
const FRONT_END_NS_PER_REQUEST: u128 = 5_000;

/// Engine threads for a version whose config names none: one per core, except for models so cheap
/// that one thread running full batches keeps up with the whole front end. For those a second
/// thread only splits the queue into smaller batches and adds a wake-up per request (measured on
/// the bench's logistic regression: 55.6k req/s with two threads, 64.8k with one; see
/// docs/benchmarks.md).
fn default_workers(model: &Model) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rows = model.config().batching.max_batch_size;
    if cores == 1 || rows <= 1 || !model.is_batchable() {
        return cores;
    }
    let Ok(signature) = model.signature(None) else {
        return cores;
    };
    let inputs = zero_inputs(signature, Some(rows), 1);
    // The fastest of a few runs: the model is warm, and noise only ever adds time. A run ten
    // times over the line settles it at once, so heavy models do not pay five full batches at
    // load.
    let line = front_end_line(rows, cores);
    let mut fastest = u128::MAX;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        // Zeros are not valid input for every model (string features it parses, say); such a
        // model keeps the safe default rather than failing to load over a heuristic.
        if model.predict(None, inputs.clone()).is_err() {
            return cores;
        }
        fastest = fastest.min(started.elapsed().as_nanos());
        if fastest >= 10 * line {
            break;
        }
    }
    tracing::debug!(model = %model.name(), version = model.version(), rows, ns_per_row = fastest / rows as u128, "engine cost at a full batch");
    workers_for(fastest, rows, cores)
}

/// Nanoseconds a full batch of `rows` may take for one engine thread to outrun `cores` HTTP
/// threads.
fn front_end_line(rows: usize, cores: usize) -> u128 {
    FRONT_END_NS_PER_REQUEST * rows as u128 / cores.max(1) as u128
}

/// The engine threads for a model whose fastest full batch of `rows` took `fastest_ns`: one when
/// that outruns the front end, else one per core.
fn workers_for(fastest_ns: u128, rows: usize, cores: usize) -> usize {
    if cores > 1 && rows > 1 && fastest_ns < front_end_line(rows, cores) {
        1
    } else {
        cores
    }
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

#[cfg(test)]
mod tests {
    use super::workers_for;

    /// The rule on injected measurements: the timing itself is never asserted (it depends on
    /// the machine and its load).
    #[test]
    fn one_engine_thread_only_for_models_that_outrun_the_front_end() {
        // 64 rows on 2 cores: the line is 5 µs x 64 / 2 = 160 µs per batch.
        assert_eq!(workers_for(20_000, 64, 2), 1, "a logistic regression");
        assert_eq!(workers_for(159_999, 64, 2), 1);
        assert_eq!(workers_for(160_000, 64, 2), 2, "at the line");
        assert_eq!(workers_for(5_000_000, 64, 2), 2, "an MLP");
        assert_eq!(workers_for(20_000, 64, 1), 1, "one core: one thread anyway");
        assert_eq!(workers_for(20_000, 64, 8), 1);
        assert_eq!(
            workers_for(20_000, 1, 4),
            4,
            "no batching: nothing to gain from one thread"
        );
    }
}
