"""`serval edge`: the device half of two-phase predictions, against real processes. Phase 1
(examples/models/digits_phase1, 11 classes with `not_digit`) runs in the edge process; phase 2
(digits_phase2) is a real `serval serve`. ONNX Runtime in this process is the oracle of both
phases' numbers and of every decision the policy makes. Offline store-and-forward is tested
with the server down (a closed port), killed with SIGKILL mid-stream and restarted on the same
port, with the edge process itself killed with SIGKILL, with a torn or corrupt queue segment and
with a full queue. Nothing waits on the clock: every step waits for an answer line, a process
exit or a file, under generous deadlines."""

from __future__ import annotations

import json
import os
import queue as queues
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import requests

from support import REPO, ROOT, ServalServer, assert_minted, free_port, serval_bin

PHASE1 = REPO / "digits_phase1" / "1" / "model.onnx"
PHASE2 = "digits_phase2"
DATA = ROOT / "examples" / "data" / "digits_two_phase.jsonl"
CLASSES = [str(d) for d in range(10)] + ["not_digit"]
DIGITS = CLASSES[:10]
# Phase 1's confidence on tract and on ONNX Runtime may differ by float noise: a row this close
# to a band edge (or with its top two classes this close) may be decided either way.
EDGE_SLACK = 1e-5
# Phase 1 runs on tract, phase 2 on whichever engine the server picks; ONNX Runtime here.
RTOL = 1e-4
ATOL = 1e-5
DEADLINE = 120.0  # seconds any one step may take; none waits for time to pass

# Forwards everything (reason "class"): for the queue tests, where the policy is not the point.
FORWARD_ALL = "[forward]\nclasses = " + json.dumps(CLASSES) + "\n"
SUMMARY = re.compile(
    r"serval edge: (?P<instances>\d+) instances, (?P<local>\d+) answered on the device, "
    r"(?P<forwarded>\d+) forwarded \((?P<phase2>\d+) answered by phase 2, (?P<replayed>\d+) from the queue\), "
    r"(?P<queued>\d+) queued, (?P<queue_refused>\d+) refused by a full queue, "
    r"(?P<queue_dropped>\d+) dropped from it, (?P<phase2_refused>\d+) refused by phase 2; (?P<waiting>\d+) still waiting"
)


# ---------------------------------------------------------------------------------------------
# The data and the oracle
# ---------------------------------------------------------------------------------------------

@dataclass
class Digits:
    lines: list[str]  # the file's lines, as sent
    keys: list[str]
    X: np.ndarray
    p1_label: np.ndarray
    p1_prob: np.ndarray  # [N, 11]
    p2_label: np.ndarray
    p2_prob: np.ndarray  # [N, 10]

    def row(self, key: str) -> int:
        return self._index[key]

    def __post_init__(self):
        self._index = {k: i for i, k in enumerate(self.keys)}


