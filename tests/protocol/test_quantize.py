"""`serval quantize`: post-training quantization of ONNX files, against real processes, with
ONNX Runtime as the oracle of every number. Each quantized file must load in ONNX Runtime and
in `serval predict` (on tract and on ONNX Runtime), and serval's outputs must equal ONNX
Runtime's on the same quantized file; `--eval`'s accuracy and agreement must equal what ONNX
Runtime gives on the same labelled rows; and weights-int8 is set side by side with ONNX Runtime's
own `quantize_dynamic`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_breast_cancer

from support import REPO, ROOT, serval_bin

DATA = ROOT / "examples" / "data"
# serval against ONNX Runtime on the same (quantized) file.
RTOL = 1e-4
ATOL = 1e-5


def ort_library() -> str:
    """The libonnxruntime.so of the onnxruntime this process imports (serval otherwise asks the
    first `python3` on PATH, which need not be this one's)."""
    (library,) = sorted((Path(ort.__file__).parent / "capi").glob("libonnxruntime.so*"))[-1:]
    return str(library)


def serval(*args, timeout: float = 300, input: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("ORT_DYLIB_PATH", ort_library())
    return subprocess.run([str(serval_bin()), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, input=input, env=env)


def float_model(name: str) -> Path:
    return REPO / name / "1" / "model.onnx"


# ---------------------------------------------------------------------------------------------
# Labelled data: the 1080 two-phase digits (features and labels joined by key) and
# load_breast_cancer (569 rows, target 0/1, as the examples' models were trained on it).
# ---------------------------------------------------------------------------------------------

def digits_rows() -> tuple[np.ndarray, list]:
    with open(DATA / "digits_two_phase.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    with open(DATA / "digits_two_phase_labels.jsonl", encoding="utf-8") as f:
        labels = {r["key"]: r["label"] for r in map(json.loads, filter(str.strip, f))}
    assert len(rows) == 1080 and len(labels) == 1080
    X = np.array([r["features"] for r in rows], dtype=np.float32)
    return X, [labels[r["key"]] for r in rows]


def breast_cancer_rows() -> tuple[np.ndarray, list]:
    X, y = load_breast_cancer(return_X_y=True)
    return X.astype(np.float32), [int(v) for v in y]


LABELLED = {
    "digits_phase1": digits_rows,
    "breast_cancer_mlp": breast_cancer_rows,
    "breast_cancer_mlp_large": breast_cancer_rows,
}


def class_names(model: str) -> list[str]:
    """The model's class_labels (config.toml), or [] (classes are then their indices)."""
    config = REPO / model / "config.toml"
    if not config.is_file():
        return []
    import tomllib

    return list(tomllib.loads(config.read_text(encoding="utf-8")).get("class_labels", []))


def write_eval(path: Path, X: np.ndarray, labels: list) -> Path:
    """JSON Lines with the model's input and a `label` column."""
    with path.open("w", encoding="utf-8") as f:
        for i, (row, label) in enumerate(zip(X, labels)):
            f.write(json.dumps({"key": f"row-{i}", "features": row.tolist(), "label": label}) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# The oracle and serval
# ---------------------------------------------------------------------------------------------

# Rows per engine call, in serval and in the oracle alike: dynamic-int8 quantizes each call's
# activations with one scale, so a row's numbers depend on the rows it is batched with.
CHUNK = 64


def ort_outputs(path: Path, X: np.ndarray) -> dict[str, np.ndarray]:
    """ONNX Runtime over `X` in calls of CHUNK rows."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (only,) = session.get_inputs()
    names = [o.name for o in session.get_outputs()]
    parts = [session.run(None, {only.name: X[i:i + CHUNK]}) for i in range(0, len(X), CHUNK)]
    return {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(names)}


def accuracy(probabilities: np.ndarray, labels: list, names: list[str]) -> float:
    """As `serval quantize --eval` scores a classifier: the top class (its name, else its index)
    against the label as text."""
    top = probabilities.argmax(axis=1)
    predicted = [names[i] if i < len(names) else str(i) for i in top]
    return float(np.mean([p == str(t) for p, t in zip(predicted, labels)]))


def quantize(src: Path, out: Path, *flags: str) -> tuple[subprocess.CompletedProcess, dict]:
    res = serval("quantize", src, out, "--json", *flags)
    report = json.loads(res.stdout) if res.stdout.strip().startswith("{") else {}
    return res, report


def serval_predict(tmp: Path, quantized: Path, model: str, engine: str, X: np.ndarray) -> dict[str, np.ndarray]:
    """`serval predict` over `X` with the quantized file as `<repo>/<model>/1/model.onnx`, the
    float model's config.toml plus `backend = engine`: output name -> [N, ...] array."""
    repo = tmp / f"repo-{quantized.stem}-{engine}"
    (repo / model / "1").mkdir(parents=True)
    shutil.copy(quantized, repo / model / "1" / "model.onnx")
    config = REPO / model / "config.toml"
    text = config.read_text(encoding="utf-8") if config.is_file() else ""
    # Top-level keys go before any table.
    (repo / model / "config.toml").write_text(f'backend = "{engine}"\n{text}', encoding="utf-8")
    data = repo / "input.jsonl"
    keys = [f"q-{i}" for i in range(len(X))]
    with data.open("w", encoding="utf-8") as f:
        for key, row in zip(keys, X):
            f.write(json.dumps({"key": key, "features": row.tolist()}) + "\n")
    res = serval("predict", repo, model, "--input", data, "--batch-size", CHUNK)
    assert res.returncode == 0, f"serval predict ({engine}) of the quantized file failed:\n{res.stderr}"
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert [line["key"] for line in lines] == keys, "one answer per line, in order"
    names = [n for n in lines[0] if n != "key"]
    return {n: np.array([line[n] for line in lines]) for n in names}


def assert_same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray], what: str) -> None:
    assert set(got) == set(expected), f"{what}: outputs {sorted(got)} != {sorted(expected)}"
    for name, want in expected.items():
        have = got[name]
        if want.dtype.kind in "iu":
            assert have.dtype.kind in "iu", f"{what}.{name}: {have.dtype}"
            np.testing.assert_array_equal(have.reshape(want.shape), want, err_msg=f"{what}.{name}")
        else:
            np.testing.assert_allclose(have.astype(np.float64).reshape(want.shape), want.astype(np.float64),
                                       rtol=RTOL, atol=ATOL, err_msg=f"{what}.{name}")


def assert_loads_and_matches(tmp: Path, quantized: Path, model: str, X: np.ndarray, engines) -> dict:
    """The file runs in ONNX Runtime, and serval on each engine gives ONNX Runtime's outputs."""
    expected = ort_outputs(quantized, X)
    for engine in engines:
        assert_same(serval_predict(tmp, quantized, model, engine, X), expected, f"{model} {quantized.name} {engine}")
    return expected


# ---------------------------------------------------------------------------------------------
# weights-int8
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["digits_phase1", "breast_cancer_mlp_large"])
def test_weights_int8_is_4x_smaller_runs_the_same_everywhere_and_keeps_accuracy(tmp_path, model):
    X, labels = LABELLED[model]()
    names = class_names(model)
    src = float_model(model)
    out = tmp_path / f"{model}.int8.onnx"
    data = write_eval(tmp_path / "eval.jsonl", X, labels)
    res, report = quantize(src, out, "--mode", "weights-int8", "--eval", data, "--label", "label")
    assert res.returncode == 0, res.stderr
    assert out.is_file()

    # Sizes: as reported, and at least 3.5x smaller.
    assert report["mode"] == "weights-int8", report
    assert report["bytes_before"] == src.stat().st_size, report
    assert report["bytes_after"] == out.stat().st_size, report
    assert Path(report["output"]).resolve() == out.resolve(), report
    ratio = report["bytes_before"] / report["bytes_after"]
    matmuls = [n for n in report["nodes"] if n["op_type"] == "MatMul"]
    assert matmuls and all(n["quantized"] for n in matmuls), report["nodes"]
    for node in report["nodes"]:
        assert set(node) >= {"node", "op_type", "elements", "quantized"}, node
        assert node["quantized"] or node.get("reason"), f"a node left float says why: {node}"

    # serval (tract and ONNX Runtime) equals ONNX Runtime on the quantized file.
    quantized = assert_loads_and_matches(tmp_path, out, model, X, ["tract", "ort"])

    # Accuracy within a point of the float model's, and --eval's numbers are ONNX Runtime's.
    floating = ort_outputs(src, X)
    float_acc = accuracy(floating["probabilities"], labels, names)
    quant_acc = accuracy(quantized["probabilities"], labels, names)
    assert abs(quant_acc - float_acc) <= 0.01, f"{model}: accuracy {float_acc:.4f} -> {quant_acc:.4f}"
    agreement = float(np.mean(floating["probabilities"].argmax(1) == quantized["probabilities"].argmax(1)))
    max_dp = float(np.abs(floating["probabilities"] - quantized["probabilities"]).max())
    ev = report["eval"]
    assert ev["metric"] == "accuracy" and ev["rows"] == len(X), ev
    assert ev["float"] == pytest.approx(float_acc, abs=1e-9), ev
    assert ev["quantized"] == pytest.approx(quant_acc, abs=1e-9), ev
    assert ev["agreement"] == pytest.approx(agreement, abs=1e-9), ev
    assert ev["max_probability_difference"] == pytest.approx(max_dp, abs=1e-4), ev
    assert ev["engine"] in ("tract", "ort"), ev
    print(f"\n{model} weights-int8: {report['bytes_before']} -> {report['bytes_after']} bytes ({ratio:.2f}x), "
          f"accuracy {float_acc:.4f} -> {quant_acc:.4f}, agreement {agreement:.4f}, max |dp| {max_dp:.2e}")
    # Last, so that every other claim above is checked whatever the size: the goal, 3.5x.
    assert ratio >= 3.5, f"{model}: only {ratio:.2f}x smaller ({report['bytes_before']} -> {report['bytes_after']})"


@pytest.mark.parametrize("model", ["digits_phase1", "breast_cancer_mlp_large"])
def test_weights_int8_against_onnxruntime_quantize_dynamic(tmp_path, model):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    X, labels = LABELLED[model]()
    names = class_names(model)
    src = float_model(model)
    ours = tmp_path / f"{model}.serval.onnx"
    theirs = tmp_path / f"{model}.ort.onnx"
    res, _ = quantize(src, ours, "--mode", "weights-int8")
    assert res.returncode == 0, res.stderr
    quantize_dynamic(str(src), str(theirs), weight_type=QuantType.QInt8)
    float_acc = accuracy(ort_outputs(src, X)["probabilities"], labels, names)
    our_acc = accuracy(ort_outputs(ours, X)["probabilities"], labels, names)
    their_acc = accuracy(ort_outputs(theirs, X)["probabilities"], labels, names)
    size = {p: p.stat().st_size for p in (src, ours, theirs)}
    print(f"\n{model}: float {size[src]} B acc {float_acc:.4f} | serval weights-int8 {size[ours]} B "
          f"({size[src] / size[ours]:.2f}x) acc {our_acc:.4f} | onnxruntime quantize_dynamic QInt8 "
          f"{size[theirs]} B ({size[src] / size[theirs]:.2f}x) acc {their_acc:.4f}")
    assert our_acc >= their_acc, f"{model}: serval's accuracy {our_acc:.4f} < ONNX Runtime's {their_acc:.4f}"
    # One scale per weight for fully connected layers, as ONNX Runtime: never the larger file.
    assert size[ours] <= size[theirs], f"{model}: {size[ours]} B against ONNX Runtime's {size[theirs]} B"
    # A scale per output channel costs 4 bytes a column.
    per_channel = tmp_path / f"{model}.serval-per-channel.onnx"
    res, _ = quantize(src, per_channel, "--mode", "weights-int8", "--per-channel")
    assert res.returncode == 0, res.stderr
    per_channel_acc = accuracy(ort_outputs(per_channel, X)["probabilities"], labels, names)
    print(f"{model}: serval weights-int8 --per-channel {per_channel.stat().st_size} B acc {per_channel_acc:.4f}")
    assert size[ours] < per_channel.stat().st_size <= 1.02 * size[theirs], per_channel.stat().st_size
    assert per_channel_acc >= their_acc - 0.01, f"{model}: per-channel accuracy {per_channel_acc:.4f}"


def scale_shapes(path: Path) -> dict[str, list[int]]:
    """Each DequantizeLinear's consumer's op type -> the shape of that DequantizeLinear's scale."""
    import onnx

    graph = onnx.load(str(path)).graph
    dims = {t.name: list(t.dims) for t in graph.initializer}
    consumers = {i: n.op_type for n in graph.node for i in n.input}
    return {consumers[n.output[0]]: dims[n.input[1]] for n in graph.node if n.op_type == "DequantizeLinear"}


def test_convolutions_get_a_scale_per_output_channel_fully_connected_layers_one(tmp_path):
    """TF Lite's int8 scheme by default; --per-channel and --per-tensor apply one rule to both."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    # Filters of very different ranges: one scale for all would flatten the small ones to zero.
    conv = (rng.standard_normal((8, 1, 3, 3)) * np.logspace(-2, 0, 8)[:, None, None, None]).astype(np.float32)
    dense = rng.standard_normal((8 * 6 * 6, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "conv_w"], ["c"]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Flatten", ["r"], ["f"]),
         helper.make_node("MatMul", ["f", "dense_w"], ["logits"])],
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(conv, "conv_w"), numpy_helper.from_array(dense, "dense_w")],
    )
    src = tmp_path / "cnn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    x = rng.uniform(0, 1, (16, 1, 8, 8)).astype(np.float32)
    floating = ort.InferenceSession(str(src)).run(None, {"image": x})[0]
    for flag, want in [(None, {"Conv": [8], "MatMul": []}),
                       ("--per-channel", {"Conv": [8], "MatMul": [4]}),
                       ("--per-tensor", {"Conv": [], "MatMul": []})]:
        out = tmp_path / f"cnn.{(flag or '--default')[2:]}.onnx"
        res, _ = quantize(src, out, *([flag] if flag else []))
        assert res.returncode == 0, res.stderr
        assert scale_shapes(out) == want, flag
        quantized = ort.InferenceSession(str(out)).run(None, {"image": x})[0]
        error = np.abs(quantized - floating).max() / np.abs(floating).max()
        print(f"cnn {flag or 'default'}: {out.stat().st_size} B, max error {error:.2e} of the largest logit")
        assert error < 0.05, (flag, error)


# ---------------------------------------------------------------------------------------------
# dynamic-int8 and fp16
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, ratios, tolerance", [
    # Each engine call quantizes its activations with one scale: a few rows may change class.
    ("dynamic-int8", (2.0, 4.5), 0.02),
    ("fp16", (1.7, 2.1), 0.005),
])
@pytest.mark.parametrize("model", ["digits_phase1", "breast_cancer_mlp_large", "breast_cancer_mlp"])
def test_dynamic_int8_and_fp16_load_and_serval_equals_onnxruntime(tmp_path, model, mode, ratios, tolerance):
    X, labels = LABELLED[model]()
    src = float_model(model)
    out = tmp_path / f"{model}.{mode}.onnx"
    res, report = quantize(src, out, "--mode", mode)
    assert res.returncode == 0, res.stderr
    assert report["mode"] == mode and report["bytes_after"] == out.stat().st_size, report
    assert any(n["quantized"] for n in report["nodes"]), report["nodes"]
    ratio = report["bytes_before"] / report["bytes_after"]
    assert ratios[0] <= ratio <= ratios[1], f"{model}: {mode} is {ratio:.2f}x smaller"
    quantized = assert_loads_and_matches(tmp_path, out, model, X, ["ort", "tract"])
    names = class_names(model)
    float_acc = accuracy(ort_outputs(src, X)["probabilities"], labels, names)
    quant_acc = accuracy(quantized["probabilities"], labels, names)
    assert abs(quant_acc - float_acc) <= tolerance, f"{model}: accuracy {float_acc:.4f} -> {quant_acc:.4f}"


def test_csv_eval_data_gives_the_same_numbers_as_json_lines(tmp_path):
    model = "breast_cancer_mlp_large"
    X, labels = LABELLED[model]()
    jsonl = write_eval(tmp_path / "eval.jsonl", X, labels)
    csv = tmp_path / "eval.csv"
    with csv.open("w", encoding="utf-8") as f:
        f.write(",".join(["key", *[f"f{i}" for i in range(X.shape[1])], "label"]) + "\n")
        for i, (row, label) in enumerate(zip(X, labels)):
            f.write(",".join([f"row-{i}", *[repr(float(v)) for v in row], str(label)]) + "\n")
    _, from_jsonl = quantize(float_model(model), tmp_path / "a.onnx", "--eval", jsonl, "--label", "label")
    res, from_csv = quantize(float_model(model), tmp_path / "b.onnx", "--eval", csv, "--label", "label")
    assert res.returncode == 0, res.stderr
    assert from_csv["eval"] == from_jsonl["eval"], (from_csv["eval"], from_jsonl["eval"])


# ---------------------------------------------------------------------------------------------
# What cannot be quantized
# ---------------------------------------------------------------------------------------------

def test_a_tree_ensemble_stays_float_with_the_reason_and_a_non_zero_exit(tmp_path):
    src = float_model("breast_cancer_gbt")
    out = tmp_path / "gbt.onnx"
    res = serval("quantize", src, out)
    assert res.returncode != 0, f"nothing was quantized, yet exit 0:\n{res.stdout}"
    text = res.stdout + res.stderr
    assert "TreeEnsembleClassifier" in text, text
    assert "attributes" in text, f"the reason is given:\n{text}"
    assert out.is_file(), "the (unchanged) file is still written"
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])

    res, report = quantize(src, tmp_path / "gbt2.onnx")
    assert res.returncode != 0
    trees = [n for n in report["nodes"] if n["op_type"].endswith("TreeEnsembleClassifier")]
    assert trees, report["nodes"]
    assert all(not n["quantized"] and "attributes" in n["reason"] for n in trees), trees
    assert not any(n["quantized"] for n in report["nodes"]), report["nodes"]


def test_a_file_that_is_not_onnx_is_refused_with_a_message(tmp_path):
    bogus = tmp_path / "not-a-model.onnx"
    bogus.write_text("this is not a protobuf, just some text\n" * 20)
    out = tmp_path / "out.onnx"
    res = serval("quantize", bogus, out)
    assert res.returncode != 0, res.stdout
    assert "onnx" in res.stderr.lower() and str(bogus) in res.stderr, res.stderr
    assert "panick" not in res.stderr, res.stderr
    missing = serval("quantize", tmp_path / "absent.onnx", out)
    assert missing.returncode != 0 and "absent.onnx" in missing.stderr, missing.stderr
