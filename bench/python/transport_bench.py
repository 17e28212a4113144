#!/usr/bin/env python3
"""Helper of bench/transport.sh: what TLS and bearer tokens cost a `serval serve`, and what slow
clients (slowloris: a request head that never ends) do to the others, to its memory and to its
connection limit.

    transport_bench.py body FILE                # the v2 REST body (one iris row) wrk POSTs
    transport_bench.py check URL --model M [--ca CERT] [--token T]
                        # health open, infer 200 (with the token), 401 without it or with
                        # another, no answer over plain HTTP when URL is https
    transport_bench.py wrk RECORDS --pid PID [key=value ...] -- WRK ARG...
                        # runs wrk with bench/transport.lua: its WRK_JSON line, the server's CPU
                        # (/proc/PID/stat) and wrk's own over the run
    transport_bench.py slow RECORDS --url URL --pid PID --model M -n N --timeout S
                        # health, one infer, VmRSS and serval_connections_open with no other
                        # client, while N unfinished heads are held, and after the server has
                        # closed them (how long that took)
    transport_bench.py limit RECORDS --url URL --pid PID --model M -n N --timeout S --limit L
                        # N unfinished heads against --max-connections L: refused, held, and
                        # health before, during and after
    transport_bench.py machine OUT.json key=value ... / set FILE.json KEY JSON /
                       finalize RECORDS.jsonl MACHINE.json OUT.json   # as two_phase_bench.py's
    transport_bench.py report RESULTS.json      # the markdown on stdout

Standard library only (with benchlib.py, corpus_bench.py and two_phase_bench.py beside it).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import selectors
import socket
import ssl
import statistics
import subprocess
import sys
import time
import urllib.parse

import benchlib
import corpus_bench
import two_phase_bench

ROW = [5.1, 3.5, 1.4, 0.2]
BODY = json.dumps({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}).encode()
HEALTH = "/v2/health/ready"
HEALTH_REQUESTS = 200


def partial_head(model: str) -> bytes:
    return f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: a\r\n".encode()


# --------------------------------------------------------------------------- the server


class Server:
    """The server under test: its URL (http or https, trusting `ca`) and its process."""

    def __init__(self, url: str, pid: int | None = None, ca: str | None = None):
        up = urllib.parse.urlsplit(url)
        self.url, self.host, self.port, self.pid = url, up.hostname, up.port, pid
        self.tls = ssl.create_default_context(cafile=ca) if up.scheme == "https" else None

    def connect(self, timeout: float = 30) -> http.client.HTTPConnection:
        if self.tls:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.tls)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process so far (all its threads)."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory(self) -> dict:
        """VmRSS and VmHWM (the peak) in MiB, from /proc/PID/status."""
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key.lower() + "_mib"] = round(int(value.split()[0]) / 1024, 1)
        return out

    def nofile(self) -> str | None:
        with open(f"/proc/{self.pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return " / ".join(line.split()[3:5])
        return None


def call(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
         headers: dict | None = None) -> tuple[int, bytes, float]:
    """One request on `conn`: (status, body, milliseconds)."""
    h = dict(headers or {})
    if body is not None:
        h["Content-Type"] = "application/json"
    t0 = time.perf_counter()
    conn.request(method, path, body=body, headers=h)
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, data, (time.perf_counter() - t0) * 1e3


def infer_path(model: str) -> str:
    return f"/v2/models/{model}/infer"


def health_series(conn: http.client.HTTPConnection, n: int = HEALTH_REQUESTS) -> dict:
    """n sequential GET /v2/health/ready on `conn` (connected first when it is not, timed apart):
    ms percentiles, and the statuses."""
    times, codes, connect_ms = [], {}, None
    if conn.sock is None:
        t0 = time.perf_counter()
        conn.connect()
        connect_ms = round((time.perf_counter() - t0) * 1e3, 3)
    for _ in range(n):
        status, _, ms = call(conn, "GET", HEALTH)
        times.append(ms)
        codes[str(status)] = codes.get(str(status), 0) + 1
    p = corpus_bench.percentiles(times)
    return {"requests": n, "codes": codes, "connect_ms": connect_ms, "p50_ms": round(p["p50"], 3), "p99_ms": round(p["p99"], 3),
            "max_ms": round(max(times), 3), "mean_ms": round(p["mean"], 3)}


def infer_fresh(server: Server, model: str) -> dict:
    """One v2 inference on a fresh connection, the connection included."""
    t0 = time.perf_counter()
    conn = server.connect()
    try:
        status, data, _ = call(conn, "POST", infer_path(model), BODY)
    finally:
        conn.close()
    ms = (time.perf_counter() - t0) * 1e3
    if status != 200 or b'"outputs"' not in data:
        raise SystemExit(f"infer answered {status}: {data[:300]!r}")
    return {"status": status, "ms": round(ms, 3)}


def metric_lines(text: str, name: str, listener: str) -> list[float]:
    pattern = rf'^{name}\{{[^}}]*listener="{listener}"[^}}]*\}} (\S+)$'
    return [float(v) for v in re.findall(pattern, text, re.M)]


def connection_metrics(conn: http.client.HTTPConnection) -> dict:
    """serval_connections_open{listener="http"} (this connection included) and
    serval_connections_refused_total{listener="http"} summed over its reasons."""
    status, data, _ = call(conn, "GET", "/metrics")
    if status != 200:
        raise SystemExit(f"/metrics answered {status}")
    text = data.decode()
    opened = metric_lines(text, "serval_connections_open", "http")
    return {"connections_open": opened[0] if opened else None,
            "connections_refused_total": sum(metric_lines(text, "serval_connections_refused_total", "http"))}


# --------------------------------------------------------------------------- commands


def body(path: str):
    with open(path, "wb") as f:
        f.write(BODY)


def check(url: str, model: str, ca: str | None, token: str):
    """The server answers as its flags say before it is measured."""
    server = Server(url, ca=ca)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    conn = server.connect()
    try:
        assert call(conn, "GET", HEALTH)[0] == 200, "health did not answer 200"
        status, data, _ = call(conn, "POST", infer_path(model), BODY, auth)
        assert status == 200 and b'"outputs"' in data, f"infer answered {status}: {data[:300]!r}"
        tls = (conn.sock.version(), conn.sock.cipher()[0]) if server.tls else None
    finally:
        conn.close()
    for headers in ({}, {"Authorization": "Bearer " + "x" * len(token)}) if token else ():
        other = server.connect()
        try:
            status = call(other, "POST", infer_path(model), BODY, headers)[0]
        finally:
            other.close()
        assert status == 401, f"infer with {headers or 'no token'} answered {status}, not 401"
    if server.tls:
        plain = Server(url.replace("https://", "http://", 1))
        try:
            status = call(plain.connect(timeout=10), "GET", HEALTH)[0]
        except (OSError, http.client.HTTPException):
            status = None
        assert status is None, f"plain HTTP to the TLS port answered {status}"
    print(f"  {url}: checked" + (f" ({tls[0]}, {tls[1]} with Python's client)" if tls else "")
          + (", 401 without the token" if token else ""), flush=True)


def run_wrk(records: str, pid: int, cmd: list[str], pairs: list[str]):
    server = Server("http://127.0.0.1", pid)
    cpu0, kids0, t0 = server.cpu_s(), resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True)
    cpu1, kids1, wall = server.cpu_s(), resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic() - t0
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if p.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({p.returncode}): {p.stdout[-2000:]}{p.stderr[-2000:]}")
    w = json.loads(line.split(" ", 1)[1])
    seconds = w["duration_us"] / 1e6
    bad_status = w["errors"]["status"]
    socket_errors = sum(v for k, v in w["errors"].items() if k != "status")
    ok = w["requests"] - bad_status
    client_cpu = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    rec = dict(benchlib.parse_meta(pairs), kind="wrk", command=" ".join(cmd), wrk=w, seconds=round(seconds, 3),
               requests=w["requests"], non_2xx=bad_status, socket_errors=socket_errors,
               requests_per_s=benchlib.per_s(ok, seconds),
               p50_ms=w["latency_us"]["p50"] / 1e3, p90_ms=w["latency_us"]["p90"] / 1e3,
               p99_ms=w["latency_us"]["p99"] / 1e3, max_ms=w["latency_us"]["max"] / 1e3,
               server_cpu_s=round(cpu1 - cpu0, 3), wrk_cpu_s=round(client_cpu, 3), wall_s=round(wall, 3),
               server_cpu_us_per_request=round((cpu1 - cpu0) / ok * 1e6, 2) if ok else None,
               wrk_cpu_us_per_request=round(client_cpu / ok * 1e6, 2) if ok else None)
    benchlib.append_record(records, rec)
    print(f"  {rec.get('variant')}: {rec['requests_per_s']:,.0f} req/s, p50 {rec['p50_ms']:.3f} ms, "
          f"p99 {rec['p99_ms']:.3f} ms, server CPU {rec['server_cpu_us_per_request']} µs/request, "
          f"non-2xx {bad_status}, socket errors {socket_errors}", flush=True)


# --------------------------------------------------------------------------- slow clients


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def slowloris(server: Server, n: int, model: str) -> tuple[list, dict]:
    """n connections, each sending an unfinished request head: [(socket, time sent)], and what
    went wrong on the others."""
    held, failed = [], {}
    head = partial_head(model)
    for _ in range(n):
        try:
            s = socket.create_connection((server.host, server.port), timeout=10)
        except OSError as e:
            failed[f"connect: {type(e).__name__}"] = failed.get(f"connect: {type(e).__name__}", 0) + 1
            continue
        try:
            s.sendall(head)
        except OSError as e:
            failed[f"send: {type(e).__name__}"] = failed.get(f"send: {type(e).__name__}", 0) + 1
            s.close()
            continue
        held.append((s, time.monotonic()))
    return held, failed


def watch_closes(held: list, timeout: float) -> dict:
    """Waits until the server has closed every socket (EOF or reset) or `timeout`: per socket the
    time it was seen closed and the bytes it received; how many were closed at the first look."""
    state = {s: {"sent": t, "closed": None, "data": b""} for s, t in held}
    with selectors.DefaultSelector() as sel:
        for s in state:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        deadline, first, at_first = time.monotonic() + timeout, True, 0
        open_n = len(state)
        while open_n and time.monotonic() < deadline:
            events = sel.select(timeout=0 if first else min(0.05, max(0.0, deadline - time.monotonic())))
            now = time.monotonic()
            for key, _ in events:
                s = key.fileobj
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:  # reset
                    data = b""
                if data:
                    state[s]["data"] += data
                    continue
                state[s]["closed"] = now
                sel.unregister(s)
                open_n -= 1
                at_first += first
            first = False
    for s in state:
        s.close()
    return {"sockets": list(state.values()), "closed_at_first_look": at_first, "still_open": open_n}


def close_summary(w: dict, t_first: float, t_last: float) -> dict:
    closed = [s for s in w["sockets"] if s["closed"] is not None]
    after_own = [s["closed"] - s["sent"] for s in closed]
    p = corpus_bench.percentiles(after_own)
    answers: dict[str, int] = {}
    for s in w["sockets"]:
        first = s["data"].split(b"\r\n", 1)[0].decode("latin-1") if s["data"] else "(no bytes)"
        answers[first] = answers.get(first, 0) + 1
    last_close = max((s["closed"] for s in closed), default=None)
    return {
        "closed": len(closed), "still_open": w["still_open"], "closed_at_first_look": w["closed_at_first_look"],
        "all_closed_after_last_head_s": round(last_close - t_last, 3) if last_close and not w["still_open"] else None,
        "all_closed_after_first_head_s": round(last_close - t_first, 3) if last_close and not w["still_open"] else None,
        "after_own_head_s": {"min": round(min(after_own), 3) if after_own else None,
                             "p50": round(p["p50"], 3) if after_own else None,
                             "max": round(max(after_own), 3) if after_own else None},
        "answers": answers,
    }


def stage(server: Server, model: str, name: str, t_ref: float | None = None) -> dict:
    """Health on a fresh keep-alive connection, /metrics on it, one inference on another, VmRSS."""
    t0 = time.monotonic()
    conn = server.connect()
    try:
        rec = {"stage": name, "health": health_series(conn), **connection_metrics(conn)}
    finally:
        conn.close()
    rec["infer"] = infer_fresh(server, model)
    rec.update(server.memory())
    if t_ref is not None:
        rec["began_after_last_head_s"] = round(t0 - t_ref, 3)
        rec["ended_after_last_head_s"] = round(time.monotonic() - t_ref, 3)
    print(f"  {name}: health p50 {rec['health']['p50_ms']} p99 {rec['health']['p99_ms']} max "
          f"{rec['health']['max_ms']} ms, infer {rec['infer']['ms']} ms, RSS {rec['vmrss_mib']} MiB, "
          f"connections_open {rec['connections_open']}", flush=True)
    return rec


def slow(records: str, url: str, pid: int, model: str, n: int, timeout: float):
    server = Server(url, pid)
    nofile = raise_nofile()
    stages = [stage(server, model, "no other client")]
    t_first = time.monotonic()
    held, failed = slowloris(server, n, model)
    t_last = time.monotonic()
    print(f"  {len(held)} slow connections open in {t_last - t_first:.2f} s; failed: {failed}", flush=True)
    stages.append(stage(server, model, f"{len(held)} slowloris held", t_last))
    w = watch_closes(held, timeout + 60)
    closes = close_summary(w, t_first, t_last)
    print(f"  closed: {closes}", flush=True)
    stages.append(stage(server, model, "after the server closed them"))
    benchlib.append_record(records, {
        "kind": "slow", "attempted": n, "held": len(held), "failed": failed, "header_read_timeout_s": timeout,
        "open_s": round(t_last - t_first, 3), "client_nofile": nofile, "server_nofile": server.nofile(),
        "stages": stages, "closes": closes})


def limit(records: str, url: str, pid: int, model: str, n: int, timeout: float, max_conns: int):
    server = Server(url, pid)
    nofile = raise_nofile()
    before = server.connect()
    call(before, "GET", HEALTH)
    m0 = connection_metrics(before)
    rss0 = server.memory()
    t_first = time.monotonic()
    held, failed = slowloris(server, n, model)
    t_last = time.monotonic()
    during = {"health_on_earlier_connection": health_series(before), **connection_metrics(before),
              **server.memory()}
    status, data, ms = call(before, "POST", infer_path(model), BODY)
    during["infer_on_earlier_connection"] = {"status": status, "ms": round(ms, 3)}
    # A new client while the places are taken (the earlier connection still holding its own).
    fresh = server.connect(timeout=10)
    try:
        during["fresh_connection"] = f"answered {call(fresh, 'GET', HEALTH)[0]}"
    except (OSError, http.client.HTTPException) as e:
        during["fresh_connection"] = f"refused ({type(e).__name__})"
    finally:
        fresh.close()
    before.close()
    during["ended_after_last_head_s"] = round(time.monotonic() - t_last, 3)
    print(f"  during: {during}", flush=True)
    w = watch_closes(held, timeout + 60)
    closes = close_summary(w, t_first, t_last)
    # Refused: closed long before the header timeout (the watch begins after the measurements
    # above, well within half of it); the others were held until it.
    early = [s for s in w["sockets"] if s["closed"] is not None and s["closed"] - s["sent"] < timeout / 2]
    held_n = len(held) - len(early)
    after = stage(server, model, "after")
    rec = {"kind": "limit", "attempted": n, "max_connections": max_conns, "header_read_timeout_s": timeout,
           "connected": len(held), "failed": failed, "open_s": round(t_last - t_first, 3),
           "client_nofile": nofile, "server_nofile": server.nofile(), "before": {**m0, **rss0},
           "during": during, "closes": closes, "refused_client_side": len(early) + sum(failed.values()),
           "closed_early": len(early), "held_until_timeout": held_n,
           "refused_total_delta": after["connections_refused_total"] - m0["connections_refused_total"],
           "after": after}
    benchlib.append_record(records, rec)
    print(f"  refused: client side {rec['refused_client_side']}, serval_connections_refused_total "
          f"+{rec['refused_total_delta']:g}; held until the header timeout: {held_n}", flush=True)


# --------------------------------------------------------------------------- report


def rel(x, base, digits=2) -> str:
    return f"{x / base:.{digits}f}×" if x is not None and base else "–"


MEDIAN_FIELDS = ("requests_per_s", "p50_ms", "p99_ms", "max_ms", "server_cpu_us_per_request", "wrk_cpu_us_per_request")


def by_variant(runs: list[dict]) -> list[dict]:
    """Each server's runs: the medians of MEDIAN_FIELDS, its requests/s per round, the bad answers."""
    out = {}
    for r in runs:
        out.setdefault(r["variant"], []).append(r)
    rows = []
    for variant, rs in out.items():
        row = {k: statistics.median(r[k] for r in rs) for k in MEDIAN_FIELDS}
        row.update(variant=variant, flags=rs[0]["flags"], rounds=[r["requests_per_s"] for r in rs],
                   non_2xx=sum(r["non_2xx"] for r in rs), socket_errors=sum(r["socket_errors"] for r in rs),
                   load1=[r.get("load1") for r in rs])
        rows.append(row)
    return rows


