#!/usr/bin/env python3
"""Generate Serval's example model repository, golden outputs and CLI input data.

Usage (from anywhere):

    python3 -m pip install -r examples/generate-requirements.txt
    python3 examples/generate.py

Everything is deterministic (fixed random_state, fixed opsets, single-threaded
onnxruntime), so re-running the script produces byte-identical files.
Only datasets bundled with scikit-learn are used; nothing is downloaded (the two-phase digits
example adds non-digit images generated from a fixed numpy seed).
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
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_iris
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

DIGITS_PHASE1_CONFIG = """\
# Phase 1 of a two-phase prediction: a small on-device model. Is it a digit, and which?
class_labels = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "not_digit"]

# The cascade (`serval edge`, the browser page /edge): a digit phase 1 is unsure of goes to
# the large model; what it calls not_digit, or a digit it is sure of, is answered on the device.
[edge]
phase2 = "digits_phase2"
[edge.forward]
classes = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
confidence = [0.0, 0.95]
when = "all"
"""

DIGITS_PHASE2_CONFIG = """\
# Phase 2 of a two-phase prediction: a larger cloud model for the rows phase 1 is unsure of.
class_labels = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
"""

DIGITS_CASCADE_CONFIG = """\
# Both phases on the server, served as one model: every instance goes through digits_phase1,
# and only what its [edge] policy forwards goes on to digits_phase2, batched. Each answer
# carries its class, the answering phase's confidence and that phase (1 or 2).
kind = "cascade"
[cascade]
phase1 = "digits_phase1"
"""

IRIS_CLASSES = ["setosa", "versicolor", "virginica"]
BREAST_CANCER_CLASSES = ["malignant", "benign"]
SCREENING_THRESHOLD = 0.8

DIGIT_CLASSES = [str(d) for d in range(10)]
NOT_DIGIT = "not_digit"
N_NON_DIGITS = 1800
# Phase 1 answers locally when its top probability reaches this; otherwise phase 2 answers.
TWO_PHASE_THRESHOLD = 0.95


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


# Generated 8x8 non-digit images in load_digits' value range (integers 0..16).

SIDE = 8
MAX_PIXEL = 16.0


def _draw_line(img, r0, c0, r1, c1, value):
    for t in np.linspace(0.0, 1.0, 4 * SIDE):
        r = int(round(r0 + (r1 - r0) * t))
        c = int(round(c0 + (c1 - c0) * t))
        if 0 <= r < SIDE and 0 <= c < SIDE:
            img[r, c] = max(img[r, c], value)


def _uniform_noise(rng, digits, y):
    return rng.uniform(0.0, MAX_PIXEL, (SIDE, SIDE))


def _salt_noise(rng, digits, y):
    img = np.zeros((SIDE, SIDE))
    n = int(rng.integers(12, 33))
    idx = rng.choice(SIDE * SIDE, size=n, replace=False)
    img.flat[idx] = rng.uniform(6.0, MAX_PIXEL, n)
    return img


def _rectangles(rng, digits, y):
    img = np.zeros((SIDE, SIDE))
    for _ in range(int(rng.integers(1, 4))):
        r0, c0 = rng.integers(0, SIDE - 1, 2)
        h, w = rng.integers(2, SIDE + 1, 2)
        block = img[r0 : r0 + h, c0 : c0 + w]
        block[...] = np.maximum(block, rng.uniform(6.0, MAX_PIXEL))
    return img


def _lines(rng, digits, y):
    img = np.zeros((SIDE, SIDE))
    if rng.random() < 0.5:
        # Stripes: every k-th row, column, or both.
        k = int(rng.integers(2, 4))
        phase = int(rng.integers(0, k))
        value = rng.uniform(8.0, MAX_PIXEL)
        axis = int(rng.integers(0, 3))
        for i in range(phase, SIDE, k):
            if axis in (0, 2):
                img[i, :] = value
            if axis in (1, 2):
                img[:, i] = value
    else:
        for _ in range(int(rng.integers(1, 4))):
            r0, c0, r1, c1 = rng.uniform(-1.0, SIDE, 4)
            _draw_line(img, r0, c0, r1, c1, rng.uniform(8.0, MAX_PIXEL))
    return img


def _checkerboard(rng, digits, y):
    cell = int(rng.choice([1, 2, 4]))
    rr, cc = np.indices((SIDE, SIDE))
    board = ((rr // cell + cc // cell + int(rng.integers(0, 2))) % 2).astype(np.float64)
    lo, hi = np.sort(rng.uniform(0.0, MAX_PIXEL, 2))
    return lo + (hi - lo) * board


def _blobs(rng, digits, y):
    rr, cc = np.indices((SIDE, SIDE))
    img = np.zeros((SIDE, SIDE))
    for _ in range(int(rng.integers(1, 4))):
        r, c = rng.uniform(0.0, SIDE - 1, 2)
        sigma = rng.uniform(0.8, 2.5)
        img += rng.uniform(0.5, 1.0) * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * sigma**2))
    return img


def _digit_overlay(rng, digits, y):
    """Pixelwise max of two digits of different classes."""
    i = int(rng.integers(0, len(digits)))
    j = int(rng.integers(0, len(digits)))
    while y[j] == y[i]:
        j = int(rng.integers(0, len(digits)))
    return np.maximum(digits[i], digits[j]).reshape(SIDE, SIDE).astype(np.float64)


NON_DIGIT_KINDS = [
    _uniform_noise,
    _salt_noise,
    _rectangles,
    _lines,
    _checkerboard,
    _blobs,
    _digit_overlay,
]


def non_digits(n, digits, y):
    """n images cycling through NON_DIGIT_KINDS, each rescaled so its total intensity is that
    of a random digit (as far as clipping to 0..16 allows) and rounded to integers."""
    rng = np.random.default_rng(SEED)
    totals = digits.sum(axis=1, dtype=np.float64)
    out = np.empty((n, SIDE * SIDE), dtype=np.float32)
    for k in range(n):
        img = NON_DIGIT_KINDS[k % len(NON_DIGIT_KINDS)](rng, digits, y)
        target = totals[int(rng.integers(0, len(totals)))]
        for _ in range(5):
            total = img.sum()
            if total <= 0:
                break
            img = np.clip(img * (target / total), 0.0, MAX_PIXEL)
        out[k] = np.rint(img).reshape(-1)
    return out


def digits_split():
    """load_digits plus N_NON_DIGITS generated non-digits (class 10), split 70/30 with
    random_state=0, stratified by class; features as float32."""
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    N = non_digits(N_NON_DIGITS, X, y)
    X = np.vstack([X, N])
    y = np.concatenate([y, np.full(len(N), len(DIGIT_CLASSES))]).astype(np.int64)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.3, random_state=SEED, stratify=y
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


def two_phase_digits():
    """Two-phase predictions: a small phase-1 model (digit or not, and which) that answers
    locally when confident, and a larger phase-2 model (which digit) for the rest."""
    X_train, X_test, y_train, y_test = digits_split()
    n_digits = len(DIGIT_CLASSES)
    train_digits, test_digits = y_train < n_digits, y_test < n_digits
    phases = [
        (
            "digits_phase1",
            make_pipeline(
                StandardScaler(),
                MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=1000, random_state=SEED),
            ),
            DIGITS_PHASE1_CONFIG,
            np.ones(len(y_train), dtype=bool),
            np.ones(len(y_test), dtype=bool),
        ),
        (
            "digits_phase2",
            make_pipeline(
                StandardScaler(),
                MLPClassifier(hidden_layer_sizes=(512, 256), max_iter=1000, random_state=SEED),
            ),
            DIGITS_PHASE2_CONFIG,
            train_digits,
            test_digits,
        ),
    ]
    outputs = {}
    # Each phase trains on, and is scored on, its rows of the splits (phase 2: digits only).
    for name, est, config, train_rows, test_rows in phases:
        est.fit(X_train[train_rows], y_train[train_rows])
        assert est[-1].n_iter_ < est[-1].max_iter, f"{name} did not converge"
        path = write_model(name, to_onnx(est, X_train.shape[1], name), config)
        write_golden_and_data(name, path, X_test[test_rows], None, est)
        # Scored on onnxruntime's outputs, as the server would answer, for the whole test split.
        _, outputs[name] = run_ort(path, np.ascontiguousarray(X_test))
        accuracy = np.mean(outputs[name]["label"][test_rows] == y_test[test_rows])
        size = os.path.getsize(path)
        print(f"{name}: test accuracy {accuracy:.4f}, {size} bytes -> {os.path.relpath(path, HERE)}")

    # The combined test split as CLI input, its true classes alongside (instances must not
    # carry fields that are not inputs, so the labels are a separate file with the same keys).
    classes = DIGIT_CLASSES + [NOT_DIGIT]
    keys = [f"digit-{i}" for i in range(len(X_test))]
    with open(os.path.join(DATA_DIR, "digits_two_phase.jsonl"), "w", newline="\n") as f:
        for k, x in zip(keys, X_test):
            f.write(json.dumps({"key": k, INPUT_NAME: to_py(x)}, allow_nan=False) + "\n")
    with open(os.path.join(DATA_DIR, "digits_two_phase_labels.jsonl"), "w", newline="\n") as f:
        for k, label in zip(keys, y_test):
            f.write(json.dumps({"key": k, "label": classes[label]}) + "\n")

    # Policy: phase 1 answers (a digit or not_digit) when its top probability reaches the
    # threshold; otherwise phase 2 answers a digit, even when phase 1 leaned to not_digit.
    p1, p2 = outputs["digits_phase1"], outputs["digits_phase2"]
    # Compared in float64, as serval's cascade policy compares its f64 band with the f32 score.
    forward = p1["probabilities"].max(axis=1).astype(np.float64) < TWO_PHASE_THRESHOLD
    answer = np.where(forward, p2["label"], p1["label"])
    n = len(y_test)
    print(
        f"digits two-phase (threshold {TWO_PHASE_THRESHOLD}): forwarded {forward.sum()}/{n} "
        f"({forward.mean():.1%}), end-to-end accuracy {np.mean(answer == y_test):.4f}; "
        f"phase 1 alone {np.mean(p1['label'] == y_test):.4f}, "
        f"phase 2 alone {np.mean(p2['label'] == y_test):.4f} (never says {NOT_DIGIT})"
    )
    # For comparison: forward only unsure digits, so a not_digit answer always stays local.
    forward_digits = forward & (p1["label"] < n_digits)
    answer = np.where(forward_digits, p2["label"], p1["label"])
    print(
        f"digits two-phase, {NOT_DIGIT} kept local: forwarded {forward_digits.sum()}/{n} "
        f"({forward_digits.mean():.1%}), end-to-end accuracy {np.mean(answer == y_test):.4f}"
    )
    # That policy (phase 1's [edge]) run whole on the server: a cascade's version directory
    # holds no model, only its warm-up, real instances that each phase answers.
    cascade_version = os.path.join(MODELS_DIR, "digits_cascade", "1")
    os.makedirs(cascade_version)
    with open(os.path.join(MODELS_DIR, "digits_cascade", "config.toml"), "w", newline="\n") as f:
        f.write(DIGITS_CASCADE_CONFIG)
    warm = [np.flatnonzero(~forward_digits)[0], np.flatnonzero(forward_digits)[0]]
    with open(os.path.join(cascade_version, "warmup.jsonl"), "w", newline="\n") as f:
        for i in warm:
            f.write(json.dumps({INPUT_NAME: to_py(X_test[i])}, allow_nan=False) + "\n")


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

    two_phase_digits()


if __name__ == "__main__":
    main()
