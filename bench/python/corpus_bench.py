#!/usr/bin/env python3
"""Helper of bench/corpus.sh: third-party corpus models (tests/models/build_corpus.py) served by
`serval serve` against raw onnxruntime in-process with Serval's session settings.

    corpus_bench.py bodies CORPUS MODEL CASE OUT_DIR      # request bodies, one row (batch 1)
    corpus_bench.py raw CORPUS MODEL CASE OUT.json --seconds S --threads T --batches 1,8,32
    corpus_bench.py client URL OUT.json -c C --seconds S [--body FILE] [--header K:V ...]
                                                          # closed-loop HTTP load, oha's JSON
                                                          # layout (the fallback without oha)
    corpus_bench.py stats URL                             # "inference_count execution_count"
    corpus_bench.py machine OUT.json key=value ...        # machine, versions, the run's settings
    corpus_bench.py model-info RECORDS.jsonl CORPUS MODEL CASE BASE_URL BODY_DIR
                                                          # how Serval serves it
    corpus_bench.py set FILE.json KEY JSON                # sets one field of a JSON file
    corpus_bench.py add RECORDS.jsonl OHA.json key=value ...
    corpus_bench.py add-raw RECORDS.jsonl RAW.json key=value ...
    corpus_bench.py finalize RECORDS.jsonl MACHINE.json OUT.json
    corpus_bench.py report RESULTS.json                   # markdown tables on stdout

`raw` needs numpy and onnxruntime; the other commands need the standard library only (`bodies`
also numpy).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time

import benchlib

# --------------------------------------------------------------------------- corpus


def load_case(corpus: str, model: str, case: str):
    """(model entry of cases.json, {input name: array}) for one case."""
    import numpy as np

    with open(os.path.join(corpus, "cases.json"), encoding="utf-8") as f:
        models = json.load(f)["models"]
    entry = models[model]
    spec = next(c for c in entry["cases"] if c["name"] == case)
    with np.load(os.path.join(corpus, "cases.npz"), allow_pickle=False) as npz:
        arrays = {name: npz[s["array"]] for name, s in spec["inputs"].items()}
    if not entry["batched"]:
        raise SystemExit(f"{model} is not batched: this bench sends one row per request")
    for name, a in arrays.items():
        if a.shape[0] != 1:
            raise SystemExit(f"{model}/{case}: input {name} has {a.shape[0]} rows, want 1")
    return entry, spec, arrays


DATATYPES = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32",
             "bool": "BOOL"}


def bodies(corpus: str, model: str, case: str, out_dir: str):
    """Writes OUT_DIR/{oip,oip_bin,tf}.body (+ oip_bin.headers) for the case's one row.

    - oip: OIP v2 REST JSON as tritonclient.http sends it with binary_data=False (the flat
      `data` list of the tensor's values as Python floats/ints);
    - oip_bin: the same request with Triton's binary tensor extension (a JSON header, then the
      raw little-endian bytes; outputs asked back in binary);
    - tf: TF Serving REST, row format, one named instance.
    """
    import numpy as np

    _, _, arrays = load_case(corpus, model, case)
    os.makedirs(out_dir, exist_ok=True)
    oip = {"inputs": [
        {"name": name, "shape": list(a.shape), "datatype": DATATYPES[str(a.dtype)],
         "data": a.ravel().tolist()}
        for name, a in arrays.items()
    ]}
    header = {
        "inputs": [
            {"name": name, "shape": list(a.shape), "datatype": DATATYPES[str(a.dtype)],
             "parameters": {"binary_data_size": a.nbytes}}
            for name, a in arrays.items()
        ],
        "parameters": {"binary_data_output": True},
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    raw = b"".join(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()
                   for a in arrays.values())
    tf = {"instances": [{name: a[0].tolist() for name, a in arrays.items()}]}
    with open(os.path.join(out_dir, "oip.body"), "w") as f:
        json.dump(oip, f)
    with open(os.path.join(out_dir, "oip_bin.body"), "wb") as f:
        f.write(head + raw)
    with open(os.path.join(out_dir, "oip_bin.headers"), "w") as f:
        f.write(f"Inference-Header-Content-Length: {len(head)}\n")
    with open(os.path.join(out_dir, "tf.body"), "w") as f:
        json.dump(tf, f)
    sizes = {p: os.path.getsize(os.path.join(out_dir, f"{p}.body")) for p in ("oip", "oip_bin", "tf")}
    print("  bodies: " + ", ".join(f"{p} {n:,} B" for p, n in sizes.items()))


# --------------------------------------------------------------------------- raw onnxruntime


def session(path: str):
    """An InferenceSession with the settings of Serval's ONNX Runtime sessions
    (crates/serval-core/src/backend/ort.rs): one intra-op and one inter-op thread, all graph
    optimizations, sequential execution, CPU provider."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # the converters' files draw harmless shape warnings
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def percentiles(samples: list[float]) -> dict:
    s = sorted(samples)

    def pct(p):
        if not s:
            return None
        return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]

    return {"p50": pct(50), "p90": pct(90), "p99": pct(99),
            "mean": sum(s) / len(s) if s else None}


