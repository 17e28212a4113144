//! Post-training quantization of an ONNX file's weights, for the small phase-1 model of
//! two-phase predictions (the book's TF Lite `Optimize.DEFAULT`, ONNX Runtime's
//! `quantize_dynamic`).
//!
//! Three modes, each a rewrite of the graph that both ONNX Runtime and tract run:
//! - [`Mode::WeightsInt8`] (the default, for the edge): each MatMul/Gemm/Conv weight becomes
//!   int8 with one symmetric scale per output column or channel, behind a `DequantizeLinear`.
//!   The file is about 4× smaller; tract folds the dequantization into float weights at load,
//!   so accuracy and speed stay those of the float model (ONNX Runtime does not fold it and
//!   dequantizes on every call).
//! - [`Mode::DynamicInt8`]: ONNX Runtime's dynamic quantization: MatMul and Gemm run as
//!   `MatMulInteger` over activations quantized per call (`DynamicQuantizeLinear`, uint8) and
//!   int8 weights (per column), rescaled to float.
//! - [`Mode::Fp16`]: every large float initializer stored as float16 behind a `Cast` (2×).
//!
//! What cannot be quantized (a weight computed at run time, tree ensembles whose parameters
//! are attributes, a node inside a subgraph) stays float and is named, with the reason, in the
//! [`Report`].
#![deny(missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost::Message;
use serde::Serialize;
use tract_onnx::pb::{self, AttributeProto, NodeProto, TensorProto};

/// How weights are quantized.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// int8 weights with per-channel scales, dequantized in the graph.
    #[default]
    WeightsInt8,
    /// int8 weights and activations quantized per call (`MatMulInteger`).
    DynamicInt8,
    /// float16 weights, cast back to float in the graph.
    Fp16,
}

impl Mode {
    /// The mode's name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::WeightsInt8 => "weights-int8",
            Mode::DynamicInt8 => "dynamic-int8",
            Mode::Fp16 => "fp16",
        }
    }
}

/// What to quantize.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    /// The rewrite.
    pub mode: Mode,
    /// Weights with fewer elements stay float (a bias of 10 floats saves nothing).
    pub min_elements: usize,
    /// How many scales an int8 weight gets.
    pub scales: Scales,
}

/// The granularity of int8 weight scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scales {
    /// TF Lite's int8 scheme: one scale per output channel for a convolution (whose filters'
    /// ranges differ widely), one per weight for MatMul and Gemm (its fully connected layers).
    #[default]
    ByOperator,
    /// One scale per output channel everywhere: closest to the float model, 4 bytes a column.
    PerChannel,
    /// One scale per weight everywhere (ONNX Runtime's `quantize_dynamic` default).
    PerTensor,
}

impl Scales {
    /// Whether a weight of `op_type` gets a scale per output channel.
    fn per_channel(self, op_type: &str) -> bool {
        match self {
            Scales::ByOperator => op_type == "Conv",
            Scales::PerChannel => true,
            Scales::PerTensor => false,
        }
    }
}

impl Default for QuantizeOptions {
    fn default() -> QuantizeOptions {
        QuantizeOptions {
            mode: Mode::WeightsInt8,
            min_elements: 16,
            scales: Scales::default(),
        }
    }
}

/// What happened to one node holding weights.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeOutcome {
    /// The node's name (or `<op>#<index>` when it has none).
    pub node: String,
    /// Its operator (`domain:Op` outside the default domain).
    pub op_type: String,
    /// The weight it holds, when it is an initializer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<String>,
    /// Float elements in that weight (or in its float attributes).
    pub elements: usize,
    /// Whether it was rewritten.
    pub quantized: bool,
    /// Why not, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The quantization's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The rewrite applied.
    pub mode: Mode,
    /// File size before.
    pub bytes_before: usize,
    /// File size after.
    pub bytes_after: usize,
    /// Every node holding float weights, quantized or not.
    pub nodes: Vec<NodeOutcome>,
}

impl Report {
    /// Nodes rewritten.
    pub fn quantized(&self) -> usize {
        self.nodes.iter().filter(|n| n.quantized).count()
    }

    /// `bytes_before / bytes_after`.
    pub fn ratio(&self) -> f64 {
        self.bytes_before as f64 / self.bytes_after.max(1) as f64
    }
}

