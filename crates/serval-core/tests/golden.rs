//! Every example model on every engine that can run it, against onnxruntime's goldens.
//!
//! Each case copies the model into a temporary repository with `backend` forced in its
//! `config.toml` (other settings kept), predicts the 25 golden rows as keyed instances and
//! compares every raw output and every signature output. Engines that must refuse a model are
//! asserted as refusals. ONNX Runtime cases fail when the runtime is missing, unless
//! `SERVAL_SKIP_ORT=1`.

mod common;

use serde_json::{Value, json};
use serval_core::backend::BackendKind;
use serval_core::instances::{KeyedPredictions, predict_instances};
use serval_core::{Error, Model, ModelRepository, Tensor, TensorData};

const REL_TOL: f64 = 1e-5;
const ABS_TOL: f64 = 1e-6;

enum Expect {
    /// Loads, and every output matches the golden.
    Golden,
    /// Loading fails with an error whose message contains this.
    Refused(&'static str),
}

#[track_caller]
fn check(model: &str, backend: &str, expect: Expect) {
    if backend == "ort" && !common::ort_available() {
        eprintln!("SERVAL_SKIP_ORT=1: skipping {model} on ort");
        return;
    }
    let (_dir, repo) = common::forced_repo(model, backend);
    let loaded = repo.load(model, None);
    let model = match (expect, loaded) {
        (Expect::Refused(needle), Err(err)) => {
            let message = err.to_string();
            assert!(
                matches!(err, Error::Load { .. }),
                "{model} on {backend}: expected a load error, got {err:?}"
            );
            assert!(
                message.contains(needle) && message.contains(model),
                "{model} on {backend}: refusal should mention '{needle}' and the model: {message}"
            );
            return;
        }
        (Expect::Refused(needle), Ok(_)) => {
            panic!("{model} on {backend} loaded, but should be refused ({needle})")
        }
        (Expect::Golden, Err(err)) => panic!("{model} on {backend} failed to load: {err}"),
        (Expect::Golden, Ok(m)) => m,
    };
    assert_eq!(model.backend_choice().kind.as_str(), backend);
    let golden = common::golden(model.name());
    let place = format!("{} on {backend}", model.name());

    let predictions = predict_instances(&model, None, &golden.rows)
        .unwrap_or_else(|e| panic!("{place}: predict failed: {e}"));
    let keys: Vec<Option<String>> = golden
        .rows
        .iter()
        .map(|r| r["key"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(predictions.keys, keys, "{place}: keys");
    assert!(
        predictions.warnings.is_empty(),
        "{place}: {:?}",
        predictions.warnings
    );
    compare_all(&place, &predictions, &golden.outputs);

    for (signature, expected) in &golden.signatures {
        let Value::Object(expected) = expected else {
            panic!("{place}: golden signature '{signature}' is not an object");
        };
        let predictions = predict_instances(&model, Some(signature), &golden.rows)
            .unwrap_or_else(|e| panic!("{place}: signature '{signature}' failed: {e}"));
        compare_all(
            &format!("{place}, signature '{signature}'"),
            &predictions,
            expected,
        );
    }

    // Dynamic batch: the same loaded plan gives the same answers whatever the batch size.
    // Engines pick kernels by batch size, so floats may differ in the last bit (both engines
    // do here); labels must not differ at all.
    let whole = predict_batched(&model, &golden.rows, 25);
    for size in [1, 7] {
        let batched = predict_batched(&model, &golden.rows, size);
        let place = format!("{place}, batch size {size} vs 25");
        let names = |o: &[(String, Tensor)]| o.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&batched), names(&whole), "{place}");
        for ((name, got), (_, want)) in batched.iter().zip(&whole) {
            assert_same(&format!("{place}, output '{name}'"), got, want);
        }
    }
}

/// Same type and shape; equal values, floats within the golden tolerance.
#[track_caller]
fn assert_same(place: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.shape(), want.shape(), "{place}: shape");
    match (got.data(), want.data()) {
        (TensorData::Fp32(got), TensorData::Fp32(want)) => {
            for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
                let (g, w) = (f64::from(g), f64::from(w));
                assert!(
                    (g - w).abs() <= ABS_TOL + REL_TOL * w.abs(),
                    "{place}: element {i}: {g} vs {w}"
                );
            }
        }
        (got, want) => assert_eq!(got, want, "{place}"),
    }
}

