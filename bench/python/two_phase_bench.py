#!/usr/bin/env python3
"""Helper of bench/two_phase.sh: quantization (sizes, accuracy), phase-1 latency on one core
(`serval edge` and onnxruntime) and the two-phase system (forwarded share, accuracy, bytes sent).

    two_phase_bench.py quantize RECORDS.jsonl --serval BIN --work DIR
                        # serval quantize (4 variants) and onnxruntime quantize_dynamic (QInt8,
                        # QUInt8) of digits_phase1 and breast_cancer_mlp_large: bytes, gzip -9
                        # bytes, accuracy and agreement with float (onnxruntime, 1 thread); every
                        # file written as DIR/<model>/<variant>/model.onnx, config.toml beside it
    two_phase_bench.py edge-latency RECORDS.jsonl --serval BIN --phase1 NAME=FILE ... --input F
                        [--batch-size B ...] [--repeat N] [--cpu C] --work DIR
                        # `taskset -c C serval edge` over F and over F's first line, a policy that
                        # forwards nothing, no server: wall clock (and peak RSS) under GNU time
    two_phase_bench.py ort-latency RECORDS.jsonl --phase1 NAME=FILE ... [--cpu C] [--seconds S]
                        # onnxruntime in this process pinned to core C, 1 intra- and 1 inter-op
                        # thread: per-call times at batch 1 and 64
    two_phase_bench.py system RECORDS.jsonl --serval BIN --server URL --model M
                        --phase1 NAME=FILE ... --input F --work DIR [--batch-size B]
                        [--forward-batch K]
                        # `serval edge --server` through a counting proxy (a thread here) under
                        # three policies; accuracy, forwarded share, request bodies counted and
                        # rebuilt; phase 2 alone also by direct v2 requests
    two_phase_bench.py machine OUT.json key=value ...
    two_phase_bench.py set FILE.json KEY JSON
    two_phase_bench.py finalize RECORDS.jsonl MACHINE.json OUT.json
    two_phase_bench.py report RESULTS.json          # the markdown tables on stdout

quantize, the latencies and system need numpy, onnxruntime (and onnx for quantize_dynamic),
scikit-learn for the breast-cancer rows; the others the standard library only. Beside it:
benchlib.py, eval_bench.py (its GNU time supervisor, machine, set and finalize) and labelled.py
(the labelled rows).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import http.client
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import benchlib
import eval_bench
import labelled

MODELS = labelled.MODELS
QUANTIZED = ("digits_phase1", "breast_cancer_mlp_large")
CHUNK = 64  # rows per onnxruntime call for accuracy: dynamic-int8 depends on a call's rows
DIGITS = [str(d) for d in range(10)]
PHASE1_CLASSES = DIGITS + ["not_digit"]
SUMMARY = re.compile(r"serval edge: (\d+) instances, (\d+) answered on the device, (\d+) forwarded")


def session(path: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def probabilities(path: str, X):
    """onnxruntime's `probabilities` over X, in calls of CHUNK rows."""
    import numpy as np

    s = session(path)
    (only,) = s.get_inputs()
    return np.concatenate([s.run(["probabilities"], {only.name: X[i:i + CHUNK]})[0] for i in range(0, len(X), CHUNK)])


def cmdline(cmd) -> str:
    return " ".join(str(c) if str(c).startswith("$WORK/") else shlex.quote(str(c)) for c in cmd)


def rel(path: str) -> str:
    """A path under the repository as the repository-relative one, under the run's work directory
    (TWO_PHASE_WORK) as $WORK/...: commands stay readable."""
    p = os.path.abspath(path)
    work = os.environ.get("TWO_PHASE_WORK")
    if work and p.startswith(os.path.abspath(work) + os.sep):
        return "$WORK/" + os.path.relpath(p, work)
    return os.path.relpath(p, labelled.ROOT) if p.startswith(labelled.ROOT + os.sep) else p


# --------------------------------------------------------------------------- 1. quantization


