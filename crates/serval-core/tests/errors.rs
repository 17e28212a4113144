//! Every class of bad input or bad repository gives its typed error, with a message naming the
//! problem.

mod common;

use std::path::Path;

use serde_json::{Value, json};
use serval_core::instances::predict_instances;
use serval_core::{Error, Model, ModelRepository, Tensor, TensorData};
use tempfile::TempDir;

const IRIS: [f64; 4] = [5.8, 2.8, 5.1, 2.4];

fn examples() -> ModelRepository {
    ModelRepository::open(common::examples_models(), common::options()).unwrap()
}

fn load(model: &str) -> Model {
    examples().load(model, None).unwrap()
}

/// Predicts `instances` on iris_lr, expecting an `InvalidInput` whose message contains every
/// one of `needles`.
#[track_caller]
fn invalid_instances(instances: &[Value], needles: &[&str]) {
    let err = predict_instances(&load("iris_lr"), None, instances).unwrap_err();
    expect_invalid(&err, needles);
}

/// Predicts raw tensors on iris_lr, expecting an `InvalidInput` naming `needles`.
#[track_caller]
fn invalid_tensors(inputs: Vec<(&str, Tensor)>, needles: &[&str]) {
    let inputs = inputs.into_iter().map(|(n, t)| (n.to_owned(), t)).collect();
    let err = load("iris_lr").predict(None, inputs).unwrap_err();
    expect_invalid(&err, needles);
}

#[track_caller]
fn expect_invalid(err: &Error, needles: &[&str]) {
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    expect_message(err, needles);
}

#[track_caller]
fn expect_message(err: &Error, needles: &[&str]) {
    let message = err.to_string();
    for needle in needles {
        assert!(message.contains(needle), "'{needle}' not in: {message}");
    }
}

fn fp32(shape: Vec<usize>, values: Vec<f32>) -> Tensor {
    Tensor::new(shape, TensorData::Fp32(values)).unwrap()
}

/// A temporary repository with a copy of iris_lr.
fn iris_repo() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::copy_model("iris_lr", dir.path());
    dir
}

fn open(dir: &Path) -> ModelRepository {
    ModelRepository::open(dir, common::options()).unwrap()
}

#[test]
fn unknown_model() {
    let err = examples().load("no_such_model", None).unwrap_err();
    assert!(
        matches!(&err, Error::ModelNotFound(m) if m == "no_such_model"),
        "{err:?}"
    );
    expect_message(&err, &["'no_such_model'", "not in the repository"]);
}

#[test]
fn model_name_escaping_the_repository_is_not_found() {
    // `outside/` is a perfectly loadable model next to the repository: "../outside" must not reach it.
    let dir = tempfile::tempdir().unwrap();
    common::copy_model("iris_lr", &dir.path().join("repo"));
    common::copy_model("iris_lr", dir.path());
    std::fs::rename(dir.path().join("iris_lr"), dir.path().join("outside")).unwrap();
    let repo = open(&dir.path().join("repo"));
    assert!(repo.load("iris_lr", None).is_ok());
    for name in ["../outside", "..", "iris_lr/../../outside", "/etc", ""] {
        let err = repo.load(name, None).unwrap_err();
        assert!(
            matches!(&err, Error::ModelNotFound(m) if m == name),
            "{name}: {err:?}"
        );
    }
}

#[test]
fn unknown_version_lists_available() {
    let err = examples().load("iris_lr", Some(7)).unwrap_err();
    match &err {
        Error::VersionNotFound {
            model,
            version,
            available,
        } => {
            assert_eq!((model.as_str(), version.as_str()), ("iris_lr", "7"));
            assert_eq!(available, "1");
        }
        other => panic!("{other:?}"),
    }
    expect_message(&err, &["'iris_lr'", "no version 7", "available: 1"]);
}

#[test]
fn unknown_signature_lists_available() {
    let model = load("iris_logits");
    let err = predict_instances(&model, Some("clasify"), &[json!({"features": IRIS})]).unwrap_err();
    assert!(matches!(err, Error::SignatureNotFound { .. }), "{err:?}");
    expect_message(&err, &["'clasify'", "serving_default", "classify"]);
    let err = model.predict(Some("clasify"), Vec::new()).unwrap_err();
    assert!(matches!(err, Error::SignatureNotFound { .. }), "{err:?}");
}

