#!/usr/bin/env python3
"""Helper of bench/log.sh: the cost of the prediction log (`serval serve --prediction-log DIR`).

    log_bench.py body JSONL OUT.json                     # TF REST body: the first line's features
    log_bench.py machine OUT.json OHA key=value ...      # machine, versions, the run's settings
    log_bench.py set FILE.json KEY JSON                  # sets one field of a JSON file
    log_bench.py metrics URL OUT.json                    # the log's counters from /metrics
    log_bench.py sql-count                               # the n of `serval sql`'s table on stdin
    log_bench.py restart-poll START LOG PID SEGS OUT.json [TIMEOUT]
                                                         # after a restart: seconds until ready,
                                                         # and until the listed segments are gone
    log_bench.py add RECORDS.jsonl WARMUP.json RUN.json METRICS.json key=value ...
    log_bench.py add-writer RECORDS.jsonl WRITER.json key=value ...
    log_bench.py add-recovery RECORDS.jsonl POLL.json OHA.json key=value ...
    log_bench.py finalize RECORDS.jsonl MACHINE.json OUT.json
    log_bench.py report RESULTS.json                     # markdown tables on stdout

Standard library only (and benchlib.py, beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
import urllib.request

import benchlib

CONFIGS = ("off", "buffered", "synced")
MIB = 1024 * 1024


# --------------------------------------------------------------------------- setup


def body(jsonl: str, out: str):
    """One TF Serving REST instance with the first line's features only (no `key`: the server
    mints one, its default)."""
    with open(jsonl) as f:
        row = json.loads(f.readline())["features"]
    with open(out, "w") as f:
        json.dump({"instances": [{"features": row}]}, f)
    print(f"  body: {len(row)} features, {os.path.getsize(out):,} B")


def machine(out: str, oha: str, pairs: list[str]):
    doc = {
        "date": benchlib.now(),
        "machine": benchlib.machine(),
        "versions": {
            "oha": benchlib.sh(oha, "--version"),
            "python": platform.python_version(),
            "commit": os.environ.get("BENCH_SOURCE_REV") or benchlib.sh("git", "rev-parse", "HEAD"),
            "source": benchlib.source_rev(),
        },
        **benchlib.parse_meta(pairs),
    }
    with open(out, "w") as f:
        json.dump(doc, f)


def set_field(path: str, key: str, value_json: str):
    doc = benchlib.load_json(path)
    doc[key] = json.loads(value_json)
    with open(path, "w") as f:
        json.dump(doc, f)


# --------------------------------------------------------------------------- probes


LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str) -> list[tuple[str, dict, float]]:
    """Prometheus text exposition to (name, labels, value) triples."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        try:
            out.append((m.group(1), labels, float(m.group(3))))
        except ValueError:
            pass
    return out


def metrics(url: str, out: str):
    """The log's counters (each the sum of its series; 0 when absent) and the 200s the server
    counted, from one scrape of /metrics."""
    with urllib.request.urlopen(url, timeout=10) as res:
        series = parse_metrics(res.read().decode())

    def total(name, **want):
        return int(sum(v for n, labels, v in series
                       if n == name and all(labels.get(k) == w for k, w in want.items())))

    doc = {
        "dropped": total("serval_prediction_log_dropped_total"),
        "written": total("serval_prediction_log_records_total", table="predictions"),
        "log_errors": total("serval_prediction_log_errors_total"),
        "answered_200": total("serval_requests_total", status="200"),
    }
    with open(out, "w") as f:
        json.dump(doc, f)
    print(f"  metrics: {doc}")


