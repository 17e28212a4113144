"""`/edge` of `serval serve`: phase 1 of the two-phase example in a real headless Chromium
(Debian's `chromium`; skipped with a message where it is missing), on the WebAssembly build of
the edge runtime the server embeds, with phase 2 on the same server.

The oracle is the native edge runtime: `serval edge` on the same instances against the same
server. Phase 1's decisions, keys and phases must be the same; its numbers equal up to float
noise (tract's WebAssembly SIMD kernels and its x86 ones sum in different orders); phase 2's
answers are the server's and equal exactly."""

from __future__ import annotations

import html
import json
import re
import subprocess
import urllib.parse

import pytest
import requests

from support import CHROMIUM, NO_CHROMIUM, REPO, ROOT, ServalServer, chromium, serval_bin

PHASE1 = "digits_phase1"
DATA = ROOT / "examples" / "data" / "digits_two_phase.jsonl"
ATOL = 1e-5
BROWSER = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)


@pytest.fixture(scope="module")
def server():
    server = ServalServer(repo=REPO)
    yield server
    assert server.terminate() == 0, server.stderr_text()


@pytest.fixture(scope="module")
def engine(server):
    """The page's engine, or a skip saying why this build has none."""
    status = requests.get(f"{server.url}/edge/api/models", timeout=30).json()["engine"]
    if not status["available"]:
        pytest.skip(f"this serval was built without the browser engine: {status['why']}")
    return status


def body_data(dom: str) -> dict[str, str]:
    match = re.search(r"<body([^>]*)>", dom)
    assert match, dom[:2000]
    return {k: html.unescape(v) for k, v in re.findall(r'data-([a-z0-9-]+)="([^"]*)"', match.group(1))}


def page(server: ServalServer, instances: list[str], query: str = f"model={PHASE1}") -> tuple[dict, list[dict], str]:
    """Loads /edge with `instances` (JSON Lines) in the address; the body's figures, the answers
    the page shows and Chromium's log."""
    fragment = urllib.parse.urlencode({"instances": "\n".join(instances)}, quote_via=urllib.parse.quote)
    result = chromium("--dump-dom", f"{server.url}/edge?{query}#{fragment}", budget_ms=60000)
    assert result.returncode == 0, result.stderr[-3000:]
    pre = re.search(r'<pre id="answers"[^>]*>(.*?)</pre>', result.stdout, re.S)
    answers = [json.loads(line) for line in html.unescape(pre.group(1)).splitlines() if line.strip()] if pre else []
    return body_data(result.stdout), answers, result.stderr


