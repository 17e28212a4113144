"""Helpers for the model-corpus suite (not in conftest, so that this suite and tests/protocol,
whose modules import from their own helpers, can run in one pytest session): the corpus, built
once per process by build_corpus.py (or taken from $SERVAL_CORPUS_DIR), onnxruntime's answers for
every case, and the markers that describe each model.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "protocol"))

import build_corpus  # noqa: E402
from support import ServalServer  # noqa: E402

# Loading fourteen models (three of them OCR networks) and warming them up on a debug build.
READY_TIMEOUT_S = float(os.environ.get("SERVAL_CORPUS_READY_TIMEOUT", "300"))

MARKERS = {
    "batched": "a model whose inputs share a leading dynamic batch axis (requests stack on axis 0)",
    "non_batched": "a model served with whole tensors per request (silero: state [2, B, 128])",
    "zipmap": "a classifier whose graph output is a sequence of maps (ZipMap)",
    "scalar_input": "a model with a rank-0 input",
    "dynamic_spatial": "an image model whose H and/or W are dynamic",
    "concurrency": "concurrent requests with different shapes",
}


@dataclass
class Corpus:
    root: Path
    models: dict  # cases.json "models"
    arrays: dict[str, np.ndarray] = field(repr=False)

    def inputs(self, model: str, case: str) -> dict[str, np.ndarray]:
        entry = next(c for c in self.models[model]["cases"] if c["name"] == case)
        return {name: self.arrays[spec["array"]] for name, spec in entry["inputs"].items()}


@lru_cache(maxsize=None)
def corpus() -> Corpus:
    """The corpus, built once per process (collection needs its case names)."""
    given = os.environ.get("SERVAL_CORPUS_DIR")
    if given:
        root = Path(given)
        if not (root / "cases.json").is_file():
            build_corpus.build(root)
    else:
        root = Path(tempfile.mkdtemp(prefix="serval-corpus-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        build_corpus.build(root)
    with open(root / "cases.json", encoding="utf-8") as f:
        models = json.load(f)["models"]
    with np.load(root / "cases.npz", allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    return Corpus(root, models, arrays)


@lru_cache(maxsize=None)
def session(model: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the converters' files draw harmless shape warnings
    path = corpus().root / model / "1" / "model.onnx"
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@lru_cache(maxsize=None)
def reference(model: str, case: str) -> dict:
    """onnxruntime's outputs for a case, by output name (maps stay lists of dicts)."""
    sess = session(model)
    outputs = sess.run(None, corpus().inputs(model, case))
    return {o.name: v for o, v in zip(sess.get_outputs(), outputs)}


def marks_for(model: str) -> list:
    """The markers that describe a model, from its graph as onnxruntime reads it."""
    sess = session(model)
    marks = [pytest.mark.batched if corpus().models[model]["batched"] else pytest.mark.non_batched]
    if any(o.type.startswith("seq(map(") for o in sess.get_outputs()):
        marks.append(pytest.mark.zipmap)
    if any(len(i.shape) == 0 for i in sess.get_inputs()):
        marks.append(pytest.mark.scalar_input)
    spatial = [i.shape[2:] for i in sess.get_inputs() if len(i.shape) == 4]
    if any(not all(isinstance(d, int) and d > 0 for d in dims) for dims in spatial):
        marks.append(pytest.mark.dynamic_spatial)
    return marks


@dataclass
class CorpusServer:
    server: ServalServer
    status: dict  # model -> (state, reason) from /v2/repository/index once loading settled

    @property
    def url(self) -> str:
        return self.server.url

    def require_ready(self, model: str):
        state, reason = self.status.get(model, ("MISSING", "not in /v2/repository/index"))
        if state != "READY":
            pytest.fail(f"{model} is {state}: {reason}", pytrace=False)


