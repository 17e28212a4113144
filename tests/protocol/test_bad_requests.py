"""Malformed, hostile and over-limit requests: exact status, a JSON error naming the problem,
and the server still answering valid requests afterwards."""

from __future__ import annotations

import json
import socket
import struct

import grpc
import numpy as np
import pytest
import requests
from tritonclient.grpc import service_pb2, service_pb2_grpc

from conftest import LIMITED_MAX_BODY_BYTES, LIMITED_MAX_INSTANCES
from support import assert_error, assert_outputs_match, features, golden_keys, v2_outputs

MODEL = "iris_lr"
HUGE = 9223372036854775807  # i64::MAX
HEADER_LENGTH = "Inference-Header-Content-Length"


def _x(rows=1):
    return features(MODEL, range(rows))


def _v2_json(*inputs, **extra):
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def _tensor(name="features", shape=(1, 4), datatype="FP32", data=None, **params):
    t = {"name": name, "shape": list(shape), "datatype": datatype}
    if data is not None:
        t["data"] = data
    if params:
        t["parameters"] = params
    return t


def _binary(header: dict, tail: bytes, header_length: int | None = None):
    head = json.dumps(header).encode()
    n = len(head) if header_length is None else header_length
    return head + tail, {HEADER_LENGTH: str(n), "Content-Type": "application/octet-stream"}


