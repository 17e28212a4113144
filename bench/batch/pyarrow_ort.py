#!/usr/bin/env python3
"""Batch prediction the way a Python user would write it: pyarrow + ONNX Runtime, one process per core.

    pyarrow_ort.py --model examples/models/breast_cancer_lr/1/model.onnx \\
        --input target/bench-batch/data --output /tmp/out --processes 2

The input (a file or a directory; Parquet, CSV or JSON Lines, from the extension or --format) is
split into work units, Parquet row groups or whole CSV/JSONL files, and the units are spread over
--processes worker processes (spawned, so no pyarrow or ONNX Runtime state crosses a fork), the
largest first onto the least loaded. Each worker loads the model once (ONNX Runtime,
intra_op_num_threads=1), reads its units as record batches of --batch-rows rows with the pyarrow
dataset API, stacks the feature columns (every column but --key, in file order, as the example
models take them) into a float32 [n, features] array, runs the model and appends the key and
every model output to its own Parquet file, <output>/part-<worker>.parquet. An output of shape
[n] becomes a column, [n, k] a fixed_size_list<k> column.

Prints one JSON line: rows, seconds (wall time from start to the last worker's exit, model
loading and process start included), rows_per_s, processes, files (written).
"""

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import time

FORMATS = {"parquet": "parquet", "pq": "parquet", "csv": "csv", "jsonl": "json", "ndjson": "json", "json": "json"}


def input_format(path, given):
    if given:
        return FORMATS[given]
    if os.path.isdir(path):
        for root, _, files in os.walk(path):
            for f in sorted(files):
                if f[0] not in "._" and f.rsplit(".", 1)[-1].lower() in FORMATS:
                    return FORMATS[f.rsplit(".", 1)[-1].lower()]
    elif path.rsplit(".", 1)[-1].lower() in FORMATS:
        return FORMATS[path.rsplit(".", 1)[-1].lower()]
    sys.exit(f"cannot tell the format of {path}; pass --format parquet|csv|jsonl")


def work_units(path, fmt):
    """[(rows or size estimate, file, row group ids or None)] covering the whole input."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(path, format=fmt)
    units = []
    for frag in dataset.get_fragments():
        if fmt == "parquet":
            for rg in frag.split_by_row_group():
                ids = [g.id for g in rg.row_groups]
                units.append((sum(g.num_rows for g in rg.row_groups), frag.path, ids))
        else:
            units.append((os.path.getsize(frag.path), frag.path, None))
    return dataset.schema, units


def assign(units, n):
    """Largest first onto the least loaded worker."""
    shares = [[] for _ in range(n)]
    load = [0] * n
    for unit in sorted(units, key=lambda u: -u[0]):
        i = load.index(min(load))
        shares[i].append(unit)
        load[i] += unit[0]
    return shares


def worker(index, model, fmt, key, features, units, output, batch_rows):
    import numpy as np
    import onnxruntime as ort
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    # One core per process: no Arrow or ONNX Runtime thread pools of their own.
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    input_name = sess.get_inputs()[0].name
    output_names = [o.name for o in sess.get_outputs()]
    file_format = {"parquet": ds.ParquetFileFormat, "csv": ds.CsvFileFormat, "json": ds.JsonFileFormat}[fmt]()
    local = pafs.LocalFileSystem()
    path = os.path.join(output, f"part-{index:05d}.parquet")
    writer = None
    rows = 0
    x = np.empty((batch_rows, len(features)), dtype=np.float32)
    for _, file, row_groups in units:
        frag = (
            file_format.make_fragment(file, local, row_groups=row_groups)
            if row_groups is not None
            else file_format.make_fragment(file, local)
        )
        for batch in frag.to_batches(columns=[key] + features, batch_size=batch_rows, use_threads=False):
            n = batch.num_rows
            if n == 0:
                continue
            if n > x.shape[0]:
                x = np.empty((n, len(features)), dtype=np.float32)
            for j in range(len(features)):
                x[:n, j] = batch.column(j + 1).to_numpy(zero_copy_only=False)
            results = sess.run(output_names, {input_name: x[:n]})
            cols = [batch.column(0)]
            for r in results:
                if r.ndim == 1:
                    cols.append(pa.array(r))
                else:
                    cols.append(pa.FixedSizeListArray.from_arrays(pa.array(r.reshape(-1)), r.shape[1]))
            out = pa.RecordBatch.from_arrays(cols, names=[key] + output_names)
            if writer is None:
                writer = pq.ParquetWriter(path, out.schema, compression="snappy")
            writer.write_batch(out)
            rows += n
    if writer is not None:
        writer.close()
    return rows, 1 if writer is not None else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="path to model.onnx")
    p.add_argument("--input", required=True, help="a file or a directory")
    p.add_argument("--output", required=True, help="directory for part-<worker>.parquet")
    p.add_argument("--processes", type=int, default=os.cpu_count())
    p.add_argument("--batch-rows", type=int, default=65536)
    p.add_argument("--key", default="key")
    p.add_argument("--format", choices=sorted(FORMATS), help="input format (default: from the extension)")
    p.add_argument("--overwrite", action="store_true", help="empty a non-empty --output first")
    args = p.parse_args()

    started = time.perf_counter()
    fmt = input_format(args.input, args.format)
    schema, units = work_units(args.input, fmt)
    if args.key not in schema.names:
        sys.exit(f"the input has no column {args.key!r} (columns: {schema.names})")
    features = [n for n in schema.names if n != args.key]
    if os.path.isdir(args.output) and os.listdir(args.output):
        if not args.overwrite:
            sys.exit(f"{args.output} is not empty; pass --overwrite to replace it")
        shutil.rmtree(args.output)
    os.makedirs(args.output, exist_ok=True)

    shares = [s for s in assign(units, max(1, args.processes)) if s]
    ctx = mp.get_context("spawn")
    with ctx.Pool(len(shares)) as pool:
        jobs = [
            pool.apply_async(worker, (i, args.model, fmt, args.key, features, s, args.output, args.batch_rows))
            for i, s in enumerate(shares)
        ]
        done = [j.get() for j in jobs]
    seconds = time.perf_counter() - started
    rows = sum(r for r, _ in done)
    print(json.dumps({
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds, 1) if seconds else None,
        "processes": len(shares),
        "files": sum(f for _, f in done),
    }))


if __name__ == "__main__":
    main()
