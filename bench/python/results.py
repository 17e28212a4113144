#!/usr/bin/env python3
"""Bookkeeping for bench/load.sh: turns oha and throughput-example outputs into records, writes the
results file and prints the markdown tables. Standard library only.

    results.py add RECORDS.jsonl OHA.json key=value ...     # one load run
    results.py raw RECORDS.jsonl THROUGHPUT.json key=value ... # one raw-engine run
    results.py max-rps RECORDS.jsonl key=value ...           # best ok req/s of a series (mode=closed
                                                             # unless given, main table unless given)
    results.py finalize RECORDS.jsonl MACHINE.json OUT.json  # the results file
    results.py report RESULTS.json                           # markdown tables on stdout
"""

import json
import sys

CONCURRENCY = [1, 8, 64, 256]
DEADLINE_ABORT = "aborted due to deadline"


def parse_meta(pairs):
    meta = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        meta[key] = value
    return meta


def ms(seconds):
    return None if seconds is None else round(seconds * 1000.0, 3)


def add(records, oha_path, pairs):
    with open(oha_path) as f:
        oha = json.load(f)
    meta = parse_meta(pairs)
    duration = oha["summary"]["total"]
    codes = {str(k): v for k, v in (oha.get("statusCodeDistribution") or {}).items()}
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    errors = dict(oha.get("errorDistribution") or {})
    aborted = errors.pop(DEADLINE_ABORT, 0)
    pct = oha["latencyPercentiles"]
    pct_ok = oha.get("latencyPercentilesSuccessful") or {}
    pct_bad = oha.get("latencyPercentilesNotSuccessful") or {}
    rec = dict(meta)
    rec.update(
        kind="load",
        duration_s=round(duration, 3),
        responses=sum(codes.values()),
        ok=ok,
        ok_rps=round(ok / duration, 1) if duration else 0.0,
        all_rps=round(sum(codes.values()) / duration, 1) if duration else 0.0,
        p50_ms=ms(pct.get("p50")),
        p90_ms=ms(pct.get("p90")),
        p99_ms=ms(pct.get("p99")),
        ok_p50_ms=ms(pct_ok.get("p50")),
        ok_p99_ms=ms(pct_ok.get("p99")),
        rejected_p50_ms=ms(pct_bad.get("p50")),
        rejected_p99_ms=ms(pct_bad.get("p99")),
        status_codes=codes,
        errors=errors,
        aborted_at_deadline=aborted,
    )
    with open(records, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(
        f"  {rec.get('server')}/{rec.get('model')}/{rec.get('batching')} {rec.get('mode')} "
        f"c={rec.get('concurrency')} q={rec.get('rate', '-')}: {rec['ok_rps']:.0f} ok req/s, "
        f"p50 {rec['p50_ms']} ms, p99 {rec['p99_ms']} ms, codes {codes}"
        + (f", errors {errors}" if errors else "")
        + f" (load {rec.get('load1')})"
    )


def raw(records, path, pairs):
    with open(path) as f:
        out = json.load(f)
    rec = dict(parse_meta(pairs))
    rec.update(kind="raw", **out)
    with open(records, "a") as f:
        f.write(json.dumps(rec) + "\n")


def load_records(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


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


def finalize(records, machine, out):
    with open(machine) as f:
        doc = json.load(f)
    doc["records"] = load_records(records)
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


# --------------------------------------------------------------------------- report


def fmt_rps(x):
    if x is None:
        return "–"
    return f"{x:,.0f}"


def fmt_ms(x):
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


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
            cells.append(fmt_rps(r["ok_rps"]) if r else "–")
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
            "| " + " | ".join(label(r)) + f" | {fmt_rps(r['rate'])} | {fmt_rps(r['ok_rps'])} | "
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
        row("capacity (best closed loop, req/s)", fmt_rps(over.get("max_rps")))
        row("offered (req/s)", fmt_rps(over["rate"]))
        row("requests answered (all codes)", f"{over['responses']:,} ({fmt_rps(over['all_rps'])}/s)")
        row("admitted (200)", f"{over['ok']:,} ({fmt_rps(over['ok_rps'])}/s)")
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
            + " | ".join(fmt_rps(by.get(b)) for b in batches)
            + f" | {fmt_rps(r['best']['rows_per_s'])} (batch {r['best']['batch']}) |"
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
    with open(path) as f:
        doc = json.load(f)
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
    elif cmd == "finalize":
        finalize(argv[2], argv[3], argv[4])
    elif cmd == "report":
        report(argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