#[test]
fn unknown_input_field() {
    invalid_instances(
        &[json!({"features": IRIS, "feature": 1.0})],
        &[
            "instance 0",
            "unknown input 'feature'",
            "expected: features",
        ],
    );
    invalid_tensors(
        vec![("X", fp32(vec![1, 4], vec![1.0; 4]))],
        &["unknown input 'X'", "expected: features"],
    );
}

#[test]
fn missing_input() {
    invalid_instances(
        &[json!({"features": IRIS}), json!({"key": "k"})],
        &["instance 1", "missing input 'features'"],
    );
    invalid_tensors(vec![], &["missing input 'features'"]);
}

#[test]
fn wrong_shape() {
    invalid_instances(
        &[json!({"features": [1.0, 2.0, 3.0]})],
        &["input 'features'", "shape [3]", "expects [4]"],
    );
    invalid_instances(
        &[json!({"features": [IRIS, IRIS]})],
        &["input 'features'", "shape [2, 4]", "expects [4]"],
    );
    invalid_tensors(
        vec![("features", fp32(vec![2, 3], vec![1.0; 6]))],
        &["input 'features'", "shape [2, 3]", "expects [-1, 4]"],
    );
}

#[test]
fn wrong_dtype() {
    invalid_instances(
        &[json!({"features": [5.8, "wide", 5.1, 2.4]})],
        &["input 'features'", "expected FP32", "string \"wide\""],
    );
    invalid_instances(
        &[json!({"features": [5.8, true, 5.1, 2.4]})],
        &["input 'features'", "expected FP32", "boolean true"],
    );
    invalid_tensors(
        vec![(
            "features",
            Tensor::new(vec![1, 4], TensorData::Int64(vec![1; 4])).unwrap(),
        )],
        &["input 'features'", "type INT64", "expects FP32"],
    );
}

#[test]
fn infinities_and_float32_overflow_are_refused_like_nan() {
    for (value, needle) in [
        (json!("Infinity"), "Infinity"),
        (json!("-Infinity"), "-Infinity"),
        (json!(1e39), "beyond the input type's range"),
    ] {
        invalid_instances(
            &[json!({"features": [5.8, value, 5.1, 2.4]})],
            &["input 'features'", needle, "instance 0", "allow_nan"],
        );
    }
    invalid_tensors(
        vec![(
            "features",
            fp32(vec![1, 4], vec![1.0, f32::INFINITY, 1.0, 1.0]),
        )],
        &["Infinity", "allow_nan"],
    );
}

#[test]
fn nan_is_refused_unless_allowed() {
    let nan_row = json!({"features": [5.8, "NaN", 5.1, 2.4]});
    invalid_instances(
        &[json!({"features": IRIS}), nan_row.clone()],
        &["input 'features'", "NaN", "instance 1", "allow_nan"],
    );
    invalid_tensors(
        vec![("features", fp32(vec![1, 4], vec![1.0, f32::NAN, 1.0, 1.0]))],
        &["NaN", "allow_nan"],
    );
    // With allow_nan the same instance runs.
    let dir = iris_repo();
    common::set_config(dir.path(), "iris_lr", "allow_nan", true);
    let model = open(dir.path()).load("iris_lr", None).unwrap();
    let predictions = predict_instances(&model, None, &[nan_row]).unwrap();
    assert_eq!(predictions.len(), 1);
}

#[test]
fn empty_instance_list() {
    invalid_instances(&[], &["empty input"]);
    invalid_tensors(
        vec![("features", fp32(vec![0, 4], vec![]))],
        &["empty input"],
    );
}

