//! A loaded model version: its signatures, its engine, and the validated predict path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::{self, Backend, BackendChoice, BackendKind, ModelSource};
use crate::cascade::Cascade;
use crate::config::ModelConfig;
use crate::error::{Error, InputError, Result};
use crate::graph::{GraphInfo, TensorSpec};
use crate::postprocess;
use crate::signature::{self, DEFAULT_SIGNATURE, Signature};
use crate::tensor::Tensor;
use crate::warmup::{self, Warmup};

/// Inputs that passed [`Model::validate`]: in graph order, one row per instance.
///
/// Batchers may slice and concatenate them; both keep them valid (same signature, same types,
/// same per-row shapes).
#[derive(Debug, Clone)]
pub struct ValidInputs {
    signature: String,
    tensors: Vec<Tensor>,
    /// Whether axis 0 is the instance axis; otherwise the tensors are one whole request.
    batched: bool,
}

impl ValidInputs {
    /// The signature they were validated against.
    pub fn signature(&self) -> &str {
        &self.signature
    }

    /// The tensors, in the signature's input order.
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }

    /// Whether axis 0 is the instance axis (else the tensors are one instance whole).
    pub fn is_batched(&self) -> bool {
        self.batched
    }

    /// Number of instances: one for a model that does not batch.
    pub fn rows(&self) -> usize {
        if self.batched {
            self.tensors.first().map_or(0, Tensor::rows)
        } else {
            1
        }
    }

    /// Approximate memory held, for queue limits in bytes.
    pub fn byte_size(&self) -> usize {
        self.tensors
            .iter()
            .map(|t| {
                let n = t.data().len();
                match t.data() {
                    crate::tensor::TensorData::Bytes(v) => v.iter().map(|s| s.len() + 24).sum(),
                    other => n * other.data_type().size_of().unwrap_or(8),
                }
            })
            .sum()
    }

    /// Whether `other` can be stacked with these on axis 0.
    pub fn can_batch_with(&self, other: &ValidInputs) -> bool {
        self.batched
            && other.batched
            && self.signature == other.signature
            && self.tensors.len() == other.tensors.len()
            && self.tensors.iter().zip(&other.tensors).all(|(a, b)| {
                a.data_type() == b.data_type() && a.shape().get(1..) == b.shape().get(1..)
            })
    }

    /// Stacks parts that all `can_batch_with` the first.
    pub fn concat(parts: &[ValidInputs]) -> Result<ValidInputs, InputError> {
        let first = parts
            .first()
            .ok_or_else(|| InputError::new("cannot batch zero requests"))?;
        let tensors = (0..first.tensors.len())
            .map(|ix| {
                let column: Vec<Tensor> = parts.iter().map(|p| p.tensors[ix].clone()).collect();
                Tensor::concat_rows(&column)
            })
            .collect::<Result<_, _>>()?;
        Ok(ValidInputs {
            signature: first.signature.clone(),
            tensors,
            batched: first.batched,
        })
    }

    /// Instances `start..end` (of a batched model).
    pub fn slice_rows(&self, start: usize, end: usize) -> ValidInputs {
        ValidInputs {
            signature: self.signature.clone(),
            batched: self.batched,
            tensors: self
                .tensors
                .iter()
                .map(|t| t.slice_rows(start, end))
                .collect(),
        }
    }
}

/// Name of the ONNX file inside a version directory.
pub const MODEL_FILE: &str = "model.onnx";

/// One version of one model, loaded once and shared read-only by every thread.
pub struct Model {
    name: String,
    version: u64,
    /// The ONNX file; `None` for a model loaded from bytes, or a cascade.
    path: Option<PathBuf>,
    /// The version directory (where `warmup.jsonl` is); `None` for a model loaded from bytes.
    version_dir: Option<PathBuf>,
    config: Arc<ModelConfig>,
    graph: GraphInfo,
    signatures: Vec<Signature>,
    raw_output_names: Vec<String>,
    backend: Arc<dyn Backend>,
    backend_choice: BackendChoice,
    /// For a cascade: its phases (also its backend).
    cascade: Option<Arc<Cascade>>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("backend", &self.backend_choice.kind)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Loads `<version_dir>/model.onnx`, validating graph, config and engine up front.
    pub(crate) fn load(
        name: &str,
        version: u64,
        version_dir: &Path,
        config: Arc<ModelConfig>,
        ort_status: std::result::Result<(), &str>,
        default_instances: usize,
    ) -> Result<Model> {
        let path = version_dir.join(MODEL_FILE);
        let load_error = |reason: String| Error::Load {
            model: Some(name.to_owned()),
            version: Some(version),
            path: path.clone(),
            reason,
        };
        if !path.is_file() {
            return Err(load_error(format!("missing {MODEL_FILE}")));
        }
        let graph = GraphInfo::read(&path).map_err(load_error)?;
        Model::build(
            name,
            version,
            ModelSource::File(&path),
            graph,
            config,
            ort_status,
            default_instances,
        )
        .map_err(load_error)
    }

