"""Shared by the benchmarks' helpers (bench/python/results.py for bench/load.sh,
bench/batch/results.py for bench/batch.sh, bench/python/corpus_bench.py for bench/corpus.sh):
`key=value` metadata, oha's JSON output, records files, the machine description and the number
formats of the reports. Standard library only.
"""

import json
import os
import platform
import subprocess
import time
from typing import NamedTuple

# What oha counts as an error for the requests still in flight when a -z run ends.
DEADLINE_ABORT = "aborted due to deadline"


# --------------------------------------------------------------------------- records


def parse_meta(pairs):
    """`key=value` command-line pairs to a dict, numbers as int or float."""
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


def load_json(path):
    with open(path) as f:
        return json.load(f)


def append_record(records, rec):
    """Appends one record to a JSON-lines file."""
    with open(records, "a") as f:
        f.write(json.dumps(rec) + "\n")


def append_file_record(records, path, pairs, kind):
    """Appends the JSON object in `path`, with `kind` and the `key=value` pairs, as one record."""
    rec = dict(parse_meta(pairs))
    rec.update(kind=kind, **load_json(path))
    append_record(records, rec)


def load_records(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_results(doc, out):
    """The results file: indented JSON, one trailing newline."""
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


# --------------------------------------------------------------------------- oha


def ms(seconds, digits=3):
    return None if seconds is None else round(seconds * 1000.0, digits)


def per_s(count, duration):
    return round(count / duration, 1) if duration else 0.0


class OhaRun(NamedTuple):
    doc: dict  # oha's JSON as it is
    duration: float  # seconds
    codes: dict  # {status code as a string: responses}
    ok: int  # 2xx responses
    errors: dict  # transport errors, without the deadline aborts
    aborted: int  # the deadline aborts


def read_oha(path):
    """One oha run (`--output-format json`), or the Python client's stand-in for it."""
    doc = load_json(path)
    codes = {str(k): v for k, v in (doc.get("statusCodeDistribution") or {}).items()}
    errors = dict(doc.get("errorDistribution") or {})
    aborted = errors.pop(DEADLINE_ABORT, 0)
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    return OhaRun(doc, doc["summary"]["total"], codes, ok, errors, aborted)


# --------------------------------------------------------------------------- machine


def sh(*cmd, stderr=False):
    """A command's stdout (its stderr when stdout is empty and `stderr`), stripped; or why not."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return (p.stdout or (p.stderr if stderr else "")).strip()
    except Exception as e:
        return f"unavailable: {e}"


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def loadavg():
    """The 1-, 5- and 15-minute load averages, as /proc/loadavg writes them."""
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def machine(mhz=True):
    """nproc, CPU model (and MHz), memory, kernel and load average at start."""
    cpu = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            cpu.setdefault(k.strip(), v.strip())
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    doc = {"nproc": os.cpu_count(), "cpu": cpu.get("model name")}
    if mhz:
        doc["mhz"] = cpu.get("cpu MHz")
    doc.update(mem_gib=round(mem_kib / 1024 / 1024, 1), kernel=platform.release(), load_at_start=loadavg())
    return doc


def source_rev():
    """The measured source: BENCH_SOURCE_REV when it is not a git checkout (e.g. a `git archive`),
    else the short commit, " (dirty)" when the tree has changes."""
    return os.environ.get("BENCH_SOURCE_REV") or (
        sh("git", "rev-parse", "--short", "HEAD") + (" (dirty)" if sh("git", "status", "--porcelain") else "")
    )


# --------------------------------------------------------------------------- report


def fmt_n(x):
    """A count or a rate, to the unit, with thousands separators."""
    return "–" if x is None else f"{x:,.0f}"


def fmt_ms(x, fine=False):
    """Milliseconds to three significant figures or so (`fine`: three decimals below 1 ms)."""
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if fine and x < 1:
        return f"{x:.3f}"
    return f"{x:.2f}"