#[test]
fn corrupt_onnx_file_is_a_load_error_naming_model_version_and_file() {
    let dir = iris_repo();
    let file = dir.path().join("iris_lr/1/model.onnx");
    std::fs::write(&file, b"\x08\xff\xff this is not protobuf \x00\x01\x02").unwrap();
    let err = open(dir.path()).load("iris_lr", None).unwrap_err();
    match &err {
        Error::Load {
            model,
            version,
            path,
            ..
        } => {
            assert_eq!(model.as_deref(), Some("iris_lr"));
            assert_eq!(*version, Some(1));
            assert_eq!(path, &file);
        }
        other => panic!("{other:?}"),
    }
    expect_message(
        &err,
        &[
            "'iris_lr'",
            "version 1",
            &file.display().to_string(),
            "not a valid ONNX",
        ],
    );
}

#[test]
fn missing_model_file() {
    let dir = iris_repo();
    std::fs::remove_file(dir.path().join("iris_lr/1/model.onnx")).unwrap();
    let err = open(dir.path()).load("iris_lr", None).unwrap_err();
    assert!(matches!(err, Error::Load { .. }), "{err:?}");
    expect_message(&err, &["'iris_lr'", "version 1", "missing model.onnx"]);
}

#[test]
fn config_typo_names_the_field_and_file() {
    let dir = iris_repo();
    std::fs::write(
        dir.path().join("iris_lr/config.toml"),
        "bakend = \"tract\"\n",
    )
    .unwrap();
    let err = open(dir.path()).load("iris_lr", None).unwrap_err();
    assert!(matches!(err, Error::Load { .. }), "{err:?}");
    expect_message(
        &err,
        &["'iris_lr'", "config.toml", "unknown field `bakend`"],
    );
}

#[test]
fn bad_config_value_names_the_field() {
    let dir = iris_repo();
    common::set_config(dir.path(), "iris_lr", "backend", "gpu");
    let err = open(dir.path()).load("iris_lr", None).unwrap_err();
    assert!(matches!(err, Error::Load { .. }), "{err:?}");
    expect_message(&err, &["config.toml", "gpu", "backend"]);
}

/// Minimal protobuf writer, enough to hand-build small ONNX files.
mod pb {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A varint field.
    pub fn int(field: u64, v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(field << 3, &mut out);
        varint(v, &mut out);
        out
    }

    /// A length-delimited field (string, bytes or sub-message).
    pub fn bytes(field: u64, v: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint((field << 3) | 2, &mut out);
        varint(v.len() as u64, &mut out);
        out.extend_from_slice(v);
        out
    }

    /// A sub-message made of fields.
    pub fn msg(field: u64, parts: &[Vec<u8>]) -> Vec<u8> {
        bytes(field, &parts.concat())
    }

    const FLOAT: u64 = 1;
    const INT64: u64 = 7;

    /// `TypeProto.tensor_type` of `elem` with shape `[N, dims...]`.
    fn tensor_type(elem: u64, dims: &[u64]) -> Vec<u8> {
        let mut shape = vec![msg(1, &[bytes(2, b"N")])];
        shape.extend(dims.iter().map(|&d| msg(1, &[int(1, d)])));
        msg(1, &[int(1, elem), msg(2, &shape)])
    }

    /// `ValueInfoProto` (as graph field `field`) of a float tensor `[N, dims...]`.
    pub fn float_tensor(field: u64, name: &str, dims: &[u64]) -> Vec<u8> {
        msg(
            field,
            &[
                bytes(1, name.as_bytes()),
                msg(2, &[tensor_type(FLOAT, dims)]),
            ],
        )
    }

    /// `ValueInfoProto` of a float tensor of exactly `dims` (no batch axis; `[]` is a scalar).
    pub fn fixed_float_tensor(field: u64, name: &str, dims: &[u64]) -> Vec<u8> {
        let shape: Vec<Vec<u8>> = dims.iter().map(|&d| msg(1, &[int(1, d)])).collect();
        let tensor = msg(1, &[int(1, FLOAT), msg(2, &shape)]);
        msg(field, &[bytes(1, name.as_bytes()), msg(2, &[tensor])])
    }

    /// `ValueInfoProto` of a sequence of map<int64, float>, as ZipMap outputs.
    pub fn seq_of_maps(field: u64, name: &str) -> Vec<u8> {
        let map = msg(5, &[int(1, INT64), msg(2, &[tensor_type(FLOAT, &[])])]);
        msg(
            field,
            &[
                bytes(1, name.as_bytes()),
                msg(2, &[msg(4, &[msg(1, &[map])])]),
            ],
        )
    }

