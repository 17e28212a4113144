//! The model repository on disk: `<root>/<model>/<version>/model.onnx` plus optional
//! `<root>/<model>/config.toml`, laid out like TF Serving's and Triton's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend;
use crate::cascade::{Cascade, PhaseSource};
use crate::config::{ModelConfig, ModelKind};
use crate::error::{Error, Result};
use crate::model::{MODEL_FILE, Model};

/// Process-wide loading options.
#[derive(Debug, Clone, Default)]
pub struct RepositoryOptions {
    /// Path of `libonnxruntime.so`; else `ORT_DYLIB_PATH`, else the `onnxruntime` Python package.
    pub ort_library: Option<PathBuf>,
    /// Run states per loaded version when the model config sets none (default: number of cores).
    pub instances: Option<usize>,
}

/// A directory of models, each a directory of numbered versions.
#[derive(Debug, Clone)]
pub struct ModelRepository {
    root: PathBuf,
    options: RepositoryOptions,
}

impl ModelRepository {
    /// Opens the repository at `root` (which must be a directory).
    pub fn open(root: impl Into<PathBuf>, options: RepositoryOptions) -> Result<ModelRepository> {
        let root = root.into();
        if !root.is_dir() {
            return Err(Error::Load {
                model: None,
                version: None,
                path: root,
                reason: "model repository is not a directory".to_owned(),
            });
        }
        // A model directory given for the repository would otherwise read as models named
        // `1`, `2`, ... without versions: say what was meant instead.
        if let Some(version) = read_dir(&root, None)?
            .into_iter()
            .find(|(name, path)| name.parse::<u64>().is_ok() && path.join(MODEL_FILE).is_file())
        {
            return Err(Error::Load {
                model: None,
                version: None,
                path: root,
                reason: format!(
                    "this is a model directory (it holds version {}/{MODEL_FILE}), not a \
                     repository of models: pass its parent directory",
                    version.0
                ),
            });
        }
        Ok(ModelRepository { root, options })
    }

