"""Readiness with a model that cannot load: per model by default, server-wide with
--strict-readiness (Triton's flag); the repository index lists every model directory."""

from __future__ import annotations

import shutil

import pytest
import requests

from support import REPO, ServalServer


@pytest.fixture(scope="module")
def broken_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo-broken")
    shutil.copytree(REPO / "iris_lr", repo / "iris_lr")
    (repo / "corrupt" / "1").mkdir(parents=True)
    (repo / "corrupt" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    shutil.copytree(REPO / "iris_lr", repo / "bad_config")
    (repo / "bad_config" / "config.toml").write_text("max_batch_sise = 4\n")
    (repo / "no_versions").mkdir()
    return repo


def _serve(repo, *args, wait_ready=True):
    try:
        return ServalServer(*args, repo=repo, wait_ready=wait_ready)
    except RuntimeError as err:
        pytest.fail(str(err), pytrace=False)


def test_one_broken_model_leaves_the_server_ready_and_every_model_listed(broken_repo):
    server = _serve(broken_repo)
    try:
        assert requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
        assert requests.get(f"{server.url}/v2/models/iris_lr/ready", timeout=5).status_code == 200
        corrupt = requests.get(f"{server.url}/v2/models/corrupt/ready", timeout=5)
        assert corrupt.status_code >= 400 and "corrupt" in corrupt.json()["error"], corrupt.text
        index = requests.post(f"{server.url}/v2/repository/index", timeout=5).json()
        states = {entry["name"]: entry for entry in index}
        assert set(states) == {"iris_lr", "corrupt", "bad_config", "no_versions"}, index
        assert states["iris_lr"]["state"] == "READY"
        for name, needle in [
            ("corrupt", "not a valid ONNX"),
            ("bad_config", "max_batch_sise"),
            ("no_versions", "no version to serve"),
        ]:
            assert states[name]["state"] == "UNAVAILABLE", states[name]
            assert needle in states[name]["reason"], states[name]
        # The healthy model answers.
        body = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
                            "data": [5.1, 3.5, 1.4, 0.2]}]}
        res = requests.post(f"{server.url}/v2/models/iris_lr/infer", json=body, timeout=10)
        assert res.status_code == 200, res.text
    finally:
        assert server.terminate(timeout=10.0) == 0, server.stderr_text()


def test_strict_readiness_needs_every_model(broken_repo):
    server = _serve(broken_repo, "--strict-readiness", wait_ready=False)
    try:
        assert requests.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200
        ready = requests.get(f"{server.url}/v2/health/ready", timeout=5)
        assert ready.status_code == 503, ready.text
        assert "strict-readiness" in ready.json()["error"]
        assert requests.get(f"{server.url}/v2/models/iris_lr/ready", timeout=5).status_code == 200
    finally:
        assert server.terminate(timeout=10.0) == 0, server.stderr_text()
