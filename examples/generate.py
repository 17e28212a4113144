#!/usr/bin/env python3
"""Generate Serval's example model repository, golden outputs and CLI input data.

Usage (from anywhere):

    python3 -m pip install -r examples/generate-requirements.txt
    python3 examples/generate.py

Everything is deterministic (fixed random_state, fixed opsets, single-threaded
onnxruntime), so re-running the script produces byte-identical files.
Only datasets bundled with scikit-learn are used; nothing is downloaded.
"""

import json
import os
import shutil
import warnings

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS_DIR = os.path.join(HERE, "models")
GOLDEN_DIR = os.path.join(HERE, "golden")
DATA_DIR = os.path.join(HERE, "data")

TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
INPUT_NAME = "features"
BATCH_DIM = "batch"
N_GOLDEN = 25
SEED = 0

IRIS_LOGITS_CONFIG = """\
# Raw logits from the graph; the `classify` signature adds softmax and argmax to a class name.
class_labels = ["setosa", "versicolor", "virginica"]

[signatures.classify]
outputs = ["label", "probabilities"]
postprocess = [
  { op = "softmax", from = "logits", to = "probabilities" },
  { op = "argmax", from = "probabilities", to = "label" },
]
"""

BREAST_CANCER_LR_CONFIG = """\
# A decision threshold tuned for recall on the malignant class, as a named signature.
class_labels = ["malignant", "benign"]

[signatures.screening]
outputs = ["diagnosis", "probabilities"]
postprocess = [
  { op = "threshold", from = "probabilities", to = "diagnosis", column = 1, threshold = 0.8 },
]
"""

IRIS_CLASSES = ["setosa", "versicolor", "virginica"]
BREAST_CANCER_CLASSES = ["malignant", "benign"]
SCREENING_THRESHOLD = 0.8


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def split(loader):
    """70/30 split with random_state=0; features as float32."""
    X, y = loader(return_X_y=True)
    X = X.astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.3, random_state=SEED
    )
    return X_train, X_test, y_train, y_test


# --------------------------------------------------------------------------
# ONNX helpers
# --------------------------------------------------------------------------


def normalize(model, name):
    """Strip version-dependent / cosmetic metadata so the file is stable."""
    model.graph.name = name
    # skl2onnx may emit duplicate opset imports (e.g. ('', 17) twice); keep one per domain.
    seen = {}
    for op in model.opset_import:
        seen[op.domain] = max(seen.get(op.domain, 0), op.version)
    del model.opset_import[:]
    for domain in sorted(seen):
        model.opset_import.append(helper.make_opsetid(domain, seen[domain]))
    model.doc_string = ""
    model.model_version = 1
    del model.metadata_props[:]
    # The leading dimension is left unnamed, as skl2onnx exports it: the server must make it
    # a symbolic batch dimension itself (the hand-built iris_logits names it instead).
    onnx.checker.check_model(model)
    return model


def to_onnx(estimator, n_features, name):
    options = None
    if hasattr(estimator, "predict_proba"):
        options = {id(estimator): {"zipmap": False}}
    model = convert_sklearn(
        estimator,
        name=name,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        target_opset=TARGET_OPSET,
        options=options,
        black_op={"Scaler"},
    )
    return normalize(model, name)


