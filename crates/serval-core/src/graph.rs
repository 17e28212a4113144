//! What an ONNX file declares, read straight from its protobuf: inputs, outputs, operators.
//!
//! This is engine-neutral ground truth. Signatures are built from it, and backend selection
//! reads its operator list to decide whether tract can be trusted with the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;
use tract_onnx::pb;
use tract_onnx::prelude::Framework;

use crate::tensor::DataType;

/// A named tensor with its type and shape; `None` dimensions are dynamic (shown as -1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorSpec {
    /// Name as clients see it.
    pub name: String,
    /// Element type.
    pub data_type: DataType,
    /// Dimensions; `None` is dynamic (the batch axis is always dynamic for batchable models).
    pub shape: Vec<Option<usize>>,
}

impl TensorSpec {
    /// The shape with dynamic dimensions as -1, as `saved_model_cli` and Triton print it.
    pub fn shape_i64(&self) -> Vec<i64> {
        self.shape
            .iter()
            .map(|d| d.map_or(-1, |d| d as i64))
            .collect()
    }
}

/// The declared interface and operator set of one ONNX file.
#[derive(Debug, Clone)]
pub struct GraphInfo {
    /// Graph inputs that are not initializers, in graph order.
    pub inputs: Vec<TensorSpec>,
    /// Graph outputs, in graph order.
    pub outputs: Vec<TensorSpec>,
    /// Operators used, as `domain:OpType` (`OpType` alone for the default domain).
    pub operators: BTreeSet<String>,
    /// Problems tract is known to have with this graph.
    pub tract_hazards: Vec<TractHazard>,
    /// Whether every input leads with one shared dynamic axis, so requests stack on axis 0
    /// (Triton's `max_batch_size > 0`); otherwise a request carries whole tensors.
    pub(crate) batched: bool,
    /// Outputs that are sequences of maps (ZipMap): graph output name -> class labels, in the
    /// column order of the `[N, C]` probabilities tensor they are served as.
    pub map_outputs: BTreeMap<String, Vec<String>>,
    /// What the file declares that Serval reads differently, for `serval inspect`.
    pub notes: Vec<String>,
    /// Dimension names (`dim_param`) of each input, parallel to `inputs`.
    pub(crate) input_dim_names: Vec<Vec<Option<String>>>,
    /// The name the file gives the batch axis, when it names it.
    pub(crate) batch_dim_name: Option<String>,
    pub(crate) proto: pb::ModelProto,
}

/// A reason not to run a graph on tract (sonos/tract 0.23.9 behaviour, see docs/ARCHITECTURE.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TractHazard {
    /// tract cannot load the operator at all.
    Unsupported(String),
    /// tract loads it but returns wrong numbers.
    Wrong(String),
    /// tract is correct but 30-500x slower than ONNX Runtime.
    Slow(String),
}

impl TractHazard {
    /// Whether tract must not run the graph (rather than merely being slow).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, TractHazard::Slow(_))
    }

    /// Human-readable reason.
    pub fn reason(&self) -> &str {
        match self {
            TractHazard::Unsupported(r) | TractHazard::Wrong(r) | TractHazard::Slow(r) => r,
        }
    }
}

/// ONNX-ML operators that tract 0.23.9 does not implement.
const TRACT_UNSUPPORTED: &[&str] = &[
    "ZipMap",
    "Scaler",
    "TreeEnsembleRegressor",
    "TreeEnsemble",
    "SVMClassifier",
    "SVMRegressor",
    "OneHotEncoder",
    "Imputer",
    "LabelEncoder",
    "Binarizer",
    "DictVectorizer",
    "FeatureVectorizer",
    "StringNormalizer",
    "TfIdfVectorizer",
    "Loop",
    "Unique",
];

