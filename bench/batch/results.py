#!/usr/bin/env python3
"""Bookkeeping for bench/batch.sh: runs and measures one tool, checks outputs, writes the results.

    results.py measure RECORDS.jsonl --output DIR --expect ROWS key=value ... -- CMD ARGS...
    results.py compare RECORDS.jsonl REFERENCE_DIR OTHER_DIR [--sample N] key=value ...
    results.py machine MACHINE.json key=value ...
    results.py finalize RECORDS.jsonl MACHINE.json OUT.json
    results.py report RESULTS.json                # markdown table on stdout

measure runs CMD under `/usr/bin/time -v` (when present) and, every 0.1 s, sums the proportional
set size (PSS, so pages shared between worker processes count once) of every process in its tree:
the Spark JVM, Spark's Python workers and pyarrow_ort.py's worker processes are all children of
the command, and `time -v` only reports the largest single process it waited for (not the JVM,
which the PySpark driver never waits for). Wall time is measured around the command, rows are
counted in the output it wrote (Parquet files whose names do not start with "_" or "."), and a
run whose count differs from --expect fails.
"""

import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# The helpers shared with the other benchmarks (bench/python/benchlib.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from benchlib import (  # noqa: E402
    append_record,
    fmt_n,
    load_json,
    load_records,
    machine as machine_description,
    now,
    parse_meta,
    sh,
    source_rev,
    write_results,
)

TIME_BIN = "/usr/bin/time"
SAMPLE_S = 0.1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def load1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


# ----------------------------------------------------------------------------- process tree


def proc_stat(pid):
    """(ppid, utime + stime in seconds) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_mem_kib(pid):
    """PSS of a process (its RSS when smaps_rollup is unreadable), in KiB."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree(root):
    """{pid: cpu_seconds} of root and all its descendants."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            s = proc_stat(int(name))
            if s is not None:
                stats[int(name)] = s
    children = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            out[pid] = stats[pid][1]
        todo.extend(children.get(pid, []))
    return out


class Sampler(threading.Thread):
    """Peak summed PSS and (approximate) CPU seconds of a process tree, `skip` not counted."""

    def __init__(self, root, skip=()):
        super().__init__(daemon=True)
        self.root, self.skip = root, set(skip)
        self.peak_kib = 0
        self.peak_processes = 0
        self.cpu = {}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            procs = {p: c for p, c in tree(self.root).items() if p not in self.skip}
            self.cpu.update(procs)
            kib = sum(proc_mem_kib(p) for p in procs)
            self.peak_kib = max(self.peak_kib, kib)
            self.peak_processes = max(self.peak_processes, len(procs))
            self.stop.wait(SAMPLE_S)


def parse_time_v(text):
    """The fields of GNU time -v output this harness records."""
    out = {}
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        out["max_process_rss_mib"] = round(int(m.group(1)) / 1024, 1)
    user = re.search(r"User time \(seconds\): ([\d.]+)", text)
    system = re.search(r"System time \(seconds\): ([\d.]+)", text)
    if user and system:
        out["time_cpu_s"] = round(float(user.group(1)) + float(system.group(1)), 2)
    m = re.search(r"Percent of CPU this job got: (\d+)%", text)
    if m:
        out["time_cpu_percent"] = int(m.group(1))
    return out


def count_rows(directory):
    import pyarrow.dataset as ds

    return ds.dataset(directory, format="parquet").count_rows()


def measure(records, args):
    split = args.index("--")
    opts, cmd = args[:split], args[split + 1 :]
    output = expect = None
    pairs = []
    i = 0
    while i < len(opts):
        if opts[i] == "--output":
            output, i = opts[i + 1], i + 2
        elif opts[i] == "--expect":
            expect, i = int(opts[i + 1]), i + 2
        else:
            pairs.append(opts[i])
            i += 1
    meta = parse_meta(pairs)
    use_time = os.access(TIME_BIN, os.X_OK)
    time_out = tempfile.NamedTemporaryFile(prefix="time-v.", delete=False)
    time_out.close()
    full = [TIME_BIN, "-v", "-o", time_out.name] + cmd if use_time else cmd

    l = load1()
    started = time.perf_counter()
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, text=True)
    # The time process itself (a few MiB) is not the tool's.
    sampler = Sampler(proc.pid, skip=[proc.pid] if use_time else [])
    sampler.start()
    stdout = proc.stdout.read()
    status = proc.wait()
    seconds = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    sys.stdout.write(stdout)

    rec = dict(meta)
    rec.update(kind="run", command=cmd, exit_code=status, seconds=round(seconds, 3), load1=l)
    if use_time:
        with open(time_out.name) as f:
            rec.update(parse_time_v(f.read()))
    else:
        rec["max_process_rss_mib"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    os.unlink(time_out.name)
    rec["peak_rss_mib"] = round(sampler.peak_kib / 1024, 1)
    rec["peak_processes"] = sampler.peak_processes
    rec["tree_cpu_s"] = round(sum(sampler.cpu.values()), 2)
    # The tool's own summary: the last stdout line that is a JSON object.
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                rec["tool_report"] = json.loads(line)
                break
            except ValueError:
                pass
    if status == 0 and output is not None:
        rec["rows"] = count_rows(output)
        rec["rows_per_s"] = round(rec["rows"] / seconds, 1)
    append_record(records, rec)
    print(
        f"  {meta.get('tool')}/{meta.get('model')}: exit {status}, {seconds:.2f} s, "
        f"{rec.get('rows')} rows, {rec.get('rows_per_s', 0):,.0f} rows/s, "
        f"peak {rec['peak_rss_mib']} MiB in {rec['peak_processes']} processes "
        f"(largest process {rec.get('max_process_rss_mib')} MiB), load {l}"
    )
    if status != 0:
        sys.exit(f"command failed with exit status {status}: {' '.join(cmd)}")
    if expect is not None and rec.get("rows") != expect:
        sys.exit(f"{output} holds {rec.get('rows')} rows, expected {expect}")


# ----------------------------------------------------------------------------- compare


def read_predictions(directory, keys=None, limit=None):
    """{column: numpy array} of an output, sorted by key; rows of `keys` only when given."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    dataset = ds.dataset(directory, format="parquet")
    if keys is not None:
        table = dataset.to_table(filter=pc.field("key").isin(keys))
    else:
        table = dataset.head(limit)
    table = table.sort_by("key")
    out = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
            flat = pc.list_flatten(col).to_numpy(zero_copy_only=False)
            out[name] = flat.reshape(len(col), -1) if len(col) else flat.reshape(0, 0)
        else:
            out[name] = np.asarray(col.to_numpy(zero_copy_only=False))
    return out


