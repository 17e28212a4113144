"""The corpus through the command line, in-process (no server): `serval predict` over JSON Lines
answers what onnxruntime answers, for a batched model fed instances of different shapes and for
a model that takes whole tensors per request; `serval inspect` reports every model and how it
is served.

Each JSON Lines line is one instance (batched models: `{"key": ..., "<input>": <one
instance>}`) or one request of whole tensors (non-batched models); every output line carries
the line's key and the outputs by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import build_corpus
from corpus_support import corpus, session
from support import serval_bin
from test_corpus import assert_same

TIMEOUT_S = 300


def run_serval(*args: str, tmp_path: Path | None = None) -> subprocess.CompletedProcess:
    """`serval ARGS...`; it finds ONNX Runtime through the `python3` on PATH, made the one whose
    onnxruntime computes the reference outputs."""
    binary = serval_bin()
    if not binary.is_file():
        pytest.fail(f"{binary} does not exist: run `cargo build -p serval-cli` or set SERVAL_BIN",
                    pytrace=False)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(binary), *args], capture_output=True, text=True, env=env,
                          timeout=TIMEOUT_S, cwd=tmp_path)


def write_jsonl(path: Path, rows: list[dict]):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def read_jsonl(where: str, text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        return [json.loads(line) for line in lines]
    except json.JSONDecodeError as err:
        pytest.fail(f"{where}: output is not JSON Lines ({err}): {text[:500]!r}", pytrace=False)


def predict(tmp_path: Path, model: str, rows: list[dict]) -> list[dict]:
    """`serval predict <corpus> MODEL -i rows.jsonl -o out.jsonl`, which must succeed."""
    src, out = tmp_path / "rows.jsonl", tmp_path / "out.jsonl"
    write_jsonl(src, rows)
    res = run_serval("predict", str(corpus().root), model, "-i", str(src), "-o", str(out),
                     tmp_path=tmp_path)
    assert res.returncode == 0, f"serval predict {model} exited {res.returncode}:\n{res.stderr}"
    return read_jsonl(f"serval predict {model}", out.read_text(encoding="utf-8"))


def assert_line(where: str, got: dict, key: str, want: dict[str, np.ndarray]):
    """An output line: the key sent, and every output onnxruntime gives, with its shape."""
    assert got.get("key") == key, f"{where}: key {got.get('key')!r} != {key!r}"
    missing = [name for name in want if name not in got]
    assert not missing, f"{where}: outputs {missing} missing from {sorted(got)}"
    for name, value in want.items():
        assert_same(f"{where}: {name}", np.asarray(got[name], dtype=value.dtype), value)


# --- a batched model, instances of different widths -----------------------------------------

# One text line per instance, each its own width (the recogniser's W is dynamic); keys not in
# sorted order, so that the order they come back in is the file's.
REC_LINES = [
    ("rec-z", "Serval", 96),
    ("rec-a", "total 1,284.50 EUR", 256),
    ("rec-m", "gRPC 2026", 128),
    ("rec-b", "v2", 64),
    ("rec-y", "lazy dog", 160),
]


def rec_instance(text: str, width: int) -> np.ndarray:
    return build_corpus.to_chw(build_corpus.text_line(text, width=width), *build_corpus.HALF)


def test_predict_lines_of_different_widths(tmp_path):
    """`serval predict <corpus> ocr_rec -i lines.jsonl`: one text line per JSON line, of
    different widths; every line's outputs are onnxruntime's for that line alone, in file order
    with its key."""
    instances = [(key, rec_instance(text, width)) for key, text, width in REC_LINES]
    rows = [{"key": key, "x": x.tolist()} for key, x in instances]
    got = predict(tmp_path, "ocr_rec", rows)
    assert [g.get("key") for g in got] == [key for key, _ in instances], "keys out of order"
    sess = session("ocr_rec")
    names = [o.name for o in sess.get_outputs()]
    for (key, x), line in zip(instances, got):
        want = dict(zip(names, (out[0] for out in sess.run(None, {"x": x[None]}))))
        assert_line(f"ocr_rec {key} (width {x.shape[-1]})", line, key, want)


def test_predict_malformed_line_names_it(tmp_path):
    """A file whose third line has 4 channels instead of 3 fails (exit code != 0), and the
    message names line 3."""
    rows = [{"key": key, "x": rec_instance(text, width).tolist()}
            for key, text, width in REC_LINES[:4]]
    rows[2]["x"] = np.zeros((4, 48, 128), np.float32).tolist()
    src = tmp_path / "lines.jsonl"
    write_jsonl(src, rows)
    res = run_serval("predict", str(corpus().root), "ocr_rec", "-i", str(src), tmp_path=tmp_path)
    assert res.returncode != 0, f"a malformed line 3 was accepted:\n{res.stdout[:500]}"
    message = res.stderr + res.stdout
    assert "line 3" in message, f"the error does not name line 3:\n{res.stderr[-2000:]}"


# --- a model that takes whole tensors -------------------------------------------------------

NON_BATCHED = [m for m in sorted(corpus().models) if not corpus().models[m]["batched"]]


@pytest.mark.non_batched
@pytest.mark.parametrize("model", NON_BATCHED)
def test_predict_whole_tensor_requests(tmp_path, model):
    """`serval predict <corpus> MODEL -i requests.jsonl` for a model that does not batch: each
    line is one request of whole tensors (input [1, 512], state [2, 1, 128], a scalar sr), and
    each output line is onnxruntime's outputs for it, with their full shapes (output [1, 1],
    stateN [2, 1, 128])."""
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    audio = build_corpus.speech_like(2 * 512, 16000, seed=11)
    zero = np.zeros((2, 1, 128), np.float32)
    sr16, sr8 = np.array(16000, np.int64), np.array(8000, np.int64)
    first = {"input": audio[:512][None], "state": zero, "sr": sr16}
    _, state = sess.run(None, first)
    calls = [
        ("vad-16k-0", first),
        # The next chunk, with the state onnxruntime returned for the first.
        ("vad-16k-1", {"input": audio[512:][None], "state": state, "sr": sr16}),
        ("vad-8k-0", {"input": build_corpus.speech_like(256, 8000, seed=12)[None],
                      "state": zero, "sr": sr8}),
    ]
    rows = [{"key": key, **{k: v.tolist() for k, v in feeds.items()}} for key, feeds in calls]
    got = predict(tmp_path, model, rows)
    assert [g.get("key") for g in got] == [key for key, _ in calls], "keys out of order"
    for (key, feeds), line in zip(calls, got):
        want = dict(zip(names, sess.run(None, feeds)))
        assert_line(f"{model} {key}", line, key, want)


# --- inspect --------------------------------------------------------------------------------

# The corpus's models that take whole tensors (state [2, B, 128], a scalar sr).
NOT_BATCHED = {"silero_vad", "silero_vad_ifless"}


def test_inspect_reports_every_model(tmp_path):
    res = run_serval("inspect", str(corpus().root), tmp_path=tmp_path)
    assert res.returncode == 0, f"serval inspect exited {res.returncode}:\n{res.stderr[-3000:]}"
    missing = [m for m in sorted(corpus().models) if f"model '{m}'" not in res.stdout]
    assert not missing, f"serval inspect does not report {missing}:\n{res.stdout[:3000]}"


def test_inspect_json(tmp_path):
    """`serval inspect <corpus> --json`: every model, on ONNX Runtime, batched except the two
    silero models."""
    res = run_serval("inspect", str(corpus().root), "--json", tmp_path=tmp_path)
    assert res.returncode == 0, f"serval inspect --json exited {res.returncode}:\n{res.stderr}"
    entries = json.loads(res.stdout)
    assert isinstance(entries, list), f"expected a list of versions, got {type(entries).__name__}"
    by_model = {}
    for entry in entries:
        by_model.setdefault(entry["model"], []).append(entry)
    assert sorted(by_model) == sorted(corpus().models)
    for model, versions in by_model.items():
        for entry in versions:
            where = f"{model} version {entry.get('version')}"
            assert entry.get("backend") == "ort", f"{where}: {entry.get('backend')} " \
                f"({entry.get('backend_reason')})"
            assert entry.get("batched") is (model not in NOT_BATCHED), \
                f"{where}: batched is {entry.get('batched')!r}"
            assert entry["batched"] == corpus().models[model]["batched"], where
