"""`serval serve --precomputed MODEL=DIR`: keys a batch job predicted are answered from its
output (marked with the job's finish time), others by the live model, and a newer job's output
replaces the table while the server runs."""

from __future__ import annotations

import time

import numpy as np
import pytest
import requests

from batch_support import EXAMPLE_CSV, MODEL, batch_ok, read_manifest
from support import GOLDEN, ServalServer, assert_outputs_match, features, golden_keys

HEADER = "serval-precomputed-at"


def infer(server, rows_features, keys, signature=None):
    x = np.asarray(rows_features, dtype=np.float32)
    body = {
        "inputs": [
            {"name": "features", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()},
            {"name": "key", "shape": [len(keys)], "datatype": "BYTES", "data": keys},
        ]
    }
    if signature:
        body["parameters"] = {"signature_name": signature}
    res = requests.post(f"{server.url}/v2/models/{MODEL}/infer", json=body, timeout=10)
    assert res.status_code == 200, res.text
    payload = res.json()
    outputs = {
        o["name"]: np.array(o["data"], dtype=object if o["datatype"] == "BYTES" else None).reshape(o["shape"])
        for o in payload["outputs"]
    }
    return res, payload, outputs


def precomputed_at(res, payload):
    """The header's value, after checking the body agrees with it."""
    header = res.headers.get(HEADER)
    body = (payload.get("parameters") or {}).get("precomputed_at")
    assert header == body, f"header {header!r} != body parameter {body!r}"
    return header


@pytest.fixture
def served_table(tmp_path):
    out = tmp_path / "precomputed"
    manifest = batch_ok("--input", EXAMPLE_CSV, "--output", out)
    assert manifest["rows_out"] == 25
    try:
        server = ServalServer("--precomputed", f"{MODEL}={out}", "--poll-interval-secs", "0.5")
    except RuntimeError as err:
        pytest.fail(str(err), pytrace=False)
    yield server, out, manifest
    alive = server.alive()
    code = server.terminate(timeout=10.0)
    assert alive, f"serval died during the test:\n{server.stderr_text()}"
    assert code == 0, f"serval exited with {code} after SIGTERM:\n{server.stderr_text()}"


def precomputed_instances(server) -> float:
    """`serval_precomputed_instances_total` for the model, summed over versions (0 if absent)."""
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("serval_precomputed_instances_total{") and f'model="{MODEL}"' in line
    )


def test_known_keys_come_from_the_table(served_table):
    server, _, manifest = served_table
    rows = [0, 4, 9]
    # Features of other rows: only a table lookup by key can give the keys' golden outputs.
    res, payload, out = infer(server, features(MODEL, [1, 2, 3]), golden_keys(MODEL, rows))
    assert precomputed_at(res, payload) == manifest["finished_at"]
    assert payload["model_version"] == "1"
    assert list(out["key"]) == golden_keys(MODEL, rows)
    assert_outputs_match(MODEL, out, rows=rows)
    assert precomputed_instances(server) == len(rows)


def test_unknown_keys_go_to_the_live_model(served_table):
    server, _, _ = served_table
    res, payload, out = infer(server, features(MODEL, [5]), ["not-in-the-table"])
    assert precomputed_at(res, payload) is None
    assert_outputs_match(MODEL, out, rows=[5])
    # One unknown key among known ones: the whole request is live.
    res, payload, out = infer(server, features(MODEL, [5, 6]), [golden_keys(MODEL, [5])[0], "not-in-the-table"])
    assert precomputed_at(res, payload) is None
    assert_outputs_match(MODEL, out, rows=[5, 6])
    # Keyless instances (minted keys) are never in the table.
    x = features(MODEL, [7]).tolist()
    res = requests.post(f"{server.url}/v2/models/{MODEL}/infer", json={
        "inputs": [{"name": "features", "shape": [1, 30], "datatype": "FP32", "data": x[0]}]}, timeout=10)
    assert res.status_code == 200, res.text
    assert HEADER not in res.headers
    assert precomputed_instances(server) == 0


def test_other_signature_goes_to_the_live_model(served_table):
    server, _, _ = served_table
    res, payload, out = infer(server, features(MODEL, [2]), golden_keys(MODEL, [2]), signature="screening")
    assert precomputed_at(res, payload) is None
    assert_outputs_match(MODEL, out, rows=[2], signature="screening")


def test_new_batch_output_replaces_the_table(served_table, tmp_path):
    server, out, first = served_table
    key0 = golden_keys(MODEL, [0])[0]
    res, payload, got = infer(server, features(MODEL, [0]), [key0])
    assert precomputed_at(res, payload) == first["finished_at"]
    assert_outputs_match(MODEL, got, rows=[0])
    g = GOLDEN[MODEL]
    assert g["outputs"]["label"][0] != g["outputs"]["label"][1], "rows 0 and 1 must differ for this test"

    # Row 0's key now carries row 1's features: the new table predicts row 1's outputs for it.
    lines = EXAMPLE_CSV.read_text(encoding="utf-8").splitlines()
    assert lines[1].startswith(key0 + ",")
    lines[1] = key0 + "," + lines[2].split(",", 1)[1]
    changed = tmp_path / "changed.csv"
    changed.write_text("\n".join(lines) + "\n", encoding="utf-8")
    batch_ok("--input", changed, "--output", out, "--overwrite")
    second = read_manifest(out)
    assert second["finished_at"] != first["finished_at"]

    deadline = time.monotonic() + 30
    while True:
        res, payload, got = infer(server, features(MODEL, [0]), [key0])
        at = precomputed_at(res, payload)
        assert at in (first["finished_at"], second["finished_at"]), f"unexpected {HEADER}: {at!r}"
        if at == second["finished_at"]:
            break
        assert time.monotonic() < deadline, "the new batch output was never picked up"
        time.sleep(0.2)
    assert_outputs_match(MODEL, {"label": got["label"], "probabilities": got["probabilities"]}, rows=[1])
    # Other keys are still served from the (new) table.
    res, payload, got = infer(server, features(MODEL, [3]), golden_keys(MODEL, [3]))
    assert precomputed_at(res, payload) == second["finished_at"]
    assert_outputs_match(MODEL, got, rows=[3])
    assert server.alive(), server.stderr_text()


def test_table_of_another_signature_serves_only_that_signature(tmp_path):
    out = tmp_path / "screening"
    manifest = batch_ok("--input", EXAMPLE_CSV, "--output", out, "--signature", "screening")
    server = ServalServer("--precomputed", f"{MODEL}={out}")
    try:
        keys = golden_keys(MODEL, [2, 3])
        res, payload, got = infer(server, features(MODEL, [2, 3]), keys, signature="screening")
        assert precomputed_at(res, payload) == manifest["finished_at"]
        assert_outputs_match(MODEL, got, rows=[2, 3], signature="screening")
        res, payload, got = infer(server, features(MODEL, [2, 3]), keys)
        assert precomputed_at(res, payload) is None
        assert_outputs_match(MODEL, got, rows=[2, 3])
    finally:
        assert server.terminate(timeout=10.0) == 0, server.stderr_text()


def test_precomputed_for_unserved_model_is_a_startup_error(tmp_path):
    with pytest.raises(RuntimeError, match="no_such_model"):
        ServalServer("--precomputed", f"no_such_model={tmp_path}")
