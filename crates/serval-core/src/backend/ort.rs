//! ONNX Runtime through the `ort` crate, loaded at run time from a shared library.
//!
//! The default engine wherever its library is found: it runs every graph ONNX Runtime can run,
//! the ONNX-ML operators (tree ensembles, ZipMap) and convolutional networks included. `Session::run`
//! takes `&mut self`, so each loaded version keeps a pool of sessions, each single-threaded:
//! on small machines parallelism comes from concurrent requests, not intra-op threads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType, ValueType};

use super::pool::Pool;
use super::{Backend, ModelSource};
use crate::graph::GraphInfo;
use crate::tensor::{Tensor, TensorData};

/// A model version loaded on ONNX Runtime.
pub struct OrtBackend {
    sessions: Pool<Session>,
    input_names: Vec<String>,
    /// Per graph output: where a ZipMap's classes go in the tensor it is served as, else `None`.
    map_columns: Vec<Option<ClassColumns>>,
}

/// The column of each class of a ZipMap, looked up by the map's key type (int64 or string),
/// built once at load: the maps are read on every request.
struct ClassColumns {
    by_id: HashMap<i64, usize>,
    by_name: HashMap<String, usize>,
    count: usize,
}

impl ClassColumns {
    fn new(labels: &[String]) -> ClassColumns {
        ClassColumns {
            by_id: labels
                .iter()
                .enumerate()
                .filter_map(|(column, l)| Some((l.parse().ok()?, column)))
                .collect(),
            by_name: labels
                .iter()
                .enumerate()
                .map(|(column, l)| (l.clone(), column))
                .collect(),
            count: labels.len(),
        }
    }
}

impl OrtBackend {
    /// Creates `instances` sessions of `source`.
    pub fn load(
        source: ModelSource<'_>,
        graph: &GraphInfo,
        instances: usize,
    ) -> Result<OrtBackend, String> {
        let env = runtime(None)?;
        let sessions = (0..instances.max(1))
            .map(|_| {
                let builder = Session::builder(env).map_err(|e| e.to_string())?;
                let builder = builder.with_intra_threads(1).map_err(|e| e.to_string())?;
                let builder = builder.with_inter_threads(1).map_err(|e| e.to_string())?;
                let mut builder = builder
                    .with_optimization_level(GraphOptimizationLevel::Level3)
                    .map_err(|e| e.to_string())?;
                match source {
                    ModelSource::File(path) => builder.commit_from_file(path),
                    ModelSource::Bytes(bytes) => builder.commit_from_memory(bytes),
                }
                .map_err(|e| format!("ONNX Runtime cannot load the graph: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let input_names = graph.inputs.iter().map(|s| s.name.clone()).collect();
        let map_columns = graph
            .outputs
            .iter()
            .map(|o| graph.map_outputs.get(&o.name).map(|l| ClassColumns::new(l)))
            .collect();
        Ok(OrtBackend {
            sessions: Pool::new(sessions),
            input_names,
            map_columns,
        })
    }
}

impl Backend for OrtBackend {
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, String> {
        let values = self
            .input_names
            .iter()
            .cloned()
            .zip(inputs)
            .map(|(name, t)| to_ort(t).map(|v| (name, v)))
            .collect::<Result<Vec<_>, _>>()?;
        self.sessions.with(|session| {
            let outputs = session.run(values).map_err(|e| e.to_string())?;
            outputs
                .values()
                .zip(&self.map_columns)
                .map(|(v, columns)| match columns {
                    Some(columns) => from_ort_maps(v, columns),
                    None => from_ort(&v),
                })
                .collect()
        })
    }
}

static RUNTIME: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// The process-wide ONNX Runtime environment, loading the library on first use.
pub(crate) fn runtime(
    explicit: Option<&Path>,
) -> Result<&'static ort::environment::Environment, String> {
    RUNTIME
        .get_or_init(|| {
            let path = locate_library(explicit)?;
            ort::init_from(&path)
                .map_err(|e| format!("cannot load {}: {e}", path.display()))?
                .with_name("serval")
                .build()
                .map_err(|e| {
                    format!(
                        "cannot initialise ONNX Runtime from {}: {e}",
                        path.display()
                    )
                })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Finds `libonnxruntime.so`: explicit path, `ORT_DYLIB_PATH`, then the `onnxruntime` wheel.
fn locate_library(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return existing(path.to_path_buf(), "--ort-library");
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        return existing(PathBuf::from(path), "ORT_DYLIB_PATH");
    }
    let package_dir = python_package_dir().ok_or(
        "no ONNX Runtime library: set ORT_DYLIB_PATH (or --ort-library) to libonnxruntime.so, \
         or `pip install onnxruntime`",
    )?;
    let capi = package_dir.join("capi");
    let entries =
        std::fs::read_dir(&capi).map_err(|e| format!("cannot list {}: {e}", capi.display()))?;
    let mut candidates: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libonnxruntime.so")
                    || n == "libonnxruntime.dylib"
                    || n == "onnxruntime.dll"
            })
        })
        .collect();
    candidates.sort();
    candidates.pop().ok_or_else(|| {
        format!(
            "the onnxruntime Python package at {} has no shared library",
            package_dir.display()
        )
    })
}

fn existing(path: PathBuf, source: &str) -> Result<PathBuf, String> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{source} points to {}, which does not exist",
            path.display()
        ))
    }
}

