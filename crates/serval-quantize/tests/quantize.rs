//! Quantized example models against their float originals, run by serval-core.

use serde_json::Value;
use serval_core::instances::predict_instances;
use serval_core::{Model, ModelConfig, TensorData};
use serval_quantize::{Mode, QuantizeOptions, quantize};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

fn model_bytes(name: &str) -> Vec<u8> {
    std::fs::read(format!("{EXAMPLES}/models/{name}/1/model.onnx")).unwrap()
}

fn golden_rows(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{EXAMPLES}/golden/{name}.json")).unwrap();
    let golden: Value = serde_json::from_str(&text).unwrap();
    golden["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| serde_json::json!({"features": r["features"]}))
        .collect()
}

fn probabilities(model: &Model, rows: &[Value]) -> Vec<f32> {
    let predicted = predict_instances(model, None, rows).unwrap();
    let (_, tensor) = predicted
        .outputs
        .iter()
        .find(|(name, _)| name == "probabilities")
        .unwrap();
    match tensor.data() {
        TensorData::Fp32(v) => v.clone(),
        other => panic!("probabilities are {other:?}"),
    }
}

fn tract(name: &str, bytes: &[u8]) -> Model {
    let config = ModelConfig {
        backend: serval_core::config::BackendPreference::Tract,
        ..ModelConfig::default()
    };
    Model::from_bytes(name, 1, bytes, config).unwrap()
}

/// Each mode shrinks the file (the more, the more of it is weights), keeps every weighted
/// MatMul quantized, and stays within a small probability difference of the float model on
/// the golden rows.
#[test]
fn every_mode_runs_on_tract_close_to_the_float_model() {
    // (model, least int8 ratio): a small model's graph and biases weigh more.
    for (name, int8_ratio) in [
        ("breast_cancer_mlp", 2.5),
        ("digits_phase1", 3.3),
        ("breast_cancer_mlp_large", 3.8),
    ] {
        let float_bytes = model_bytes(name);
        let rows = golden_rows(name);
        let want = probabilities(&tract(name, &float_bytes), &rows);
        for (mode, min_ratio, tolerance) in [
            (Mode::WeightsInt8, int8_ratio, 0.05),
            (Mode::DynamicInt8, int8_ratio * 0.9, 0.1),
            (Mode::Fp16, 1.6, 0.005),
        ] {
            let options = QuantizeOptions {
                mode,
                ..QuantizeOptions::default()
            };
            let (bytes, report) = quantize(&float_bytes, &options).unwrap();
            assert!(
                report.ratio() >= min_ratio,
                "{name} {mode:?}: {} → {} bytes",
                report.bytes_before,
                report.bytes_after
            );
            assert!(
                report
                    .nodes
                    .iter()
                    .filter(|n| n.op_type == "MatMul")
                    .all(|n| n.quantized),
                "{name} {mode:?}: {:?}",
                report.nodes
            );
            let got = probabilities(&tract(name, &bytes), &rows);
            let worst = want
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst <= tolerance, "{name} {mode:?}: |Δp| up to {worst}");
        }
    }
}

#[test]
fn a_tree_ensemble_stays_float_and_says_why() {
    let (bytes, report) = quantize(
        &model_bytes("breast_cancer_gbt"),
        &QuantizeOptions::default(),
    )
    .unwrap();
    assert_eq!(report.quantized(), 0);
    let tree = report
        .nodes
        .iter()
        .find(|n| n.op_type == "ai.onnx.ml:TreeEnsembleClassifier")
        .unwrap();
    assert!(
        tree.reason.as_deref().unwrap().contains("attributes"),
        "{tree:?}"
    );
    // Unchanged apart from the encoding.
    let before =
        serval_core::graph::GraphInfo::from_bytes(&model_bytes("breast_cancer_gbt")).unwrap();
    let after = serval_core::graph::GraphInfo::from_bytes(&bytes).unwrap();
    assert_eq!(before.operators, after.operators);
    assert_eq!(before.outputs, after.outputs);
}

#[test]
fn not_onnx_is_a_typed_error() {
    let err = quantize(b"definitely not a protobuf", &QuantizeOptions::default()).unwrap_err();
    assert!(
        matches!(err, serval_quantize::QuantizeError::NotOnnx(_)),
        "{err}"
    );
}
