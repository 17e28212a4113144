"""`serval eval watch` and `serval serve --evaluate-every`: alert rules evaluated over the
prediction log, each alert delivered once (webhooks with HMAC signatures and retries, the
`on_alert` command) and recorded in the log's `alerts` table, against real processes. The log
comes from a real `serval serve`: 300 rows of load_breast_cancer over TF Serving REST, labelled by
key over HTTP, the last 100 with 40 % of their labels flipped (a concept shift). Windows are row
windows (`100rows`), so nothing depends on the clock. The webhook receiver is a real HTTP server
in the test process that records every request and answers with a status script."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests
from sklearn.datasets import load_breast_cancer

from support import ServalServer, free_port
from test_eval import MODEL, eval_json, fresh_log, repo_with_rules, run_eval, serval
from test_eval_drift import write_training
from test_labels import sql

N = 300  # logged rows, sent in 3 requests of 100
CHUNK = 100
FLIPPED = 40  # of the last 100 labels
SECRET = "s3cret"
SIGNATURE = "x-serval-signature-256"
MONITOR = """
[monitor]
min_labelled = 30
"""
ACCURACY_RULE = """
[[monitor.rules]]
metric = "accuracy"
below = 0.9
severity = "critical"
"""
ALERT_KEYS = {"model", "version", "window_start", "window_end", "rule", "metric", "value", "condition",
              "threshold", "windows", "severity", "rows", "label_coverage"}
TABLE_COLUMNS = ["model", "version", "slice", "window_start", "window_end", "rule", "metric", "value",
                 "condition", "threshold", "windows", "severity", "rows", "label_coverage", "fired_at",
                 "delivery", "date"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


# ---------------------------------------------------------------------------------------------
# The webhook receiver
# ---------------------------------------------------------------------------------------------

@dataclass
class Post:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


class Receiver:
    """An HTTP server on 127.0.0.1 (an OS-assigned port, in a thread): records every POST and
    answers each path with the next status of its script, 200 once the script is used up."""

    def __init__(self, scripts: dict[str, list[int]] | None = None):
        self._posts: list[Post] = []
        self._scripts = {path: list(statuses) for path, statuses in (scripts or {}).items()}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    receiver._posts.append(Post(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    script = receiver._scripts.get(self.path, [])
                    status = script.pop(0) if script else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self._server.server_port}{path}"

    def posts(self, path: str | None = None) -> list[Post]:
        with self._lock:
            return [p for p in self._posts if path is None or p.path == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receivers():
    """Makes receivers (`receivers({"/path": [503, 200]})`); closes them after the test."""
    made: list[Receiver] = []

    def make(scripts: dict[str, list[int]] | None = None) -> Receiver:
        made.append(Receiver(scripts))
        return made[-1]

    yield make
    for r in made:
        r.close()


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------

def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds}s: {what}")
        time.sleep(0.2)


def count(repo: Path, log: Path, table: str) -> int:
    """`SELECT count(*)` over a log table; -1 while the table cannot be read yet (nothing rolled)."""
    res = serval("sql", repo, f"SELECT count(*) FROM {table} WHERE model = '{MODEL}'",
                 "--prediction-log", log, timeout=120)
    cells = re.findall(r"^\|\s*(\d+)\s*\|$", res.stdout, re.MULTILINE)
    return int(cells[0]) if res.returncode == 0 and cells else -1


def watch(repo: Path, log: Path, *flags: str, webhooks=(), evaluator: str = "watch-1") -> list[dict]:
    """`serval eval watch --once` over row windows: the JSON lines it printed, one per alert."""
    hooks = [arg for url in webhooks for arg in ("--webhook", url)]
    res = serval("eval", "watch", repo, "--prediction-log", log, "--once", "--evaluate-window", "100rows",
                 "--evaluator-id", evaluator, *hooks, *flags, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    for line in lines:
        assert set(line) == {"alert", "delivery"}, line
        assert set(line["alert"]) == ALERT_KEYS, sorted(line["alert"])
        assert set(line["delivery"]) == {"webhooks", "command_status"}, line["delivery"]
    return lines


def alerts_table(repo: Path, log: Path) -> list[dict]:
    """The log's `alerts` table through `serval sql`, as printed cells by column name."""
    quoted = ", ".join(f'"{c}"' for c in TABLE_COLUMNS)
    rows = sql(log, f"SELECT {quoted} FROM alerts ORDER BY fired_at", repo=repo)
    assert all(len(r) == len(TABLE_COLUMNS) for r in rows), rows
    return [dict(zip(TABLE_COLUMNS, r)) for r in rows]


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def assert_recorded(row: dict, line: dict) -> None:
    """A row of the `alerts` table holds the alert and the delivery `serval eval watch` printed."""
    alert = line["alert"]
    assert row["model"] == alert["model"] and int(row["version"]) == alert["version"], row
    assert row["slice"] == "", f"no --slice, yet slice {row['slice']!r}"
    for key in ("window_start", "window_end"):
        assert instant(row[key]) == instant(alert[key]), (key, row[key], alert[key])
    for key in ("rule", "metric", "condition", "severity"):
        assert row[key] == alert[key], (key, row[key], alert[key])
    for key in ("value", "threshold", "label_coverage"):
        assert float(row[key]) == pytest.approx(alert[key], rel=1e-12, abs=1e-12), (key, row[key], alert[key])
    for key in ("windows", "rows"):
        assert int(row[key]) == alert[key], (key, row[key], alert[key])
    assert json.loads(row["delivery"]) == line["delivery"], row["delivery"]