    /// `NodeProto`.
    pub fn node(op: &str, domain: &str, input: &str, output: &str) -> Vec<u8> {
        msg(
            1,
            &[
                bytes(1, input.as_bytes()),
                bytes(2, output.as_bytes()),
                bytes(3, b"n0"),
                bytes(4, op.as_bytes()),
                bytes(7, domain.as_bytes()),
            ],
        )
    }

    /// The graph parts of `y = op(x)` over `[N, 2]` floats.
    pub fn unary(op: &str, domain: &str) -> Vec<Vec<u8>> {
        vec![
            node(op, domain, "x", "y"),
            float_tensor(11, "x", &[2]),
            float_tensor(12, "y", &[2]),
        ]
    }

    /// `ModelProto` with one graph, default opset 13.
    pub fn model(graph: &[Vec<u8>]) -> Vec<u8> {
        model_with_opset(graph, 13)
    }

    /// `ModelProto` with one graph, declaring default-domain `opset`.
    pub fn model_with_opset(graph: &[Vec<u8>], opset: u64) -> Vec<u8> {
        let mut parts = vec![int(1, 8)];
        parts.push(msg(8, &[bytes(1, b""), int(2, opset)]));
        parts.push(msg(8, &[bytes(1, b"ai.onnx.ml"), int(2, 3)]));
        let mut graph = graph.to_vec();
        graph.push(bytes(2, b"g"));
        parts.push(msg(7, &graph));
        parts.concat()
    }
}

/// A repository whose model `m` version 1 is `onnx`, with `config` as its config.toml.
fn repo_with(onnx: &[u8], config: &str) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("m/1")).unwrap();
    std::fs::write(dir.path().join("m/1/model.onnx"), onnx).unwrap();
    std::fs::write(dir.path().join("m/config.toml"), config).unwrap();
    dir
}

/// The load error of a repository holding only `onnx` (as model `m`) with `config`.
#[track_caller]
fn refused(onnx: &[u8], config: &str) -> Error {
    let dir = repo_with(onnx, config);
    let err = open(dir.path()).load("m", None).unwrap_err();
    assert!(matches!(err, Error::Load { .. }), "{err:?}");
    err
}

#[test]
fn hand_built_onnx_loads() {
    // Guards the two refusal tests below: the same writer builds a graph that works.
    let onnx = pb::model(&pb::unary("Relu", ""));
    let dir = repo_with(&onnx, "backend = \"tract\"\n");
    let model = open(dir.path()).load("m", None).unwrap();
    let out = model
        .predict(None, vec![("x".into(), fp32(vec![1, 2], vec![-1.0, 2.0]))])
        .unwrap();
    assert_eq!(out[0].1, fp32(vec![1, 2], vec![0.0, 2.0]));
}

#[test]
fn sequence_output_not_made_by_zipmap_is_refused_naming_it() {
    let onnx = pb::model(&[
        pb::node("SequenceConstruct", "", "x", "probabilities"),
        pb::float_tensor(11, "x", &[2]),
        pb::seq_of_maps(12, "probabilities"),
    ]);
    let err = refused(&onnx, "");
    expect_message(
        &err,
        &[
            "'m'",
            "output 'probabilities'",
            "neither a tensor nor a ZipMap",
        ],
    );
}

#[test]
fn unsupported_operator_on_tract_is_refused() {
    let onnx = pb::model(&pb::unary("Scaler", "ai.onnx.ml"));
    let err = refused(&onnx, "backend = \"tract\"\n");
    expect_message(
        &err,
        &[
            "backend = \"tract\" refused",
            "does not implement operator Scaler",
        ],
    );
}