def raw(corpus: str, model: str, case: str, out: str, seconds: float, threads: int,
        batches: list[int]):
    import numpy as np
    import onnxruntime as ort

    _, _, arrays = load_case(corpus, model, case)
    path = os.path.join(corpus, model, "1", "model.onnx")
    doc = {"model": model, "case": case, "onnxruntime": ort.__version__, "seconds": seconds,
           "threads": threads, "session": "intra_op=1 inter_op=1 ORT_ENABLE_ALL sequential"}

    # (a) latency: one session, one call at a time, batch 1.
    sess = session(path)
    feed = dict(arrays)
    warm_until = time.perf_counter() + min(1.0, seconds / 2)
    while time.perf_counter() < warm_until:
        sess.run(None, feed)
    lat = []
    end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        sess.run(None, feed)
        t1 = time.perf_counter()
        lat.append(t1 - t0)
        if t1 >= end:
            break
    p = percentiles(lat)
    doc["latency"] = {"calls": len(lat), **{k: round(v * 1000, 4) for k, v in p.items()}}
    print(f"  raw {model} latency: {len(lat)} calls, p50 {p['p50'] * 1000:.3f} ms, "
          f"p99 {p['p99'] * 1000:.3f} ms", flush=True)

    # (b) throughput: one session per thread, one thread per core, each calling in a loop.
    sessions = [sess] + [session(path) for _ in range(threads - 1)]
    doc["throughput"] = []
    for batch in batches:
        feed = {name: np.ascontiguousarray(np.repeat(a, batch, axis=0)) for name, a in arrays.items()}
        for s in sessions:  # warm every session at this batch size
            s.run(None, feed)
        counts = [0] * threads
        start = threading.Barrier(threads + 1)
        stop = threading.Event()

        def loop(i):
            s = sessions[i]
            start.wait()
            n = 0
            while not stop.is_set():
                s.run(None, feed)
                n += 1
            counts[i] = n

        workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        start.wait()
        t0 = time.perf_counter()
        time.sleep(seconds)
        stop.set()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - t0
        rows = sum(counts) * batch
        rec = {"batch": batch, "calls": sum(counts), "seconds": round(elapsed, 3),
               "rows_per_s": round(rows / elapsed, 1)}
        doc["throughput"].append(rec)
        print(f"  raw {model} {threads} threads batch {batch}: {rec['rows_per_s']:,.0f} rows/s",
              flush=True)
    with open(out, "w") as f:
        json.dump(doc, f)


# --------------------------------------------------------------------------- python client