def sql_count():
    """The number in `serval sql`'s one-cell table (`| n |` then `| 123 |`)."""
    text = sys.stdin.read()
    cells = re.findall(r"^\|\s*(\d+)\s*\|\s*$", text, re.M)
    if not cells:
        sys.exit(f"no count in serval sql's output:\n{text}")
    print(cells[-1])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def restart_poll(start: str, logfile: str, pid: str, segs_file: str, out: str, timeout: str = "300"):
    """From START (epoch seconds, taken just before the server was launched): seconds until
    GET /v2/health/ready answers 200 (polled every 10 ms once the server announced its port),
    and until none of the segments listed in SEGS exists (polled every 0.1 s)."""
    t0, pid_n, limit = float(start), int(pid), float(timeout)
    with open(segs_file) as f:
        segs = [line.strip() for line in f if line.strip()]
    addr = ready_s = rolled_s = None
    next_seg = 0.0
    died = False
    while ready_s is None or rolled_s is None:
        now = time.time()
        if now - t0 > limit:
            break
        if rolled_s is None and now >= next_seg:
            if not any(os.path.exists(s) for s in segs):
                rolled_s = now - t0
            next_seg = now + 0.1
        if ready_s is None:
            if addr is None:
                try:
                    with open(logfile, errors="replace") as f:
                        m = re.search(r"serval listening http=([0-9.]+:[0-9]+)", f.read())
                    addr = m.group(1) if m else None
                except OSError:
                    pass
            if addr is not None:
                try:
                    with urllib.request.urlopen(f"http://{addr}/v2/health/ready", timeout=2) as res:
                        if res.status == 200:
                            ready_s = time.time() - t0
                except Exception:
                    pass
        if not alive(pid_n):
            died = True
            break
        time.sleep(0.01)
    left = [s for s in segs if os.path.exists(s)]
    doc = {"addr": addr, "ready_s": None if ready_s is None else round(ready_s, 3),
           "rolled_s": None if rolled_s is None else round(rolled_s, 3),
           "segments_left": len(left), "server_died": died, "timeout_s": limit}
    with open(out, "w") as f:
        json.dump(doc, f)
    print(f"  restart: ready after {doc['ready_s']} s, dead segments rolled after "
          f"{doc['rolled_s']} s" + (" (the server died)" if died else ""))


# --------------------------------------------------------------------------- records


def oha_summary(path: str) -> dict:
    run = benchlib.read_oha(path)
    pct = run.doc.get("latencyPercentilesSuccessful") or run.doc.get("latencyPercentiles") or {}
    return {
        "duration_s": round(run.duration, 3),
        "ok": run.ok,
        "ok_rps": benchlib.per_s(run.ok, run.duration),
        "p50_ms": benchlib.ms(pct.get("p50"), 4),
        "p90_ms": benchlib.ms(pct.get("p90"), 4),
        "p99_ms": benchlib.ms(pct.get("p99"), 4),
        "status_codes": run.codes,
        "errors": run.errors,
        "aborted_at_deadline": run.aborted,
    }


def add(records: str, warmup: str, run_path: str, metrics_path: str, pairs: list[str]):
    """One measured server run: its closed loop, its warm-up's answers and, with a log, what
    the log holds (records_logged, parquet_bytes given as key=value pairs)."""
    rec = benchlib.parse_meta(pairs)
    run = oha_summary(run_path)
    warm = oha_summary(warmup)
    m = benchlib.load_json(metrics_path)
    rec.update(kind="run", **run)
    rec["warmup_ok"] = warm["ok"]
    # The check request, the warm-up and the run, as the client saw them...
    rec["requests_answered"] = rec.get("check_ok", 0) + warm["ok"] + run["ok"]
    # ...and as the server counted them (also the requests oha abandoned at its deadline).
    rec["server_answered_200"] = m["answered_200"]
    rec["dropped"] = m["dropped"]
    rec["records_written_metric"] = m["written"]
    rec["log_errors"] = m["log_errors"]
    logged = rec.get("records_logged")
    if isinstance(logged, int):
        answered = m["answered_200"] or rec["requests_answered"]
        rec["logged_share"] = round(logged / answered, 6) if answered else None
        rec["parquet_bytes_per_record"] = (
            round(rec.get("parquet_bytes", 0) / logged, 2) if logged else None)
    benchlib.append_record(records, rec)
    share = rec.get("logged_share")
    print(f"  {rec.get('config')} run {rec.get('run')}: {run['ok_rps']:,.0f} ok req/s, p50 "
          f"{run['p50_ms']} ms, p99 {run['p99_ms']} ms, codes {run['status_codes']}"
          + (f", errors {run['errors']}" if run["errors"] else "")
          + (f"; logged {logged:,} of {m['answered_200']:,} answered ({share:.2%}), "
             f"dropped {m['dropped']:,}, {rec['parquet_bytes_per_record']} Parquet B/record"
             if isinstance(logged, int) and share is not None else "")
          + f" (load {rec.get('load1')})", flush=True)
    bad = sum(v for k, v in run["status_codes"].items() if not k.startswith("2"))
    if run["ok"] == 0 or bad or run["errors"]:
        print(f"  warning: {bad} non-2xx answers, {sum(run['errors'].values())} transport errors",
              flush=True)


