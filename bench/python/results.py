#!/usr/bin/env python3
"""Bookkeeping for bench/load.sh: turns oha and throughput-example outputs into records, writes the
results file and prints the markdown tables. Standard library only (and benchlib.py, beside it).

    results.py add RECORDS.jsonl OHA.json key=value ...     # one load run
    results.py raw RECORDS.jsonl THROUGHPUT.json key=value ... # one raw-engine run
    results.py max-rps RECORDS.jsonl key=value ...           # best ok req/s of a series (mode=closed
                                                             # unless given, main table unless given)
    results.py machine OUT.json OHA QUICK DURATION LOAD_MAX LOAD_WAIT
                                                             # the run's settings, machine, versions
    results.py finalize RECORDS.jsonl MACHINE.json OUT.json  # the results file
    results.py report RESULTS.json                           # markdown tables on stdout
"""

import json
import platform
import sys

from benchlib import (
    append_file_record,
    append_record,
    fmt_ms,
    fmt_n,
    load_json,
    load_records,
    machine as machine_description,
    ms,
    now,
    parse_meta,
    per_s,
    read_oha,
    sh,
    source_rev,
    write_results,
)

CONCURRENCY = [1, 8, 64, 256]


def add(records, oha_path, pairs):
    run = read_oha(oha_path)
    codes, errors = run.codes, run.errors
    pct = run.doc["latencyPercentiles"]
    pct_ok = run.doc.get("latencyPercentilesSuccessful") or {}
    pct_bad = run.doc.get("latencyPercentilesNotSuccessful") or {}
    rec = parse_meta(pairs)
    rec.update(
        kind="load",
        duration_s=round(run.duration, 3),
        responses=sum(codes.values()),
        ok=run.ok,
        ok_rps=per_s(run.ok, run.duration),
        all_rps=per_s(sum(codes.values()), run.duration),
        p50_ms=ms(pct.get("p50")),
        p90_ms=ms(pct.get("p90")),
        p99_ms=ms(pct.get("p99")),
        ok_p50_ms=ms(pct_ok.get("p50")),
        ok_p99_ms=ms(pct_ok.get("p99")),
        rejected_p50_ms=ms(pct_bad.get("p50")),
        rejected_p99_ms=ms(pct_bad.get("p99")),
        status_codes=codes,
        errors=errors,
        aborted_at_deadline=run.aborted,
    )
    append_record(records, rec)
    print(
        f"  {rec.get('server')}/{rec.get('model')}/{rec.get('batching')} {rec.get('mode')} "
        f"c={rec.get('concurrency')} q={rec.get('rate', '-')}: {rec['ok_rps']:.0f} ok req/s, "
        f"p50 {rec['p50_ms']} ms, p99 {rec['p99_ms']} ms, codes {codes}"
        + (f", errors {errors}" if errors else "")
        + f" (load {rec.get('load1')})"
    )


def raw(records, path, pairs):
    append_file_record(records, path, pairs, "raw")


def matches(rec, meta):
    return all(rec.get(k) == v for k, v in meta.items())


def max_rps(records, pairs):
    meta = {"mode": "closed", **parse_meta(pairs)}
    table = meta.pop("table", "main")
    best = max(
        (r["ok_rps"] for r in load_records(records)
         if r["kind"] == "load" and r.get("table", "main") == table and matches(r, meta)),
        default=0.0,
    )
    print(f"{best:.0f}")


def machine(out, oha, quick, duration, load_max, load_wait):
    """The results file's head: the run's settings, the machine, the versions."""
    doc = {
        "date": now(),
        "quick": quick == "1",
        "duration_s": int(duration),
        "load_max": float(load_max),
        "load_wait_s": int(load_wait),
        "machine": machine_description(),
        "versions": {
            "rustc": sh("rustc", "--version"),
            "oha": sh(oha, "--version"),
            "python": platform.python_version(),
            "source": source_rev(),
        },
    }
    with open(out, "w") as f:
        json.dump(doc, f)


def finalize(records, machine, out):
    doc = load_json(machine)
    doc["records"] = load_records(records)
    write_results(doc, out)


# --------------------------------------------------------------------------- report


def label(r):
    model = "none (lr request)" if r["server"] == "hello" else r["model"]
    return (r["server"], model, r.get("protocol", ""), r.get("batching", "-"))


def series_order(recs):
    order = []
    for r in recs:
        key = label(r)
        if key not in order:
            order.append(key)
    return order


