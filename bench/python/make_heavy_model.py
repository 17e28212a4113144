#!/usr/bin/env python3
"""Train the compute-heavy benchmark model and write it for every server in bench/load.sh.

    python bench/python/make_heavy_model.py MODELS_DIR MLSERVER_DIR

`breast_cancer_mlp_xl` is a scikit-learn MLP with three hidden layers of 4096 units (about 100
MFLOP per row, the order of a small CNN) on the breast-cancer split of examples/generate.py. It
exists because the committed models are too light to be compute-bound one row per request: on
them HTTP and JSON, not the engine, set the pace, so "close to the raw engine" could not be
measured. Its ONNX file is about 128 MB, too big to commit, so it is built here at bench time
(about 15 s, nothing downloaded).

Writes MODELS_DIR/breast_cancer_mlp_xl/1/model.onnx (exported the way examples/generate.py
exports its models) and MLSERVER_DIR/breast_cancer_mlp_xl/{model.joblib,model-settings.json}
from the same fitted estimator, after checking that onnxruntime and scikit-learn agree on the
test rows.
"""

import os
import sys
import warnings

import numpy as np
import onnxruntime as ort
from sklearn.datasets import load_breast_cancer
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "examples"))
import generate  # noqa: E402  (examples/generate.py: the split and the ONNX export)
from train_sklearn import save_for_mlserver  # noqa: E402  (same directory)

NAME = "breast_cancer_mlp_xl"
HIDDEN = (4096, 4096, 4096)


def main(argv):
    if len(argv) != 3:
        sys.exit(__doc__)
    models_dir, mlserver_dir = argv[1], argv[2]
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    X_train, X_test, y_train, _ = generate.split(load_breast_cancer)
    # A few epochs suffice: the benchmark measures compute, and the model still classifies.
    est = make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=HIDDEN, max_iter=3, random_state=generate.SEED),
    )
    est.fit(X_train, y_train)

    model = generate.to_onnx(est, X_train.shape[1], NAME)
    version_dir = os.path.join(models_dir, NAME, "1")
    os.makedirs(version_dir, exist_ok=True)
    path = os.path.join(version_dir, "model.onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    label, proba = session.run(None, {generate.INPUT_NAME: X_test})
    np.testing.assert_array_equal(label, est.predict(X_test), err_msg=NAME)
    np.testing.assert_allclose(proba, est.predict_proba(X_test), atol=1e-4, err_msg=NAME)

    model_dir = save_for_mlserver(est, NAME, mlserver_dir)
    print(f"{NAME}: {os.path.getsize(path) >> 20} MiB ONNX at {path}, joblib at {model_dir}")


if __name__ == "__main__":
    main(sys.argv)
