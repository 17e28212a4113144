"""`/dashboard` of `serval serve`, in a real headless Chromium (Debian's `chromium` package;
scripts/test.sh installs it, the test is skipped with a message where it is missing).

The served log is test_eval_drift.py's scenario (4 days of breast-cancer predictions against a
training profile; feature shifts on days 3 and 4), with labels whose last day is flipped in part
and an accuracy rule, so every plot has something to draw. The page reports what it drew in its
footer's data attributes; the test compares them with `serval eval`'s own JSON and writes the
screenshot the README shows (docs/dashboard.png)."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import requests

from support import CHROMIUM, NO_CHROMIUM, ROOT, ServalServer, chromium
from test_eval import MODEL, eval_json, fresh_log, import_labels
from test_eval_drift import scenario  # noqa: F401  (the module-scoped fixture)

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)

RULES = """
[[monitor.rules]]
metric = "accuracy"
below = 0.85
severity = "critical"
"""


@pytest.fixture(scope="module")
def dashboard(scenario, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("dashboard")
    repo = tmp / "repo"
    shutil.copytree(scenario.repo, repo)
    with (repo / MODEL / "config.toml").open("a") as f:
        f.write(RULES)
    log = fresh_log(scenario.log, tmp)
    # True labels, 40 % of the last day's flipped (a concept shift on top of its covariate shift).
    truth = scenario.truth.astype(int).copy()
    last_day = np.flatnonzero(scenario.day == 3)
    truth[np.random.default_rng(11).choice(last_day, int(0.4 * len(last_day)), replace=False)] ^= 1
    import_labels(log, tmp / "labels.csv", zip(scenario.keys, truth.tolist()))
    expected = eval_json(log, "--window", "1d", repo=repo)
    server = ServalServer("--prediction-log", str(log), repo=repo)
    try:
        yield server, expected
    finally:
        server.terminate()


def footer(dom: str) -> dict[str, str]:
    tag = re.search(r"<footer[^>]*>", dom)
    assert tag, dom[-2000:]
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', tag.group(0)))


def test_the_page_and_its_library_come_from_the_binary(dashboard):
    server, _ = dashboard
    page = requests.get(f"{server.url}/dashboard", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    assets = ROOT / "crates" / "serval-dashboard" / "assets"
    for asset, source in [("dashboard.js", assets / "dashboard.js"), ("dashboard.css", assets / "dashboard.css"),
                          ("echarts.min.js", assets / "vendor" / "echarts.min.js")]:
        response = requests.get(f"{server.url}/dashboard/{asset}", timeout=10)
        assert response.status_code == 200 and response.content == source.read_bytes(), asset


def test_the_api_is_serval_evals_json(dashboard):
    server, expected = dashboard
    body = requests.get(f"{server.url}/dashboard/api/eval", params={"model": MODEL, "window": "1d"}, timeout=120).json()
    reports = body["reports"]
    assert [{k: v for k, v in r.items() if k != "histograms"} for r in reports] == expected
    assert body["rules"][0]["metric"] == "accuracy"
    # Histograms for every drift column: shares of the reference and the window on shared bins.
    for report in reports:
        assert set(report["histograms"]) == set(report["drift"])
        for column, h in report["histograms"].items():
            assert sum(h["reference"]) == pytest.approx(1.0) and sum(h["current"]) == pytest.approx(1.0), column
    bad = requests.get(f"{server.url}/dashboard/api/eval", params={"model": "no_such_model"}, timeout=30)
    assert bad.status_code == 404 and "no_such_model" in bad.json()["error"]
    bad = requests.get(f"{server.url}/dashboard/api/eval", params={"model": MODEL, "window": "3x"}, timeout=30)
    assert bad.status_code == 400 and "3x" in bad.json()["error"]


def test_the_page_draws_every_plot_from_the_logged_data_without_errors(dashboard):
    server, expected = dashboard
    url = f"{server.url}/dashboard?model={MODEL}&window=1d"
    result = chromium("--dump-dom", url)
    assert result.returncode == 0, result.stderr[-3000:]
    state = footer(result.stdout)
    console_errors = [line for line in result.stderr.splitlines() if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)]
    assert not console_errors, console_errors
    assert state["state"] == "ready" and state["errors"] == "0", state
    assert state["charts"] == "4", state  # quality, coverage, drift heat map, histogram
    assert state["windows"] == str(len(expected))
    assert state["drift-cells"] == str(sum(len(w["drift"]) for w in expected))
    alerts = sum(len(w["alerts"]) for w in expected)
    assert alerts >= 1 and state["alerts"] == str(alerts), state


def test_a_screenshot_for_the_readme(dashboard):
    server, _ = dashboard
    target = ROOT / "docs" / "dashboard.png"
    result = chromium("--window-size=1400,1300", f"--screenshot={target}", f"{server.url}/dashboard?model={MODEL}&window=1d")
    assert result.returncode == 0, result.stderr[-3000:]
    assert target.stat().st_size > 50_000  # a page of plots, not a blank one
