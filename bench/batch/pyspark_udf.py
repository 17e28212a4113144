#!/usr/bin/env python3
"""Batch prediction with PySpark in local mode and ONNX Runtime in a pandas UDF.

    pyspark_udf.py --model examples/models/breast_cancer_lr/1/model.onnx \\
        --input target/bench-batch/data --output /tmp/out --processes 2

Spark runs as local[--processes] (one task slot per core) and reads the input (Parquet; CSV with
a header or JSON Lines also work, from the extension or --format). The model runs in
DataFrame.mapInPandas (--udf pandas, the documented way) or mapInArrow (--udf arrow, which skips
pandas): each Python worker loads the model once (ONNX Runtime, intra_op_num_threads=1) and
gets the rows as Arrow batches of --batch-rows rows (spark.sql.execution.arrow.maxRecordsPerBatch).
The feature columns are every column but --key, in file order (for JSON Lines, the order of the
first object's keys: Spark's own inference sorts them by name); the output, written with
mode("overwrite"), is the key and every model output (an output of shape [n, k] becomes an
array<...> column), like bench/batch/pyarrow_ort.py.

Prints one JSON line: rows (read back from the output), seconds (wall time from start until
the write finished: JVM start and model loading included), rows_per_s, processes,
session_seconds (of which starting the JVM and Spark session).
"""

import argparse
import json
import os
import sys
import time

FORMATS = {"parquet": "parquet", "pq": "parquet", "csv": "csv", "jsonl": "json", "ndjson": "json", "json": "json"}

# One ONNX Runtime session per Python worker process (reused across tasks: spark.python.worker.reuse).
_SESSION = {}


def session(model):
    if model not in _SESSION:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        _SESSION[model] = (s, s.get_inputs()[0].name, [o.name for o in s.get_outputs()])
    return _SESSION[model]


def spark_type(onnx_type, shape):
    elem = {
        "tensor(float)": "float",
        "tensor(double)": "double",
        "tensor(int64)": "bigint",
        "tensor(int32)": "int",
        "tensor(string)": "string",
        "tensor(bool)": "boolean",
    }[onnx_type]
    return elem if len(shape) == 1 else f"array<{elem}>"


def pandas_udf(model, key, features):
    def predict(batches):
        import numpy as np
        import pandas as pd

        sess, input_name, output_names = session(model)
        for pdf in batches:
            x = pdf[features].to_numpy(dtype=np.float32)
            results = sess.run(output_names, {input_name: x})
            cols = {key: pdf[key]}
            for name, r in zip(output_names, results):
                cols[name] = r if r.ndim == 1 else list(r)
            yield pd.DataFrame(cols)

    return predict


def arrow_udf(model, key, features):
    def predict(batches):
        import numpy as np
        import pyarrow as pa

        sess, input_name, output_names = session(model)
        for batch in batches:
            n = batch.num_rows
            x = np.empty((n, len(features)), dtype=np.float32)
            for j, f in enumerate(features):
                x[:, j] = batch.column(f).to_numpy(zero_copy_only=False)
            results = sess.run(output_names, {input_name: x})
            cols = [batch.column(key)]
            for r in results:
                if r.ndim == 1:
                    cols.append(pa.array(r))
                else:
                    # Spark's array<...> is an Arrow list: offsets every r.shape[1] values.
                    offsets = pa.array(np.arange(0, r.size + 1, r.shape[1], dtype=np.int32))
                    cols.append(pa.ListArray.from_arrays(offsets, pa.array(r.reshape(-1))))
            yield pa.RecordBatch.from_arrays(cols, names=[key] + output_names)

    return predict


def first_line(path):
    if os.path.isdir(path):
        names = sorted(f for f in os.listdir(path) if f[0] not in "._" and os.path.getsize(os.path.join(path, f)))
        path = os.path.join(path, names[0])
    with open(path) as f:
        return f.readline()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="path to model.onnx")
    p.add_argument("--input", required=True, help="a file or a directory")
    p.add_argument("--output", required=True, help="output directory (replaced)")
    p.add_argument("--processes", type=int, default=os.cpu_count(), help="local[N]")
    p.add_argument("--batch-rows", type=int, default=65536)
    p.add_argument("--key", default="key")
    p.add_argument("--format", choices=sorted(FORMATS), help="input format (default: from the extension)")
    p.add_argument("--udf", choices=["pandas", "arrow"], default="pandas", help="mapInPandas or mapInArrow")
    p.add_argument("--driver-memory", default="2g", help="JVM heap (spark.driver.memory)")
    args = p.parse_args()

    started = time.perf_counter()
    model = os.path.abspath(args.model)
    fmt = FORMATS[args.format] if args.format else None
    if fmt is None:
        probe = args.input
        if os.path.isdir(probe):
            names = sorted(f for f in os.listdir(probe) if f[0] not in "._" and "." in f)
            probe = names[0] if names else ""
        fmt = FORMATS.get(probe.rsplit(".", 1)[-1].lower())
        if fmt is None:
            sys.exit(f"cannot tell the format of {args.input}; pass --format parquet|csv|jsonl")

    # The workers must run this interpreter (the venv with onnxruntime).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    # Loopback only, whatever the host name resolves to.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(f"local[{args.processes}]")
        .appName("serval-bench-batch")
        .config("spark.driver.memory", args.driver_memory)
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(args.batch_rows))
        .config("spark.python.worker.reuse", "true")
        .config("spark.sql.shuffle.partitions", str(args.processes))
        .config("spark.sql.parquet.compression.codec", "snappy")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    session_seconds = time.perf_counter() - started

    reader = spark.read
    if fmt == "csv":
        reader = reader.option("header", "true").option("inferSchema", "true")
    df = getattr(reader, fmt)(args.input)
    if fmt == "json":
        # Spark's JSON schema inference sorts the fields by name: restore the file's order,
        # which is the order the model takes its features in.
        order = list(json.loads(first_line(args.input)))
        df = df.select(*[df[f"`{c}`"] for c in order])
    if args.key not in df.columns:
        sys.exit(f"the input has no column {args.key!r} (columns: {df.columns})")
    features = [c for c in df.columns if c != args.key]

    import onnxruntime as ort

    probe = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    schema = ", ".join(
        [f"`{args.key}` string"] + [f"`{o.name}` {spark_type(o.type, o.shape)}" for o in probe.get_outputs()]
    )
    del probe

    if args.udf == "pandas":
        out = df.mapInPandas(pandas_udf(model, args.key, features), schema)
    else:
        out = df.mapInArrow(arrow_udf(model, args.key, features), schema)
    out.write.mode("overwrite").parquet(args.output)
    seconds = time.perf_counter() - started

    rows = spark.read.parquet(args.output).count()
    spark.stop()
    print(json.dumps({
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds, 1) if seconds else None,
        "processes": args.processes,
        "session_seconds": round(session_seconds, 3),
        "udf": args.udf,
    }))


if __name__ == "__main__":
    main()
