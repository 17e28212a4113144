"""Helpers for the batch suite: generated data, running `serval batch` / `serval sql`, reading
outputs. Shared helpers (paths, goldens, the server process) come from tests/protocol/support.py,
which this module puts on sys.path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "protocol"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "batch"))

from make_data import json_lines  # noqa: E402
from support import GOLDEN, REPO, ROOT, serval_bin  # noqa: E402

MODEL = "breast_cancer_lr"
ONNX_PATH = REPO / MODEL / "1" / "model.onnx"
EXAMPLE_CSV = ROOT / "examples" / "data" / "breast_cancer.csv"
BIG_ROWS = 1_000_000
MEDIUM_ROWS = 50_000
# scikit-learn's `load_breast_cancer().feature_names`, the column names bench/batch/make_data.py
# writes (spaces included: column references must be quoted all the way through).
FEATURE_NAMES = [
    "mean radius", "mean texture", "mean perimeter", "mean area", "mean smoothness",
    "mean compactness", "mean concavity", "mean concave points", "mean symmetry",
    "mean fractal dimension", "radius error", "texture error", "perimeter error", "area error",
    "smoothness error", "compactness error", "concavity error", "concave points error",
    "symmetry error", "fractal dimension error", "worst radius", "worst texture",
    "worst perimeter", "worst area", "worst smoothness", "worst compactness", "worst concavity",
    "worst concave points", "worst symmetry", "worst fractal dimension",
]
KEY_DIGITS = 9


# --- data ------------------------------------------------------------------------------------


def make_table(rows: int, seed: int = 0) -> pa.Table:
    """`key` ("row-000000123") plus 30 float32 features: a golden breast-cancer row picked at
    random plus 5% Gaussian noise, clipped at 0 (the recipe of bench/batch/make_data.py, seeded
    from the golden rows so no scikit-learn is needed)."""
    base = np.array([r["features"] for r in GOLDEN[MODEL]["rows"]], dtype=np.float32)
    scale = (base.std(axis=0, dtype=np.float64) * 0.05).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = base[rng.integers(0, base.shape[0], size=rows)]
    x += rng.standard_normal((rows, base.shape[1]), dtype=np.float32) * scale
    np.maximum(x, 0, out=x)
    x = np.asfortranarray(x)
    ids = pa.array(np.arange(rows, dtype=np.int64)).cast(pa.string())
    keys = pc.binary_join_element_wise("row-", pc.utf8_lpad(ids, KEY_DIGITS, "0"), "")
    cols = [keys] + [pa.array(x[:, j]) for j in range(x.shape[1])]
    return pa.table(cols, names=["key"] + FEATURE_NAMES)


def key_index(keys) -> np.ndarray:
    """Row numbers of generated keys ("row-000000123" -> 123)."""
    return np.array([int(k[4:]) for k in keys], dtype=np.int64)


def write_parquet(table: pa.Table, path: Path, row_group_rows: int = 1 << 17) -> Path:
    pq.write_table(table, path, compression="snappy", use_dictionary=False, row_group_size=row_group_rows)
    return path


def write_csv(table: pa.Table, path: Path) -> Path:
    pacsv.write_csv(table, path)
    return path


def write_jsonl(table: pa.Table, path: Path) -> Path:
    """One JSON object per line, written as bench/batch/make_data.py writes its data."""
    for name in table.column_names:
        assert table.column(name).null_count == 0, name
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(json_lines(table).to_pylist()))
    return path


# --- reference predictions -------------------------------------------------------------------


def features_of(table: pa.Table, rows=None) -> np.ndarray:
    """The 30 feature columns (after the key) of `table` as float32 [N, 30]."""
    if rows is not None:
        table = table.take(pa.array(rows))
    names = [n for n in table.column_names if n != "key"]
    assert len(names) == 30, names
    return np.column_stack([table.column(n).to_numpy().astype(np.float32) for n in names])


def probabilities(column) -> np.ndarray:
    """A list / fixed-size-list column of 2 floats per row as float [N, 2]."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        assert column.null_count == 0
        return np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float64).reshape(len(column), -1)
    # Text formats may read lists back as strings like "[0.1,0.9]".
    return np.array([json.loads(v) for v in column.to_pylist()], dtype=np.float64)


# --- running serval --------------------------------------------------------------------------


