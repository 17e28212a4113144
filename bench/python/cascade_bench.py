#!/usr/bin/env python3
"""Helper of bench/cascade.sh: the server-side cascade (`kind = "cascade"`, digits_cascade)
against phase 2 alone (digits_phase2, the big model) and phase 1 alone (digits_phase1), all on one
`serval serve examples/models`: what the cascade answers, and what it costs the server.

    cascade_bench.py ready URL MODEL ...
                        # every MODEL READY in POST URL/v2/repository/index, else its state and
                        # reason, and exit 1
    cascade_bench.py accuracy RECORDS.jsonl --server URL --cascade M --phase1 M --phase2 M
                        [--batch B]
                        # the 1080 two-phase digits to each model in order, B instances per v2
                        # REST request, one request at a time: share answered by phase 2,
                        # accuracy against the labels joined by key, the cascade's answers
                        # checked against the phases' own with the policy applied here, the
                        # server's compute per instance (/stats before and after)
    cascade_bench.py load RECORDS.jsonl --server URL --model M --watch M ... [-c C]
                        [--seconds S] [--batch B] [key=value ...]
                        # a closed loop of C threads (keep-alive http.client), bodies of B
                        # instances cycling over the 1080 rows: requests/s, instances/s,
                        # p50/p99 latency, and the /stats deltas of every --watch model
    cascade_bench.py machine OUT.json key=value ...   # as two_phase_bench.py's
    cascade_bench.py set FILE.json KEY JSON
    cascade_bench.py finalize RECORDS.jsonl MACHINE.json OUT.json
    cascade_bench.py report RESULTS.json              # the markdown on stdout

accuracy and load need numpy; the others the standard library only. Beside it: benchlib.py,
two_phase_bench.py (v2 bodies, scores, machine, set, finalize), corpus_bench.py (percentiles) and
labelled.py (the labelled rows, class labels).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import sys
import threading
import time
import tomllib
import urllib.parse

import benchlib
import corpus_bench
import labelled
import two_phase_bench

STAT_FIELDS = ("inference_count", "execution_count", "compute_ns", "queue_ns", "success", "fail")


# --------------------------------------------------------------------------- the server


def request(server: str, method: str, path: str, body: bytes | None = None):
    """One request on a fresh connection: (status, the JSON answer or its text)."""
    up = urllib.parse.urlsplit(server)
    conn = http.client.HTTPConnection(up.hostname, up.port, timeout=120)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(data)
    except ValueError:
        return resp.status, data.decode(errors="replace")


def ready(server: str, models: list[str]):
    status, doc = request(server, "POST", "/v2/repository/index", b"{}")
    if status != 200:
        raise SystemExit(f"POST {server}/v2/repository/index answered {status}: {doc}")
    states = {m["name"]: m for m in doc}
    bad = [f"{m}: {states[m]['state']} ({states[m].get('reason') or 'no reason given'})" if m in states
           else f"{m}: not in the repository index" for m in models if states.get(m, {}).get("state") != "READY"]
    if bad:
        raise SystemExit("models not ready: " + "; ".join(bad))


def snapshot(server: str, models: list[str]) -> dict:
    """Each model's counters from GET /v2/models/{m}/stats (summed over its versions)."""
    out = {}
    for m in models:
        status, doc = request(server, "GET", f"/v2/models/{m}/stats")
        if status != 200:
            raise SystemExit(f"GET {server}/v2/models/{m}/stats answered {status}: {doc}")
        total = dict.fromkeys(STAT_FIELDS, 0)
        for s in doc["model_stats"]:
            st = s["inference_stats"]
            for k, v in (("inference_count", s["inference_count"]), ("execution_count", s["execution_count"]),
                         ("compute_ns", st["compute_infer"]["ns"]), ("queue_ns", st["queue"]["ns"]),
                         ("success", st["success"]["count"]), ("fail", st["fail"]["count"])):
                total[k] += v
        out[m] = total
    return out


def delta(before: dict, after: dict) -> dict:
    """after - before, per model; with compute µs per instance and instances per engine run."""
    out = {}
    for m, b in before.items():
        d = {k: after[m][k] - b[k] for k in STAT_FIELDS}
        d["compute_us_per_instance"] = round(d["compute_ns"] / d["inference_count"] / 1e3, 3) \
            if d["inference_count"] else None
        d["instances_per_execution"] = round(d["inference_count"] / d["execution_count"], 2) \
            if d["execution_count"] else None
        out[m] = d
    return out


