//! The real `serval` binary against the example repository and goldens.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{Map, Value};

const BIN: &str = env!("CARGO_BIN_EXE_serval");
const MODELS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/models");
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/data");
const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/golden");

const MODELS: [&str; 11] = [
    "breast_cancer_gbt",
    "breast_cancer_lr",
    "breast_cancer_mlp",
    "breast_cancer_mlp_large",
    "diabetes_linear",
    "digits_cascade",
    "digits_phase1",
    "digits_phase2",
    "iris_forest",
    "iris_logits",
    "iris_lr",
];
/// Models `backend = "auto"` puts on ONNX Runtime.
const TREE_MODELS: [&str; 2] = ["breast_cancer_gbt", "iris_forest"];

const REL_TOL: f64 = 1e-5;
const ABS_TOL: f64 = 1e-6;

/// Runs `serval args...`, feeding `stdin` when given.
fn serval(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("SERVAL_LOG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Runs serval expecting success; returns stdout.
#[track_caller]
fn serval_ok(args: &[&str], stdin: Option<&str>) -> String {
    let out = serval(args, stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "serval {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs serval expecting failure; returns stderr, which must contain every needle.
#[track_caller]
fn serval_err(args: &[&str], stdin: Option<&str>, needles: &[&str]) -> String {
    let out = serval(args, stdin);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        !out.status.success(),
        "serval {args:?} should fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "serval {args:?}: '{needle}' not in stderr: {stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// Whether ONNX Runtime cases run: a missing runtime fails them unless `SERVAL_SKIP_ORT=1`.
fn ort_available() -> bool {
    match serval_core::backend::ort_status(None) {
        Ok(()) => true,
        Err(_) if std::env::var_os("SERVAL_SKIP_ORT").is_some_and(|v| v == "1") => false,
        Err(why) => panic!("ONNX Runtime is unavailable ({why}); set SERVAL_SKIP_ORT=1 to skip"),
    }
}

fn golden(model: &str) -> Map<String, Value> {
    let text = std::fs::read_to_string(format!("{GOLDEN}/{model}.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn data(file: &str) -> String {
    format!("{DATA}/{file}")
}

/// Parses JSON Lines output.
#[track_caller]
fn parse_lines(stdout: &str) -> Vec<Map<String, Value>> {
    stdout
        .lines()
        .map(|line| match serde_json::from_str(line) {
            Ok(Value::Object(row)) => row,
            other => panic!("output line is not a JSON object: {line} ({other:?})"),
        })
        .collect()
}

/// Each output line carries the golden row's key (same order) and exactly the `expected`
/// outputs (`{output: [value per row]}`), floats within tolerance.
#[track_caller]
fn compare_to_golden(
    place: &str,
    stdout: &str,
    golden: &Map<String, Value>,
    expected: &Map<String, Value>,
) {
    let rows = parse_lines(stdout);
    let golden_rows = golden["rows"].as_array().unwrap();
    assert_eq!(rows.len(), golden_rows.len(), "{place}: number of lines");
    for (r, (row, golden_row)) in rows.iter().zip(golden_rows).enumerate() {
        assert_eq!(
            row.get("key"),
            Some(&golden_row["key"]),
            "{place}: line {r} key"
        );
        let mut names: Vec<&String> = row.keys().filter(|k| *k != "key").collect();
        let mut want: Vec<&String> = expected.keys().collect();
        names.sort();
        want.sort();
        assert_eq!(names, want, "{place}: line {r} outputs");
        for (name, values) in expected {
            same(
                &format!("{place}: line {r} '{name}'"),
                &row[name],
                &values[r],
            );
        }
    }
}

/// JSON equality, numbers within tolerance (integers exactly).
#[track_caller]
fn same(place: &str, got: &Value, want: &Value) {
    match (got, want) {
        (Value::Array(g), Value::Array(w)) => {
            assert_eq!(g.len(), w.len(), "{place}: {got} vs {want}");
            for (g, w) in g.iter().zip(w) {
                same(place, g, w);
            }
        }
        (Value::Number(g), Value::Number(w)) if w.is_i64() => {
            assert_eq!(g.as_i64(), w.as_i64(), "{place}: {got} vs {want}");
        }
        (Value::Number(g), Value::Number(w)) => {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            assert!(
                (g - w).abs() <= ABS_TOL + REL_TOL * w.abs(),
                "{place}: got {g}, golden {w}"
            );
        }
        _ => assert_eq!(got, want, "{place}"),
    }
}

/// `serval predict` of `examples/data/<model>.jsonl` matches the golden raw outputs.
#[track_caller]
fn check_predict(model: &str, extra: &[&str]) {
    if TREE_MODELS.contains(&model) && !ort_available() {
        eprintln!("SERVAL_SKIP_ORT=1: skipping {model}");
        return;
    }
    let input = data(&format!("{model}.jsonl"));
    let mut args = vec!["predict", MODELS_DIR, model, "-i", &input];
    args.extend(extra);
    let stdout = serval_ok(&args, None);
    let golden = golden(model);
    let outputs = golden["outputs"].as_object().unwrap();
    compare_to_golden(model, &stdout, &golden, outputs);
}

#[test]
fn predict_breast_cancer_gbt() {
    check_predict("breast_cancer_gbt", &[]);
}
#[test]
fn predict_breast_cancer_lr() {
    check_predict("breast_cancer_lr", &[]);
}
#[test]
fn predict_breast_cancer_mlp() {
    check_predict("breast_cancer_mlp", &[]);
}
#[test]
fn predict_breast_cancer_mlp_large() {
    check_predict("breast_cancer_mlp_large", &[]);
}
#[test]
fn predict_diabetes_linear() {
    check_predict("diabetes_linear", &[]);
}
#[test]
fn predict_iris_forest() {
    check_predict("iris_forest", &[]);
}
#[test]
fn predict_iris_logits() {
    check_predict("iris_logits", &[]);
}
#[test]
fn predict_iris_lr() {
    check_predict("iris_lr", &[]);
}

#[test]
fn predict_in_small_batches_matches_goldens() {
    // 25 rows in chunks of 7: four engine calls, output still in input order.
    check_predict("breast_cancer_mlp", &["--batch-size", "7"]);
}

#[test]
fn predict_csv_input() {
    let stdout = serval_ok(
        &[
            "predict",
            MODELS_DIR,
            "breast_cancer_lr",
            "-i",
            &data("breast_cancer.csv"),
        ],
        None,
    );
    let golden = golden("breast_cancer_lr");
    compare_to_golden(
        "csv",
        &stdout,
        &golden,
        golden["outputs"].as_object().unwrap(),
    );
}

#[test]
fn predict_csv_input_through_a_signature() {
    let stdout = serval_ok(
        &[
            "predict",
            MODELS_DIR,
            "breast_cancer_lr",
            "--signature",
            "screening",
            "-i",
            &data("breast_cancer.csv"),
        ],
        None,
    );
    let golden = golden("breast_cancer_lr");
    let expected = golden["signatures"]["screening"].as_object().unwrap();
    compare_to_golden("csv screening", &stdout, &golden, expected);
}

#[test]
fn predict_from_stdin() {
    let input = std::fs::read_to_string(data("iris_lr.jsonl")).unwrap();
    let stdout = serval_ok(&["predict", MODELS_DIR, "iris_lr", "-i", "-"], Some(&input));
    let golden = golden("iris_lr");
    compare_to_golden(
        "stdin",
        &stdout,
        &golden,
        golden["outputs"].as_object().unwrap(),
    );
}

#[test]
fn predict_signature_classify_gives_labels() {
    let stdout = serval_ok(
        &[
            "predict",
            MODELS_DIR,
            "iris_logits",
            "--signature",
            "classify",
            "-i",
            &data("iris_logits.jsonl"),
        ],
        None,
    );
    let golden = golden("iris_logits");
    let expected = golden["signatures"]["classify"].as_object().unwrap();
    compare_to_golden("classify", &stdout, &golden, expected);
    let first = &parse_lines(&stdout)[0];
    assert!(first["label"].is_string(), "{first:?}");
}

#[test]
fn predict_writes_output_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let stdout = serval_ok(
        &[
            "predict",
            MODELS_DIR,
            "iris_lr",
            "-i",
            &data("iris_lr.jsonl"),
            "-o",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert!(stdout.is_empty(), "{stdout}");
    let golden = golden("iris_lr");
    let written = std::fs::read_to_string(&out).unwrap();
    compare_to_golden(
        "-o",
        &written,
        &golden,
        golden["outputs"].as_object().unwrap(),
    );
}

#[test]
fn inspect_json_lists_every_model() {
    if !ort_available() {
        eprintln!("SERVAL_SKIP_ORT=1: skipping (the whole repository needs ONNX Runtime)");
        return;
    }
    let stdout = serval_ok(&["inspect", MODELS_DIR, "--json"], None);
    let described: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    let names: Vec<&str> = described
        .iter()
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    assert_eq!(names, MODELS);
    for m in &described {
        let name = m["model"].as_str().unwrap();
        // ONNX Runtime is present (the test returns early otherwise), so it runs everything;
        // the cascade runs on its phases' engines.
        if name == "digits_cascade" {
            assert_eq!(m["backend"], "cascade", "{name}");
            assert_eq!(m["cascade"]["phase1"]["model"], "digits_phase1", "{m}");
            assert_eq!(m["cascade"]["phase2"]["model"], "digits_phase2", "{m}");
            assert_eq!(m["cascade"]["policy"]["phase2"], "digits_phase2", "{m}");
        } else {
            assert_eq!(m["backend"], "ort", "{name}");
            assert!(
                m["backend_reason"].as_str().unwrap().starts_with("auto"),
                "{m}"
            );
        }
        assert_eq!(m["version"], 1, "{name}");
        let signatures = m["signatures"].as_array().unwrap();
        assert_eq!(signatures[0]["name"], "serving_default", "{name}");
        let features = signatures[0]["inputs"].as_array().unwrap();
        assert_eq!(features.len(), 1, "{name}");
        assert_eq!(features[0]["name"], "features", "{name}");
        assert_eq!(features[0]["datatype"], "FP32", "{name}");
        let width = match name {
            n if n.starts_with("breast_cancer") => 30,
            n if n.starts_with("iris") => 4,
            n if n.starts_with("digits") => 64,
            _ => 10,
        };
        assert_eq!(
            features[0]["shape"],
            serde_json::json!([-1, width]),
            "{name}"
        );
        let signature_names: Vec<&str> = signatures
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        let expected_signatures: &[&str] = match name {
            "iris_logits" => &["serving_default", "classify"],
            "breast_cancer_lr" => &["serving_default", "screening"],
            _ => &["serving_default"],
        };
        assert_eq!(signature_names, expected_signatures, "{name}");
    }
    let logits = described
        .iter()
        .find(|m| m["model"] == "iris_logits")
        .unwrap();
    assert_eq!(
        logits["class_labels"],
        serde_json::json!(["setosa", "versicolor", "virginica"])
    );
    let classify = &logits["signatures"][1];
    assert_eq!(classify["outputs"][0]["name"], "label");
    assert_eq!(classify["outputs"][0]["datatype"], "BYTES");
    assert_eq!(classify["outputs"][0]["shape"], serde_json::json!([-1]));
}

#[test]
fn inspect_text_shows_signature_defs() {
    if !ort_available() {
        eprintln!("SERVAL_SKIP_ORT=1: skipping (the whole repository needs ONNX Runtime)");
        return;
    }
    let stdout = serval_ok(&["inspect", MODELS_DIR], None);
    for needle in [
        "model 'iris_logits' version 1",
        "signature_def['serving_default']",
        "signature_def['classify']",
        "signature_def['screening']",
        "features: DT_FLOAT [-1, 30]",
        "backend: ort (auto: ONNX Runtime is present and preferred)",
        "batching: instances stack on axis 0",
    ] {
        assert!(stdout.contains(needle), "'{needle}' not in: {stdout}");
    }
    let one = serval_ok(&["inspect", MODELS_DIR, "iris_lr"], None);
    assert!(one.starts_with("model 'iris_lr' version 1"), "{one}");
    assert_eq!(one.matches("model '").count(), 1, "{one}");
}

/// Writes `text` to a temporary file named `name`; returns the dir (to keep it) and the path.
fn temp_input(name: &str, text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap().to_owned();
    (dir, path)
}

const IRIS_LINE: &str = r#"{"key": "ok", "features": [5.8, 2.8, 5.1, 2.4]}"#;

/// `serval predict iris_lr` on a JSONL file of `lines`, expecting failure naming `needles`.
#[track_caller]
fn predict_fails(lines: &[&str], needles: &[&str]) {
    let (_dir, input) = temp_input("input.jsonl", &(lines.join("\n") + "\n"));
    serval_err(
        &["predict", MODELS_DIR, "iris_lr", "-i", &input],
        None,
        needles,
    );
}

#[test]
fn error_unknown_model() {
    serval_err(
        &[
            "predict",
            MODELS_DIR,
            "iris_lm",
            "-i",
            &data("iris_lr.jsonl"),
        ],
        None,
        &["model 'iris_lm' is not in the repository"],
    );
    serval_err(&["inspect", MODELS_DIR, "iris_lm"], None, &["'iris_lm'"]);
}

#[test]
fn error_unknown_version() {
    serval_err(
        &[
            "predict",
            MODELS_DIR,
            "iris_lr",
            "--version",
            "3",
            "-i",
            &data("iris_lr.jsonl"),
        ],
        None,
        &["no version 3", "available: 1"],
    );
    serval_err(
        &[
            "predict",
            MODELS_DIR,
            "iris_lr",
            "--version",
            "latest",
            "-i",
            &data("iris_lr.jsonl"),
        ],
        None,
        &["--version", "latest"],
    );
}

#[test]
fn error_unknown_signature() {
    serval_err(
        &[
            "predict",
            MODELS_DIR,
            "iris_lr",
            "--signature",
            "classify",
            "-i",
            &data("iris_lr.jsonl"),
        ],
        None,
        &["no signature 'classify'", "serving_default"],
    );
}

#[test]
fn error_wrong_field_name() {
    predict_fails(
        &[
            IRIS_LINE,
            r#"{"key": "b", "feature": [5.8, 2.8, 5.1, 2.4]}"#,
        ],
        &["line 2", "unknown input 'feature'", "expected: features"],
    );
}

#[test]
fn error_wrong_shape() {
    predict_fails(
        &[IRIS_LINE, IRIS_LINE, r#"{"features": [5.8, 2.8, 5.1]}"#],
        &["line 3", "input 'features'", "shape [3]", "expects [4]"],
    );
}

#[test]
fn error_wrong_dtype() {
    predict_fails(
        &[r#"{"features": [5.8, "2.8", 5.1, 2.4]}"#],
        &["line 1", "expected FP32", "string \"2.8\""],
    );
    predict_fails(
        &[IRIS_LINE, r#"{"features": [5.8, false, 5.1, 2.4]}"#],
        &["line 2", "expected FP32", "boolean false"],
    );
}

#[test]
fn error_nan() {
    predict_fails(
        &[IRIS_LINE, r#"{"features": [5.8, "NaN", 5.1, 2.4]}"#],
        &["line 2", "NaN", "allow_nan"],
    );
}

#[test]
fn error_empty_input_file() {
    let (_dir, input) = temp_input("empty.jsonl", "");
    serval_err(
        &["predict", MODELS_DIR, "iris_lr", "-i", &input],
        None,
        &["empty input"],
    );
    serval_err(
        &["predict", MODELS_DIR, "iris_lr", "-i", "-"],
        Some("\n\n"),
        &["empty input"],
    );
}

#[test]
fn error_malformed_json_line() {
    predict_fails(
        &[
            IRIS_LINE,
            IRIS_LINE,
            r#"{"features": [5.8, 2.8, 5.1, 2.4"#,
            IRIS_LINE,
        ],
        &["line 3", "invalid JSON"],
    );
}

#[test]
fn error_malformed_csv_line() {
    let csv = std::fs::read_to_string(data("breast_cancer.csv")).unwrap();
    let mut lines: Vec<&str> = csv.lines().collect();
    // Line 5 (header is line 1) loses most of its columns.
    lines[4] = "breast_cancer_lr-3,13.4,20.5";
    let (_dir, input) = temp_input("bad.csv", &(lines.join("\n") + "\n"));
    serval_err(
        &["predict", MODELS_DIR, "breast_cancer_lr", "-i", &input],
        None,
        &["line 5", "malformed CSV"],
    );
    // A non-numeric cell on line 7.
    let mut cells: Vec<&str> = lines[6].split(',').collect();
    cells[3] = "n/a";
    let line7 = cells.join(",");
    lines[4] = csv.lines().nth(4).unwrap();
    lines[6] = &line7;
    let (_dir, input) = temp_input("bad.csv", &(lines.join("\n") + "\n"));
    serval_err(
        &["predict", MODELS_DIR, "breast_cancer_lr", "-i", &input],
        None,
        &["line 7", "expected FP32", "\"n/a\""],
    );
}

#[test]
fn error_csv_header_not_matching_model() {
    let (_dir, input) = temp_input("bad.csv", "key,a,b\nk,1,2\n");
    serval_err(
        &["predict", MODELS_DIR, "breast_cancer_lr", "-i", &input],
        None,
        &["CSV header", "features"],
    );
}

#[test]
fn error_missing_input_file() {
    let missing = Path::new(DATA).join("no_such_file.jsonl");
    serval_err(
        &[
            "predict",
            MODELS_DIR,
            "iris_lr",
            "-i",
            missing.to_str().unwrap(),
        ],
        None,
        &["cannot open input", "no_such_file.jsonl"],
    );
}

#[test]
fn help_for_every_subcommand() {
    for args in [
        &["--help"][..],
        &["predict", "--help"],
        &["inspect", "--help"],
        &["help", "predict"],
    ] {
        let stdout = serval_ok(args, None);
        assert!(stdout.contains("Usage: serval"), "{args:?}: {stdout}");
    }
    assert!(serval_ok(&["predict", "--help"], None).contains("--signature"));
    assert!(serval_ok(&["inspect", "--help"], None).contains("--json"));
    serval_err(&["frobnicate"], None, &["frobnicate"]);
}

#[test]
fn inspect_reports_every_model_and_fails_at_the_end_when_one_cannot_load() {
    let repo = tempfile::tempdir().unwrap();
    let iris = repo.path().join("iris_lr/1");
    std::fs::create_dir_all(&iris).unwrap();
    std::fs::copy(
        Path::new(MODELS_DIR).join("iris_lr/1/model.onnx"),
        iris.join("model.onnx"),
    )
    .unwrap();
    // Sorted before and after the broken one: neither may be hidden by it.
    std::fs::create_dir_all(repo.path().join("a_broken/1")).unwrap();
    std::fs::write(repo.path().join("a_broken/1/model.onnx"), b"not onnx").unwrap();
    std::fs::create_dir_all(repo.path().join("z_iris")).unwrap();
    std::fs::create_dir_all(repo.path().join("z_iris/1")).unwrap();
    std::fs::copy(
        iris.join("model.onnx"),
        repo.path().join("z_iris/1/model.onnx"),
    )
    .unwrap();
    let root = repo.path().to_str().unwrap();
    let out = serval(&["inspect", root], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("model 'iris_lr' version 1"), "{stdout}");
    assert!(stdout.contains("model 'z_iris' version 1"), "{stdout}");
    assert!(stdout.contains("model 'a_broken': cannot load"), "{stdout}");
    assert!(
        stderr.contains("1 of 3 models cannot load: 'a_broken'"),
        "{stderr}"
    );
    let out = serval(&["inspect", root, "--json"], None);
    assert!(!out.status.success());
    let described: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(described.len(), 3, "{described:?}");
    assert!(described[0]["error"].as_str().unwrap().contains("a_broken"));
}