def variants(serval: str, src: str, work: str, model: str):
    """(variant, short name, how it is made: a command or a Python call, writer)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def out(name):
        d = os.path.join(work, model, name)
        os.makedirs(d, exist_ok=True)
        return os.path.join(d, "model.onnx")

    def sv(*flags):
        def make(dst):
            cmd = [serval, "quantize", src, dst, "--json", *flags]
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=labelled.ROOT)
            if res.returncode != 0:
                raise SystemExit(f"{cmdline(cmd)} failed ({res.returncode}):\n{res.stderr[-2000:]}")
            report = json.loads(res.stdout)
            weighted = [n for n in report["nodes"] if n.get("quantized") or n["op_type"] in ("MatMul", "Gemm", "Conv")]
            return {"serval_report": {k: report[k] for k in ("mode", "bytes_before", "bytes_after")},
                    "nodes_quantized": sum(bool(n["quantized"]) for n in report["nodes"]),
                    "nodes_weighted": len(weighted)}
        return make, ["serval", "quantize", rel(src), "OUT", "--json", *flags]

    def ort_q(weight_type):
        def make(dst):
            quantize_dynamic(src, dst, weight_type=getattr(QuantType, weight_type))
            return {}
        return make, [f"onnxruntime.quantization.quantize_dynamic({rel(src)!r}, OUT, weight_type=QuantType.{weight_type})"]

    def copy(dst):
        shutil.copyfile(src, dst)
        return {}

    for name, short, (make, how) in [
        ("float", "float", (copy, ["(the committed file)", rel(src)])),
        ("serval weights-int8 (TF Lite's scales)", "weights-int8", sv("--mode", "weights-int8")),
        ("serval weights-int8 --per-channel", "weights-int8-per-channel", sv("--mode", "weights-int8", "--per-channel")),
        ("serval dynamic-int8", "dynamic-int8", sv("--mode", "dynamic-int8")),
        ("serval fp16", "fp16", sv("--mode", "fp16")),
        ("onnxruntime quantize_dynamic QInt8", "ort-qint8", ort_q("QInt8")),
        ("onnxruntime quantize_dynamic QUInt8", "ort-quint8", ort_q("QUInt8")),
    ]:
        yield name, short, how, make, out(short)


def quantize(records: str, serval: str, work: str):
    import numpy as np

    for model in QUANTIZED:
        src = os.path.join(MODELS, model, "1", "model.onnx")
        names = labelled.class_labels(model)
        if model == "digits_phase1":
            _, X_all, y_all = labelled.digits_two_phase()
            X_test, y_test = X_all, y_all  # the 1080 rows are the test split
            data = "examples/data/digits_two_phase.jsonl + digits_two_phase_labels.jsonl (1080 rows, test split)"
        else:
            X_all, y_all = labelled.breast_cancer("all")
            X_test, y_test = labelled.breast_cancer("test")
            data = (f"load_breast_cancer: all {len(X_all)} rows (accuracy) and generate.py's "
                    f"test split, {len(X_test)} rows (held-out accuracy)")
        base = None
        for name, short, how, make, dst in variants(serval, src, work, model):
            extra = make(dst)
            config = os.path.join(MODELS, model, "config.toml")
            if os.path.isfile(config):
                shutil.copyfile(config, os.path.join(os.path.dirname(dst), "config.toml"))
            with open(dst, "rb") as f:
                blob = f.read()
            p = probabilities(dst, X_all)
            p_test = p if X_test is X_all else probabilities(dst, X_test)
            if base is None:
                base, float_bytes, float_gz = p, len(blob), len(gzip.compress(blob, 9, mtime=0))
            gz = len(gzip.compress(blob, 9, mtime=0))
            rec = {
                "kind": "quantize", "model": model, "variant": name, "short": short, "file": dst,
                "how": cmdline(how) if how[0] == "serval" else " ".join(how), "data": data,
                "bytes": len(blob), "gzip_bytes": gz,
                "ratio": round(float_bytes / len(blob), 3), "gzip_ratio": round(float_gz / gz, 3),
                "ratio_float_gzip_over_gzip": round(float_bytes / gz, 3),
                "rows": len(X_all), "accuracy": labelled.accuracy(p, y_all, names),
                "rows_test": len(X_test), "accuracy_test": labelled.accuracy(p_test, y_test, names),
                "agreement": float(np.mean(p.argmax(1) == base.argmax(1))),
                "max_abs_dp": float(np.abs(p.astype(np.float64) - base).max()),
                **extra,
            }
            benchlib.append_record(records, rec)
            print(f"  {model} {name}: {len(blob):,} B ({rec['ratio']:.2f}x), gzip {gz:,} B, "
                  f"accuracy {rec['accuracy']:.4f}, agreement {rec['agreement']:.4f}", flush=True)


# --------------------------------------------------------------------------- 2. latency


def named(pairs: list[str]) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep:
            raise SystemExit(f"--phase1 wants NAME=FILE, not {pair!r}")
        out.append((name, path))
    return out


NEVER = "[forward]\n# phase 1's top probability is at least 1/11: nothing is forwarded\nconfidence = [0.0, 0.000001]\n"


EDGE_REPEAT_FILE = 20


def edge_latency(records: str, serval: str, phase1: list[str], data: str, batch_sizes: list[int],
                 repeat: int, cpu: int, work: str):
    os.makedirs(work, exist_ok=True)
    policy = os.path.join(work, "never.toml")
    with open(policy, "w") as f:
        f.write(NEVER)
    with open(data) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    # The file 20 times over (keys made unique): 21,600 lines, so the per-instance time stands
    # well above the timer's 10 ms resolution and the start-up it is separated from.
    lines = [json.dumps({**r, "key": f"{r['key']}-r{i}"}) + "\n" for i in range(EDGE_REPEAT_FILE) for r in rows]
    full_input = os.path.join(work, "repeated.jsonl")
    with open(full_input, "w") as f:
        f.writelines(lines)
    one = os.path.join(work, "one-line.jsonl")
    with open(one, "w") as f:
        f.write(lines[0])
    configs = [(name, path, b) for name, path in named(phase1) for b in batch_sizes]
    runs = {(name, b, which): [] for name, _, b in configs for which in ("full", "one")}

    def run(name, path, b, which, keep=True):
        inp = full_input if which == "full" else one
        cmd = ["taskset", "-c", str(cpu), serval, "edge", "--phase1", path, "--policy", policy,
               "--input", inp, "--batch-size", str(b)]
        tag = os.path.join(work, f"{name}-b{b}-{which}")
        with contextlib.redirect_stdout(io.StringIO()):  # its one line per run
            rc = eval_bench.run(tag + ".json", tag + ".stdout", tag + ".stderr", 300, 0, None, cmd)
        rec = benchlib.load_json(tag + ".json")
        if rc != 0:
            raise SystemExit(f"{cmdline(cmd)}: {rec['status']}\n{rec.get('stderr_tail', '')}")
        with open(tag + ".stderr") as f:
            m = SUMMARY.search(f.read())
        want = len(lines) if which == "full" else 1
        if not m or int(m.group(1)) != want or int(m.group(3)) != 0:
            raise SystemExit(f"{cmdline(cmd)}: expected {want} instances, none forwarded; summary {m and m.group(0)}")
        if keep:
            runs[(name, b, which)].append(rec)

    for name, path, b in configs:  # warm-up: the files into the page cache, not recorded
        run(name, path, b, "full", keep=False)
    for _ in range(repeat):  # interleaved, so that a drifting machine touches every series alike
        for name, path, b in configs:
            run(name, path, b, "one")
            run(name, path, b, "full")
    for name, path, b in configs:
        full = [r["seconds"] for r in runs[(name, b, "full")]]
        one_s = [r["seconds"] for r in runs[(name, b, "one")]]
        per = (statistics.median(full) - statistics.median(one_s)) / (len(lines) - 1)
        rec = {
            "kind": "edge_latency", "phase1": name, "file": path, "batch_size": b, "cpu": cpu,
            "instances": len(lines), "repeat": repeat,
            "command": cmdline(["taskset", "-c", str(cpu), "serval", "edge", "--phase1", rel(path), "--policy",
                                "never.toml", "--input", rel(data), "--batch-size", b]),
            "full_s": full, "one_line_s": one_s,
            "full_median_s": statistics.median(full), "one_line_median_s": statistics.median(one_s),
            "us_per_instance": round(per * 1e6, 2),
            "peak_rss_mib": max(r.get("peak_rss_mib") or 0 for r in runs[(name, b, "full")]),
            "cpu_s_full_median": statistics.median(r.get("user_s", 0) + r.get("sys_s", 0) for r in runs[(name, b, "full")]),
        }
        benchlib.append_record(records, rec)
        print(f"  serval edge {name} batch {b}: {rec['full_median_s']:.3f} s for {len(lines)} lines, "
              f"{rec['one_line_median_s']:.3f} s for 1: {rec['us_per_instance']} µs/instance", flush=True)


def ort_latency(records: str, phase1: list[str], cpu: int, seconds: float):
    import numpy as np

    os.sched_setaffinity(0, {cpu})
    _, X, _ = labelled.digits_two_phase()
    rows = [np.ascontiguousarray(X[i:i + 1]) for i in range(len(X))]
    full = len(X) // 64
    batches = [np.ascontiguousarray(X[i * 64:(i + 1) * 64]) for i in range(full)]
    for name, path in named(phase1):
        s = session(path)
        (only,) = s.get_inputs()
        feed = only.name
        for batch, inputs in ((1, rows), (64, batches)):
            for x in inputs[:50]:  # warm-up
                s.run(None, {feed: x})
            times = []
            start = time.perf_counter()
            passes = 0
            while passes < 2 or time.perf_counter() - start < seconds:
                for x in inputs:
                    t0 = time.perf_counter_ns()
                    s.run(None, {feed: x})
                    times.append(time.perf_counter_ns() - t0)
                passes += 1
            med = statistics.median(times) / 1e3
            rec = {
                "kind": "ort_latency", "phase1": name, "file": path, "batch_size": batch, "cpu": cpu,
                "calls": len(times), "passes": passes,
                "median_call_us": round(med, 2), "p90_call_us": round(float(np.percentile(times, 90)) / 1e3, 2),
                "mean_call_us": round(statistics.fmean(times) / 1e3, 2),
                "us_per_instance": round(med / batch, 3),
                "how": (f"onnxruntime.InferenceSession({rel(path)!r}, intra_op_num_threads=1, inter_op_num_threads=1, "
                        f"sequential), pinned to core {cpu}; "
                        + ("one row per call over the 1080 rows" if batch == 1
                           else f"{full} calls of 64 rows (the first {full * 64} rows)")
                        + f", {passes} passes; median per-call time"),
            }
            benchlib.append_record(records, rec)
            print(f"  onnxruntime {name} batch {batch}: median {med:.1f} µs per call, "
                  f"{rec['us_per_instance']} µs/instance", flush=True)


# --------------------------------------------------------------------------- 3. the system


class Counter:
    """What passed through the proxy: one entry per POST (path, body bytes, header bytes, status)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen: list[dict] = []

    def take(self) -> list[dict]:
        with self.lock:
            out, self.seen = self.seen, []
        return out