def wrk_part(runs: list[dict], doc: dict) -> list[str]:
    rows = by_variant(runs)
    plain = next((r for r in rows if r["variant"] == "plain"), rows[0])
    out = [
        f"**1. Throughput**: wrk, {runs[0]['wrk_threads']} threads, {doc.get('connections')} keep-alive "
        f"connections, {doc.get('seconds')} s per run, POST `/v2/models/{doc.get('model')}/infer` (one iris row "
        f"as v2 JSON); four servers started side by side, measured one after the other in each of "
        f"{len(rows[0]['rounds'])} rounds (a 2 s warm-up before a server's first run); wrk on the same 2 cores "
        "as the servers. Medians over the rounds. Server CPU: Δ(utime + stime) of the server process over a "
        "run / its requests; wrk's likewise.",
        "",
        "| server | flags | requests/s | vs plain | p50 ms | p99 ms | max ms | server CPU µs/request | vs plain "
        "| wrk CPU µs/request | requests/s per round | non-2xx / socket errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['variant']} | `{r['flags'] or '(none)'}` | {benchlib.fmt_n(r['requests_per_s'])} | "
            f"{rel(r['requests_per_s'], plain['requests_per_s'])} | {benchlib.fmt_ms(r['p50_ms'], True)} | "
            f"{benchlib.fmt_ms(r['p99_ms'], True)} | {benchlib.fmt_ms(r['max_ms'], True)} | "
            f"{r['server_cpu_us_per_request']:.1f} | "
            f"{rel(r['server_cpu_us_per_request'], plain['server_cpu_us_per_request'])} | "
            f"{r['wrk_cpu_us_per_request']:.1f} | {', '.join(benchlib.fmt_n(x) for x in r['rounds'])} | "
            f"{r['non_2xx']} / {r['socket_errors']} |")
    out.append("")
    for r in rows:
        if r is not plain:
            out.append(f"- {r['variant']} against plain: {rel(r['requests_per_s'], plain['requests_per_s'])} the "
                       f"requests/s, p50 {rel(r['p50_ms'], plain['p50_ms'])}, p99 {rel(r['p99_ms'], plain['p99_ms'])}, "
                       f"server CPU per request {rel(r['server_cpu_us_per_request'], plain['server_cpu_us_per_request'])} "
                       f"({r['server_cpu_us_per_request'] - plain['server_cpu_us_per_request']:+.1f} µs).")
    loads = [x for r in rows for x in r["load1"] if x is not None]
    if loads:
        out += [f"- 1-minute load average when the runs began: {min(loads)}–{max(loads)} (the servers' and "
                "wrk's own load included)."]
    return out + [""]