def serval_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.setdefault("SERVAL_LOG", "warn")
    if extra:
        env.update(extra)
    return env


def check_binary():
    if not serval_bin().is_file():
        pytest.fail(f"{serval_bin()} does not exist: run `cargo build -p serval-cli` or set SERVAL_BIN", pytrace=False)


def run_serval(*args, timeout: float = 300, env: dict | None = None, cwd=ROOT) -> subprocess.CompletedProcess:
    """Runs `serval ARGS...` to completion; stderr never shows a panic."""
    check_binary()
    res = subprocess.run(
        [str(serval_bin()), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=serval_env(env),
        check=False,
    )
    assert "panicked" not in res.stderr, f"serval panicked:\n{res.stderr[-4000:]}"
    return res


def batch(*args, timeout: float = 300, env: dict | None = None, model: str = MODEL) -> subprocess.CompletedProcess:
    """`serval batch examples/models MODEL ARGS...`."""
    return run_serval("batch", REPO, model, *args, timeout=timeout, env=env)


def batch_ok(*args, **kw) -> dict:
    """Runs a batch job that must succeed and returns its `_SUCCESS` manifest (local output)."""
    res = batch(*args, **kw)
    assert res.returncode == 0, f"serval batch failed ({res.returncode}):\n{res.stderr[-4000:]}"
    out = Path(str(args[list(args).index("--output") + 1]))
    return read_manifest(out)


def batch_fails(*args, **kw) -> str:
    """Runs a batch job that must fail cleanly; returns stderr."""
    res = batch(*args, **kw)
    assert res.returncode != 0, f"serval batch succeeded unexpectedly:\n{res.stderr[-2000:]}"
    assert "error" in res.stderr.lower(), res.stderr
    assert "Traceback" not in res.stderr and "stack backtrace" not in res.stderr, res.stderr
    return res.stderr


def read_manifest(out: Path) -> dict:
    path = out / "_SUCCESS"
    assert path.is_file(), f"no _SUCCESS in {out}: {sorted(p.name for p in out.iterdir())}"
    return json.loads(path.read_text(encoding="utf-8"))


def plain_strings(table: pa.Table) -> pa.Table:
    """string_view columns (DataFusion writes Utf8View into Parquet's Arrow schema) as string:
    most pyarrow kernels (sort, take, count_distinct) have no string_view kernel."""
    fields = [
        pa.field(f.name, pa.string(), f.nullable) if pa.types.is_string_view(f.type) else f
        for f in table.schema
    ]
    return table.cast(pa.schema(fields))


def read_output(out: Path, manifest: dict) -> pa.Table:
    """Every data file the manifest lists, concatenated (format from the manifest)."""
    fmt = manifest["format"]
    files = [out / f for f in manifest["files"]]
    assert files, manifest
    for f in files:
        assert f.is_file(), f"{f} listed in _SUCCESS but missing"
        assert f.suffix == f".{fmt}", f
    if fmt == "parquet":
        return plain_strings(ds.dataset([str(f) for f in files], format="parquet").to_table())
    if fmt == "csv":
        opts = pacsv.ConvertOptions(column_types={manifest["key_column"]: pa.string()})
        tables = [join_split_lists(pacsv.read_csv(f, convert_options=opts), manifest) for f in files if f.stat().st_size]
    else:
        import pyarrow.json as pajson

        tables = [pajson.read_json(f) for f in files if f.stat().st_size]
    return pa.concat_tables(tables, promote_options="permissive")


def join_split_lists(table: pa.Table, manifest: dict) -> pa.Table:
    """CSV holds a list output `p` as columns `p_0`, `p_1`, ...: rebuild the list column."""
    for prediction in manifest["predictions"]:
        name = prediction["column"]
        parts = [n for n in table.column_names if n.startswith(f"{name}_") and n[len(name) + 1:].isdigit()]
        if name in table.column_names or not parts:
            continue
        parts.sort(key=lambda n: int(n[len(name) + 1:]))
        values = np.column_stack([table.column(n).to_numpy() for n in parts]).astype(np.float32).ravel()
        joined = pa.FixedSizeListArray.from_arrays(pa.array(values), len(parts))
        keep = [n for n in table.column_names if n not in parts]
        table = table.select(keep).append_column(name, joined)
    return table


# --- S3 (moto) -------------------------------------------------------------------------------


