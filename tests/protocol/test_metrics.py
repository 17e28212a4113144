"""Prometheus `/metrics` after traffic on every protocol."""

from __future__ import annotations

import re

import numpy as np
import tritonclient.grpc as grpcclient

from support import features

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(http, server) -> list[tuple[str, dict, float]]:
    r = http.get(f"{server.url}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    samples = []
    for line in r.text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"unparsable metrics line: {line!r}"
        samples.append((m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return samples


def value(samples, name, **labels) -> float:
    return sum(v for n, ls, v in samples if n == name and all(ls.get(k) == w for k, w in labels.items()))


def test_request_counters_and_histograms(http, server, triton_grpc):
    model = "iris_lr"
    before = scrape(http, server)
    x = features(model, [0, 1])
    # One successful request per protocol, and one rejected by the model (wrong width).
    r = http.post(f"{server.url}/v1/models/{model}:predict", json={"instances": x.tolist()}, timeout=10)
    assert r.status_code == 200, r.text
    r = http.post(
        f"{server.url}/v2/models/{model}/infer",
        json={"inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 4], "data": x.ravel().tolist()}]},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    inp = grpcclient.InferInput("features", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    triton_grpc.infer(model, [inp])
    r = http.post(
        f"{server.url}/v2/models/{model}/infer",
        json={"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]},
        timeout=10,
    )
    assert r.status_code == 400, r.text
    after = scrape(http, server)

    for protocol in ("tfserving", "v2_rest", "v2_grpc"):
        labels = {"model": model, "version": "1", "protocol": protocol, "status": "200"}
        assert value(after, "serval_requests_total", **labels) - value(
            before, "serval_requests_total", **labels
        ) == 1, protocol
    bad = {"model": model, "protocol": "v2_rest", "status": "400"}
    assert value(after, "serval_requests_total", **bad) - value(before, "serval_requests_total", **bad) == 1

    buckets = [(ls, v) for n, ls, v in after if n == "serval_request_duration_seconds_bucket" and ls.get("model") == model]
    assert buckets, "no serval_request_duration_seconds_bucket lines"
    les = [ls["le"] for ls, _ in buckets]
    assert "+Inf" in les
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), "histogram buckets are not cumulative"
    total = value(after, "serval_request_duration_seconds_count", model=model, version="1")
    assert dict(zip(les, counts))["+Inf"] == total
    grew = total - value(before, "serval_request_duration_seconds_count", model=model, version="1")
    assert grew == 3, "only successful requests are timed"
    assert value(after, "serval_request_duration_seconds_sum", model=model, version="1") > 0
    for stage in ("queue", "compute"):
        assert any(n == f"serval_{stage}_duration_seconds_bucket" for n, _, _ in after), stage
    assert np.isfinite([v for _, _, v in after]).all()


def test_each_request_is_logged_with_the_client_address_and_outcome(monkeypatch):
    """At debug level, an HTTP request's and a gRPC call's events name the client's address."""
    import requests
    from support import ServalServer

    monkeypatch.setenv("SERVAL_LOG", "serval_server=debug")
    server = ServalServer()
    try:
        res = requests.post(f"{server.url}/v1/models/iris_lr:predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]},
                            timeout=10)
        assert res.status_code == 200, res.text
        client = grpcclient.InferenceServerClient(server.grpc_addr)
        x = grpcclient.InferInput("features", [1, 4], "FP32")
        x.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
        client.infer("iris_lr", [x])
        client.close()
    finally:
        assert server.terminate() == 0
    log = re.sub(r"\x1b\[[0-9;]*m", "", server.stderr_text(limit=1_000_000))
    assert re.search(r"http\{client=127\.0\.0\.1:\d+ method=POST path=/v1/models/iris_lr:predict\}.*answered status=200",
                     log), log[-3000:]
    assert re.search(r"grpc\{client=127\.0\.0\.1:\d+ path=/inference\.GRPCInferenceService/ModelInfer\}.*status=200",
                     log), log[-3000:]
