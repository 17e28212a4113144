"""Late ground truth, keyed: labels posted to a real `serval serve` or imported from files land in
the prediction log beside the predictions they label, a later label of a key replaces an earlier
one, labels of keys never predicted are kept and counted, and a bad entry records nothing."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import requests

from support import REPO, ServalServer, serval_bin
from test_prediction_log import MODEL, repo_with, v2_body


def label_history(root: Path) -> list[dict]:
    """Every label received, read by pyarrow from the hive-partitioned Parquet files."""
    if not (root / "labels").exists():
        return []
    return ds.dataset(root / "labels", format="parquet", partitioning="hive").to_table().to_pylist()


def sql(root: Path, query: str, repo: Path = REPO) -> list[list[str]]:
    """Rows of `serval sql` over the log, as the cells of its printed table."""
    out = subprocess.run([str(serval_bin()), "sql", str(repo), query, "--prediction-log", str(root)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def post_labels(server: ServalServer, labels, model=MODEL) -> requests.Response:
    return requests.post(f"{server.url}/v1/models/{model}/labels", json={"labels": labels}, timeout=10)


def predict(server: ServalServer, keys) -> None:
    for key in keys:
        r = requests.post(f"{server.url}/v2/models/{MODEL}/infer", json=v2_body(key), timeout=10)
        assert r.status_code == 200, r.text


def test_a_later_label_replaces_an_earlier_one_and_orphans_are_kept(tmp_path):
    log = tmp_path / "log"
    server = ServalServer("--prediction-log", str(log), repo=repo_with(tmp_path, ""))
    try:
        predict(server, ["a", "b", "c"])
        first = post_labels(server, [{"key": "a", "label": "setosa"}, {"key": "b", "label": "versicolor"}])
        assert first.status_code == 200, first.text
        assert first.json() == {"accepted": 2}
        later = post_labels(server, [{"key": "a", "label": "virginica"}, {"key": "z", "label": 2},
                                     {"key": "b", "label": "setosa"}, {"key": "b", "label": "versicolor"}])
        assert later.status_code == 200, later.text
        assert later.json() == {"accepted": 4}
    finally:
        assert server.terminate() == 0, server.stderr_text()
    history = label_history(log)
    # Everything received is kept (a key twice in one request counts once: its last entry).
    assert sorted((r["key"], r["label"]) for r in history) == [
        ("a", "setosa"), ("a", "virginica"), ("b", "versicolor"), ("b", "versicolor"), ("z", "2")]
    assert {r["model"] for r in history} == {MODEL}
    assert [r["label_value"] for r in history if r["key"] == "z"] == [2.0]
    assert sql(log, f"SELECT key, label FROM labels WHERE model = '{MODEL}' ORDER BY key") == [
        ["a", "virginica"], ["b", "versicolor"], ["z", "2"]]
    assert sql(log, "SELECT key FROM orphan_labels") == [["z"]]
    # Predictions and their truth, joined by key out of the box.
    joined = sql(log, "SELECT p.key, l.label, p.outputs IS NOT NULL FROM predictions p "
                      "JOIN labels l ON p.model = l.model AND p.key = l.key ORDER BY p.key")
    assert joined == [["a", "virginica", "true"], ["b", "versicolor", "true"]]


@pytest.mark.parametrize("entry, named", [
    ({"key": "k2"}, "'label' is missing"),
    ({"label": "setosa"}, "'key' is missing"),
    ({"key": "", "label": "setosa"}, "'key' is empty"),
    ({"key": 7, "label": "setosa"}, "'key' must be a string"),
    ({"key": "k2", "label": None}, "not null"),
    ({"key": "k2", "label": [1, 2]}, "not an array"),
    ({"key": "k2", "label": "x", "weight": 1}, "unknown field 'weight'"),
])
def test_a_bad_entry_is_refused_naming_it_and_nothing_of_its_request_is_recorded(tmp_path, entry, named):
    log = tmp_path / "log"
    server = ServalServer("--prediction-log", str(log), repo=repo_with(tmp_path, ""))
    try:
        r = post_labels(server, [{"key": "k1", "label": "setosa"}, entry])
        assert r.status_code == 400, r.text
        assert "labels[1]" in r.json()["error"] and named in r.json()["error"], r.text
        assert post_labels(server, [{"key": "k0", "label": "setosa"}]).status_code == 200
    finally:
        assert server.terminate() == 0, server.stderr_text()
    assert [r["key"] for r in label_history(log)] == ["k0"]


def test_labels_need_a_known_model_and_a_prediction_log(tmp_path):
    log = tmp_path / "log"
    server = ServalServer("--prediction-log", str(log), repo=repo_with(tmp_path, ""))
    try:
        unknown = post_labels(server, [{"key": "k", "label": 1}], model="no_such_model")
        assert unknown.status_code == 404, unknown.text
        assert "no_such_model" in unknown.json()["error"]
        malformed = requests.post(f"{server.url}/v1/models/{MODEL}/labels", data=b'{"labels": [', timeout=10)
        assert malformed.status_code == 400 and "malformed JSON" in malformed.json()["error"]
    finally:
        assert server.terminate() == 0, server.stderr_text()
    no_log = ServalServer(repo=repo_with(tmp_path / "other", ""))
    try:
        r = post_labels(no_log, [{"key": "k", "label": 1}])
        assert r.status_code == 501, r.text
        assert "--prediction-log" in r.json()["error"]
    finally:
        assert no_log.terminate() == 0, no_log.stderr_text()


def test_an_acknowledged_synced_label_survives_kill_9(tmp_path):
    log = tmp_path / "log"
    repo = repo_with(tmp_path, 'durability = "synced"')
    server = ServalServer("--prediction-log", str(log), repo=repo)
    predict(server, ["p1"])
    r = post_labels(server, [{"key": "p1", "label": "setosa"}])
    assert r.status_code == 200, r.text
    server.kill()
    restarted = ServalServer("--prediction-log", str(log), repo=repo)
    assert restarted.terminate() == 0, restarted.stderr_text()
    assert [(r["key"], r["label"]) for r in label_history(log)] == [("p1", "setosa")]
    assert sql(log, "SELECT count(*) FROM orphan_labels") == [["0"]]


def write_labels(path: Path, rows: list[dict]) -> None:
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)


def import_labels(log: Path, path: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(serval_bin()), "labels", "import", "--prediction-log", str(log),
                           "--model", MODEL, str(path), *flags],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_labels_import_from_a_file(tmp_path, suffix):
    log = tmp_path / "log"
    server = ServalServer("--prediction-log", str(log), repo=repo_with(tmp_path, ""))
    try:
        predict(server, ["id-1", "id-2", "id-3"])
    finally:
        assert server.terminate() == 0, server.stderr_text()
    path = tmp_path / f"truth{suffix}"
    write_labels(path, [{"id": "id-1", "species": "setosa"}, {"id": "id-2", "species": "virginica"},
                        {"id": "id-1", "species": "versicolor"}, {"id": "never", "species": "setosa"}])
    out = import_labels(log, path, "--key", "id", "--label", "species")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"model": MODEL, "rows": 4, "keys": 3, "orphans": 1}
    assert sql(log, "SELECT key, label FROM labels ORDER BY key") == [
        ["id-1", "versicolor"], ["id-2", "virginica"], ["never", "setosa"]]
    assert not list((log / "_wal").rglob("*.seg")), "the import's segment was rolled"


def test_labels_import_of_json_lines_whose_labels_change_type(tmp_path):
    """A class name on one line and a class id on the next, as exporters write them."""
    log = tmp_path / "log"
    log.mkdir()
    path = tmp_path / "truth.jsonl"
    path.write_text('{"key": "a", "label": "setosa"}\n{"key": "b", "label": 2}\n\n'
                    '{"key": 7, "label": 0.5, "note": "ignored"}\n')
    out = import_labels(log, path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["rows"] == 3, out.stdout
    history = sorted((r["key"], r["label"], r["label_value"]) for r in label_history(log))
    assert history == [("7", "0.5", 0.5), ("a", "setosa", None), ("b", "2", 2.0)], history
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": "a", "label": "setosa"}\n{"key": "b"}\n')
    out = import_labels(log, bad)
    assert out.returncode != 0 and "row 2" in out.stderr and "label" in out.stderr, out.stderr


def test_labels_import_refuses_a_file_with_a_bad_row_and_writes_nothing(tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    path = tmp_path / "truth.csv"
    path.write_text("key,label\nk1,setosa\nk2,\n")
    out = import_labels(log, path)
    assert out.returncode != 0
    assert "row 2" in out.stderr and "label" in out.stderr, out.stderr
    missing = import_labels(log, path, "--label", "species")
    assert missing.returncode != 0
    assert "no column 'species'" in missing.stderr and "key, label" in missing.stderr, missing.stderr
    assert label_history(log) == []