impl GraphInfo {
    /// Parses `path`, or explains why it is not a usable ONNX model.
    pub fn read(path: &Path) -> Result<GraphInfo, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read model file: {e}"))?;
        GraphInfo::from_bytes(&bytes)
    }

    /// Parses a whole ONNX file held in memory.
    pub fn from_bytes(mut bytes: &[u8]) -> Result<GraphInfo, String> {
        let proto = tract_onnx::onnx()
            .proto_model_for_read(&mut bytes)
            .map_err(|e| format!("not a valid ONNX protobuf: {e}"))?;
        GraphInfo::from_proto(proto)
    }

    /// The declared interface of a model made of other models (a cascade): batched inputs
    /// and outputs, no graph of its own for an engine to load.
    pub(crate) fn composite(inputs: Vec<TensorSpec>, outputs: Vec<TensorSpec>) -> GraphInfo {
        GraphInfo {
            input_dim_names: inputs.iter().map(|s| vec![None; s.shape.len()]).collect(),
            inputs,
            outputs,
            operators: BTreeSet::new(),
            tract_hazards: Vec::new(),
            batched: true,
            map_outputs: BTreeMap::new(),
            notes: Vec::new(),
            batch_dim_name: None,
            proto: pb::ModelProto::default(),
        }
    }

    fn from_proto(proto: pb::ModelProto) -> Result<GraphInfo, String> {
        let graph = proto.graph.as_ref().ok_or("ONNX file contains no graph")?;
        let initializers: BTreeSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let (inputs, input_dim_names): (Vec<TensorSpec>, Vec<_>) = graph
            .input
            .iter()
            .filter(|i| !initializers.contains(i.name.as_str()))
            .map(|i| tensor_spec(i, "input"))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip();
        let mut map_outputs = BTreeMap::new();
        let mut outputs = Vec::with_capacity(graph.output.len());
        for info in &graph.output {
            match map_output_labels(graph, info) {
                Some(labels) => {
                    outputs.push(TensorSpec {
                        name: info.name.clone(),
                        data_type: DataType::Fp32,
                        shape: vec![None, Some(labels.len())],
                    });
                    map_outputs.insert(info.name.clone(), labels);
                }
                None => outputs.push(tensor_spec(info, "output")?.0),
            }
        }
        if inputs.is_empty() {
            return Err("graph has no inputs".to_owned());
        }
        let mut operators = BTreeSet::new();
        let mut tract_hazards = Vec::new();
        for node in &graph.node {
            let op = if node.domain.is_empty() || node.domain == "ai.onnx" {
                node.op_type.clone()
            } else {
                format!("{}:{}", node.domain, node.op_type)
            };
            operators.insert(op);
            tract_hazards.extend(hazards_of(node));
        }
        tract_hazards.dedup();
        let mut notes = Vec::new();
        let batch_dim_name = batch_axis(&inputs, &input_dim_names, &outputs);
        let batched = batch_dim_name.is_some();
        if batched {
            // Converters often declare an output as `[1]` for a graph that answers `[N]`: the
            // batch axis is what the inputs say it is.
            for output in &mut outputs {
                if let Some(first @ Some(_)) = output.shape.first_mut() {
                    notes.push(format!(
                        "output '{}' declares its leading dimension as {}; served as the batch axis",
                        output.name,
                        first.unwrap_or(0)
                    ));
                    *first = None;
                }
            }
        }
        Ok(GraphInfo {
            inputs,
            outputs,
            operators,
            tract_hazards,
            batched,
            map_outputs,
            notes,
            input_dim_names,
            batch_dim_name: batch_dim_name.flatten(),
            proto,
        })
    }

    /// Whether requests may stack instances on axis 0.
    pub fn is_batchable(&self) -> bool {
        self.batched
    }
}

/// The batch axis, when the graph has one: `Some(name)` (the file's name for it, if any) when
/// every input leads with a dynamic axis, all named alike, and no output rules it out (a scalar,
/// or a fixed leading size other than 1).
fn batch_axis(
    inputs: &[TensorSpec],
    dim_names: &[Vec<Option<String>>],
    outputs: &[TensorSpec],
) -> Option<Option<String>> {
    if !inputs.iter().all(|i| i.shape.first() == Some(&None)) {
        return None;
    }
    let names: BTreeSet<&str> = dim_names
        .iter()
        .filter_map(|d| d.first()?.as_deref())
        .collect();
    if names.len() > 1 {
        return None;
    }
    let output_fits = |o: &TensorSpec| matches!(o.shape.first(), Some(None | Some(1)));
    if !outputs.iter().all(output_fits) {
        return None;
    }
    Some(names.into_iter().next().map(str::to_owned))
}