def health_cells(h: dict) -> str:
    return f"{benchlib.fmt_ms(h['p50_ms'], True)} | {benchlib.fmt_ms(h['p99_ms'], True)} | " \
           f"{benchlib.fmt_ms(h['max_ms'], True)}"


def slow_part(r: dict) -> list[str]:
    c = r["closes"]
    idle = r["stages"][0]
    held = r["stages"][1]
    out = [
        f"**2. Slow clients** (`--header-read-timeout-secs {r['header_read_timeout_s']:g}`): {r['attempted']} "
        f"connections each sending `POST /v2/models/…/infer HTTP/1.1\\r\\nHost: a\\r\\n` and nothing more "
        f"({r['held']} open in {r['open_s']:.2f} s, failures {r['failed'] or 'none'}; open files: this client "
        f"{r['client_nofile']}, the server {r['server_nofile']}). Each stage: {HEALTH_REQUESTS} sequential "
        "`GET /v2/health/ready` on a fresh keep-alive connection (its connect timed apart), `/metrics` on it (the gauge counts that "
        "connection), then one v2 inference on a fresh connection (connect included), then VmRSS.",
        "",
        "| stage | connect ms | health p50 ms | p99 ms | max ms | one infer ms | VmRSS MiB | "
        "serval_connections_open{listener=\"http\"} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in r["stages"]:
        out.append(f"| {s['stage']} | {benchlib.fmt_ms(s['health']['connect_ms'], True)} | {health_cells(s['health'])} | {benchlib.fmt_ms(s['infer']['ms'], True)} | "
                   f"{s['vmrss_mib']} | {s['connections_open']:g} |")
    per = (held["vmrss_mib"] - idle["vmrss_mib"]) * 1024 / r["held"] if r["held"] else None
    own = c["after_own_head_s"]
    out += [
        "",
        f"- The held stage ran {held['began_after_last_head_s']:.2f}–{held['ended_after_last_head_s']:.2f} s "
        f"after the last slow head was sent; {c['closed_at_first_look']} slow connections were already closed "
        "when the watch began.",
        (f"- The server had closed all {c['closed']} {c['all_closed_after_last_head_s']:.2f} s after the last slow "
         f"head was sent ({c['all_closed_after_first_head_s']:.2f} s after the first); each one "
         f"{own['min']:.2f}–{own['max']:.2f} s (median {own['p50']:.2f}) after its own head."
         if c["all_closed_after_last_head_s"] is not None else
         f"- **{c['still_open']} slow connections still open when the watch gave up.**"),
        f"- What they received: {c['answers']}.",
        f"- RSS while held: +{held['vmrss_mib'] - idle['vmrss_mib']:.1f} MiB"
        + (f" ({per:.1f} KiB per connection)" if per is not None else "")
        + f"; after: {r['stages'][2]['vmrss_mib']} MiB (peak VmHWM {r['stages'][2]['vmhwm_mib']} MiB).",
        "",
    ]
    return out


def limit_part(r: dict) -> list[str]:
    d, a, c = r["during"], r["after"], r["closes"]
    h = d["health_on_earlier_connection"]
    rows = [
        ("slow connections attempted", f"{r['attempted']} ({r['connected']} connected and sent their head in "
                                       f"{r['open_s']:.2f} s; failures {r['failed'] or 'none'})"),
        ("refused, client side (closed within half the header timeout, or failed)", f"{r['refused_client_side']}"),
        ("serval_connections_refused_total{listener=\"http\"} (the fresh connection below included)",
         f"+{r['refused_total_delta']:g}"),
        ("held until the header timeout", f"{r['held_until_timeout']}"),
        ("what the slow connections received", f"{c['answers']}"),
        ("serval_connections_open{listener=\"http\"} before / while held",
         f"{r['before']['connections_open']:g} / {d['connections_open']:g}"),
        (f"health on a connection opened before them ({h['requests']} sequential): p50 / p99 / max ms, codes",
         f"{health_cells(h).replace(' | ', ' / ')}, {h['codes']}"),
        ("one infer on that connection", f"{d['infer_on_earlier_connection']['status']}, "
                                         f"{benchlib.fmt_ms(d['infer_on_earlier_connection']['ms'], True)} ms"),
        ("a fresh connection while they are held (GET /v2/health/ready)", d["fresh_connection"]),
        ("all slow connections closed after the last head",
         f"{c['all_closed_after_last_head_s']} s" if c["all_closed_after_last_head_s"] is not None
         else f"{c['still_open']} still open"),
        ("after: health on a fresh connection p50 / p99 / max ms, codes",
         f"{health_cells(a['health']).replace(' | ', ' / ')}, {a['health']['codes']}"),
        ("after: one infer (fresh connection)", f"{benchlib.fmt_ms(a['infer']['ms'], True)} ms"),
        ("VmRSS MiB before / while held / after", f"{r['before']['vmrss_mib']} / {d['vmrss_mib']} / {a['vmrss_mib']}"),
    ]
    out = [f"**3. The limit** (`--max-connections {r['max_connections']} --header-read-timeout-secs "
           f"{r['header_read_timeout_s']:g}`): {r['attempted']} slow connections as in 2, one keep-alive "
           "connection opened before them.", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    return out + [""]


def report(path: str):
    doc = benchlib.load_json(path)
    recs = doc["records"]
    m, v = doc["machine"], doc["versions"]
    out = []
    if doc.get("debug_binary"):
        out += ["**A debug build of serval was measured: the timings below mean nothing.**", ""]
    out += [
        f"- machine: nproc {m['nproc']}, {m['cpu']}, {m['mem_gib']} GiB, kernel {m['kernel']}, load average "
        f"{' '.join(m['load_at_start'])} at start, {' '.join(doc.get('load_at_end', ['?']))} at end",
        f"- source: {v['source']}; serval: {doc.get('serval')}; `serval serve REPO --host 127.0.0.1 --http-port 0 "
        f"--grpc-port 0` on a repository of {doc.get('model')} alone (default engine and I/O threads)",
        f"- {doc.get('wrk')}; {doc.get('openssl')} (certificate: self-signed ECDSA P-256); Python "
        f"{doc.get('python', {}).get('python')} (the slow clients)",
        f"- command: `{doc.get('command')}`",
        "",
    ]
    runs = [r for r in recs if r["kind"] == "wrk"]
    if runs:
        out += wrk_part(runs, doc)
    out += [line for r in recs if r["kind"] == "slow" for line in slow_part(r)]
    out += [line for r in recs if r["kind"] == "limit" for line in limit_part(r)]
    print("\n".join(out).rstrip())


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        sys.exit(__doc__)
    cmd, rest = argv[0], argv[1:]
    if cmd in ("machine", "set", "finalize"):
        two_phase_bench.main(argv)
    elif cmd == "report":
        report(rest[0])
    elif cmd == "body":
        body(rest[0])
    elif cmd == "wrk":
        if "--" not in rest:
            sys.exit(__doc__)
        cut = rest.index("--")
        p = argparse.ArgumentParser(prog="transport_bench.py wrk")
        p.add_argument("records")
        p.add_argument("--pid", type=int, required=True)
        p.add_argument("pairs", nargs="*", help="key=value")
        a = p.parse_intermixed_args(rest[:cut])
        cmd_line = rest[cut + 1:]
        threads = cmd_line[cmd_line.index("-t") + 1] if "-t" in cmd_line else None
        run_wrk(a.records, a.pid, cmd_line, a.pairs + ([f"wrk_threads={threads}"] if threads else []))
    elif cmd == "check":
        p = argparse.ArgumentParser(prog="transport_bench.py check")
        p.add_argument("url")
        p.add_argument("--model", required=True)
        p.add_argument("--ca")
        p.add_argument("--token", default="")
        a = p.parse_args(rest)
        check(a.url, a.model, a.ca, a.token)
    elif cmd in ("slow", "limit"):
        p = argparse.ArgumentParser(prog=f"transport_bench.py {cmd}")
        p.add_argument("records")
        p.add_argument("--url", required=True)
        p.add_argument("--pid", type=int, required=True)
        p.add_argument("--model", required=True)
        p.add_argument("-n", type=int, required=True)
        p.add_argument("--timeout", type=float, required=True)
        if cmd == "limit":
            p.add_argument("--limit", type=int, required=True)
        a = p.parse_args(rest)
        if cmd == "slow":
            slow(a.records, a.url, a.pid, a.model, a.n, a.timeout)
        else:
            limit(a.records, a.url, a.pid, a.model, a.n, a.timeout, a.limit)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
