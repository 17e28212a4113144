//! Warm-up: requests a freshly loaded version runs before it may answer anyone.
//!
//! The first runs of a graph allocate, pack weights and fill caches; doing them at load keeps
//! that cost off the first client's request, and proves the engine runs the graph at all. A
//! user's recorded requests (`<version>/warmup.jsonl`) are evidence: if they fail, the version
//! must not serve. Generated requests are a guess at what the graph accepts: if they fail, that
//! proves nothing (a detector may refuse an all-zero 32x32 image), so the version still serves.

use serde_json::Value;

use crate::instances::decode_for;
use crate::model::Model;
use crate::signature::Signature;
use crate::tensor::Tensor;

/// Recorded warm-up requests, one JSON instance (or, for a model that does not batch, one
/// request of whole tensors) per line, beside `model.onnx`.
pub const WARMUP_FILE: &str = "warmup.jsonl";

/// Sizes tried in turn for a generated input's dynamic axes: 1 suits tabular and sequence models;
/// convolutional networks often need sizes divisible by their total stride (32 for most
/// detectors); 224 is the classic classifier input.
const GENERATED_SIZES: &[usize] = &[1, 32, 224];

/// How warm-up went, when it did not block the version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Warmup {
    /// Every request ran.
    Passed,
    /// No generated input ran (the reason of the first): not proof the model cannot serve.
    GeneratedFailed(String),
}

/// Runs warm-up on `model`; `Err` means the user's recorded requests failed or cannot be read.
pub(crate) fn warm_up(model: &Model) -> Result<Warmup, String> {
    let Some(path) = model.version_dir().map(|dir| dir.join(WARMUP_FILE)) else {
        return Ok(generated(model));
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => recorded(model, &text).map(|()| Warmup::Passed),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(generated(model)),
        Err(e) => Err(format!("cannot read {WARMUP_FILE}: {e}")),
    }
}

/// Each line of `warmup.jsonl` runs as a request of its own, so lines may differ in shape
/// (images of several sizes) and an error names its line.
fn recorded(model: &Model, text: &str) -> Result<(), String> {
    let signature = model.signature(None).map_err(|e| e.to_string())?;
    for (ix, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |e: &dyn std::fmt::Display| format!("{WARMUP_FILE} line {}: {e}", ix + 1);
        let value: Value = serde_json::from_str(line).map_err(|e| at(&e))?;
        let decoded = decode_for(model, signature, &[value]).map_err(|e| at(&e))?;
        model
            .predict(Some(&signature.name), decoded.inputs)
            .map_err(|e| at(&e))?;
    }
    Ok(())
}

fn generated(model: &Model) -> Warmup {
    for signature in model.signatures() {
        let mut first_error = None;
        let ran = GENERATED_SIZES.iter().any(|&size| {
            let rows = model.is_batchable().then_some(1);
            match model.predict(Some(&signature.name), zero_inputs(signature, rows, size)) {
                Ok(_) => true,
                Err(e) => {
                    first_error.get_or_insert_with(|| {
                        format!("signature '{}' with zero inputs: {e}", signature.name)
                    });
                    false
                }
            }
        });
        if !ran && let Some(error) = first_error {
            return Warmup::GeneratedFailed(error);
        }
    }
    Warmup::Passed
}

/// Zero-filled inputs for `signature`: dynamic axes are `size`, and the leading (batch) axis is
/// `rows` when given.
pub fn zero_inputs(
    signature: &Signature,
    rows: Option<usize>,
    size: usize,
) -> Vec<(String, Tensor)> {
    signature
        .inputs
        .iter()
        .map(|spec| {
            let mut shape: Vec<usize> = spec.shape.iter().map(|d| d.unwrap_or(size)).collect();
            if let (Some(rows), Some(batch)) = (rows, shape.first_mut()) {
                *batch = rows;
            }
            (spec.name.clone(), Tensor::zeros(spec.data_type, shape))
        })
        .collect()
}