/// Why a file could not be quantized at all.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QuantizeError {
    /// The bytes are not an ONNX model.
    #[error("not a valid ONNX protobuf: {0}")]
    NotOnnx(String),
    /// The model has no graph.
    #[error("the ONNX file contains no graph")]
    NoGraph,
    /// A weight lives in an external file, which this rewrite does not read.
    #[error(
        "initializer '{0}' is stored as external data; re-save the model with its weights inside the file"
    )]
    ExternalData(String),
}

/// Quantizes a whole ONNX file held in memory; returns the new file and the report.
pub fn quantize(
    bytes: &[u8],
    options: &QuantizeOptions,
) -> Result<(Vec<u8>, Report), QuantizeError> {
    let mut model =
        pb::ModelProto::decode(bytes).map_err(|e| QuantizeError::NotOnnx(e.to_string()))?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(1, |o| o.version);
    let graph = model.graph.as_mut().ok_or(QuantizeError::NoGraph)?;
    if let Some(external) = graph
        .initializer
        .iter()
        .find(|t| t.data_location == Some(pb::tensor_proto::DataLocation::External as i32))
    {
        return Err(QuantizeError::ExternalData(external.name.clone()));
    }
    let mut rewrite = Rewrite::new(graph, opset, options);
    rewrite.run();
    let nodes = rewrite.outcomes;
    let out = model.encode_to_vec();
    let report = Report {
        mode: options.mode,
        bytes_before: bytes.len(),
        bytes_after: out.len(),
        nodes,
    };
    Ok((out, report))
}

/// One pass over the main graph.
struct Rewrite<'g> {
    graph: &'g mut pb::GraphProto,
    opset: i64,
    options: &'g QuantizeOptions,
    /// Initializer name → index.
    initializers: HashMap<String, usize>,
    /// Names a subgraph refers to, or the graph exposes: their initializers are never removed.
    pinned: BTreeSet<String>,
    /// Float initializer → the name of its replacement (shared by every rewritten consumer).
    replaced: BTreeMap<String, String>,
    /// Nodes to put before the graph's own (dequantization of constants needs no inputs).
    prelude: Vec<NodeProto>,
    outcomes: Vec<NodeOutcome>,
    /// Every name in the graph, so new ones never collide.
    names: BTreeSet<String>,
}

/// Element count of a tensor's dims.
fn elements(dims: &[i64]) -> usize {
    dims.iter().map(|&d| d.max(0) as usize).product()
}

/// A float initializer's values.
fn float_values(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != pb::tensor_proto::DataType::Float as i32 {
        return None;
    }
    if !t.float_data.is_empty() {
        return Some(t.float_data.clone());
    }
    let n = elements(&t.dims);
    (t.raw_data.len() == n * 4).then(|| {
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    })
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn int_attr(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map_or(default, |a| a.i)
}

fn float_attr(node: &NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).map_or(default, |a| a.f)
}

fn tensor(
    name: String,
    data_type: pb::tensor_proto::DataType,
    dims: Vec<i64>,
    raw: Vec<u8>,
) -> TensorProto {
    TensorProto {
        name,
        data_type: data_type as i32,
        dims,
        raw_data: raw,
        ..TensorProto::default()
    }
}

fn float_tensor(name: String, dims: Vec<i64>, values: &[f32]) -> TensorProto {
    let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    tensor(name, pb::tensor_proto::DataType::Float, dims, raw)
}

fn new_node(
    op: &str,
    inputs: Vec<String>,
    outputs: Vec<String>,
    attributes: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: op.to_owned(),
        input: inputs,
        output: outputs,
        attribute: attributes,
        ..NodeProto::default()
    }
}

fn int_attribute(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: value,
        ..AttributeProto::default()
    }
}

/// Symmetric int8 quantization of a row-major `[rows, cols]` matrix with one scale per column
/// (`per_column`) or per row: returns the int8 values and the scales.
fn quantize_int8(
    values: &[f32],
    rows: usize,
    cols: usize,
    per_column: bool,
) -> (Vec<i8>, Vec<f32>) {
    let channels = if per_column { cols } else { rows };
    let mut max = vec![0f32; channels];
    for (i, v) in values.iter().enumerate() {
        let c = if per_column { i % cols } else { i / cols };
        max[c] = max[c].max(v.abs());
    }
    let scales: Vec<f32> = max
        .iter()
        .map(|&m| {
            if m > 0.0 && m.is_finite() {
                m / 127.0
            } else {
                1.0
            }
        })
        .collect();
    let q = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let c = if per_column { i % cols } else { i / cols };
            (v / scales[c]).round().clamp(-127.0, 127.0) as i8
        })
        .collect();
    (q, scales)
}

