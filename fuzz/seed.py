"""Seeds fuzz/corpus/<target>/ from the committed bad-input corpus (tests/protocol/corpus), so
the fuzzers start from requests that reach deep into each decoder, plus valid ones. Inputs a
fuzzer finds are added beside these (`cargo +nightly fuzz run <target>` writes them there).
Deterministic: names are a hash of the content. Run: python fuzz/seed.py"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CORPUS = ROOT.parent / "tests" / "protocol" / "corpus"


def entries(name: str):
    for line in (CORPUS / name).read_text().splitlines():
        yield json.loads(line)


def body(entry) -> bytes:
    return base64.b64decode(entry["body_b64"]) if "body_b64" in entry else entry.get("body", "").encode()


def write(target: str, data: bytes):
    out = ROOT / "corpus" / target
    out.mkdir(parents=True, exist_ok=True)
    (out / hashlib.sha1(data).hexdigest()).write_bytes(data)


def main():
    valid_instances = [b'[[5.1, 3.5, 1.4, 0.2]]', b'[{"key": "k", "features": [1, 2, 3]}, {"features": [4, 5, 6]}]']
    for seed in valid_instances:
        write("tf_instances", seed)
    for entry in entries("tfserving.jsonl"):
        raw = body(entry)
        try:
            request = json.loads(raw)
        except (ValueError, RecursionError):
            write("tf_instances", raw)
            continue
        if isinstance(request, dict) and "instances" in request:
            write("tf_instances", json.dumps(request["instances"]).encode())
    valid_v2 = json.dumps({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
                                       "data": [5.1, 3.5, 1.4, 0.2]}]}).encode()
    write("v2_infer", struct.pack("<H", len(valid_v2)) + valid_v2)
    for name in ("v2_json.jsonl", "v2_binary.jsonl"):
        for entry in entries(name):
            raw = body(entry)
            length = {k.lower(): v for k, v in entry.get("headers", {}).items()}.get(
                "inference-header-content-length", str(len(raw)))
            try:
                n = min(int(length), 0xFFFF)
            except ValueError:
                n = len(raw)
            write("v2_infer", struct.pack("<H", max(n, 0)) + raw)
    for entry in entries("grpc.jsonl"):
        if entry["rpc"] == "ModelInfer":
            write("grpc_model_infer", base64.b64decode(entry["request_b64"]))


if __name__ == "__main__":
    main()