def client(url: str, out: str, concurrency: int, seconds: float, body_path: str | None,
           headers: list[str], processes: int):
    """A closed-loop load generator for when oha is missing: `concurrency` keep-alive
    connections spread over `processes` processes (threads in each), each sending the next
    request when the last answer is in. Writes the part of oha's JSON that `add` reads."""
    import multiprocessing as mp

    body = open(body_path, "rb").read() if body_path else None
    hdrs = {}
    for h in headers:
        k, _, v = h.partition(":")
        hdrs[k.strip()] = v.strip()
    if body is not None:
        hdrs.setdefault("Content-Type", "application/json")
    processes = max(1, min(processes, concurrency))
    per = [concurrency // processes + (1 if i < concurrency % processes else 0)
           for i in range(processes)]
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    start_at = time.time() + 0.5
    procs = [ctx.Process(target=_client_proc, args=(url, body, hdrs, n, start_at, seconds, queue))
             for n in per]
    for p in procs:
        p.start()
    lat, codes, errors = [], {}, {}
    for _ in procs:
        l, c, e = queue.get(timeout=seconds + 120)
        lat += l
        for k, v in c.items():
            codes[k] = codes.get(k, 0) + v
        for k, v in e.items():
            errors[k] = errors.get(k, 0) + v
    for p in procs:
        p.join(timeout=30)
    ok = [t for t, code in lat if 200 <= code < 300]
    doc = {
        "summary": {"total": seconds, "requestsPerSec": len(lat) / seconds},
        "latencyPercentiles": percentiles([t for t, _ in lat]),
        "latencyPercentilesSuccessful": percentiles(ok),
        "statusCodeDistribution": codes,
        "errorDistribution": errors,
        "client": f"python ({processes} processes, http.client keep-alive)",
    }
    with open(out, "w") as f:
        json.dump(doc, f)


def _client_proc(url, body, hdrs, threads, start_at, seconds, queue):
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    target = u.path + (f"?{u.query}" if u.query else "")
    method = "POST" if body is not None else "GET"
    results = [None] * threads

    def loop(i):
        lat, codes, errors = [], {}, {}
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        while time.time() < start_at:
            time.sleep(0.001)
        end = time.perf_counter() + seconds
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                break
            try:
                conn.request(method, target, body=body, headers=hdrs)
                res = conn.getresponse()
                res.read()
                t1 = time.perf_counter()
                if t1 <= end:
                    lat.append((t1 - t0, res.status))
                    codes[str(res.status)] = codes.get(str(res.status), 0) + 1
            except Exception as e:  # a transport error: count it, reconnect
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        conn.close()
        results[i] = (lat, codes, errors)

    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    lat, codes, errors = [], {}, {}
    for l, c, e in results:
        lat += l
        for k, v in c.items():
            codes[k] = codes.get(k, 0) + v
        for k, v in e.items():
            errors[k] = errors.get(k, 0) + v
    queue.put((lat, codes, errors))


# --------------------------------------------------------------------------- bookkeeping


def stats(url: str):
    """Rows and engine runs a model version has done so far (/v2/models/{m}/stats)."""
    from urllib.request import urlopen

    with urlopen(url, timeout=10) as res:
        doc = json.load(res)
    s = doc["model_stats"][0]
    print(s.get("inference_count", 0), s.get("execution_count", 0))


def machine(out: str, pairs: list[str]):
    import platform

    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    doc = {
        "date": benchlib.now(),
        "machine": benchlib.machine(),
        "versions": {
            "onnxruntime": ort_version,
            "python": platform.python_version(),
            "commit": os.environ.get("BENCH_SOURCE_REV") or benchlib.sh("git", "rev-parse", "HEAD"),
            "source": benchlib.source_rev(),
        },
        **benchlib.parse_meta(pairs),
    }
    with open(out, "w") as f:
        json.dump(doc, f)


