"""Real third-party models (tests/models/build_corpus.py), served with no config.toml, answer
what onnxruntime answers over v2 REST (tritonclient.http, JSON and binary), v2 gRPC
(tritonclient.grpc) and TF Serving REST; and a detector takes different image sizes at once.

What the server is expected to do with them:
- every model onnxruntime can run is served (ONNX Runtime is the default engine when present);
- batched models (inputs lead with one shared dynamic axis): v2 tensors are [N, ...], TF REST
  sends row `instances` and answers `predictions`, one per instance;
- non-batched models (silero VAD: state [2, B, 128] and a rank-0 `sr`): v2 tensors travel whole,
  with their full shape (rank 0 included); TF REST is columnar, `{"inputs": {...}}` in and
  `{"outputs": {...}}` out;
- ZipMap outputs (a sequence of {class: probability} maps) come back over v2 as an FP32 [N, C]
  tensor under the same name, columns in the order of the map's keys as onnxruntime returns
  them, and over TF REST as one `{label: probability}` object per instance;
- variants of one CNN (issue 12): weights in an external data file beside model.onnx, FP16
  inputs and outputs (FP16 over v2, JSON numbers over TF REST), int8 QDQ.
"""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import pytest

from corpus_support import corpus, marks_for, reference, session

RTOL = 1e-4
ATOL = 1e-5
# FP16 outputs (ocr_cls_fp16) are compared with onnxruntime on the same FP16 file and inputs:
# within one FP16 ulp (2^-10 relative at worst).
FP16_RTOL = 1e-3
FP16_ATOL = 1e-4

MODELS = sorted(corpus().models)


def batched(model: str) -> bool:
    return corpus().models[model]["batched"]


def model_params():
    return [pytest.param(m, id=m, marks=marks_for(m)) for m in MODELS]


def case_params():
    return [
        pytest.param(m, c["name"], id=f"{m}-{c['name']}", marks=marks_for(m))
        for m in MODELS
        for c in corpus().models[m]["cases"]
    ]


def map_columns(maps: list[dict]) -> np.ndarray:
    """A ZipMap output as the [N, C] FP32 tensor v2 serves, columns in key order."""
    return np.asarray([list(m.values()) for m in maps], dtype=np.float32).reshape(len(maps), -1)


def expected(model: str, case: str) -> dict[str, np.ndarray]:
    """onnxruntime's outputs as v2 serves them: maps become [N, C] tensors."""
    return {
        name: map_columns(value) if isinstance(value, list) else value
        for name, value in reference(model, case).items()
    }


def _texts(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else str(v)
            for v in np.asarray(values, dtype=object).ravel()]


def assert_same(where: str, got, want: np.ndarray, check_dtype: bool = True):
    """`got` is `want`: same shape; floats within RTOL/ATOL, integers and strings exactly."""
    if want.dtype.kind in "OUS":
        got = np.asarray(got, dtype=object)
        assert got.shape == want.shape, f"{where}: shape {list(got.shape)} != {list(want.shape)}"
        assert _texts(got) == _texts(want), f"{where}: strings differ"
        return
    got = np.asarray(got)
    assert got.shape == want.shape, f"{where}: shape {list(got.shape)} != {list(want.shape)}"
    if check_dtype:
        assert got.dtype == want.dtype, f"{where}: dtype {got.dtype} != {want.dtype}"
    if want.dtype.kind == "f":
        half = want.dtype == np.float16
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64),
                                   rtol=FP16_RTOL if half else RTOL,
                                   atol=FP16_ATOL if half else ATOL, err_msg=where)
    else:
        np.testing.assert_array_equal(got, want, err_msg=where)


# --- the corpus and the server ----------------------------------------------------------------


def test_corpus_has_no_config():
    root = corpus().root
    assert len(MODELS) >= 8
    assert not list(root.glob("*/config.toml")), "every model must default from its graph"
    for model in MODELS:
        assert (root / model / "1" / "model.onnx").is_file()


