//! Signatures: the named functions a model version exposes, like TF Serving's `SignatureDef`.
//!
//! `serving_default` returns the graph's raw outputs (after renames) unless the config redefines
//! it; other signatures add post-processing steps and choose which outputs to return.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{ModelConfig, PostprocessStep};
use crate::graph::{GraphInfo, TensorSpec};
use crate::tensor::DataType;

/// Name of the signature used when a request names none.
pub const DEFAULT_SIGNATURE: &str = "serving_default";

/// One named function of a model version.
#[derive(Debug, Clone, Serialize)]
pub struct Signature {
    /// Signature name.
    pub name: String,
    /// Inputs clients send (public names).
    pub inputs: Vec<TensorSpec>,
    /// Outputs clients receive, in order.
    pub outputs: Vec<TensorSpec>,
    /// Steps run on the raw outputs.
    pub postprocess: Vec<PostprocessStep>,
    /// Outputs that the graph produces as `{class: probability}` maps (ZipMap), by public
    /// name: their class labels, in the column order of the `[N, C]` tensor they are served as.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub class_maps: BTreeMap<String, Vec<String>>,
}

impl Signature {
    /// Input names, comma separated, for error messages.
    pub fn input_names(&self) -> String {
        self.inputs
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Builds every signature of a graph under a config; errors name the offending signature.
pub(crate) fn build_signatures(
    graph: &GraphInfo,
    cfg: &ModelConfig,
) -> Result<Vec<Signature>, String> {
    let inputs: Vec<TensorSpec> = graph
        .inputs
        .iter()
        .map(|s| renamed(s, &cfg.inputs))
        .collect();
    let raw_outputs: Vec<TensorSpec> = graph
        .outputs
        .iter()
        .map(|s| renamed(s, &cfg.outputs))
        .collect();
    if let Some(graph_name) = cfg
        .inputs
        .keys()
        .find(|g| !graph.inputs.iter().any(|s| &&s.name == g))
    {
        return Err(format!(
            "[inputs] renames '{graph_name}', which is not a graph input"
        ));
    }
    if let Some(graph_name) = cfg
        .outputs
        .keys()
        .find(|g| !graph.outputs.iter().any(|s| &&s.name == g))
    {
        return Err(format!(
            "[outputs] renames '{graph_name}', which is not a graph output"
        ));
    }
    if let Some(input) = inputs.iter().find(|i| i.name == cfg.key) {
        return Err(format!(
            "graph input '{}' clashes with the key field name; set `key` to another name",
            input.name
        ));
    }
    let class_maps_of = |outputs: &[TensorSpec]| -> BTreeMap<String, Vec<String>> {
        graph
            .map_outputs
            .iter()
            .map(|(graph_name, labels)| {
                let public = cfg.outputs.get(graph_name).unwrap_or(graph_name);
                (public.clone(), labels.clone())
            })
            .filter(|(public, _)| outputs.iter().any(|o| &o.name == public))
            .collect()
    };
    let mut signatures = Vec::new();
    if !cfg.signatures.contains_key(DEFAULT_SIGNATURE) {
        signatures.push(Signature {
            name: DEFAULT_SIGNATURE.to_owned(),
            inputs: inputs.clone(),
            class_maps: class_maps_of(&raw_outputs),
            outputs: raw_outputs.clone(),
            postprocess: Vec::new(),
        });
    }
    for (name, sig_cfg) in &cfg.signatures {
        let mut available = raw_outputs.clone();
        for step in &sig_cfg.postprocess {
            let from = available
                .iter()
                .find(|s| s.name == step.from())
                .ok_or_else(|| {
                    format!(
                        "signature '{name}': postprocess reads unknown tensor '{}'",
                        step.from()
                    )
                })?;
            let produced = step_outputs(step, from, &cfg.class_labels)
                .map_err(|e| format!("signature '{name}': {e}"))?;
            available.retain(|s| !produced.iter().any(|p| p.name == s.name));
            available.extend(produced);
        }
        let outputs = match &sig_cfg.outputs {
            None => available,
            Some(wanted) => wanted
                .iter()
                .map(|w| {
                    available.iter().find(|s| &s.name == w).cloned().ok_or_else(|| {
                        format!("signature '{name}': output '{w}' is neither a graph output nor produced by postprocess")
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        signatures.push(Signature {
            name: name.clone(),
            inputs: inputs.clone(),
            class_maps: class_maps_of(&outputs),
            outputs,
            postprocess: sig_cfg.postprocess.clone(),
        });
    }
    // `serving_default` first, then the rest by name, so listings are stable.
    signatures.sort_by(|a, b| {
        (a.name != DEFAULT_SIGNATURE, &a.name).cmp(&(b.name != DEFAULT_SIGNATURE, &b.name))
    });
    Ok(signatures)
}

fn renamed(spec: &TensorSpec, renames: &BTreeMap<String, String>) -> TensorSpec {
    let name = renames
        .get(&spec.name)
        .cloned()
        .unwrap_or_else(|| spec.name.clone());
    TensorSpec {
        name,
        ..spec.clone()
    }
}

fn step_outputs(
    step: &PostprocessStep,
    from: &TensorSpec,
    labels: &[String],
) -> Result<Vec<TensorSpec>, String> {
    if !(from.data_type.is_float()) {
        return Err(format!(
            "{} reads '{}' of type {}, but needs float scores",
            op_name(step),
            from.name,
            from.data_type
        ));
    }
    if from.shape.len() > 2 || from.shape.is_empty() {
        return Err(format!(
            "{} reads '{}' of rank {}, but needs [N] or [N, C]",
            op_name(step),
            from.name,
            from.shape.len()
        ));
    }
    let batch = from.shape[0];
    let n_classes = from.shape.get(1).copied().flatten();
    if let (Some(c), false) = (n_classes, labels.is_empty())
        && !matches!(
            step,
            PostprocessStep::Sigmoid { .. }
                | PostprocessStep::Softmax { .. }
                | PostprocessStep::Threshold { .. }
        )
        && c != labels.len()
    {
        return Err(format!(
            "'{}' has {c} classes but class_labels has {} names",
            from.name,
            labels.len()
        ));
    }
    let class_type = if labels.is_empty() {
        DataType::Int64
    } else {
        DataType::Bytes
    };
    let spec = |name: &str, data_type, shape| TensorSpec {
        name: name.to_owned(),
        data_type,
        shape,
    };
    Ok(match step {
        PostprocessStep::Sigmoid { to, .. } | PostprocessStep::Softmax { to, .. } => {
            vec![spec(to, DataType::Fp32, from.shape.clone())]
        }
        PostprocessStep::Argmax { to, .. } => vec![spec(to, class_type, vec![batch])],
        PostprocessStep::Threshold { to, column, .. } => {
            if let (Some(c), Some(col)) = (n_classes, column)
                && *col >= c
            {
                return Err(format!(
                    "threshold column {col} is out of range for '{}' with {c} columns",
                    from.name
                ));
            }
            if !labels.is_empty() && labels.len() != 2 {
                return Err(format!(
                    "threshold is binary but class_labels has {} names",
                    labels.len()
                ));
            }
            vec![spec(to, class_type, vec![batch])]
        }
        PostprocessStep::TopK { to, k, .. } => {
            if let Some(c) = n_classes
                && *k > c
            {
                return Err(format!(
                    "top_k k={k} exceeds the {c} classes of '{}'",
                    from.name
                ));
            }
            vec![
                spec(to, class_type, vec![batch, Some(*k)]),
                spec(
                    &format!("{to}_scores"),
                    DataType::Fp32,
                    vec![batch, Some(*k)],
                ),
            ]
        }
    })
}

pub(crate) fn op_name(step: &PostprocessStep) -> &'static str {
    match step {
        PostprocessStep::Sigmoid { .. } => "sigmoid",
        PostprocessStep::Softmax { .. } => "softmax",
        PostprocessStep::Argmax { .. } => "argmax",
        PostprocessStep::Threshold { .. } => "threshold",
        PostprocessStep::TopK { .. } => "top_k",
    }
}
