#!/usr/bin/env python3
"""Helper of bench/memory.sh: what maximal request bodies do to a `serval serve`'s memory and to
its health endpoint, one case per fresh server.

    memory.py cases                  # the case ids, in order
    memory.py run RECORDS --case ID --http HOST:PORT --grpc HOST:PORT --pid PID --model M
                  --limit BYTES --requests N --connections N --cap MIB
                    # one case: its requests (or held connections), the server's VmRSS sampled
                    # every 20 ms (SIGKILL above --cap MiB), /v2/health/live probed every 20 ms
    memory.py machine OUT.json key=value ... / set FILE.json KEY JSON /
              finalize RECORDS.jsonl MACHINE.json OUT.json   # as two_phase_bench.py's
    memory.py report RESULTS.json    # the markdown on stdout

Bodies are zeros, built with bytes repetition (never json.dumps of a large list) to just under
--limit (the server's --max-body-bytes; gRPC's max message size is the same). gRPC messages are
encoded by hand and sent through grpcio as bytes, so the client never builds protobuf objects
with millions of elements. Needs grpcio (with benchlib.py, corpus_bench.py and
two_phase_bench.py beside it).
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

import benchlib
import corpus_bench
import two_phase_bench

MARGIN = 1024  # bodies end this far below the limit
SAMPLE_S = 0.02
SLOW_PROBE_MS = 100
AFTER_S = 2.0  # RSS "after" is read this long after the last answer
HOLD_S = 5.0  # the held connections stay open this long once their bytes are sent
TIMEOUT_S = 300.0  # per socket operation or gRPC call; the debug build parses slowly
ROW = b'{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'


# --------------------------------------------------------------------------- bodies


def fit(build, unit: int, target: int) -> bytes:
    """build(n) for the largest n whose body is at most `target` bytes (each n adds ~`unit`)."""
    n = target // unit
    while len(body := build(n)) > target:
        n -= -(-(len(body) - target) // unit)
    return body


def zeros(n: int) -> bytes:
    """n JSON zeros, comma-separated."""
    return b"0," * (n - 1) + b"0"


def v2_json(rows: int, shape: list[int] | None = None) -> bytes:
    """v2 JSON with rows*4 zeros under `shape` (default [rows, 4])."""
    head = {"name": "features", "shape": shape or [rows, 4], "datatype": "FP32"}
    return b'{"inputs":[' + json.dumps(head)[:-1].encode() + b', "data":[' + zeros(rows * 4) + b"]}]}"


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def pb(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def pb_tensor(name: str, datatype: str, shape: list[int], contents: bytes = b"") -> bytes:
    """ModelInferRequest.inputs (5): InferInputTensor name 1, datatype 2, shape 3 (packed),
    contents 5."""
    body = pb(1, name.encode()) + pb(2, datatype.encode()) + pb(3, b"".join(map(varint, shape)))
    return pb(5, body + (pb(5, contents) if contents else b""))


def pb_request(model: str, *tensors: bytes, raw: bytes | None = None) -> bytes:
    """ModelInferRequest: model_name 1, the inputs, raw_input_contents 7."""
    return pb(1, model.encode()) + b"".join(tensors) + (pb(7, raw) if raw is not None else b"")


# Each case: (protocol, what is sent, the request as (path or None for gRPC, headers, body) from
# (model, limit)). InferTensorContents: fp32_contents 6 (packed), bytes_contents 8.
def _cases():
    json_h = {"Content-Type": "application/json"}
    tf = lambda m: f"/v1/models/{m}:predict"  # noqa: E731
    v2 = lambda m: f"/v2/models/{m}/infer"  # noqa: E731

    def binary(m, limit):
        body = fit(lambda rows: json.dumps({"inputs": [{
            "name": "features", "shape": [rows, 4], "datatype": "FP32",
            "parameters": {"binary_data_size": rows * 16}}]}).encode() + bytes(rows * 16), 16, limit - MARGIN)
        head_len = json.JSONDecoder().raw_decode(body[:MARGIN].decode())[1]
        return v2(m), {"Content-Type": "application/octet-stream",
                       "Inference-Header-Content-Length": str(head_len)}, body

    return {
        "tf-one-long-instance": (
            "TF REST", "one instance of millions of zeros (the model takes 4)",
            lambda m, limit: (tf(m), json_h, fit(lambda n: b'{"instances": [[' + zeros(n) + b"]]}", 2,
                                                 limit - MARGIN))),
        "tf-many-instances": (
            "TF REST", "millions of well-formed [0,0,0,0] instances",
            lambda m, limit: (tf(m), json_h, fit(lambda n: b'{"instances": [' + b"[0,0,0,0]," * (n - 1)
                                                 + b"[0,0,0,0]]}", 10, limit - MARGIN))),
        "v2-json-shape-matches": (
            "v2 REST JSON", "shape [N,4] and N*4 zeros",
            lambda m, limit: (v2(m), json_h, fit(v2_json, 8, limit - MARGIN))),
        "v2-json-shape-mismatch": (
            "v2 REST JSON", "shape [1,4] and millions of zeros",
            lambda m, limit: (v2(m), json_h, fit(lambda r: v2_json(r, [1, 4]), 8, limit - MARGIN))),
        "v2-binary": (
            "v2 REST binary", "shape [N,4], binary_data_size N*16, a raw tail of zeros",
            binary),
        "grpc-raw": (
            "gRPC", "shape [N,4], raw_input_contents of N*16 bytes",
            lambda m, limit: (None, {}, fit(lambda r: pb_request(m, pb_tensor("features", "FP32", [r, 4]),
                                                                 raw=bytes(r * 16)), 16, limit - MARGIN))),
        "grpc-fp32": (
            "gRPC", "shape [N,4], N*4 fp32_contents",
            lambda m, limit: (None, {}, fit(lambda r: pb_request(m, pb_tensor(
                "features", "FP32", [r, 4], pb(6, bytes(r * 16)))), 16, limit - MARGIN))),
        # The iris model has no BYTES input, but every model takes the server's BYTES `key` input
        # (the prediction keys): one row of features and millions of empty keys, 2 bytes each.
        "grpc-bytes-empty": (
            "gRPC", "features [1,4], key BYTES [M] of M empty bytes_contents",
            lambda m, limit: (None, {}, fit(lambda k: pb_request(
                m, pb_tensor("features", "FP32", [1, 4], pb(6, bytes(16))),
                pb_tensor("key", "BYTES", [k], b"\x42\x00" * k)), 2, limit - MARGIN))),
        "held-bodies": (
            "v2 REST JSON", "connections each sending a head with Content-Length = the limit, then "
                            "all of the body but its last byte, and holding",
            None),
    }


CASES = _cases()


# --------------------------------------------------------------------------- the server


def memory(pid: int) -> dict | None:
    """VmRSS and VmHWM in MiB, None once the process is gone (a zombie has no VmRSS line)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = round(int(value.split()[0]) / 1024, 1)
    except FileNotFoundError:
        return None
    return out if "VmRSS" in out else None