def start_proxy(upstream: str, counter: Counter) -> ThreadingHTTPServer:
    """A counting HTTP/1.1 reverse proxy on 127.0.0.1 (an OS-picked port) to `upstream`."""
    up = urllib.parse.urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _body(self) -> bytes:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                parts = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _forward(self, method: str):
            body = self._body() if method == "POST" else b""
            conn = http.client.HTTPConnection(up.hostname, up.port, timeout=120)
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("host", "content-length", "transfer-encoding", "connection")}
            conn.request(method, self.path, body=body if method == "POST" else None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            if method == "POST":
                with counter.lock:
                    counter.seen.append({"path": self.path, "body_bytes": len(body),
                                         "header_bytes": len(self.raw_requestline) + len(self.headers.as_bytes()),
                                         "status": resp.status, "body": body})
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            self._forward("POST")

        def do_GET(self):
            self._forward("GET")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def v2_body(keys: list[str], X) -> bytes:
    """The v2 REST body `serval edge` sends for these instances (crates/serval-edge/src/phase2.rs:
    compact serde_json; FP32 numbers as float32's shortest decimal, which for these integer-valued
    pixels is also Python's)."""
    import numpy as np

    flat = [float(str(np.float32(v))) for v in np.asarray(X, dtype=np.float32).ravel()]
    doc = {"inputs": [
        {"name": "features", "datatype": "FP32", "shape": [len(keys), int(X.shape[1])], "data": flat},
        {"name": "key", "datatype": "BYTES", "shape": [len(keys)], "data": keys},
    ]}
    # serde_json's map without preserve_order is a BTreeMap: keys in sorted order.
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def bodies(keys: list[str], X, forwarded: list[bool], batch_size: int, forward_batch: int) -> list[bytes]:
    """The requests the edge makes: each block of `batch_size` lines forwards its forwarded rows
    in requests of at most `forward_batch`."""
    out = []
    for start in range(0, len(keys), batch_size):
        rows = [i for i in range(start, min(start + batch_size, len(keys))) if forwarded[i]]
        for j in range(0, len(rows), forward_batch):
            take = rows[j:j + forward_batch]
            out.append(v2_body([keys[i] for i in take], X[take]))
    return out


POLICIES = [
    ("two-phase (digits only, confidence < 0.95, when = all)", "digits-all",
     "[forward]\nclasses = " + json.dumps(DIGITS) + "\nconfidence = [0.0, 0.95]\nwhen = \"all\"\n"),
    ("two-phase (confidence < 0.95 only)", "confidence",
     "[forward]\nconfidence = [0.0, 0.95]\n"),
    ("phase 2 alone (every class forwarded)", "all",
     "[forward]\nclasses = " + json.dumps(PHASE1_CLASSES) + "\n"),
]


def top_digit(probs) -> str:
    return DIGITS[max(range(len(probs)), key=lambda i: probs[i])]


def scores(keys, labels, predicted) -> dict:
    digit = [lab != "not_digit" for lab in labels]
    ok = [p == lab for p, lab in zip(predicted, labels)]
    n_d = sum(digit)
    return {
        "accuracy": sum(ok) / len(ok),
        "accuracy_digits": sum(o for o, d in zip(ok, digit) if d) / n_d,
        "accuracy_not_digits": sum(o for o, d in zip(ok, digit) if not d) / (len(ok) - n_d),
        "correct": sum(ok),
    }


REPORTED = re.compile(r"(\d+) phase-1 predictions reported to the log \((\d+) failed\)")


def edge_reports(serval: str) -> bool:
    """Whether this `serval edge` reports a sample of phase-1 predictions to the server's log
    (--report-sample)."""
    res = subprocess.run([serval, "edge", "--help"], capture_output=True, text=True)
    return "--report-sample" in res.stdout


def system(records: str, serval: str, server: str, model: str, phase1: list[str], data: str, work: str,
           batch_size: int, forward_batch: int):
    os.makedirs(work, exist_ok=True)
    keys, X, labels = labelled.digits_two_phase()
    n = len(keys)
    counter = Counter()
    proxy = start_proxy(server, counter)
    proxy_url = f"http://127.0.0.1:{proxy.server_address[1]}"
    all_64 = bodies(keys, X, [True] * n, 64, 64)
    all_1 = bodies(keys, X, [True] * n, 1, 1)
    reference = {
        "all_64_requests": len(all_64), "all_64_bytes": sum(map(len, all_64)),
        "all_1_requests": len(all_1), "all_1_bytes": sum(map(len, all_1)),
        "raw_fp32_bytes": n * X.shape[1] * 4,
    }

    # Phase 2 alone by direct v2 requests (no edge, no proxy): the same bodies, 64 per request.
    direct = []
    up = urllib.parse.urlsplit(server)
    for body in all_64:
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=120)
        conn.request("POST", f"/v2/models/{model}/infer", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        doc = json.loads(resp.read())
        conn.close()
        if resp.status != 200:
            raise SystemExit(f"POST /v2/models/{model}/infer answered {resp.status}: {doc}")
        out = {o["name"]: o for o in doc["outputs"]}
        rows = out["key"]["shape"][0]
        width = out["probabilities"]["shape"][1]
        pr = out["probabilities"]["data"]
        direct += [top_digit(pr[i * width:(i + 1) * width]) for i in range(rows)]
    direct_scores = scores(keys, labels, direct)
    benchlib.append_record(records, {
        "kind": "system", "system": "phase 2 alone (direct v2 requests, 64 per request)", "policy": None,
        "phase1": None, "forwarded": n, "requests": len(all_64), "body_bytes": reference["all_64_bytes"],
        "computed_bytes": reference["all_64_bytes"], **direct_scores, **reference,
        "command": f"POST SERVER/v2/models/{model}/infer x {len(all_64)} (bodies of 64 instances)",
    })
    print(f"  phase 2 alone (direct): accuracy {direct_scores['accuracy']:.4f}", flush=True)

    reports = edge_reports(serval)
    runs = []
    for name, path in named(phase1):
        for label, short, text in POLICIES:
            if short == "all" and any(r[3] == "all" for r in runs):
                continue  # everything goes to phase 2 whichever phase 1 judged it: once
            runs.append((name, path, label, short, text, False))
    if reports:
        # The example policy once more with the device's default sample of phase-1 predictions
        # reported to the server's log (the server keeps one): what monitoring adds to the bytes.
        name, path = named(phase1)[0]
        label, short, text = POLICIES[0]
        runs.append((name, path, label + ", with the default report sample", short, text, True))

    for name, path, label, short, text, report in runs:
        policy = os.path.join(work, f"policy-{short}.toml")
        with open(policy, "w") as f:
            f.write(text)
        flags = ["--batch-size", str(batch_size), "--forward-batch", str(forward_batch)]
        if reports and not report:
            flags += ["--report-sample", "0"]
        cmd = [serval, "edge", "--phase1", path, "--server", proxy_url, "--model", model, "--policy", policy,
               "--input", data, *flags]
        counter.take()
        t0 = time.monotonic()
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=labelled.ROOT, timeout=600)
        seconds = time.monotonic() - t0
        seen = counter.take()
        if res.returncode != 0:
            raise SystemExit(f"{cmdline(cmd)} exited {res.returncode}:\n{res.stderr[-3000:]}")
        answers = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
        if [a["key"] for a in answers] != keys:
            raise SystemExit(f"{cmdline(cmd)}: {len(answers)} answers, not one per line in order")
        m = SUMMARY.search(res.stderr)
        phase2 = [a["phase"] == 2 for a in answers]
        bad = [a["key"] for a in answers if a.get("provisional") or a.get("error")]
        if bad:
            raise SystemExit(f"{cmdline(cmd)}: {len(bad)} provisional or failed answers, e.g. {bad[:3]}")
        if not m or int(m.group(3)) != sum(phase2):
            raise SystemExit(f"{cmdline(cmd)}: summary {m and m.group(0)} against {sum(phase2)} phase-2 answers")
        rep = REPORTED.search(res.stderr)
        reported, report_failed = (int(rep.group(1)), int(rep.group(2))) if rep else (0, 0)
        if report_failed:
            raise SystemExit(f"{cmdline(cmd)}: {report_failed} reports failed:\n{res.stderr[-2000:]}")
        infer = [s for s in seen if s["path"].endswith("/infer")]
        logged = [s for s in seen if s["path"].endswith("/log")]
        other = [s["path"] for s in seen if s not in infer and s not in logged]
        if other or any(s["status"] != 200 for s in seen):
            raise SystemExit(f"{cmdline(cmd)}: unexpected requests {other} or statuses "
                             f"{sorted({s['status'] for s in seen})}")
        predicted = [top_digit(a["outputs"]["probabilities"]) if a["phase"] == 2 else a["phase1"]["class"]
                     for a in answers]
        local = [a["phase1"]["class"] for a in answers]
        # The bodies as rebuilt here must be the ones the proxy saw: the same JSON, the same
        # length (byte for byte too, unless serde_json orders the keys otherwise).
        rebuilt = bodies(keys, X, phase2, batch_size, forward_batch)
        sent = [s["body"] for s in infer]
        if [len(b) for b in sent] != [len(b) for b in rebuilt] or \
                [json.loads(b) for b in sent] != [json.loads(b) for b in rebuilt]:
            sizes = ([len(b) for b in sent][:5], [len(b) for b in rebuilt][:5])
            raise SystemExit(f"{cmdline(cmd)}: the request bodies differ from the rebuilt ones "
                             f"({len(sent)} against {len(rebuilt)} requests; first sizes {sizes})")
        fw = sum(phase2)
        packed = bodies([k for k, f in zip(keys, phase2) if f], X[[i for i, f in enumerate(phase2) if f]],
                        [True] * fw, 64, 64) if fw else []
        one_each = [len(v2_body([k], X[i:i + 1])) for i, (k, f) in enumerate(zip(keys, phase2)) if f]
        # Phase 2's answers to the forwarded rows against the direct requests' answers.
        differ = sum(1 for p, d, f in zip(predicted, direct, phase2) if f and p != d)
        shown = ["serval", "edge", "--phase1", rel(path), "--server", "URL", "--model", model,
                 "--policy", f"policy-{short}.toml", "--input", rel(data), *flags]
        rec = {
            "kind": "system", "system": label, "policy": text, "phase1": name, "phase1_file": path,
            "instances": n, "forwarded": fw, "forwarded_share": fw / n,
            **scores(keys, labels, predicted),
            "phase1_alone": scores(keys, labels, local),
            "requests": len(infer), "body_bytes": sum(s["body_bytes"] for s in infer),
            "header_bytes": sum(s["header_bytes"] for s in infer),
            "computed_bytes": sum(map(len, rebuilt)), "bodies_match": True,
            "bodies_byte_identical": sent == rebuilt,
            "packed_64_requests": len(packed), "packed_64_bytes": sum(map(len, packed)),
            "one_per_request_bytes": sum(one_each),
            "with_reports": report, "reported": reported,
            "report_requests": len(logged), "report_body_bytes": sum(s["body_bytes"] for s in logged),
            "report_header_bytes": sum(s["header_bytes"] for s in logged),
            "phase2_differs_from_direct": differ,
            "batch_size": batch_size, "forward_batch": forward_batch, "seconds": round(seconds, 3),
            "command": cmdline(shown),
            **reference,
        }
        benchlib.append_record(records, rec)
        print(f"  {label}, phase 1 {name}: {fw} forwarded ({fw / n:.1%}), accuracy {rec['accuracy']:.4f}, "
              f"{rec['requests']} requests, {rec['body_bytes']:,} body bytes (phase 1 alone "
              f"{rec['phase1_alone']['accuracy']:.4f})"
              + (f"; {reported} reported in {len(logged)} requests, {rec['report_body_bytes']:,} bytes"
                 if report else ""), flush=True)
    proxy.shutdown()