def add_writer(records: str, path: str, pairs: list[str]):
    benchlib.append_file_record(records, path, pairs, "writer")
    doc = benchlib.load_json(path)
    print(f"  writer {'synced' if doc.get('synced') else 'buffered'} {doc.get('requests'):,}: "
          f"{doc.get('records_per_second_appended', 0):,.0f} rec/s appended, "
          f"{doc.get('records_per_second_with_roll', 0):,.0f} rec/s with roll, "
          f"{doc.get('segment_bytes_per_record', 0):.0f} segment B/rec, "
          f"{doc.get('parquet_bytes_per_record', 0):.0f} Parquet B/rec", flush=True)


def add_recovery(records: str, poll: str, oha_path: str, pairs: list[str]):
    rec = benchlib.parse_meta(pairs)
    rec.update(kind="recovery", **{k: v for k, v in benchlib.load_json(poll).items() if k != "addr"})
    rec["target_reached"] = rec.get("target_reached") in (True, "true", 1)
    # The load generator was interrupted after the kill: its answers, when it could print them.
    try:
        rec["requests_answered_before_kill"] = benchlib.read_oha(oha_path).ok
    except Exception:
        rec["requests_answered_before_kill"] = None
    recovered = rec.get("records_recovered")
    rolled = rec.get("rolled_s")
    answered = rec["requests_answered_before_kill"]
    # What the kill cost: answers (the check request's included) whose records never reached
    # the disk (still queued, or not yet written out by the last group commit).
    rec["records_lost"] = (
        answered + rec.get("check_ok", 0) - recovered
        if isinstance(answered, int) and isinstance(recovered, int) else None)
    rec["records_recovered_per_s"] = (
        round(recovered / rolled, 1) if isinstance(recovered, int) and rolled else None)
    benchlib.append_record(records, rec)
    print(f"  recovery: {rec.get('segment_bytes', 0) / MIB:.1f} MiB of segments at the kill; "
          f"restart ready after {rec.get('ready_s')} s, rolled after {rolled} s, "
          f"{recovered} records recovered ({rec['records_recovered_per_s']} rec/s)", flush=True)


def finalize(records: str, machine_path: str, out: str):
    doc = benchlib.load_json(machine_path)
    doc["records"] = benchlib.load_records(records)
    doc["load_at_end"] = benchlib.loadavg()
    benchlib.write_results(doc, out)


# --------------------------------------------------------------------------- report


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_x(v):
    return "–" if v is None else f"{v:.2f}×"


def fmt_b(v):
    return "–" if v is None else f"{v:,.0f}"


def fmt_s(v):
    return "–" if v is None else f"{v:.2f}"


def config_rows(runs):
    """Per configuration: the runs in order and the medians."""
    rows = {}
    for c in CONFIGS:
        rs = sorted((r for r in runs if r["config"] == c), key=lambda r: r["run"])
        if not rs:
            continue
        logged = [r["records_logged"] for r in rs if isinstance(r.get("records_logged"), int)]
        answered = [r.get("server_answered_200") or r["requests_answered"] for r in rs]
        pq = sum(r.get("parquet_bytes", 0) for r in rs if isinstance(r.get("records_logged"), int))
        rows[c] = {
            "runs": rs,
            "rps": median([r["ok_rps"] for r in rs]),
            "p50": median([r["p50_ms"] for r in rs]),
            "p99": median([r["p99_ms"] for r in rs]),
            "logged": sum(logged) if logged else None,
            "answered": sum(answered),
            "dropped": sum(r.get("dropped", 0) for r in rs),
            "pq_per_record": pq / sum(logged) if logged and sum(logged) else None,
        }
    return rows


