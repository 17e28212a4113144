"""Model lifecycle against a real server under continuous load: versions appear, labels move,
versions disappear, a corrupt version is refused, the config changes — and no valid request
fails. Then the canary split and sticky routing by key."""

from __future__ import annotations

import collections
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import requests

from support import REPO, ServalServer

MODEL = "iris_lr"
ROW = [5.1, 3.5, 1.4, 0.2]


def write_atomically(path: Path, text: str) -> None:
    """Writes like a deployment tool should: a temp file renamed into place."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def add_version(repo: Path, version: int, source: Path | None = None) -> None:
    staging = repo / f".staging-{version}"
    staging.mkdir()
    shutil.copy(source or REPO / MODEL / "1" / "model.onnx", staging / "model.onnx")
    # Renaming the finished directory makes the version appear whole.
    os.replace(staging, repo / MODEL / str(version))


def index(server: ServalServer) -> list[dict]:
    res = requests.post(f"{server.url}/v2/repository/index", timeout=10)
    assert res.status_code == 200, res.text
    return res.json()


def wait_for(server: ServalServer, predicate, what: str, timeout: float = 30.0) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        entries = index(server)
        if predicate(entries):
            return entries
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}: {index(server)}")


def ready_versions(entries: list[dict]) -> set[int]:
    return {int(e["version"]) for e in entries if e["name"] == MODEL and e["state"] == "READY"}


class Load:
    """Background clients sending valid requests (default version and the `stable` label)."""

    def __init__(self, server: ServalServer, threads: int = 4):
        self.server = server
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.statuses: collections.Counter = collections.Counter()
        self.failures: list[str] = []
        self.versions: list[tuple[float, str, str]] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, ix: int) -> None:
        session = requests.Session()
        n = 0
        while not self.stop.is_set():
            n += 1
            if ix % 2 == 0:
                url = f"{self.server.url}/v1/models/{MODEL}:predict"
                target = "default"
            else:
                url = f"{self.server.url}/v1/models/{MODEL}/labels/stable:predict"
                target = "stable"
            body = {"instances": [{"key": f"t{ix}-{n}", "features": ROW}]}
            try:
                res = session.post(url, json=body, timeout=30)
            except requests.RequestException as err:
                with self.lock:
                    self.failures.append(f"{target}: {err}")
                continue
            with self.lock:
                self.statuses[res.status_code] += 1
                if res.status_code != 200:
                    self.failures.append(f"{target}: {res.status_code} {res.text}")
                else:
                    self.versions.append((time.time(), target, res.headers["serval-model-version"]))

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def versions_since(self, since: float, target: str) -> set[str]:
        with self.lock:
            return {v for (t, tg, v) in self.versions if t >= since and tg == target}


@pytest.fixture()
def repo(tmp_path):
    shutil.copytree(REPO / MODEL, tmp_path / MODEL)
    write_atomically(tmp_path / MODEL / "config.toml", '[versions]\nlabels = { stable = 1 }\n')
    return tmp_path


@pytest.fixture()
def live_server(repo):
    server = ServalServer("--poll-interval-secs", "0.5", repo=repo)
    yield server
    assert server.terminate(timeout=10.0) == 0, server.stderr_text()


def test_versions_change_under_load_without_failed_requests(repo, live_server):
    server = live_server
    with Load(server) as load:
        time.sleep(0.5)
        # Serve the two newest versions; add version 2.
        write_atomically(repo / MODEL / "config.toml", "[versions]\npolicy = { latest = 2 }\nlabels = { stable = 1 }\n")
        add_version(repo, 2)
        wait_for(server, lambda e: ready_versions(e) == {1, 2}, "versions 1 and 2")
        mark = time.time() + 1.0
        time.sleep(2.0)
        assert load.versions_since(mark, "default") == {"2"}, "requests naming no version go to the highest"
        assert load.versions_since(mark, "stable") == {"1"}

        # Move the `stable` label to version 2.
        write_atomically(repo / MODEL / "config.toml", "[versions]\npolicy = { latest = 2 }\nlabels = { stable = 2 }\n")
        time.sleep(2.0)
        mark = time.time()
        time.sleep(1.5)
        assert load.versions_since(mark, "stable") == {"2"}

        # Remove version 1 while it is loaded.
        shutil.rmtree(repo / MODEL / "1")
        wait_for(server, lambda e: ready_versions(e) == {2}, "version 1 gone")

        # A corrupt version 3 is refused; version 2 keeps serving.
        staging = repo / ".staging-3"
        staging.mkdir()
        (staging / "model.onnx").write_bytes(b"this is not an onnx file")
        os.replace(staging, repo / MODEL / "3")
        entries = wait_for(
            server,
            lambda e: any(x["name"] == MODEL and x["version"] == "3" and x["state"] == "UNAVAILABLE" for x in e),
            "version 3 refused",
        )
        failed = next(x for x in entries if x["version"] == "3")
        assert "not a valid ONNX" in failed["reason"]
        assert ready_versions(entries) == {2}
        mark = time.time()
        time.sleep(1.0)
        assert load.versions_since(mark, "default") == {"2"}

        # Readiness reports the refusal without taking the model down.
        ready = requests.get(f"{server.url}/v2/models/{MODEL}/ready", timeout=10)
        assert ready.status_code == 200
        status = requests.get(f"{server.url}/v1/models/{MODEL}", timeout=10).json()
        states = {s["version"]: s["state"] for s in status["model_version_status"]}
        assert states == {"2": "AVAILABLE", "3": "END"}, status

        # A config change with a typo is refused; the previous config keeps serving.
        write_atomically(repo / MODEL / "config.toml", "[versions]\nlabelz = { stable = 2 }\n")
        time.sleep(2.0)

    assert load.failures == [], load.failures[:5]
    assert load.statuses[200] > 100, load.statuses
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert 'serval_model_load_failures_total{model="iris_lr",version="3"}' in metrics


def test_repository_api_loads_and_unloads(repo, live_server):
    server = live_server
    url = f"{server.url}/v2/repository/models/{MODEL}"
    assert requests.post(f"{url}/unload", timeout=10).status_code == 200
    res = requests.post(f"{server.url}/v1/models/{MODEL}:predict", json={"instances": [ROW]}, timeout=10)
    assert res.status_code == 503, res.text
    assert "unloaded" in res.json()["error"]
    assert any(e["state"] == "UNLOADED" for e in index(server))
    # Concurrent identical loads are idempotent.
    results = []
    threads = [threading.Thread(target=lambda: results.append(requests.post(f"{url}/load", timeout=60))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * 4, [r.text for r in results]
    res = requests.post(f"{server.url}/v1/models/{MODEL}:predict", json={"instances": [ROW]}, timeout=10)
    assert res.status_code == 200, res.text
    missing = requests.post(f"{server.url}/v2/repository/models/nope/load", timeout=10)
    assert missing.status_code == 404
    assert "nope" in missing.json()["error"]


def test_a_version_whose_files_are_deleted_stops_serving(repo, live_server):
    """Deleting a version's model.onnx unloads it as deleting its directory does; once no version
    has its file, the model stops serving and says why, instead of answering from memory."""
    server = live_server
    write_atomically(repo / MODEL / "config.toml", '[versions]\npolicy = "all"\n')
    add_version(repo, 2)
    wait_for(server, lambda e: ready_versions(e) == {1, 2}, "version 2 to serve")
    (repo / MODEL / "2" / "model.onnx").unlink()
    wait_for(server, lambda e: ready_versions(e) == {1}, "version 2 to be unloaded")
    res = requests.post(f"{server.url}/v2/models/{MODEL}/versions/2/infer", json={
        "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}, timeout=10)
    assert res.status_code == 404, res.text
    (repo / MODEL / "1" / "model.onnx").unlink()
    entries = wait_for(server, lambda e: not ready_versions(e), "the model to stop serving")
    assert any(e["name"] == MODEL and "model.onnx" in e["reason"] for e in entries), entries
    res = requests.post(f"{server.url}/v1/models/{MODEL}:predict", json={"instances": [ROW]}, timeout=10)
    assert res.status_code in (404, 503), res.text
    assert requests.get(f"{server.url}/v2/models/{MODEL}/ready", timeout=10).status_code != 200


def test_kill_9_while_a_version_is_half_written_restarts_on_the_last_good_one(repo):
    """A deployment copying version 2 in place, and the server killed meanwhile: restarted, it
    serves version 1 (latest(1) means the newest version that works) and names version 2's
    failure; once the copy completes, version 2 serves."""
    write_atomically(repo / MODEL / "config.toml", "[versions]\npolicy = { latest = 1 }\n")
    body = (REPO / MODEL / "1" / "model.onnx").read_bytes()
    server = ServalServer("--poll-interval-secs", "0.5", repo=repo)
    (repo / MODEL / "2").mkdir()
    with open(repo / MODEL / "2" / "model.onnx", "wb") as half:
        half.write(body[: len(body) // 2])
        half.flush()
        failed = lambda e: any(x["version"] == "2" and x["state"] != "READY" for x in e)  # noqa: E731
        wait_for(server, failed, "the half-written version 2 to be refused")
        assert ready_versions(index(server)) == {1}
        server.kill()
        server = ServalServer("--poll-interval-secs", "0.5", repo=repo)
        try:
            entries = index(server)
            assert ready_versions(entries) == {1} and failed(entries), entries
            # The reason names the file within the repository, not where the server keeps it.
            reason = next(e["reason"] for e in entries if e["version"] == "2")
            assert "model.onnx" in reason and str(repo) not in reason, reason
            res = requests.post(f"{server.url}/v1/models/{MODEL}:predict", json={"instances": [ROW]}, timeout=10)
            assert res.status_code == 200 and res.headers["serval-model-version"] == "1", res.text
            half.write(body[len(body) // 2:])
        except BaseException:
            server.kill()
            raise
    wait_for(server, lambda e: ready_versions(e) == {2}, "the completed version 2 to serve")
    assert server.terminate(timeout=10.0) == 0, server.stderr_text()


def test_grpc_repository_api_as_tritonclient_calls_it(repo, live_server):
    """Triton's model repository extension over gRPC: the same index, unload and load as REST,
    with tritonclient.grpc's own calls (its unload always sends `unload_dependents`)."""
    import grpc
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(live_server.grpc_addr)
    models = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": MODEL, "version": "1", "state": "READY"}.items() <= models[0].items(), models
    client.unload_model(MODEL)
    assert not client.is_model_ready(MODEL)
    assert any(e["state"] == "UNLOADED" for e in index(live_server))
    client.load_model(MODEL)
    assert client.is_model_ready(MODEL)
    with pytest.raises(InferenceServerException) as err:
        client.load_model("nope")
    assert err.value.status() == "StatusCode.NOT_FOUND" and "nope" in err.value.message(), err.value
    with pytest.raises(InferenceServerException) as err:
        client.load_model(MODEL, config='{"max_batch_size": 4}')
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and "'config'" in err.value.message(), err.value
    # A method the service lacks is named, with where to find it.
    channel = grpc.insecure_channel(live_server.grpc_addr)
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/inference.GRPCInferenceService/ModelStatistics")(b"", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "ModelStatistics" in err.value.details() and "/v2/models/" in err.value.details(), err.value.details()


