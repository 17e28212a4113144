#!/usr/bin/env python3
"""Retrain the scikit-learn estimators behind Serval's example models, for MLServer.

`examples/generate.py` trains these estimators and exports them to ONNX; here the same estimators
are retrained identically (same data split, hyperparameters and random_state) and saved with
joblib into an MLServer model repository, so MLServer serves the very models Serval serves:

    python bench/python/train_sklearn.py OUT_DIR [MODEL ...]

writes OUT_DIR/<model>/model.joblib and OUT_DIR/<model>/model-settings.json (MLServer's
scikit-learn runtime). Before saving, each estimator's predictions on the golden rows are checked
against examples/golden/<model>.json (computed by onnxruntime from the committed ONNX model);
a mismatch means generate.py changed and this file must follow it.
"""

import json
import os
import sys
import warnings

import joblib
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN_DIR = os.path.join(ROOT, "examples", "golden")
SEED = 0  # examples/generate.py's SEED

# Same constructors as the `specs` list of examples/generate.py.
ESTIMATORS = {
    "breast_cancer_lr": lambda: make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=1000, random_state=SEED)
    ),
    "breast_cancer_mlp": lambda: make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=500, random_state=SEED),
    ),
    "breast_cancer_mlp_large": lambda: make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=(512, 512, 512), max_iter=30, random_state=SEED),
    ),
}


def split():
    """examples/generate.py's split(load_breast_cancer): 70/30, random_state=0, float32."""
    X, y = load_breast_cancer(return_X_y=True)
    X = X.astype(np.float32)
    return train_test_split(X, y, test_size=0.3, random_state=SEED)


def check_golden(name, est):
    with open(os.path.join(GOLDEN_DIR, f"{name}.json")) as f:
        golden = json.load(f)
    X = np.asarray([r["features"] for r in golden["rows"]], dtype=np.float32)
    np.testing.assert_array_equal(est.predict(X), golden["outputs"]["label"], err_msg=name)
    np.testing.assert_allclose(
        est.predict_proba(X), golden["outputs"]["probabilities"], atol=1e-4, err_msg=name
    )


def save_for_mlserver(est, name, out):
    """Writes OUT/<name>/model.joblib and the model-settings.json of MLServer's scikit-learn
    runtime; returns the model's directory."""
    model_dir = os.path.join(out, name)
    os.makedirs(model_dir, exist_ok=True)
    joblib.dump(est, os.path.join(model_dir, "model.joblib"))
    settings = {
        "name": name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "1"},
    }
    with open(os.path.join(model_dir, "model-settings.json"), "w") as f:
        json.dump(settings, f, indent=1)
    return model_dir


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    out = argv[1]
    names = argv[2:] or ["breast_cancer_lr", "breast_cancer_mlp_large"]
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    X_train, _, y_train, _ = split()
    for name in names:
        est = ESTIMATORS[name]()
        est.fit(X_train, y_train)
        check_golden(name, est)
        model_dir = save_for_mlserver(est, name, out)
        print(f"{name}: trained, matches examples/golden/{name}.json -> {model_dir}")


if __name__ == "__main__":
    main(sys.argv)
