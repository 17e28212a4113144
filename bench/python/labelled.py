"""Labelled rows for the example classifiers, as tests/protocol/test_quantize.py builds them (that
test could import this module instead of its own digits_rows / breast_cancer_rows):

- the two-phase digits test split: examples/data/digits_two_phase.jsonl (1080 rows, `key` and
  `features`) joined by key with examples/data/digits_two_phase_labels.jsonl (`"0".."9"` or
  `"not_digit"`), in the features file's order;
- breast cancer: scikit-learn's load_breast_cancer (569 rows, target 0/1, the data the examples'
  models were trained on; examples/data/breast_cancer.csv holds only 25 unlabelled rows), either
  all of it or the 30% test split examples/generate.py holds out (train_test_split(test_size=0.3,
  random_state=0)).

Labels are as `serval quantize --eval` compares them: a class name, else the class index.
numpy (and scikit-learn for breast cancer).
"""

from __future__ import annotations

import json
import os

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DATA = os.path.join(ROOT, "examples", "data")
MODELS = os.path.join(ROOT, "examples", "models")


def _jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def digits_two_phase() -> tuple[list[str], np.ndarray, list[str]]:
    """(keys, X [1080, 64] float32, labels) of the two-phase digits test split."""
    rows = _jsonl(os.path.join(DATA, "digits_two_phase.jsonl"))
    labels = {r["key"]: r["label"] for r in _jsonl(os.path.join(DATA, "digits_two_phase_labels.jsonl"))}
    keys = [r["key"] for r in rows]
    missing = [k for k in keys if k not in labels]
    if len(rows) != 1080 or len(labels) != 1080 or missing:
        raise ValueError(f"digits two-phase data: {len(rows)} rows, {len(labels)} labels, {len(missing)} unlabelled")
    X = np.array([r["features"] for r in rows], dtype=np.float32)
    return keys, X, [labels[k] for k in keys]


def breast_cancer(split: str = "all") -> tuple[np.ndarray, list[int]]:
    """(X float32, labels 0/1): all 569 rows, or the 171 of examples/generate.py's test split."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X = X.astype(np.float32)
    if split == "test":
        from sklearn.model_selection import train_test_split

        _, X, _, y = train_test_split(X, y, test_size=0.3, random_state=0)
    elif split != "all":
        raise ValueError(f"split must be 'all' or 'test', not {split!r}")
    return X, [int(v) for v in y]


def class_labels(model: str) -> list[str]:
    """The example model's class_labels (its config.toml), or [] (classes are their indices)."""
    config = os.path.join(MODELS, model, "config.toml")
    if not os.path.isfile(config):
        return []
    import tomllib

    with open(config, "rb") as f:
        return list(tomllib.load(f).get("class_labels", []))


def accuracy(probabilities: np.ndarray, labels: list, names: list[str]) -> float:
    """As `serval quantize --eval` scores a classifier: the top class (its name, else its index)
    against the label as text."""
    top = probabilities.argmax(axis=1)
    predicted = [names[i] if i < len(names) else str(i) for i in top]
    return float(np.mean([p == str(t) for p, t in zip(predicted, labels)]))