def closed_tables(loads, concurrency):
    closed = [r for r in loads if r["mode"] == "closed" and r.get("table", "main") == "main"]
    out = []
    head = "| server | model | protocol | batching | " + " | ".join(f"c={c}" for c in concurrency) + " |"
    sep = "|---|---|---|---|" + "---:|" * len(concurrency)
    out += ["Closed loop, throughput (successful requests/s; one row per request):", "", head, sep]
    for key in series_order(closed):
        cells = []
        for c in concurrency:
            r = next((r for r in closed if label(r) == key and r["concurrency"] == c), None)
            cells.append(fmt_n(r["ok_rps"]) if r else "–")
        out.append("| " + " | ".join(key) + " | " + " | ".join(cells) + " |")
    out += ["", "Closed loop, latency p50 / p99 (ms):", "", head, sep]
    for key in series_order(closed):
        cells = []
        for c in concurrency:
            r = next((r for r in closed if label(r) == key and r["concurrency"] == c), None)
            cells.append(f"{fmt_ms(r['p50_ms'])} / {fmt_ms(r['p99_ms'])}" if r else "–")
        out.append("| " + " | ".join(key) + " | " + " | ".join(cells) + " |")
    bad = [r for r in closed if r["ok"] != r["responses"] or r["errors"]]
    if bad:
        out += ["", "Runs with non-2xx responses or errors:"]
        for r in bad:
            out.append(f"- {'/'.join(label(r))} c={r['concurrency']}: codes {r['status_codes']}, errors {r['errors']}")
    return out


def open_table(loads):
    rows = [r for r in loads if r["mode"] == "open"]
    out = [
        "Open loop at a fixed rate (half of the series' best closed-loop throughput; oha -q with "
        "--latency-correction, so latency counts from the scheduled send time):",
        "",
        "| server | model | protocol | batching | offered req/s | ok req/s | p50 ms | p99 ms | non-2xx |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            "| " + " | ".join(label(r)) + f" | {fmt_n(r['rate'])} | {fmt_n(r['ok_rps'])} | "
            f"{fmt_ms(r['p50_ms'])} | {fmt_ms(r['p99_ms'])} | {r['responses'] - r['ok']} |"
        )
    return out


def overload_table(loads):
    """One column per engine-thread configuration, each with its own unloaded run."""
    runs = [r for r in loads if r["mode"] == "overload"]
    if not runs:
        return []
    first = runs[0]
    out = [
        f"Overload: {first['model']}, batching {first['batching']}, max_queue_size {first.get('max_queue_size')}, "
        f"open loop at 10x the configuration's best closed-loop throughput, {first['concurrency']} connections, "
        f"{first['duration_s']:.0f} s:",
        "",
        "| engine threads | "
        + " | ".join(str(r.get("engine_threads", "default")).replace("default", "default (one per core)") for r in runs)
        + " |",
        "|---|" + "---:|" * len(runs),
    ]
    rows = {}

    def row(name, cell):
        rows.setdefault(name, []).append(cell)

    for over in runs:
        unloaded = next(
            (r for r in loads if r["mode"] == "closed" and r.get("table") == "overload"
             and r.get("engine_threads") == over.get("engine_threads")),
            None,
        )
        codes = over["status_codes"]
        all_429 = all(k.startswith("2") or k == "429" for k in codes) and not over["errors"]
        row("capacity (best closed loop, req/s)", fmt_n(over.get("max_rps")))
        row("offered (req/s)", fmt_n(over["rate"]))
        row("requests answered (all codes)", f"{over['responses']:,} ({fmt_n(over['all_rps'])}/s)")
        row("admitted (200)", f"{over['ok']:,} ({fmt_n(over['ok_rps'])}/s)")
        row("status codes", ", ".join(f"{k}: {v:,}" for k, v in sorted(codes.items())))
        row("transport errors (excl. deadline aborts)", str(sum(over["errors"].values()) if over["errors"] else 0))
        row("every rejection a 429", "yes" if all_429 else "NO")
        row("a 429 caught mid-run by curl", f"{over.get('probe_status', '–')}, Retry-After: {over.get('retry_after', '–')}")
        row("admitted p50 / p99 (ms)", f"{fmt_ms(over['ok_p50_ms'])} / {fmt_ms(over['ok_p99_ms'])}")
        row("rejected p50 / p99 (ms)", f"{fmt_ms(over['rejected_p50_ms'])} / {fmt_ms(over['rejected_p99_ms'])}")
        # Every column gets every row, so a missing unloaded run cannot shift the others' cells.
        ratio = None
        if unloaded and over["ok_p99_ms"] and unloaded["p99_ms"]:
            ratio = over["ok_p99_ms"] / unloaded["p99_ms"]
        row("unloaded p50 / p99 (ms, c=1, same server)",
            f"{fmt_ms(unloaded['p50_ms'])} / {fmt_ms(unloaded['p99_ms'])}" if unloaded else "–")
        row("admitted p99 / unloaded p99 (target < 2)", f"{ratio:.2f}×" if ratio else "–")
    out += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows.items()]
    return out


