#!/usr/bin/env python3
"""Deterministic input data for bench/batch.sh: breast-cancer-like rows, any number of them.

    make_data.py --rows 10000000 --out target/bench-batch/data --files 8
    make_data.py --rows 200000 --out rows.csv --format csv

Each row is a string `key` ("row-000000123") and the 30 features of scikit-learn's bundled
breast cancer data set, named as `load_breast_cancer().feature_names` ("mean radius", ...), in
that order (the order the example models take them in). Row values are a uniformly sampled
data set row plus Gaussian noise of 5% of each feature's standard deviation, clipped at 0
(every feature is non-negative); float32 in Parquet, their shortest float32 text in CSV and JSONL.

Rows are made in fixed chunks of CHUNK_ROWS, chunk c from numpy's generator seeded with
(seed, c), so the same --rows and --seed give the same rows whatever the format and number of
files, and memory stays bounded (a few hundred MiB) whatever --rows is. With --files K > 1 (or an
--out without a file extension) --out is a directory of part-00000.<ext> ... part-<K-1>.<ext>,
the rows split into K contiguous ranges; Parquet row groups hold --row-group-rows rows (a file's
last one may hold fewer).
Prints one JSON line: rows, files, bytes, seconds.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

CHUNK_ROWS = 1 << 17
NOISE = 0.05
KEY_DIGITS = 9
EXTENSIONS = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}


def feature_data():
    # Imported here so the test suite can use json_lines() without scikit-learn installed.
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    base = np.ascontiguousarray(data.data, dtype=np.float32)
    scale = (base.std(axis=0, dtype=np.float64) * NOISE).astype(np.float32)
    return [str(n) for n in data.feature_names], base, scale


def make_chunk(seed, chunk, start, n, names, base, scale):
    """Rows [start, start + n) of chunk `chunk` as an Arrow table (key + float32 features)."""
    # Separate streams for rows and noise: a chunk's first m rows are the same whatever its length.
    idx = np.random.default_rng([seed, chunk, 0]).integers(0, base.shape[0], size=n)
    noise = np.random.default_rng([seed, chunk, 1]).standard_normal((n, base.shape[1]), dtype=np.float32)
    x = base[idx]
    x += noise * scale
    np.maximum(x, 0, out=x)
    # Column-major so each feature column is one contiguous slice (no copy into Arrow).
    x = np.asfortranarray(x)
    ids = pa.array(np.arange(start, start + n, dtype=np.int64)).cast(pa.string())
    keys = pc.binary_join_element_wise("row-", pc.utf8_lpad(ids, KEY_DIGITS, "0"), "")
    cols = [keys] + [pa.array(x[:, j]) for j in range(x.shape[1])]
    return pa.table(cols, names=["key"] + names)


def chunks(rows, seed, names, base, scale):
    for c, start in enumerate(range(0, rows, CHUNK_ROWS)):
        yield make_chunk(seed, c, start, min(CHUNK_ROWS, rows - start), names, base, scale)


def json_lines(table):
    """One JSON object per row, newline included, keys in column order, built with Arrow string
    kernels: floats as the shortest text that reads back to the same float. String values are
    quoted, not escaped (keys here are "row-<digits>"), and nulls are not supported."""
    parts = []
    for i, name in enumerate(table.column_names):
        col = table.column(name)
        if pa.types.is_string(col.type):
            text = pc.binary_join_element_wise('"', col, '"', "")
        else:
            text = col.cast(pa.string())
        parts += [("{" if i == 0 else ",") + json.dumps(name) + ":", text]
    parts.append("}\n")
    return pc.binary_join_element_wise(*parts, "")


class JsonlWriter:
    """JSON Lines built with Arrow string kernels: one object per row, keys in column order."""

    def __init__(self, path, schema):
        self.f = open(path, "wb")
        self.names = schema.names

    def write_table(self, table):
        lines = json_lines(table.select(self.names))
        for chunk in lines.chunks:
            offsets = chunk.buffers()[1]
            lo, hi = np.frombuffer(offsets, dtype=np.int32)[[chunk.offset, chunk.offset + len(chunk)]]
            self.f.write(memoryview(chunk.buffers()[2])[lo:hi])

    def close(self):
        self.f.close()


class ParquetWriter:
    """Row groups of exactly `row_group_rows` rows (the last one of a file may be shorter):
    pyarrow writes at least one row group per write_table call, so chunks are buffered."""

    def __init__(self, path, schema, row_group_rows):
        # Snappy as Spark writes; no dictionaries: they never pay off on unique keys and noisy
        # floats, and trying them makes writing ~10x slower and the files ~50% larger.
        self.w = pq.ParquetWriter(path, schema, compression="snappy", use_dictionary=False)
        self.rows = row_group_rows
        self.pending = []
        self.pending_rows = 0

    def write_table(self, table):
        self.pending.append(table)
        self.pending_rows += table.num_rows
        if self.pending_rows >= self.rows:
            self.flush(whole_groups_only=True)

    def flush(self, whole_groups_only=False):
        table = pa.concat_tables(self.pending) if self.pending else None
        self.pending, self.pending_rows = [], 0
        if table is None:
            return
        cut = table.num_rows - table.num_rows % self.rows if whole_groups_only else table.num_rows
        if cut:
            self.w.write_table(table.slice(0, cut), row_group_size=self.rows)
        if cut < table.num_rows:
            self.pending, self.pending_rows = [table.slice(cut)], table.num_rows - cut

    def close(self):
        self.flush()
        self.w.close()


def open_writer(path, fmt, schema, row_group_rows):
    if fmt == "parquet":
        w = ParquetWriter(path, schema, row_group_rows)
        return w.write_table, w.close
    if fmt == "csv":
        w = pacsv.CSVWriter(path, schema)
        return w.write_table, w.close
    w = JsonlWriter(path, schema)
    return w.write_table, w.close


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--out", required=True, help="a file, or a directory when --files > 1")
    p.add_argument("--format", choices=sorted(EXTENSIONS), default="parquet")
    p.add_argument("--files", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--row-group-rows", type=int, default=CHUNK_ROWS * 2)
    args = p.parse_args()
    if args.rows < 0 or args.files < 1 or args.row_group_rows < 1:
        p.error("--rows must be >= 0, --files and --row-group-rows >= 1")
    if args.files > max(args.rows, 1):
        p.error("--files must not exceed --rows (an empty CSV or JSONL file is not readable)")

    started = time.perf_counter()
    names, base, scale = feature_data()
    ext = EXTENSIONS[args.format]
    if args.files > 1 or not os.path.splitext(args.out)[1]:
        os.makedirs(args.out, exist_ok=True)
        stale = [f for f in os.listdir(args.out) if f.startswith("part-")]
        if stale:
            sys.exit(f"{args.out} already holds {len(stale)} part-* file(s); remove them first")
        paths = [os.path.join(args.out, f"part-{k:05d}.{ext}") for k in range(args.files)]
    else:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        paths = [args.out]
    # File k holds rows [bounds[k], bounds[k + 1]).
    bounds = [args.rows * k // len(paths) for k in range(len(paths) + 1)]

    schema = pa.schema([("key", pa.string())] + [(n, pa.float32()) for n in names])
    k, row = 0, 0
    write, close = open_writer(paths[0], args.format, schema, args.row_group_rows)
    for table in chunks(args.rows, args.seed, names, base, scale):
        while table.num_rows:
            take = min(table.num_rows, bounds[k + 1] - row)
            if take:
                write(table.slice(0, take))
                table = table.slice(take)
                row += take
            if row == bounds[k + 1] and k + 1 < len(paths):
                close()
                k += 1
                write, close = open_writer(paths[k], args.format, schema, args.row_group_rows)
    close()
    seconds = time.perf_counter() - started
    print(json.dumps({
        "rows": args.rows,
        "files": len(paths),
        "format": args.format,
        "bytes": sum(os.path.getsize(p) for p in paths),
        "seconds": round(seconds, 3),
    }))


if __name__ == "__main__":
    main()
