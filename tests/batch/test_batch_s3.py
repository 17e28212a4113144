"""`serval batch` reading from and writing to S3 (a moto server on loopback)."""

from __future__ import annotations

import io
import json
import signal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from batch_support import MODEL, batch, features_of, key_index, make_table, plain_strings, probabilities


def list_keys(client, bucket: str, prefix: str) -> list[str]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def test_s3_input_and_output(s3, ort_session):
    client, env, bucket = s3
    n = 20_000
    source = make_table(n, seed=7)
    buf = io.BytesIO()
    pq.write_table(source, buf, row_group_size=5000)
    client.put_object(Bucket=bucket, Key="in/rows.parquet", Body=buf.getvalue())

    res = batch("--input", f"s3://{bucket}/in/rows.parquet", "--output", f"s3://{bucket}/out/run1", env=env)
    assert res.returncode == 0, res.stderr[-4000:]

    manifest = json.loads(client.get_object(Bucket=bucket, Key="out/run1/_SUCCESS")["Body"].read())
    assert manifest["model"] == MODEL
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rows_failed"]) == (n, n, 0), manifest
    assert manifest["format"] == "parquet"
    listed = list_keys(client, bucket, "out/run1/")
    assert not [k for k in listed if "/_temporary/" in k], f"staging left in the bucket: {listed}"
    assert sorted(listed) == sorted([f"out/run1/{f}" for f in manifest["files"]] + ["out/run1/_SUCCESS"])

    parts = [
        pq.read_table(io.BytesIO(client.get_object(Bucket=bucket, Key=f"out/run1/{f}")["Body"].read()))
        for f in manifest["files"]
    ]
    table = plain_strings(pa.concat_tables(parts))
    assert table.num_rows == n
    keys = table.column("key")
    assert pc.count_distinct(keys).as_py() == n
    assert set(keys.to_pylist()) == set(source.column("key").to_pylist())
    sample = table.slice(0, 1000)
    x = features_of(source, key_index(sample.column("key").to_pylist()))
    label, prob = ort_session.run(None, {"features": x})
    assert sample.column("label").to_pylist() == label.tolist()
    assert abs(probabilities(sample.column("probabilities")) - prob).max() < 1e-5

    # A second job into the same prefix is refused without --overwrite, replaces with it.
    again = batch("--input", f"s3://{bucket}/in/rows.parquet", "--output", f"s3://{bucket}/out/run1", env=env)
    assert again.returncode != 0 and "--overwrite" in again.stderr, again.stderr
    again = batch("--input", f"s3://{bucket}/in/", "--output", f"s3://{bucket}/out/run1",
                  "--input-format", "parquet", "--overwrite", "--format", "jsonl", env=env)
    assert again.returncode == 0, again.stderr[-4000:]
    second = json.loads(client.get_object(Bucket=bucket, Key="out/run1/_SUCCESS")["Body"].read())
    assert second["format"] == "jsonl" and second["rows_out"] == n
    listed = list_keys(client, bucket, "out/run1/")
    assert sorted(listed) == sorted([f"out/run1/{f}" for f in second["files"]] + ["out/run1/_SUCCESS"])
    lines = sum(
        client.get_object(Bucket=bucket, Key=f"out/run1/{f}")["Body"].read().count(b"\n")
        for f in second["files"]
    )
    assert lines == n


def test_s3_glob_input(s3, tmp_path):
    """Globs work in object-store URLs as in local paths (`FROM 's3://bucket/data/*.parquet'`,
    as serval-batch's session docs say)."""
    client, env, bucket = s3
    for i in range(3):
        buf = io.BytesIO()
        pq.write_table(make_table(1000, seed=20 + i), buf)
        client.put_object(Bucket=bucket, Key=f"glob/rows-{i}.parquet", Body=buf.getvalue())
    client.put_object(Bucket=bucket, Key="glob/README.txt", Body=b"not data")
    out = tmp_path / "out"
    res = batch("--input", f"s3://{bucket}/glob/rows-*.parquet", "--output", out, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    manifest = json.loads((out / "_SUCCESS").read_text())
    assert manifest["rows_in"] == manifest["rows_out"] == 3000, manifest


def test_s3_missing_input_is_a_clear_error(s3, tmp_path):
    client, env, bucket = s3
    res = batch("--input", f"s3://{bucket}/nothing/here.parquet", "--output", str(tmp_path / "out"), env=env)
    assert res.returncode != 0
    assert "error" in res.stderr.lower() and "nothing/here.parquet" in res.stderr, res.stderr
    assert not (tmp_path / "out" / "_SUCCESS").exists()


@pytest.mark.parametrize("step", ["staged", "named", "published"])
def test_s3_overwrite_killed_at_each_step_keeps_a_whole_output_named_by_success(s3, step):
    """An object store has no directory to rename: `_SUCCESS` names the complete output at every
    moment, and `--overwrite` deletes the old files only after the new `_SUCCESS` is in."""
    client, env, bucket = s3
    buf = io.BytesIO()
    pq.write_table(make_table(2000, seed=3), buf)
    client.put_object(Bucket=bucket, Key=f"kill-{step}/in.parquet", Body=buf.getvalue())
    source, out = f"s3://{bucket}/kill-{step}/in.parquet", f"s3://{bucket}/kill-{step}/out"
    prefix = f"kill-{step}/out/"

    def success():
        return json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}_SUCCESS")["Body"].read())

    def named_rows(manifest):
        return sum(
            pq.read_table(io.BytesIO(client.get_object(Bucket=bucket, Key=prefix + f)["Body"].read())).num_rows
            for f in manifest["files"]
        )

    assert batch("--input", source, "--output", out, env=env).returncode == 0
    first = success()
    killed = batch("--input", source, "--output", out, "--overwrite", env={**env, "SERVAL_FAULT_POINT": step})
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    now = success()
    assert (now == first) == (step != "published"), (step, now, first)
    assert named_rows(now) == 2000, "a file that _SUCCESS names is missing"

    again = batch("--input", source, "--output", out, "--overwrite", env=env)
    assert again.returncode == 0, again.stderr[-4000:]
    last = success()
    assert named_rows(last) == 2000
    listed = list_keys(client, bucket, prefix)
    assert sorted(listed) == sorted([prefix + f for f in last["files"]] + [f"{prefix}_SUCCESS"]), (
        "the next job left what the killed one wrote"
    )
