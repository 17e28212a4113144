//! What an ONNX file declares, read straight from its protobuf: inputs, outputs, operators.
//!
//! This is engine-neutral ground truth. Signatures are built from it, and backend selection
//! reads its operator list to decide whether tract can be trusted with the graph.

use std::collections::BTreeSet;
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
        let proto = tract_onnx::onnx()
            .proto_model_for_read(&mut bytes.as_slice())
            .map_err(|e| format!("not a valid ONNX protobuf: {e}"))?;
        GraphInfo::from_proto(proto)
    }

    fn from_proto(proto: pb::ModelProto) -> Result<GraphInfo, String> {
        let graph = proto.graph.as_ref().ok_or("ONNX file contains no graph")?;
        let initializers: BTreeSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs = graph
            .input
            .iter()
            .filter(|i| !initializers.contains(i.name.as_str()))
            .map(|i| value_spec(i, "input"))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = graph
            .output
            .iter()
            .map(|o| value_spec(o, "output"))
            .collect::<Result<Vec<_>, _>>()?;
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
        Ok(GraphInfo {
            inputs,
            outputs,
            operators,
            tract_hazards,
            proto,
        })
    }

    /// Whether every input has a dynamic leading (batch) dimension.
    pub fn is_batchable(&self) -> bool {
        self.inputs.iter().all(|i| i.shape.first() == Some(&None))
    }
}

fn value_spec(info: &pb::ValueInfoProto, role: &str) -> Result<TensorSpec, String> {
    let Some(pb::type_proto::Value::TensorType(tensor)) =
        info.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(format!(
            "{role} '{}' is not a tensor (a sequence or map, e.g. from ZipMap); \
             export classifiers with skl2onnx options={{'zipmap': False}}",
            info.name
        ));
    };
    let data_type = data_type_of(tensor.elem_type).ok_or_else(|| {
        format!(
            "{role} '{}' has unsupported element type {}",
            info.name, tensor.elem_type
        )
    })?;
    let shape = match &tensor.shape {
        Some(shape) => shape
            .dim
            .iter()
            .map(|d| match d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => {
                    Some(v as usize)
                }
                // Named (`dim_param`) and unnamed dimensions are dynamic; skl2onnx leaves the
                // batch dimension unnamed, and tract needs it made symbolic (see backend::tract).
                _ => None,
            })
            .collect(),
        None => return Err(format!("{role} '{}' has no declared shape", info.name)),
    };
    Ok(TensorSpec {
        name: info.name.clone(),
        data_type,
        shape,
    })
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