# --------------------------------------------------------------------------- 1. answers


def top(probs: list[float], labels: list[str]):
    """The first highest probability (NaN never wins, as float32) and its class, as the cascade
    takes it."""
    import numpy as np

    p = np.asarray(probs, dtype=np.float32)
    i = int(np.where(np.isnan(p), -np.inf, p).argmax())
    return (labels[i] if i < len(labels) else str(i)), p[i]


def forwards(rule: dict, cls: str, confidence: float) -> bool:
    """The policy's decision (crates/serval-core/src/cascade/mod.rs, CascadePolicy::decide): the
    band [low, high) in float32, NaN never confident, `when` = any (default) or all."""
    import numpy as np

    by_class = cls in rule["classes"] if rule.get("classes") else None
    by_conf = None
    if rule.get("confidence") is not None:
        low, high = (np.float32(x) for x in rule["confidence"])
        c = np.float32(confidence)
        by_conf = bool(np.isnan(c) or (low <= c < high))
    if by_class is not None and by_conf is not None and rule.get("when", "any") == "all":
        return by_class and by_conf
    return bool(by_class) or bool(by_conf)


def config_policy(cascade: str, phase1: str) -> dict:
    """The cascade's policy as the repository states it: [cascade.policy] of its config.toml,
    else the [edge] section of phase 1's."""
    def read(model):
        with open(os.path.join(labelled.MODELS, model, "config.toml"), "rb") as f:
            return tomllib.load(f)

    return read(cascade).get("cascade", {}).get("policy") or read(phase1)["edge"]


def answers(server: str, model: str, bodies: list[bytes], n: int) -> dict:
    """{key: {output: the instance's value (a list for [N, C] outputs)}} over the bodies, sent one
    after the other."""
    rows: dict[str, dict] = {}
    for body in bodies:
        status, doc = request(server, "POST", f"/v2/models/{model}/infer", body)
        if status != 200:
            raise SystemExit(f"POST {server}/v2/models/{model}/infer answered {status}: {str(doc)[:2000]}")
        sent = json.loads(body)["inputs"][0]["shape"][0]
        out = {o["name"]: o for o in doc["outputs"]}
        keys = out["key"]["data"]
        if len(keys) != sent or any(o["shape"][0] != sent for o in out.values()):
            raise SystemExit(f"{model}: {sent} instances sent, outputs {[(k, o['shape']) for k, o in out.items()]}")
        for name, o in out.items():
            width = math.prod(o["shape"][1:])
            for i, k in enumerate(keys):
                value = o["data"][i * width:(i + 1) * width] if len(o["shape"]) > 1 else o["data"][i]
                rows.setdefault(k, {})[name] = value
    if len(rows) != n:
        raise SystemExit(f"{model}: {len(rows)} distinct keys answered for {n} instances")
    return rows