def test_a_page_of_another_origin_cannot_unload_a_model_or_post_labels(repo, live_server):
    """The cross-site `text/plain` POST a browser sends without a preflight is refused; the
    same request from a client outside a browser, or from the server's own pages, goes through."""
    server = live_server
    unload = f"{server.url}/v2/repository/models/{MODEL}/unload"
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{server.http_port + 1}"):
        res = requests.post(unload, data="{}", headers={"Origin": origin, "Content-Type": "text/plain"},
                            timeout=10)
        assert res.status_code == 403, (origin, res.text)
        assert "another origin" in res.json()["error"], res.text
    labels = requests.post(f"{server.url}/v1/models/{MODEL}/labels", data='{"labels": []}',
                           headers={"Origin": "http://evil.example", "Content-Type": "text/plain"}, timeout=10)
    assert labels.status_code == 403, labels.text
    # Still served: nothing was unloaded.
    res = requests.post(f"{server.url}/v1/models/{MODEL}:predict", json={"instances": [ROW]}, timeout=10)
    assert res.status_code == 200, res.text
    # Inference from another origin is not a state change.
    res = requests.post(f"{server.url}/v1/models/{MODEL}:predict", json={"instances": [ROW]},
                        headers={"Origin": "http://evil.example"}, timeout=10)
    assert res.status_code == 200, res.text
    same = requests.post(unload, headers={"Origin": server.url}, timeout=10)
    assert same.status_code == 200, same.text


