"""A model repository in S3 (a moto server on loopback): served from a local mirror, and kept
in step as versions are uploaded and deleted."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import requests

from support import REPO, ServalServer, moto_s3, serval_bin, serve_command, serve_env

MODEL = "iris_lr"
ROW = [5.1, 3.5, 1.4, 0.2]
BUCKET = "models"


@pytest.fixture(scope="module")
def s3():
    with moto_s3(BUCKET) as (client, env):
        yield client, env


def upload_version(client, version: int) -> None:
    body = (REPO / MODEL / "1" / "model.onnx").read_bytes()
    client.put_object(Bucket=BUCKET, Key=f"prod/{MODEL}/{version}/model.onnx", Body=body)


def predict_version(server: ServalServer) -> str:
    res = requests.post(
        f"{server.url}/v1/models/{MODEL}:predict", json={"instances": [{"features": ROW}]}, timeout=10
    )
    assert res.status_code == 200, res.text
    return res.headers["serval-model-version"]


def test_serves_from_s3_and_follows_uploads_and_deletions(s3, tmp_path, monkeypatch):
    client, env = s3
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    upload_version(client, 1)
    client.put_object(
        Bucket=BUCKET, Key=f"prod/{MODEL}/config.toml", Body=b"[versions]\npolicy = \"all\"\n"
    )
    server = ServalServer(
        "--cache-dir", str(tmp_path / "cache"), "--poll-interval-secs", "0.5", repo=f"s3://{BUCKET}/prod"
    )
    try:
        assert predict_version(server) == "1"
        mirror = tmp_path / "cache" / "s3" / BUCKET / "prod" / MODEL
        assert (mirror / "1" / "model.onnx").is_file()

        upload_version(client, 2)
        deadline = time.time() + 30
        while predict_version(server) != "2":
            assert time.time() < deadline, "version 2 never served"
            time.sleep(0.2)

        client.delete_object(Bucket=BUCKET, Key=f"prod/{MODEL}/1/model.onnx")
        deadline = time.time() + 30
        while True:
            versions = requests.get(f"{server.url}/v1/models/{MODEL}", timeout=10).json()
            served = {s["version"] for s in versions["model_version_status"]}
            if served == {"2"}:
                break
            assert time.time() < deadline, f"version 1 never went away: {versions}"
            time.sleep(0.2)
        assert not (mirror / "1").exists()
    finally:
        assert server.terminate(timeout=10.0) == 0, server.stderr_text()


@pytest.mark.parametrize("step", ["sync-partial", "sync-file"])
def test_kill_9_during_a_sync_then_a_restart_serves_the_bucket(s3, tmp_path, monkeypatch, step):
    """A server killed while it mirrors a new version (a file half fetched, or one of two
    fetched): the next start finishes the mirror and serves the new version, and no partial
    file is left in the cache."""
    client, env = s3
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    prefix = f"crash-{step}"
    body = (REPO / MODEL / "1" / "model.onnx").read_bytes()
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/{MODEL}/1/model.onnx", Body=body)
    args = ("--cache-dir", str(tmp_path / "cache"))
    repo = f"s3://{BUCKET}/{prefix}"
    server = ServalServer(*args, repo=repo)
    assert predict_version(server) == "1"
    assert server.terminate(timeout=10.0) == 0, server.stderr_text()
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/{MODEL}/2/model.onnx", Body=body)
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/{MODEL}/config.toml", Body=b"[versions]\npolicy = \"all\"\n")
    killed = subprocess.run(serve_command(repo, *args), env=serve_env({"SERVAL_FAULT_POINT": step}),
                            capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])
    mirror = tmp_path / "cache" / "s3" / BUCKET / prefix / MODEL
    if step == "sync-partial":
        assert list(mirror.rglob(".*.partial")), "the fault point was not inside a download"
    server = ServalServer(*args, repo=repo)
    try:
        assert predict_version(server) == "2"
        versions = requests.get(f"{server.url}/v1/models/{MODEL}", timeout=10).json()
        assert {s["version"] for s in versions["model_version_status"]} == {"1", "2"}, versions
        assert not list(mirror.rglob(".*.partial"))
    finally:
        assert server.terminate(timeout=10.0) == 0, server.stderr_text()


def test_unreachable_bucket_is_a_clear_startup_error(tmp_path):
    env = dict(os.environ)
    env.update({"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_REGION": "us-east-1"})
    from support import serval_bin

    res = subprocess.run(
        [str(serval_bin()), "inspect", "s3://nowhere/models", "--cache-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )
    assert res.returncode != 0
    assert "s3://nowhere/models" in res.stderr, res.stderr



def test_two_replicas_log_to_one_bucket_and_sql_reads_it(s3, tmp_path, monkeypatch):
    """Predictions and labels logged straight to S3 by two replicas (segments on each one's local
    disk, only whole Parquet objects in the bucket): every key of both exactly once, readable by
    pyarrow from the bucket and by `serval sql`."""
    import io

    import pyarrow.parquet as pq

    client, env = s3
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    log = f"s3://{BUCKET}/log"
    repo = tmp_path / "repo"
    import shutil
    shutil.copytree(REPO / MODEL, repo / MODEL)
    replicas = [ServalServer("--prediction-log", log, "--replica-id", f"r{i}",
                             "--cache-dir", str(tmp_path / f"cache{i}"), repo=repo) for i in range(2)]
    sent = []
    try:
        for i in range(40):
            server = replicas[i % 2]
            key = f"s3-{i}"
            r = requests.post(f"{server.url}/v1/models/{MODEL}:predict",
                              json={"instances": [{"key": key, "features": ROW}]}, timeout=10)
            assert r.status_code == 200, r.text
            sent.append(key)
        r = requests.post(f"{replicas[0].url}/v1/models/{MODEL}/labels",
                          json={"labels": [{"key": "s3-0", "label": 0}]}, timeout=10)
        assert r.status_code == 200, r.text
    finally:
        for server in replicas:
            assert server.terminate() == 0, server.stderr_text()
    objects = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="log/")["Contents"]]
    assert all(k.endswith(".parquet") for k in objects), objects
    predictions = [k for k in objects if k.startswith(f"log/predictions/model={MODEL}/date=")]
    assert {k.rsplit("/", 1)[1][:2] for k in predictions} == {"r0", "r1"}, predictions
    keys = []
    for key in predictions:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        keys += pq.read_table(io.BytesIO(body)).column("key").to_pylist()
    assert sorted(keys) == sorted(sent), "every key of both replicas exactly once"
    # The segments stayed on the replicas' disks, under their cache directories.
    assert list((tmp_path / "cache0" / "prediction-log").iterdir())
    out = subprocess.run(
        [str(serval_bin()), "sql", str(repo),
         f"SELECT count(DISTINCT p.key), count(l.label) FROM {MODEL} p LEFT JOIN labels l USING (key)",
         "--prediction-log", log],
        capture_output=True, text=True, timeout=120, env=os.environ)
    assert out.returncode == 0, out.stderr
    assert "| 40 " in out.stdout and "| 1 " in out.stdout, out.stdout