def test_external_data_layout():
    """A model saved with external data: its version directory holds model.onnx, without the
    weights, and the data file that every initializer refers to (by a relative location)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    external = [m for m in MODELS if corpus().models[m]["source"].get("data_file")]
    assert external, "the corpus has no model with external data"
    for model in external:
        version = corpus().root / model / "1"
        data_file = corpus().models[model]["source"]["data_file"]
        assert sorted(p.name for p in version.iterdir()) == sorted(["model.onnx", data_file])
        proto = onnx.load(str(version / "model.onnx"), load_external_data=False)
        assert proto.graph.initializer, f"{model}: no initializers"
        for tensor in proto.graph.initializer:
            assert uses_external_data(tensor), f"{model}: {tensor.name} is stored inline"
            location = {e.key: e.value for e in tensor.external_data}["location"]
            assert location == data_file, f"{model}: {tensor.name} is in {location}"
        assert (version / data_file).stat().st_size > (version / "model.onnx").stat().st_size


@pytest.mark.parametrize("model", model_params())
def test_ready(corpus_server, http, model):
    """Every model onnxruntime runs is served by default (per-model readiness), on ONNX Runtime
    (the default engine when it is present)."""
    session(model)  # onnxruntime loads it
    corpus_server.require_ready(model)
    config = http.get(f"{corpus_server.url}/v2/models/{model}/config", timeout=10).json()
    if "backend" in config:  # Serval's addition to Triton's config
        assert config["backend"] == "ort", config.get("backend_reason")


# ONNX TensorProto element types -> v2 datatypes.
ELEM_TYPES = {1: "FP32", 10: "FP16", 11: "FP64", 7: "INT64", 6: "INT32", 9: "BOOL",
              8: "BYTES"}


@lru_cache(maxsize=None)
def declared_io(model: str) -> tuple[list[dict], list[dict]]:
    """The inputs and outputs the ONNX file declares, as v2 metadata shows them: dynamic
    dimensions (a dim_param, nothing, or a negative dim_value as Paddle writes) are -1."""
    import onnx

    proto = onnx.load(str(corpus().root / model / "1" / "model.onnx"), load_external_data=False)
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}

    def spec(value) -> dict:
        if not value.type.HasField("tensor_type"):
            return {"name": value.name, "datatype": None, "shape": None}  # sequence of maps
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else -1
                 for d in tensor.shape.dim]
        return {"name": value.name, "datatype": ELEM_TYPES[tensor.elem_type], "shape": shape}

    inputs = [spec(v) for v in graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in graph.output]


@pytest.mark.parametrize("model", model_params())
def test_v2_metadata(corpus_server, http, model):
    """`GET /v2/models/<m>`: inputs and outputs with the names, datatypes and shapes the file
    declares (dynamic dimensions and, for batched models, axis 0 as -1; a ZipMap output as FP32
    [-1, C]). The file's declarations, not onnxruntime's session shapes: onnxruntime reports
    what its shape inference adds (ocr_det's output [d0, 1, d2, d3] where the file says
    [d0, d1, d2, d3])."""
    corpus_server.require_ready(model)
    res = http.get(f"{corpus_server.url}/v2/models/{model}", timeout=10)
    assert res.status_code == 200, res.text
    meta = res.json()
    first_case = corpus().models[model]["cases"][0]["name"]
    inputs, outputs = declared_io(model)
    for spec in inputs + outputs:
        if spec["datatype"] is None:
            classes = len(reference(model, first_case)[spec["name"]][0])
            spec["datatype"], spec["shape"] = "FP32", [-1, classes]
        elif batched(model) and spec["shape"]:
            spec["shape"][0] = -1

    def served(entries):
        keep = ("name", "datatype", "shape")
        return [{k: t[k] for k in keep} for t in entries if t["name"] != "key"]

    assert served(meta["inputs"]) == inputs
    assert served(meta["outputs"]) == outputs
    # Where the class labels of a ZipMap output are shown, they are the map's keys in order.
    for entry in meta["outputs"]:
        labels = (entry.get("parameters") or {}).get("class_labels")
        if labels is not None:
            maps = reference(model, first_case)[entry["name"]]
            assert labels == [str(k) for k in maps[0]], f"{entry['name']}: class labels"


# --- v2 REST (tritonclient.http) --------------------------------------------------------------


def _http_infer(client, model: str, feeds: dict[str, np.ndarray], names, binary: bool):
    import tritonclient.http as httpclient
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, array in feeds.items():
        tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]
    return client.infer(model, inputs, outputs=outputs)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("model,case", case_params())
def test_v2_rest(corpus_server, triton_http, model, case, binary):
    corpus_server.require_ready(model)
    want = expected(model, case)
    res = _http_infer(triton_http, model, corpus().inputs(model, case), want, binary)
    for name, value in want.items():
        assert_same(f"{model}/{case}: {name}", res.as_numpy(name), value)


# --- v2 gRPC (tritonclient.grpc) --------------------------------------------------------------


def _grpc_infer(client, model: str, feeds: dict[str, np.ndarray], names):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, array in feeds.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    outputs = [grpcclient.InferRequestedOutput(n) for n in names]
    return client.infer(model, inputs, outputs=outputs, client_timeout=120)


@pytest.mark.parametrize("model,case", case_params())
def test_v2_grpc(corpus_server, triton_grpc, model, case):
    corpus_server.require_ready(model)
    want = expected(model, case)
    res = _grpc_infer(triton_grpc, model, corpus().inputs(model, case), want)
    for name, value in want.items():
        assert_same(f"{model}/{case}: {name}", res.as_numpy(name), value)


# --- TF Serving REST ------------------------------------------------------------------------


def _assert_map(where: str, got, want: dict):
    """A `{label: probability}` object equals onnxruntime's map (JSON keys are strings)."""
    assert isinstance(got, dict), f"{where}: not a {{label: probability}} object: {got!r:.200}"
    assert list(got) == [str(k) for k in want], f"{where}: labels {list(got)} != {list(want)}"
    np.testing.assert_allclose([got[str(k)] for k in want], list(want.values()),
                               rtol=RTOL, atol=ATOL, err_msg=where)