def write_model(name, model, config=None):
    model_dir = os.path.join(MODELS_DIR, name)
    version_dir = os.path.join(model_dir, "1")
    os.makedirs(version_dir, exist_ok=True)
    path = os.path.join(version_dir, "model.onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString(deterministic=True))
    if config is not None:
        with open(os.path.join(model_dir, "config.toml"), "w", newline="\n") as f:
            f.write(config)
    return path


def run_ort(path, X):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inputs = sess.get_inputs()
    assert len(inputs) == 1, inputs
    names = [o.name for o in sess.get_outputs()]
    results = sess.run(names, {inputs[0].name: X})
    return inputs[0].name, dict(zip(names, results))


# --------------------------------------------------------------------------
# JSON helpers (exact float32 round trip)
# --------------------------------------------------------------------------


def f32(v):
    return float(np.float32(v))


def to_py(arr):
    """numpy array row -> plain python values (float32 exact floats, ints, str)."""
    a = np.asarray(arr)
    if a.dtype.kind == "f":
        assert a.dtype == np.float32, a.dtype
        return np.vectorize(f32, otypes=[object])(a).tolist() if a.ndim else f32(a)
    if a.dtype.kind in "iu":
        return a.astype(np.int64).tolist()
    if a.dtype.kind in "UO":
        return [str(x) for x in a.tolist()] if a.ndim else str(a)
    raise TypeError(a.dtype)


def dump_json(obj):
    return json.dumps(obj, indent=1, ensure_ascii=True, allow_nan=False) + "\n"


def softmax_f32(logits):
    x = np.asarray(logits, dtype=np.float32)
    m = np.max(x, axis=1, keepdims=True)
    e = np.exp(x - m, dtype=np.float32)
    return (e / np.sum(e, axis=1, keepdims=True, dtype=np.float32)).astype(np.float32)


def check_against_sklearn(name, est, X, outputs):
    """Sanity check: the ONNX graph agrees with the fitted scikit-learn model."""
    if hasattr(est, "predict_proba"):
        np.testing.assert_array_equal(outputs["label"], est.predict(X), err_msg=name)
        np.testing.assert_allclose(
            outputs["probabilities"], est.predict_proba(X), atol=1e-4, err_msg=name
        )
    else:
        np.testing.assert_allclose(
            outputs["variable"][:, 0], est.predict(X), rtol=1e-4, atol=1e-3, err_msg=name
        )


def write_golden_and_data(name, path, X_test, signatures_fn=None, est=None):
    X = np.ascontiguousarray(X_test[:N_GOLDEN], dtype=np.float32)
    input_name, outputs = run_ort(path, X)
    if est is not None:
        check_against_sklearn(name, est, X, outputs)
    keys = [f"{name}-{i}" for i in range(len(X))]
    rows = [{"key": k, input_name: to_py(x)} for k, x in zip(keys, X)]
    golden = {
        "model": name,
        "version": 1,
        "input": input_name,
        "rows": rows,
        "outputs": {k: to_py(v) for k, v in outputs.items()},
    }
    if signatures_fn is not None:
        golden["signatures"] = signatures_fn(outputs)
    with open(os.path.join(GOLDEN_DIR, f"{name}.json"), "w", newline="\n") as f:
        f.write(dump_json(golden))
    with open(os.path.join(DATA_DIR, f"{name}.jsonl"), "w", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, allow_nan=False) + "\n")
    return rows


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


def iris_logits_model(lr):
    """Hand-built graph: logits = features @ W + B, with W/B from the iris LR."""
    W = np.ascontiguousarray(lr.coef_.T.astype(np.float32))  # [4, 3]
    B = lr.intercept_.astype(np.float32)  # [3]
    n_features, n_classes = W.shape
    graph = helper.make_graph(
        nodes=[
            helper.make_node("MatMul", [INPUT_NAME, "W"], ["matmul_out"], name="MatMul"),
            helper.make_node("Add", ["matmul_out", "B"], ["logits"], name="Add"),
        ],
        name="iris_logits",
        inputs=[
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, n_features]
            )
        ],
        outputs=[
            helper.make_tensor_value_info(
                "logits", TensorProto.FLOAT, [BATCH_DIM, n_classes]
            )
        ],
        initializer=[
            numpy_helper.from_array(W, name="W"),
            numpy_helper.from_array(B, name="B"),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="serval-examples",
        ir_version=8,
    )
    onnx.checker.check_model(model)
    return model


