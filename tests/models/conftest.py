"""Fixtures for the third-party model corpus: a real `serval serve` over the corpus (built by
build_corpus.py, see corpus_support.py) with no config.toml, and clients for it.

Needs `pip install -r tests/protocol/requirements.txt -r tests/models/requirements.txt`. The
binary is `target/debug/serval`, or `$SERVAL_BIN`; the server process comes from
tests/protocol/support.py.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import requests

from corpus_support import MARKERS, READY_TIMEOUT_S, CorpusServer, corpus
from support import ServalServer


def pytest_configure(config):
    for name, doc in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")


def _index(url: str) -> dict:
    res = requests.post(f"{url}/v2/repository/index", json={}, timeout=10)
    res.raise_for_status()
    return {e["name"]: (e["state"], e["reason"]) for e in res.json()}


@pytest.fixture(scope="session")
def corpus_server():
    """`serval serve <corpus>` with no config.toml; waits until every model is ready or has
    failed (its reason is then what the tests for it report)."""
    models = sorted(corpus().models)
    # The server finds ONNX Runtime through the `python3` on PATH: make that the interpreter
    # whose onnxruntime computes the reference outputs.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    try:
        server = ServalServer(repo=corpus().root, start_timeout=READY_TIMEOUT_S)
    except RuntimeError as err:
        pytest.fail(str(err), pytrace=False)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        ready = {
            m: requests.get(f"{server.url}/v2/models/{m}/ready", timeout=10).status_code == 200
            for m in models
        }
        index = _index(server.url)
        settled = all(ready[m] or index.get(m, ("",))[0] == "UNAVAILABLE" for m in models)
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    status = {m: ("READY", "") if ready[m] else index.get(m, ("LOADING", "still loading after "
              f"{READY_TIMEOUT_S:.0f}s")) for m in models}
    yield CorpusServer(server, status)
    alive_before_stop = server.alive()
    code = server.terminate(timeout=10.0)
    assert alive_before_stop, f"serval died during the tests:\n{server.stderr_text()}"
    assert code == 0, f"serval exited with {code} after SIGTERM:\n{server.stderr_text()}"


@pytest.fixture(scope="session")
def triton_http(corpus_server):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(
        url=corpus_server.server.http_addr, network_timeout=120.0
    )
    yield client
    client.close()


@pytest.fixture(scope="session")
def triton_grpc(corpus_server):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url=corpus_server.server.grpc_addr)
    yield client
    client.close()


@pytest.fixture(scope="session")
def http(corpus_server):
    with requests.Session() as s:
        yield s
