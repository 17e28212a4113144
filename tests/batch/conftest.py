"""Fixtures for the batch suite: `serval batch`, `serval sql` and `serval serve --precomputed`
run as real processes over generated data (local files and a moto S3 server).

The binary is `target/debug/serval` (build with `cargo build -p serval-cli`), or `$SERVAL_BIN`.
Helpers live in batch_support.py (not conftest, so this suite and tests/protocol, whose modules
import from their own conftest, can run in one pytest session).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from batch_support import BIG_ROWS, MEDIUM_ROWS, ONNX_PATH, make_table, write_parquet
from support import moto_s3


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("batch-data")


@pytest.fixture(scope="session")
def big_table() -> pa.Table:
    return make_table(BIG_ROWS, seed=1)


@pytest.fixture(scope="session")
def big_parquet(big_table, data_dir) -> Path:
    """The >= 1M-row input, written once per session."""
    return write_parquet(big_table, data_dir / "big.parquet")


@pytest.fixture(scope="session")
def medium_table() -> pa.Table:
    return make_table(MEDIUM_ROWS, seed=2)


@pytest.fixture(scope="session")
def ort_session():
    import onnxruntime as ort

    return ort.InferenceSession(str(ONNX_PATH), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def s3():
    """A moto S3 server on loopback: (boto3 client, env for serval, bucket)."""
    bucket = "batch"
    with moto_s3(bucket) as (client, env):
        yield client, env, bucket