def report(path: str):
    doc = benchlib.load_json(path)
    recs = doc["records"]
    m = doc["machine"]
    v = doc["versions"]
    runs = [r for r in recs if r["kind"] == "run"]
    writers = [r for r in recs if r["kind"] == "writer"]
    recovery = next((r for r in recs if r["kind"] == "recovery"), None)
    print("Prediction log cost: `serval serve` on breast_cancer_lr (30 float features; TF REST, one "
          "instance per request, the key minted by the server), closed loop at "
          f"c={doc['concurrency']} with oha, {doc['duration_s']} s per run after a 2 s warm-up at "
          "c=8; off, buffered, synced run twice, interleaved (each log run with a fresh DIR, "
          "stopped with SIGTERM, which rolls every segment into Parquet).\n")
    print(f"- machine: nproc {m['nproc']}, {m['cpu']}, load average {' '.join(m['load_at_start'])} "
          f"at start, {' '.join(doc.get('load_at_end', []))} at end")
    print(f"- source: {v['source']}; serval binary: {doc['serval']}; writer: {doc['writer']}; "
          f"HTTP client: {v['oha']}")
    print(f"- command: `{doc['command']}`; runs of {doc['duration_s']} s"
          + (" (**--quick: smoke test, figures meaningless**)" if doc["quick"] else ""))
    if doc.get("debug_binary"):
        print("- **the serval binary is a debug build: its figures are meaningless**")
    print()

    rows = config_rows(runs)
    off = rows.get("off", {}).get("rps")
    print("| configuration | req/s run 1 | req/s run 2 | median | / off | p50 ms | p99 ms | "
          "records logged / answered | dropped | Parquet B/record |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c, row in rows.items():
        rps = [benchlib.fmt_n(r["ok_rps"]) for r in row["runs"]] + ["–", "–"]
        ratio = row["rps"] / off if off and row["rps"] is not None else None
        if row["logged"] is None:
            share = dropped = per_record = "–"
        else:
            share = (f"{row['logged']:,} / {row['answered']:,} ({row['logged'] / row['answered']:.2%})"
                     if row["answered"] else f"{row['logged']:,} / –")
            dropped = f"{row['dropped']:,}"
            per_record = fmt_b(row["pq_per_record"])
        print(f"| {c} | {rps[0]} | {rps[1]} | {benchlib.fmt_n(row['rps'])} | {fmt_x(ratio)} | "
              f"{benchlib.fmt_ms(row['p50'])} | {benchlib.fmt_ms(row['p99'])} | {share} | "
              f"{dropped} | {per_record} |")
    print("\nMedian of the two runs (= their mean); p50 and p99 of the successful requests, each the "
          "median of the runs'. Answered: the 200s the server counted in /metrics just before "
          "the stop, 1 s after the run (the check request, the warm-up and the run, and the "
          "requests still in flight when oha's deadline came). A share above 100% means records "
          "of requests whose client hung up at the deadline before the answer (logged, never "
          "answered); dropped: serval_prediction_log_dropped_total.")
    bad = [r for r in runs if r["ok"] == 0 or r["errors"]
           or any(not k.startswith("2") for k in r["status_codes"])
           or r.get("segments_left") or r.get("log_errors")]
    if bad:
        print("\nRuns with non-2xx answers, transport errors, log errors or segments left after "
              "the stop:")
        for r in bad:
            print(f"- {r['config']} run {r['run']}: codes {r['status_codes']}, errors {r['errors']}, "
                  f"log errors {r.get('log_errors', 0)}, segments left {r.get('segments_left', 0)}")
    loads = ", ".join(f"{r['config']} {r['run']}: {r.get('series_load1')}" for r in runs)
    print(f"\nLoad average when each run's server was up: {loads}.")
    print()

    if writers:
        print("Writer ceiling (`write_throughput` example: one writer thread, no server; tiny "
              "model's records):\n")
        print("| durability | records | appended rec/s | with roll rec/s | segment B/record | "
              "Parquet B/record | syncs |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for w in writers:
            print(f"| {'synced' if w.get('synced') else 'buffered'} | {w['requests']:,} | "
                  f"{benchlib.fmt_n(w.get('records_per_second_appended'))} | "
                  f"{benchlib.fmt_n(w.get('records_per_second_with_roll'))} | "
                  f"{w.get('segment_bytes_per_record', 0):.0f} | "
                  f"{w.get('parquet_bytes_per_record', 0):.0f} | {w.get('syncs', 0):,} |")
        print()

    if recovery:
        r = recovery
        seg_mib = r.get("segment_bytes", 0) / MIB
        print(f"Recovery after `kill -9` (buffered, roll after 3600 s, loaded at c={doc['concurrency']} "
              f"until the write-ahead segment reached {r.get('target_mib')} MiB; segments roll at "
              "64 MiB):\n")
        print("| measure | value |")
        print("|---|---:|")
        print(f"| write-ahead segments at the kill | {seg_mib:.1f} MiB in {r.get('segment_files')} "
              f"file(s){'' if r.get('target_reached') else ' (target not reached in time)'} |")
        if r.get("rolled_before_kill"):
            print(f"| segments rolled (64 MiB) before the kill | {r['rolled_before_kill']} |")
        print(f"| records written before the kill (metrics, last scrape) | "
              f"{benchlib.fmt_n(r.get('records_written_before_kill'))} |")
        print(f"| requests answered before the kill (oha) | "
              f"{benchlib.fmt_n(r.get('requests_answered_before_kill'))} |")
        print(f"| restart: seconds until `/v2/health/ready` answers 200 | {fmt_s(r.get('ready_s'))} |")
        print(f"| restart: seconds until the dead process's segments are rolled | "
              f"{fmt_s(r.get('rolled_s'))} |")
        print(f"| records recovered into Parquet | {benchlib.fmt_n(r.get('records_recovered'))} |")
        print(f"| records recovered per second of the roll | "
              f"{benchlib.fmt_n(r.get('records_recovered_per_s'))} |")
        print(f"| answered before the kill but not recovered (the queue and the last sync "
              f"interval) | {benchlib.fmt_n(r.get('records_lost'))} |")
        if r.get("server_died") or r.get("segments_left"):
            print(f"\n**The restarted server died or left segments: died {r.get('server_died')}, "
                  f"{r.get('segments_left')} left.**")
        print("\nBoth restart times count from the launch of the process; the segments are rolled "
              "in the background, so readiness does not wait for them.")


# --------------------------------------------------------------------------- main


COMMANDS = {
    "body": (body, "jsonl out"),
    "machine": (machine, "out oha meta"),
    "set": (set_field, "path key value_json"),
    "metrics": (metrics, "url out"),
    "sql-count": (sql_count, ""),
    "restart-poll": (restart_poll, "start logfile pid segs out timeout?"),
    "add": (add, "records warmup run metrics meta"),
    "add-writer": (add_writer, "records path meta"),
    "add-recovery": (add_recovery, "records poll oha meta"),
    "finalize": (finalize, "records machine out"),
    "report": (report, "results"),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, (_, names) in COMMANDS.items():
        p = sub.add_parser(name)
        for arg in names.split():
            if arg == "meta":
                p.add_argument(arg, nargs="*")
            elif arg.endswith("?"):
                p.add_argument(arg[:-1], nargs="?", default="300")
            else:
                p.add_argument(arg)
    a = ap.parse_args(argv)
    func, names = COMMANDS[a.cmd]
    func(*[getattr(a, arg.rstrip("?")) for arg in names.split()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