def raw_table(raws):
    if not raws:
        return []
    batches = sorted({b["batch"] for r in raws for b in r["results"]})
    out = [
        f"Raw engine (`Model::predict` in-process, {raws[0]['threads']} threads, rows/s):",
        "",
        "| model | backend | " + " | ".join(f"batch {b}" for b in batches) + " | best |",
        "|---|---|" + "---:|" * (len(batches) + 1),
    ]
    for r in raws:
        by = {b["batch"]: b["rows_per_s"] for b in r["results"]}
        out.append(
            f"| {r['model']} | {r['backend']} | "
            + " | ".join(fmt_n(by.get(b)) for b in batches)
            + f" | {fmt_n(r['best']['rows_per_s'])} (batch {r['best']['batch']}) |"
        )
    return out


def best(loads, **meta):
    return max(
        (r["ok_rps"] for r in loads if r["mode"] == "closed" and r.get("table", "main") == "main" and matches(r, meta)),
        default=None,
    )


def ratio_table(loads, raws):
    out = [
        "Ratios of best closed-loop throughput (max over concurrency) and targets:",
        "",
        "| ratio | batching off | batching on | target |",
        "|---|---:|---:|---|",
    ]

    def r(a, b):
        return f"{a / b:.2f}" if a and b else "–"

    hello = best(loads, server="hello")
    # The hello series carries the tiny model's request; the overload run uses the heavy model.
    tiny_model = next((r["model"] for r in loads if r["server"] == "hello"), None)
    heavy_model = next((r["model"] for r in loads if r.get("table") == "overload"), None)
    for model, tiny in ((tiny_model, True), (heavy_model, False)):
        if model is None:
            continue
        s_off = best(loads, server="serval", model=model, protocol="tf", batching="off")
        s_on = best(loads, server="serval", model=model, protocol="tf", batching="on")
        fa = best(loads, server="fastapi", model=model)
        mls = best(loads, server="mlserver", model=model)
        so_oip = best(loads, server="serval", model=model, protocol="oip", batching="off")
        s_oip_on = best(loads, server="serval", model=model, protocol="oip", batching="on")
        rawbest = next((x["best"]["rows_per_s"] for x in raws if x["model"] == model), None)
        out.append(f"| {model}: serval / hello | {r(s_off, hello)} | {r(s_on, hello)} | {'≥ 0.8' if tiny else '–'} |")
        out.append(f"| {model}: serval / FastAPI+ORT | {r(s_off, fa)} | {r(s_on, fa)} | {'≥ 5' if tiny else '–'} |")
        out.append(f"| {model}: serval / MLServer (TF JSON vs OIP JSON) | {r(s_off, mls)} | {r(s_on, mls)} | {'≥ 5' if tiny else '–'} |")
        out.append(f"| {model}: serval / MLServer (both OIP JSON, c=64) | {r(so_oip, mls)} | {r(s_oip_on, mls)} | – |")
        out.append(f"| {model}: serval / raw engine best | {r(s_off, rawbest)} | {r(s_on, rawbest)} | {'–' if tiny else '≥ 0.9'} |")
    return out


def report(path):
    doc = load_json(path)
    loads = [r for r in doc["records"] if r["kind"] == "load"]
    raws = [r for r in doc["records"] if r["kind"] == "raw"]
    concurrency = sorted({r["concurrency"] for r in loads if r["mode"] == "closed"}) or CONCURRENCY
    lines = []
    for part in (
        closed_tables(loads, concurrency),
        open_table(loads),
        overload_table(loads),
        raw_table(raws),
        ratio_table(loads, raws),
    ):
        if part:
            lines += part + [""]
    print("\n".join(lines).rstrip())


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "add":
        add(argv[2], argv[3], argv[4:])
    elif cmd == "raw":
        raw(argv[2], argv[3], argv[4:])
    elif cmd == "max-rps":
        max_rps(argv[2], argv[3:])
    elif cmd == "machine":
        machine(*argv[2:8])
    elif cmd == "finalize":
        finalize(argv[2], argv[3], argv[4])
    elif cmd == "report":
        report(argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
