"""Fixtures: a real `serval serve` process (and a second one with small limits) on loopback.

The binary is `target/debug/serval` (build with `cargo build -p serval-cli`), or `$SERVAL_BIN`.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import requests

from support import MODELS, REPO, ROOT, serval_bin, serving

LIMITED_MAX_BODY_BYTES = 10_000
LIMITED_MAX_INSTANCES = 50


def _serve(*args: str):
    try:
        with serving(*args, stop_timeout=10.0) as server:
            yield server
    except RuntimeError as err:  # it did not start
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="session")
def server():
    """The server under test, default limits; SIGTERM at the end must exit 0 within 10 s."""
    yield from _serve()


@pytest.fixture(scope="session")
def limited_server():
    """A second server with small body and instance limits."""
    yield from _serve(
        "--max-body-bytes",
        str(LIMITED_MAX_BODY_BYTES),
        "--max-instances",
        str(LIMITED_MAX_INSTANCES),
    )


@pytest.fixture(scope="session")
def http(server):
    """A requests session; base URL in `server.url`."""
    with requests.Session() as s:
        yield s


@pytest.fixture(scope="session")
def triton_http(server):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=server.http_addr, concurrency=4)
    yield client
    client.close()


@pytest.fixture(scope="session")
def triton_grpc(server):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url=server.grpc_addr)
    yield client
    client.close()


@pytest.fixture(scope="session")
def grpc_stub(server):
    """The raw generated stub, for requests tritonclient would not send."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    channel = grpc.insecure_channel(server.grpc_addr)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


@pytest.fixture(scope="session")
def inspect_json():
    """`serval inspect examples/models <m> --json` for every model, by name."""
    out = {}
    for model in MODELS:
        res = subprocess.run(
            [str(serval_bin()), "inspect", str(REPO), model, "--json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        (entry,) = json.loads(res.stdout)
        assert entry["model"] == model
        out[model] = entry
    return out
