"""The prediction log against real `serval serve` processes and real files: keys from every
protocol are logged, `kill -9` loses no acknowledged prediction in synced mode, two replicas share
one directory. Every check reads the Parquet with pyarrow, not with Serval's own reader."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import requests
import tritonclient.grpc as grpcclient

from support import REPO, ServalServer, is_uuid7, serval_bin

MODEL = "iris_lr"
ROW = [5.1, 3.5, 1.4, 0.2]


def logged(root: Path):
    """Every logged prediction, read by pyarrow from the hive-partitioned Parquet files."""
    table = ds.dataset(root / "predictions", format="parquet", partitioning="hive").to_table()
    return table.to_pylist()


def repo_with(tmp_path: Path, logging: str) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(REPO / MODEL, repo / MODEL)
    (repo / MODEL / "config.toml").write_text(f"[logging]\n{logging}\n")
    return repo


def v2_body(key: str | None, rows=1) -> dict:
    inputs = [{"name": "features", "shape": [rows, 4], "datatype": "FP32", "data": ROW * rows}]
    if key is not None:
        inputs.append({"name": "key", "shape": [1], "datatype": "BYTES", "data": [key]})
    return {"id": f"req-{key}", "inputs": inputs}


class Traffic:
    """v2 REST predictions from worker threads, each with its own key, until stopped (or the
    server dies): every answered key with the time of its answer."""

    def __init__(self, server: ServalServer, prefix: str, workers: int):
        self.answered: list[tuple[str, float]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, args=(server, f"{prefix}{w}"))
                         for w in range(workers)]
        for t in self._threads:
            t.start()

    def _send(self, server: ServalServer, prefix: str) -> None:
        session = requests.Session()
        n = 0
        while not self._stop.is_set():
            key = f"{prefix}-{n}"
            n += 1
            try:
                r = session.post(f"{server.url}/v2/models/{MODEL}/infer", json=v2_body(key), timeout=5)
            except requests.RequestException:
                return  # the server was killed mid-request: not answered
            if r.status_code == 200:
                with self._lock:
                    self.answered.append((key, time.monotonic()))

    def wait_for(self, answered: int, seconds: float = 60) -> None:
        deadline = time.time() + seconds
        while len(self.answered) < answered and time.time() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)


def test_keys_from_every_protocol_are_logged_with_inputs_and_outputs(tmp_path):
    log = tmp_path / "log"
    server = ServalServer("--prediction-log", str(log), repo=repo_with(tmp_path, ""))
    try:
        tf = requests.post(f"{server.url}/v1/models/{MODEL}:predict",
                           json={"instances": [{"key": "tf-1", "features": ROW}, {"features": ROW}]}, timeout=10)
        assert tf.status_code == 200, tf.text
        minted = tf.json()["predictions"][1]["key"]
        rest = requests.post(f"{server.url}/v2/models/{MODEL}/infer", json=v2_body("rest-1"), timeout=10)
        assert rest.status_code == 200, rest.text
        client = grpcclient.InferenceServerClient(server.grpc_addr)
        features = grpcclient.InferInput("features", [1, 4], "FP32")
        features.set_data_from_numpy(np.array([ROW], dtype=np.float32))
        key = grpcclient.InferInput("key", [1], "BYTES")
        key.set_data_from_numpy(np.array([b"grpc-1"], dtype=np.object_))
        client.infer(MODEL, [features, key], request_id="grpc-request")
    finally:
        assert server.terminate() == 0, server.stderr_text()
    records = {r["key"]: r for r in logged(log)}
    assert set(records) == {"tf-1", minted, "rest-1", "grpc-1"}, records.keys()
    assert is_uuid7(minted)
    assert {k: records[k]["protocol"] for k in records} == {
        "tf-1": "tfserving", minted: "tfserving", "rest-1": "v2_rest", "grpc-1": "v2_grpc"}
    assert records["rest-1"]["request_id"] == "req-rest-1"
    assert records["grpc-1"]["request_id"] == "grpc-request"
    for record in records.values():
        assert record["model"] == MODEL and record["version"] == 1 and record["source"] == "online"
        assert json.loads(record["inputs"]) == {"features": pytest.approx(ROW)}
        outputs = json.loads(record["outputs"])
        assert set(outputs) == {"label", "probabilities"} and len(outputs["probabilities"]) == 3
    # The answer and the log agree.
    assert json.loads(records["rest-1"]["outputs"])["probabilities"] == pytest.approx(
        rest.json()["outputs"][1]["data"], rel=1e-6)


def test_kill_9_under_load_loses_no_acknowledged_prediction_in_synced_mode(tmp_path):
    log = tmp_path / "log"
    repo = repo_with(tmp_path, 'durability = "synced"')
    server = ServalServer("--prediction-log", str(log), repo=repo)
    traffic = Traffic(server, "w", workers=4)
    # Enough traffic that the kill lands mid-stream; a count, not a rate, so a slow machine
    # only takes longer.
    traffic.wait_for(100)
    server.kill()  # SIGKILL: no shutdown, no roll
    traffic.stop()
    acknowledged = [key for key, _ in traffic.answered]
    assert len(acknowledged) >= 100, server.stderr_text()
    # The dead process's segments are still write-ahead, not Parquet.
    assert list((log / "_wal").rglob("*.seg")), "segments should survive kill -9"
    # A restarted server adopts the dead process's folder and rolls it; a clean stop rolls its own.
    restarted = ServalServer("--prediction-log", str(log), repo=repo)
    assert restarted.terminate() == 0, restarted.stderr_text()
    keys = [r["key"] for r in logged(log)]
    missing = set(acknowledged) - set(keys)
    assert not missing, f"{len(missing)} acknowledged predictions lost, e.g. {sorted(missing)[:5]}"
    assert len(keys) == len(set(keys)), "a record was rolled twice"
    assert not list((log / "_wal").rglob("*.seg")), "every segment was rolled"


def test_two_replicas_share_one_directory(tmp_path):
    log = tmp_path / "log"
    repo = repo_with(tmp_path, "")
    replicas = [ServalServer("--prediction-log", str(log), "--replica-id", f"r{i}", repo=repo) for i in range(2)]
    sent = []
    try:
        for i in range(200):
            server = replicas[i % 2]
            key = f"k{i}"
            r = requests.post(f"{server.url}/v2/models/{MODEL}/infer", json=v2_body(key), timeout=10)
            assert r.status_code == 200, r.text
            sent.append(key)
    finally:
        for server in replicas:
            assert server.terminate() == 0, server.stderr_text()
    keys = [r["key"] for r in logged(log)]
    assert sorted(keys) == sorted(sent), "every key of both replicas exactly once"
    files = {p.name for p in (log / "predictions").rglob("*.parquet")}
    assert any(f.startswith("r0-") for f in files) and any(f.startswith("r1-") for f in files), files


def test_sql_reads_the_log(tmp_path):
    log = tmp_path / "log"
    server = ServalServer("--prediction-log", str(log), repo=repo_with(tmp_path, ""))
    try:
        for i in range(5):
            r = requests.post(f"{server.url}/v2/models/{MODEL}/infer", json=v2_body(f"s{i}"), timeout=10)
            assert r.status_code == 200, r.text
    finally:
        assert server.terminate() == 0, server.stderr_text()
    out = subprocess.run(
        [str(serval_bin()), "sql", str(REPO),
         f"SELECT count(DISTINCT key) AS n FROM predictions WHERE model = '{MODEL}'",
         "--prediction-log", str(log)],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "| 5 " in out.stdout, out.stdout


def test_sql_has_a_typed_table_per_logged_model(tmp_path):
    from test_labels import sql
    log = tmp_path / "log"
    repo = repo_with(tmp_path, "")
    shutil.copytree(REPO / "breast_cancer_lr", repo / "breast_cancer_lr")
    breast_row = [float(x) for x in (REPO.parent / "data" / "breast_cancer.csv").read_text()
                  .splitlines()[1].split(",")[1:31]]
    server = ServalServer("--prediction-log", str(log), repo=repo)
    try:
        iris = requests.post(f"{server.url}/v2/models/{MODEL}/infer", json=v2_body("i-1"), timeout=10)
        assert iris.status_code == 200, iris.text
        screening = requests.post(f"{server.url}/v1/models/breast_cancer_lr:predict", json={
            "signature_name": "screening", "instances": [{"key": "b-1", "features": breast_row}]}, timeout=10)
        assert screening.status_code == 200, screening.text
        labels = requests.post(f"{server.url}/v1/models/{MODEL}/labels",
                               json={"labels": [{"key": "i-1", "label": 0}]}, timeout=10)
        assert labels.status_code == 200, labels.text
    finally:
        assert server.terminate() == 0, server.stderr_text()
    # Columns typed as `serval batch` writes them: the model's own types, not JSON text.
    assert sql(log, "SELECT arrow_typeof(features), arrow_typeof(label), arrow_typeof(probabilities) "
                    f"FROM {MODEL}") == [["FixedSizeList(4 x Float32)", "Int64", "FixedSizeList(3 x Float32)"]]
    [[key, label, p0]] = sql(log, f"SELECT key, label, probabilities[1] FROM {MODEL}")
    outputs = {o["name"]: o["data"] for o in iris.json()["outputs"]}
    assert (key, int(label)) == ("i-1", outputs["label"][0])
    assert float(p0) == pytest.approx(outputs["probabilities"][0], rel=1e-6)
    assert sql(log, f"SELECT features[4] FROM {MODEL}") == [["0.2"]]
    # Another signature's outputs are columns too; a record of another signature has them null.
    [[key, signature, diagnosis]] = sql(log, "SELECT key, signature, diagnosis FROM breast_cancer_lr")
    assert (key, signature, diagnosis) == ("b-1", "screening", screening.json()["predictions"][0]["diagnosis"])
    # A model's predictions and their labels: accuracy in one query.
    assert sql(log, f"SELECT avg(CASE WHEN p.label = l.label_value THEN 1.0 ELSE 0.0 END) FROM {MODEL} p "
                    "JOIN labels l ON l.model = 'iris_lr' AND l.key = p.key") == [["1.0"]]


def run_batch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(serval_bin()), "batch", str(REPO), "breast_cancer_lr", *args],
                          capture_output=True, text=True, timeout=300)


def test_batch_predictions_are_logged_with_the_output_keys(tmp_path):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    table = pacsv.read_csv(REPO.parent / "data" / "breast_cancer.csv")
    # No key column: every key is minted, and the log must hold the very keys the output holds.
    pacsv.write_csv(table.drop_columns(["key"]), tmp_path / "unkeyed.csv")
    log = tmp_path / "log"
    log.mkdir()
    out = run_batch("--input", str(tmp_path / "unkeyed.csv"), "--output", str(tmp_path / "out"),
                    "--prediction-log", str(log))
    assert out.returncode == 0, out.stderr
    output = pq.read_table(tmp_path / "out").to_pylist()
    records = {r["key"]: r for r in logged(log)}
    assert set(records) == {row["key"] for row in output} and len(records) == table.num_rows
    for row in output:
        record = records[row["key"]]
        assert (record["source"], record["protocol"], record["version"]) == ("batch", "batch", 1)
        assert json.loads(record["outputs"])["probabilities"] == pytest.approx(row["probabilities"], rel=1e-6)
    assert len({r["request_id"] for r in records.values()}) == 1, "one job, one request id"
    assert not list((log / "_wal").rglob("*.seg")), "the job's log was rolled when it finished"


def test_batch_time_column_back_dates_the_log(tmp_path):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    table = pacsv.read_csv(REPO.parent / "data" / "breast_cancer.csv")
    days = [f"2024-03-{1 + i % 3:02d}T12:00:00Z" for i in range(table.num_rows)]
    pacsv.write_csv(table.append_column("observed", pa.array(days)), tmp_path / "history.csv")
    log = tmp_path / "log"
    log.mkdir()
    out = run_batch("--input", str(tmp_path / "history.csv"), "--output", str(tmp_path / "out"),
                    "--key", "key", "--features", ",".join(f"f{i}" for i in range(30)),
                    "--prediction-log", str(log), "--time-column", "observed")
    assert out.returncode == 0, out.stderr
    records = logged(log)
    assert sorted({r["date"] for r in records}) == ["2024-03-01", "2024-03-02", "2024-03-03"]
    by_key = {r["key"]: r for r in records}
    for key, day in zip(table.column("key").to_pylist(), days):
        assert by_key[key]["ts"].isoformat().replace("+00:00", "Z") == day
    # A time column without a log, or one that is not there, is refused before anything runs.
    no_log = run_batch("--input", str(tmp_path / "history.csv"), "--output", str(tmp_path / "o2"),
                       "--time-column", "observed")
    assert no_log.returncode != 0 and "needs --prediction-log" in no_log.stderr, no_log.stderr
    missing = run_batch("--input", str(tmp_path / "history.csv"), "--output", str(tmp_path / "o3"),
                        "--prediction-log", str(log), "--time-column", "when")
    assert missing.returncode != 0 and "when" in missing.stderr, missing.stderr


def test_kill_9_in_buffered_mode_loses_only_what_no_group_commit_covered(tmp_path):
    """Buffered records are made durable by the group commit every 100 ms: after `kill -9`, at
    most the predictions no commit had covered yet are missing from the log (answered minus
    `serval_prediction_log_committed_total` read before the kill) — a count, not a time."""
    from test_prediction_log_disk import counter
    log = tmp_path / "log"
    repo = repo_with(tmp_path, "")
    server = ServalServer("--prediction-log", str(log), repo=repo)
    traffic = Traffic(server, "b", workers=2)
    try:
        traffic.wait_for(300)
        deadline = time.time() + 60
        while counter(server, "serval_prediction_log_committed_total") < 200:
            assert time.time() < deadline, "no group commit covered 200 records"
            time.sleep(0.05)
        committed = counter(server, "serval_prediction_log_committed_total")
    finally:
        server.kill()
        traffic.stop()
    restarted = ServalServer("--prediction-log", str(log), repo=repo)
    assert restarted.terminate() == 0, restarted.stderr_text()
    keys = {r["key"] for r in logged(log)}
    answered = [k for k, _ in traffic.answered]
    missing = [k for k in answered if k not in keys]
    assert len(keys) >= committed, "every committed record survived"
    assert len(missing) <= len(answered) - committed, (
        f"{len(missing)} lost, more than the {len(answered) - committed:.0f} no commit covered")

def test_a_model_whose_signature_changed_between_versions_reads_as_one_typed_table(tmp_path):
    """Version 2 of `iris_lr` is the breast-cancer model: 30 features instead of 4, 2 classes
    instead of 3, and a `diagnosis` output only it has. Both versions' records read as one table:
    widths that changed become lists, a column one version lacks is null in its records."""
    from test_labels import sql
    log = tmp_path / "log"
    repo = repo_with(tmp_path, '[versions]\npolicy = "all"')
    (repo / MODEL / "2").mkdir()
    shutil.copy(REPO / "breast_cancer_lr" / "1" / "model.onnx", repo / MODEL / "2" / "model.onnx")
    breast_row = [float(x) for x in (REPO.parent / "data" / "breast_cancer.csv").read_text()
                  .splitlines()[1].split(",")[1:31]]
    server = ServalServer("--prediction-log", str(log), repo=repo)
    try:
        for version, key, row in [(1, "old", ROW), (2, "new", breast_row)]:
            r = requests.post(f"{server.url}/v1/models/{MODEL}/versions/{version}:predict",
                              json={"instances": [{"key": key, "features": row}]}, timeout=10)
            assert r.status_code == 200, r.text
    finally:
        assert server.terminate() == 0, server.stderr_text()
    rows = sql(log, "SELECT key, version, array_length(features), array_length(probabilities), "
                    f"arrow_typeof(features) FROM {MODEL} ORDER BY version", repo=repo)
    assert [r[:4] for r in rows] == [["old", "1", "4", "3"], ["new", "2", "30", "2"]]
    assert rows[0][4] == "List(Float32)", rows