/// Predicts `rows` in consecutive batches of `size`, concatenating each output along axis 0.
fn predict_batched(model: &Model, rows: &[Value], size: usize) -> Vec<(String, Tensor)> {
    let batches: Vec<KeyedPredictions> = rows
        .chunks(size)
        .map(|chunk| predict_instances(model, None, chunk).unwrap())
        .collect();
    batches[0]
        .outputs
        .iter()
        .enumerate()
        .map(|(ix, (name, _))| {
            let parts: Vec<Tensor> = batches.iter().map(|b| b.outputs[ix].1.clone()).collect();
            (name.clone(), Tensor::concat_rows(&parts).unwrap())
        })
        .collect()
}

/// Every golden output, and no other, was returned, and each matches.
#[track_caller]
fn compare_all(
    place: &str,
    predictions: &KeyedPredictions,
    expected: &serde_json::Map<String, Value>,
) {
    let mut got: Vec<&str> = predictions
        .outputs
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    let mut want: Vec<&str> = expected.keys().map(String::as_str).collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "{place}: output names");
    for (name, tensor) in &predictions.outputs {
        compare(
            &format!("{place}, output '{name}'"),
            tensor,
            &expected[name],
        );
    }
}

/// `tensor` holds one row per element of `expected` (nested JSON lists), value for value.
#[track_caller]
fn compare(place: &str, tensor: &Tensor, expected: &Value) {
    let Value::Array(rows) = expected else {
        panic!("{place}: golden is not a list of rows");
    };
    assert_eq!(tensor.rows(), rows.len(), "{place}: rows");
    let mut leaves = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        let mut shape = Vec::new();
        let before = leaves.len();
        flatten(row, &mut shape, 0, &mut leaves);
        assert_eq!(
            &tensor.shape()[1..],
            shape.as_slice(),
            "{place}: row {r} shape"
        );
        assert_eq!(
            leaves.len() - before,
            tensor.row_len(),
            "{place}: row {r} length"
        );
    }
    let row_len = tensor.row_len().max(1);
    let at = |i: usize| format!("{place}, row {}, element {}", i / row_len, i % row_len);
    match tensor.data() {
        TensorData::Fp32(values) => {
            for (i, (&got, want)) in values.iter().zip(&leaves).enumerate() {
                let want = want.as_f64().unwrap_or_else(|| panic!("{}: {want}", at(i)));
                let got = f64::from(got);
                assert!(
                    (got - want).abs() <= ABS_TOL + REL_TOL * want.abs(),
                    "{}: got {got}, golden {want}",
                    at(i)
                );
            }
        }
        TensorData::Int64(values) => {
            for (i, (&got, want)) in values.iter().zip(&leaves).enumerate() {
                assert_eq!(Some(got), want.as_i64(), "{}", at(i));
            }
        }
        TensorData::Bytes(values) => {
            for (i, (got, want)) in values.iter().zip(&leaves).enumerate() {
                assert_eq!(Some(got.as_str()), want.as_str(), "{}", at(i));
            }
        }
        other => panic!("{place}: unexpected output type {}", other.data_type()),
    }
}

/// Appends the scalars of nested lists to `leaves`, recording the shape below the row.
fn flatten<'v>(
    value: &'v Value,
    shape: &mut Vec<usize>,
    depth: usize,
    leaves: &mut Vec<&'v Value>,
) {
    match value {
        Value::Array(items) => {
            if shape.len() == depth {
                shape.push(items.len());
            }
            for item in items {
                flatten(item, shape, depth + 1, leaves);
            }
        }
        scalar => leaves.push(scalar),
    }
}

// breast_cancer_gbt: binary TreeEnsembleClassifier, which tract gets wrong.
#[test]
fn breast_cancer_gbt_tract_is_refused() {
    check(
        "breast_cancer_gbt",
        "tract",
        Expect::Refused("binary TreeEnsembleClassifier"),
    );
}
#[test]
fn breast_cancer_gbt_ort() {
    check("breast_cancer_gbt", "ort", Expect::Golden);
}

#[test]
fn breast_cancer_lr_tract() {
    check("breast_cancer_lr", "tract", Expect::Golden);
}
#[test]
fn breast_cancer_lr_ort() {
    check("breast_cancer_lr", "ort", Expect::Golden);
}

#[test]
fn breast_cancer_mlp_tract() {
    check("breast_cancer_mlp", "tract", Expect::Golden);
}
#[test]
fn breast_cancer_mlp_ort() {
    check("breast_cancer_mlp", "ort", Expect::Golden);
}

#[test]
fn breast_cancer_mlp_large_tract() {
    check("breast_cancer_mlp_large", "tract", Expect::Golden);
}
#[test]
fn breast_cancer_mlp_large_ort() {
    check("breast_cancer_mlp_large", "ort", Expect::Golden);
}