def compare(records, reference, other, sample, pairs, atol=1e-5):
    import numpy as np
    import pyarrow as pa

    ref = read_predictions(reference, limit=sample)
    got = read_predictions(other, keys=pa.array(ref["key"]))
    meta = parse_meta(pairs)
    problems = []
    if len(got["key"]) != len(ref["key"]) or not np.array_equal(got["key"], ref["key"]):
        problems.append(f"{len(ref['key'])} sampled keys, {len(got['key'])} found")
    # The columns both wrote (an output may also carry input columns); at least one prediction.
    common = [n for n in ref if n in got and n != "key"]
    if not common:
        problems.append(f"no common prediction column ({sorted(ref)} vs {sorted(got)})")
    worst = {}
    for name in common:
        if problems:
            break
        a, b = ref[name], got[name]
        if a.shape != b.shape:
            problems.append(f"{name}: shape {a.shape} vs {b.shape}")
        elif a.dtype.kind == "f" or b.dtype.kind == "f":
            d = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
            worst[name] = d
            if not d <= atol:
                problems.append(f"{name}: max abs difference {d:.3g} > {atol}")
        else:
            n = int(np.sum(a != b))
            worst[name] = n
            if n:
                problems.append(f"{name}: {n} of {len(a)} differ")
    rec = dict(meta, kind="compare", reference=reference, other=other, sampled=len(ref["key"]),
               max_abs_diff=worst, ok=not problems, problems=problems)
    append_record(records, rec)
    print(f"  compare {meta.get('model')} {meta.get('reference_tool')} vs {meta.get('tool')}: "
          f"{len(ref['key'])} rows, {'agree' if not problems else '; '.join(problems)} {worst}")
    if problems:
        sys.exit(1)


# ----------------------------------------------------------------------------- results


def machine(out, pairs):
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for pkg in ("numpy", "pyarrow", "onnxruntime", "pyspark", "pandas"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    versions["java"] = sh("java", "-version", stderr=True).splitlines()[0] if shutil.which("java") else None
    versions["rustc"] = sh("rustc", "--version")
    versions["source"] = source_rev()
    doc = dict(parse_meta(pairs))
    doc.update(date=now(), machine=machine_description(mhz=False), versions=versions)
    with open(out, "w") as f:
        json.dump(doc, f)


def finalize(records, machine_path, out):
    doc = load_json(machine_path)
    recs = load_records(records)
    doc["runs"] = [r for r in recs if r["kind"] == "run"]
    doc["comparisons"] = [r for r in recs if r["kind"] == "compare"]
    write_results(doc, out)


def report(path):
    doc = load_json(path)
    runs = doc["runs"]
    serval = {r["model"]: r for r in runs if r["tool"] == "serval" and r.get("rows_per_s")}
    print(
        f"Batch prediction over {fmt_n(doc.get('data_rows'))} rows in {doc.get('data_files', '?')} "
        f"Parquet files ({doc.get('data_bytes', 0) / 2**20:,.0f} MiB), {doc['machine']['nproc']} cores, "
        f"each tool given {doc.get('processes', '?')} (worker processes, Spark local[N], serval --partitions):\n"
    )
    print("| tool | model | rows | seconds | rows/s | peak RSS MiB | Serval / tool |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in runs:
        s = serval.get(r["model"])
        ratio = f"{s['rows_per_s'] / r['rows_per_s']:.2f}×" if s and r.get("rows_per_s") else "–"
        print(
            f"| {r['tool']} | {r['model']} | {fmt_n(r.get('rows'))} | {r['seconds']:.2f} | "
            f"{fmt_n(r.get('rows_per_s'))} | {fmt_n(r['peak_rss_mib'])} | {ratio} |"
        )
    print(
        "\nseconds: wall time of the whole command (process, JVM and model start included); "
        "peak RSS: the largest sum, over the command's process tree sampled every "
        f"{SAMPLE_S} s, of each process's PSS; Serval / tool: Serval's rows/s over the tool's."
    )
    bad = [c for c in doc.get("comparisons", []) if not c["ok"]]
    checked = len(doc.get("comparisons", []))
    if checked:
        print(f"\nPredictions compared on a sample of rows by key: {checked - len(bad)} of {checked} pairs agree.")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "measure":
        measure(args[0], args[1:])
    elif cmd == "compare":
        sample = 10000
        rest = list(args[3:])
        if "--sample" in rest:
            i = rest.index("--sample")
            sample = int(rest[i + 1])
            del rest[i : i + 2]
        compare(args[0], args[1], args[2], sample, rest)
    elif cmd == "machine":
        machine(args[0], args[1:])
    elif cmd == "finalize":
        finalize(*args)
    elif cmd == "report":
        report(args[0])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
