//! Model repositories in object storage (S3 and S3-compatible stores, GCS, Azure Blob), served
//! from a local mirror.
//!
//! Engines load models from files, and hot reload already watches a directory, so a remote
//! repository is mirrored into a local cache directory and kept in step by [`RemoteRepository::sync`]:
//! changed objects are downloaded to a temporary file and renamed into place (a version never
//! appears half-written), deleted objects are removed, unchanged ones are not fetched again.
//! Credentials and endpoints come from the usual environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, ...).
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use url::Url;

/// Why a remote repository could not be read or mirrored.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The URL is not a supported object store URL.
    #[error("unsupported repository URL '{url}': {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The object store refused or failed a request.
    #[error("object store {url}: {source}")]
    Store {
        /// The repository URL.
        url: String,
        /// The store's error.
        source: object_store::Error,
    },
    /// The local cache could not be written.
    #[error("local cache {path}: {source}")]
    Cache {
        /// The file or directory at fault.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What one sync changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    /// Objects downloaded (new or changed).
    pub downloaded: usize,
    /// Local files removed because their object is gone.
    pub removed: usize,
    /// Objects unchanged since the last sync.
    pub unchanged: usize,
}

/// The object store a `s3://`, `s3a://`, `gs://` or `az://`/`abfs://` URL names, configured from
/// the environment; `None` for local paths.
pub fn object_store_for_url(location: &str) -> Result<Option<Arc<dyn ObjectStore>>, StorageError> {
    let Ok(url) = Url::parse(location) else {
        return Ok(None);
    };
    fn shared<S: ObjectStore>(
        built: object_store::Result<S>,
    ) -> object_store::Result<Arc<dyn ObjectStore>> {
        built.map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
    }
    let built = match url.scheme() {
        "s3" | "s3a" => shared(
            object_store::aws::AmazonS3Builder::from_env()
                .with_url(location)
                .build(),
        ),
        "gs" => shared(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(location)
                .build(),
        ),
        "az" | "abfs" | "abfss" | "adl" => shared(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(location)
                .build(),
        ),
        // A one-letter scheme is a Windows drive; `file:` and friends are local paths.
        _ => return Ok(None),
    };
    built.map(Some).map_err(|source| StorageError::Store {
        url: location.to_owned(),
        source,
    })
}

/// A repository in object storage and its local mirror.
pub struct RemoteRepository {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    local_dir: PathBuf,
}

/// Name of the file in the mirror recording what each local file was downloaded from.
const MANIFEST: &str = ".serval-mirror.json";

/// Identity of a downloaded object version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    e_tag: Option<String>,
    size: u64,
    last_modified: String,
}

impl RemoteRepository {
    /// Recognises `s3://`, `s3a://`, `gs://`, `az://`/`abfs://` URLs; `None` for local paths.
    ///
    /// The mirror lives in `cache_root/<scheme>/<bucket>/<prefix>`.
    pub fn parse(
        location: &str,
        cache_root: &Path,
    ) -> Result<Option<RemoteRepository>, StorageError> {
        let bad = |reason: &str| StorageError::BadUrl {
            url: location.to_owned(),
            reason: reason.to_owned(),
        };
        let Some(store) = object_store_for_url(location)? else {
            return Ok(None);
        };
        let url = Url::parse(location).map_err(|e| bad(&e.to_string()))?;
        let bucket = url.host_str().ok_or_else(|| bad("no bucket name"))?;
        let prefix = ObjectPath::from(url.path().trim_matches('/'));
        let mut local_dir = cache_root.join(url.scheme()).join(bucket);
        for part in prefix.parts() {
            local_dir.push(part.as_ref());
        }
        Ok(Some(RemoteRepository {
            url: location.to_owned(),
            store,
            prefix,
            local_dir,
        }))
    }

    /// The local mirror to serve from.
    pub fn local_dir(&self) -> &Path {
        &self.local_dir
    }

    /// The repository URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Brings the local mirror in line with the bucket.
    pub async fn sync(&self) -> Result<SyncReport, StorageError> {
        let store_error = |source| StorageError::Store {
            url: self.url.clone(),
            source,
        };
        let cache_error = |path: &Path, source| StorageError::Cache {
            path: path.to_path_buf(),
            source,
        };
        tokio::fs::create_dir_all(&self.local_dir)
            .await
            .map_err(|e| cache_error(&self.local_dir, e))?;
        let manifest_path = self.local_dir.join(MANIFEST);
        // An unreadable manifest only costs a full re-download, never a wrong file.
        let mut manifest: BTreeMap<String, Stamp> = match tokio::fs::read(&manifest_path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(_) => BTreeMap::new(),
        };
        let objects: Vec<_> = self
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(store_error)?;
        let mut report = SyncReport::default();
        let mut present = BTreeMap::new();
        for meta in objects {
            let Some(relative) = relative_path(&self.prefix, &meta.location) else {
                continue;
            };
            let stamp = Stamp {
                e_tag: meta.e_tag.clone(),
                size: meta.size,
                last_modified: meta.last_modified.to_rfc3339(),
            };
            let local = self.local_dir.join(&relative);
            present.insert(relative.clone(), ());
            if manifest.get(&relative) == Some(&stamp)
                && tokio::fs::try_exists(&local).await.unwrap_or(false)
            {
                report.unchanged += 1;
                continue;
            }
            let bytes = self
                .store
                .get(&meta.location)
                .await
                .map_err(store_error)?
                .bytes()
                .await
                .map_err(store_error)?;
            if let Some(parent) = local.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| cache_error(parent, e))?;
            }
            // Write beside the target, then rename: readers see the old file or the new one.
            let partial = local.with_file_name(format!(
                ".{}.partial",
                local
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("object")
            ));
            tokio::fs::write(&partial, &bytes)
                .await
                .map_err(|e| cache_error(&partial, e))?;
            fault_point("sync-partial");
            tokio::fs::rename(&partial, &local)
                .await
                .map_err(|e| cache_error(&local, e))?;
            manifest.insert(relative, stamp);
            report.downloaded += 1;
            fault_point("sync-file");
        }
        let gone: Vec<String> = manifest
            .keys()
            .filter(|k| !present.contains_key(*k))
            .cloned()
            .collect();
        for relative in gone {
            let local = self.local_dir.join(&relative);
            match tokio::fs::remove_file(&local).await {
                Ok(()) => report.removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(cache_error(&local, e)),
            }
            manifest.remove(&relative);
            remove_empty_parents(&self.local_dir, &local).await;
        }
        let json = serde_json::to_vec(&manifest)
            .map_err(|e| cache_error(&manifest_path, std::io::Error::other(e)))?;
        tokio::fs::write(&manifest_path, json)
            .await
            .map_err(|e| cache_error(&manifest_path, e))?;
        if report.downloaded + report.removed > 0 {
            tracing::info!(url = %self.url, downloaded = report.downloaded, removed = report.removed, "mirrored repository");
        }
        Ok(report)
    }
}