#[test]
fn diabetes_linear_tract() {
    check("diabetes_linear", "tract", Expect::Golden);
}
#[test]
fn diabetes_linear_ort() {
    check("diabetes_linear", "ort", Expect::Golden);
}

// iris_forest: multi-class trees are correct on tract, just slow.
#[test]
fn digits_phase1_tract() {
    check("digits_phase1", "tract", Expect::Golden);
}
#[test]
fn digits_phase1_ort() {
    check("digits_phase1", "ort", Expect::Golden);
}

#[test]
fn digits_phase2_tract() {
    check("digits_phase2", "tract", Expect::Golden);
}
#[test]
fn digits_phase2_ort() {
    check("digits_phase2", "ort", Expect::Golden);
}

#[test]
fn iris_forest_tract() {
    check("iris_forest", "tract", Expect::Golden);
}
#[test]
fn iris_forest_ort() {
    check("iris_forest", "ort", Expect::Golden);
}

#[test]
fn iris_logits_tract() {
    check("iris_logits", "tract", Expect::Golden);
}
#[test]
fn iris_logits_ort() {
    check("iris_logits", "ort", Expect::Golden);
}

#[test]
fn iris_lr_tract() {
    check("iris_lr", "tract", Expect::Golden);
}
#[test]
fn iris_lr_ort() {
    check("iris_lr", "ort", Expect::Golden);
}

#[test]
fn auto_backend_picks_ort_when_present_and_tract_only_where_it_is_safe_otherwise() {
    let ort = common::ort_available();
    let repo = ModelRepository::open(common::examples_models(), common::options()).unwrap();
    for model in common::MODELS {
        let is_tree = matches!(model, "iris_forest" | "breast_cancer_gbt");
        let loaded = repo.load(model, None);
        match (is_tree, ort) {
            (_, true) => {
                let choice = loaded.unwrap().backend_choice().clone();
                assert_eq!(choice.kind, BackendKind::Ort, "{model}");
                assert!(
                    choice.reason.contains("preferred"),
                    "{model}: {}",
                    choice.reason
                );
            }
            (false, false) => {
                assert_eq!(loaded.unwrap().backend_choice().kind, BackendKind::Tract)
            }
            // Without ONNX Runtime, slow trees fall back to tract and wrong ones are refused.
            (true, false) if model == "iris_forest" => {
                assert_eq!(loaded.unwrap().backend_choice().kind, BackendKind::Tract)
            }
            (true, false) => {
                let err = loaded.unwrap_err().to_string();
                assert!(err.contains("needs ONNX Runtime"), "{err}");
            }
        }
    }
}

fn iris_lr() -> Model {
    let repo = ModelRepository::open(common::examples_models(), common::options()).unwrap();
    repo.load("iris_lr", None).unwrap()
}

#[test]
fn keys_round_trip_missing_keys_are_none_and_duplicates_warn() {
    let model = iris_lr();
    let features = json!([5.8, 2.8, 5.1, 2.4]);
    let instances = [
        json!({"key": "a", "features": features}),
        json!({"features": features}),
        json!({"key": null, "features": features}),
        json!({"key": "a", "features": features}),
        json!({"features": features, "key": "b"}),
    ];
    let predictions = predict_instances(&model, None, &instances).unwrap();
    let keys: Vec<Option<&str>> = predictions.keys.iter().map(Option::as_deref).collect();
    assert_eq!(keys, [Some("a"), None, None, Some("a"), Some("b")]);
    assert_eq!(predictions.outputs[0].1.rows(), 5);
    assert_eq!(predictions.warnings.len(), 1, "{:?}", predictions.warnings);
    assert!(
        predictions.warnings[0].contains("'a'"),
        "{:?}",
        predictions.warnings
    );
    // The key comes back first; an instance without a key gets none.
    let first = serde_json::to_string(&predictions.row(0)).unwrap();
    assert!(first.starts_with(r#"{"key":"a","#), "{first}");
    let keyless = serde_json::to_value(predictions.row(1)).unwrap();
    assert!(keyless.get("key").is_none(), "{keyless}");
    assert_eq!(keyless["label"], 2);
    let last = serde_json::to_value(predictions.row(4)).unwrap();
    assert_eq!(last["key"], "b");
}

#[test]
fn non_string_key_is_invalid_input_naming_key() {
    let model = iris_lr();
    let instances = [
        json!({"key": "a", "features": [5.8, 2.8, 5.1, 2.4]}),
        json!({"key": 7, "features": [5.8, 2.8, 5.1, 2.4]}),
    ];
    let err = predict_instances(&model, None, &instances).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert!(
        message.contains("'key'") && message.contains("instance 1"),
        "{message}"
    );
}