/// The `onnxruntime` package directory of the first `python3` on PATH, found without importing it.
fn python_package_dir() -> Option<PathBuf> {
    let script = "import importlib.util as u; s = u.find_spec('onnxruntime'); \
                  print(s.submodule_search_locations[0] if s else '')";
    let out = Command::new("python3").args(["-c", script]).output().ok()?;
    let dir = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

fn to_ort(tensor: Tensor) -> Result<DynValue, String> {
    let (shape, data) = tensor.into_parts();
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    fn build<T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static>(
        shape: Vec<i64>,
        v: Vec<T>,
    ) -> Result<DynValue, String> {
        OrtTensor::from_array((shape, v))
            .map(|t| t.into_dyn())
            .map_err(|e| e.to_string())
    }
    match data {
        TensorData::Bool(v) => build(shape, v),
        TensorData::Uint8(v) => build(shape, v),
        TensorData::Uint16(v) => build(shape, v),
        TensorData::Uint32(v) => build(shape, v),
        TensorData::Uint64(v) => build(shape, v),
        TensorData::Int8(v) => build(shape, v),
        TensorData::Int16(v) => build(shape, v),
        TensorData::Int32(v) => build(shape, v),
        TensorData::Int64(v) => build(shape, v),
        TensorData::Fp16(v) => build(shape, v),
        TensorData::Fp32(v) => build(shape, v),
        TensorData::Fp64(v) => build(shape, v),
        TensorData::Bytes(v) => OrtTensor::from_string_array((shape, v.as_slice()))
            .map(|t| t.into_dyn())
            .map_err(|e| e.to_string()),
    }
}

/// A ZipMap's sequence of `{class: probability}` maps as a `[N, C]` tensor, columns in its class
/// labels' order (ONNX Runtime's maps come back in key order, which for string labels is not theirs).
fn from_ort_maps(
    value: ort::value::DynValueRef<'_>,
    columns: &ClassColumns,
) -> Result<Tensor, String> {
    use ort::value::{DynMapValueType, DynSequenceValueType};
    let sequence = value
        .downcast::<DynSequenceValueType>()
        .map_err(|e| e.to_string())?;
    let maps = sequence
        .try_extract_sequence::<DynMapValueType>()
        .map_err(|e| e.to_string())?;
    let width = columns.count;
    let mut data = vec![0f32; maps.len() * width];
    let unknown = |class: &dyn std::fmt::Display| {
        format!("ZipMap produced class '{class}', which its class labels do not list")
    };
    for (row, map) in maps.iter().enumerate() {
        let out = &mut data[row * width..(row + 1) * width];
        match map.try_extract_key_values::<i64, f32>() {
            Ok(entries) => {
                for (class, p) in entries {
                    out[*columns.by_id.get(&class).ok_or_else(|| unknown(&class))?] = p;
                }
            }
            Err(_) => {
                let entries = map
                    .try_extract_key_values::<String, f32>()
                    .map_err(|e| e.to_string())?;
                for (class, p) in entries {
                    out[*columns.by_name.get(&class).ok_or_else(|| unknown(&class))?] = p;
                }
            }
        }
    }
    Tensor::new(vec![maps.len(), width], TensorData::Fp32(data)).map_err(|e| e.to_string())
}

fn from_ort(value: &ort::value::DynValueRef<'_>) -> Result<Tensor, String> {
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(format!(
            "ONNX Runtime returned a non-tensor output ({:?})",
            value.dtype()
        ));
    };
    fn vec<T: ort::value::PrimitiveTensorElementType + Clone>(
        value: &ort::value::DynValueRef<'_>,
    ) -> Result<(Vec<usize>, Vec<T>), String> {
        let (shape, data) = value.try_extract_tensor::<T>().map_err(|e| e.to_string())?;
        Ok((shape.iter().map(|&d| d as usize).collect(), data.to_vec()))
    }
    macro_rules! extract {
        ($variant:ident) => {{
            let (shape, v) = vec(value)?;
            (shape, TensorData::$variant(v))
        }};
    }
    let (shape, data) = match ty {
        TensorElementType::Bool => extract!(Bool),
        TensorElementType::Uint8 => extract!(Uint8),
        TensorElementType::Uint16 => extract!(Uint16),
        TensorElementType::Uint32 => extract!(Uint32),
        TensorElementType::Uint64 => extract!(Uint64),
        TensorElementType::Int8 => extract!(Int8),
        TensorElementType::Int16 => extract!(Int16),
        TensorElementType::Int32 => extract!(Int32),
        TensorElementType::Int64 => extract!(Int64),
        TensorElementType::Float16 => extract!(Fp16),
        TensorElementType::Float32 => extract!(Fp32),
        TensorElementType::Float64 => extract!(Fp64),
        TensorElementType::String => {
            let (shape, v) = value.try_extract_strings().map_err(|e| e.to_string())?;
            (
                shape.iter().map(|&d| d as usize).collect(),
                TensorData::Bytes(v),
            )
        }
        other => {
            return Err(format!(
                "ONNX Runtime returned an output of unsupported type {other:?}"
            ));
        }
    };
    Tensor::new(shape, data).map_err(|e| e.to_string())
}
