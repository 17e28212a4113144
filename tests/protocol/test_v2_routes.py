"""Every OIP model route answers with and without `/versions/{v}`, and names a missing version."""

from __future__ import annotations

import pytest

MODEL = "iris_lr"
SUFFIXES = ["", "/ready", "/config", "/stats"]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_route_with_and_without_version(http, server, suffix):
    for prefix in (f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/versions/1"):
        res = http.get(f"{server.url}{prefix}{suffix}", timeout=10)
        assert res.status_code == 200, (prefix + suffix, res.text)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_unknown_version_is_404_naming_it(http, server, suffix):
    res = http.get(f"{server.url}/v2/models/{MODEL}/versions/9{suffix}", timeout=10)
    assert res.status_code == 404, res.text
    assert "version 9" in res.json()["error"]


def test_repository_extension_is_advertised(http, server):
    assert "model_repository" in http.get(f"{server.url}/v2", timeout=10).json()["extensions"]
