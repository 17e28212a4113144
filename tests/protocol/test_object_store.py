"""A model repository in S3 (a moto server on loopback): served from a local mirror, and kept
in step as versions are uploaded and deleted."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import requests

from support import REPO, ServalServer, moto_s3

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

