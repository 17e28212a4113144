//! Batch results served online: the book's Lambda-architecture trade-off.
//!
//! `serval serve --precomputed MODEL=DIR` mounts the output of `serval batch` (Parquet with a
//! `_SUCCESS` manifest) as a table keyed by the batch job's key column. A request whose every
//! instance has a key in the table, for the version and signature the job used, is answered
//! from the table without running the model; any other request goes to the live model. The
//! table is reloaded when a new `_SUCCESS` appears; until then, and when a reload fails, the
//! last good table keeps serving.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use arrow::array::{Array, ArrayRef, AsArray, UInt32Array};
use arrow::compute::{cast, concat, take};
use arrow::datatypes::DataType as ArrowType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serval_arrow::{FeatureColumn, RowErrors};
use serval_core::manifest::{BatchManifest, MANIFEST_FILE};
use serval_core::{Signature, Tensor};

/// One batch output loaded for lookups.
pub struct Table {
    manifest: BatchManifest,
    rows: HashMap<String, u32>,
    /// Prediction columns by signature output name.
    columns: Vec<(String, ArrayRef)>,
}

impl Table {
    /// Reads a batch output directory made for `model`: its manifest, then the key and
    /// prediction columns.
    pub fn load(dir: &Path, model: &str) -> Result<Table, String> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = std::fs::read(&manifest_path).map_err(|e| {
            format!(
                "{}: {e} (is the batch job finished?)",
                manifest_path.display()
            )
        })?;
        let manifest: BatchManifest = serde_json::from_slice(&text)
            .map_err(|e| format!("{}: not a batch manifest: {e}", manifest_path.display()))?;
        if manifest.model != model {
            return Err(format!(
                "{}: predictions of model '{}', mounted for '{model}'",
                dir.display(),
                manifest.model
            ));
        }
        if manifest.format != "parquet" {
            return Err(format!(
                "{}: precomputed tables must be Parquet, this job wrote {}",
                dir.display(),
                manifest.format
            ));
        }
        let mut rows = HashMap::new();
        let mut parts: Vec<Vec<ArrayRef>> = vec![Vec::new(); manifest.predictions.len()];
        let mut offset = 0u32;
        for file in &manifest.files {
            let path = dir.join(file);
            let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
            let builder = File::open(&path)
                .map_err(|e| fail(&e))
                .and_then(|f| ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| fail(&e)))?;
            let wanted: Vec<&str> = std::iter::once(manifest.key_column.as_str())
                .chain(manifest.predictions.iter().map(|p| p.column.as_str()))
                .collect();
            let mask = ProjectionMask::columns(builder.parquet_schema(), wanted.iter().copied());
            for batch in builder
                .with_projection(mask)
                .build()
                .map_err(|e| fail(&e))?
            {
                let batch = batch.map_err(|e| fail(&e))?;
                let column = |name: &str| {
                    batch
                        .column_by_name(name)
                        .cloned()
                        .ok_or_else(|| fail(&format!("no column '{name}'")))
                };
                let keys =
                    cast(&column(&manifest.key_column)?, &ArrowType::Utf8).map_err(|e| fail(&e))?;
                for (i, key) in keys.as_string::<i32>().iter().enumerate() {
                    if let Some(key) = key {
                        // Keys are unique in a batch output; should one repeat, the first wins.
                        rows.entry(key.to_owned()).or_insert(offset + i as u32);
                    }
                }
                for (part, prediction) in parts.iter_mut().zip(&manifest.predictions) {
                    part.push(column(&prediction.column)?);
                }
                offset += batch.num_rows() as u32;
            }
        }
        let columns = manifest
            .predictions
            .iter()
            .zip(parts)
            .map(|(p, arrays)| {
                let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
                concat(&refs)
                    .map(|c| (p.output.clone(), c))
                    .map_err(|e| format!("{}: column '{}': {e}", dir.display(), p.column))
            })
            .collect::<Result<_, _>>()?;
        Ok(Table {
            manifest,
            rows,
            columns,
        })
    }

    /// What the batch job recorded.
    pub fn manifest(&self) -> &BatchManifest {
        &self.manifest
    }

    /// Keys in the table.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table holds no keys.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The precomputed outputs of `signature` for every key, or `None` when any key is
    /// missing, lacks a prediction, or the table was made by another version or signature.
    pub fn lookup(
        &self,
        version: u64,
        signature: &Signature,
        keys: &[Option<String>],
    ) -> Option<Vec<(String, Tensor)>> {
        if version != self.manifest.version || signature.name != self.manifest.signature {
            return None;
        }
        let rows: Vec<u32> = keys
            .iter()
            .map(|k| k.as_ref().and_then(|k| self.rows.get(k)).copied())
            .collect::<Option<_>>()?;
        let indices = UInt32Array::from(rows);
        let mut errors = RowErrors::new(keys.len());
        let mut outputs = Vec::with_capacity(signature.outputs.len());
        for spec in &signature.outputs {
            let (_, column) = self.columns.iter().find(|(name, _)| *name == spec.name)?;
            let array = take(column.as_ref(), &indices, None).ok()?;
            let feature = FeatureColumn {
                name: spec.name.clone(),
                array,
            };
            let tensor =
                serval_arrow::read_input(spec, &[feature], keys.len(), true, &mut errors).ok()?;
            outputs.push((spec.name.clone(), tensor));
        }
        // A row the batch job could not predict holds nulls: the live model answers instead.
        (errors.failed() == 0).then_some(outputs)
    }
}