#[test]
fn a_model_without_a_batch_axis_takes_whole_tensors() {
    // A state shaped [2, 3] (no leading batch axis): one request is one instance, as sent.
    let onnx = pb::model(&[
        pb::node("Relu", "", "state", "next"),
        pb::fixed_float_tensor(11, "state", &[2, 3]),
        pb::fixed_float_tensor(12, "next", &[2, 3]),
    ]);
    let dir = repo_with(&onnx, "");
    let model = open(dir.path()).load("m", None).unwrap();
    assert!(!model.is_batchable());
    let request = json!({"key": "k", "state": [[-1.0, 2.0, -3.0], [4.0, -5.0, 6.0]]});
    let predictions = predict_instances(&model, None, &[request]).unwrap();
    assert_eq!(predictions.keys, vec![Some("k".to_owned())]);
    assert_eq!(
        predictions.outputs[0].1,
        fp32(vec![2, 3], vec![0.0, 2.0, 0.0, 4.0, 0.0, 6.0])
    );
    // Two requests in one call cannot be stacked: the error says what to send instead.
    let one = json!({"state": [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]});
    let err = predict_instances(&model, None, &[one.clone(), one]).unwrap_err();
    expect_invalid(&err, &["does not batch", "whole tensors"]);
}

#[test]
fn a_scalar_input_is_fed_as_a_scalar() {
    let onnx = pb::model(&[
        pb::node("Relu", "", "rate", "out"),
        pb::fixed_float_tensor(11, "rate", &[]),
        pb::fixed_float_tensor(12, "out", &[]),
    ]);
    let dir = repo_with(&onnx, "");
    let model = open(dir.path()).load("m", None).unwrap();
    assert!(!model.is_batchable());
    let predictions = predict_instances(&model, None, &[json!({"rate": 16000.0})]).unwrap();
    assert_eq!(predictions.outputs[0].1, fp32(vec![], vec![16000.0]));
    let err = predict_instances(&model, None, &[json!({"rate": [16000.0]})]).unwrap_err();
    expect_invalid(&err, &["input 'rate' has shape [1]", "expects []"]);
}

#[test]
fn max_batch_size_zero_turns_batching_off() {
    let onnx = pb::model(&pb::unary("Relu", ""));
    let dir = repo_with(&onnx, "[batching]\nmax_batch_size = 0\n");
    let model = open(dir.path()).load("m", None).unwrap();
    assert!(!model.is_batchable());
    // The whole [N, 2] tensor is one request.
    let predictions =
        predict_instances(&model, None, &[json!({"x": [[-1.0, 1.0], [2.0, -2.0]]})]).unwrap();
    assert_eq!(
        predictions.outputs[0].1,
        fp32(vec![2, 2], vec![0.0, 1.0, 2.0, 0.0])
    );
}

#[test]
fn auto_falls_back_to_tract_when_onnx_runtime_cannot_load_the_graph() {
    if !common::ort_available() {
        eprintln!("SERVAL_SKIP_ORT=1: skipping (the fallback is from ONNX Runtime)");
        return;
    }
    // ONNX Runtime 1.32 refuses an opset newer than it knows; tract runs Relu regardless.
    let onnx = pb::model_with_opset(&pb::unary("Relu", ""), 99);
    let dir = repo_with(&onnx, "");
    let model = open(dir.path()).load("m", None).unwrap();
    let choice = model.backend_choice();
    assert_eq!(choice.kind, serval_core::backend::BackendKind::Tract);
    assert!(
        choice.reason.contains("fallback") && choice.reason.contains("ort failed to load"),
        "{}",
        choice.reason
    );
    let out = model
        .predict(None, vec![("x".into(), fp32(vec![1, 2], vec![-1.0, 2.0]))])
        .unwrap();
    assert_eq!(out[0].1, fp32(vec![1, 2], vec![0.0, 2.0]));
}

#[test]
fn a_graph_no_engine_loads_is_refused_naming_each_engine() {
    if !common::ort_available() {
        eprintln!("SERVAL_SKIP_ORT=1: skipping (needs both engines)");
        return;
    }
    let onnx = pb::model(&pb::unary("NoSuchOperator", ""));
    let err = refused(&onnx, "");
    expect_message(
        &err,
        &[
            "ort failed to load",
            "tract failed to load",
            "NoSuchOperator",
        ],
    );
}
