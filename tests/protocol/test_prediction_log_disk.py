"""The prediction log when its disk fills up or turns read-only, on real filesystems (a small
tmpfs, a read-only mount): the server keeps answering every prediction, the condition is a
metric, writing resumes when the disk does, and nothing already written is damaged (checked by
reading every Parquet file with pyarrow)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import requests

from support import ServalServer
from test_prediction_log import MODEL, ROW, logged, repo_with


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs, or a skip saying why there is none (mounting needs CAP_SYS_ADMIN)."""
    where = tmp_path / "disk"
    where.mkdir()
    try:
        mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where))
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        pytest.skip(f"cannot mount a tmpfs on this machine (needs root / CAP_SYS_ADMIN): {e}")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def counter(server: ServalServer, name: str, **labels: str) -> float:
    """Sum of a Prometheus counter's series having these labels."""
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


def predict(server: ServalServer, keys: list[str]) -> None:
    body = {"instances": [{"key": k, "features": ROW} for k in keys]}
    r = requests.post(f"{server.url}/v1/models/{MODEL}:predict", json=body, timeout=10)
    assert r.status_code == 200, r.text


def every_file_reads(root: Path) -> None:
    for path in (root / "predictions").rglob("*.parquet"):
        ds.dataset(path, format="parquet").to_table()


def test_a_full_disk_costs_records_not_predictions_and_writing_resumes(tmp_path, small_disk):
    log = small_disk
    server = ServalServer("--prediction-log", str(log), "--prediction-log-roll-secs", "1",
                          repo=repo_with(tmp_path, ""))
    try:
        batches = 0
        while counter(server, "serval_prediction_log_dropped_total", reason="disk_full") == 0:
            assert batches < 400, "1 MiB should fill long before this"
            predict(server, [f"full-{batches}-{i}" for i in range(50)])
            batches += 1
        # Still full: every prediction is answered, the drops are counted.
        for i in range(20):
            predict(server, [f"while-full-{i}"])
        assert counter(server, "serval_prediction_log_errors_total", reason="disk_full") > 0
        mount("-o", "remount,size=64m", str(log))
        after = [f"after-{i}" for i in range(20)]
        for key in after:
            predict(server, [key])
    finally:
        assert server.terminate() == 0, server.stderr_text()
    every_file_reads(log)
    keys = [r["key"] for r in logged(log)]
    assert len(keys) == len(set(keys)), "a record was rolled twice"
    assert set(after) <= set(keys), "writing resumed once space returned"
    assert any(k.startswith("full-") for k in keys), "what was written before the disk filled is kept"
    assert not list((log / "_wal").rglob("*.seg")), "every segment was rolled at shutdown"


def test_a_read_only_log_directory_holds_records_in_the_write_ahead_log_until_writable(tmp_path, small_disk):
    log = small_disk
    mount("-o", "remount,ro", str(log))
    wal = tmp_path / "wal"
    server = ServalServer("--prediction-log", str(log), "--prediction-log-wal", str(wal),
                          "--prediction-log-roll-secs", "1", repo=repo_with(tmp_path, ""))
    try:
        keys = [f"ro-{i}" for i in range(30)]
        for key in keys:
            predict(server, [key])
        deadline = time.time() + 30
        while counter(server, "serval_prediction_log_errors_total", reason="not_writable") == 0:
            assert time.time() < deadline, "a roll into a read-only directory is counted"
            time.sleep(0.2)
        assert not (log / "predictions").exists()
        mount("-o", "remount,rw", str(log))
    finally:
        assert server.terminate() == 0, server.stderr_text()
    every_file_reads(log)
    assert sorted(r["key"] for r in logged(log)) == sorted(keys), "nothing was dropped, only delayed"
    assert not list(wal.rglob("*.seg"))
