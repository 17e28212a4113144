//! Known answers from Evidently 0.7.23 for every drift method: `tests/fixtures/drift.json`,
//! written by `tests/fixtures/generate_drift.py` (its header has the command that regenerates it)
//! from Evidently's own stattests on scikit-learn's bundled data sets and seeded numpy draws.
//!
//! Each case checks the automatic choice, then every method the fixture evaluated: the value
//! within the method's tolerance, the threshold and the drift flag exactly. Where Evidently
//! returns NaN the fixture has `null` and the value Serval reports instead (`serval_value`).

use std::path::Path;

use serde_json::Value;
use serval_eval::drift::{self, DriftError, Method, Sample};

/// Relative-or-absolute tolerance per method, with the largest relative difference measured on
/// this fixture (statrs 0.18) in brackets.
///
/// - psi, kl_div, jensenshannon, hellinger, wasserstein: 1e-9 [5e-14]. The same closed forms over
///   the same bins (edges computed in numpy's order of operations); only the order of summation
///   differs from numpy's pairwise sums.
/// - ks: 1e-9 [2e-13]. scipy's exact algorithms are ported step by step; its asymptotic
///   `kstwo.sf` differs only in Smirnov's tail, summed in f64 logarithms instead of
///   double-double.
/// - chisquare: 1e-9 [4e-15]: statrs' regularised incomplete gamma against cephes' `chdtrc`.
/// - z: 1e-8 [1e-10 on p ≈ 0.4]: statrs 0.18's erf, whose interval constants are a little short
///   of full precision, against cephes' `ndtr`; tiny p-values, 2 (1 − Φ(|z|)) in both, differ by
///   about 1e-16 absolute.
fn tolerance(method: Method) -> f64 {
    match method {
        Method::Z => 1e-8,
        Method::Psi
        | Method::KlDiv
        | Method::Jensenshannon
        | Method::Hellinger
        | Method::Wasserstein
        | Method::Ks
        | Method::Chisquare => 1e-9,
    }
}

fn close(got: f64, expected: f64, tolerance: f64) -> bool {
    let difference = (got - expected).abs();
    difference <= tolerance || difference <= tolerance * got.abs().max(expected.abs())
}

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/drift.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn numbers(case: &str, values: &Value) -> Vec<f64> {
    let values = values
        .as_array()
        .unwrap_or_else(|| panic!("{case}: values are not a list"));
    values
        .iter()
        .map(|v| {
            v.as_f64()
                .unwrap_or_else(|| panic!("{case}: {v} is not a number"))
        })
        .collect()
}

fn texts<'a>(case: &str, values: &'a Value) -> Vec<&'a str> {
    let values = values
        .as_array()
        .unwrap_or_else(|| panic!("{case}: values are not a list"));
    values
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("{case}: {v} is not text"))
        })
        .collect()
}

/// One case: the automatic choice, each evaluated method, and the refusals Evidently makes too.
fn check_case(case: &Value, reference: Sample, current: Sample) {
    let name = case["name"].as_str().unwrap_or("unnamed case");
    assert_eq!(
        Some(drift::auto_method(reference, current).name()),
        case["auto_method"].as_str(),
        "{name}: automatic choice"
    );
    let results = case["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: no results"));
    for expected in results {
        let method_name = expected["method"].as_str().unwrap_or("");
        let method = Method::parse(method_name)
            .unwrap_or_else(|| panic!("{name}: unknown method {method_name:?}"));
        let given = expected["threshold_given"].as_f64();
        let got = drift::test(method, reference, current, given)
            .unwrap_or_else(|error| panic!("{name} {method_name}: {error}"));
        let want = expected["value"]
            .as_f64()
            .or_else(|| expected["serval_value"].as_f64())
            .unwrap_or_else(|| panic!("{name} {method_name}: no value in the fixture"));
        assert!(
            close(got.value, want, tolerance(method)),
            "{name} {method_name}: Evidently {want}, Serval {}",
            got.value
        );
        assert_eq!(
            Some(got.threshold),
            expected["threshold"].as_f64(),
            "{name} {method_name}: threshold"
        );
        assert_eq!(
            Some(got.drifted),
            expected["drifted"].as_bool(),
            "{name} {method_name}: drifted (value {})",
            got.value
        );
    }
    if matches!(reference, Sample::Categories(_)) {
        for method in [Method::Ks, Method::Wasserstein] {
            assert_eq!(
                drift::test(method, reference, current, None),
                Err(DriftError::NeedsNumbers {
                    method: method.name()
                }),
                "{name}: {} on categories",
                method.name()
            );
        }
    }
}

#[test]
fn drift_matches_evidently() {
    let fixture = fixture();
    assert_eq!(fixture["versions"]["evidently"], "0.7.23");
    let cases = fixture["cases"].as_array().expect("the fixture's cases");
    assert!(cases.len() >= 20, "only {} cases", cases.len());
    for case in cases {
        let name = case["name"].as_str().unwrap_or("unnamed case");
        match case["kind"].as_str() {
            Some("numerical") => {
                let reference = numbers(name, &case["reference"]);
                let current = numbers(name, &case["current"]);
                check_case(case, Sample::Numbers(&reference), Sample::Numbers(&current));
            }
            Some("categorical") => {
                let reference = texts(name, &case["reference"]);
                let current = texts(name, &case["current"]);
                check_case(
                    case,
                    Sample::Categories(&reference),
                    Sample::Categories(&current),
                );
            }
            other => panic!("{name}: unknown kind {other:?}"),
        }
    }
}

#[test]
fn methods_serialize_as_evidently_names() {
    for method in Method::ALL {
        let json = serde_json::to_value(method).expect("a method serializes");
        assert_eq!(json, method.name());
        assert_eq!(serde_json::from_value::<Method>(json).ok(), Some(method));
    }
}