/// Kills the process here when `SERVAL_FAULT_POINT` names `step`: how tests check what a
/// reader (or the next run) sees after a `kill -9` at each step of a commit or a sync.
pub fn fault_point(step: &str) {
    if std::env::var("SERVAL_FAULT_POINT").is_ok_and(|point| point == step) {
        #[cfg(unix)]
        // SAFETY: kill(2) on this process's own id has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort();
    }
}

/// `location` relative to `prefix`, as a safe relative file path (no `..`, no hidden files).
fn relative_path(prefix: &ObjectPath, location: &ObjectPath) -> Option<String> {
    let parts: Vec<String> = match location.prefix_match(prefix) {
        Some(parts) => parts.map(|p| p.as_ref().to_owned()).collect(),
        None => return None,
    };
    let safe = !parts.is_empty()
        && parts
            .iter()
            .all(|p| !p.is_empty() && p != ".." && !p.starts_with('.'));
    safe.then(|| parts.join("/"))
}

async fn remove_empty_parents(root: &Path, file: &Path) {
    let mut dir = file.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) {
            break;
        }
        // Fails (and stops) as soon as a directory is not empty.
        if tokio::fs::remove_dir(d).await.is_err() {
            break;
        }
        dir = d.parent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_are_not_remote() {
        let cache = Path::new("/tmp/cache");
        assert!(
            RemoteRepository::parse("examples/models", cache)
                .unwrap()
                .is_none()
        );
        assert!(
            RemoteRepository::parse("/abs/models", cache)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn mirror_path_follows_bucket_and_prefix() {
        let repo = RemoteRepository::parse("s3://bucket/team/models", Path::new("/c"))
            .unwrap()
            .unwrap();
        assert_eq!(repo.local_dir(), Path::new("/c/s3/bucket/team/models"));
    }

    #[test]
    fn unsafe_object_names_are_skipped() {
        let prefix = ObjectPath::from("models");
        assert_eq!(
            relative_path(&prefix, &ObjectPath::from("models/m/1/model.onnx")).as_deref(),
            Some("m/1/model.onnx")
        );
        assert_eq!(
            relative_path(&prefix, &ObjectPath::from("models/.hidden/x")),
            None
        );
        assert_eq!(relative_path(&prefix, &ObjectPath::from("other/m")), None);
    }

    #[tokio::test]
    async fn sync_mirrors_adds_changes_and_deletions() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let cache = tempfile::tempdir().unwrap();
        let repo = RemoteRepository {
            url: "memory://test".into(),
            store: store.clone(),
            prefix: ObjectPath::from("models"),
            local_dir: cache.path().join("mirror"),
        };
        store
            .put(
                &ObjectPath::from("models/m/1/model.onnx"),
                b"one".to_vec().into(),
            )
            .await
            .unwrap();
        store
            .put(
                &ObjectPath::from("models/m/config.toml"),
                b"key = \"id\"".to_vec().into(),
            )
            .await
            .unwrap();
        assert_eq!(
            repo.sync().await.unwrap(),
            SyncReport {
                downloaded: 2,
                removed: 0,
                unchanged: 0
            }
        );
        assert_eq!(
            std::fs::read(repo.local_dir().join("m/1/model.onnx")).unwrap(),
            b"one"
        );
        assert_eq!(
            repo.sync().await.unwrap(),
            SyncReport {
                downloaded: 0,
                removed: 0,
                unchanged: 2
            }
        );
        store
            .put(
                &ObjectPath::from("models/m/2/model.onnx"),
                b"two".to_vec().into(),
            )
            .await
            .unwrap();
        store
            .delete(&ObjectPath::from("models/m/1/model.onnx"))
            .await
            .unwrap();
        assert_eq!(
            repo.sync().await.unwrap(),
            SyncReport {
                downloaded: 1,
                removed: 1,
                unchanged: 1
            }
        );
        assert!(
            !repo.local_dir().join("m/1").exists(),
            "empty version directories are removed"
        );
        assert_eq!(
            std::fs::read(repo.local_dir().join("m/2/model.onnx")).unwrap(),
            b"two"
        );
    }
}