def accuracy(records: str, server: str, cascade: str, phase1: str, phase2: str, batch: int):
    import numpy as np

    keys, X, labels = labelled.digits_two_phase()
    n = len(keys)
    bodies = two_phase_bench.bodies(keys, X, [True] * n, batch, batch)
    models = [cascade, phase2, phase1]
    got, stats = {}, {}
    for m in models:
        answers(server, m, bodies[:1], min(batch, n))  # warm-up: not in the stats
        before = snapshot(server, models)
        got[m] = answers(server, m, bodies, n)
        stats[m] = delta(before, snapshot(server, models))
    names1, names2 = labelled.class_labels(phase1), labelled.class_labels(phase2)
    p1 = [top(got[phase1][k]["probabilities"], names1) for k in keys]
    p2 = [top(got[phase2][k]["probabilities"], names2) for k in keys]
    c = got[cascade]
    phase = [int(c[k]["phase"]) for k in keys]
    cls = [c[k]["class"] for k in keys]
    conf = [np.float32(c[k]["confidence"]) for k in keys]  # JSON's decimal back to its float32

    # What the cascade should answer: the policy applied here to phase 1's own answers.
    rule = config_policy(cascade, phase1)
    fwd = [forwards(rule["forward"], k1, p) for k1, p in p1]
    want_cls = [b[0] if f else a[0] for a, b, f in zip(p1, p2, fwd)]
    want_conf = [b[1] if f else a[1] for a, b, f in zip(p1, p2, fwd)]
    status, server_config = request(server, "GET", f"/v2/models/{cascade}/config")
    served = server_config.get("cascade_policy") if status == 200 and isinstance(server_config, dict) else None
    wrong_phase = [k for k, p, f in zip(keys, phase, fwd) if p != (2 if f else 1)]
    wrong_class = [k for k, a, b in zip(keys, cls, want_cls) if a != b]
    wrong_conf = [k for k, a, b in zip(keys, conf, want_conf) if a != b]
    check = {
        "policy_config_toml": rule, "policy_served": served,
        "policy_forward_matches": bool(served) and all(
            served["forward"].get(k, d) == rule["forward"].get(k, d)
            for k, d in (("classes", []), ("confidence", None), ("when", "any"))),
        "steps": (server_config.get("ensemble_scheduling") or {}).get("step") if served else None,
        "expected_phase2": sum(fwd),
        "phase_mismatches": len(wrong_phase), "phase_mismatch_keys": wrong_phase[:10],
        "class_mismatches": len(wrong_class), "class_mismatch_keys": wrong_class[:10],
        "confidence_mismatches": len(wrong_conf), "confidence_mismatch_keys": wrong_conf[:10],
        "confidence_max_abs_diff": max(abs(float(a) - float(b)) for a, b in zip(conf, want_conf)),
        "phases_unknown": sorted({p for p in phase if p not in (1, 2)}),
    }
    digit = [lab != "not_digit" for lab in labels]
    answered2 = sum(p == 2 for p in phase)
    systems = [
        ("cascade", cascade, cls),
        ("phase 2 alone", phase2, [a for a, _ in p2]),
        ("phase 1 alone", phase1, [a for a, _ in p1]),
    ]
    rec = {
        "kind": "accuracy", "instances": n, "digits": sum(digit), "not_digits": n - sum(digit),
        "batch": batch, "requests": len(bodies),
        "phase2_answered": answered2, "phase2_share": answered2 / n,
        "phase2_answered_digits": sum(p == 2 and d for p, d in zip(phase, digit)),
        "phase2_answered_not_digits": sum(p == 2 and not d for p, d in zip(phase, digit)),
        "systems": [{"system": s, "model": m, **two_phase_bench.scores(keys, labels, pred),
                     "stats": stats[m]} for s, m, pred in systems],
        "check": check,
    }
    benchlib.append_record(records, rec)
    print(f"  {cascade}: {answered2} of {n} answered by phase 2 ({answered2 / n:.1%}; the policy applied to "
          f"{phase1}'s answers: {sum(fwd)}); mismatches: phase {len(wrong_phase)}, class {len(wrong_class)}, "
          f"confidence {len(wrong_conf)}", flush=True)
    for s in rec["systems"]:
        own = s["stats"][s["model"]]
        print(f"  {s['system']} ({s['model']}): accuracy {s['accuracy']:.4f} (digits {s['accuracy_digits']:.4f}, "
              f"non-digits {s['accuracy_not_digits']:.4f}); server compute "
              f"{own['compute_us_per_instance']} µs/instance", flush=True)


# --------------------------------------------------------------------------- 2. load


def cycling_bodies(batch: int) -> list[bytes]:
    """Bodies of `batch` instances each, over the 1080 rows in order and round again, until the
    cycle closes (1080 and 64: 135 bodies, every row 8 times)."""
    keys, X, _ = labelled.digits_two_phase()
    n = len(keys)
    count = math.lcm(n, batch) // batch
    out = []
    for j in range(count):
        idx = [(j * batch + i) % n for i in range(batch)]
        out.append(two_phase_bench.v2_body([keys[i] for i in idx], X[idx]))
    return out