def _bytes_tensor(*values: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def check_serves(server):
    """A valid request on each protocol still succeeds and matches the goldens."""
    assert server.alive(), server.stderr_text()
    rows = [0, 1, 2]
    x = features(MODEL, rows)
    keys = golden_keys(MODEL, rows)
    r = requests.post(
        f"{server.url}/v2/models/{MODEL}/infer",
        json={
            "inputs": [
                _tensor(shape=x.shape, data=x.ravel().tolist()),
                _tensor("key", [3], "BYTES", keys),
            ]
        },
        timeout=10,
    )
    assert r.status_code == 200, r.text
    out = v2_outputs(r.json())
    assert list(out["key"]) == keys
    assert_outputs_match(MODEL, out, rows=rows)
    r = requests.post(
        f"{server.url}/v1/models/{MODEL}:predict",
        json={"instances": [{"key": k, "features": f} for k, f in zip(keys, x.tolist())]},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert [p["key"] for p in r.json()["predictions"]] == keys
    with grpc.insecure_channel(server.grpc_addr) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(_grpc_request(x), timeout=10)
    assert [o.name for o in response.outputs] == ["label", "probabilities", "key"]


@pytest.fixture(autouse=True)
def still_serves(server):
    yield
    check_serves(server)


# ---------------------------------------------------------------- OIP v2 REST

GOOD = _tensor(data=[5.0, 3.0, 1.5, 0.2])

V2_CASES = [
    # id, body, headers, path suffix, status, needles
    ("malformed-json", b'{"inputs": [', {}, "", 400, ["malformed JSON"]),
    ("json-not-object", b"[1, 2, 3]", {}, "", 400, ["malformed JSON"]),
    ("empty-body", b"", {}, "", 400, ["malformed JSON"]),
    ("non-utf8-body", b'{"inputs": [{"name": "\xff\xfe"}]}', {}, "", 400, ["malformed JSON"]),
    ("shape-not-ints", _v2_json(_tensor(shape=["a", 4], data=[1, 2, 3, 4])), {}, "", 400, ["malformed JSON"]),
    ("shape-overflows-i64", b'{"inputs":[{"name":"features","shape":[18446744073709551616,4],"datatype":"FP32","data":[1,2,3,4]}]}', {}, "", 400, ["malformed JSON"]),
    ("wrong-shape", _v2_json(_tensor(shape=[1, 3], data=[1, 2, 3])), {}, "", 400, ["features", "shape"]),
    ("wrong-rank", _v2_json(_tensor(shape=[4], data=[1, 2, 3, 4])), {}, "", 400, ["features", "shape"]),
    ("data-count-vs-shape", _v2_json(_tensor(shape=[2, 4], data=[1, 2, 3, 4])), {}, "", 400, ["features", "needs 8"]),
    ("too-much-data", _v2_json(_tensor(shape=[1, 4], data=[1, 2, 3, 4, 5])), {}, "", 400, ["features", "4"]),
    ("wrong-dtype", _v2_json(_tensor(datatype="INT64", data=[1, 2, 3, 4])), {}, "", 400, ["features", "INT64", "FP32"]),
    ("unknown-dtype", _v2_json(_tensor(datatype="FP99", data=[1, 2, 3, 4])), {}, "", 400, ["features", "FP99"]),
    ("wrong-value-type", _v2_json(_tensor(data=[1, 2, 3, "x"])), {}, "", 400, ["features", "FP32", "string"]),
    ("nan-refused", _v2_json(_tensor(data=[1, 2, 3, "NaN"])), {}, "", 400, ["features", "NaN"]),
    ("zero-timeout-header", _v2_json(_tensor(data=[1, 2, 3, 4])), {"serval-timeout-ms": "0"}, "", 400,
     ["serval-timeout-ms", "at least 1"]),
    ("negative-timeout-parameter", _v2_json(_tensor(data=[1, 2, 3, 4]), parameters={"timeout": -5}), {}, "", 400,
     ["timeout", "non-negative"]),
    ("infinity-refused", _v2_json(_tensor(data=[1, 2, 3, "Infinity"])), {}, "", 400, ["features", "Infinity"]),
    ("float32-overflow-refused", _v2_json(_tensor(data=[1, 2, 3, 1e39])), {}, "", 400,
     ["features", "beyond the input type's range"]),
    ("unknown-input", _v2_json(GOOD, _tensor(name="bogus", data=[1, 2, 3, 4])), {}, "", 400, ["bogus"]),
    ("missing-input", _v2_json(), {}, "", 400, ["missing input", "features"]),
    ("duplicate-input", _v2_json(GOOD, GOOD), {}, "", 400, ["features", "twice"]),
    ("no-data", _v2_json(_tensor()), {}, "", 400, ["features", "neither data nor binary_data_size"]),
    ("empty-batch", _v2_json(_tensor(shape=[0, 4], data=[])), {}, "", 400, ["empty"]),
    ("negative-dim", _v2_json(_tensor(shape=[-1, 4], data=[1, 2, 3, 4])), {}, "", 400, ["features", "negative"]),
    ("huge-dim", _v2_json(_tensor(shape=[HUGE, 4], data=[1, 2, 3, 4])), {}, "", 400, ["features", "too many elements"]),
    ("huge-dims", _v2_json(_tensor(shape=[HUGE, HUGE], data=[1])), {}, "", 400, ["features", "too many elements"]),
    ("large-dim-little-data", _v2_json(_tensor(shape=[1, 1 << 40], data=[1, 2, 3, 4])), {}, "", 400, ["features", "needs"]),
    # More instances declared than allowed: refused before the data is read.
    ("rows-past-limit", _v2_json(_tensor(shape=[1 << 40, 4], data=[1, 2, 3, 4])), {}, "", 413, ["instances exceed the limit"]),
    ("key-count-mismatch", _v2_json(GOOD, _tensor("key", [2], "BYTES", ["a", "b"])), {}, "", 400, ["2 keys", "1 instances"]),
    ("key-not-bytes", _v2_json(GOOD, _tensor("key", [1], "INT64", [7])), {}, "", 400, ["key", "BYTES"]),
    ("key-bad-shape", _v2_json(GOOD, _tensor("key", [1, 2], "BYTES", ["a", "b"])), {}, "", 400, ["key", "shape"]),
    ("unknown-output", _v2_json(GOOD, outputs=[{"name": "nope"}]), {}, "", 400, ["nope"]),
    ("unknown-signature", _v2_json(GOOD, parameters={"signature_name": "nope"}), {}, "", 404, ["nope"]),
    ("unknown-model", _v2_json(GOOD), {}, "model:no_such_model", 404, ["no_such_model"]),
    ("unknown-version", _v2_json(GOOD), {}, "version:7", 404, ["7"]),
    ("bad-version", _v2_json(GOOD), {}, "version:a.b", 400, ["a.b"]),
    ("unknown-version-label", _v2_json(GOOD), {}, "version:abc", 404, ["abc"]),
    ("zero-version", _v2_json(GOOD), {}, "version:0", 400, ["'0'"]),
]


def _binary_case(tensors, tail, header_length=None):
    body, headers = _binary({"inputs": tensors}, tail, header_length)
    return body, headers


_RAW16 = np.array([5.0, 3.0, 1.5, 0.2], dtype=np.float32).tobytes()
BINARY_CASES = [
    ("binary-size-too-big", [_tensor(binary_data_size=32)], _RAW16, None, ["features", "binary_data_size 32", "16 bytes"]),
    ("binary-leftover-bytes", [_tensor(binary_data_size=16)], _RAW16 + b"\0" * 4, None, ["4 bytes", "not claimed"]),
    ("binary-size-vs-shape", [_tensor(binary_data_size=20)], _RAW16 + b"\0" * 4, None, ["features", "20 bytes", "needs 16"]),
    ("binary-size-short", [_tensor(binary_data_size=12)], _RAW16[:12], None, ["features", "12 bytes", "needs 16"]),
    ("binary-size-negative", [_tensor(binary_data_size=-1)], _RAW16, None, ["features", "binary_data_size"]),
    ("binary-size-string", [_tensor(binary_data_size="16")], _RAW16, None, ["features", "binary_data_size"]),
    ("binary-header-length-too-big", [_tensor(binary_data_size=16)], _RAW16, 100_000, ["inference-header-content-length", "100000"]),
    ("binary-header-length-zero", [_tensor(binary_data_size=16)], _RAW16, 0, ["header length 0"]),
    ("binary-header-length-cuts-json", [_tensor(binary_data_size=16)], _RAW16, 10, ["malformed JSON"]),
    ("binary-huge-dim", [_tensor(shape=[HUGE, 4], binary_data_size=16)], _RAW16, None, ["features", "too many elements"]),
    ("binary-large-dim", [_tensor(shape=[1, 1 << 40], binary_data_size=16)], _RAW16, None, ["features", "needs"]),
    (
        "binary-key-not-utf8",
        [_tensor(binary_data_size=16), _tensor("key", [1], "BYTES", binary_data_size=6)],
        _RAW16 + _bytes_tensor(b"\xff\xfe"),
        None,
        ["key", "UTF-8"],
    ),
    (
        "binary-key-truncated",
        [_tensor(binary_data_size=16), _tensor("key", [1], "BYTES", binary_data_size=6)],
        _RAW16 + struct.pack("<I", 9) + b"ab",
        None,
        ["key", "claims 9 bytes"],
    ),
    (
        "binary-key-count",
        [_tensor(binary_data_size=16), _tensor("key", [2], "BYTES", binary_data_size=5)],
        _RAW16 + _bytes_tensor(b"a"),
        None,
        ["key", "1 BYTES elements", "needs 2"],
    ),
]


def _v2_url(server, target):
    if target.startswith("model:"):
        return f"{server.url}/v2/models/{target[6:]}/infer"
    if target.startswith("version:"):
        return f"{server.url}/v2/models/{MODEL}/versions/{target[8:]}/infer"
    return f"{server.url}/v2/models/{MODEL}/infer"


@pytest.mark.parametrize("case", V2_CASES, ids=[c[0] for c in V2_CASES])
def test_v2_rest(http, server, case):
    _, body, headers, target, status, needles = case
    r = http.post(_v2_url(server, target), data=body, headers=headers, timeout=10)
    assert_error(r, status, *needles)


@pytest.mark.parametrize("case", BINARY_CASES, ids=[c[0] for c in BINARY_CASES])
def test_v2_rest_binary(http, server, case):
    _, tensors, tail, header_length, needles = case
    body, headers = _binary_case(tensors, tail, header_length)
    r = http.post(_v2_url(server, ""), data=body, headers=headers, timeout=10)
    assert_error(r, 400, *needles)


def test_v2_header_length_not_a_number(http, server):
    body, headers = _binary_case([_tensor(binary_data_size=16)], _RAW16)
    headers[HEADER_LENGTH] = "lots"
    assert_error(http.post(_v2_url(server, ""), data=body, headers=headers, timeout=10), 400, HEADER_LENGTH)


def _raw_http(server, request: bytes) -> tuple[int, dict]:
    """Sends bytes as they are (clients would fix the framing) and parses the response."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as conn:
        conn.sendall(request)
        conn.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), head
    return status, json.loads(body)


@pytest.mark.parametrize(
    "path,chunks",
    [
        ("/v2/models/iris_lr/infer", b"zz\r\nabc\r\n0\r\n\r\n"),  # chunk size not hex
        ("/v1/models/iris_lr:predict", b"5\r\n{\"ins\r\n"),  # body ends mid-stream
    ],
    ids=["bad-chunk-size", "truncated-chunked"],
)
def test_unreadable_body_is_400_not_413(server, path, chunks):
    request = f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + chunks
    status, body = _raw_http(server, request)
    assert status == 400, body
    assert "request body" in body["error"], body


def test_v2_binary_positive_control(http, server):
    """The well-formed binary request the cases above corrupt is accepted."""
    body, headers = _binary_case([_tensor(binary_data_size=16)], _RAW16)
    r = http.post(_v2_url(server, ""), data=body, headers=headers, timeout=10)
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------- TF Serving REST

ROW = [5.0, 3.0, 1.5, 0.2]
TF_CASES = [
    ("malformed-json", b'{"instances": [[1, 2', "", 400, ["malformed JSON"]),
    ("non-utf8-body", b'{"instances": [[1, 2, 3, \xff]]}', "", 400, ["malformed JSON"]),
    ("unknown-field", {"instances": [ROW], "bogus": 1}, "", 400, ["bogus"]),
    ("both-formats", {"instances": [ROW], "inputs": {"features": [ROW]}}, "", 400, ["only one of 'inputs' or 'instances'"]),
    ("neither-format", {"signature_name": "serving_default"}, "", 400, ["missing 'instances' or 'inputs'"]),
    ("empty-instances", {"instances": []}, "", 400, ["empty"]),
    ("wrong-shape", {"instances": [ROW[:3]]}, "", 400, ["features", "shape"]),
    ("wrong-rank", {"instances": [[ROW]]}, "", 400, ["features", "shape"]),
    ("wrong-dtype", {"instances": [{"features": ["a", 1, 2, 3]}]}, "", 400, ["features", "FP32", "string"]),
    ("number-out-of-range", b'{"instances": [[1, 2, 3, 1e400]]}', "", 400, ["malformed JSON", "out of range"]),
    ("nan-refused", {"instances": [[1, 2, 3, "NaN"]]}, "", 400, ["features", "NaN"]),
    ("infinity-refused", {"instances": [[1, 2, 3, "-Infinity"]]}, "", 400, ["features", "-Infinity"]),
    ("float32-overflow-refused", {"instances": [[1, 2, 3, 1e39]]}, "", 400, ["features", "beyond"]),
    ("unknown-input", {"instances": [{"features": ROW, "bogus": 1}]}, "", 400, ["bogus"]),
    ("missing-input", {"instances": [{"key": "a"}]}, "", 400, ["missing input", "features"]),
    ("missing-input-second-row", {"instances": [{"features": ROW}, {"key": "b"}]}, "", 400, ["instance 1", "features"]),
    ("key-not-string", {"instances": [{"key": 5, "features": ROW}]}, "", 400, ["key", "string"]),
    ("columnar-ragged", {"inputs": {"features": [ROW], "key": ["a", "b"]}}, "", 400, ["2 instances", "1"]),
    ("columnar-not-list", {"inputs": {"features": 3}}, "", 400, ["features", "list"]),
    ("unknown-signature", {"signature_name": "nope", "instances": [ROW]}, "", 404, ["nope"]),
    ("unknown-model", {"instances": [ROW]}, "path:no_such_model:predict", 404, ["no_such_model"]),
    ("unknown-version", {"instances": [ROW]}, f"path:{MODEL}/versions/7:predict", 404, ["7"]),
    ("bad-version", {"instances": [ROW]}, f"path:{MODEL}/versions/abc:predict", 400, ["abc"]),
    ("unknown-label", {"instances": [ROW]}, f"path:{MODEL}/labels/canary:predict", 404, ["canary"]),
    ("unknown-verb", {"instances": [ROW]}, f"path:{MODEL}:explain", 400, [":explain", ":classify"]),
    ("regress-without-examples", {"instances": [ROW]}, f"path:{MODEL}:regress", 400, ["instances"]),
    ("no-verb", {"instances": [ROW]}, f"path:{MODEL}", 404, [":predict"]),
    ("extra-path", {"instances": [ROW]}, f"path:{MODEL}/versions/1/extra:predict", 404, ["extra"]),
]


@pytest.mark.parametrize("case", TF_CASES, ids=[c[0] for c in TF_CASES])
def test_tfserving(http, server, case):
    _, body, target, status, needles = case
    path = target[5:] if target.startswith("path:") else f"{MODEL}:predict"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = http.post(f"{server.url}/v1/models/{path}", data=data, timeout=10)
    assert_error(r, status, *needles)


NON_FINITE_WORDS = {"NaN": "NaN", "nan": "NaN", "Infinity": "Infinity", "inf": "Infinity",
                    "-Infinity": "-Infinity", "-inf": "-Infinity"}


@pytest.mark.parametrize("word", NON_FINITE_WORDS)
def test_one_reading_of_non_finite_words_on_every_json_protocol(http, server, word):
    """TF REST and v2 JSON read the same strings as the same non-finite value, refused by the
    model's allow_nan rule with one message (not as a string where a number belongs)."""
    seen = NON_FINITE_WORDS[word]
    tf = http.post(f"{server.url}/v1/models/{MODEL}:predict", data=json.dumps({"instances": [[1, 2, 3, word]]}), timeout=10)
    v2 = http.post(f"{server.url}/v2/models/{MODEL}/infer", data=_v2_json(_tensor(data=[1, 2, 3, word])), timeout=10)
    for r in (tf, v2):
        assert_error(r, 400, "features", f"contains {seen}", "allow_nan")
    assert tf.json()["error"] == v2.json()["error"]


@pytest.mark.parametrize("method,path", [("GET", f"/v2/models/{MODEL}/infer"), ("PUT", "/v2/health/ready"),
                                         ("DELETE", f"/v1/models/{MODEL}:predict")])
def test_a_method_a_route_lacks_is_a_405_with_a_json_error(http, server, method, path):
    r = http.request(method, f"{server.url}{path}", timeout=10)
    assert_error(r, 405, method, path)
    assert r.headers.get("allow"), r.headers


# ---------------------------------------------------------------- OIP v2 gRPC


def _grpc_request(x, model=MODEL, version="", raw=None, shape=None, datatype="FP32", name="features"):
    req = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    req.inputs.add(name=name, datatype=datatype, shape=list(x.shape if shape is None else shape))
    req.raw_input_contents.append(x.tobytes() if raw is None else raw)
    return req


def _with_parameter(req, name, **choice):
    for field, value in choice.items():
        setattr(req.parameters[name], field, value)
    return req


def test_a_zero_timeout_parameter_sets_none_as_in_triton(http, server, grpc_stub):
    body = _v2_json(_tensor(data=[5.1, 3.5, 1.4, 0.2]), parameters={"timeout": 0})
    r = http.post(_v2_url(server, ""), data=body, timeout=10)
    assert r.status_code == 200, r.text
    response = grpc_stub.ModelInfer(_with_parameter(_grpc_request(_x()), "timeout", int64_param=0), timeout=10)
    assert response.outputs


def _with_key(req, *keys: bytes, shape=None):
    req.inputs.add(name="key", datatype="BYTES", shape=[len(keys)] if shape is None else shape)
    req.raw_input_contents.append(_bytes_tensor(*keys))
    return req


def _typed(values, shape=(1, 4)):
    req = service_pb2.ModelInferRequest(model_name=MODEL)
    t = req.inputs.add(name="features", datatype="FP32", shape=list(shape))
    t.contents.fp32_contents.extend(values)
    return req


def _raw_count_mismatch():
    req = _grpc_request(_x())
    req.raw_input_contents.append(b"extra")
    return req


def _unknown_output():
    req = _grpc_request(_x())
    req.outputs.add(name="nope")
    return req


def _unknown_signature():
    req = _grpc_request(_x())
    req.parameters["signature_name"].string_param = "nope"
    return req


def _unknown_input():
    req = _grpc_request(_x())
    req.inputs.add(name="bogus", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(_x().tobytes())
    return req


INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
GRPC_CASES = [
    ("wrong-shape", lambda: _grpc_request(_x()[:, :3]), INVALID, ["features", "shape"]),
    ("infinity", lambda: _grpc_request(np.array([[1, 2, np.inf, 4]], dtype=np.float32)), INVALID,
     ["features", "Infinity", "allow_nan"]),
    ("negative-timeout", lambda: _with_parameter(_grpc_request(_x()), "timeout", int64_param=-5), INVALID,
     ["timeout", "non-negative"]),
    ("wrong-dtype", lambda: _grpc_request(_x().astype(np.int64), datatype="INT64"), INVALID, ["features", "FP32"]),
    ("unknown-dtype", lambda: _grpc_request(_x(), datatype="FP99"), INVALID, ["features", "FP99"]),
    ("unknown-input", _unknown_input, INVALID, ["bogus"]),
    ("missing-input", lambda: service_pb2.ModelInferRequest(model_name=MODEL), INVALID, ["missing input", "features"]),
    ("raw-size-short", lambda: _grpc_request(_x(), raw=_x().tobytes()[:12]), INVALID, ["features", "12 bytes", "needs 16"]),
    ("raw-size-long", lambda: _grpc_request(_x(), raw=_x().tobytes() + b"\0" * 4), INVALID, ["features", "20 bytes", "needs 16"]),
    ("raw-count-mismatch", _raw_count_mismatch, INVALID, ["raw_input_contents"]),
    ("typed-count-mismatch", lambda: _typed([1, 2, 3]), INVALID, ["features", "needs 4"]),
    ("huge-dim", lambda: _grpc_request(_x(), shape=[HUGE, 4]), INVALID, ["features", "too many elements"]),
    ("large-dim", lambda: _grpc_request(_x(), shape=[1, 1 << 40]), INVALID, ["features", "needs"]),
    ("rows-past-limit", lambda: _grpc_request(_x(), shape=[1 << 40, 4]), grpc.StatusCode.RESOURCE_EXHAUSTED,
     ["instances exceed the limit"]),
    ("negative-dim", lambda: _grpc_request(_x(), shape=[-1, 4]), INVALID, ["features", "negative"]),
    ("key-not-utf8", lambda: _with_key(_grpc_request(_x()), b"\xff\xfe"), INVALID, ["key", "UTF-8"]),
    ("key-count", lambda: _with_key(_grpc_request(_x()), b"a", b"b"), INVALID, ["2 keys", "1 instances"]),
    ("unknown-output", _unknown_output, INVALID, ["nope"]),
    ("unknown-signature", _unknown_signature, NOT_FOUND, ["nope"]),
    ("unknown-model", lambda: _grpc_request(_x(), model="no_such_model"), NOT_FOUND, ["no_such_model"]),
    ("unknown-version", lambda: _grpc_request(_x(), version="7"), NOT_FOUND, ["7"]),
    ("bad-version", lambda: _grpc_request(_x(), version="a.b"), INVALID, ["a.b"]),
    ("unknown-version-label", lambda: _grpc_request(_x(), version="abc"), NOT_FOUND, ["abc"]),
]


@pytest.mark.parametrize("case", GRPC_CASES, ids=[c[0] for c in GRPC_CASES])
def test_grpc(grpc_stub, case):
    _, build, code, needles = case
    with pytest.raises(grpc.RpcError) as err:
        grpc_stub.ModelInfer(build(), timeout=10)
    assert err.value.code() == code, (err.value.code(), err.value.details())
    for needle in needles:
        assert needle.lower() in err.value.details().lower(), (needle, err.value.details())


def test_grpc_metadata_errors(grpc_stub):
    for call, req in [
        (grpc_stub.ModelMetadata, service_pb2.ModelMetadataRequest(name="no_such_model")),
        (grpc_stub.ModelMetadata, service_pb2.ModelMetadataRequest(name=MODEL, version="7")),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            call(req, timeout=10)
        assert err.value.code() == NOT_FOUND, err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        grpc_stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=MODEL, version="a.b"), timeout=10)
    assert err.value.code() == INVALID
    ready = grpc_stub.ModelReady(service_pb2.ModelReadyRequest(name="no_such_model"), timeout=10)
    assert not ready.ready


# A ModelInferRequest field 1 (model_name, a string) that is not UTF-8, one cut off in the middle
# of its length-prefixed value, and bytes that are no protobuf at all.
MALFORMED_PROTOBUF = [
    ("not-utf8", b"\x0a\x02\xff\xfe"),
    ("truncated", service_pb2.ModelInferRequest(model_name=MODEL).SerializeToString()[:-2]),
    ("garbage", b"\xff" * 64),
]


@pytest.mark.parametrize("raw", [m[1] for m in MALFORMED_PROTOBUF], ids=[m[0] for m in MALFORMED_PROTOBUF])
def test_malformed_protobuf_is_invalid_argument(server, raw):
    with grpc.insecure_channel(server.grpc_addr) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes as they are
        with pytest.raises(grpc.RpcError) as err:
            call(raw, timeout=10)
    assert err.value.code() == INVALID, (err.value.code(), err.value.details())
    assert "not a valid protobuf message" in err.value.details(), err.value.details()


# ---------------------------------------------------------------- limits (second server)


def _limited_v2(limited_server, body: bytes, headers=None):
    return requests.post(f"{limited_server.url}/v2/models/{MODEL}/infer", data=body, headers=headers or {}, timeout=10)


def test_oversize_body(limited_server):
    big = np.tile(_x(), (LIMITED_MAX_INSTANCES, 1))
    body = _v2_json(_tensor(shape=big.shape, data=(big.ravel() + 1e-3).tolist()), id="x" * LIMITED_MAX_BODY_BYTES)
    assert len(body) > LIMITED_MAX_BODY_BYTES
    assert_error(_limited_v2(limited_server, body), 413, str(len(body)), str(LIMITED_MAX_BODY_BYTES))
    tf = json.dumps({"instances": [ROW] * 40, "signature_name": "y" * LIMITED_MAX_BODY_BYTES}).encode()
    r = requests.post(f"{limited_server.url}/v1/models/{MODEL}:predict", data=tf, timeout=10)
    assert_error(r, 413, str(len(tf)), str(LIMITED_MAX_BODY_BYTES))
    # Without Content-Length (chunked), the limit still holds.
    chunks = (body[i : i + 1000] for i in range(0, len(body), 1000))
    assert_error(_limited_v2(limited_server, chunks), 413, f"more than {LIMITED_MAX_BODY_BYTES}")
    check_serves(limited_server)


def test_body_at_limit_is_accepted(limited_server):
    head = json.dumps({"inputs": [_tensor(data=ROW)], "id": ""}).encode()
    body = head.replace(b'"id": ""', b'"id": "' + b"z" * (LIMITED_MAX_BODY_BYTES - len(head)) + b'"')
    assert len(body) == LIMITED_MAX_BODY_BYTES
    r = _limited_v2(limited_server, body)
    assert r.status_code == 200, r.text


def test_too_many_instances(limited_server):
    n = LIMITED_MAX_INSTANCES + 1
    x = np.tile(_x(), (n, 1))
    needles = [f"{n} instances", str(LIMITED_MAX_INSTANCES)]
    r = requests.post(f"{limited_server.url}/v1/models/{MODEL}:predict", json={"instances": x.tolist()}, timeout=10)
    assert_error(r, 413, *needles)
    r = requests.post(
        f"{limited_server.url}/v1/models/{MODEL}:predict", json={"inputs": {"features": x.tolist()}}, timeout=10
    )
    assert_error(r, 413, *needles)
    assert_error(_limited_v2(limited_server, _v2_json(_tensor(shape=x.shape, data=x.ravel().tolist()))), 413, *needles)
    body, headers = _binary_case([_tensor(shape=x.shape, binary_data_size=x.nbytes)], x.tobytes())
    assert_error(_limited_v2(limited_server, body, headers), 413, *needles)
    with grpc.insecure_channel(limited_server.grpc_addr) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(_grpc_request(x), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
        assert all(s in err.value.details() for s in needles), err.value.details()
        # Exactly the limit is fine.
        ok = np.tile(_x(), (LIMITED_MAX_INSTANCES, 1))
        response = stub.ModelInfer(_grpc_request(ok), timeout=10)
        assert list(response.outputs[0].shape) == [LIMITED_MAX_INSTANCES]
    r = requests.post(f"{limited_server.url}/v1/models/{MODEL}:predict", json={"instances": ok.tolist()}, timeout=10)
    assert r.status_code == 200, r.text
    check_serves(limited_server)


def test_grpc_oversize_message(limited_server):
    x = np.tile(_x(), (LIMITED_MAX_BODY_BYTES // 16 + 1, 1))
    with grpc.insecure_channel(limited_server.grpc_addr) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(_grpc_request(x), timeout=10)
    # tonic reports an over-limit message as OUT_OF_RANGE (grpc-core would say RESOURCE_EXHAUSTED).
    assert err.value.code() in (grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED), err.value
    assert str(LIMITED_MAX_BODY_BYTES) in err.value.details()
    check_serves(limited_server)


def test_a_huge_name_from_the_client_is_not_echoed_whole(http, server, grpc_stub):
    """Errors quote what the client sent, cut to about a kilobyte: REST bodies stay small and a
    gRPC status still fits its metadata, so the client reads the error instead of failing on it."""
    name = "o" * 300_000
    body = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}],
            "outputs": [{"name": name}]}
    res = http.post(f"{server.url}/v2/models/iris_lr/infer", json=body, timeout=30)
    error = assert_error(res, 400, "requested output", "bytes cut")
    assert len(error) < 2000, len(error)
    request = service_pb2.ModelInferRequest(model_name="iris_lr")
    request.inputs.add(name="features", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([5.1, 3.5, 1.4, 0.2])
    request.outputs.add(name=name)
    with pytest.raises(grpc.RpcError) as err:
        grpc_stub.ModelInfer(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert "requested output" in err.value.details() and len(err.value.details()) < 2000