/// Tables mounted for models, each reloaded when its `_SUCCESS` changes.
#[derive(Default)]
pub struct PrecomputedTables {
    mounts: Vec<Mount>,
}

struct Mount {
    model: String,
    dir: PathBuf,
    loaded: RwLock<Loaded>,
}

#[derive(Default)]
struct Loaded {
    stamp: Option<(SystemTime, u64)>,
    table: Option<Arc<Table>>,
}

impl PrecomputedTables {
    /// Mounts `dir` for `model` for each pair, loading what is complete now.
    pub fn mount(mounts: Vec<(String, PathBuf)>) -> PrecomputedTables {
        let tables = PrecomputedTables {
            mounts: mounts
                .into_iter()
                .map(|(model, dir)| Mount {
                    model,
                    dir,
                    loaded: RwLock::new(Loaded::default()),
                })
                .collect(),
        };
        tables.refresh();
        tables
    }

    /// The table mounted for `model`, if one is loaded.
    pub fn table(&self, model: &str) -> Option<Arc<Table>> {
        let mount = self.mounts.iter().find(|m| m.model == model)?;
        mount
            .loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .table
            .clone()
    }

    /// Reloads every table whose manifest changed since it was loaded (blocking I/O).
    pub fn refresh(&self) {
        for mount in &self.mounts {
            let manifest = mount.dir.join(MANIFEST_FILE);
            let stamp = std::fs::metadata(&manifest)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            let current = mount.loaded.read().unwrap_or_else(|p| p.into_inner()).stamp;
            if stamp.is_none() || stamp == current {
                continue;
            }
            match Table::load(&mount.dir, &mount.model) {
                Ok(table) => {
                    tracing::info!(model = %mount.model, dir = %mount.dir.display(), keys = table.len(),
                        version = table.manifest.version, finished_at = %table.manifest.finished_at,
                        "precomputed predictions loaded");
                    *mount.loaded.write().unwrap_or_else(|p| p.into_inner()) = Loaded {
                        stamp,
                        table: Some(Arc::new(table)),
                    };
                }
                Err(e) => {
                    tracing::error!(model = %mount.model, error = %e, "cannot load precomputed predictions; keeping the previous table");
                    mount
                        .loaded
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .stamp = stamp;
                }
            }
        }
    }

    /// Whether any table is mounted.
    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty()
    }
}
