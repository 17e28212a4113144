"""Shared helpers for the protocol suite: the server process, goldens and comparisons."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sys
import subprocess
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT / "examples" / "models"
GOLDEN_DIR = ROOT / "examples" / "golden"
MODELS = sorted(p.name for p in REPO.iterdir() if (p / "1" / "model.onnx").is_file())
RTOL = 1e-5
ATOL = 1e-6


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM = "chromium is not installed (apt-get install chromium): no browser to load the page in"


def chromium(*args: str, timeout: float = 120, budget_ms: int = 15000) -> subprocess.CompletedProcess:
    """Headless Chromium (Debian's) with a virtual time budget: the page's fetches and drawing
    finish before the DOM is dumped or the screenshot taken, with no wall-clock sleep."""
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0", f"--virtual-time-budget={budget_ms}", *args],
        capture_output=True, text=True, timeout=timeout,
    )


def serval_bin() -> Path:
    return Path(os.environ.get("SERVAL_BIN", ROOT / "target" / "debug" / "serval"))


def _load_goldens() -> dict:
    goldens = {}
    for model in MODELS:
        with open(GOLDEN_DIR / f"{model}.json", encoding="utf-8") as f:
            goldens[model] = json.load(f)
    return goldens


GOLDEN = _load_goldens()
N_ROWS = {m: len(g["rows"]) for m, g in GOLDEN.items()}


def features(model: str, rows=None) -> np.ndarray:
    """The golden input rows (all when `rows` is None) as a float32 [N, F] array."""
    g = GOLDEN[model]["rows"]
    rows = range(len(g)) if rows is None else rows
    return np.array([g[r]["features"] for r in rows], dtype=np.float32)


def golden_keys(model: str, rows=None) -> list[str]:
    g = GOLDEN[model]["rows"]
    rows = range(len(g)) if rows is None else rows
    return [g[r]["key"] for r in rows]


def golden_outputs(model: str, signature: str | None = None) -> dict[str, list]:
    """Output name -> per-row values of the default graph outputs or of a signature."""
    g = GOLDEN[model]
    if signature is None or signature == "serving_default":
        return g["outputs"]
    return g["signatures"][signature]


def _as_text(value):
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    return str(value)


def assert_outputs_match(
    model: str,
    got: dict,
    rows=None,
    signature: str | None = None,
    ignore=("key",),
):
    """`got` (name -> array-like, one row per instance) equals the goldens for `rows`."""
    expected_all = golden_outputs(model, signature)
    rows = list(range(N_ROWS[model])) if rows is None else list(rows)
    names = {n for n in got if n not in ignore}
    assert names == set(expected_all), f"{model}: outputs {sorted(names)} != golden {sorted(expected_all)}"
    for name, values in expected_all.items():
        expected = [values[r] for r in rows]
        actual = got[name]
        sample = np.asarray(expected, dtype=object).ravel()
        if len(sample) and isinstance(sample[0], str):
            flat = [_as_text(v) for v in np.asarray(actual, dtype=object).ravel()]
            assert flat == expected, f"{model}.{name}: labels differ"
        elif len(sample) and all(isinstance(v, int) for v in sample):
            actual_arr = np.asarray(actual)
            assert actual_arr.dtype.kind in "iu", f"{model}.{name}: dtype {actual_arr.dtype}"
            np.testing.assert_array_equal(
                actual_arr.reshape(np.shape(expected)), np.asarray(expected), err_msg=f"{model}.{name}"
            )
        else:
            actual_arr = np.asarray(actual, dtype=np.float64)
            expected_arr = np.asarray(expected, dtype=np.float64)
            np.testing.assert_allclose(
                actual_arr.reshape(expected_arr.shape),
                expected_arr,
                rtol=RTOL,
                atol=ATOL,
                err_msg=f"{model}.{name}",
            )


def texts(values) -> list[str]:
    """Keys from any client (bytes, numpy bytes/object arrays, str) as a list of str."""
    return [_as_text(v) for v in np.asarray(values, dtype=object).ravel()]


def is_uuid7(text: str) -> bool:
    try:
        u = uuid.UUID(text)
    except ValueError:
        return False
    return str(u) == text and u.version == 7 and u.variant == uuid.RFC_4122


def assert_minted(keys: list[str], n: int):
    assert len(keys) == n
    bad = [k for k in keys if not is_uuid7(k)]
    assert not bad, f"not UUIDv7: {bad}"
    assert len(set(keys)) == n, "minted keys are not unique"


def assert_error(response: requests.Response, status: int, *needles: str) -> str:
    """The response is `status` with a JSON `{"error": "..."}` body naming every needle."""
    assert response.status_code == status, (
        f"expected {status}, got {response.status_code}: {response.text[:500]}"
    )
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    for needle in needles:
        assert needle.lower() in body["error"].lower(), f"{needle!r} not in error {body['error']!r}"
    return body["error"]


def serve_command(repo: Path, *extra_args: str, http_port: int = 0) -> list[str]:
    """`serval serve` on loopback, the gRPC port picked by the OS."""
    binary = serval_bin()
    if not binary.is_file():
        raise RuntimeError(f"{binary} does not exist: run `cargo build -p serval-cli` or set SERVAL_BIN")
    return [str(binary), "serve", str(repo), "--host", "127.0.0.1", "--http-port", str(http_port),
            "--grpc-port", "0", *extra_args]


def serve_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("SERVAL_LOG", "warn")
    env.update(extra or {})
    return env


def start_fails(*extra_args: str, repo: Path = REPO, timeout: float = 60.0) -> str:
    """`serval serve` with `extra_args` must exit non-zero instead of serving: its stderr and
    stdout, for the test to check what they name."""
    try:
        res = subprocess.run(serve_command(repo, *extra_args), cwd=ROOT, env=serve_env(),
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"serval serve {' '.join(extra_args)} was still running after {timeout} s") from None
    output = res.stderr + res.stdout
    assert res.returncode != 0, f"serval serve {' '.join(extra_args)} exited 0:\n{output[-4000:]}"
    return output


_LISTENING = re.compile(r"serval listening http=(\S+):(\d+) grpc=(\S+):(\d+)")


class ServalServer:
    """A `serval serve` child process on loopback with OS-assigned ports."""

    def __init__(
        self,
        *extra_args: str,
        repo: Path = REPO,
        start_timeout: float = 60.0,
        wait_ready: bool = True,
        http_port: int = 0,
        env: dict[str, str] | None = None,
        scheme: str = "http",
        probe: dict | None = None,
    ):
        """Starts the server; waits for `/v2/health/ready`, or with `wait_ready=False` only for
        the ports (models are loaded before serval announces them). `http_port` 0 lets the OS
        pick; a fixed one lets a client find a restarted server where it was. `env` adds to the
        environment (`SERVAL_LOG` is `warn` unless set); `scheme` is `https` for a server with
        --tls-cert, and `probe` holds what the readiness request needs besides (keyword
        arguments of `requests.get`: `verify`, `cert`, `headers`)."""
        self.scheme = scheme
        self._probe = probe or {}
        self.args = serve_command(repo, *extra_args, http_port=http_port)
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            self.args,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=serve_env(env),
            text=True,
        )
        self.stdout_lines: list[str] = []
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        try:
            self._wait_started(start_timeout, wait_ready)
        except BaseException:
            self.kill()
            raise

    def _read_stdout(self):
        for line in self.proc.stdout:
            self.stdout_lines.append(line.rstrip("\n"))
            m = _LISTENING.search(line)
            if m and not self._listening.is_set():
                self.http_host, self.http_port = m.group(1), int(m.group(2))
                self.grpc_host, self.grpc_port = m.group(3), int(m.group(4))
                self._listening.set()

    def _wait_started(self, timeout: float, wait_ready: bool):
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.1):
            if self.proc.poll() is not None:
                raise RuntimeError(f"serval exited with {self.proc.returncode}:\n{self.stderr_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"serval did not announce its ports in {timeout}s:\n{self.stderr_text()}")
        assert self.http_host == "127.0.0.1" and self.grpc_host == "127.0.0.1", self.stdout_lines
        while wait_ready:
            try:
                r = requests.get(f"{self.url}/v2/health/ready", timeout=2, **self._probe)
                if r.status_code == 200 and r.json() == {"ready": True}:
                    return
            except requests.ConnectionError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"serval exited with {self.proc.returncode}:\n{self.stderr_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"serval not ready in {timeout}s:\n{self.stderr_text()}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.http_port}"

    @property
    def http_addr(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def stderr_text(self, limit: int = 4000) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")[-limit:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, then the exit code within `timeout` (kills and raises if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"serval did not exit within {timeout}s of SIGTERM") from None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def serving(*extra_args: str, stop_timeout: float = 40.0, **kwargs):
    """A `ServalServer` for a `with` block. At its end the server must still be running, and
    SIGTERM must stop it with exit code 0 within `stop_timeout`; if the block raised, it is
    killed instead."""
    server = ServalServer(*extra_args, **kwargs)
    try:
        yield server
    except BaseException:
        server.kill()
        raise
    alive_before_stop = server.alive()
    code = server.terminate(timeout=stop_timeout)
    assert alive_before_stop, f"serval died during the test:\n{server.stderr_text()}"
    assert code == 0, f"serval exited with {code} after SIGTERM:\n{server.stderr_text()}"


IRIS = "iris_lr"


def small_repo(dest: Path, model: str = IRIS) -> Path:
    """A repository of one model under `dest` (quick to load)."""
    repo = dest / "repo"
    shutil.copytree(REPO / model, repo / model)
    return repo


def v2_infer(url: str, model: str = IRIS, rows=(0,), **kwargs) -> requests.Response:
    """POSTs golden rows to `{url}/v2/models/{model}/infer` as JSON; `kwargs` go to
    `requests.post` (headers, verify, cert, timeout)."""
    x = features(model, rows)
    body = {"inputs": [{"name": "features", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}
    kwargs.setdefault("timeout", 30)
    return requests.post(f"{url}/v2/models/{model}/infer", json=body, **kwargs)


def v2_outputs(body: dict) -> dict[str, np.ndarray]:
    """Output name -> array, from a v2 REST (JSON) inference response body."""
    return {o["name"]: np.array(o["data"], dtype=object if o["datatype"] == "BYTES" else None).reshape(o["shape"])
            for o in body["outputs"]}


def assert_v2_answer(response: requests.Response, model: str = IRIS, rows=(0,)):
    """A 200 from `v2_infer` whose outputs match the goldens."""
    assert response.status_code == 200, f"{response.status_code}: {response.text[:500]}"
    assert_outputs_match(model, v2_outputs(response.json()), rows=rows)


def triton_infer(client, module, model: str = IRIS, rows=(0,), **kwargs):
    """One inference of golden rows through a `tritonclient.http` or `tritonclient.grpc`
    client (`module` is the package the client comes from), checked against the goldens;
    `kwargs` go to `client.infer` (headers, client_timeout)."""
    x = features(model, rows)
    inp = module.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(model, [inp], **kwargs)
    assert_outputs_match(model, {name: result.as_numpy(name) for name in golden_outputs(model)}, rows=rows)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_s3(bucket: str):
    """A moto S3 server on loopback with `bucket` created: yields (boto3 client, the environment
    serval needs to reach it)."""
    port = free_port()
    proc = subprocess.Popen(
        # `python -m` works whether or not pip's script directory is on PATH.
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                requests.get(endpoint, timeout=1)
                break
            except requests.RequestException:
                if time.time() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=bucket)
        env = {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ALLOW_HTTP": "true",
        }
        yield client, env
    finally:
        proc.terminate()
        proc.wait(timeout=10)