def native(server: ServalServer, lines: list[str], tmp_path) -> list[dict]:
    data = tmp_path / "instances.jsonl"
    data.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    run = subprocess.run([str(serval_bin()), "edge", "--phase1", str(REPO / PHASE1 / "1" / "model.onnx"),
                          "--server", server.url, "--report-sample", "0", "--input", str(data)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(line) for line in run.stdout.splitlines() if line.strip()]


def assert_close(got, want, where: str):
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), f"{where}: {got} vs {want}"
        for name in want:
            assert_close(got[name], want[name], f"{where}.{name}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got} vs {want}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=ATOL), where
    else:
        assert got == want, f"{where}: {got!r} vs {want!r}"


def test_only_models_with_an_edge_section_are_offered_and_downloadable(server):
    listed = requests.get(f"{server.url}/edge/api/models", timeout=30).json()
    assert [m["name"] for m in listed["models"]] == [PHASE1], listed
    assert listed["models"][0]["phase2"] == "digits_phase2"
    info = requests.get(f"{server.url}/edge/api/models/{PHASE1}", timeout=30).json()
    assert info["phase2"] == {"model": "digits_phase2", "key": "key", "infer": "/v2/models/digits_phase2/infer"}
    assert info["config"]["edge"]["forward"]["when"] == "all"
    onnx = requests.get(f"{server.url}{info['file']}", timeout=30)
    assert onnx.status_code == 200
    assert onnx.content == (REPO / PHASE1 / "1" / "model.onnx").read_bytes()
    for url, status, needle in [
        ("/edge/api/models/digits_phase2", 404, "[edge]"),
        ("/edge/models/digits_phase2/versions/1/model.onnx", 404, "[edge]"),
        ("/edge/api/models/no_such_model", 404, "no_such_model"),
        (f"/edge/models/{PHASE1}/versions/7/model.onnx", 404, "version 7"),
        (f"/edge/models/{PHASE1}/versions/x/model.onnx", 400, "'x'"),
        # A name that would leave the repository is no model at all.
        ("/edge/models/..%2F..%2Fetc/versions/1/model.onnx", 404, "is not in the repository"),
    ]:
        r = requests.get(f"{server.url}{url}", timeout=30)
        assert r.status_code == status, (url, r.status_code, r.text)
        assert needle in r.json()["error"], (url, r.text)


def test_the_module_is_served_compressed_to_browsers_that_accept_it(server, engine):
    gz = requests.get(f"{server.url}/edge/pkg/serval_edge_wasm_bg.wasm", timeout=30, stream=True)
    assert gz.headers["content-type"] == "application/wasm"
    assert gz.headers["content-encoding"] == "gzip"
    compressed = len(gz.raw.read(decode_content=False))
    plain = requests.get(f"{server.url}/edge/pkg/serval_edge_wasm_bg.wasm", timeout=30,
                         headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content[:4] == b"\0asm"
    assert compressed < len(plain.content) / 2, (compressed, len(plain.content))


@BROWSER
def test_phase1_in_the_browser_answers_as_the_native_edge_runtime_and_phase2_as_the_server(server, engine, tmp_path):
    lines = DATA.read_text(encoding="utf-8").splitlines()[:200]
    figures, answers, log = page(server, lines)
    assert figures.get("state") == "done", (figures, log[-3000:])
    expected = native(server, lines, tmp_path)
    assert [a["key"] for a in answers] == [a["key"] for a in expected]
    forwarded = 0
    for got, want in zip(answers, expected):
        where = got["key"]
        assert got["phase"] == want["phase"] and got["provisional"] == want["provisional"], (got, want)
        assert got.get("forwarded") == want.get("forwarded"), where
        assert got["phase1"]["class"] == want["phase1"]["class"], where
        assert got["phase1"]["confidence"] == pytest.approx(want["phase1"]["confidence"], abs=ATOL), where
        if want["phase"] == 2:
            forwarded += 1
            assert got["version"] == want["version"] and got["outputs"] == want["outputs"], where
        else:
            assert_close(got["outputs"], want["outputs"], where)
    assert forwarded > 0, "the first 200 example lines hold unsure digits: some must go to phase 2"
    assert figures["answered2"] == str(forwarded) and figures["answered1"] == str(len(lines) - forwarded)
    for figure in ("ready-ms", "first-ms"):
        assert float(figures[figure]) > 0, figures


@BROWSER
def test_keyless_instances_get_minted_keys_and_bad_ones_an_error_on_the_page(server, engine):
    line = json.loads(DATA.read_text(encoding="utf-8").splitlines()[0])
    keyless = json.dumps({"features": line["features"]})
    figures, answers, log = page(server, [keyless, keyless])
    assert figures.get("state") == "done", (figures, log[-3000:])
    keys = [a["key"] for a in answers]
    assert len(set(keys)) == 2 and all(re.fullmatch(r"[0-9a-f-]{36}", k) and k[14] == "7" for k in keys), keys
    figures, answers, log = page(server, [json.dumps({"features": [1, 2, 3]})])
    assert figures.get("state") == "error", figures
    assert answers == []


@BROWSER
def test_a_model_without_an_edge_section_is_refused_by_the_page(server, engine):
    result = chromium("--dump-dom", f"{server.url}/edge?model=digits_phase2", budget_ms=30000)
    assert result.returncode == 0, result.stderr[-3000:]
    assert body_data(result.stdout).get("state") == "error"
    assert "[edge]" in html.unescape(result.stdout)