class Watch(threading.Thread):
    """Samples the server's VmRSS every 20 ms; also the watchdog: SIGKILL above `cap` MiB."""

    def __init__(self, pid: int, cap: float):
        super().__init__(daemon=True)
        self.pid, self.cap, self.t0 = pid, cap, time.monotonic()
        self.peak, self.samples, self.killed = 0.0, 0, None
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set() and (m := memory(self.pid)):
            self.peak, self.samples = max(self.peak, m["VmRSS"]), self.samples + 1
            if m["VmRSS"] > self.cap:
                os.kill(self.pid, signal.SIGKILL)
                self.killed = {"rss_mib": m["VmRSS"], "after_s": round(time.monotonic() - self.t0, 3)}
                print(f"  watchdog: VmRSS {m['VmRSS']} MiB > {self.cap} MiB, server killed", flush=True)
                return
            self.stop.wait(SAMPLE_S)


class Health(threading.Thread):
    """GET /v2/health/live on one keep-alive connection, 20 ms apart, until stopped or the
    watchdog fired: each probe's milliseconds, or what went wrong (then a new connection)."""

    def __init__(self, addr: tuple[str, int], watch: Watch):
        super().__init__(daemon=True)
        self.addr, self.watch = addr, watch
        self.ms, self.errors = [], collections.Counter()
        self.stop = threading.Event()

    def run(self):
        conn = http.client.HTTPConnection(*self.addr, timeout=30)
        while not self.stop.is_set() and not self.watch.killed:
            t0 = time.perf_counter()
            try:
                conn.request("GET", "/v2/health/live")
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    self.ms.append((time.perf_counter() - t0) * 1e3)
                else:
                    self.errors[str(resp.status)] += 1
            except (OSError, http.client.HTTPException) as e:
                self.errors[type(e).__name__] += 1
                conn.close()
            self.stop.wait(SAMPLE_S)
        conn.close()

    def summary(self) -> dict:
        p = corpus_bench.percentiles(self.ms)
        r = lambda x: None if x is None else round(x, 2)  # noqa: E731
        return {"probes": len(self.ms) + sum(self.errors.values()), "errors": dict(self.errors),
                "p50_ms": r(p["p50"]), "p99_ms": r(p["p99"]), "max_ms": r(max(self.ms, default=None)),
                f"slower_than_{SLOW_PROBE_MS}_ms": sum(ms > SLOW_PROBE_MS for ms in self.ms)}