    /// Builds a cascade version (`kind = "cascade"`) over phases already loaded, and warms it
    /// up with `<version_dir>/warmup.jsonl` when there is one (generated inputs otherwise).
    pub(crate) fn load_cascade(
        name: &str,
        version: u64,
        version_dir: &Path,
        config: Arc<ModelConfig>,
        cascade: Cascade,
    ) -> Result<Model> {
        let load_error = |reason: String| Error::Load {
            model: Some(name.to_owned()),
            version: Some(version),
            path: version_dir.to_owned(),
            reason,
        };
        let graph = GraphInfo::composite(cascade.inputs().to_vec(), Cascade::outputs());
        let signatures = signature::build_signatures(&graph, &config).map_err(load_error)?;
        let cascade = Arc::new(cascade);
        let model = Model {
            name: name.to_owned(),
            version,
            path: None,
            version_dir: Some(version_dir.to_owned()),
            raw_output_names: raw_output_names(&graph, &config),
            config,
            graph,
            signatures,
            backend: cascade.clone(),
            backend_choice: BackendChoice {
                kind: BackendKind::Cascade,
                reason: cascade.describe(),
            },
            cascade: Some(cascade),
        };
        match warmup::warm_up(&model).map_err(load_error)? {
            Warmup::Passed => {}
            Warmup::GeneratedFailed(e) => {
                tracing::warn!(model = %name, version, reason = %e, "generated warm-up failed; serving the cascade anyway (add a real request to warmup.jsonl)");
            }
        }
        Ok(model)
    }

    /// Loads a model from a whole ONNX file in memory (the edge runtime's entry point: no
    /// repository, no files). Warm-up runs generated inputs, as for a version without
    /// `warmup.jsonl`. Engines as [`backend::candidates`] orders them; a build without the `ort`
    /// feature runs tract only.
    pub fn from_bytes(
        name: &str,
        version: u64,
        bytes: &[u8],
        config: ModelConfig,
    ) -> Result<Model> {
        let load_error = |reason: String| Error::Load {
            model: Some(name.to_owned()),
            version: Some(version),
            path: PathBuf::from(format!("<{} bytes in memory>", bytes.len())),
            reason,
        };
        let graph = GraphInfo::from_bytes(bytes).map_err(load_error)?;
        let ort_status = backend::ort_status(None);
        let instances = std::thread::available_parallelism().map_or(1, |n| n.get());
        Model::build(
            name,
            version,
            ModelSource::Bytes(bytes),
            graph,
            Arc::new(config),
            ort_status.as_ref().map(|_| ()).map_err(String::as_str),
            instances,
        )
        .map_err(load_error)
    }

    /// Builds, loads on the first engine that works, and warms up; `Err` is the reason.
    fn build(
        name: &str,
        version: u64,
        source: ModelSource<'_>,
        graph: GraphInfo,
        config: Arc<ModelConfig>,
        ort_status: std::result::Result<(), &str>,
        default_instances: usize,
    ) -> std::result::Result<Model, String> {
        let path = match source {
            ModelSource::File(path) => Some(path.to_owned()),
            ModelSource::Bytes(_) => None,
        };
        let signatures = signature::build_signatures(&graph, &config)?;
        let candidates = backend::candidates(config.backend, &graph, ort_status)?;
        let instances = config.instances.unwrap_or(default_instances);
        let mut model = Model {
            name: name.to_owned(),
            version,
            version_dir: path.as_deref().and_then(Path::parent).map(Path::to_owned),
            path,
            raw_output_names: raw_output_names(&graph, &config),
            config,
            graph,
            signatures,
            backend: Arc::new(NotLoaded),
            backend_choice: candidates
                .first()
                .cloned()
                .ok_or_else(|| "no engine can run this model".to_owned())?,
            cascade: None,
        };
        // Each engine in turn until one loads and warms up. A generated warm-up that fails on
        // every engine proves nothing, so the first engine that loaded serves anyway.
        let mut failures: Vec<String> = Vec::new();
        let mut unproven: Option<(Arc<dyn Backend>, BackendChoice)> = None;
        for choice in candidates {
            let engine = choice.kind.as_str();
            model.backend = match backend::load(choice.kind, source, &model.graph, instances) {
                Ok(backend) => backend,
                Err(e) => {
                    failures.push(format!("{engine} failed to load: {e}"));
                    continue;
                }
            };
            model.backend_choice = choice.clone();
            match warmup::warm_up(&model) {
                Ok(Warmup::Passed) => {
                    model.backend_choice.reason = with_failures(choice.reason, &failures);
                    return Ok(model);
                }
                Ok(Warmup::GeneratedFailed(e)) => {
                    failures.push(format!("{engine}: generated warm-up failed: {e}"));
                    if unproven.is_none() {
                        unproven = Some((model.backend.clone(), choice));
                    }
                }
                Err(e) => failures.push(format!("{engine}: warm-up failed: {e}")),
            }
        }
        let Some((backend, choice)) = unproven else {
            return Err(failures.join("; "));
        };
        let reason = with_failures(choice.reason, &failures);
        tracing::warn!(model = %name, version, reason = %reason, "serving without a successful warm-up (add a real request to warmup.jsonl)");
        model.backend = backend;
        model.backend_choice = BackendChoice {
            kind: choice.kind,
            reason: format!("{reason}; serving without a successful warm-up"),
        };
        Ok(model)
    }