# --------------------------------------------------------------------------- records and report


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for mod in ("numpy", "onnxruntime", "onnx", "sklearn"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            pass
    return out


def fmt_b(x) -> str:
    return "–" if x is None else f"{x:,}"


def fmt_us(x) -> str:
    if x is None:
        return "–"
    return f"{x:.0f}" if x >= 100 else (f"{x:.1f}" if x >= 10 else f"{x:.2f}")


def report(path: str):
    doc = benchlib.load_json(path)
    recs = doc["records"]
    m, v = doc["machine"], doc["versions"]
    out = []
    if doc.get("debug_binary"):
        out += ["**A debug build of serval was measured: the `serval edge` latencies below mean nothing** "
                "(sizes, accuracy, forwarded share and bytes do not depend on the build).", ""]
    py = doc.get("python", {})
    out += [
        f"- machine: nproc {m['nproc']}, {m['cpu']}, {m['mem_gib']} GiB, load average "
        f"{' '.join(m['load_at_start'])} at start, {' '.join(doc.get('load_at_end', ['?']))} at end",
        f"- source: {v['source']}; serval: {doc.get('serval')}",
        f"- Python {py.get('python')}: onnxruntime {py.get('onnxruntime')}, onnx {py.get('onnx')}, "
        f"numpy {py.get('numpy')}, scikit-learn {py.get('sklearn')}",
        f"- command: `{doc.get('command')}`",
        "",
    ]

    q = [r for r in recs if r["kind"] == "quantize"]
    if q:
        out += [
            "**1. Quantization.** Bytes of the file; gzip: Python `gzip.compress(level 9)`; ratio: the float "
            "file's bytes over these (gzip ratio: the float file's gzip bytes over these gzip bytes). Accuracy "
            "and agreement (same top class as the float file) by onnxruntime, one thread, 64 rows per call. "
            "digits_phase1: the 1080-row two-phase test split; breast_cancer_mlp_large: all 569 rows of "
            "load_breast_cancer (398 of them its training rows), and the 171-row held-out split.",
            "",
            "| model | file | bytes | ratio | gzip bytes | gzip ratio | accuracy | held-out accuracy | agreement | max abs Δp |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in q:
            held = "(same rows)" if r["model"] == "digits_phase1" else f"{r['accuracy_test']:.4f}"
            out.append(f"| {r['model']} | {r['variant']} | {fmt_b(r['bytes'])} | {r['ratio']:.2f}× | "
                       f"{fmt_b(r['gzip_bytes'])} | {r['gzip_ratio']:.2f}× | {r['accuracy']:.4f} | {held} | "
                       f"{r['agreement']:.4f} | {r['max_abs_dp']:.1e} |")
        out += ["", "How each file was made (OUT: the quantized file):", ""]
        seen = set()
        for r in q:
            key = (r["variant"], r["how"].replace(r["model"], "MODEL"))
            if key in seen:
                continue
            seen.add(key)
            out.append(f"- {r['variant']}: `{key[1]}`")
        out += ["", "(MODEL: digits_phase1 or breast_cancer_mlp_large.)", ""]

    el = [r for r in recs if r["kind"] == "edge_latency"]
    ol = [r for r in recs if r["kind"] == "ort_latency"]
    if el or ol:
        cpu = (el or ol)[0]["cpu"]
        out += [
            f"**2. Phase-1 latency on one core** (core {cpu}; 1-minute load average {doc.get('latency_load1', '?')} "
            "when the latency runs began), digits_phase1 over the 1080 rows, µs per instance. `serval edge` (tract, in-process; a policy that forwards nothing, no server, "
            f"`taskset -c {cpu}`): the median wall clock of a run over the 1080 rows repeated "
            f"{EDGE_REPEAT_FILE} times (keys made unique) minus that of a 1-line run "
            "(process start-up, model load), per instance — so JSON Lines parsing, the policy and writing "
            "each answer are included. onnxruntime (Python, `intra_op_num_threads = 1`, "
            "`inter_op_num_threads = 1`, the process pinned to the same core): the median time of one "
            "`session.run` call (batch 1: one row per call; batch 64: per call / 64), Python call "
            "overhead included.",
            "",
            "| engine | phase-1 file | batch 1 µs/instance | batch 64 µs/instance | details |",
            "|---|---|---:|---:|---|",
        ]
        for r_name in dict.fromkeys(r["phase1"] for r in el):
            by = {r["batch_size"]: r for r in el if r["phase1"] == r_name}
            det = "; ".join(f"batch {b}: {r['full_median_s'] * 1000:.1f} ms for {r['instances']} lines, "
                            f"{r['one_line_median_s'] * 1000:.1f} ms for 1, peak RSS {r['peak_rss_mib']} MiB"
                            for b, r in sorted(by.items()))
            out.append(f"| serval edge | {r_name} | {fmt_us(by.get(1, {}).get('us_per_instance'))} | "
                       f"{fmt_us(by.get(64, {}).get('us_per_instance'))} | {det} (median of {next(iter(by.values()))['repeat']}) |")
        for r_name in dict.fromkeys(r["phase1"] for r in ol):
            by = {r["batch_size"]: r for r in ol if r["phase1"] == r_name}
            det = "; ".join(f"batch {b}: median {r['median_call_us']:.1f} µs per call, p90 {r['p90_call_us']:.1f}, "
                            f"{r['calls']:,} calls" for b, r in sorted(by.items()))
            out.append(f"| onnxruntime (Python) | {r_name} | {fmt_us(by.get(1, {}).get('us_per_instance'))} | "
                       f"{fmt_us(by.get(64, {}).get('us_per_instance'))} | {det} |")
        out += ["", "Commands ($WORK: the run's temporary directory; $WORK/quantized/MODEL/VARIANT/model.onnx are "
                "part 1's files, each with the model's config.toml beside it):", ""]
        if el:
            files = ", ".join(f"{r['phase1']}: `{rel(r['file'])}`" for r in el if r["batch_size"] == el[0]["batch_size"])
            out += [f"- serval edge: `{el[0]['command'].rsplit(' --batch-size', 1)[0].replace(rel(el[0]['file']), 'FILE')}"
                    f" --batch-size B` (B = {', '.join(str(b) for b in sorted({r['batch_size'] for r in el}))}), "
                    f"the same over the file's first line, {el[0]['repeat']} times each, interleaved, after one "
                    f"warm-up run; FILE: {files}; never.toml: `{NEVER.splitlines()[0]}` `{NEVER.splitlines()[2]}`"]
        if ol:
            files = ", ".join(f"{r['phase1']}: `{rel(r['file'])}`" for r in ol if r["batch_size"] == 1)
            out += [f"- onnxruntime: `InferenceSession(FILE)` with intra_op_num_threads = 1, inter_op_num_threads = 1, "
                    f"sequential execution, the process pinned to core {ol[0]['cpu']}; batch 1: one row per call over "
                    f"the 1080 rows; batch 64: 16 calls over the first 1024 rows; passes repeated for "
                    f"{doc.get('ort_seconds', '?')} s (at least 2) after 50 warm-up calls; FILE: {files}"]
        out.append("")

    sy = [r for r in recs if r["kind"] == "system"]
    if sy:
        ref = sy[0]
        first = next((r for r in sy if r.get("phase1")), None)
        out += [
            "**3. The two-phase system** on the 1080-row digits test split (539 digits, 541 non-digits): "
            "`serval edge` with phase 1 in-process, phase 2 (`digits_phase2`) on `serval serve examples/models` "
            "over loopback, every request through a counting proxy. A phase-2 answer's class is the top of its "
            "`probabilities`; a local answer's is phase 1's class. Bytes: the JSON request bodies the edge "
            "sent to `/infer`, counted at the proxy (and equal"
            + (", byte for byte," if all(r.get("bodies_byte_identical", True) for r in sy) else " in length and JSON")
            + " to the bodies rebuilt from the answers); "
            "HTTP headers not included. Every run but the one marked passes `--report-sample 0`: no phase-1 "
            "predictions are reported to the server's log (`POST /v2/models/digits_phase1/log`)."
            + (f" Edge settings: `--batch-size {first['batch_size']} --forward-batch {first['forward_batch']}` "
               "(each block of lines sends its own forwards)." if first else ""),
            "",
            "| system | phase 1 | forwarded | accuracy | digits | non-digits | requests | body bytes | bytes / instance sent | reports to the log (requests, bytes) | bytes vs all to the cloud |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        all_bytes = ref["all_64_bytes"]
        for r_name in dict.fromkeys(r["phase1"] for r in sy if r.get("phase1")):
            p1 = next(r for r in sy if r.get("phase1") == r_name)
            a = p1["phase1_alone"]
            out.append(f"| phase 1 alone | {r_name} | 0 | {a['accuracy']:.4f} | {a['accuracy_digits']:.4f} | "
                       f"{a['accuracy_not_digits']:.4f} | 0 | 0 | – | – | 0% |")
        for r in sy:
            share = f"{r['forwarded']} ({r['forwarded'] / 1080:.1%})"
            per = f"{r['body_bytes'] / r['forwarded']:.0f}" if r["forwarded"] else "–"
            reports = (f"{r['reported']} reported: {r['report_requests']}, {fmt_b(r['report_body_bytes'])}"
                       if r.get("with_reports") else "–")
            total = r["body_bytes"] + (r.get("report_body_bytes") or 0)
            out.append(f"| {r['system']} | {r.get('phase1') or '–'} | {share} | {r['accuracy']:.4f} | "
                       f"{r['accuracy_digits']:.4f} | {r['accuracy_not_digits']:.4f} | {r['requests']} | "
                       f"{fmt_b(r['body_bytes'])} | {per} | {reports} | {total / all_bytes:.1%} |")
        out += [
            "",
            f"All 1080 to the cloud: {fmt_b(ref['all_64_bytes'])} bytes in {ref['all_64_requests']} bodies of 64 "
            f"instances, {fmt_b(ref['all_1_bytes'])} bytes one instance per request "
            f"({ref['all_1_requests']} requests); the raw float32 pixels are {fmt_b(ref['raw_fp32_bytes'])} bytes. "
            "Bytes vs all to the cloud: the body bytes (with the reports, where sent) over the 64-instance "
            "figure.",
            "",
        ]
        for r in sy:
            if not r.get("phase1") or r.get("with_reports"):
                continue
            out.append(f"- {r['system']}, phase 1 {r['phase1']}: the same {r['forwarded']} instances packed in "
                       f"bodies of 64: {fmt_b(r['packed_64_bytes'])} bytes ({r['packed_64_requests']} "
                       f"request{'s' if r['packed_64_requests'] != 1 else ''}); "
                       f"one per request: {fmt_b(r['one_per_request_bytes'])} bytes; HTTP request lines and "
                       f"headers: {fmt_b(r['header_bytes'])} bytes more; phase-2 answers differing from the "
                       f"direct requests': {r['phase2_differs_from_direct']}.")
        out += ["", "Commands (SERVER: `serval serve examples/models --host 127.0.0.1 --http-port 0 --grpc-port 0 "
                "--prediction-log $WORK/prediction-log`; URL: the proxy in front of it; $WORK as above):", ""]
        for r in sy:
            if r.get("phase1"):
                out.append(f"- `{r['command']}` with {r['policy'].strip().replace(chr(10), '; ')}")
            else:
                out.append(f"- {r['system']}: {r['command']}")
    print("\n".join(out).rstrip())


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        sys.exit(__doc__)
    cmd, rest = argv[0], argv[1:]
    if cmd in ("machine", "set", "finalize"):
        if cmd == "machine":
            eval_bench.machine(rest[0], rest[1:])
            eval_bench.set_field(rest[0], "python", json.dumps(versions()))
        elif cmd == "set":
            eval_bench.set_field(*rest)
        else:
            eval_bench.finalize(*rest)
        return
    if cmd == "report":
        report(rest[0])
        return
    p = argparse.ArgumentParser(prog=f"two_phase_bench.py {cmd}")
    p.add_argument("records")
    if cmd in ("quantize", "edge-latency", "system"):
        p.add_argument("--serval", required=True)
    if cmd in ("quantize", "edge-latency", "system"):
        p.add_argument("--work", required=True)
    if cmd in ("edge-latency", "ort-latency", "system"):
        p.add_argument("--phase1", action="append", required=True, help="NAME=FILE")
    if cmd in ("edge-latency", "ort-latency"):
        p.add_argument("--cpu", type=int, default=0)
    if cmd in ("edge-latency", "system"):
        p.add_argument("--input", required=True)
    if cmd == "edge-latency":
        p.add_argument("--batch-size", type=int, action="append")
        p.add_argument("--repeat", type=int, default=5)
    if cmd == "ort-latency":
        p.add_argument("--seconds", type=float, default=2.0)
    if cmd == "system":
        p.add_argument("--server", required=True)
        p.add_argument("--model", required=True)
        p.add_argument("--batch-size", type=int, default=64)
        p.add_argument("--forward-batch", type=int, default=64)
    a = p.parse_args(rest)
    if cmd == "quantize":
        quantize(a.records, a.serval, a.work)
    elif cmd == "edge-latency":
        edge_latency(a.records, a.serval, a.phase1, a.input, a.batch_size or [1, 64], a.repeat, a.cpu, a.work)
    elif cmd == "ort-latency":
        ort_latency(a.records, a.phase1, a.cpu, a.seconds)
    elif cmd == "system":
        system(a.records, a.serval, a.server, a.model, a.phase1, a.input, a.work, a.batch_size, a.forward_batch)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
