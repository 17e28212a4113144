"""The server-side cascade (`kind = "cascade"`, examples/models/digits_cascade) against real
`serval serve` processes and every protocol's real client. The oracle is onnxruntime running
both phase files, with phase 1's `[edge]` policy read from its config.toml and applied here."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.dataset as ds
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from support import REPO, ROOT, ServalServer, is_uuid7, serval_bin, texts

CASCADE = "digits_cascade"
DATA = ROOT / "examples" / "data" / "digits_two_phase.jsonl"


def instances() -> tuple[list[str], np.ndarray]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    return [r["key"] for r in rows], np.array([r["features"] for r in rows], dtype=np.float32)


def expected(x: np.ndarray, repo: Path = REPO) -> dict[str, np.ndarray]:
    """What the cascade must answer, computed from the two ONNX files and the policy."""
    def probabilities(model: str) -> np.ndarray:
        session = ort.InferenceSession(str(repo / model / "1" / "model.onnx"))
        names = [o.name for o in session.get_outputs()]
        return session.run(None, {session.get_inputs()[0].name: x})[names.index("probabilities")]

    phase1 = tomllib.loads((repo / "digits_phase1" / "config.toml").read_text())
    policy = phase1["edge"]
    phase2_labels = tomllib.loads((repo / policy["phase2"] / "config.toml").read_text())["class_labels"]
    p1, p2 = probabilities("digits_phase1"), probabilities(policy["phase2"])
    cls1 = np.array(phase1["class_labels"])[p1.argmax(axis=1)]
    conf1 = p1.max(axis=1)
    low, high = (np.float32(b) for b in policy["forward"]["confidence"])
    by_class = np.isin(cls1, policy["forward"]["classes"])
    by_confidence = (low <= conf1) & (conf1 < high)
    assert policy["forward"]["when"] == "all"
    forward = by_class & by_confidence
    return {
        "class": np.where(forward, np.array(phase2_labels)[p2.argmax(axis=1)], cls1),
        "confidence": np.where(forward, p2.max(axis=1), conf1),
        "phase": np.where(forward, 2, 1),
    }


def assert_answers(got: dict, want: dict, rows: slice | None = None):
    rows = rows or slice(None)
    assert texts(got["class"]) == list(want["class"][rows])
    np.testing.assert_array_equal(np.asarray(got["phase"]).ravel(), want["phase"][rows])
    np.testing.assert_allclose(np.asarray(got["confidence"], dtype=np.float64).ravel(),
                               want["confidence"][rows], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def server():
    s = ServalServer()
    yield s
    s.kill()


@pytest.fixture(scope="module")
def oracle():
    keys, x = instances()
    want = expected(x)
    forwarded = int((want["phase"] == 2).sum())
    # The example is only a test of the cascade when both phases answer some of it.
    assert 0 < forwarded < len(x), forwarded
    return keys, x, want


def test_v2_rest_answers_with_class_confidence_phase_and_keys(server, oracle):
    keys, x, want = oracle
    for start in range(0, len(x), 200):
        rows = slice(start, start + 200)
        body = {"inputs": [
            {"name": "features", "shape": list(x[rows].shape), "datatype": "FP32",
             "data": x[rows].ravel().tolist()},
            {"name": "key", "shape": [len(x[rows])], "datatype": "BYTES", "data": keys[rows]},
        ]}
        r = requests.post(f"{server.url}/v2/models/{CASCADE}/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        reply = r.json()
        assert reply["model_name"] == CASCADE and reply["model_version"] == "1"
        outputs = {o["name"]: o for o in reply["outputs"]}
        assert {n: (o["datatype"], o["shape"]) for n, o in outputs.items() if n != "key"} == {
            "class": ("BYTES", [len(x[rows])]), "confidence": ("FP32", [len(x[rows])]),
            "phase": ("INT32", [len(x[rows])])}
        assert outputs["key"]["data"] == keys[rows]
        assert_answers({n: o["data"] for n, o in outputs.items()}, want, rows)


def test_grpc_and_binary_http_clients_get_the_same_answers(server, oracle):
    keys, x, want = oracle
    rows = slice(0, 300)
    grpc = grpcclient.InferenceServerClient(server.grpc_addr)
    features = grpcclient.InferInput("features", list(x[rows].shape), "FP32")
    features.set_data_from_numpy(x[rows])
    reply = grpc.infer(CASCADE, [features])
    got = {n: reply.as_numpy(n) for n in ("class", "confidence", "phase")}
    assert_answers(got, want, rows)
    minted = texts(reply.as_numpy("key"))
    assert len(set(minted)) == 300 and all(is_uuid7(k) for k in minted)

    http = httpclient.InferenceServerClient(server.http_addr)
    features = httpclient.InferInput("features", list(x[rows].shape), "FP32")
    features.set_data_from_numpy(x[rows], binary_data=True)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in ("class", "phase")]
    reply = http.infer(CASCADE, [features], outputs=outputs)
    assert texts(reply.as_numpy("class")) == list(want["class"][rows])
    np.testing.assert_array_equal(reply.as_numpy("phase"), want["phase"][rows])
    assert reply.as_numpy("confidence") is None, "only the outputs asked for"


def test_tf_serving_rest_rows_carry_the_answering_phase(server, oracle):
    keys, x, want = oracle
    rows = slice(300, 400)
    body = {"instances": [{"key": k, "features": f.tolist()} for k, f in zip(keys[rows], x[rows])]}
    r = requests.post(f"{server.url}/v1/models/{CASCADE}:predict", json=body, timeout=30)
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert [p["key"] for p in predictions] == keys[rows]
    assert_answers({n: [p[n] for p in predictions] for n in ("class", "confidence", "phase")}, want, rows)


def test_metadata_and_config_describe_the_cascade_and_its_phases(server):
    meta = requests.get(f"{server.url}/v2/models/{CASCADE}", timeout=10).json()
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 64]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
        ("class", "BYTES", [-1]), ("confidence", "FP32", [-1]), ("phase", "INT32", [-1])]
    config = requests.get(f"{server.url}/v2/models/{CASCADE}/config", timeout=10)
    assert config.status_code == 200, config.text
    text = json.dumps(config.json())
    assert "cascade" in text and "digits_phase1 v1" in text and "digits_phase2 v1" in text, text
    # The phases are served on their own as well.
    for phase in ("digits_phase1", "digits_phase2"):
        assert requests.get(f"{server.url}/v2/models/{phase}/ready", timeout=10).status_code == 200


def test_bad_input_is_refused_naming_it(server):
    body = {"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [0, 0, 0]}]}
    r = requests.post(f"{server.url}/v2/models/{CASCADE}/infer", json=body, timeout=10)
    assert r.status_code == 400 and "features" in r.json()["error"], r.text


def test_log_records_each_instance_with_its_key_and_phase(tmp_path, oracle):
    keys, x, want = oracle
    log = tmp_path / "log"
    server = ServalServer("--prediction-log", str(log))
    rows = slice(0, 120)
    try:
        body = {"instances": [{"key": k, "features": f.tolist()} for k, f in zip(keys[rows], x[rows])]}
        r = requests.post(f"{server.url}/v1/models/{CASCADE}:predict", json=body, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        assert server.terminate() == 0, server.stderr_text()
    table = ds.dataset(log / "predictions", format="parquet", partitioning="hive").to_table()
    records = {r["key"]: r for r in table.to_pylist() if r["model"] == CASCADE}
    assert set(records) == set(keys[rows])
    for i, key in enumerate(keys[rows]):
        outputs = json.loads(records[key]["outputs"])
        assert (outputs["class"], outputs["phase"]) == (want["class"][i], want["phase"][i]), key
        assert json.loads(records[key]["inputs"])["features"] == pytest.approx(x[i].tolist())


def test_cli_predict_runs_the_cascade_from_the_repository(oracle):
    keys, x, want = oracle
    out = subprocess.run([str(serval_bin()), "predict", str(REPO), CASCADE, "--input", str(DATA)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["key"] for r in rows] == keys
    assert_answers({n: [r[n] for r in rows] for n in ("class", "confidence", "phase")}, want)


def copy_repo(tmp_path: Path, *models: str) -> Path:
    repo = tmp_path / "repo"
    for model in models:
        shutil.copytree(REPO / model, repo / model)
    return repo


def reason_for(server: ServalServer, model: str) -> str:
    index = requests.post(f"{server.url}/v2/repository/index", json={}, timeout=10).json()
    return " ".join(e.get("reason", "") for e in index if e["name"] == model)


def test_a_cascade_that_cannot_be_built_says_why_and_the_rest_serves(tmp_path):
    repo = copy_repo(tmp_path, "digits_phase1", "iris_lr", CASCADE)
    (repo / "no_policy" / "1").mkdir(parents=True)
    (repo / "no_policy" / "config.toml").write_text('kind = "cascade"\n[cascade]\nphase1 = "iris_lr"\n')
    (repo / "unknown_phase" / "1").mkdir(parents=True)
    (repo / "unknown_phase" / "config.toml").write_text('kind = "cascade"\n[cascade]\nphase1 = "nowhere"\n')
    server = ServalServer(repo=repo)
    try:
        # digits_phase2 is missing, so the example cascade cannot be built.
        assert "digits_phase2" in reason_for(server, CASCADE)
        assert "no policy" in reason_for(server, "no_policy")
        assert "nowhere" in reason_for(server, "unknown_phase")
        r = requests.post(f"{server.url}/v2/models/{CASCADE}/infer", json={"inputs": []}, timeout=10)
        assert r.status_code == 503 and "digits_phase2" in r.json()["error"], r.text
        assert requests.get(f"{server.url}/v2/models/iris_lr/ready", timeout=10).status_code == 200
    finally:
        server.kill()


def test_a_policy_change_in_phase_1_rebuilds_the_served_cascade(tmp_path, oracle):
    keys, x, _ = oracle
    repo = copy_repo(tmp_path, "digits_phase1", "digits_phase2", CASCADE)
    server = ServalServer("--poll-interval-secs", "0.2", repo=repo)
    body = {"inputs": [{"name": "features", "shape": list(x[:50].shape), "datatype": "FP32",
                        "data": x[:50].ravel().tolist()}]}

    def phases() -> list[int]:
        r = requests.post(f"{server.url}/v2/models/{CASCADE}/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        return next(o["data"] for o in r.json()["outputs"] if o["name"] == "phase")

    try:
        assert phases() == list(expected(x[:50], repo)["phase"])
        config = repo / "digits_phase1" / "config.toml"
        # Every digit now goes to phase 2, however sure phase 1 is.
        config.write_text(config.read_text().replace("confidence = [0.0, 0.95]", "confidence = [0.0, 1.0]"))
        want = list(expected(x[:50], repo)["phase"])
        assert want != phases()
        deadline = time.monotonic() + 60
        while phases() != want:
            assert time.monotonic() < deadline, "the cascade still runs the old policy"
            time.sleep(0.2)
    finally:
        server.kill()


def test_batch_job_runs_the_cascade_and_keeps_keys(tmp_path, oracle):
    keys, x, want = oracle
    out = tmp_path / "out"
    res = subprocess.run([str(serval_bin()), "batch", str(REPO), CASCADE, "--input", str(DATA),
                          "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (out / "_SUCCESS").is_file()
    rows = {r["key"]: r for r in ds.dataset(out, format="parquet").to_table().to_pylist()}
    assert set(rows) == set(keys)
    assert_answers({n: [rows[k][n] for k in keys] for n in ("class", "confidence", "phase")}, want)
