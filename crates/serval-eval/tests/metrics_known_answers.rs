//! Metrics against scikit-learn's own numbers (`tests/fixtures/generate_metrics.py` computes
//! them on its bundled datasets and writes `metrics.json`).

use serde_json::Value;
use serval_eval::metrics::{
    ClassTable, ClassificationAccumulator, ConfidenceEstimate, RegressionAccumulator,
};

/// Closed forms agree with scikit-learn to ~1e-12; sums in another order differ in the last bits.
const TOLERANCE: f64 = 1e-9;

fn fixture() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/metrics.json"
    ))
    .expect("metrics.json is committed");
    serde_json::from_str(&text).expect("metrics.json is JSON")
}

/// Every key of `expected` (but `task`, and the reasons of `undefined`) is in `actual` with the
/// same value, numbers within the tolerance, and `actual` has no key `expected` lacks.
fn assert_matches(case: &str, path: &str, actual: &Value, expected: &Value) {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => {
            let keys = |m: &serde_json::Map<String, Value>| -> Vec<String> {
                m.keys().filter(|k| *k != "task").cloned().collect()
            };
            assert_eq!(keys(a), keys(e), "{case}: keys of {path}");
            for (key, value) in e.iter().filter(|(k, _)| *k != "task") {
                if path.is_empty() && key == "undefined" {
                    continue;
                }
                assert_matches(case, &format!("{path}.{key}"), &a[key], value);
            }
        }
        (Value::Array(a), Value::Array(e)) => {
            assert_eq!(a.len(), e.len(), "{case}: length of {path}");
            for (i, (x, y)) in a.iter().zip(e).enumerate() {
                assert_matches(case, &format!("{path}[{i}]"), x, y);
            }
        }
        (Value::Number(a), Value::Number(e)) => {
            let (a, e) = (
                a.as_f64().unwrap_or(f64::NAN),
                e.as_f64().unwrap_or(f64::NAN),
            );
            assert!(
                (a - e).abs() <= TOLERANCE * e.abs().max(1.0),
                "{case}: {path} is {a}, scikit-learn says {e}"
            );
        }
        (a, e) => assert_eq!(a, e, "{case}: {path}"),
    }
}

#[test]
fn metrics_equal_scikit_learns() {
    let fixture = fixture();
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(cases.len() >= 20, "the fixture lost its cases");
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?");
        let labels = case["labels"].as_array().expect("labels");
        let predicted = case["predicted"].as_array().expect("predicted");
        let actual = match case["task"].as_str() {
            Some("classification") => {
                let names: Vec<String> = case["classes"]
                    .as_array()
                    .expect("classes")
                    .iter()
                    .map(|c| c.as_str().unwrap_or_default().to_owned())
                    .collect();
                let scores: Option<Vec<Vec<f64>>> = case["scores"].as_array().map(|rows| {
                    rows.iter()
                        .map(|r| {
                            r.as_array()
                                .expect("a score row")
                                .iter()
                                .map(|v| v.as_f64().unwrap_or(f64::NAN))
                                .collect()
                        })
                        .collect()
                });
                let width = scores.as_ref().and_then(|s| s.first()).map(Vec::len);
                let classes = ClassTable::new(&names, width);
                let mut acc = ClassificationAccumulator::default();
                let mut estimate = ConfidenceEstimate::default();
                for (i, (t, p)) in labels.iter().zip(predicted).enumerate() {
                    let index = |v: &Value| v.as_u64().expect("a class index") as usize;
                    let row_scores = scores.as_ref().map(|s| s[i].as_slice());
                    acc.push(index(t), index(p), row_scores);
                    if let Some(row_scores) = row_scores {
                        estimate.push(index(p), row_scores);
                    }
                }
                if !case["estimated"].is_null() {
                    let estimated = serde_json::to_value(estimate.finish()).expect("serializes");
                    assert_matches(name, "estimated", &estimated, &case["estimated"]);
                }
                serde_json::to_value(acc.finish(&classes)).expect("serializes")
            }
            Some("regression") => {
                let mut acc = RegressionAccumulator::default();
                for (t, p) in labels.iter().zip(predicted) {
                    acc.push(
                        t.as_f64().expect("a label"),
                        p.as_f64().expect("a prediction"),
                    );
                }
                serde_json::to_value(acc.finish()).expect("serializes")
            }
            other => panic!("{name}: unknown task {other:?}"),
        };
        assert_matches(name, "", &actual, &case["expected"]);
        let undefined = |v: &Value| -> Vec<String> {
            v["undefined"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        };
        assert_eq!(
            undefined(&actual),
            undefined(&case["expected"]),
            "{name}: undefined metrics"
        );
    }
}