fn int8_raw(values: &[i8]) -> Vec<u8> {
    values.iter().map(|v| *v as u8).collect()
}

/// Names every subgraph of `node` refers to.
fn subgraph_names(node: &NodeProto, into: &mut BTreeSet<String>) {
    for a in &node.attribute {
        for g in a.g.iter().chain(&a.graphs) {
            for n in &g.node {
                into.extend(n.input.iter().cloned());
                subgraph_names(n, into);
            }
            into.extend(g.output.iter().map(|o| o.name.clone()));
        }
    }
}

impl<'g> Rewrite<'g> {
    fn new(graph: &'g mut pb::GraphProto, opset: i64, options: &'g QuantizeOptions) -> Rewrite<'g> {
        let initializers = graph
            .initializer
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let mut pinned: BTreeSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
        // An initializer listed as a graph input may be overridden at run time.
        pinned.extend(graph.input.iter().map(|i| i.name.clone()));
        for n in &graph.node {
            subgraph_names(n, &mut pinned);
        }
        let mut names: BTreeSet<String> = pinned.clone();
        names.extend(graph.initializer.iter().map(|t| t.name.clone()));
        for n in &graph.node {
            names.extend(n.input.iter().chain(&n.output).cloned());
        }
        Rewrite {
            graph,
            opset,
            options,
            initializers,
            pinned,
            replaced: BTreeMap::new(),
            prelude: Vec::new(),
            outcomes: Vec::new(),
            names,
        }
    }

    /// Refuses a rewrite whose operator the model's opset predates.
    fn require_opset(&self, since: i64, op: &str) -> Result<(), String> {
        if self.opset < since {
            return Err(format!("opset {} predates {op} ({since})", self.opset));
        }
        Ok(())
    }

    /// Adds `values` (a `[rows, cols]` matrix in `layout`, `per_column` or per row) as symmetric
    /// int8 with its scales, one per channel when `per_axis`, else one for the whole weight.
    /// Returns the names of the int8 tensor and of the scales.
    fn add_int8(
        &mut self,
        weight: &str,
        dims: Vec<i64>,
        values: &[f32],
        (rows, cols, per_column): (usize, usize, bool),
        per_axis: bool,
    ) -> (String, String) {
        let (q, scales) = if per_axis {
            quantize_int8(values, rows, cols, per_column)
        } else {
            quantize_int8(values, 1, values.len(), false)
        };
        let q_name = self.unique(weight, "q");
        let scale_name = self.unique(weight, "scale");
        let scale_dims = if per_axis {
            vec![scales.len() as i64]
        } else {
            vec![]
        };
        self.graph.initializer.push(tensor(
            q_name.clone(),
            pb::tensor_proto::DataType::Int8,
            dims,
            int8_raw(&q),
        ));
        self.graph
            .initializer
            .push(float_tensor(scale_name.clone(), scale_dims, &scales));
        (q_name, scale_name)
    }

    /// `<base>_<suffix>`, numbered only if the graph already has that name.
    fn unique(&mut self, base: &str, suffix: &str) -> String {
        let mut name = format!("{base}_{suffix}");
        let mut n = 1;
        while self.names.contains(&name) {
            n += 1;
            name = format!("{base}_{suffix}{n}");
        }
        self.names.insert(name.clone());
        name
    }

    fn initializer(&self, name: &str) -> Option<&TensorProto> {
        self.initializers
            .get(name)
            .map(|&i| &self.graph.initializer[i])
    }

    fn run(&mut self) {
        let nodes = std::mem::take(&mut self.graph.node);
        let mut rewritten = Vec::with_capacity(nodes.len());
        for (index, node) in nodes.into_iter().enumerate() {
            let label = if node.name.is_empty() {
                format!("{}#{index}", node.op_type)
            } else {
                node.name.clone()
            };
            let op = if node.domain.is_empty() || node.domain == "ai.onnx" {
                node.op_type.clone()
            } else {
                format!("{}:{}", node.domain, node.op_type)
            };
            match self.rewrite_node(&node) {
                Ok(Some((mut nodes, weight, count))) => {
                    self.outcomes.push(NodeOutcome {
                        node: label,
                        op_type: op,
                        weight: Some(weight),
                        elements: count,
                        quantized: true,
                        reason: None,
                    });
                    rewritten.append(&mut nodes);
                }
                Ok(None) => rewritten.push(node),
                Err(skip) => {
                    self.outcomes.push(NodeOutcome {
                        node: label,
                        op_type: op,
                        weight: skip.weight,
                        elements: skip.elements,
                        quantized: false,
                        reason: Some(skip.reason),
                    });
                    rewritten.push(node);
                }
            }
        }
        let mut all = std::mem::take(&mut self.prelude);
        all.append(&mut rewritten);
        self.graph.node = all;
        self.drop_unused_initializers();
    }

    /// Removes the float initializers nothing reads any more.
    fn drop_unused_initializers(&mut self) {
        let read: BTreeSet<&str> = self
            .graph
            .node
            .iter()
            .flat_map(|n| n.input.iter().map(String::as_str))
            .collect();
        let pinned = &self.pinned;
        let replaced = &self.replaced;
        self.graph.initializer.retain(|t| {
            !replaced.contains_key(&t.name)
                || read.contains(t.name.as_str())
                || pinned.contains(&t.name)
        });
    }

    /// The node's replacement (nodes, the weight, its elements); `Ok(None)` for a node without
    /// weights worth reporting; `Err` for one left float, with why.
    fn rewrite_node(
        &mut self,
        node: &NodeProto,
    ) -> Result<Option<(Vec<NodeProto>, String, usize)>, Skip> {
        let in_default_domain = node.domain.is_empty() || node.domain == "ai.onnx";
        let weight_input = match (in_default_domain, node.op_type.as_str(), self.options.mode) {
            (true, "MatMul" | "Gemm", _) => Some(1),
            (true, "Conv", Mode::WeightsInt8 | Mode::Fp16) => Some(1),
            _ => None,
        };
        let Some(at) = weight_input else {
            return self.not_quantizable(node, in_default_domain);
        };
        let Some(weight) = node.input.get(at).cloned() else {
            return Ok(None);
        };
        let skip = |reason: String, elements: usize| Skip {
            weight: Some(weight.clone()),
            elements,
            reason,
        };
        let Some(tensor) = self.initializer(&weight) else {
            return Err(skip(
                "its weight is computed at run time, not a constant initializer".into(),
                0,
            ));
        };
        let count = elements(&tensor.dims);
        let Some(values) = float_values(tensor) else {
            return Ok(None);
        };
        if self.pinned.contains(&weight) {
            return Err(skip(
                "its weight is also a graph input (overridable at run time) or read by a subgraph"
                    .into(),
                count,
            ));
        }
        if count < self.options.min_elements {
            return Err(skip(
                format!(
                    "its weight has {count} elements, under --min-elements {}",
                    self.options.min_elements
                ),
                count,
            ));
        }
        let dims = tensor.dims.clone();
        let result = match self.options.mode {
            Mode::Fp16 => Ok(self.fp16(node, at, &weight, &dims, &values)),
            Mode::WeightsInt8 => self.weights_int8(node, at, &weight, &dims, &values),
            Mode::DynamicInt8 => self.dynamic_int8(node, &weight, &dims, &values),
        };
        result
            .map(|nodes| Some((nodes, weight.clone(), count)))
            .map_err(|reason| skip(reason, count))
    }

    /// A node outside the rewrite: reported when it holds float weights (initializers or
    /// attributes), so the user sees what stays float.
    fn not_quantizable(
        &self,
        node: &NodeProto,
        in_default_domain: bool,
    ) -> Result<Option<(Vec<NodeProto>, String, usize)>, Skip> {
        let from_inputs = node
            .input
            .iter()
            .filter_map(|i| {
                self.initializer(i)
                    .filter(|t| float_values(t).is_some())
                    .map(|t| (i, elements(&t.dims)))
            })
            .max_by_key(|(_, n)| *n);
        let in_attributes: usize = node
            .attribute
            .iter()
            .map(|a| a.floats.len() + a.t.as_ref().map_or(0, |t| elements(&t.dims)))
            .sum();
        let (weight, count) = match from_inputs {
            Some((name, n)) if n >= in_attributes => (Some(name.clone()), n),
            _ => (None, in_attributes),
        };
        if count < self.options.min_elements.max(1) {
            return Ok(None);
        }
        let reason = match (in_default_domain, self.options.mode, node.op_type.as_str()) {
            (_, Mode::Fp16, _) if weight.is_some() => return Ok(None),
            (true, Mode::DynamicInt8, "Conv") => {
                "dynamic-int8 rewrites MatMul and Gemm only; use weights-int8 for Conv".into()
            }
            (false, _, op) => format!(
                "{}:{op} keeps its parameters in attributes, which have no int8 or float16 form in ONNX",
                node.domain
            ),
            (true, _, op) => format!("{op} is not MatMul, Gemm or Conv: its weights stay float"),
        };
        Err(Skip {
            weight,
            elements: count,
            reason,
        })
    }

    /// `weight` → float16 initializer + `Cast` back to float (once per weight).
    fn fp16(
        &mut self,
        node: &NodeProto,
        at: usize,
        weight: &str,
        dims: &[i64],
        values: &[f32],
    ) -> Vec<NodeProto> {
        self.rewire(node, at, weight, |this| {
            let stored = this.unique(weight, "fp16");
            let cast = this.unique(weight, "fp32");
            let raw = values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes())
                .collect();
            this.graph.initializer.push(tensor(
                stored.clone(),
                pb::tensor_proto::DataType::Float16,
                dims.to_vec(),
                raw,
            ));
            this.prelude.push(node_cast(stored, cast.clone()));
            cast
        })
    }

    /// `node` with its input `at` (the float `weight`) replaced by the weight's rewrite, which
    /// `make` adds to the graph the first time (and returns the name of); later consumers of
    /// the same weight share it.
    fn rewire(
        &mut self,
        node: &NodeProto,
        at: usize,
        weight: &str,
        make: impl FnOnce(&mut Self) -> String,
    ) -> Vec<NodeProto> {
        let replacement = match self.replaced.get(weight) {
            Some(name) => name.clone(),
            None => {
                let name = make(self);
                self.replaced.insert(weight.to_owned(), name.clone());
                name
            }
        };
        let mut node = node.clone();
        node.input[at] = replacement;
        vec![node]
    }

    /// `weight` → int8 + scales + `DequantizeLinear` (once per weight), per output channel.
    fn weights_int8(
        &mut self,
        node: &NodeProto,
        at: usize,
        weight: &str,
        dims: &[i64],
        values: &[f32],
    ) -> Result<Vec<NodeProto>, String> {
        self.require_opset(10, "DequantizeLinear")?;
        // The output channel's axis: MatMul's B is [K, N] (columns); Gemm's is [N, K] with
        // transB; Conv's W is [M, C, ...] (first axis).
        let (rows, cols, per_column) = match (node.op_type.as_str(), dims) {
            ("MatMul", [k, n]) => (*k as usize, *n as usize, true),
            ("Gemm", [a, b]) if int_attr(node, "transB", 0) == 1 => {
                (*a as usize, *b as usize, false)
            }
            ("Gemm", [a, b]) => (*a as usize, *b as usize, true),
            ("Conv", [m, rest @ ..]) if !rest.is_empty() => (*m as usize, elements(rest), false),
            (_, dims) => return Err(format!("its weight has shape {dims:?}, not a matrix")),
        };
        Ok(self.rewire(node, at, weight, |this| {
            // Per-axis scales need opset 13; before it, one scale for the whole tensor.
            let per_axis = this.options.scales.per_channel(&node.op_type) && this.opset >= 13;
            let (q_name, scale_name) = this.add_int8(
                weight,
                dims.to_vec(),
                values,
                (rows, cols, per_column),
                per_axis,
            );
            let out = this.unique(weight, "dq");
            // Symmetric: the zero point is 0, DequantizeLinear's default when it is left out.
            let axis = if per_column { 1 } else { 0 };
            let attributes = if per_axis {
                vec![int_attribute("axis", axis)]
            } else {
                vec![]
            };
            this.prelude.push(new_node(
                "DequantizeLinear",
                vec![q_name, scale_name],
                vec![out.clone()],
                attributes,
            ));
            out
        }))
    }

    /// `Y = A·B (+ C)` → `DynamicQuantizeLinear(A)`, `MatMulInteger` with int8 `B`,
    /// `Cast`, `Mul` by the two scales (and `Add` of Gemm's bias).
    fn dynamic_int8(
        &mut self,
        node: &NodeProto,
        weight: &str,
        dims: &[i64],
        values: &[f32],
    ) -> Result<Vec<NodeProto>, String> {
        self.require_opset(11, "DynamicQuantizeLinear")?;
        let (Some(input), Some(output)) =
            (node.input.first().cloned(), node.output.first().cloned())
        else {
            return Err("the node has no input or no output".into());
        };
        let [a, b] = dims else {
            return Err(format!("its weight has shape {dims:?}, not a matrix"));
        };
        let (a, b) = (*a as usize, *b as usize);
        let gemm = node.op_type == "Gemm";
        // MatMulInteger wants B as [K, N]: Gemm's transB and alpha are folded into it.
        let (k, n, matrix): (usize, usize, Vec<f32>) = if gemm {
            if int_attr(node, "transA", 0) != 0 {
                return Err("Gemm with transA = 1 is left float".into());
            }
            let alpha = float_attr(node, "alpha", 1.0);
            if int_attr(node, "transB", 0) == 1 {
                let mut t = vec![0f32; a * b];
                for r in 0..a {
                    for c in 0..b {
                        t[c * a + r] = values[r * b + c] * alpha;
                    }
                }
                (b, a, t)
            } else {
                (a, b, values.iter().map(|v| v * alpha).collect())
            }
        } else {
            (a, b, values.to_vec())
        };
        let bias = if gemm {
            node.input.get(2).filter(|c| !c.is_empty()).cloned()
        } else {
            None
        };
        let beta = float_attr(node, "beta", 1.0);
        let bias = match bias {
            Some(c) if beta == 1.0 => Some(c),
            Some(c) => {
                let Some(values) = self.initializer(&c).and_then(float_values) else {
                    return Err("Gemm's bias is not a constant and beta is not 1".into());
                };
                let dims = self
                    .initializer(&c)
                    .map(|t| t.dims.clone())
                    .unwrap_or_default();
                let scaled: Vec<f32> = values.iter().map(|v| v * beta).collect();
                let name = self.unique(&c, "scaled");
                self.graph
                    .initializer
                    .push(float_tensor(name.clone(), dims, &scaled));
                Some(name)
            }
            None => None,
        };
        let (q_name, scale_name) = self.add_int8(
            weight,
            vec![k as i64, n as i64],
            &matrix,
            (k, n, true),
            self.options.scales.per_channel("MatMul"),
        );
        let zero_name = self.unique(weight, "zero_point");
        self.graph.initializer.push(tensor(
            zero_name.clone(),
            pb::tensor_proto::DataType::Int8,
            vec![],
            vec![0],
        ));
        self.replaced.insert(weight.to_owned(), q_name.clone());
        let [aq, ascale, azero, product, float_product, scale, scaled] = [
            "q",
            "scale",
            "zero_point",
            "int32",
            "float",
            "rescale",
            "scaled",
        ]
        .map(|s| self.unique(&output, s));
        let mut nodes = vec![
            new_node(
                "DynamicQuantizeLinear",
                vec![input],
                vec![aq.clone(), ascale.clone(), azero.clone()],
                vec![],
            ),
            new_node(
                "MatMulInteger",
                vec![aq, q_name, azero, zero_name],
                vec![product.clone()],
                vec![],
            ),
            node_cast(product, float_product.clone()),
            new_node("Mul", vec![ascale, scale_name], vec![scale.clone()], vec![]),
        ];
        match bias {
            Some(bias) => {
                nodes.push(new_node(
                    "Mul",
                    vec![float_product, scale],
                    vec![scaled.clone()],
                    vec![],
                ));
                nodes.push(new_node("Add", vec![scaled, bias], vec![output], vec![]));
            }
            None => nodes.push(new_node(
                "Mul",
                vec![float_product, scale],
                vec![output],
                vec![],
            )),
        }
        Ok(nodes)
    }
}

/// `Cast(input) -> output` to float.
fn node_cast(input: String, output: String) -> NodeProto {
    new_node(
        "Cast",
        vec![input],
        vec![output],
        vec![int_attribute(
            "to",
            pb::tensor_proto::DataType::Float as i32 as i64,
        )],
    )
}

/// A node left float.
struct Skip {
    weight: Option<String>,
    elements: usize,
    reason: String,
}