    /// The repository directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Names of the model directories, sorted.
    pub fn model_names(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = read_dir(&self.root, None)?
            .into_iter()
            .filter(|(_, path)| path.is_dir())
            .filter_map(|(name, _)| (!name.starts_with('.')).then_some(name))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Versions present on disk for `model`, ascending. Non-numeric directories are ignored.
    pub fn versions_on_disk(&self, model: &str) -> Result<Vec<u64>> {
        let dir = self.model_dir(model)?;
        let mut versions: Vec<u64> = read_dir(&dir, Some(model))?
            .into_iter()
            .filter(|(_, path)| path.is_dir())
            .filter_map(|(name, _)| name.parse::<u64>().ok().filter(|&v| v > 0))
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// The model's config (defaults when it has no `config.toml`).
    pub fn config(&self, model: &str) -> Result<ModelConfig> {
        ModelConfig::load(model, &self.model_dir(model)?)
    }

    /// Versions the model's version policy selects, ascending.
    pub fn served_versions(&self, model: &str, config: &ModelConfig) -> Result<Vec<u64>> {
        let on_disk = self.versions_on_disk(model)?;
        let served = config.versions.policy.select(&on_disk);
        if served.is_empty() {
            return Err(Error::Load {
                model: Some(model.to_owned()),
                version: None,
                path: self.root.join(model),
                reason: format!(
                    "no version to serve: versions on disk {on_disk:?}, policy {:?} (a version is a numbered directory holding model.onnx, or for a cascade at most a warmup.jsonl)",
                    config.versions.policy
                ),
            });
        }
        Ok(served)
    }

    /// Loads one version of `model`; `None` means the config's default version, else the
    /// highest the version policy serves.
    pub fn load(&self, model: &str, version: Option<u64>) -> Result<Model> {
        let config = Arc::new(self.config(model)?);
        let version = self.version_or_default(model, version, &config)?;
        self.load_version(model, version, config)
    }

    /// `version` when it is on disk, else (for `None`) the config's default version, else the
    /// highest the version policy serves.
    pub fn version_or_default(
        &self,
        model: &str,
        version: Option<u64>,
        config: &ModelConfig,
    ) -> Result<u64> {
        match version.or(config.versions.default) {
            Some(v) => {
                let on_disk = self.versions_on_disk(model)?;
                if !on_disk.contains(&v) {
                    return Err(Error::VersionNotFound {
                        model: model.to_owned(),
                        version: v.to_string(),
                        available: format_versions(&on_disk),
                    });
                }
                Ok(v)
            }
            None => Ok(*self
                .served_versions(model, config)?
                .last()
                .expect("served_versions is never empty. This is a bug.")),
        }
    }

    /// The ONNX file of one version (which need not exist).
    pub fn model_file(&self, model: &str, version: u64) -> Result<PathBuf> {
        Ok(self
            .model_dir(model)?
            .join(version.to_string())
            .join(MODEL_FILE))
    }

    /// Loads every version the model's policy serves, ascending.
    pub fn load_served(&self, model: &str) -> Result<Vec<Model>> {
        let config = Arc::new(self.config(model)?);
        self.served_versions(model, &config)?
            .into_iter()
            .map(|v| self.load_version(model, v, config.clone()))
            .collect()
    }

    /// Loads one version under an already-read config (callers that compare configs, like the
    /// server's reconciliation, load exactly what they compared). A cascade's phases are loaded
    /// from this repository too.
    pub fn load_version(
        &self,
        model: &str,
        version: u64,
        config: Arc<ModelConfig>,
    ) -> Result<Model> {
        self.load_version_with(model, version, config, &|name, version| {
            let config = Arc::new(self.config(name).map_err(|e| e.to_string())?);
            // Checked before loading: a cascade naming itself (or another cascade) would
            // otherwise load itself without end.
            if config.kind == ModelKind::Cascade {
                return Err(format!(
                    "'{name}' is itself a cascade: the phases are ONNX models"
                ));
            }
            let version = self
                .version_by_name(name, version, &config)
                .map_err(|e| e.to_string())?;
            self.load_version(name, version, config)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
    }

    /// Loads one version under an already-read config; a cascade takes its phases from
    /// `phases` (the server hands over the versions it serves, so none is loaded twice).
    pub fn load_version_with(
        &self,
        model: &str,
        version: u64,
        config: Arc<ModelConfig>,
        phases: &PhaseSource<'_>,
    ) -> Result<Model> {
        let dir = self.root.join(model).join(version.to_string());
        if let Some(cascade) = config
            .cascade
            .as_ref()
            .filter(|_| config.kind == ModelKind::Cascade)
        {
            let cascade = Cascade::resolve(cascade, phases).map_err(|reason| Error::Load {
                model: Some(model.to_owned()),
                version: Some(version),
                path: dir.clone(),
                reason,
            })?;
            return Model::load_cascade(model, version, &dir, config, cascade);
        }
        let ort_status = backend::ort_status(self.options.ort_library.as_deref());
        let default_instances = self
            .options
            .instances
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Model::load(
            model,
            version,
            &dir,
            config,
            ort_status.as_ref().map(|_| ()).map_err(String::as_str),
            default_instances,
        )
    }

    /// The version a name picks: a number, a label of the model's `[versions] labels`, or
    /// (`None`) its default.
    pub fn version_by_name(
        &self,
        model: &str,
        version: Option<&str>,
        config: &ModelConfig,
    ) -> Result<u64> {
        let number =
            match version {
                None => None,
                Some(v) => match v.parse::<u64>() {
                    Ok(number) => Some(number),
                    Err(_) => Some(*config.versions.labels.get(v).ok_or_else(|| {
                        Error::VersionNotFound {
                            model: model.to_owned(),
                            version: v.to_owned(),
                            available: format_versions(
                                &self.versions_on_disk(model).unwrap_or_default(),
                            ),
                        }
                    })?),
                },
            };
        self.version_or_default(model, number, config)
    }

    fn model_dir(&self, model: &str) -> Result<PathBuf> {
        // Names come from clients: refuse anything that could escape the repository.
        let is_plain = !model.is_empty() && !model.starts_with('.') && !model.contains(['/', '\\']);
        let dir = self.root.join(model);
        if is_plain && dir.is_dir() {
            Ok(dir)
        } else {
            Err(Error::ModelNotFound(model.to_owned()))
        }
    }
}

fn read_dir(dir: &Path, model: Option<&str>) -> Result<Vec<(String, PathBuf)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::Load {
        model: model.map(str::to_owned),
        version: None,
        path: dir.to_path_buf(),
        reason: format!("cannot list directory: {e}"),
    })?;
    Ok(entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .into_string()
                .ok()
                .map(|name| (name, e.path()))
        })
        .collect())
}

fn format_versions(versions: &[u64]) -> String {
    if versions.is_empty() {
        "none".to_owned()
    } else {
        versions
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}
