"""Replays the corpus of malformed and hostile requests (corpus/*.jsonl, written by
corpus/generate.py) against one real server, on TF Serving REST, v2 REST (JSON and binary) and
v2 gRPC. Each request must be refused with the status or gRPC code its entry names and a short
error naming the problem; after all of them the server must still serve every protocol, in
bounded memory. Adding a case is adding a line of data, not a test."""

from __future__ import annotations

import base64
import importlib.util
import json
from pathlib import Path

import grpc
import pytest
import requests

from support import assert_error
from test_bad_requests import check_serves

CORPUS = Path(__file__).resolve().parent / "corpus"
ENTRIES = [
    json.loads(line)
    for path in sorted(CORPUS.glob("*.jsonl"))
    for line in path.read_text(encoding="utf-8").splitlines()
]
# Errors quote what the client sent cut to about a kilobyte, whatever the client sent.
MAX_ERROR_BYTES = 1200
MAX_RSS_KIB = 1 << 20  # 1 GiB, far above what the corpus should cost
REFUSED_CODES = {c.name for c in grpc.StatusCode} - {"OK", "INTERNAL", "UNKNOWN"}


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_addr) as channel:
        yield channel


def _body(entry) -> bytes:
    if "body_b64" in entry:
        return base64.b64decode(entry["body_b64"])
    return entry["body"].encode("utf-8")


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["id"] for e in ENTRIES])
def test_refused(entry, server, channel):
    if "rpc" in entry:
        # No serializers: the bytes go out as they are, garbage included.
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{entry['rpc']}")
        with pytest.raises(grpc.RpcError) as err:
            call(base64.b64decode(entry["request_b64"]), timeout=10)
        code, error = err.value.code().name, err.value.details() or ""
        assert code == entry["expect_code"], (code, error)
        assert error, f"{code} without a message"
        for needle in entry["expect_in_error"]:
            assert needle.lower() in error.lower(), f"{needle!r} not in error {error!r}"
        size = len(error.encode())
    else:
        # A connection of its own: some refusals close theirs, and a pooled connection would
        # race that close (a server bug the corpus is not about).
        r = requests.request(
            entry["method"],
            server.url + entry["path"],
            data=_body(entry),
            headers=entry.get("headers", {}),
            timeout=10,
        )
        assert_error(r, entry["expect_status"], *entry["expect_in_error"])
        assert list(r.json()) == ["error"], r.text[:500]
        size = len(r.content)
    assert size < MAX_ERROR_BYTES, f"the error is {size} bytes"


def test_corpus_is_large_unique_and_as_generated():
    ids = [e["id"] for e in ENTRIES]
    assert len(ids) >= 300, len(ids)
    assert len(set(ids)) == len(ids), sorted({i for i in ids if ids.count(i) > 1})
    for e in ENTRIES:
        assert e["expect_in_error"], f"{e['id']}: no needle names the problem"
        assert e.get("expect_code") in REFUSED_CODES or 400 <= e.get("expect_status", 0) < 500, e["id"]
    spec = importlib.util.spec_from_file_location("corpus_generate", CORPUS / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    for name, content in generate.render().items():
        assert (CORPUS / name).read_text(
            encoding="utf-8"
        ) == content, f"{name} is stale: run corpus/generate.py"


def test_server_survives_the_corpus(server):
    """Runs after the replay (pytest keeps definition order): still serving, memory bounded."""
    check_serves(server)
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    rss_kib = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
    assert rss_kib < MAX_RSS_KIB, f"RSS {rss_kib} KiB after the corpus"