def test_canary_split_follows_the_configured_share(repo, live_server):
    server = live_server
    add_version(repo, 2)
    write_atomically(
        repo / MODEL / "config.toml",
        "[versions]\npolicy = \"all\"\ncanary = { version = 2, percent = 20.0 }\n",
    )
    wait_for(server, lambda e: ready_versions(e) == {1, 2}, "versions 1 and 2")
    time.sleep(1.0)
    counts: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def send(n: int) -> None:
        session = requests.Session()
        for _ in range(n):
            res = session.post(f"{server.url}/v2/models/{MODEL}/infer", json={
                "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": ROW}]
            }, timeout=30)
            assert res.status_code == 200, res.text
            with lock:
                counts[res.json()["model_version"]] += 1

    threads = [threading.Thread(target=send, args=(2500,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(counts.values())
    assert total == 10_000
    share = counts["2"] / total
    assert abs(share - 0.20) < 0.03, counts
    # Naming a version bypasses the split.
    res = requests.post(f"{server.url}/v2/models/{MODEL}/versions/1/infer", json={
        "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": ROW}]
    }, timeout=10)
    assert res.json()["model_version"] == "1"


def test_sticky_canary_sends_a_key_to_the_same_version(repo, live_server):
    server = live_server
    add_version(repo, 2)
    write_atomically(
        repo / MODEL / "config.toml",
        "[versions]\npolicy = \"all\"\ncanary = { version = 2, percent = 50.0, sticky = true }\n",
    )
    wait_for(server, lambda e: ready_versions(e) == {1, 2}, "versions 1 and 2")
    time.sleep(1.0)
    seen: dict[str, set[str]] = collections.defaultdict(set)
    session = requests.Session()
    for round_ in range(3):
        for k in range(200):
            key = f"customer-{k}"
            res = session.post(f"{server.url}/v1/models/{MODEL}:predict", json={
                "instances": [{"key": key, "features": ROW}]
            }, timeout=10)
            assert res.status_code == 200, res.text
            assert res.json()["predictions"][0]["key"] == key
            seen[key].add(res.headers["serval-model-version"])
    assert all(len(v) == 1 for v in seen.values()), {k: v for k, v in seen.items() if len(v) > 1}
    canary_share = sum(1 for v in seen.values() if v == {"2"}) / len(seen)
    assert 0.35 < canary_share < 0.65, canary_share


BREAST_ROW = [13.4, 20.52, 88.64, 556.7, 0.1106, 0.1469, 0.1445, 0.08172, 0.2116, 0.07325,
              0.3906, 0.9306, 3.093, 33.67, 0.005414, 0.02265, 0.03452, 0.01334, 0.01705, 0.004005,
              16.41, 29.66, 113.3, 844.4, 0.1574, 0.3856, 0.5106, 0.2051, 0.3585, 0.1109]


@pytest.mark.parametrize("sticky", [False, True], ids=["split", "sticky"])
def test_canary_with_another_signature_is_decoded_against_the_canary(repo, live_server, sticky):
    """A canary whose inputs differ from the default's (30 features, not 4) takes every
    unversioned request at 100 %: each must be decoded against the version that answers it,
    over every protocol, and a request naming version 1 still gets version 1's signature."""
    server = live_server
    add_version(repo, 2, REPO / "breast_cancer_lr" / "1" / "model.onnx")
    write_atomically(
        repo / MODEL / "config.toml",
        "[versions]\npolicy = \"all\"\n"
        f"canary = {{ version = 2, percent = 100.0, sticky = {str(sticky).lower()} }}\n",
    )
    wait_for(server, lambda e: ready_versions(e) == {1, 2}, "versions 1 and 2")
    time.sleep(1.0)
    tf = requests.post(f"{server.url}/v1/models/{MODEL}:predict",
                       json={"instances": [{"key": "k-1", "features": BREAST_ROW}]}, timeout=10)
    assert tf.status_code == 200, tf.text
    assert tf.headers["serval-model-version"] == "2"
    assert tf.json()["predictions"][0]["key"] == "k-1"
    v2 = requests.post(f"{server.url}/v2/models/{MODEL}/infer", json={"inputs": [
        {"name": "features", "shape": [1, 30], "datatype": "FP32", "data": BREAST_ROW},
        {"name": "key", "shape": [1], "datatype": "BYTES", "data": ["k-2"]},
    ]}, timeout=10)
    assert v2.status_code == 200, v2.text
    assert v2.json()["model_version"] == "2"
    pinned = requests.post(f"{server.url}/v1/models/{MODEL}/versions/1:predict",
                           json={"instances": [ROW]}, timeout=10)
    assert pinned.status_code == 200, pinned.text
    assert pinned.headers["serval-model-version"] == "1"