def signed(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# ---------------------------------------------------------------------------------------------
# The scenario: a real server, real traffic, labels by key
# ---------------------------------------------------------------------------------------------

@dataclass
class Traffic:
    repo: Path  # a copy of examples/models, breast_cancer_lr with `accuracy below 0.9`
    log: Path  # 300 predictions and their labels, no alerts; tests copy it
    X: np.ndarray
    rows: np.ndarray  # the dataset rows sent, in order
    accuracy: list[float]  # per 100 rows, from the server's answers and the posted labels
    report: list[dict]  # `serval eval --window 100rows --format json`
    alert: dict  # the one alert expected: the third window's

    def unsent(self) -> np.ndarray:
        return np.setdiff1d(np.arange(len(self.X)), self.rows)


@pytest.fixture(scope="module")
def traffic(tmp_path_factory) -> Traffic:
    tmp = tmp_path_factory.mktemp("watch")
    repo = repo_with_rules(tmp, MONITOR + ACCURACY_RULE)
    X, y = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(2026)
    rows = rng.choice(len(y), N, replace=False)
    keys = [f"bc-{r:03d}" for r in rows]
    labels = y[rows].astype(np.int64)
    labels[2 * CHUNK + rng.choice(CHUNK, FLIPPED, replace=False)] ^= 1  # concept shift, rows 200-300
    log = tmp / "log"
    server = ServalServer("--prediction-log", str(log), "--prediction-log-roll-secs", "1", repo=repo)
    pred: list[int] = []
    try:
        with requests.Session() as http:
            for start in range(0, N, CHUNK):
                chunk = range(start, start + CHUNK)
                body = {"instances": [{"key": keys[i], "features": X[rows[i]].astype(np.float32).tolist()}
                                      for i in chunk]}
                r = http.post(f"{server.url}/v1/models/{MODEL}:predict", json=body, timeout=60)
                assert r.status_code == 200, r.text
                answered = r.json()["predictions"]
                assert [p["key"] for p in answered] == [keys[i] for i in chunk]
                pred += [int(p["label"]) for p in answered]
            r = http.post(f"{server.url}/v1/models/{MODEL}/labels",
                          json={"labels": [{"key": k, "label": int(v)} for k, v in zip(keys, labels)]},
                          timeout=60)
            assert r.status_code == 200 and r.json() == {"accepted": N}, r.text
        wait_for(lambda: count(repo, log, "predictions") == N and count(repo, log, "labels") == N, 120,
                 f"{N} predictions and {N} labels in the log")
    finally:
        code = server.terminate()
    assert code == 0, server.stderr_text()

    right = np.array(pred) == labels
    accuracy = [float(right[s:s + CHUNK].mean()) for s in range(0, N, CHUNK)]
    # The scenario's premise: the first 200 rows pass the rule, the shifted 100 do not.
    assert accuracy[0] >= 0.9 and accuracy[1] >= 0.9 and accuracy[2] < 0.9, accuracy
    report = eval_json(log, "--window", "100rows", repo=repo)
    assert [(w["rows"], w["labelled"]) for w in report] == [(CHUNK, CHUNK)] * 3, report
    assert [w["metrics"]["accuracy"] for w in report] == pytest.approx(accuracy, abs=1e-12)
    third = report[2]
    alert = {"model": MODEL, "version": 1, "window_start": third["window_start"],
             "window_end": third["window_end"], "rule": "accuracy < 0.9", "metric": "accuracy",
             "value": third["metrics"]["accuracy"], "condition": "below", "threshold": 0.9, "windows": 1,
             "severity": "critical", "rows": CHUNK, "label_coverage": 1.0}
    assert [w["alerts"] for w in report] == [[], [], [alert]]
    return Traffic(repo, log, X, rows, accuracy, report, alert)


# ---------------------------------------------------------------------------------------------
# 1. The scenario
# ---------------------------------------------------------------------------------------------

def test_the_concept_shift_fires_one_alert_delivered_recorded_and_never_again(traffic, tmp_path, receivers):
    log = fresh_log(traffic.log, tmp_path)
    receiver = receivers()
    before = datetime.now(timezone.utc)
    lines = watch(traffic.repo, log, webhooks=[receiver.url()], evaluator="watch-1")
    after = datetime.now(timezone.utc)
    assert [line["alert"] for line in lines] == [traffic.alert], lines
    (line,) = lines
    assert line["delivery"] == {"webhooks": [{"url": receiver.url(), "delivered": True, "attempts": 1}],
                                "command_status": None}
    (post,) = receiver.posts()
    assert post.path == "/hook"
    assert post.headers.get("content-type", "").startswith("application/json"), post.headers
    assert json.loads(post.body) == line["alert"]
    assert SIGNATURE not in post.headers, "no secret, no signature"

    (row,) = alerts_table(traffic.repo, log)
    assert_recorded(row, line)
    fired_at = instant(row["fired_at"])
    assert before - timedelta(seconds=1) <= fired_at <= after + timedelta(seconds=1), (before, fired_at, after)
    # LOG/alerts/model=<m>/date=<d>/<evaluator-id>-<µs>.parquet
    (path,) = [p.relative_to(log / "alerts") for p in (log / "alerts").rglob("*.parquet")]
    assert path.parts[0] == f"model={MODEL}", path
    assert path.parts[1] == f"date={row['date']}", path
    assert row["date"] in {fired_at.date().isoformat(), instant(row["window_start"]).date().isoformat()}, row
    assert re.fullmatch(r"watch-1-\d+\.parquet", path.parts[2]), path

    # A second watcher (another process, another id) finds the alert recorded: nothing fires.
    assert watch(traffic.repo, log, webhooks=[receiver.url()], evaluator="watch-2") == []
    assert len(receiver.posts()) == 1
    assert len(alerts_table(traffic.repo, log)) == 1
    # `serval eval` still shows the alert in its window: it reports, the watcher delivers.
    assert [w["alerts"] for w in eval_json(log, "--window", "100rows", repo=traffic.repo)] == [[], [], [traffic.alert]]


# ---------------------------------------------------------------------------------------------
# 2. HMAC signatures
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("secret_from", ["flag", "env", "none"])
def test_the_webhook_body_is_signed_with_the_secret(traffic, tmp_path, receivers, monkeypatch, secret_from):
    monkeypatch.delenv("SERVAL_WEBHOOK_SECRET", raising=False)
    flags = []
    if secret_from == "flag":
        flags = ["--webhook-secret", SECRET]
    elif secret_from == "env":
        monkeypatch.setenv("SERVAL_WEBHOOK_SECRET", SECRET)
    receiver = receivers()
    (line,) = watch(traffic.repo, fresh_log(traffic.log, tmp_path), *flags, webhooks=[receiver.url()])
    (post,) = receiver.posts()
    assert json.loads(post.body) == line["alert"] == traffic.alert
    if secret_from == "none":
        assert SIGNATURE not in post.headers, post.headers
    else:
        assert post.headers.get(SIGNATURE) == signed(post.body), (post.headers.get(SIGNATURE), signed(post.body))
        assert post.headers[SIGNATURE] != signed(post.body, "other"), "the signature depends on the secret"


# ---------------------------------------------------------------------------------------------
# 3. Retries
# ---------------------------------------------------------------------------------------------

def test_5xx_and_429_are_retried_other_4xx_are_not(traffic, tmp_path, receivers):
    log = fresh_log(traffic.log, tmp_path)
    receiver = receivers({"/flaky": [503, 503, 200], "/limited": [429, 200], "/bad": [400]})
    urls = {path: receiver.url(path) for path in ("/flaky", "/limited", "/bad")}
    (line,) = watch(traffic.repo, log, webhooks=urls.values())
    assert line["alert"] == traffic.alert
    by_url = {w["url"]: w for w in line["delivery"]["webhooks"]}
    assert set(by_url) == set(urls.values()), line["delivery"]
    assert by_url[urls["/flaky"]] == {"url": urls["/flaky"], "delivered": True, "attempts": 3}
    assert by_url[urls["/limited"]] == {"url": urls["/limited"], "delivered": True, "attempts": 2}
    bad = by_url[urls["/bad"]]
    assert (bad["delivered"], bad["attempts"]) == (False, 1), bad
    assert "400" in bad.get("error", ""), bad
    assert [len(receiver.posts(p)) for p in urls] == [3, 2, 1]
    # Every attempt sends the same alert.
    assert all(json.loads(p.body) == traffic.alert for p in receiver.posts())
    (row,) = alerts_table(traffic.repo, log)
    assert_recorded(row, line)


def test_an_unreachable_webhook_uses_its_attempts_and_the_alert_is_still_recorded(traffic, tmp_path, receivers):
    log = fresh_log(traffic.log, tmp_path)
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    (line,) = watch(traffic.repo, log, "--webhook-attempts", "2", webhooks=[dead])
    assert line["alert"] == traffic.alert
    (entry,) = line["delivery"]["webhooks"]
    assert (entry["url"], entry["delivered"], entry["attempts"]) == (dead, False, 2), entry
    assert isinstance(entry.get("error"), str) and entry["error"], entry
    (row,) = alerts_table(traffic.repo, log)
    assert_recorded(row, line)
    # Recorded, so not fired again, even to a webhook that now answers.
    receiver = receivers()
    assert watch(traffic.repo, log, webhooks=[receiver.url()], evaluator="watch-2") == []
    assert receiver.posts() == []
    assert len(alerts_table(traffic.repo, log)) == 1


# ---------------------------------------------------------------------------------------------
# 4. on_alert and per-model webhooks
# ---------------------------------------------------------------------------------------------

def test_on_alert_gets_the_alert_on_stdin_and_its_exit_status_is_recorded(traffic, tmp_path, receivers):
    receiver = receivers()
    script = tmp_path / "on_alert.py"
    script.write_text("import sys\n"
                      "with open(sys.argv[1], 'wb') as f:\n"
                      "    f.write(sys.stdin.buffer.read())\n"
                      "sys.exit(3)\n")
    out = tmp_path / "alert.json"
    monitor = (f"\n[monitor]\nwebhooks = [{json.dumps(receiver.url())}]\n"
               f"on_alert = {json.dumps([sys.executable, str(script), str(out)])}\n")
    repo = repo_with_rules(tmp_path, monitor + ACCURACY_RULE)
    log = fresh_log(traffic.log, tmp_path)
    (line,) = watch(repo, log)  # no --webhook: the model's own
    assert line["alert"] == traffic.alert
    assert json.loads(out.read_text()) == line["alert"]
    assert line["delivery"] == {"webhooks": [{"url": receiver.url(), "delivered": True, "attempts": 1}],
                                "command_status": 3}
    (post,) = receiver.posts()
    assert json.loads(post.body) == traffic.alert
    (row,) = alerts_table(repo, log)
    assert_recorded(row, line)
    assert json.loads(row["delivery"])["command_status"] == 3


# ---------------------------------------------------------------------------------------------
# 5. The evaluator in `serval serve`
# ---------------------------------------------------------------------------------------------

LABELS = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def gauges(server: ServalServer) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """breast_cancer_lr version 1 on /metrics: serval_eval_metric by metric,
    serval_drift_value by (feature, method)."""
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    metric, drift = {}, {}
    for name, labels, value in re.findall(r"^(serval_eval_metric|serval_drift_value)\{([^}]*)\}\s+(\S+)$",
                                          text, re.MULTILINE):
        tags = dict(LABELS.findall(labels))
        if (tags.get("model"), tags.get("version")) != (MODEL, "1"):
            continue
        if name == "serval_eval_metric":
            metric[tags["metric"]] = float(value)
        else:
            drift[(tags["feature"], tags["method"])] = float(value)
    return metric, drift


def polls(server: ServalServer) -> list[int]:
    """`fired` of every "evaluated" line the server logged, in order."""
    text = ANSI.sub("", server.stderr_text(limit=10_000_000))
    return [int(m) for m in re.findall(r"evaluated\b.*?\bfired=(\d+)", text)]


def test_serve_publishes_the_newest_window_and_fires_once_over_several_polls(traffic, tmp_path, receivers,
                                                                            monkeypatch):
    repo = tmp_path / "repo"
    shutil.copytree(traffic.repo, repo)
    unsent = traffic.unsent()
    write_training(tmp_path / "train.csv", [f"train-{i:03d}" for i in unsent], traffic.X[unsent])
    res = serval("profile", repo, MODEL, "--data", tmp_path / "train.csv")
    assert res.returncode == 0, res.stderr
    log = fresh_log(traffic.log, tmp_path)
    newest = eval_json(log, "--window", "100rows", repo=repo)[-1]
    assert newest["metrics"]["accuracy"] == pytest.approx(traffic.accuracy[2], abs=1e-12)
    assert newest["drift"] and newest["drift_share"] is not None, "the profile gives drift"

    receiver = receivers()
    monkeypatch.setenv("SERVAL_LOG", "warn,serval::eval=info")  # the "evaluated" line of each poll
    server = ServalServer("--prediction-log", str(log), "--evaluate-every", "1s", "--evaluate-window", "100rows",
                          "--webhook", receiver.url(), repo=repo)
    try:
        def published():
            found = gauges(server)
            return found if "accuracy" in found[0] else None

        metric, drift = wait_for(published, 60, 'serval_eval_metric{metric="accuracy"} on /metrics')
        assert metric["accuracy"] == newest["metrics"]["accuracy"], (metric["accuracy"], newest["metrics"]["accuracy"])
        expected = {name: v for name, v in newest["metrics"].items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)}
        expected.update({f"estimated.{name}": v for name, v in newest["estimated"].items()})
        expected.update(label_coverage=newest["label_coverage"], rows=newest["rows"],
                        drift_share=newest["drift_share"])
        assert set(metric) == set(expected), sorted(set(metric) ^ set(expected))
        for name, value in expected.items():
            assert metric[name] == pytest.approx(value, rel=1e-12, abs=1e-12), (name, metric[name], value)
        want = {(column, d["method"]): d["value"] for column, d in newest["drift"].items()}
        assert set(drift) == set(want), sorted(set(drift) ^ set(want))
        for key, value in want.items():
            assert drift[key] == pytest.approx(value, rel=1e-12, abs=1e-300), (key, drift[key], value)

        wait_for(lambda: receiver.posts(), 60, "the webhook POST from the server")
        wait_for(lambda: len(polls(server)) >= 3, 60, "3 evaluations by the server")
        assert server.alive(), server.stderr_text()
        (post,) = receiver.posts()
        assert json.loads(post.body) == traffic.alert
        assert sum(polls(server)) == 1, polls(server)
        printed = [json.loads(line) for line in server.stdout_lines if line.startswith("{")]
        assert [p["alert"] for p in printed] == [traffic.alert], printed
    finally:
        code = server.terminate()
    assert code == 0, server.stderr_text()
    (row,) = alerts_table(repo, log)
    assert_recorded(row, printed[0])
    # A watcher after the server finds it recorded.
    assert watch(repo, log, webhooks=[receiver.url()], evaluator="after-serve") == []
    assert len(receiver.posts()) == 1


