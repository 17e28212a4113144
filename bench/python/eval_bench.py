#!/usr/bin/env python3
"""Helper of bench/eval.sh: `serval eval` over a prediction log against the same windows computed
with pandas + scikit-learn and with Evidently's Report.

    eval_bench.py gen ROWS DIR [--seed N] [--parts P]
                                                 # DIR/x/part-*.parquet (the batch input, in P
                                                 # files of consecutive rows), labels-1.parquet
                                                 # (80% of the keys), labels-2.parquet (later
                                                 # corrections of 1% of them), ref.csv, gen.json
    eval_bench.py pandas LOG OUT.json [--progress FILE]
                                                 # the pandas + scikit-learn baseline
    eval_bench.py evidently LOG OUT.json [--drift REF.parquet] [--progress FILE]
                                                 # the Evidently baseline (REF: `serval batch`'s
                                                 # output for ref.csv, features and outputs)
    eval_bench.py run --out REC.json --stdout F --stderr F [--timeout S] [--mem-cap MIB]
                      [--progress FILE] -- CMD ...
                                                 # CMD under /usr/bin/time -v: seconds, peak RSS;
                                                 # killed past the timeout or the memory cap
    eval_bench.py check SERVAL.json PANDAS.json OUT.json [--evidently EV.json ...]
                                                 # the same windows, accuracy to 1e-9
    eval_bench.py versions                       # this Python's versions of the packages, as JSON
    eval_bench.py machine OUT.json key=value ...
    eval_bench.py set FILE.json KEY JSON
    eval_bench.py add RECORDS.jsonl REC.json key=value ...
    eval_bench.py finalize RECORDS.jsonl MACHINE.json OUT.json
    eval_bench.py report RESULTS.json            # the markdown report on stdout

`gen` needs numpy, pyarrow and scikit-learn (its bundled data set); `pandas` also pandas and orjson
(json when orjson is missing); `evidently` Evidently 0.7.23 (its own virtualenv); the others the
standard library only (and benchlib.py, beside it).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time

import benchlib

MODEL = "breast_cancer_lr"
CLASSES = ["malignant", "benign"]  # its class_labels, in index order
CLASS_INDEX = {c: i for i, c in enumerate(CLASSES)}
FEATURES = [f"f{j}" for j in range(30)]
DAYS = 10
DAY0_US = 1_772_323_200_000_000  # 2026-03-01T00:00:00Z in microseconds
DAY_US = 86_400_000_000
MIN_LABELLED = 30  # serval eval's default --min-labelled
MIB = 1024 * 1024

# The data: breast-cancer rows drawn with replacement, each feature times (1 + NOISE * N(0, 1));
# the first SHIFTED features scaled by (1 + SHIFT * day) (a slow covariate drift); the label the
# drawn row's class, flipped with probability FLIP; labels for LABELLED of the keys, and a later
# import relabelling CORRECTED of those (the latest label of a key counts).
NOISE = 0.05
SHIFTED = 4
SHIFT = 0.01
FLIP = 0.03
LABELLED = 0.8
CORRECTED = 0.01
CHUNK = 500_000
GEN_VERSION = 1  # bump when the data changes: a cached log of another version is rebuilt


# --------------------------------------------------------------------------- data


def gen(rows: str, out_dir: str, seed: str = "20260301", parts: str = "1"):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_breast_cancer

    rows, seed, parts = int(rows), int(seed), int(parts)
    os.makedirs(os.path.join(out_dir, "x"), exist_ok=True)
    X, y = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(seed)
    # Evenly over DAYS UTC days, in time order: row i at DAY0 + i * step (an integer number of
    # microseconds, so every day holds the same number of rows when ROWS divides evenly).
    step = DAYS * DAY_US // rows
    schema = pa.schema([("key", pa.string()), *((f, pa.float32()) for f in FEATURES),
                        ("ts", pa.timestamp("us", tz="UTC"))])
    label_schema = pa.schema([("key", pa.string()), ("label", pa.int64())])
    t0 = time.monotonic()
    labelled = corrected = 0
    # The batch input in PARTS files of consecutive rows (x/part-000.parquet, ...), one `serval
    # batch` job each; the rows drawn are the same whatever PARTS.
    bounds = [rows * p // parts for p in range(parts + 1)]
    writers = [pq.ParquetWriter(os.path.join(out_dir, "x", f"part-{p:03d}.parquet"), schema)
               for p in range(parts)]
    with pq.ParquetWriter(os.path.join(out_dir, "labels-1.parquet"), label_schema) as l1, \
            pq.ParquetWriter(os.path.join(out_dir, "labels-2.parquet"), label_schema) as l2:
        for start in range(0, rows, CHUNK):
            n = min(CHUNK, rows - start)
            i = np.arange(start, start + n, dtype=np.int64)
            ts = DAY0_US + i * step
            day = (ts - DAY0_US) // DAY_US
            idx = rng.integers(0, len(y), n)
            x = X[idx] * (1.0 + NOISE * rng.standard_normal((n, X.shape[1])))
            x[:, :SHIFTED] *= (1.0 + SHIFT * day)[:, None]
            x = x.astype(np.float32)
            keys = pa.array([f"k{j}" for j in range(start, start + n)], pa.string())
            cols = [keys, *(pa.array(x[:, j]) for j in range(x.shape[1])),
                    pa.array(ts, pa.timestamp("us", tz="UTC"))]
            table = pa.Table.from_arrays(cols, schema=schema)
            for p in range(parts):
                lo, hi = max(bounds[p], start), min(bounds[p + 1], start + n)
                if lo < hi:
                    writers[p].write_table(table.slice(lo - start, hi - lo), row_group_size=131_072)
            truth = np.where(rng.random(n) < FLIP, 1 - y[idx], y[idx]).astype(np.int64)
            lab = np.sort(rng.permutation(n)[: int(round(n * LABELLED))])
            corr = np.sort(rng.choice(lab, int(round(len(lab) * CORRECTED)), replace=False))
            l1.write_table(pa.Table.from_arrays([keys.take(lab), pa.array(truth[lab])],
                                                schema=label_schema))
            l2.write_table(pa.Table.from_arrays([keys.take(corr), pa.array(1 - truth[corr])],
                                                schema=label_schema))
            labelled += len(lab)
            corrected += len(corr)
    for w in writers:
        w.close()
    # The reference: the 569 original rows, float32-exact text, keys of their own.
    with open(os.path.join(out_dir, "ref.csv"), "w") as f:
        f.write(",".join(["key", *FEATURES]) + "\n")
        for r, row in enumerate(X.astype(np.float32)):
            f.write(",".join([f"ref-{r}", *(repr(float(v)) for v in row)]) + "\n")
    doc = {"gen_version": GEN_VERSION, "rows": rows, "days": DAYS, "seed": seed, "step_us": step,
           "labelled_keys": labelled, "corrected_keys": corrected, "noise": NOISE,
           "shifted_features": SHIFTED, "shift_per_day": SHIFT, "label_flip": FLIP,
           "reference_rows": int(len(y)), "gen_s": round(time.monotonic() - t0, 2),
           "batch_input_files": parts,
           "x_parquet_bytes": sum(os.path.getsize(f) for f in glob.glob(os.path.join(out_dir, "x", "*.parquet")))}
    with open(os.path.join(out_dir, "gen.json"), "w") as f:
        json.dump(doc, f)
    print(f"  generated {rows:,} rows over {DAYS} days ({step} µs apart), {labelled:,} labelled "
          f"keys, {corrected:,} relabelled later, in {doc['gen_s']} s", flush=True)


# --------------------------------------------------------------------------- baselines


class Phases:
    """Wall-clock seconds per phase of a baseline, and a progress file (one line per step, so
    that a run killed at its timeout says how far it got)."""

    def __init__(self, progress: str | None):
        self.t0 = self.last = time.monotonic()
        self.phases: dict[str, float] = {}
        self.progress_path = progress
        if progress:
            open(progress, "w").close()
            self.progress("started")

    def mark(self, name: str):
        now = time.monotonic()
        self.phases[name] = round(self.phases.get(name, 0.0) + now - self.last, 3)
        self.last = now
        self.progress(f"{name} done")

    def progress(self, line: str):
        if self.progress_path:
            with open(self.progress_path, "a") as f:
                f.write(f"{time.monotonic() - self.t0:.1f}s {line}\n")


def json_loads():
    try:
        import orjson

        return orjson.loads, f"orjson {orjson.__version__}"
    except ImportError:
        return json.loads, "json (standard library)"


def read_joined(log: str, t: Phases, with_inputs: bool = False):
    """The way a pandas user reads the log: every Parquet file of the model's predictions and
    labels with pyarrow, the outputs' JSON parsed row by row, the latest label of each key
    joined on. One row per logged prediction: key, version, ts, day, pred, p0, p1, y (the class
    index, NaN when unlabelled) [, inputs]."""
    import numpy as np
    import pyarrow.parquet as pq

    loads, _ = json_loads()
    files = sorted(glob.glob(os.path.join(log, "predictions", f"model={MODEL}", "**", "*.parquet"),
                             recursive=True))
    columns = ["key", "version", "signature", "ts", "outputs"] + (["inputs"] if with_inputs else [])
    preds = pq.read_table(files, columns=columns).to_pandas()
    preds = preds[preds["signature"] == "serving_default"].drop(columns="signature")
    t.mark("read predictions")
    parsed = [loads(s) for s in preds["outputs"]]
    preds["pred"] = np.array([o["label"] for o in parsed], dtype=np.int64)
    probs = np.array([o["probabilities"] for o in parsed], dtype=np.float64)
    preds["p0"], preds["p1"] = probs[:, 0], probs[:, 1]
    del parsed, probs
    preds = preds.drop(columns="outputs")
    t.mark("parse outputs")
    lfiles = sorted(glob.glob(os.path.join(log, "labels", f"model={MODEL}", "**", "*.parquet"),
                              recursive=True))
    labels = pq.read_table(lfiles, columns=["key", "label", "label_value", "ts"]).to_pandas()
    # The latest label of a key; a label is a class name or a class index.
    labels = labels.sort_values("ts", kind="stable").drop_duplicates("key", keep="last")
    labels["y"] = labels["label"].map(CLASS_INDEX).fillna(labels["label_value"])
    df = preds.merge(labels[["key", "y"]], on="key", how="left")
    df["day"] = df["ts"].dt.floor("D")
    t.mark("read and join labels")
    return df


def classification(y, pred, probs) -> dict:
    """scikit-learn's metrics as `serval eval` reports them (classes: the union of the labels
    and predictions, in index order; ROC AUC of class 1 when both classes are among the labels;
    log loss over both classes)."""
    import numpy as np
    from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, log_loss,
                                 precision_recall_fscore_support, roc_auc_score)

    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    union = sorted(set(np.unique(y).tolist()) | set(np.unique(pred).tolist()))
    names = [CLASSES[i] for i in union]
    precision, recall, f1, _ = precision_recall_fscore_support(y, pred, labels=union, zero_division=0.0)
    out = {
        "task": "classification",
        "accuracy": float(accuracy_score(y, pred)),
        "precision": dict(zip(names, precision.tolist())),
        "recall": dict(zip(names, recall.tolist())),
        "f1": dict(zip(names, f1.tolist())),
        "macro_f1": float(f1_score(y, pred, labels=union, average="macro", zero_division=0.0)),
        "weighted_f1": float(f1_score(y, pred, labels=union, average="weighted", zero_division=0.0)),
        "confusion_matrix": {"classes": names,
                             "counts": confusion_matrix(y, pred, labels=union).tolist()},
    }
    if len(np.unique(y)) == 2:
        out["roc_auc"] = float(roc_auc_score(y == 1, probs[:, 1]))
    # float32 probabilities may exceed 1 by an ulp (1.0000001), which log_loss refuses: clipped
    # to [0, 1] in float64 first, as serval eval clips them.
    probs = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    out["log_loss"] = float(log_loss(y, probs, labels=[0, 1]))
    return out


def utc(ts) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def write_out(out: str, doc: dict):
    with open(out, "w") as f:
        json.dump(doc, f)


def pandas_baseline(log: str, out: str, progress: str | None):
    t = Phases(progress)
    import warnings

    import numpy as np  # noqa: F401
    import pandas as pd  # noqa: F401
    import sklearn.metrics  # noqa: F401

    # float32 probabilities rarely sum to 1 in float64; scikit-learn warns about it.
    warnings.filterwarnings("ignore", message="The y_prob values do not sum to one")
    t.mark("import")
    df = read_joined(log, t)
    windows = []
    for (version, day), g in df.groupby(["version", "day"], sort=True):
        lab = g[g["y"].notna()]
        w = {"window_start": utc(day), "version": int(version), "rows": int(len(g)),
             "labelled": int(len(lab))}
        if len(lab) >= MIN_LABELLED:
            w["metrics"] = classification(lab["y"].to_numpy(), lab["pred"].to_numpy(),
                                          lab[["p0", "p1"]].to_numpy())
        windows.append(w)
        t.progress(f"window {w['window_start']} v{version}")
    t.mark("metrics")
    windows.sort(key=lambda w: (w["window_start"], w["version"]))
    write_out(out, {"tool": "pandas", "rows": int(len(df)), "windows": windows,
                    "phases_s": t.phases, "json": json_loads()[1]})


def evidently_baseline(log: str, out: str, reference: str | None, progress: str | None):
    t = Phases(progress)
    import warnings

    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.presets import ClassificationPreset, DataDriftPreset

    warnings.filterwarnings("ignore")
    loads, _ = json_loads()
    t.mark("import")
    drift = reference is not None
    df = read_joined(log, t, with_inputs=drift)
    outputs = ["prediction", "prob_malignant", "prob_benign"]
    classification_def = DataDefinition(
        classification=[BinaryClassification(target="target", prediction_labels="prediction",
                                             prediction_probas="prob_benign", pos_label=1)],
        numerical_columns=["prob_malignant", "prob_benign"], categorical_columns=["target", "prediction"])
    drift_def = DataDefinition(numerical_columns=[*FEATURES, "prob_malignant", "prob_benign"],
                               categorical_columns=["prediction"])
    ref_ds = None
    if drift:
        # The reference with the model's outputs: `serval batch`'s output for ref.csv.
        ref = pq.read_table(reference).to_pandas()
        probs = np.array(ref["probabilities"].tolist(), dtype=np.float64)
        ref_df = pd.DataFrame({**{f: ref[f].astype(np.float64) for f in FEATURES},
                               "prediction": ref["label"].astype(np.int64),
                               "prob_malignant": probs[:, 0], "prob_benign": probs[:, 1]})
        ref_ds = Dataset.from_pandas(ref_df, data_definition=drift_def)
        t.mark("read reference")
    windows = []
    for (version, day), g in df.groupby(["version", "day"], sort=True):
        lab = g[g["y"].notna()]
        w = {"window_start": utc(day), "version": int(version), "rows": int(len(g)),
             "labelled": int(len(lab))}
        # Evidently's classification metrics refuse a target with missing values: the labelled
        # rows only (as `serval eval` scores them); drift over every row of the window.
        if len(lab) >= MIN_LABELLED:
            cur = pd.DataFrame({"target": lab["y"].astype(np.int64).to_numpy(),
                                "prediction": lab["pred"].to_numpy(),
                                "prob_malignant": lab["p0"].to_numpy(),
                                "prob_benign": lab["p1"].to_numpy()})
            snap = Report([ClassificationPreset()]).run(
                Dataset.from_pandas(cur, data_definition=classification_def), None)
            values = {m["metric_name"].split("(")[0]: m["value"] for m in snap.dict()["metrics"]}
            w["metrics"] = {"accuracy": values.get("Accuracy"), "f1": values.get("F1Score"),
                            "roc_auc": values.get("RocAuc"), "log_loss": values.get("LogLoss")}
        if drift:
            feats = np.array([loads(s)["features"] for s in g["inputs"]], dtype=np.float64)
            cur = pd.DataFrame({**{f: feats[:, j] for j, f in enumerate(FEATURES)},
                                "prediction": g["pred"].to_numpy(), "prob_malignant": g["p0"].to_numpy(),
                                "prob_benign": g["p1"].to_numpy()})
            del feats
            snap = Report([DataDriftPreset(columns=[*FEATURES, *outputs])]).run(
                Dataset.from_pandas(cur, data_definition=drift_def), ref_ds)
            counted = next(m["value"] for m in snap.dict()["metrics"]
                           if m["metric_name"].startswith("DriftedColumnsCount"))
            w["drift"] = {"columns": len(FEATURES) + len(outputs), "drifted": int(counted["count"]),
                          "share": counted["share"]}
        windows.append(w)
        t.progress(f"window {w['window_start']} v{version}")
    t.mark("reports")
    import evidently

    windows.sort(key=lambda w: (w["window_start"], w["version"]))
    write_out(out, {"tool": "evidently", "drift": drift, "rows": int(len(df)), "windows": windows,
                    "phases_s": t.phases, "json": json_loads()[1], "evidently": evidently.__version__})


# --------------------------------------------------------------------------- measuring


def children(pid: int) -> list[int]:
    """Every descendant of pid (through /proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in glob.glob(f"/proc/{p}/task/*/children"):
            try:
                with open(task) as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def parse_time_v(path: str) -> dict:
    """GNU time -v's report: peak RSS, CPU seconds, exit status or signal."""
    doc = {}
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return doc
    for line in text.splitlines():
        key, _, value = line.strip().rpartition(": ")
        if key == "Maximum resident set size (kbytes)":
            doc["peak_rss_mib"] = round(int(value) / 1024, 1)
        elif key == "User time (seconds)":
            doc["user_s"] = float(value)
        elif key == "System time (seconds)":
            doc["sys_s"] = float(value)
        elif key == "Exit status":
            doc["exit_status"] = int(value)
        elif key == "Elapsed (wall clock) time (h:mm:ss or m:ss)":
            doc["time_elapsed"] = value
        elif line.strip().startswith("Command terminated by signal"):
            doc["signal"] = int(line.split()[-1])
    return doc


def run(out: str, stdout: str, stderr: str, timeout: float, mem_cap_mib: float, progress: str | None,
        cmd: list[str]):
    """Runs CMD under `/usr/bin/time -v` (the peak RSS is its "Maximum resident set size": the
    kernel's high-water mark of the process, no sampling). Polls /proc every 0.1 s only to enforce
    the timeout and the memory cap (RSS of CMD and its children): past either, CMD is killed with
    SIGKILL, and time still reports what it used."""
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    timefile = out + ".time"
    status = "ok"
    polled = 0
    start = time.monotonic()
    with open(stdout, "wb") as so, open(stderr, "wb") as se:
        p = subprocess.Popen(["/usr/bin/time", "-v", "-o", timefile, *cmd], stdout=so, stderr=se)
        try:
            while True:
                try:
                    p.wait(timeout=0.1)
                    break
                except subprocess.TimeoutExpired:
                    pass
                kids = children(p.pid)
                rss = sum(rss_kib(k) for k in kids) / 1024
                polled = max(polled, rss)
                elapsed = time.monotonic() - start
                if status == "ok" and elapsed > timeout:
                    status = "timeout"
                elif status == "ok" and mem_cap_mib and rss > mem_cap_mib:
                    status = "memory-cap"
                if status != "ok":
                    for k in kids:
                        try:
                            os.kill(k, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
        except BaseException:
            for k in children(p.pid):
                try:
                    os.kill(k, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            p.kill()
            raise
    seconds = time.monotonic() - start
    rec = {"command": cmd, "seconds": round(seconds, 3), "polled_peak_rss_mib": round(polled, 1),
           "timeout_s": timeout, "mem_cap_mib": mem_cap_mib, **parse_time_v(timefile)}
    if status == "ok" and rec.get("signal"):
        # Not killed by us: SIGKILL from outside is most likely the kernel's OOM killer.
        status = "oom-killed" if rec["signal"] == signal.SIGKILL else f"signal {rec['signal']}"
    elif status == "ok" and rec.get("exit_status", p.returncode) != 0:
        status = f"exit {rec.get('exit_status', p.returncode)}"
    rec["status"] = status
    if progress and os.path.exists(progress):
        with open(progress) as f:
            lines = [line.strip() for line in f if line.strip()]
        rec["progress"] = lines
    with open(out, "w") as f:
        json.dump(rec, f)
    cpu = rec.get("user_s", 0) + rec.get("sys_s", 0)
    print(f"  {status}: {seconds:.2f} s, {cpu:.2f} CPU s, peak RSS {rec.get('peak_rss_mib')} MiB"
          + (f" (last step: {rec['progress'][-1]})" if status != "ok" and rec.get("progress") else ""),
          flush=True)
    if status != "ok":
        try:
            with open(stderr, errors="replace") as f:
                tail = f.read()[-2000:]
        except OSError:
            tail = ""
        if tail.strip():
            print("  stderr (tail):\n" + "\n".join("    " + x for x in tail.splitlines()), flush=True)
            rec["stderr_tail"] = tail[-600:]
            with open(out, "w") as f:
                json.dump(rec, f)
    return 0 if status == "ok" else 3


# --------------------------------------------------------------------------- checking


def windows_of(path: str) -> list[dict]:
    doc = benchlib.load_json(path)
    return doc if isinstance(doc, list) else doc["windows"]


def check(serval_path: str, pandas_path: str, out: str, evidently: list[str],
          serval_drift: str | None = None):
    """(a) and (c) must hold the same windows (start, version, rows, labelled) and the same
    accuracy to 1e-9; every other metric's largest difference is reported (scikit-learn's own
    tolerances: 1e-9, ROC AUC and log loss 1e-6 as the float32 probabilities are read back from
    JSON text)."""
    serval = {(w["window_start"], w["version"]): w for w in windows_of(serval_path)}
    pandas = {(w["window_start"], w["version"]): w for w in windows_of(pandas_path)}
    problems = []
    if set(serval) != set(pandas):
        problems.append(f"windows differ: serval only {sorted(set(serval) - set(pandas))}, "
                        f"pandas only {sorted(set(pandas) - set(serval))}")
    diffs: dict[str, float] = {}
    per_window = []

    def diff(name, a, b):
        if isinstance(a, dict) and isinstance(b, dict):
            if set(a) != set(b):
                problems.append(f"{name}: keys {sorted(a)} != {sorted(b)}")
            for k in set(a) & set(b):
                diff(f"{name}.{k}", a[k], b[k])
        elif isinstance(a, list) and isinstance(b, list):
            if a != b:
                problems.append(f"{name}: {a} != {b}")
        elif isinstance(a, (int, float)) and isinstance(b, (int, float)):
            metric = name.split(".")[0] if "." in name else name
            diffs[metric] = max(diffs.get(metric, 0.0), abs(float(a) - float(b)))

    for key in sorted(set(serval) & set(pandas)):
        s, p = serval[key], pandas[key]
        if (s["rows"], s["labelled"]) != (p["rows"], p["labelled"]):
            problems.append(f"{key}: rows/labelled {s['rows']}/{s['labelled']} != {p['rows']}/{p['labelled']}")
        sm, pm = s.get("metrics") or {}, p.get("metrics") or {}
        sa, pa_ = sm.get("accuracy"), pm.get("accuracy")
        per_window.append({"window_start": key[0], "version": key[1], "rows": s["rows"],
                           "labelled": s["labelled"], "serval_accuracy": sa, "pandas_accuracy": pa_,
                           "abs_diff": None if sa is None or pa_ is None else abs(sa - pa_)})
        if (sa is None) != (pa_ is None):
            problems.append(f"{key}: accuracy {sa} vs {pa_}")
        for k in ("precision", "recall", "f1", "macro_f1", "weighted_f1", "confusion_matrix",
                  "roc_auc", "log_loss", "accuracy"):
            if k in sm or k in pm:
                if k not in sm or k not in pm:
                    problems.append(f"{key}: {k} in one only")
                else:
                    diff(k, sm[k], pm[k])
    tolerance = {"roc_auc": 1e-6, "log_loss": 1e-6}
    for metric, d in diffs.items():
        if d > tolerance.get(metric, 1e-9):
            problems.append(f"{metric}: largest difference {d:.3g} > {tolerance.get(metric, 1e-9):g}")
    accuracy_diff = max((w["abs_diff"] for w in per_window if w["abs_diff"] is not None), default=None)
    agree = not problems and accuracy_diff is not None and accuracy_diff <= 1e-9
    evidently_acc = {}
    for path in evidently:
        try:
            doc = benchlib.load_json(path)
        except (OSError, ValueError):
            continue
        name = "evidently_drift" if doc.get("drift") else "evidently"
        e = {(w["window_start"], w["version"]): (w.get("metrics") or {}).get("accuracy")
             for w in doc["windows"]}
        d = [abs(e[k] - serval[k]["metrics"]["accuracy"]) for k in e
             if k in serval and e[k] is not None and (serval[k].get("metrics") or {}).get("accuracy") is not None]
        evidently_acc[name] = {"windows": len(e), "accuracy_max_abs_diff": max(d) if d else None}
    # Drift: how many of the 33 columns (30 features, label, 2 probabilities) each window finds
    # drifted, serval eval with the profile against Evidently's DataDriftPreset (informational:
    # Evidently draws no sample of the reference, serval's profile keeps up to 5000 values).
    drifted = {}
    if serval_drift and os.path.exists(serval_drift):
        try:
            sd = {(w["window_start"], w["version"]): sum(bool(c.get("drifted")) for c in (w.get("drift") or {}).values())
                  for w in windows_of(serval_drift)}
            drifted["serval"] = [sd[k] for k in sorted(sd)]
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
    for path in evidently:
        try:
            doc = benchlib.load_json(path)
        except (OSError, ValueError):
            continue
        if doc.get("drift"):
            drifted["evidently"] = [(w.get("drift") or {}).get("drifted") for w in doc["windows"]]
    doc = {"agree": agree, "accuracy_max_abs_diff": accuracy_diff, "metric_max_abs_diff": diffs,
           "problems": problems, "windows": per_window, "evidently": evidently_acc,
           "drifted_columns": drifted}
    with open(out, "w") as f:
        json.dump(doc, f)
    print("  accuracy per window, serval eval (a) vs pandas + scikit-learn (c):")
    print("    window_start          version       rows   labelled  serval                pandas                |diff|")
    for w in per_window:
        d = "-" if w["abs_diff"] is None else f"{w['abs_diff']:.1e}"
        print(f"    {w['window_start']}  {w['version']:>7} {w['rows']:>10,} {w['labelled']:>10,}  "
              f"{w['serval_accuracy']!r:<20}  {w['pandas_accuracy']!r:<20}  {d}")
    print(f"  largest differences: " + ", ".join(f"{k} {v:.2g}" for k, v in sorted(diffs.items())))
    for name, e in evidently_acc.items():
        print(f"  {name}: {e['windows']} windows, accuracy vs serval largest difference "
              f"{e['accuracy_max_abs_diff']}")
    for name, counts in drifted.items():
        print(f"  drifted columns per window, {name}: {counts}")
    print(f"  agree (accuracy to 1e-9, the rest to scikit-learn's tolerances): {agree}"
          + "".join(f"\n    problem: {p}" for p in problems))
    return 0 if agree else 1


# --------------------------------------------------------------------------- records


def versions():
    out = {"python": platform.python_version(), "executable": sys.executable}
    for mod in ("numpy", "pandas", "pyarrow", "sklearn", "scipy", "orjson", "evidently"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            pass
    print(json.dumps(out))


def machine(out: str, pairs: list[str]):
    doc = {
        "date": benchlib.now(),
        "machine": benchlib.machine(),
        "versions": {
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


def add(records: str, path: str, pairs: list[str]):
    """One measured run (`run`'s record) with the key=value pairs (tool, variant, repeat, load1,
    and the output it produced: windows counted from it)."""
    rec = benchlib.parse_meta(pairs)
    rec.update(kind="run", **benchlib.load_json(path))
    result = rec.get("result")
    rec["windows"] = None
    rec["rows"] = None
    if rec["status"] == "ok" and result:
        try:
            windows = windows_of(result)
            rec["windows"] = len(windows)
            rec["rows"] = sum(w["rows"] for w in windows)
            doc = benchlib.load_json(result)
            if isinstance(doc, dict):
                rec["phases_s"] = doc.get("phases_s")
        except (OSError, ValueError, KeyError, TypeError) as e:
            rec["status"] = f"unreadable output: {e}"
    benchlib.append_record(records, rec)


def finalize(records: str, machine_path: str, out: str):
    doc = benchlib.load_json(machine_path)
    doc["records"] = benchlib.load_records(records)
    doc["load_at_end"] = benchlib.loadavg()
    benchlib.write_results(doc, out)


# --------------------------------------------------------------------------- report

# (tool, variant) in table order: what each measures, and the kind of job it is compared within.
ROWS = [
    ("serval", "metrics", "serval eval, metrics (no profile)", "metrics"),
    ("serval", "drift", "serval eval, metrics + drift (profile)", "drift"),
    ("serval", "metrics-first-day", "serval eval, metrics, first day only (--to)", None),
    ("pandas", "metrics", "pandas + scikit-learn, metrics", "metrics"),
    ("evidently", "metrics", "Evidently ClassificationPreset", "metrics"),
    ("evidently", "drift", "Evidently ClassificationPreset + DataDriftPreset", "drift"),
]


def summarize(runs: list[dict]) -> dict | None:
    """A (tool, variant)'s runs: the median seconds of the successful ones, the largest peak RSS."""
    if not runs:
        return None
    ok = [r for r in runs if r["status"] == "ok"]
    use = ok or runs
    return {
        "status": "ok" if ok else use[-1]["status"],
        "n": len(ok),
        "seconds": statistics.median(r["seconds"] for r in use),
        "seconds_all": [r["seconds"] for r in use],
        "cpu_s": statistics.median(r.get("user_s", 0) + r.get("sys_s", 0) for r in use),
        "peak_rss_mib": max((r.get("peak_rss_mib") or 0) for r in use),
        "windows": use[-1].get("windows"),
        "rows": use[-1].get("rows"),
        "progress": (use[-1].get("progress") or [None])[-1],
        "command": use[-1]["command"],
        "phases_s": use[-1].get("phases_s"),
        "timeout_s": use[-1].get("timeout_s"),
        "stderr_tail": use[-1].get("stderr_tail"),
    }


def fmt_s(x):
    return "–" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")


def fmt_x(x):
    return "–" if x is None else f"{x:.2f}×"


def report(path: str):
    doc = benchlib.load_json(path)
    recs = [r for r in doc["records"] if r["kind"] == "run"]
    m, v = doc["machine"], doc["versions"]
    rows_n = doc["rows"]
    summary = {(t, var): summarize([r for r in recs if r["tool"] == t and r["variant"] == var])
               for t, var, _, _ in ROWS}
    fastest = {}
    for t, var, _, kind in ROWS:
        s = summary[(t, var)]
        if t != "serval" and kind and s and s["status"] == "ok":
            fastest[kind] = min(fastest.get(kind, math.inf), s["seconds"])
    gen = doc.get("data", {})
    print(f"`serval eval` over a prediction log of {rows_n:,} `{MODEL}` predictions (30 float features) "
          f"spread evenly over {DAYS} UTC days, {gen.get('labelled_keys', 0):,} keys labelled "
          f"({LABELLED:.0%}; {gen.get('corrected_keys', 0):,} of them relabelled by a later import), "
          "windows of 1 day, against the same windows computed with pandas + scikit-learn and with "
          "Evidently's Report.\n")
    print(f"- machine: nproc {m['nproc']}, {m['cpu']}, {m['mem_gib']} GiB, load average "
          f"{' '.join(m['load_at_start'])} at start, {' '.join(doc.get('load_at_end', []))} at end")
    print(f"- source: {v['source']}; serval: {doc.get('serval')}")
    for name in ("python_pandas", "python_evidently"):
        pv = doc.get(name) or {}
        if pv:
            print(f"- {name.split('_')[1]} Python: {pv.get('python')} ({pv.get('executable')}): "
                  + ", ".join(f"{k} {pv[k]}" for k in ("numpy", "pandas", "pyarrow", "sklearn", "scipy",
                                                       "orjson", "evidently") if k in pv))
    print(f"- command: `{doc['command']}`" + (" (**smoke run: figures meaningless at this size**)"
                                               if doc.get("quick") else ""))
    if doc.get("debug_binary"):
        print("- **the serval binary is a debug build: its figures mean nothing**")
    print(f"- log: {doc.get('log_bytes', 0) / MIB:,.0f} MiB of Parquet in {doc.get('log_files')} "
          f"prediction files ({doc.get('log')}); reused: {doc.get('log_reused')}")
    print()
    print("| tool | rows | windows | seconds | rows/s | CPU s | peak RSS MiB | speed-up vs the fastest Python |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t, var, label, kind in ROWS:
        s = summary[(t, var)]
        if not s:
            continue
        rows = s["rows"] or rows_n
        if s["status"] != "ok":
            how = (f"**{s['status']}** after {fmt_s(s['seconds'])} s"
                   + (f" (last step: {s['progress']})" if s.get("progress") else ""))
            print(f"| {label} | {rows:,} | – | {how} | – | {fmt_s(s['cpu_s'])} | "
                  f"{s['peak_rss_mib']:,.0f} | – |")
            continue
        best = fastest.get(kind) if kind else None
        speed = best / s["seconds"] if best and s["seconds"] else None
        reps = f" (median of {s['n']}: {', '.join(fmt_s(x) for x in s['seconds_all'])})" if s["n"] > 1 else ""
        print(f"| {label} | {rows:,} | {s['windows']} | {fmt_s(s['seconds'])}{reps} | "
              f"{benchlib.fmt_n(rows / s['seconds'])} | {fmt_s(s['cpu_s'])} | {s['peak_rss_mib']:,.0f} | "
              f"{fmt_x(speed)} |")
    print()
    print("Seconds: wall clock of the whole process (start-up, imports, reading the Parquet, "
          "joining, computing, writing the result), after the log's files were read once into the "
          "page cache. Peak RSS: `/usr/bin/time -v`'s maximum resident set size (the kernel's "
          "high-water mark of the process). CPU s: user + system. Speed-up vs the fastest Python: "
          "the seconds of the fastest Python tool doing the same job (metrics: pandas + "
          "scikit-learn or Evidently's ClassificationPreset; metrics + drift: Evidently with "
          "DataDriftPreset) over this row's seconds. The first-day row reads the same log with "
          "`--to`, one tenth of the rows: its peak RSS against the full run's shows whether "
          "memory grows with the rows. Not quite the same work: serval eval also computes each "
          "window's ECE and its label-free estimates (CBPE: accuracy, macro F1, ROC AUC from every "
          "row's scores), which the baselines do not; and its drift tests take a sample of at most "
          "100,000 values per column and window (`WINDOW_SAMPLE`), Evidently every row.")
    print()
    failed = [(label, summary[(t, var)]) for t, var, label, _ in ROWS
              if summary[(t, var)] and summary[(t, var)]["status"] != "ok"]
    if failed:
        print("Runs that did not finish:\n")
    for label, s in failed:
        tail = (s.get("stderr_tail") or "").strip().splitlines()[-1:]
        print(f"- **{label}: {s['status']}** after {fmt_s(s['seconds'])} s, peak RSS "
              f"{s['peak_rss_mib']:,.0f} MiB" + (f"; last step: {s['progress']}" if s.get("progress") else "")
              + (f"; stderr: `{tail[0].strip()}`" if tail else ""))
    if failed:
        print()
    sm, sd, s1 = summary[("serval", "metrics")], summary[("serval", "drift")], summary[("serval", "metrics-first-day")]
    goal = []
    if sm and sm["status"] == "ok" and "metrics" in fastest:
        x = fastest["metrics"] / sm["seconds"]
        goal.append(f"metrics: {x:.2f}× the faster Python ({'met' if x >= 5 else 'not met'})")
    if sd and sd["status"] == "ok" and "drift" in fastest:
        x = fastest["drift"] / sd["seconds"]
        goal.append(f"metrics + drift: {x:.2f}× Evidently ({'met' if x >= 5 else 'not met'})")
    if sm and s1 and sm["status"] == s1["status"] == "ok":
        goal.append(f"memory: peak RSS {s1['peak_rss_mib']:,.0f} MiB over {s1['rows'] or rows_n // DAYS:,} "
                    f"rows, {sm['peak_rss_mib']:,.0f} MiB over {rows_n:,} "
                    f"({sm['peak_rss_mib'] / s1['peak_rss_mib']:.2f}× for {DAYS}× the rows)")
    if goal:
        print("Goal (≥ 5× faster than the faster of them, memory flat): " + "; ".join(goal) + ".\n")
    c = doc.get("check") or {}
    if c and c.get("agree") is None:
        print("Same computation: **not checked**: " + "; ".join(c.get("problems", [])) + ".\n")
    elif c:
        print(f"Same computation: serval eval (metrics) and pandas + scikit-learn agree on every "
              f"window's accuracy to 1e-9: **{'yes' if c.get('agree') else 'NO'}** (largest "
              f"difference {c.get('accuracy_max_abs_diff')}); largest differences of the other "
              "metrics: " + ", ".join(f"{k} {d:.2g}" for k, d in sorted((c.get("metric_max_abs_diff") or {}).items()))
              + "." + "".join(f"\n- problem: {p}" for p in c.get("problems", [])))
        for name, e in (c.get("evidently") or {}).items():
            print(f"{name}: accuracy against serval's, largest difference {e.get('accuracy_max_abs_diff')} "
                  f"over {e.get('windows')} windows.")
        for name, counts in (c.get("drifted_columns") or {}).items():
            print(f"Drifted columns per window (of 33), {name}: {counts}.")
        print()
    print("Commands (as run, paths of this run):\n")
    for t, var, label, _ in ROWS:
        s = summary[(t, var)]
        if s:
            print(f"- {label}: `{' '.join(s['command'])}`")
    phases = [(label, s["phases_s"]) for (t, var, label, _), s in
              ((row, summary[row[:2]]) for row in ROWS) if s and s.get("phases_s")]
    if phases:
        print("\nWhere the Python baselines spend their time (seconds, from inside the script):\n")
        for label, ph in phases:
            print(f"- {label}: " + ", ".join(f"{k} {x:.2f}" for k, x in ph.items()))
    build = doc.get("build") or {}
    if build:
        print(f"\nBuilding the log ({'reused from an earlier run' if doc.get('log_reused') else 'this run'}): "
              + ", ".join(f"{k} {x}" for k, x in build.items()))


# --------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("gen")
    p.add_argument("rows")
    p.add_argument("dir")
    p.add_argument("--seed", default="20260301")
    p.add_argument("--parts", default="1")
    p = sub.add_parser("pandas")
    p.add_argument("log")
    p.add_argument("out")
    p.add_argument("--progress")
    p = sub.add_parser("evidently")
    p.add_argument("log")
    p.add_argument("out")
    p.add_argument("--drift", metavar="REF.parquet")
    p.add_argument("--progress")
    p = sub.add_parser("run")
    p.add_argument("--out", required=True)
    p.add_argument("--stdout", required=True)
    p.add_argument("--stderr", required=True)
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--mem-cap", type=float, default=0.0)
    p.add_argument("--progress")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p = sub.add_parser("check")
    p.add_argument("serval")
    p.add_argument("pandas")
    p.add_argument("out")
    p.add_argument("--evidently", action="append", default=[])
    p.add_argument("--serval-drift")
    sub.add_parser("versions")
    p = sub.add_parser("machine")
    p.add_argument("out")
    p.add_argument("meta", nargs="*")
    p = sub.add_parser("set")
    p.add_argument("path")
    p.add_argument("key")
    p.add_argument("value_json")
    p = sub.add_parser("add")
    p.add_argument("records")
    p.add_argument("path")
    p.add_argument("meta", nargs="*")
    p = sub.add_parser("finalize")
    p.add_argument("records")
    p.add_argument("machine")
    p.add_argument("out")
    p = sub.add_parser("report")
    p.add_argument("results")
    a = ap.parse_args(argv)
    if a.cmd == "gen":
        gen(a.rows, a.dir, a.seed, a.parts)
    elif a.cmd == "pandas":
        pandas_baseline(a.log, a.out, a.progress)
    elif a.cmd == "evidently":
        evidently_baseline(a.log, a.out, a.drift, a.progress)
    elif a.cmd == "run":
        return run(a.out, a.stdout, a.stderr, a.timeout, a.mem_cap, a.progress, a.command)
    elif a.cmd == "check":
        return check(a.serval, a.pandas, a.out, a.evidently, a.serval_drift)
    elif a.cmd == "versions":
        versions()
    elif a.cmd == "machine":
        machine(a.out, a.meta)
    elif a.cmd == "set":
        set_field(a.path, a.key, a.value_json)
    elif a.cmd == "add":
        add(a.records, a.path, a.meta)
    elif a.cmd == "finalize":
        finalize(a.records, a.machine, a.out)
    elif a.cmd == "report":
        report(a.results)
    else:
        ap.error(f"unknown command {a.cmd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