def _json_array(where: str, values, want: np.ndarray) -> np.ndarray:
    """JSON values as an array of `want`'s dtype; integers must have come as JSON integers."""
    if want.dtype.kind in "OUS":
        return np.asarray(values, dtype=object)
    if want.dtype.kind in "iub":
        leaves = np.asarray(values, dtype=object).ravel()
        kind = bool if want.dtype.kind == "b" else int
        assert all(isinstance(v, kind) for v in leaves), f"{where}: not JSON {kind.__name__}s"
    return np.asarray(values, dtype=want.dtype)


@pytest.mark.parametrize("model,case", case_params())
def test_tf_rest(corpus_server, http, model, case):
    """Row `instances` for batched models, columnar `inputs` for non-batched ones."""
    corpus_server.require_ready(model)
    feeds = corpus().inputs(model, case)
    want = reference(model, case)
    url = f"{corpus_server.url}/v1/models/{model}:predict"
    if not batched(model):
        columns = {k: v.tolist() for k, v in feeds.items()}
        res = http.post(url, json={"inputs": columns}, timeout=120)
        assert res.status_code == 200, res.text[:2000]
        body = res.json()
        assert "outputs" in body, f"expected columnar outputs, got keys {list(body)}"
        for name, value in want.items():
            assert name in body["outputs"], f"{name} missing from outputs {list(body['outputs'])}"
            where = f"{model}/{case}: {name}"
            assert_same(where, _json_array(where, body["outputs"][name], value), value)
        return
    n = len(next(iter(feeds.values())))
    instances = [{k: v[i].tolist() for k, v in feeds.items()} for i in range(n)]
    res = http.post(url, json={"instances": instances}, timeout=120)
    assert res.status_code == 200, res.text[:2000]
    predictions = res.json()["predictions"]
    assert len(predictions) == n
    for name, value in want.items():
        where = f"{model}/{case}: {name}"
        # TF Serving answers a one-output model with bare values; Serval may add a key.
        rows = [p[name] if isinstance(p, dict) and name in p else p for p in predictions]
        if isinstance(value, list):
            for i, (got, m) in enumerate(zip(rows, value)):
                _assert_map(f"{where}[{i}]", got, m)
        else:
            missing = any(isinstance(r, dict) for r in rows)
            assert not missing, f"{where}: not in {predictions[0]!r:.300}"
            assert_same(where, _json_array(where, rows, value), value)