# ---------------------------------------------------------------------------------------------
# 6. Errors
# ---------------------------------------------------------------------------------------------

def refused(*args: str) -> subprocess.CompletedProcess:
    """Runs serval expecting a quick refusal (a server that starts instead is killed, failing)."""
    try:
        res = serval(*args, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"serval {' '.join(map(str, args))} ran instead of refusing")
    assert res.returncode != 0, res.stdout
    return res


@pytest.mark.parametrize("command, args, named", [
    ("eval-watch", ["--evaluate-every", "3x"], "3x"),
    ("eval-watch", ["--evaluate-window", "3x"], "3x"),
    ("serve", ["--evaluate-every", "3x"], "3x"),
    ("serve-no-log", ["--evaluate-every", "1s"], "--prediction-log"),
], ids=["watch-every-3x", "watch-window-3x", "serve-every-3x", "serve-without-log"])
def test_a_bad_evaluator_flag_is_refused_naming_it(traffic, tmp_path, monkeypatch, command, args, named):
    monkeypatch.delenv("SERVAL_PREDICTION_LOG", raising=False)
    log = fresh_log(traffic.log, tmp_path)
    serve = ["serve", traffic.repo, "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0"]
    if command == "eval-watch":
        res = refused("eval", "watch", traffic.repo, "--prediction-log", log, "--once", *args)
    elif command == "serve":
        res = refused(*serve, "--prediction-log", log, *args)
    else:
        res = refused(*serve, *args)
    assert named in res.stderr, res.stderr
    assert not list(log.glob("alerts/**/*.parquet")), "nothing recorded"


def test_a_malformed_rule_is_refused_naming_monitor_rules(traffic, tmp_path):
    repo = repo_with_rules(tmp_path, '\n[[monitor.rules]]\nmetric = "accuracy"\nbelow = 0.9\nabove = 0.1\n')
    log = fresh_log(traffic.log, tmp_path)
    res = run_eval(log, "--window", "100rows", "--format", "json", repo=repo)
    assert res.returncode != 0, res.stdout
    assert "monitor.rules" in res.stderr and "accuracy" in res.stderr, res.stderr
    assert res.stdout.strip() == "", res.stdout
    # The watcher names it too and fires nothing; it goes on with the other models, and a single
    # run (--once) then fails, so cron or CI sees it.
    res = serval("eval", "watch", repo, "--prediction-log", log, "--once", "--evaluate-window", "100rows",
                 timeout=120)
    assert res.returncode != 0, res.stderr
    assert "monitor.rules" in res.stderr and MODEL in res.stderr, res.stderr
    assert res.stdout.strip() == "", res.stdout
    assert not list(log.glob("alerts/**/*.parquet")), "nothing recorded"