    /// Model name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Version number.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Path of the ONNX file; `None` for a model loaded from bytes, or a cascade.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The version directory; `None` for a model loaded from bytes.
    pub fn version_dir(&self) -> Option<&Path> {
        self.version_dir.as_deref()
    }

    /// The phases, when this version is a cascade.
    pub fn cascade(&self) -> Option<&Cascade> {
        self.cascade.as_deref()
    }

    /// The model's configuration (defaults filled in).
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// What the ONNX file declares.
    pub fn graph(&self) -> &GraphInfo {
        &self.graph
    }

    /// Every signature, `serving_default` first.
    pub fn signatures(&self) -> &[Signature] {
        &self.signatures
    }

    /// The engine running this version and why it was chosen.
    pub fn backend_choice(&self) -> &BackendChoice {
        &self.backend_choice
    }

    /// Whether requests may stack instances on axis 0: the graph has a shared batch axis and
    /// the config does not turn batching off (`max_batch_size = 0`, as in Triton). Otherwise
    /// every request is one instance of whole tensors.
    pub fn is_batchable(&self) -> bool {
        self.graph.is_batchable() && self.config.batching.max_batch_size > 0
    }

    /// The named signature, or `serving_default` when `name` is `None`.
    pub fn signature(&self, name: Option<&str>) -> Result<&Signature> {
        let name = name.unwrap_or(DEFAULT_SIGNATURE);
        self.signatures
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::SignatureNotFound {
                model: self.name.clone(),
                signature: name.to_owned(),
                available: self
                    .signatures
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Runs one batch through a signature: validates `inputs` (public names), runs the engine,
    /// post-processes, and returns the signature's outputs in order.
    ///
    /// Every input's axis 0 is the instance axis; outputs have one row per instance.
    pub fn predict(
        &self,
        signature: Option<&str>,
        inputs: Vec<(String, Tensor)>,
    ) -> Result<Vec<(String, Tensor)>> {
        let valid = self.validate(signature, inputs)?;
        self.run(valid)
    }

    /// Checks names, types, shapes and values against a signature; the result is the only way
    /// into [`Model::run`], so the engine never sees an unchecked tensor.
    pub fn validate(
        &self,
        signature: Option<&str>,
        inputs: Vec<(String, Tensor)>,
    ) -> Result<ValidInputs> {
        let signature = self.signature(signature)?;
        let tensors = self.check_inputs(signature, inputs)?;
        Ok(ValidInputs {
            signature: signature.name.clone(),
            tensors,
            batched: self.is_batchable(),
        })
    }

    /// Runs validated inputs: engine, post-processing, signature outputs in order.
    pub fn run(&self, inputs: ValidInputs) -> Result<Vec<(String, Tensor)>> {
        let signature = self.signature(Some(&inputs.signature))?;
        let ordered = inputs.tensors;
        let rows = ordered.first().map(Tensor::rows).unwrap_or(0);
        let raw = self
            .backend
            .run(ordered)
            .map_err(|reason| self.inference_error(reason))?;
        if raw.len() != self.raw_output_names.len() {
            return Err(self.inference_error(format!(
                "engine returned {} outputs, the graph declares {}",
                raw.len(),
                self.raw_output_names.len()
            )));
        }
        let mut tensors: Vec<(String, Tensor)> =
            self.raw_output_names.iter().cloned().zip(raw).collect();
        if self.is_batchable()
            && let Some((name, t)) = tensors
                .iter()
                .find(|(_, t)| t.shape().is_empty() || t.rows() != rows)
        {
            return Err(self.inference_error(format!(
                "output '{name}' has shape {:?}, not one row per instance ({rows}); if the model \
                 does not batch on axis 0, set max_batch_size = 0 under [batching] in config.toml",
                t.shape()
            )));
        }
        postprocess::apply(
            &signature.postprocess,
            &mut tensors,
            &self.config.class_labels,
        )
        .map_err(|reason| self.inference_error(reason))?;
        signature
            .outputs
            .iter()
            .map(|spec| {
                let ix = tensors
                    .iter()
                    .position(|(n, _)| n == &spec.name)
                    .ok_or_else(|| {
                        self.inference_error(format!(
                            "signature output '{}' was not produced. This is a bug.",
                            spec.name
                        ))
                    })?;
                Ok(tensors.swap_remove(ix))
            })
            .collect()
    }

    fn inference_error(&self, reason: String) -> Error {
        Error::Inference {
            model: self.name.clone(),
            version: self.version,
            reason,
        }
    }

    /// Checks names, types, shapes and values; returns inputs in graph order.
    fn check_inputs(
        &self,
        signature: &Signature,
        mut inputs: Vec<(String, Tensor)>,
    ) -> Result<Vec<Tensor>, InputError> {
        let expected = || signature.input_names();
        if let Some((unknown, _)) = inputs
            .iter()
            .find(|(n, _)| !signature.inputs.iter().any(|s| &s.name == n))
        {
            return Err(InputError::new(format!(
                "unknown input '{unknown}' (expected: {})",
                expected()
            )));
        }
        let mut ordered = Vec::with_capacity(signature.inputs.len());
        for spec in &signature.inputs {
            let ix = inputs
                .iter()
                .position(|(n, _)| n == &spec.name)
                .ok_or_else(|| {
                    InputError::new(format!(
                        "missing input '{}' (expected: {})",
                        spec.name,
                        expected()
                    ))
                })?;
            let (_, tensor) = inputs.swap_remove(ix);
            check_tensor(spec, &tensor, self.config.allow_nan)?;
            ordered.push(tensor);
        }
        if let Some((name, _)) = inputs.first() {
            return Err(InputError::new(format!("input '{name}' was given twice")));
        }
        if self.is_batchable() {
            let rows = ordered[0].rows();
            if rows == 0 {
                return Err(InputError::new("empty input: no instances to predict"));
            }
            if let Some((spec, t)) = signature
                .inputs
                .iter()
                .zip(&ordered)
                .find(|(_, t)| t.rows() != rows)
            {
                return Err(InputError::new(format!(
                    "input '{}' has {} instances but '{}' has {rows}",
                    spec.name,
                    t.rows(),
                    signature.inputs[0].name
                )));
            }
        }
        Ok(ordered)
    }
}

/// The graph's output names as the config renames them, in graph order.
fn raw_output_names(graph: &GraphInfo, config: &ModelConfig) -> Vec<String> {
    graph
        .outputs
        .iter()
        .map(|o| {
            config
                .outputs
                .get(&o.name)
                .cloned()
                .unwrap_or_else(|| o.name.clone())
        })
        .collect()
}

/// A choice's reason followed by what failed before it.
fn with_failures(reason: String, failures: &[String]) -> String {
    if failures.is_empty() {
        reason
    } else {
        format!("{reason} (after: {})", failures.join("; "))
    }
}

/// The engine of a model under construction, before any engine has loaded.
struct NotLoaded;

impl Backend for NotLoaded {
    fn run(&self, _: Vec<Tensor>) -> std::result::Result<Vec<Tensor>, String> {
        Err("no engine has loaded this model. This is a bug.".to_owned())
    }
}

fn check_tensor(spec: &TensorSpec, tensor: &Tensor, allow_nan: bool) -> Result<(), InputError> {
    if tensor.data_type() != spec.data_type {
        return Err(InputError::new(format!(
            "input '{}' has type {} but the model expects {}",
            spec.name,
            tensor.data_type(),
            spec.data_type
        )));
    }
    let fits = tensor.shape().len() == spec.shape.len()
        && tensor
            .shape()
            .iter()
            .zip(&spec.shape)
            .all(|(&d, s)| s.is_none_or(|s| s == d));
    if !fits {
        return Err(InputError::new(format!(
            "input '{}' has shape {:?} but the model expects {:?}",
            spec.name,
            tensor.shape(),
            spec.shape_i64()
        )));
    }
    if !allow_nan && let Some((ix, value)) = tensor.data().first_non_finite() {
        let row = ix / tensor.row_len().max(1);
        return Err(InputError::new(format!(
            "input '{}' contains {} (instance {row}); set allow_nan = true in config.toml to accept non-finite values",
            spec.name,
            crate::tensor::non_finite_name(value)
        )));
    }
    Ok(())
}