def model_info(records: str, corpus: str, model: str, case: str, base: str, body_dir: str):
    """Appends a `model` record: what the model is, its case, and how Serval serves it."""
    from urllib.request import urlopen

    with open(os.path.join(corpus, "cases.json"), encoding="utf-8") as f:
        entry = json.load(f)["models"][model]
    spec = next(c for c in entry["cases"] if c["name"] == case)
    with urlopen(f"{base}/v2/models/{model}/config", timeout=10) as res:
        config = json.load(res)
    with urlopen(f"{base}/v2/models/{model}/stats", timeout=10) as res:
        st = json.load(res)["model_stats"][0]
    rec = {
        "kind": "model",
        "model": model,
        "case": case,
        "description": entry["kind"],
        "source": entry["source"],
        "inputs": {k: {"datatype": v["datatype"], "shape": v["shape"]}
                   for k, v in spec["inputs"].items()},
        "backend": config.get("backend"),
        "backend_reason": config.get("backend_reason"),
        "max_batch_size": config.get("max_batch_size"),
        "max_queue_delay_us": (config.get("dynamic_batching") or {}).get("max_queue_delay_microseconds"),
        "engine_threads": st.get("engine_threads"),
        "body_bytes": {p: os.path.getsize(os.path.join(body_dir, f"{p}.body"))
                       for p in ("oip", "oip_bin", "tf")},
    }
    benchlib.append_record(records, rec)
    print(f"  {model}: backend {rec['backend']}, engine threads {rec['engine_threads']}, "
          f"max_batch_size {rec['max_batch_size']}, max_queue_delay_us {rec['max_queue_delay_us']}")


def set_field(path: str, key: str, value_json: str):
    """Sets one top-level field of a JSON file (value given as JSON)."""
    doc = benchlib.load_json(path)
    doc[key] = json.loads(value_json)
    with open(path, "w") as f:
        json.dump(doc, f)


# --------------------------------------------------------------------------- records


def add(records, oha_path, pairs):
    run = benchlib.read_oha(oha_path)  # without oha's in-flight requests at the end of -z
    codes, errors = run.codes, run.errors
    pct = run.doc.get("latencyPercentilesSuccessful") or run.doc["latencyPercentiles"]
    rec = benchlib.parse_meta(pairs)
    rec.update(
        kind="http",
        duration_s=round(run.duration, 3),
        ok=run.ok,
        ok_rps=benchlib.per_s(run.ok, run.duration),
        p50_ms=benchlib.ms(pct.get("p50"), 4),
        p90_ms=benchlib.ms(pct.get("p90"), 4),
        p99_ms=benchlib.ms(pct.get("p99"), 4),
        status_codes=codes,
        errors=errors,
    )
    if "client" in run.doc:
        rec["client"] = run.doc["client"]
    benchlib.append_record(records, rec)
    print(f"  {rec.get('model')} {rec.get('what')} c={rec.get('concurrency')}: "
          f"{rec['ok_rps']:,.0f} ok req/s, p50 {rec['p50_ms']} ms, p99 {rec['p99_ms']} ms, "
          f"codes {codes}" + (f", errors {errors}" if errors else "") +
          f" (load {rec.get('load1')})", flush=True)
    bad = sum(v for k, v in codes.items() if not k.startswith("2"))
    if run.ok == 0 or bad or errors:
        print(f"  warning: {bad} non-2xx answers, {sum(errors.values())} transport errors",
              flush=True)


def add_raw(records, path, pairs):
    benchlib.append_file_record(records, path, pairs, "raw")


def finalize(records, machine, out):
    doc = benchlib.load_json(machine)
    recs = benchlib.load_records(records)
    doc["models"] = [r for r in recs if r["kind"] == "model"]
    doc["records"] = [r for r in recs if r["kind"] != "model"]
    doc["load_at_end"] = benchlib.loadavg()
    benchlib.write_results(doc, out)


# --------------------------------------------------------------------------- report


def fmt_ms(v):
    """Milliseconds, with three decimals below 1 ms (a raw call can be that short)."""
    return benchlib.fmt_ms(v, fine=True)


def fmt_x(v):
    return "–" if v is None else f"{v:.2f}×"