def closed_loop(server: str, path: str, bodies: list[bytes], clients: int, seconds: float) -> dict:
    """`clients` threads, one keep-alive connection each, each sending the next body as soon as
    the last answer is in (thread t starts t/clients of the way into the bodies). Requests that
    end after the deadline are not counted."""
    up = urllib.parse.urlsplit(server)
    headers = {"Content-Type": "application/json"}
    results = [None] * clients
    start_at = time.perf_counter() + 0.2

    def loop(t):
        lat, codes, errors = [], {}, {}
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
        j = t * len(bodies) // clients
        while time.perf_counter() < start_at:
            time.sleep(0.001)
        end = start_at + seconds
        while (t0 := time.perf_counter()) < end:
            try:
                conn.request("POST", path, body=bodies[j % len(bodies)], headers=headers)
                resp = conn.getresponse()
                resp.read()
                if time.perf_counter() <= end:
                    lat.append((time.perf_counter() - t0, resp.status))
                    codes[str(resp.status)] = codes.get(str(resp.status), 0) + 1
            except (OSError, http.client.HTTPException) as e:  # count it, reconnect
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                conn.close()
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
            j += 1
        conn.close()
        results[t] = (lat, codes, errors)

    threads = [threading.Thread(target=loop, args=(t,)) for t in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    lat, codes, errors = [], {}, {}
    for part_lat, part_codes, part_errors in results:
        lat += part_lat
        for dst, src in ((codes, part_codes), (errors, part_errors)):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v
    ok = [s for s, status in lat if status == 200]
    return {"responses": len(lat), "ok": len(ok), "status_codes": codes, "errors": errors,
            "latency": corpus_bench.percentiles(ok)}


def load(records: str, server: str, model: str, watch: list[str], clients: int, seconds: float, batch: int,
         pairs: list[str]):
    bodies = cycling_bodies(batch)
    path = f"/v2/models/{model}/infer"
    for body in bodies[:8]:  # warm-up, and every answer must be a 200
        status, doc = request(server, "POST", path, body)
        if status != 200:
            raise SystemExit(f"POST {server}{path} answered {status}: {str(doc)[:2000]}")
    watch = list(dict.fromkeys([model, *watch]))
    before = snapshot(server, watch)
    run = closed_loop(server, path, bodies, clients, seconds)
    stats = delta(before, snapshot(server, watch))
    pct = run.pop("latency")
    rec = benchlib.parse_meta(pairs)
    rec.update(
        kind="load", model=model, clients=clients, seconds=seconds, batch=batch, bodies=len(bodies), **run,
        requests_per_s=benchlib.per_s(run["ok"], seconds), instances_per_s=benchlib.per_s(run["ok"] * batch, seconds),
        p50_ms=benchlib.ms(pct["p50"]), p90_ms=benchlib.ms(pct["p90"]), p99_ms=benchlib.ms(pct["p99"]),
        mean_ms=benchlib.ms(pct["mean"]), stats=stats,
        compute_us_per_instance=stats[model]["compute_us_per_instance"],
    )
    benchlib.append_record(records, rec)
    others = {m: d["inference_count"] for m, d in stats.items() if m != model}
    print(f"  {model} c={clients}: {rec['requests_per_s']:.1f} req/s, {rec['instances_per_s']:.0f} instances/s, "
          f"p50 {rec['p50_ms']} ms, p99 {rec['p99_ms']} ms, server compute {rec['compute_us_per_instance']} "
          f"µs/instance, codes {run['status_codes']}" + (f", errors {run['errors']}" if run["errors"] else "")
          + f"; instances counted meanwhile by {others}", flush=True)


# --------------------------------------------------------------------------- report


def fmt_us(x) -> str:
    return "–" if x is None else two_phase_bench.fmt_us(x)


def ratio(a, b) -> str:
    return f"{a / b:.2f}×" if a and b else "–"


def accuracy_part(acc: dict) -> list[str]:
    n, chk = acc["instances"], acc["check"]
    rule = chk["policy_config_toml"]["forward"]
    by = {s["system"]: s for s in acc["systems"]}
    out = [
        f"**1. Answers** over the 1080-row digits test split ({acc['digits']} digits, {acc['not_digits']} "
        f"non-digits), sent in order to each model, {acc['batch']} instances per v2 REST request "
        f"({acc['requests']} requests, one at a time). The cascade's class is its `class` output; a phase's "
        "alone is the top of its `probabilities` mapped to its config.toml's `class_labels`; all against the "
        "labels joined by key. Phase 2 has no `not_digit` class: alone it gets every non-digit wrong. "
        f"Policy (phase 1's `[edge]`): forward when `classes = {json.dumps(rule.get('classes'))}`, "
        f"`confidence = {rule.get('confidence')}`, `when = \"{rule.get('when', 'any')}\"`.",
        "",
        "| system | model | answered by phase 2 | accuracy | digits | non-digits | correct "
        "| server compute µs/instance |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in acc["systems"]:
        share = {"cascade": f"{acc['phase2_answered']} ({acc['phase2_share']:.1%})",
                 "phase 2 alone": f"{n} (100%)", "phase 1 alone": "0"}[s["system"]]
        out.append(f"| {s['system']} | {s['model']} | {share} | {s['accuracy']:.4f} | {s['accuracy_digits']:.4f} | "
                   f"{s['accuracy_not_digits']:.4f} | {s['correct']} | "
                   f"{fmt_us(s['stats'][s['model']]['compute_us_per_instance'])} |")
    casc = by["cascade"]
    examples = (chk["phase_mismatch_keys"] + chk["class_mismatch_keys"] + chk["confidence_mismatch_keys"])[:5]
    out += [
        "",
        f"- Answered by phase 2: {acc['phase2_answered_digits']} of the {acc['digits']} digits, "
        f"{acc['phase2_answered_not_digits']} of the {acc['not_digits']} non-digits.",
        f"- Cascade accuracy {casc['accuracy']:.4f} against phase 2 alone {by['phase 2 alone']['accuracy']:.4f} and "
        f"phase 1 alone {by['phase 1 alone']['accuracy']:.4f}; on the digits only: {casc['accuracy_digits']:.4f}, "
        f"{by['phase 2 alone']['accuracy_digits']:.4f}, {by['phase 1 alone']['accuracy_digits']:.4f}.",
        "- Check: the policy applied here to phase 1's own answers (`digits_phase1` served alone) forwards "
        f"{chk['expected_phase2']}; the cascade's answers differ from those of the phases alone (phase 2's for "
        f"the forwarded, phase 1's for the others) in phase {chk['phase_mismatches']}, class "
        f"{chk['class_mismatches']}, confidence {chk['confidence_mismatches']} times (largest confidence "
        f"difference {chk['confidence_max_abs_diff']:.1e})"
        + (f"; e.g. {', '.join(examples)}." if examples else ".")
        + (" The server's `/config` states the same forwarding rule." if chk["policy_forward_matches"]
           else f" **The server's `/config` states another rule: {chk['policy_served']}.**"),
        "- Server compute: Δ`compute_infer.ns` / Δ`inference_count` of `GET /v2/models/{m}/stats` around the "
        f"model's {acc['requests']} requests.",
        "",
    ]
    return out


def load_part(loads: list[dict], acc: dict | None) -> list[str]:
    first = loads[0]
    out = [
        f"**2. Cost**: a closed loop of {first['clients']} clients (Python threads, one keep-alive "
        f"`http.client` connection each) for {first['seconds']:g} s per model, each request {first['batch']} "
        f"instances, cycling over the 1080 rows ({first['bodies']} distinct bodies); one model after the other "
        "on the same server (1-minute load average when each began in the last column). Server compute: "
        "Δ`compute_infer.ns` / Δ`inference_count` of the model's `/stats` over the run (the cascade's covers "
        "phase 1 on the whole batch and phase 2 on the forwarded rows).",
        "",
        "| model | requests/s | instances/s | p50 ms | p99 ms | server compute µs/instance "
        "| instances per engine run | non-200 / errors | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in loads:
        own = r["stats"][r["model"]]
        bad = r["responses"] - r["ok"] + sum(r["errors"].values())
        out.append(f"| {r['model']} | {r['requests_per_s']:.1f} | {benchlib.fmt_n(r['instances_per_s'])} | "
                   f"{benchlib.fmt_ms(r['p50_ms'])} | {benchlib.fmt_ms(r['p99_ms'])} | "
                   f"{fmt_us(own['compute_us_per_instance'])} | {own['instances_per_execution']} | {bad} | "
                   f"{r.get('load1', '–')} |")
    role = {r.get("role"): r for r in loads}
    casc, p1, p2 = role.get("cascade"), role.get("phase1"), role.get("phase2")
    out.append("")
    if casc and p2:
        out.append("- Cascade against phase 2 alone: instances/s "
                   f"{ratio(casc['instances_per_s'], p2['instances_per_s'])}, server compute per instance "
                   f"{ratio(casc['compute_us_per_instance'], p2['compute_us_per_instance'])}, p50 latency "
                   f"{ratio(casc['p50_ms'], p2['p50_ms'])}.")
    if casc and p1 and p2 and acc and p1["compute_us_per_instance"] and p2["compute_us_per_instance"]:
        est = p1["compute_us_per_instance"] + acc["phase2_share"] * p2["compute_us_per_instance"]
        out.append(f"- Phase 1 on every instance plus phase 2 on the {acc['phase2_share']:.1%} forwarded, each at "
                   f"its own cost per instance in batches of {casc['batch']}: {fmt_us(est)} µs/instance; the "
                   f"cascade measured {fmt_us(casc['compute_us_per_instance'])} (its phase-2 batches hold "
                   f"{acc['phase2_share'] * casc['batch']:.1f} rows on average).")
    if casc:
        moved = {m: d["inference_count"] for m, d in casc["stats"].items() if m != casc["model"]}
        out.append(f"- Instances counted by the phases' own `/stats` during the cascade's run: {moved} (the cascade "
                   "runs its phases in its own engine threads, not through their queues).")
    bad = [r for r in loads if r["ok"] != r["responses"] or r["errors"]]
    out += [f"- **{r['model']}: {r['ok']:,} of {r['responses']:,} requests answered 200; status codes "
            f"{r['status_codes']}, errors {r['errors']}**" for r in bad]
    if not bad:
        counts = ", ".join(f"{r['model']} {r['ok']:,}" for r in loads)
        out.append(f"- Every request within the windows answered 200 ({counts}).")
    return out


def report(path: str):
    doc = benchlib.load_json(path)
    recs = doc["records"]
    m, v, py = doc["machine"], doc["versions"], doc.get("python", {})
    out = []
    if doc.get("debug_binary"):
        out += ["**A debug build of serval was measured: the throughput, latencies and compute times below mean "
                "nothing** (the answers, accuracy and the share answered by phase 2 do not depend on the build).", ""]
    out += [
        f"- machine: nproc {m['nproc']}, {m['cpu']}, {m['mem_gib']} GiB, load average "
        f"{' '.join(m['load_at_start'])} at start, {' '.join(doc.get('load_at_end', ['?']))} at end",
        f"- source: {v['source']}; serval: {doc.get('serval')}; `serval serve examples/models --host 127.0.0.1 "
        "--http-port 0 --grpc-port 0` (default batching and engine threads)",
        f"- Python {py.get('python')}, numpy {py.get('numpy')} (the client)",
        f"- command: `{doc.get('command')}`",
        "",
    ]
    acc = next((r for r in recs if r["kind"] == "accuracy"), None)
    if acc:
        out += accuracy_part(acc)
    loads = [r for r in recs if r["kind"] == "load"]
    if loads:
        out += load_part(loads, acc)
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
    elif cmd == "ready":
        ready(rest[0], rest[1:])
    elif cmd in ("accuracy", "load"):
        p = argparse.ArgumentParser(prog=f"cascade_bench.py {cmd}")
        p.add_argument("records")
        p.add_argument("--server", required=True)
        p.add_argument("--batch", type=int, default=64)
        if cmd == "accuracy":
            for phase in ("--cascade", "--phase1", "--phase2"):
                p.add_argument(phase, required=True)
            a = p.parse_intermixed_args(rest)
            accuracy(a.records, a.server, a.cascade, a.phase1, a.phase2, a.batch)
        else:
            p.add_argument("--model", required=True)
            p.add_argument("--watch", action="append", default=[])
            p.add_argument("-c", "--clients", type=int, default=4)
            p.add_argument("--seconds", type=float, default=10.0)
            p.add_argument("pairs", nargs="*", help="key=value")
            a = p.parse_intermixed_args(rest)
            load(a.records, a.server, a.model, a.watch, a.clients, a.seconds, a.batch, a.pairs)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