/// Class labels of a sequence-of-maps output made by a `ZipMap` node.
fn map_output_labels(graph: &pb::GraphProto, info: &pb::ValueInfoProto) -> Option<Vec<String>> {
    // tract's protobuf schema knows only tensor types, so a sequence type reads as no type.
    let is_tensor = info
        .r#type
        .as_ref()
        .and_then(|t| t.value.as_ref())
        .is_some();
    if is_tensor {
        return None;
    }
    let node = graph
        .node
        .iter()
        .find(|n| n.op_type == "ZipMap" && n.output.iter().any(|o| o == &info.name))?;
    let attribute = |name: &str| node.attribute.iter().find(|a| a.name == name);
    if let Some(ints) = attribute("classlabels_int64s").filter(|a| !a.ints.is_empty()) {
        return Some(ints.ints.iter().map(i64::to_string).collect());
    }
    let strings = attribute("classlabels_strings")?;
    Some(
        strings
            .strings
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// A tensor's spec and the names of its dimensions.
fn tensor_spec(
    info: &pb::ValueInfoProto,
    role: &str,
) -> Result<(TensorSpec, Vec<Option<String>>), String> {
    let Some(pb::type_proto::Value::TensorType(tensor)) =
        info.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(format!(
            "{role} '{}' is neither a tensor nor a ZipMap's sequence of maps",
            info.name
        ));
    };
    let data_type = data_type_of(tensor.elem_type).ok_or_else(|| {
        format!(
            "{role} '{}' has unsupported element type {}",
            info.name, tensor.elem_type
        )
    })?;
    let Some(shape) = &tensor.shape else {
        return Err(format!("{role} '{}' has no declared shape", info.name));
    };
    use pb::tensor_shape_proto::dimension::Value as Dim;
    // Named (`dim_param`) and unnamed dimensions are dynamic; skl2onnx leaves the batch
    // dimension unnamed, and tract needs it made symbolic (see backend::tract).
    let (shape, names) = shape
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(Dim::DimValue(v)) if *v > 0 => (Some(*v as usize), None),
            Some(Dim::DimParam(name)) if !name.is_empty() => (None, Some(name.clone())),
            _ => (None, None),
        })
        .unzip();
    let spec = TensorSpec {
        name: info.name.clone(),
        data_type,
        shape,
    };
    Ok((spec, names))
}

fn data_type_of(elem_type: i32) -> Option<DataType> {
    use pb::tensor_proto::DataType as P;
    Some(match P::try_from(elem_type).ok()? {
        P::Float => DataType::Fp32,
        P::Uint8 => DataType::Uint8,
        P::Int8 => DataType::Int8,
        P::Uint16 => DataType::Uint16,
        P::Int16 => DataType::Int16,
        P::Int32 => DataType::Int32,
        P::Int64 => DataType::Int64,
        P::String => DataType::Bytes,
        P::Bool => DataType::Bool,
        P::Float16 => DataType::Fp16,
        P::Double => DataType::Fp64,
        P::Uint32 => DataType::Uint32,
        P::Uint64 => DataType::Uint64,
        _ => return None,
    })
}

fn hazards_of(node: &pb::NodeProto) -> Vec<TractHazard> {
    let op = node.op_type.as_str();
    if TRACT_UNSUPPORTED.contains(&op) {
        return vec![TractHazard::Unsupported(format!(
            "tract does not implement operator {op}"
        ))];
    }
    if op != "TreeEnsembleClassifier" {
        return Vec::new();
    }
    let mut hazards = vec![TractHazard::Slow(
        "tree ensembles run 30-500x slower on tract than on ONNX Runtime".to_owned(),
    )];
    let attribute = |name: &str| node.attribute.iter().find(|a| a.name == name);
    let n_classes = attribute("classlabels_int64s")
        .map(|a| a.ints.len())
        .or_else(|| attribute("classlabels_strings").map(|a| a.strings.len()))
        .unwrap_or(0);
    if n_classes == 2 {
        hazards.push(TractHazard::Wrong(
            "tract returns wrong labels (and rejects base_values) for binary TreeEnsembleClassifier"
                .to_owned(),
        ));
    }
    if attribute("classlabels_strings").is_some() {
        hazards.push(TractHazard::Unsupported(
            "tract cannot build classifiers with string class labels".to_owned(),
        ));
    }
    let gte = attribute("nodes_modes")
        .is_some_and(|a| a.strings.iter().any(|s| s.as_slice() == b"BRANCH_GTE"));
    if gte {
        hazards.push(TractHazard::Wrong(
            "tract treats BRANCH_GTE tree nodes as leaves (wrong outputs)".to_owned(),
        ));
    }
    hazards
}