# --- different shapes at once ---------------------------------------------------------------

# Single-instance cases of different spatial sizes, sent concurrently and interleaved.
MIXED = {
    "ocr_det": ["page_224x320", "page_320x448", "page_256x256", "page_160x608"],
    "ocr_rec": ["line_w96", "line_w192"],
    "yolov8n_nudenet": ["photo_320x320", "photo_256x416"],
}
ROUNDS = 3
THREADS = 8


@pytest.mark.concurrency
@pytest.mark.parametrize("model", [pytest.param(m, id=m, marks=marks_for(m)) for m in MIXED])
def test_mixed_sizes_concurrently(corpus_server, triton_grpc, model):
    """Requests of different image sizes in flight together (half v2 gRPC, half v2 REST binary)
    each get their own answer: the batcher only stacks requests of the same shape."""
    import tritonclient.http as httpclient

    corpus_server.require_ready(model)
    jobs = [(case, i % 2 == 0) for i, case in enumerate(MIXED[model] * ROUNDS)]
    random.Random(0).shuffle(jobs)
    local = threading.local()

    def run(job):
        case, use_grpc = job
        feeds = corpus().inputs(model, case)
        want = expected(model, case)
        if not hasattr(local, "client"):
            local.client = httpclient.InferenceServerClient(
                url=corpus_server.server.http_addr, network_timeout=120.0)
        if use_grpc:
            res = _grpc_infer(triton_grpc, model, feeds, want)
        else:
            res = _http_infer(local.client, model, feeds, want, binary=True)
        for name, value in want.items():
            assert_same(f"{model}/{case} ({'grpc' if use_grpc else 'http'}): {name}",
                        res.as_numpy(name), value)
        return case

    with ThreadPoolExecutor(min(THREADS, len(jobs))) as pool:
        done = list(pool.map(run, jobs))
    assert sorted(done) == sorted(case for case, _ in jobs)


# --- a stateful stream ----------------------------------------------------------------------

STATEFUL = [m for m in MODELS if "state" in {i.name for i in session(m).get_inputs()}]


@pytest.mark.parametrize("model", [pytest.param(m, id=m, marks=marks_for(m)) for m in STATEFUL])
def test_vad_stream_carries_state(corpus_server, triton_grpc, model):
    """Eight 512-sample chunks of 16 kHz audio, each with the 64 samples before it as context
    and the state the server returned for the previous chunk, as silero's own wrapper streams
    them: every answer is onnxruntime's for the same stream."""
    import build_corpus

    corpus_server.require_ready(model)
    speech = build_corpus.speech_like(8 * 512, 16000, seed=7)
    audio = np.concatenate([np.zeros(64, np.float32), speech])
    sr = np.array(16000, dtype=np.int64)
    served_state = ort_state = np.zeros((2, 1, 128), np.float32)
    for k in range(8):
        chunk = audio[k * 512 : k * 512 + 576][None]
        feeds = {"input": chunk, "state": ort_state, "sr": sr}
        want_out, want_state = session(model).run(None, feeds)
        res = _grpc_infer(triton_grpc, model, {"input": chunk, "state": served_state, "sr": sr},
                          ["output", "stateN"])
        assert_same(f"{model} chunk {k}: output", res.as_numpy("output"), want_out)
        assert_same(f"{model} chunk {k}: stateN", res.as_numpy("stateN"), want_state)
        served_state, ort_state = res.as_numpy("stateN"), want_state