def report(path):
    doc = benchlib.load_json(path)
    recs = doc["records"]
    m = doc["machine"]
    v = doc["versions"]
    print(f"Corpus models: `serval serve` against raw onnxruntime {v.get('onnxruntime')} "
          f"in-process (intra_op = inter_op = 1, ORT_ENABLE_ALL, sequential; one session per "
          f"thread).\n")
    print(f"- machine: nproc {m['nproc']}, {m['cpu']}, load average {' '.join(m['load_at_start'])} "
          f"at start, {' '.join(doc.get('load_at_end', []))} at end")
    print(f"- source: {v['source']}; serval binary: {doc['serval']}; HTTP client: {doc['client']}")
    print(f"- command: `{doc['command']}`; runs of {doc['duration_s']} s"
          + (" (**--quick: smoke test, figures meaningless**)" if doc["quick"] else ""))
    if doc.get("debug_binary"):
        print("- **the serval binary is a debug build: its figures are meaningless**")
    print()
    for model in doc["models"]:
        name, case = model["model"], model["case"]
        raw = next((r for r in recs if r["kind"] == "raw" and r["model"] == name), None)
        http = [r for r in recs if r["kind"] == "http" and r["model"] == name]

        def get(what, c):
            return next((r for r in http if r["what"] == what and r["concurrency"] == c), None)

        floor = get("health", 1)
        threads = model.get("engine_threads")
        print(f"### {name} ({model['description']}; case `{case}`, input "
              + ", ".join(f"{k} {s['datatype']} {s['shape']}" for k, s in model["inputs"].items())
              + f"; Serval engine threads: {threads if threads is not None else '?'}, "
              f"backend {model.get('backend', '?')})\n")
        rl = raw["latency"] if raw else {}
        floor_p50 = floor["p50_ms"] if floor else None
        raw_http = (rl["p50"] + floor_p50) if rl and floor_p50 is not None else None
        print("Single request (one at a time, batch 1), latency in ms:\n")
        print("| path | p50 | p99 | Serval p50 / (raw + HTTP) p50 | goal |")
        print("|---|---:|---:|---:|---|")
        print(f"| raw onnxruntime, in-process | {fmt_ms(rl.get('p50'))} | {fmt_ms(rl.get('p99'))} | | |")
        print(f"| HTTP floor: `GET /v2/health/live`, c=1 | {fmt_ms(floor_p50)} | "
              f"{fmt_ms(floor['p99_ms'] if floor else None)} | | |")
        print(f"| raw + HTTP floor | {fmt_ms(raw_http)} | | | |")
        for what, label in (("oip", "Serval, OIP v2 JSON"), ("oip_bin", "Serval, OIP v2 binary tensors"),
                            ("tf", "Serval, TF REST JSON")):
            r = get(what, 1)
            if not r:
                continue
            ratio = r["p50_ms"] / raw_http if raw_http else None
            goal = "≤ 1.10×" if what == "oip" else ""
            print(f"| {label} | {fmt_ms(r['p50_ms'])} | {fmt_ms(r['p99_ms'])} | {fmt_x(ratio)} | {goal} |")
        sizes = model.get("body_bytes") or {}
        if sizes:
            print(f"\nRequest bodies: OIP JSON {sizes['oip']:,} B, OIP binary {sizes['oip_bin']:,} B, "
                  f"TF JSON {sizes['tf']:,} B. The floor is a GET with no body: uploading and "
                  f"decoding the body counts against Serval.")
        print()
        tp = {t["batch"]: t["rows_per_s"] for t in (raw["throughput"] if raw else [])}
        raw1 = tp.get(1)
        threads_raw = raw["threads"] if raw else "?"
        print(f"Saturation, rows/s (= req/s for Serval: one row per request); raw: {threads_raw} "
              f"threads, one session each:\n")
        extra = [b for b in sorted(tp) if b != 1]
        best_b = max(tp, key=tp.get) if tp else None
        print("| path | rows/s | / raw batch 1 | goal |")
        print("|---|---:|---:|---|")
        print(f"| raw onnxruntime, batch 1 | {benchlib.fmt_n(raw1)} | 1.00× | |")
        for b in extra:
            print(f"| raw onnxruntime, batch {b} (reference) | {benchlib.fmt_n(tp[b])} | "
                  f"{fmt_x(tp[b] / raw1 if raw1 else None)} | |")
        for what, label in (("oip", "Serval, OIP v2 JSON"), ("oip_bin", "Serval, OIP v2 binary tensors"),
                            ("tf", "Serval, TF REST JSON")):
            for c in doc["saturation_concurrency"]:
                r = get(what, c)
                if not r:
                    continue
                goal = "≥ 0.90×" if what == "oip" else ""
                rpr = r.get("rows_per_run")
                rpr = f", {rpr:.1f} rows per engine run" if isinstance(rpr, (int, float)) else ""
                print(f"| {label}, c={c} (p50 {fmt_ms(r['p50_ms'])} / p99 {fmt_ms(r['p99_ms'])} ms{rpr}) | "
                      f"{benchlib.fmt_n(r['ok_rps'])} | {fmt_x(r['ok_rps'] / raw1 if raw1 else None)} | {goal} |")
        if best_b is not None and best_b != 1:
            print(f"\nBest raw batch: {best_b} ({benchlib.fmt_n(tp[best_b])} rows/s).")
        print()
    # The headline: both goals per model.
    print("Goals (OIP v2 JSON):\n")
    print("| model | Serval p50 / (raw p50 + HTTP floor p50) | goal | best Serval req/s / raw batch-1 rows/s | goal |")
    print("|---|---:|---|---:|---|")
    for model in doc["models"]:
        name = model["model"]
        raw = next((r for r in recs if r["kind"] == "raw" and r["model"] == name), None)
        http = [r for r in recs if r["kind"] == "http" and r["model"] == name]
        floor = next((r for r in http if r["what"] == "health" and r["concurrency"] == 1), None)
        lat1 = next((r for r in http if r["what"] == "oip" and r["concurrency"] == 1), None)
        sat = [r for r in http if r["what"] == "oip" and r["concurrency"] in doc["saturation_concurrency"]]
        raw1 = next((t["rows_per_s"] for t in (raw["throughput"] if raw else []) if t["batch"] == 1), None)
        lat_ratio = tp_ratio = None
        if raw and floor and lat1:
            lat_ratio = lat1["p50_ms"] / (raw["latency"]["p50"] + floor["p50_ms"])
        if sat and raw1:
            tp_ratio = max(r["ok_rps"] for r in sat) / raw1
        print(f"| {name} | {fmt_x(lat_ratio)} | ≤ 1.10× "
              f"{'(met)' if lat_ratio is not None and lat_ratio <= 1.10 else '(not met)'} | "
              f"{fmt_x(tp_ratio)} | ≥ 0.90× "
              f"{'(met)' if tp_ratio is not None and tp_ratio >= 0.90 else '(not met)'} |")