# --------------------------------------------------------------------------- clients


def http_head(path: str, headers: dict, length: int) -> bytes:
    h = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {length}\r\n{h}\r\n".encode()


def http_post(addr, path: str, headers: dict, body: bytes) -> tuple[str, str]:
    """One request on its own connection: (status or what failed, the answer's start)."""
    try:
        s = socket.create_connection(addr, timeout=TIMEOUT_S)
    except OSError as e:
        return f"connect {type(e).__name__}", ""
    with s:
        failed = ""
        try:
            s.sendall(http_head(path, headers, len(body)))
            s.sendall(body)
        except OSError as e:  # the server may answer before it has read the whole body
            failed = f"send {type(e).__name__}, "
        try:
            resp = http.client.HTTPResponse(s)
            resp.begin()
            return str(resp.status), resp.read()[:200].decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as e:
            return f"{failed}recv {type(e).__name__}", ""


def grpc_infer(addr: str, body: bytes) -> tuple[str, str]:
    """One ModelInfer on its own channel and connection (no shared subchannel): (code, details)."""
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1),
               ("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(addr, options=options) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        try:
            call(body, timeout=TIMEOUT_S)
            return "OK", ""
        except grpc.RpcError as e:
            return e.code().name, (e.details() or "")[:200]


def concurrently(n: int, send) -> tuple[list, float, list[float]]:
    """send() on n threads released together: the results, the release time, each end time."""
    start = []
    barrier = threading.Barrier(n, action=lambda: start.append(time.monotonic()))

    def one(_):
        barrier.wait()
        out = send()
        return out, time.monotonic()

    with ThreadPoolExecutor(n) as ex:
        done = list(ex.map(one, range(n)))
    return [d[0] for d in done], start[0], [d[1] for d in done]


def held_bodies(http_addr, model: str, limit: int, n: int) -> dict:
    """n connections sending a head with Content-Length = limit and limit - 1 body bytes, then
    holding; meanwhile one normal v2 inference on a fresh connection. Closed after HOLD_S s."""
    # The largest v2 JSON of at most `limit`, padded to exactly it with spaces before its closing
    # brackets: what is sent is then an unfinished document.
    body = fit(v2_json, 8, limit)
    body = body[:-4] + b" " * (limit - len(body)) + body[-4:]
    head = http_head(f"/v2/models/{model}/infer", {"Content-Type": "application/json"}, len(body))
    part = memoryview(body)[:-1]
    socks = []

    def send():
        try:
            s = socket.create_connection(http_addr, timeout=TIMEOUT_S)
            socks.append(s)
            s.sendall(head)
            s.sendall(part)
            return "sent"
        except OSError as e:
            return type(e).__name__

    results, t0, ends = concurrently(n, send)
    sent_s = max(ends) - t0
    t1 = time.monotonic()
    status, answer = http_post(http_addr, f"/v2/models/{model}/infer", {"Content-Type": "application/json"}, ROW)
    normal = {"status": status, "ms": round((time.monotonic() - t1) * 1e3, 1), "answer": answer[:120]}
    time.sleep(max(0.0, t0 + sent_s + HOLD_S - time.monotonic()))
    # What the held connections got meanwhile (an answer, a close), without waiting.
    got = collections.Counter()
    for s in socks:
        s.setblocking(False)
        try:
            data = s.recv(200)
            got[data.split(b"\r\n", 1)[0].decode("latin-1") if data else "closed"] += 1
        except BlockingIOError:
            got["nothing"] += 1
        except OSError as e:
            got[type(e).__name__] += 1
        s.close()
    return {"body_bytes": len(body), "sent_bytes": len(body) - 1, "send_outcomes": dict(collections.Counter(results)),
            "all_sent_s": round(sent_s, 3), "normal_request": normal, "held_received": dict(got),
            "t0": t0, "last_answer": time.monotonic()}


def run(records: str, case: str, http_addr: str, grpc_addr: str, pid: int, model: str, limit: int,
        n: int, connections: int, cap: float):
    protocol, what, make = CASES[case]
    host, port = http_addr.rsplit(":", 1)
    haddr = (host, int(port))
    rec = {"kind": "case", "case": case, "protocol": protocol, "what": what, "limit_bytes": limit, "cap_mib": cap,
           "load1": float(benchlib.loadavg()[0])}
    if make:
        path, headers, body = make(model, limit)
        send = (lambda: http_post(haddr, path, headers, body)) if path else (lambda: grpc_infer(grpc_addr, body))
        rec.update(body_bytes=len(body), requests=n)
    before = memory(pid)
    watch = Watch(pid, cap)
    health = Health(haddr, watch)
    watch.start()
    health.start()
    if make:
        results, t0, ends = concurrently(n, send)
        last = max(ends)
        answers = {}
        for status, answer in results:
            answers.setdefault(status, answer)
        rec.update(statuses=dict(collections.Counter(s for s, _ in results)), answers=answers,
                   last_answer_s=round(last - t0, 3))
    else:
        held = held_bodies(haddr, model, limit, connections)
        t0, last = held.pop("t0"), held.pop("last_answer")
        rec.update(connections=connections, **held)
    time.sleep(max(0.0, last + AFTER_S - time.monotonic()))
    after = memory(pid)
    health.stop.set()
    watch.stop.set()
    health.join()
    watch.join()
    rec.update(rss_before_mib=before["VmRSS"], peak_rss_mib=watch.peak, rss_samples=watch.samples,
               rss_after_mib=after and after["VmRSS"], vmhwm_mib=after and after["VmHWM"],
               watchdog=watch.killed, health=health.summary())
    benchlib.append_record(records, rec)
    h = rec["health"]
    print(f"  {case}: {rec.get('statuses') or rec.get('send_outcomes')} | RSS {rec['rss_before_mib']} -> peak "
          f"{rec['peak_rss_mib']} -> after {rec['rss_after_mib']} MiB (HWM {rec['vmhwm_mib']})"
          f"{' KILLED by the watchdog' if watch.killed else ''} | health p50 {h['p50_ms']} p99 {h['p99_ms']} "
          f"max {h['max_ms']} ms, slow {h[f'slower_than_{SLOW_PROBE_MS}_ms']}, errors {h['errors']}"
          + (f" | normal request {rec['normal_request']}" if not make else ""), flush=True)


# --------------------------------------------------------------------------- report


def fmt(x) -> str:
    return "–" if x is None else f"{x:,.0f}"


def report(path: str):
    doc = benchlib.load_json(path)
    recs = [r for r in doc["records"] if r["kind"] == "case"]
    m, v = doc["machine"], doc["versions"]
    out = []
    if doc.get("debug_binary"):
        out += ["**A debug build of serval was measured: its timings mean nothing (and its memory "
                "differs from a release build's).**", ""]
    out += [
        f"- machine: nproc {m['nproc']}, {m['cpu']}, {m['mem_gib']} GiB, kernel {m['kernel']}, load average "
        f"{' '.join(m['load_at_start'])} at start, {' '.join(doc.get('load_at_end', ['?']))} at end",
        f"- source: {v['source']}; serval: {doc.get('serval')}; each case on a fresh `serval serve REPO --host "
        f"127.0.0.1 --http-port 0 --grpc-port 0 --max-body-bytes {doc['limit_bytes']}` on a repository of "
        f"{doc['model']} alone (input `features` [-1,4] FP32)",
        f"- {doc['requests']} concurrent requests per case, each on its own connection; VmRSS sampled every "
        f"{SAMPLE_S * 1e3:.0f} ms (peak = the largest sample), after = {AFTER_S:g} s after the last answer, HWM = "
        f"VmHWM then; GET /v2/health/live on one keep-alive connection every {SAMPLE_S * 1e3:.0f} ms throughout; "
        f"the watchdog kills the server above {doc['cap_mib']} MiB",
        f"- command: `{doc.get('command')}`",
        "",
        "| case | protocol | body MiB | statuses | last answer s | RSS before MiB | peak RSS MiB | RSS after MiB "
        f"| HWM MiB | health p50 / p99 / max ms | probes > {SLOW_PROBE_MS} ms | failed probes | load1 at start |",
        "|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in recs:
        h = r["health"]
        if "statuses" in r:
            statuses = ", ".join(f"{k} ×{c}" for k, c in r["statuses"].items())
            mib, last = r["body_bytes"] / 2**20, r["last_answer_s"]
        else:
            n = r["normal_request"]
            statuses = (f"{r['connections']} held: {', '.join(f'{k} ×{c}' for k, c in r['send_outcomes'].items())}; "
                        f"a normal request: {n['status']} in {benchlib.fmt_ms(n['ms'])} ms")
            mib, last = r["sent_bytes"] / 2**20, r["all_sent_s"]
        if r["watchdog"]:
            statuses += f"; **killed by the watchdog at {fmt(r['watchdog']['rss_mib'])} MiB**"
        out.append(f"| {r['case']} | {r['protocol']} | {mib:.2f} | {statuses} | {last:.1f} | {fmt(r['rss_before_mib'])} | "
                   f"{fmt(r['peak_rss_mib'])} | {fmt(r['rss_after_mib'])} | {fmt(r['vmhwm_mib'])} | "
                   f"{benchlib.fmt_ms(h['p50_ms'])} / {benchlib.fmt_ms(h['p99_ms'])} / {benchlib.fmt_ms(h['max_ms'])} | "
                   f"{h[f'slower_than_{SLOW_PROBE_MS}_ms']} | {sum(h['errors'].values())} | {r['load1']:.2f} |")
    out += ["", "What each case sends, and the first answer of each status:", ""]
    for r in recs:
        answers = "; ".join(f"{k}: `{a[:120]}`" for k, a in r.get("answers", {}).items() if a)
        if "held_received" in r:
            n = r["normal_request"]
            answers = (f"Last answer s: until all were sent. The held connections received {r['held_received']} "
                       f"after {HOLD_S:g} s, then were closed" + (f"; the normal request: `{n['answer']}`" if n["status"] != "200" else ""))
        out.append(f"- {r['case']}: {r['what']}" + (f". {answers}" if answers else ""))
    out += ["", "Not measured: no model of examples/models has a dynamic per-instance shape (all take "
            "[-1, F]), so there is no such case."]
    print("\n".join(out))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        sys.exit(__doc__)
    cmd, rest = argv[0], argv[1:]
    if cmd in ("machine", "set", "finalize"):
        two_phase_bench.main(argv)
    elif cmd == "cases":
        print(" ".join(CASES))
    elif cmd == "report":
        report(rest[0])
    elif cmd == "run":
        p = argparse.ArgumentParser(prog="memory.py run")
        p.add_argument("records")
        p.add_argument("--case", required=True, choices=CASES)
        p.add_argument("--http", required=True)
        p.add_argument("--grpc", required=True)
        p.add_argument("--pid", type=int, required=True)
        p.add_argument("--model", required=True)
        p.add_argument("--limit", type=int, required=True)
        p.add_argument("--requests", type=int, required=True)
        p.add_argument("--connections", type=int, required=True)
        p.add_argument("--cap", type=float, required=True)
        a = p.parse_args(rest)
        run(a.records, a.case, a.http, a.grpc, a.pid, a.model, a.limit, a.requests, a.connections, a.cap)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
