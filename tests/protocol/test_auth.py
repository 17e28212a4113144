"""Bearer tokens with scopes (`--auth-tokens`) on both ports of a real `serval serve`: each
endpoint class needs its scope, health and metrics are open unless `--auth-open` says otherwise,
a bad token file stops the server without quoting a token, and no token reaches the logs."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support import IRIS, assert_error, assert_v2_answer, serving, small_repo, start_fails, triton_infer, v2_infer

# One token per scope, and one with them all; random, so that finding one in a log means it
# was written there. The file gives some a name and leaves one nameless.
SCOPES = ("infer", "labels", "admin", "metrics", "pages")
TOKENS = {scope: f"{scope}-{secrets.token_hex(16)}" for scope in SCOPES}
TOKENS["all"] = f"all-{secrets.token_hex(16)}"
WRONG = f"wrong-{secrets.token_hex(16)}"
ROW = [5.1, 3.5, 1.4, 0.2]


def bearer(scope_or_token: str, header: str = "Authorization") -> dict[str, str]:
    """The header carrying the token of a scope in TOKENS (or a token as it is)."""
    return {header: f"Bearer {TOKENS.get(scope_or_token, scope_or_token)}"}


def grpc_bearer(scope_or_token: str) -> dict[str, str]:
    """The same as gRPC metadata, whose keys are lower case."""
    return bearer(scope_or_token, "authorization")


def token_file(directory: Path) -> Path:
    path = directory / "tokens.txt"
    path.write_text(
        "# serval test tokens: <token> <scope>[,<scope>...] [<name>]\n"
        "\n"
        f"{TOKENS['infer']} infer infer-client\n"
        f"{TOKENS['labels']} labels\n"
        f"   {TOKENS['admin']}   admin   operator\n"
        f"{TOKENS['metrics']} metrics prometheus\n"
        "# pages only\n"
        f"{TOKENS['pages']} pages browser\n"
        f"{TOKENS['all']} infer,labels,admin,metrics,pages everything\n"
    )
    return path


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """Tokens required (health and metrics open, the default), a prediction log for labels,
    logging at debug level for the log check."""
    tmp = tmp_path_factory.mktemp("auth")
    with serving("--auth-tokens", str(token_file(tmp)), "--prediction-log", str(tmp / "log"),
                 repo=small_repo(tmp), env={"SERVAL_LOG": "debug"}) as server:
        yield server


def assert_unauthenticated(response: requests.Response):
    assert_error(response, 401)
    challenge = response.headers.get("www-authenticate", "")
    assert challenge.startswith("Bearer"), response.headers


def grpc_status(call) -> str:
    """The status of a tritonclient.grpc call expected to fail, e.g. `StatusCode.UNAUTHENTICATED`."""
    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value.status()


HEALTH = ["/v2/health/live", "/v2/health/ready", f"/v2/models/{IRIS}/ready", f"/v2/models/{IRIS}/versions/1/ready"]
INFER = [
    # method, path, JSON body
    ("GET", "/v2", None),
    ("GET", f"/v2/models/{IRIS}", None),
    ("GET", f"/v2/models/{IRIS}/config", None),
    ("GET", f"/v2/models/{IRIS}/stats", None),
    ("GET", f"/v1/models/{IRIS}", None),
    ("GET", f"/v1/models/{IRIS}/metadata", None),
    ("POST", f"/v1/models/{IRIS}:predict", {"instances": [ROW]}),
    ("POST", f"/v2/models/{IRIS}/infer",
     {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}),
]


def test_health_and_metrics_are_open_and_the_rest_needs_an_infer_token(auth_server):
    url = auth_server.url
    for path in HEALTH:
        r = requests.get(f"{url}{path}", timeout=10)
        assert r.status_code == 200, (path, r.text)
    metrics = requests.get(f"{url}/metrics", timeout=10)
    assert metrics.status_code == 200 and "serval_" in metrics.text, metrics.text[:300]
    for method, path, body in INFER:
        for headers in ({}, bearer(WRONG), {"Authorization": f"Basic {TOKENS['infer']}"}):
            r = requests.request(method, f"{url}{path}", json=body, headers=headers, timeout=30)
            assert_unauthenticated(r)
        r = requests.request(method, f"{url}{path}", json=body, headers=bearer("labels"), timeout=30)
        assert_error(r, 403, "infer")
        r = requests.request(method, f"{url}{path}", json=body, headers=bearer("infer"), timeout=30)
        assert r.status_code == 200, (method, path, r.text)
    assert_v2_answer(v2_infer(url, headers=bearer("infer")))
    assert_v2_answer(v2_infer(url, headers=bearer("all")))


def test_each_scope_opens_its_own_endpoints(auth_server):
    url = auth_server.url
    index = f"{url}/v2/repository/index"
    labels = f"{url}/v1/models/{IRIS}/labels"
    entry = {"labels": [{"key": "k1", "label": "setosa"}]}
    # Admin: the repository API.
    assert_unauthenticated(requests.post(index, json={}, timeout=10))
    for scope in ("infer", "labels", "metrics", "pages"):
        assert_error(requests.post(index, json={}, headers=bearer(scope), timeout=10), 403, "admin")
    listed = requests.post(index, json={}, headers=bearer("admin"), timeout=10)
    assert listed.status_code == 200, listed.text
    assert IRIS in {e["name"] for e in listed.json()}
    assert_error(v2_infer(url, headers=bearer("admin")), 403, "infer")
    unload = requests.post(f"{url}/v2/repository/models/{IRIS}/unload", headers=bearer("admin"), timeout=30)
    assert unload.status_code == 200, unload.text
    assert v2_infer(url, headers=bearer("infer")).status_code == 503
    load = requests.post(f"{url}/v2/repository/models/{IRIS}/load", headers=bearer("admin"), timeout=60)
    assert load.status_code == 200, load.text
    assert_v2_answer(v2_infer(url, headers=bearer("infer")))
    # Labels: ground truth.
    assert_unauthenticated(requests.post(labels, json=entry, timeout=10))
    for scope in ("infer", "admin"):
        assert_error(requests.post(labels, json=entry, headers=bearer(scope), timeout=10), 403, "labels")
    posted = requests.post(labels, json=entry, headers=bearer("labels"), timeout=10)
    assert posted.status_code == 200, posted.text
    assert posted.json() == {"accepted": 1}
    # Pages: the edge page's API (the dashboard's too).
    for path in ("/edge/api/models", "/dashboard"):
        assert_unauthenticated(requests.get(f"{url}{path}", timeout=10))
        assert_error(requests.get(f"{url}{path}", headers=bearer("infer"), timeout=10), 403, "pages")
    r = requests.get(f"{url}/edge/api/models", headers=bearer("pages"), timeout=30)
    assert r.status_code == 200, r.text


def test_auth_open_none_closes_health_and_metrics(tmp_path):
    with serving("--auth-tokens", str(token_file(tmp_path)), "--auth-open", "none", repo=small_repo(tmp_path),
                 probe={"headers": bearer("all")}) as server:
        url = server.url
        for path in HEALTH:
            assert_unauthenticated(requests.get(f"{url}{path}", timeout=10))
            r = requests.get(f"{url}{path}", headers=bearer("infer"), timeout=10)
            assert r.status_code == 200, (path, r.text)
        assert_unauthenticated(requests.get(f"{url}/metrics", timeout=10))
        assert_error(requests.get(f"{url}/metrics", headers=bearer("infer"), timeout=10), 403, "metrics")
        metrics = requests.get(f"{url}/metrics", headers=bearer("metrics"), timeout=10)
        assert metrics.status_code == 200 and "serval_" in metrics.text, metrics.text[:300]
        with grpcclient.InferenceServerClient(server.grpc_addr) as client:
            assert "UNAUTHENTICATED" in grpc_status(lambda: client.is_server_live(client_timeout=10))
            assert client.is_server_live(headers=grpc_bearer("infer"), client_timeout=10)


def test_tritonclient_http_sends_the_token_in_its_headers(auth_server):
    with httpclient.InferenceServerClient(auth_server.http_addr) as client:
        assert client.is_server_ready()
        triton_infer(client, httpclient, headers=bearer("infer"))
        for headers in (None, bearer(WRONG)):
            with pytest.raises(InferenceServerException) as err:
                triton_infer(client, httpclient, headers=headers)
            assert err.value.status() == "401", err.value
        with pytest.raises(InferenceServerException) as err:
            client.get_model_repository_index(headers=bearer("infer"))
        assert err.value.status() == "403", err.value
        assert IRIS in {m["name"] for m in client.get_model_repository_index(headers=bearer("admin"))}


def test_tritonclient_grpc_sends_the_token_as_metadata(auth_server):
    with grpcclient.InferenceServerClient(auth_server.grpc_addr) as client:
        # Health is open.
        assert client.is_server_live(client_timeout=10)
        assert client.is_server_ready(client_timeout=10)
        assert client.is_model_ready(IRIS, client_timeout=10)
        triton_infer(client, grpcclient, headers=grpc_bearer("infer"), client_timeout=30)
        for headers in (None, grpc_bearer(WRONG)):
            status = grpc_status(lambda: triton_infer(client, grpcclient, headers=headers, client_timeout=30))
            assert "UNAUTHENTICATED" in status, status
        assert "UNAUTHENTICATED" in grpc_status(lambda: client.get_model_metadata(IRIS, client_timeout=10))
        assert "UNAUTHENTICATED" in grpc_status(lambda: client.get_server_metadata(client_timeout=10))
        assert client.get_model_metadata(IRIS, headers=grpc_bearer("infer"), client_timeout=10).name == IRIS
        status = grpc_status(lambda: triton_infer(client, grpcclient, headers=grpc_bearer("admin"), client_timeout=30))
        assert "PERMISSION_DENIED" in status, status
        status = grpc_status(lambda: client.get_model_repository_index(headers=grpc_bearer("infer"), client_timeout=10))
        assert "PERMISSION_DENIED" in status, status
        index = client.get_model_repository_index(headers=grpc_bearer("admin"), as_json=True, client_timeout=10)
        assert any(m["name"] == IRIS for m in index["models"]), index


BAD_TOKEN_FILES = [
    # id, file text, what the message must name
    ("short-token", "# tokens\n\n{short} infer\n", ["line 3"]),
    ("unknown-scope", "{long} infer\n{long2} infer,predict ops\n", ["line 2", "predict"]),
    ("no-scope", "{long}\n", ["line 1"]),
]


@pytest.mark.parametrize("case", BAD_TOKEN_FILES, ids=[c[0] for c in BAD_TOKEN_FILES])
def test_a_bad_token_file_stops_the_server_naming_the_line_not_the_token(tmp_path, case):
    _, text, needles = case
    secrets_in_file = {"short": secrets.token_hex(5), "long": secrets.token_hex(16), "long2": secrets.token_hex(16)}
    assert len(secrets_in_file["short"]) == 10
    path = tmp_path / "tokens.txt"
    path.write_text(text.format(**secrets_in_file))
    output = start_fails("--auth-tokens", str(path), repo=small_repo(tmp_path))
    for needle in needles:
        assert needle in output, f"{needle!r} not in:\n{output[-2000:]}"
    for secret in secrets_in_file.values():
        assert secret not in output, f"a token is quoted in:\n{output[-2000:]}"


def test_an_unknown_open_class_stops_the_server_naming_it(tmp_path):
    output = start_fails("--auth-tokens", str(token_file(tmp_path)), "--auth-open", "health,everything",
                         repo=small_repo(tmp_path))
    assert "everything" in output, output[-2000:]


def test_no_token_reaches_the_logs(auth_server):
    """After accepted, refused and forbidden requests on both ports, at debug level."""
    url = auth_server.url
    assert_v2_answer(v2_infer(url, headers=bearer("infer")))
    assert_unauthenticated(v2_infer(url, headers=bearer(WRONG)))
    assert_error(v2_infer(url, headers=bearer("metrics")), 403)
    assert requests.post(f"{url}/v2/repository/index", headers=bearer("admin"), timeout=10).status_code == 200
    assert requests.get(f"{url}/metrics", headers=bearer("all"), timeout=10).status_code == 200
    with grpcclient.InferenceServerClient(auth_server.grpc_addr) as client:
        triton_infer(client, grpcclient, headers=grpc_bearer("all"), client_timeout=30)
        grpc_status(lambda: triton_infer(client, grpcclient, headers=grpc_bearer(WRONG), client_timeout=30))
        grpc_status(lambda: client.get_model_repository_index(headers=grpc_bearer("labels"), client_timeout=10))
    logs = auth_server.stderr_text(limit=1 << 30) + "\n".join(auth_server.stdout_lines)
    assert "DEBUG" in logs, "no debug output captured: the check below would prove nothing"
    for name, token in [*TOKENS.items(), ("wrong", WRONG)]:
        assert token not in logs, f"the {name} token is in the server's logs"
