//! Where a log's tables live: a local directory, or an object-store prefix (`s3://`, `gs://`,
//! `az://`) that many replicas write to without coordination. Only whole Parquet files are
//! written there; the write-ahead segments stay on a local disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::error::LogError;
use serval_wal::sync_dir;

/// The log's root: rolled files go to `<root>/<table>/model=<m>/date=<d>/<segment>.parquet`.
#[derive(Clone)]
pub enum LogRoot {
    /// A local directory.
    Dir(PathBuf),
    /// An object-store prefix.
    Store {
        /// The URL as given, for messages and readers.
        url: String,
        /// The store, configured from the environment.
        store: Arc<dyn ObjectStore>,
        /// The URL's path inside the bucket.
        prefix: ObjectPath,
    },
}

impl std::fmt::Debug for LogRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for LogRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogRoot::Dir(dir) => write!(f, "{}", dir.display()),
            LogRoot::Store { url, .. } => f.write_str(url),
        }
    }
}

impl From<PathBuf> for LogRoot {
    fn from(dir: PathBuf) -> LogRoot {
        LogRoot::Dir(dir)
    }
}

impl LogRoot {
    /// A local path, or an object-store URL (configured from the environment, as repositories
    /// and batch inputs are).
    pub fn parse(location: &str) -> Result<LogRoot, LogError> {
        let store_error = |message: String| LogError::Store {
            url: location.to_owned(),
            message,
        };
        match serval_storage::object_store_for_url(location)
            .map_err(|e| store_error(e.to_string()))?
        {
            None => Ok(LogRoot::Dir(PathBuf::from(location))),
            Some(store) => {
                let url = url::Url::parse(location).map_err(|e| store_error(e.to_string()))?;
                let prefix = ObjectPath::from_url_path(url.path())
                    .map_err(|e| store_error(e.to_string()))?;
                Ok(LogRoot::Store {
                    url: location.trim_end_matches('/').to_owned(),
                    store,
                    prefix,
                })
            }
        }
    }

    /// The local directory, when the root is one.
    pub fn local_dir(&self) -> Option<&Path> {
        match self {
            LogRoot::Dir(dir) => Some(dir),
            LogRoot::Store { .. } => None,
        }
    }
}

/// Writes whole files under a root, from the roller's thread (which owns the runtime an
/// object store needs: it never runs inside the server's).
pub(crate) enum Destination {
    Dir(PathBuf),
    Store {
        url: String,
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
        runtime: tokio::runtime::Runtime,
    },
}

impl Destination {
    pub(crate) fn new(root: LogRoot) -> Result<Destination, LogError> {
        Ok(match root {
            LogRoot::Dir(dir) => Destination::Dir(dir),
            LogRoot::Store { url, store, prefix } => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| LogError::Store {
                        url: url.clone(),
                        message: e.to_string(),
                    })?;
                Destination::Store {
                    url,
                    store,
                    prefix,
                    runtime,
                }
            }
        })
    }

    /// Writes `bytes` at `relative` (`/`-separated) as one atomic step: readers see the whole
    /// file or none of it. Locally through a temporary file, fsynced and renamed.
    pub(crate) fn put(&self, relative: &str, bytes: Vec<u8>) -> Result<(), LogError> {
        match self {
            Destination::Dir(dir) => write_local(&dir.join(relative), &bytes),
            Destination::Store {
                url,
                store,
                prefix,
                runtime,
            } => {
                let path = relative
                    .split('/')
                    .fold(prefix.clone(), |path, part| path.join(part));
                runtime
                    .block_on(store.put(&path, bytes.into()))
                    .map(|_| ())
                    .map_err(|e| LogError::Store {
                        url: format!("{url}/{relative}"),
                        message: e.to_string(),
                    })
            }
        }
    }
}

fn write_local(path: &Path, bytes: &[u8]) -> Result<(), LogError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = std::fs::File::create(&tmp).and_then(|mut file| {
        use std::io::Write;
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(e) = written {
        // Never leave half a file behind, even a hidden one.
        let _ = std::fs::remove_file(&tmp);
        return Err(LogError::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| LogError::io(path, e))?;
    Ok(sync_dir(path)?)
}