@pytest.fixture(scope="module")
def digits() -> Digits:
    with open(DATA, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 1080
    X = np.array([r["features"] for r in rows], dtype=np.float32)

    def run(path: Path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(["label", "probabilities"], {"features": X})

    p1_label, p1_prob = run(PHASE1)
    p2_label, p2_prob = run(REPO / PHASE2 / "1" / "model.onnx")
    assert p1_prob.shape == (1080, 11) and p2_prob.shape == (1080, 10)
    return Digits(lines, [r["key"] for r in rows], X, p1_label, p1_prob, p2_label, p2_prob)


@dataclass
class Policy:
    classes: tuple[str, ...] = ()
    confidence: tuple[float, float] | None = None
    when: str = "any"

    def toml(self) -> str:
        text = "[forward]\n"
        if self.classes:
            text += f"classes = {json.dumps(list(self.classes))}\n"
        if self.confidence:
            text += f"confidence = [{self.confidence[0]}, {self.confidence[1]}]\n"
        return text + f'when = "{self.when}"\n'

    def decide(self, cls: str, p: float) -> str | None:
        by_class = cls in self.classes if self.classes else None
        by_conf = (self.confidence[0] <= p < self.confidence[1]) if self.confidence else None
        if by_class is not None and by_conf is not None and self.when == "all":
            by_class = by_conf = by_class and by_conf
        c, b = bool(by_class), bool(by_conf)
        return {(True, True): "class_and_confidence", (True, False): "class",
                (False, True): "confidence", (False, False): None}[(c, b)]

    def ambiguous(self, probs: np.ndarray) -> bool:
        """Whether float noise between engines could change phase 1's verdict on this row."""
        top2 = np.sort(probs)[-2:]
        if top2[1] - top2[0] < EDGE_SLACK:
            return True
        p = float(probs.max())
        return bool(self.confidence) and any(abs(p - edge) < EDGE_SLACK for edge in self.confidence)


DEFAULT_POLICY = Policy(confidence=(0.0, 0.9))
# The example phase 1's own policy, its config.toml's [edge] section: unsure digits go to phase 2.
CONFIG_POLICY = Policy(classes=tuple(DIGITS), confidence=(0.0, 0.95), when="all")


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def phase2_repo(tmp_path_factory) -> Path:
    """A repository holding only digits_phase2 (quick to load, restart after restart)."""
    repo = tmp_path_factory.mktemp("phase2-repo")
    shutil.copytree(REPO / PHASE2, repo / PHASE2)
    return repo


def start_phase2(repo: Path, port: int = 0) -> ServalServer:
    try:
        return ServalServer(repo=repo, http_port=port)
    except RuntimeError as err:
        pytest.fail(str(err), pytrace=False)


@contextmanager
def phase2_at(repo: Path, port: int):
    """Phase 2 on `port` for the block; it must shut down cleanly after."""
    server = start_phase2(repo, port)
    try:
        yield server
    finally:
        assert server.terminate() == 0, server.stderr_text()


@pytest.fixture(scope="module")
def live(phase2_repo):
    """Phase 2 up for the whole module (tests that kill a server start their own)."""
    server = start_phase2(phase2_repo)
    yield server
    assert server.alive(), f"phase 2 died during the tests:\n{server.stderr_text()}"
    assert server.terminate() == 0, server.stderr_text()


def phase2_flags(url: str) -> list[str]:
    return ["--server", url, "--model", PHASE2]


def dead_url() -> tuple[str, int]:
    """An address nothing listens on (yet): phase 2 is unreachable there."""
    port = free_port()
    return f"http://127.0.0.1:{port}", port


def write_policy(tmp: Path, text: str, name: str = "policy.toml") -> Path:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def summary(stderr: str) -> dict[str, int]:
    matches = list(SUMMARY.finditer(stderr))
    assert matches, f"no summary line on stderr:\n{stderr[-3000:]}"
    return {k: int(v) for k, v in matches[-1].groupdict().items()}


@dataclass
class EdgeRun:
    returncode: int
    answers: list[dict]
    stdout: str
    stderr: str

    def ok(self) -> "EdgeRun":
        assert self.returncode == 0, f"serval edge exited {self.returncode}:\n{self.stderr[-3000:]}"
        return self

    @property
    def summary(self) -> dict[str, int]:
        return summary(self.stderr)


def edge(*flags, phase1: Path = PHASE1, stdin: str | None = None, timeout: float = 300) -> EdgeRun:
    """`serval edge --phase1 ... <flags>` to completion; its answer lines parsed."""
    res = subprocess.run([str(serval_bin()), "edge", "--phase1", str(phase1), *map(str, flags)], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout, input=stdin)
    answers = []
    for line in res.stdout.splitlines():
        if line.strip():
            answers.append(json.loads(line))
    return EdgeRun(res.returncode, answers, res.stdout, res.stderr)


class EdgeProcess:
    """`serval edge --input -` kept running: lines go in one at a time, answers are read as
    they come (a thread reads stdout into a queue)."""

    def __init__(self, *flags, phase1: Path = PHASE1):
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [str(serval_bin()), "edge", "--phase1", str(phase1), "--input", "-", *map(str, flags)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, bufsize=1,
        )
        self.lines: queues.Queue = queues.Queue()
        self.read: list[dict] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            if line.strip():
                self.lines.put(json.loads(line))
        self.lines.put(None)

    def send(self, *lines: str) -> None:
        self.proc.stdin.write("".join(line + "\n" for line in lines))
        self.proc.stdin.flush()

    def answers(self, n: int, timeout: float = DEADLINE) -> list[dict]:
        """The next `n` answers (fails if the process ends first or they do not come)."""
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < n:
            try:
                answer = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queues.Empty:
                raise AssertionError(f"{len(got)} of {n} answers within {timeout}s:\n{self.stderr_text()}") from None
            assert answer is not None, f"serval edge ended after {len(got)} of {n} answers:\n{self.stderr_text()}"
            got.append(answer)
            self.read.append(answer)
        return got

    def rest(self, timeout: float = DEADLINE) -> list[dict]:
        """Every answer until stdout closes (after the process ended or was killed)."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                answer = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queues.Empty:
                raise AssertionError(f"stdout did not close within {timeout}s") from None
            if answer is None:
                return got
            got.append(answer)
            self.read.append(answer)

    def close(self, timeout: float = DEADLINE) -> int:
        """Ends the input; the exit status."""
        self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f"serval edge did not exit within {timeout}s of its input ending") from None

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass

    def stderr_text(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")[-4000:]


# ---------------------------------------------------------------------------------------------
# Checks of one answer against the oracle
# ---------------------------------------------------------------------------------------------

def assert_outputs(outputs: dict, label: int, probs: np.ndarray, what: str) -> None:
    assert set(outputs) == {"label", "probabilities"}, f"{what}: outputs {sorted(outputs)}"
    assert outputs["label"] == int(label), f"{what}: label {outputs['label']} != {int(label)}"
    np.testing.assert_allclose(np.asarray(outputs["probabilities"], dtype=np.float64), probs.astype(np.float64),
                               rtol=RTOL, atol=ATOL, err_msg=f"{what}: probabilities")


def assert_phase1_verdict(answer: dict, digits: Digits, row: int, reason: str | None) -> None:
    verdict = answer["phase1"]
    assert set(verdict) == {"class", "confidence", "forward"}, verdict
    probs = digits.p1_prob[row]
    assert verdict["class"] == CLASSES[int(probs.argmax())], (answer["key"], verdict)
    assert verdict["confidence"] == pytest.approx(float(probs.max()), rel=RTOL, abs=ATOL), (answer["key"], verdict)
    assert verdict["forward"] == reason, (answer["key"], verdict, reason)


def assert_local(answer: dict, digits: Digits, row: int) -> None:
    what = f"local answer {answer['key']}"
    assert answer["phase"] == 1 and answer["provisional"] is False, answer
    for absent in ("forwarded", "queued", "replayed", "version", "error"):
        assert absent not in answer, f"{what}: has '{absent}': {answer}"
    assert_phase1_verdict(answer, digits, row, None)
    assert_outputs(answer["outputs"], digits.p1_label[row], digits.p1_prob[row], what)


def assert_phase2(answer: dict, digits: Digits, row: int, reason: str, replayed: bool = False) -> None:
    what = f"phase-2 answer {answer['key']}"
    assert answer["phase"] == 2 and answer["provisional"] is False, answer
    assert answer["forwarded"] == reason, (what, answer["forwarded"], reason)
    assert answer["version"] == "1", answer
    assert "error" not in answer and "queued" not in answer, answer
    if replayed:
        assert answer.get("replayed") is True, answer
    else:
        assert "replayed" not in answer, answer
    assert_phase1_verdict(answer, digits, row, reason)
    assert_outputs(answer["outputs"], digits.p2_label[row], digits.p2_prob[row], what)


def assert_provisional(answer: dict, digits: Digits, row: int, reason: str, queued: bool) -> None:
    """Phase 1's answer standing in for a forward phase 2 has not answered."""
    what = f"provisional answer {answer['key']}"
    assert answer["phase"] == 1 and answer["provisional"] is True, answer
    assert answer["forwarded"] == reason, answer
    assert "version" not in answer and "replayed" not in answer, answer
    if queued:
        assert answer.get("queued") is True and "error" not in answer, answer
    else:
        assert "queued" not in answer and isinstance(answer.get("error"), str) and answer["error"], answer
    assert_phase1_verdict(answer, digits, row, reason)
    assert_outputs(answer["outputs"], digits.p1_label[row], digits.p1_prob[row], what)


def replayed_keys(run: EdgeRun, digits: Digits, reason: str = "class") -> list[str]:
    """The keys of a replay run's answers, each checked as phase 2's replayed answer."""
    for answer in run.answers:
        assert_phase2(answer, digits, digits.row(answer["key"]), reason, replayed=True)
    return [a["key"] for a in run.answers]


# ---------------------------------------------------------------------------------------------
# 1. Decisions follow the policy
# ---------------------------------------------------------------------------------------------

def check_decisions(run: EdgeRun, digits: Digits, rows: list[int], policy: Policy) -> int:
    """Every answer, in input order, is phase 1's or phase 2's as the policy decides on ONNX
    Runtime's phase-1 probabilities; returns how many were forwarded."""
    run.ok()
    assert [a["key"] for a in run.answers] == [digits.keys[r] for r in rows], "one answer per line, in order"
    forwarded = ambiguous = 0
    for answer, row in zip(run.answers, rows):
        probs = digits.p1_prob[row]
        reason = policy.decide(CLASSES[int(probs.argmax())], float(probs.max()))
        if policy.ambiguous(probs):
            # Either verdict is right; the answer must still be the one that verdict gives.
            ambiguous += 1
            forwarded += answer["phase"] == 2
            assert answer["phase"] == (2 if answer["phase1"]["forward"] else 1), answer
            continue
        if reason is None:
            assert_local(answer, digits, row)
        else:
            forwarded += 1
            assert_phase2(answer, digits, row, reason)
    assert ambiguous <= 2, f"{ambiguous} rows within {EDGE_SLACK} of a decision edge"
    s = run.summary
    assert s["instances"] == len(rows) and s["forwarded"] == forwarded and s["phase2"] == forwarded, s
    assert s["local"] == len(rows) - forwarded and s["queued"] == 0 and s["waiting"] == 0, s
    return forwarded


def test_class_and_confidence_all_over_the_whole_file(tmp_path, live, digits):
    policy = Policy(classes=tuple(DIGITS), confidence=(0.0, 0.95), when="all")
    run = edge("--policy", write_policy(tmp_path, policy.toml()), "--input", DATA, *phase2_flags(live.url))
    forwarded = check_decisions(run, digits, list(range(len(digits.keys))), policy)
    # The point of `all`: unsure not_digits stay local, unsure digits go on.
    assert 0 < forwarded < len(digits.keys), forwarded
    assert all(a.get("forwarded") in (None, "class_and_confidence") for a in run.answers)
    unsure_not_digits = [a for a in run.answers if a["phase1"]["class"] == "not_digit" and a["phase1"]["confidence"] < 0.95]
    assert all(a["phase"] == 1 for a in unsure_not_digits)


@pytest.mark.parametrize("policy", [
    Policy(classes=("not_digit",), confidence=(0.0, 0.97), when="any"),
    Policy(classes=("3", "8")),
    Policy(confidence=(0.5, 0.99)),
], ids=["any", "classes-only", "confidence-only"])
def test_decisions_follow_any_and_single_condition_policies(tmp_path, live, digits, policy):
    rows = list(range(0, 1080, 4))  # 270 rows
    data = write_lines(tmp_path / "subset.jsonl", [digits.lines[r] for r in rows])
    run = edge("--policy", write_policy(tmp_path, policy.toml()), "--input", data, "--batch-size", "7",
               "--forward-batch", "5", *phase2_flags(live.url))
    forwarded = check_decisions(run, digits, rows, policy)
    assert 0 < forwarded < len(rows), forwarded
    reasons = {a.get("forwarded") for a in run.answers} - {None}
    if policy.classes and policy.confidence:
        assert {"class", "confidence", "class_and_confidence"} <= reasons, reasons
    elif policy.classes:
        assert reasons == {"class"}, reasons
    else:
        assert reasons == {"confidence"}, reasons


def test_without_a_policy_the_phase1_configs_edge_section_decides_and_names_phase2(live, digits):
    rows = list(range(300))
    data = "".join(digits.lines[r] + "\n" for r in rows)
    # No --policy and no --model: both come from examples/models/digits_phase1/config.toml.
    run = edge("--input", "-", "--server", live.url, stdin=data)
    forwarded = check_decisions(run, digits, rows, CONFIG_POLICY)
    assert forwarded > 0


def test_without_a_policy_or_edge_section_unsure_answers_below_0_9_are_forwarded(tmp_path, live, digits):
    rows = list(range(300))
    data = "".join(digits.lines[r] + "\n" for r in rows)
    config = tmp_path / "config.toml"
    config.write_text(f"class_labels = {json.dumps(CLASSES)}\n", encoding="utf-8")
    run = edge("--phase1-config", config, "--input", "-", *phase2_flags(live.url), stdin=data)
    forwarded = check_decisions(run, digits, rows, DEFAULT_POLICY)
    assert forwarded > 0


def test_a_server_without_a_phase2_model_is_refused_by_name(tmp_path, live):
    config = tmp_path / "config.toml"
    config.write_text(f"class_labels = {json.dumps(CLASSES)}\n", encoding="utf-8")
    run = edge("--phase1-config", config, "--input", DATA, "--server", live.url)
    assert run.returncode != 0 and run.answers == []
    assert "--model" in run.stderr and "phase2" in run.stderr, run.stderr


def test_lines_without_keys_get_minted_uuid7_keys_phase_2_answers_too(tmp_path, live, digits):
    rows = list(range(200))
    lines = [json.dumps({"features": digits.X[r].tolist()}) for r in rows]
    policy = Policy(confidence=(0.0, 0.9))
    run = edge("--policy", write_policy(tmp_path, policy.toml()), "--input", write_lines(tmp_path / "nokeys.jsonl", lines),
               *phase2_flags(live.url)).ok()
    assert len(run.answers) == len(rows)
    assert_minted([a["key"] for a in run.answers], len(rows))
    forwarded = 0
    for answer, row in zip(run.answers, rows):
        if answer["phase1"]["forward"] is None:
            assert answer["phase"] == 1
            assert_outputs(answer["outputs"], digits.p1_label[row], digits.p1_prob[row], "keyless local")
        else:
            forwarded += 1
            assert answer["phase"] == 2, answer
            assert_outputs(answer["outputs"], digits.p2_label[row], digits.p2_prob[row], "keyless forward")
    assert forwarded > 0


def test_csv_input_and_an_output_file_give_the_same_answers(tmp_path, live, digits):
    rows = list(range(0, 1080, 9))  # 120 rows
    csv = tmp_path / "digits.csv"
    with csv.open("w", encoding="utf-8") as f:
        f.write(",".join(["key", *[f"f{i}" for i in range(64)]]) + "\n")
        for r in rows:
            f.write(",".join([digits.keys[r], *[repr(float(v)) for v in digits.X[r]]]) + "\n")
    out = tmp_path / "answers.jsonl"
    run = edge("--input", csv, "--output", out, *phase2_flags(live.url))
    assert run.stdout == "", "answers go to --output"
    with out.open(encoding="utf-8") as f:
        run.answers = [json.loads(line) for line in f if line.strip()]
    check_decisions(run, digits, rows, CONFIG_POLICY)


def test_a_forward_phase_2_refuses_keeps_the_provisional_answer_with_the_error(tmp_path, live, digits):
    rows = list(range(20))
    data = write_lines(tmp_path / "d.jsonl", [digits.lines[r] for r in rows])
    queue = tmp_path / "queue"
    run = edge("--policy", write_policy(tmp_path, FORWARD_ALL), "--input", data, "--server", live.url,
               "--model", "no_such_model", "--queue", queue).ok()
    assert [a["key"] for a in run.answers] == [digits.keys[r] for r in rows]
    for answer, row in zip(run.answers, rows):
        assert_provisional(answer, digits, row, "class", queued=False)
        assert "refused" in answer["error"], answer["error"]
    s = run.summary
    assert s["phase2_refused"] == len(rows) and s["queued"] == 0 and s["waiting"] == 0, s


# ---------------------------------------------------------------------------------------------
# 2. Offline store-and-forward
# ---------------------------------------------------------------------------------------------

def queue_offline(tmp: Path, digits: Digits, rows: list[int], queue: Path, url: str, *flags: str) -> list[str]:
    """Runs `rows` with phase 2 unreachable and the forward-everything policy: every answer is
    phase 1's, provisional and queued; returns the queued keys."""
    data = write_lines(tmp / f"offline-{len(rows)}-{rows[0]}.jsonl", [digits.lines[r] for r in rows])
    run = edge("--policy", write_policy(tmp, FORWARD_ALL, "forward-all.toml"), "--input", data, "--queue", queue,
               "--attempts", "1", *phase2_flags(url), *flags).ok()
    assert [a["key"] for a in run.answers] == [digits.keys[r] for r in rows]
    for answer, row in zip(run.answers, rows):
        assert_provisional(answer, digits, row, "class", queued=True)
    return [a["key"] for a in run.answers]


def replay(queue: Path, url: str, *flags: str) -> EdgeRun:
    return edge("--queue", queue, *phase2_flags(url), *flags).ok()


def test_offline_forwards_are_queued_then_replayed_once_in_order(tmp_path, phase2_repo, digits):
    url, port = dead_url()
    queue = tmp_path / "queue"
    run = edge("--policy", write_policy(tmp_path, DEFAULT_POLICY.toml()), "--input", DATA, "--queue", queue,
               "--attempts", "1", *phase2_flags(url))
    assert run.returncode == 0, f"an unreachable phase 2 is not a failure:\n{run.stderr}"
    assert [a["key"] for a in run.answers] == digits.keys
    queued = []
    for row, answer in enumerate(run.answers):
        probs = digits.p1_prob[row]
        if DEFAULT_POLICY.decide(CLASSES[int(probs.argmax())], float(probs.max())):
            assert_provisional(answer, digits, row, "confidence", queued=True)
            queued.append(answer["key"])
        else:
            assert_local(answer, digits, row)
    assert len(queued) > 20, len(queued)
    s = run.summary
    assert s["forwarded"] == len(queued) and s["queued"] == len(queued) and s["waiting"] == len(queued), s
    assert s["phase2"] == 0 and s["replayed"] == 0, s
    assert list(queue.glob("*.seg")), sorted(p.name for p in queue.iterdir())

    with phase2_at(phase2_repo, port) as server:
        second = replay(queue, server.url, "--forward-batch", "16")
        by_key = {a["key"]: a for a in run.answers}
        assert replayed_keys(second, digits, "confidence") == queued, "every queued forward once, oldest first"
        for answer in second.answers:
            assert answer["phase1"] == by_key[answer["key"]]["phase1"], "the verdict is phase 1's, as queued"
        s = second.summary
        assert s["instances"] == 0 and s["replayed"] == len(queued) and s["waiting"] == 0, s
        third = replay(queue, server.url)
        assert third.answers == [], "a replayed forward never comes back"
        assert third.summary["replayed"] == 0 and third.summary["waiting"] == 0


def test_without_a_queue_an_unreachable_phase_2_leaves_errors_not_a_failure(tmp_path, digits):
    url, _ = dead_url()
    rows = list(range(10))
    data = write_lines(tmp_path / "d.jsonl", [digits.lines[r] for r in rows])
    run = edge("--policy", write_policy(tmp_path, FORWARD_ALL), "--input", data, "--attempts", "1",
               *phase2_flags(url)).ok()
    for answer, row in zip(run.answers, rows):
        assert_provisional(answer, digits, row, "class", queued=False)
        assert "unreachable" in answer["error"], answer["error"]


# ---------------------------------------------------------------------------------------------
# 3. The edge process killed with SIGKILL
# ---------------------------------------------------------------------------------------------

def test_an_edge_killed_with_sigkill_loses_nothing_it_reported_queued(tmp_path, phase2_repo, digits):
    url, port = dead_url()
    queue = tmp_path / "queue"
    policy = write_policy(tmp_path, FORWARD_ALL)
    proc = EdgeProcess("--policy", policy, "--queue", queue, "--batch-size", "1", "--attempts", "1",
                       *phase2_flags(url))
    sent = []
    try:
        for row in range(10):
            proc.send(digits.lines[row])
            sent.append(digits.keys[row])
            (answer,) = proc.answers(1)
            assert answer["key"] == digits.keys[row]
            assert_provisional(answer, digits, row, "class", queued=True)
        # A burst, and the kill lands wherever it lands.
        proc.send(*digits.lines[10:40])
        sent.extend(digits.keys[10:40])
        proc.answers(1)
    finally:
        proc.kill9()
    proc.rest()
    reported = [a["key"] for a in proc.read if a.get("queued")]
    assert len(reported) >= 11

    with phase2_at(phase2_repo, port) as server:
        again = replay(queue, server.url)
        keys = replayed_keys(again, digits)
        assert keys == sent[: len(keys)], "in input order, each once, nothing that was not sent"
        lost = [k for k in reported if k not in set(keys)]
        assert not lost, f"reported queued, never replayed: {lost}"
        assert replay(queue, server.url).answers == []


def cursor_progress(queue: Path) -> int:
    """Records the CURSOR file says were acknowledged in its head segment (0 if none yet)."""
    try:
        parts = (queue / "CURSOR").read_text().split()
    except FileNotFoundError:
        return 0
    return int(parts[1]) if len(parts) == 2 and parts[1].isdigit() else 0


def test_a_replay_killed_with_sigkill_midway_loses_no_answer(tmp_path, phase2_repo, digits):
    """Killed while replaying: each queued forward's phase-2 answer reaches the output in one run
    or the other (a forward sent but not acknowledged may come twice; none may vanish)."""
    url, port = dead_url()
    queue = tmp_path / "queue"
    queued = queue_offline(tmp_path, digits, list(range(600)), queue, url)
    with phase2_at(phase2_repo, port) as server:
        first = subprocess.Popen(
            [str(serval_bin()), "edge", "--phase1", str(PHASE1), "--queue", str(queue), "--forward-batch", "1",
             *phase2_flags(server.url)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.extend(first.stdout), daemon=True)
        reader.start()
        deadline = time.monotonic() + DEADLINE
        while first.poll() is None and cursor_progress(queue) < 5:
            assert time.monotonic() < deadline, "the replay made no progress"
            time.sleep(0.002)
        killed_midway = first.poll() is None
        if killed_midway:
            os.kill(first.pid, signal.SIGKILL)
        first.wait()
        reader.join(timeout=DEADLINE)
        first_keys = [json.loads(line)["key"] for line in out if line.strip()]
        second = replay(queue, server.url)
        second_keys = replayed_keys(second, digits)
        assert second_keys == queued[len(queued) - len(second_keys):], "the rest, in order"
        missing = [k for k in queued if k not in set(first_keys) | set(second_keys)]
        assert not missing, (
            f"{len(missing)} queued forwards were answered by phase 2 in neither run "
            f"(killed midway: {killed_midway}; first run printed {len(first_keys)}, second {len(second_keys)}, "
            f"acknowledged before the kill at least 5): first missing {missing[:5]}"
        )


# ---------------------------------------------------------------------------------------------
# 4. Phase 2 killed with SIGKILL mid-stream, then restarted
# ---------------------------------------------------------------------------------------------

def test_phase_2_killed_mid_stream_queues_then_replays_when_it_returns(tmp_path, phase2_repo, digits):
    port = free_port()
    server = start_phase2(phase2_repo, port)
    queue = tmp_path / "queue"
    # Probing on every line, so the first line after the restart finds phase 2 back.
    proc = EdgeProcess("--policy", write_policy(tmp_path, FORWARD_ALL), "--queue", queue, "--batch-size", "1",
                       "--attempts", "1", "--outage-probe-ms", "0", *phase2_flags(server.url))
    try:
        for row in range(5):
            proc.send(digits.lines[row])
            (answer,) = proc.answers(1)
            assert_phase2(answer, digits, row, "class")
        server.kill()  # SIGKILL
        queued = []
        for row in range(5, 12):
            proc.send(digits.lines[row])
            (answer,) = proc.answers(1)
            assert_provisional(answer, digits, row, "class", queued=True)
            queued.append(answer["key"])
        server = start_phase2(phase2_repo, port)
        proc.send(digits.lines[12])
        # The queue first (oldest first), then the new line, live.
        after = proc.answers(len(queued) + 1)
        assert [a["key"] for a in after] == queued + [digits.keys[12]]
        for answer in after[:-1]:
            assert_phase2(answer, digits, digits.row(answer["key"]), "class", replayed=True)
        assert_phase2(after[-1], digits, 12, "class")
        assert proc.close() == 0, proc.stderr_text()
        assert proc.rest() == [], "nothing more"
        s = summary(proc.stderr_text())
        assert s["instances"] == 13 and s["queued"] == len(queued) and s["replayed"] == len(queued), s
        assert s["phase2"] == 13 and s["waiting"] == 0, s
        assert replay(queue, server.url).answers == []
    finally:
        proc.kill9()
        server.kill()


# ---------------------------------------------------------------------------------------------
# 5. A torn or corrupt queue segment
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_segment_tail_costs_only_the_last_record(tmp_path, phase2_repo, digits, damage):
    url, port = dead_url()
    queue = tmp_path / "queue"
    queued = queue_offline(tmp_path, digits, list(range(8)), queue, url)
    (segment,) = sorted(queue.glob("*.seg"))
    size = segment.stat().st_size
    if damage == "truncate":
        os.truncate(segment, size - 3)
    else:
        with open(segment, "r+b") as f:
            f.seek(size - 4)
            f.write(b"\xde\xad\xbe\xef")
    # Appending after the damage must not bury the new forwards behind it.
    more = queue_offline(tmp_path, digits, list(range(100, 103)), queue, url)
    with phase2_at(phase2_repo, port) as server:
        run = replay(queue, server.url)
        assert replayed_keys(run, digits) == queued[:-1] + more, "every whole record, in order"
        assert run.summary["waiting"] == 0
        assert replay(queue, server.url).answers == []


# ---------------------------------------------------------------------------------------------
# 6. A full queue
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("when_full", ["refuse", "drop-oldest"])
@pytest.mark.parametrize("batch_size", [1, 32], ids=["line-by-line", "one-batch"])
def test_a_full_queue_bounds_forwards_one_by_one(tmp_path, phase2_repo, digits, when_full, batch_size):
    """Six forwards into a queue of three, line by line or in one batch: refuse keeps the first
    three, drop-oldest the newest three. Line by line, drop-oldest's answers were all queued
    when written (the oldest are dropped later); in one batch each answer says what became of
    its forward."""
    url, port = dead_url()
    queue = tmp_path / "queue"
    rows = list(range(6))
    data = write_lines(tmp_path / "d.jsonl", [digits.lines[r] for r in rows])
    run = edge("--policy", write_policy(tmp_path, FORWARD_ALL), "--input", data, "--queue", queue,
               "--queue-max-records", "3", "--when-full", when_full, "--batch-size", batch_size,
               "--attempts", "1", *phase2_flags(url)).ok()
    kept = digits.keys[:3] if when_full == "refuse" else digits.keys[3:6]
    for answer, row in zip(run.answers, rows):
        if when_full == "refuse":
            queued = row < 3
        else:
            queued = batch_size == 1 or row >= 3
        assert_provisional(answer, digits, row, "class", queued=queued)
        if not queued:
            assert "offline queue is full" in answer["error"], answer["error"]
    s = run.summary
    assert s["queued"] + s["queue_refused"] == 6 and s["waiting"] == 3, s
    if when_full == "refuse":
        assert s["queued"] == 3 and s["queue_refused"] == 3, s
    with phase2_at(phase2_repo, port) as server:
        assert replayed_keys(replay(queue, server.url), digits) == kept


# ---------------------------------------------------------------------------------------------
# 7. Bad policies and bad input
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, needles", [
    ("[forward]\n", ["classes", "confidence"]),
    ("[forward]\nconfidence = [0.9, 0.5]\n", ["confidence", "0.9"]),
    ("[forward]\nconfidence = [0.0, 1.5]\n", ["confidence", "1.5"]),
    ("[forward]\nconfidence = [-0.1, 0.5]\n", ["confidence", "-0.1"]),
    ("[forward]\nconfidence = [0.5, 0.5]\n", ["confidence"]),
    ('[forward]\nclasses = ["1"]\nbogus = 1\n', ["bogus"]),
    ('threshold = 0.5\n[forward]\nclasses = ["1"]\n', ["threshold"]),
    ('[forward]\nclasses = ["cat"]\n', ["cat", "class_labels"]),
    ('[forward]\nclasses = ["1"]\nwhen = "sometimes"\n', ["sometimes"]),
    ('scores = "label"\n[forward]\nclasses = ["1"]\n', ["scores", "label"]),
    ('scores = "logits"\n[forward]\nclasses = ["1"]\n', ["logits"]),
    ("confidence = [0.0, 0.9]\n", ["forward"]),
    ("[forward\n", ["line 1"]),
], ids=["no-condition", "low-above-high", "high-above-1", "negative-low", "empty-band", "unknown-field",
        "unknown-top-level", "unknown-class", "unknown-when", "scores-not-float", "scores-absent",
        "no-forward-table", "not-toml"])
def test_a_bad_policy_is_refused_naming_the_problem(tmp_path, digits, text, needles):
    policy = write_policy(tmp_path, text)
    data = write_lines(tmp_path / "d.jsonl", digits.lines[:3])
    run = edge("--policy", policy, "--input", data)
    assert run.returncode != 0, f"policy {text!r} was accepted:\n{run.stdout[:500]}"
    assert run.answers == [], "nothing is answered under a refused policy"
    # The path may spell a needle (`policy`); the message must say it without the path.
    message = run.stderr.replace(str(policy), "<policy>").lower()
    for needle in needles:
        assert needle.lower() in message, f"{needle!r} not in:\n{run.stderr}"
    assert "panick" not in message, run.stderr


def test_a_missing_policy_file_is_refused(tmp_path):
    run = edge("--policy", tmp_path / "absent.toml", "--input", DATA)
    assert run.returncode != 0 and "absent.toml" in run.stderr, run.stderr


def test_a_malformed_input_line_is_refused_naming_its_line(tmp_path, digits):
    lines = digits.lines[:2] + ['{"key": "broken", "features": [1, 2,'] + digits.lines[3:5]
    run = edge("--input", write_lines(tmp_path / "bad.jsonl", lines))
    assert run.returncode != 0, run.stdout[:500]
    assert "line 3" in run.stderr, run.stderr
    assert "panick" not in run.stderr.lower(), run.stderr


def test_an_unknown_input_field_is_refused_naming_it(tmp_path, digits):
    row = json.loads(digits.lines[1])
    row["colour"] = "red"
    lines = [digits.lines[0], json.dumps(row), digits.lines[2]]
    run = edge("--input", write_lines(tmp_path / "bad.jsonl", lines))
    assert run.returncode != 0, run.stdout[:500]
    assert "colour" in run.stderr, run.stderr


def test_a_line_with_the_wrong_number_of_features_is_refused(tmp_path, digits):
    lines = [digits.lines[0], json.dumps({"key": "short", "features": [0.0] * 10})]
    run = edge("--input", write_lines(tmp_path / "bad.jsonl", lines), "--batch-size", "1")
    assert run.returncode != 0, run.stdout[:500]
    assert re.search(r"\blines? 2\b", run.stderr), run.stderr


# ---------------------------------------------------------------------------------------------
# 8. One process per queue
# ---------------------------------------------------------------------------------------------

def test_a_second_edge_process_on_the_same_queue_is_refused(tmp_path, digits):
    queue = tmp_path / "queue"
    url, _ = dead_url()
    first = EdgeProcess("--queue", queue, "--batch-size", "1", "--attempts", "1", *phase2_flags(url))
    try:
        first.send(digits.lines[0])
        first.answers(1)  # the first owns the queue now
        data = write_lines(tmp_path / "d.jsonl", digits.lines[:3])
        second = edge("--queue", queue, "--input", data, "--attempts", "1", *phase2_flags(url))
        assert second.returncode != 0, second.stdout[:500]
        assert "in use" in second.stderr, second.stderr
        assert second.answers == []
        replay_only = edge("--queue", queue, *phase2_flags(url))
        assert replay_only.returncode != 0 and "in use" in replay_only.stderr, replay_only.stderr
        first.send(digits.lines[1])
        first.answers(1)  # the first is unaffected
        assert first.close() == 0, first.stderr_text()
    finally:
        first.kill9()
    # The owner is gone: the queue is free.
    assert edge("--queue", queue, "--input", data, "--attempts", "1", *phase2_flags(url)).returncode == 0


def test_a_killed_owner_leaves_the_queue_free(tmp_path, digits):
    queue = tmp_path / "queue"
    url, _ = dead_url()
    first = EdgeProcess("--queue", queue, "--batch-size", "1", "--attempts", "1", *phase2_flags(url))
    try:
        first.send(digits.lines[0])
        first.answers(1)
    finally:
        first.kill9()
    assert (queue / "LOCK").exists()
    run = edge("--queue", queue, "--input", write_lines(tmp_path / "d.jsonl", digits.lines[:2]), "--attempts", "1",
               *phase2_flags(url))
    assert run.returncode == 0, run.stderr


# ---------------------------------------------------------------------------------------------
# 9. Phase 1 evaluated like any model: a sample of its predictions in the server's log
# ---------------------------------------------------------------------------------------------

LABELS = ROOT / "examples" / "data" / "digits_two_phase_labels.jsonl"


def test_reported_phase_1_predictions_are_logged_as_edge_and_evaluated_by_key(tmp_path, digits):
    import pyarrow.dataset as ds

    repo = tmp_path / "repo"
    for model in ("digits_phase1", PHASE2):
        shutil.copytree(REPO / model, repo / model)
    log = tmp_path / "log"
    rows = list(range(200))
    data = write_lines(tmp_path / "d.jsonl", [digits.lines[r] for r in rows])
    keys = [digits.keys[r] for r in rows]
    server = ServalServer("--prediction-log", str(log), repo=repo)
    try:
        run = edge("--policy", write_policy(tmp_path, DEFAULT_POLICY.toml()), "--input", data,
                   "--report-sample", "1", *phase2_flags(server.url)).ok()
        assert run.stderr.count("200 phase-1 predictions reported to the log (0 failed)") == 1, run.stderr
        # Ground truth for those keys, posted as for any model.
        truth = {}
        with open(LABELS, encoding="utf-8") as f:
            for line in f:
                entry = json.loads(line)
                truth[entry["key"]] = entry["label"]
        body = {"labels": [{"key": k, "label": truth[k]} for k in keys]}
        r = requests.post(f"{server.url}/v1/models/digits_phase1/labels", json=body, timeout=30)
        assert r.status_code == 200, r.text
        # A report that does not fit the signature is refused whole, naming what is wrong.
        bad = {"predictions": [{"key": "x", "inputs": {"features": [0.0] * 63},
                                "outputs": {"label": 1, "probabilities": [0.1] * 11}}]}
        r = requests.post(f"{server.url}/v2/models/digits_phase1/log", json=bad, timeout=30)
        assert r.status_code == 400 and "features" in r.json()["error"], r.text
    finally:
        assert server.terminate() == 0, server.stderr_text()

    table = ds.dataset(log / "predictions", format="parquet", partitioning="hive").to_table().to_pylist()
    edge_rows = [t for t in table if t["source"] == "edge"]
    assert sorted(t["key"] for t in edge_rows) == sorted(keys), "every reported key, once"
    assert {t["model"] for t in edge_rows} == {"digits_phase1"}
    for t in edge_rows:
        i = digits.row(t["key"])
        outputs = json.loads(t["outputs"])
        np.testing.assert_allclose(outputs["probabilities"], digits.p1_prob[i], rtol=1e-4, atol=1e-5)
        assert json.loads(t["inputs"])["features"] == json.loads(digits.lines[i])["features"]
    # The server's own log of phase 2 holds only the forwarded keys.
    forwarded = {a["key"] for a in run.answers if a["phase"] == 2}
    assert {t["key"] for t in table if t["model"] == PHASE2} == forwarded

    # serval eval scores the device's model on its reported predictions and the labels.
    res = subprocess.run([str(serval_bin()), "eval", str(repo), "--prediction-log", str(log), "--model",
                          "digits_phase1", "--window", "1000rows", "--format", "json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    [window] = json.loads(res.stdout)
    expected = float(np.mean([CLASSES[int(digits.p1_prob[digits.row(k)].argmax())] == truth[k] for k in keys]))
    assert window["rows"] == 200 and window["labelled"] == 200, window
    assert window["metrics"]["accuracy"] == pytest.approx(expected, abs=1e-9), window["metrics"]


def test_reports_need_a_prediction_log(live, digits):
    body = {"predictions": [{"key": "x", "inputs": {"features": [0.0] * 64},
                             "outputs": {"label": 1, "probabilities": [0.1] * 10}}]}
    r = requests.post(f"{live.url}/v2/models/{PHASE2}/log", json=body, timeout=30)
    assert r.status_code == 501 and "--prediction-log" in r.json()["error"], r.text