def classify_signature(outputs):
    probs = softmax_f32(outputs["logits"])
    labels = np.argmax(probs, axis=1)
    return {
        "classify": {
            "label": [IRIS_CLASSES[i] for i in labels],
            "probabilities": to_py(probs),
        }
    }


def screening_signature(outputs):
    probs = outputs["probabilities"]
    diagnosis = [
        BREAST_CANCER_CLASSES[1] if p >= np.float32(SCREENING_THRESHOLD) else BREAST_CANCER_CLASSES[0]
        for p in probs[:, 1]
    ]
    return {"screening": {"diagnosis": diagnosis, "probabilities": to_py(probs)}}


def main():
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    for d in (MODELS_DIR, GOLDEN_DIR, DATA_DIR):
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)

    bc = split(load_breast_cancer)
    iris = split(load_iris)
    diabetes = split(load_diabetes)

    specs = [
        (
            "breast_cancer_lr",
            bc,
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=SEED)),
            BREAST_CANCER_LR_CONFIG,
            screening_signature,
        ),
        (
            "breast_cancer_mlp",
            bc,
            make_pipeline(
                StandardScaler(),
                MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=500, random_state=SEED),
            ),
            None,
            None,
        ),
        (
            "breast_cancer_mlp_large",
            bc,
            make_pipeline(
                StandardScaler(),
                MLPClassifier(hidden_layer_sizes=(512, 512, 512), max_iter=30, random_state=SEED),
            ),
            None,
            None,
        ),
        ("iris_lr", iris, LogisticRegression(max_iter=1000, random_state=SEED), None, None),
        ("diabetes_linear", diabetes, LinearRegression(), None, None),
        (
            "iris_forest",
            iris,
            RandomForestClassifier(n_estimators=30, max_depth=6, random_state=SEED),
            None,
            None,
        ),
        (
            "breast_cancer_gbt",
            bc,
            GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=SEED),
            None,
            None,
        ),
    ]

    fitted = {}
    for name, (X_train, X_test, y_train, y_test), est, config, sig_fn in specs:
        est.fit(X_train, y_train)
        fitted[name] = est
        model = to_onnx(est, X_train.shape[1], name)
        path = write_model(name, model, config)
        write_golden_and_data(name, path, X_test, sig_fn, est)
        score = est.score(X_test, y_test)
        print(f"{name}: test score {score:.4f} -> {os.path.relpath(path, HERE)}")

    # Hand-built raw-logits model sharing the iris_lr coefficients.
    name = "iris_logits"
    path = write_model(name, iris_logits_model(fitted["iris_lr"]), IRIS_LOGITS_CONFIG)
    rows = write_golden_and_data(name, path, iris[1], classify_signature)
    # The softmax of the hand-built logits must reproduce iris_lr's probabilities.
    X = np.array([r[INPUT_NAME] for r in rows], dtype=np.float32)
    _, logits_out = run_ort(path, X)
    _, lr_out = run_ort(os.path.join(MODELS_DIR, "iris_lr", "1", "model.onnx"), X)
    np.testing.assert_allclose(softmax_f32(logits_out["logits"]), lr_out["probabilities"], atol=1e-5)
    np.testing.assert_array_equal(np.argmax(logits_out["logits"], axis=1), lr_out["label"])
    print(f"{name}: -> {os.path.relpath(path, HERE)}")

    # CSV input for the breast cancer models (same rows/keys as breast_cancer_lr).
    X = np.asarray(bc[1][:N_GOLDEN], dtype=np.float32)
    n = X.shape[1]
    with open(os.path.join(DATA_DIR, "breast_cancer.csv"), "w", newline="\n") as f:
        f.write("key," + ",".join(f"f{j}" for j in range(n)) + "\n")
        for i, x in enumerate(X):
            f.write(f"breast_cancer_lr-{i}," + ",".join(repr(f32(v)) for v in x) + "\n")


if __name__ == "__main__":
    main()