# --------------------------------------------------------------------------- main


# Each command: its function and its positional arguments in the function's order (`meta`: any
# number of key=value pairs). raw and client also take the options main adds to them.
COMMANDS = {
    "bodies": (bodies, "corpus model case out_dir"),
    "raw": (raw, "corpus model case out"),
    "client": (client, "url out"),
    "stats": (stats, "url"),
    "machine": (machine, "out meta"),
    "model-info": (model_info, "records corpus model case base_url body_dir"),
    "set": (set_field, "path key value_json"),
    "add": (add, "records path meta"),
    "add-raw": (add_raw, "records path meta"),
    "finalize": (finalize, "records machine out"),
    "report": (report, "results"),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    parsers = {}
    for name, (_, names) in COMMANDS.items():
        p = parsers[name] = sub.add_parser(name)
        for arg in names.split():
            p.add_argument(arg, nargs="*" if arg == "meta" else None)
    p = parsers["raw"]
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batches", default="1")
    p = parsers["client"]
    p.add_argument("-c", "--concurrency", type=int, default=1)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--body")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args(argv)
    func, names = COMMANDS[a.cmd]
    args = [getattr(a, arg) for arg in names.split()]
    if a.cmd == "raw":
        args += [a.seconds, a.threads, [int(b) for b in a.batches.split(",")]]
    elif a.cmd == "client":
        args += [a.concurrency, a.seconds, a.body, a.header, a.processes]
    func(*args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
