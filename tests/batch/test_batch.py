"""`serval batch` on local files: a million rows end to end, every input and output format, keys,
row errors, argument errors, and a job killed half way."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from batch_support import (
    BIG_ROWS,
    EXAMPLE_CSV,
    FEATURE_NAMES,
    MEDIUM_ROWS,
    MODEL,
    batch,
    batch_fails,
    batch_ok,
    check_binary,
    features_of,
    key_index,
    plain_strings,
    probabilities,
    read_manifest,
    read_output,
    serval_env,
    write_csv,
    write_jsonl,
    write_parquet,
)
from support import GOLDEN, REPO, ROOT, is_uuid7, serval_bin

SAMPLE = 1000
PROB_ATOL = 1e-5


def assert_manifest(manifest: dict, rows_in: int, rows_out: int, rows_failed: int = 0, fmt: str = "parquet", key: str = "key"):
    assert manifest["model"] == MODEL
    assert manifest["version"] == 1
    assert manifest["signature"] == "serving_default"
    assert manifest["key_column"] == key
    assert manifest["format"] == fmt
    assert {p["output"] for p in manifest["predictions"]} == {"label", "probabilities"}, manifest
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rows_failed"]) == (rows_in, rows_out, rows_failed), manifest
    assert manifest["started_at"] <= manifest["finished_at"], manifest
    assert manifest["files"] and all(f.startswith("part-") for f in manifest["files"]), manifest


def assert_all_keys_once(out: pa.Table, source: pa.Table):
    """Output keys are exactly the input keys, each once."""
    assert out.num_rows == source.num_rows
    assert out.column("key").null_count == 0
    # Parquet written by DataFusion may carry Utf8View (string_view) keys: compare as strings.
    got_keys = out.column("key").combine_chunks().cast(pa.string())
    got_keys = got_keys.take(pc.sort_indices(got_keys))
    want = source.column("key").combine_chunks()
    want = want.take(pc.sort_indices(want))
    assert got_keys.equals(want), "output keys differ from input keys (missing, duplicated or changed)"


def assert_predictions_match(out: pa.Table, source: pa.Table, ort_session, sample: int = SAMPLE, seed: int = 0, carried: bool = True):
    """A random sample of output rows: predictions equal ONNX Runtime's on the same features,
    and the carried feature columns equal the input's."""
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(out.num_rows, size=min(sample, out.num_rows), replace=False))
    rows = out.take(pa.array(picked))
    idx = key_index(rows.column("key").to_pylist())
    x = features_of(source, idx)
    if carried:
        for j, name in enumerate(FEATURE_NAMES):
            got = rows.column(name).to_numpy(zero_copy_only=False).astype(np.float32)
            np.testing.assert_array_equal(got, x[:, j], err_msg=f"carried column {name!r}")
    label, prob = ort_session.run(None, {"features": x})
    got_label = rows.column("label").to_numpy(zero_copy_only=False)
    assert got_label.dtype.kind in "iu", rows.schema
    np.testing.assert_array_equal(got_label, label, err_msg="labels differ from ONNX Runtime")
    np.testing.assert_allclose(probabilities(rows.column("probabilities")), prob, rtol=0, atol=PROB_ATOL,
                               err_msg="probabilities differ from ONNX Runtime")
    # Both classes appear, so a constant answer could not pass.
    assert len(set(label.tolist())) == 2


# --- a million rows ----------------------------------------------------------------------------


def test_million_rows_parquet(big_parquet, big_table, ort_session, tmp_path):
    out = tmp_path / "out"
    manifest = batch_ok("--input", big_parquet, "--output", out, "--key", "key", timeout=600)
    assert_manifest(manifest, BIG_ROWS, BIG_ROWS)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("part-")) == ["_SUCCESS"], (
        "_temporary left behind after a successful job"
    )
    assert sorted(manifest["files"]) == sorted(p.name for p in out.iterdir() if p.name.startswith("part-"))
    # What a Spark/pyarrow reader of the directory sees (it skips _SUCCESS and _temporary).
    table = plain_strings(ds.dataset(out, format="parquet").to_table())
    assert table.column_names == ["key", *FEATURE_NAMES, "label", "probabilities"], table.schema
    assert_all_keys_once(table, big_table)
    assert_predictions_match(table, big_table, ort_session)


# --- other formats -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_text_inputs(fmt, medium_table, ort_session, tmp_path):
    path = tmp_path / f"input.{fmt}"
    (write_csv if fmt == "csv" else write_jsonl)(medium_table, path)
    out = tmp_path / "out"
    features = []
    if fmt == "jsonl":
        # JSON objects have no column order: guessing the features would silently feed them in
        # the wrong order, so serval asks for them.
        err = batch_fails("--input", path, "--output", tmp_path / "guess", "--key", "key")
        assert "--features" in err and "no column order" in err, err
        features = ["--features", ",".join(FEATURE_NAMES)]
    manifest = batch_ok("--input", path, "--output", out, "--key", "key", *features)
    assert_manifest(manifest, MEDIUM_ROWS, MEDIUM_ROWS)
    table = read_output(out, manifest)
    assert table.column_names[0] == "key", table.column_names
    assert_all_keys_once(table, medium_table)
    assert_predictions_match(table, medium_table, ort_session, seed=1)


def test_jsonl_list_column_input(tmp_path):
    """examples/data/breast_cancer_lr.jsonl: a key and a `features` list per line, the column
    named like the model's input."""
    out = tmp_path / "out"
    manifest = batch_ok("--input", ROOT / "examples" / "data" / f"{MODEL}.jsonl", "--output", out)
    assert manifest["rows_out"] == 25
    table = read_output(out, manifest)
    golden = golden_by_key()
    for key, label, prob in zip(table.column("key").to_pylist(), table.column("label").to_pylist(),
                                table.column("probabilities").to_pylist()):
        assert label == golden[key][0], key
        np.testing.assert_allclose(prob, golden[key][1], atol=PROB_ATOL)


def test_input_glob_of_several_files(medium_table, ort_session, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    third = MEDIUM_ROWS // 3
    write_parquet(medium_table.slice(0, third), src / "a.parquet")
    write_parquet(medium_table.slice(third, third), src / "b.parquet")
    write_parquet(medium_table.slice(2 * third), src / "c.parquet")
    (src / "notes.txt").write_text("not data\n")
    out = tmp_path / "out"
    manifest = batch_ok("--input", f"{src}/*.parquet", "--output", out)
    assert_manifest(manifest, MEDIUM_ROWS, MEDIUM_ROWS)
    table = read_output(out, manifest)
    assert_all_keys_once(table, medium_table)
    assert_predictions_match(table, medium_table, ort_session, seed=2)


@pytest.fixture(scope="module")
def medium_parquet(medium_table, tmp_path_factory) -> Path:
    return write_parquet(medium_table, tmp_path_factory.mktemp("medium") / "medium.parquet", row_group_rows=10_000)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_text_outputs(fmt, medium_parquet, medium_table, ort_session, tmp_path):
    out = tmp_path / "out"
    manifest = batch_ok("--input", medium_parquet, "--output", out, "--format", fmt, "--key", "key")
    assert_manifest(manifest, MEDIUM_ROWS, MEDIUM_ROWS, fmt=fmt)
    table = read_output(out, manifest)
    assert_all_keys_once(table, medium_table)
    assert_predictions_match(table, medium_table, ort_session, seed=3)


def test_columns_keeps_only_the_key_and_named_columns(medium_parquet, medium_table, ort_session, tmp_path):
    out = tmp_path / "out"
    manifest = batch_ok("--input", medium_parquet, "--output", out, "--columns", "mean radius")
    table = read_output(out, manifest)
    assert table.column_names == ["key", "mean radius", "label", "probabilities"], table.schema
    assert_all_keys_once(table, medium_table)
    assert_predictions_match(table, medium_table, ort_session, seed=4, carried=False)


def test_screening_signature(tmp_path):
    out = tmp_path / "out"
    manifest = batch_ok("--input", EXAMPLE_CSV, "--output", out, "--signature", "screening")
    assert manifest["signature"] == "screening"
    table = read_output(out, manifest)
    by_key = dict(zip(table.column("key").to_pylist(), table.column("diagnosis").to_pylist()))
    golden = GOLDEN[MODEL]
    expected = dict(zip([r["key"] for r in golden["rows"]], golden["signatures"]["screening"]["diagnosis"]))
    assert by_key == expected


# --- keys --------------------------------------------------------------------------------------


def test_keys_are_minted_without_a_key_column(medium_table, tmp_path):
    n = 5000
    source = medium_table.slice(0, n).drop_columns(["key"])
    path = write_parquet(source, tmp_path / "nokey.parquet")
    out = tmp_path / "out"
    manifest = batch_ok("--input", path, "--output", out)
    assert manifest["key_column"] == "key"
    assert manifest["rows_out"] == n
    table = read_output(out, manifest)
    keys = table.column("key").to_pylist()
    assert len(keys) == n
    bad = [k for k in keys if not (isinstance(k, str) and is_uuid7(k))]
    assert not bad, f"{len(bad)} keys are not UUIDv7, e.g. {bad[:3]}"
    assert len(set(keys)) == n, "minted keys repeat"


def test_null_keys_are_minted_and_others_kept(medium_table, tmp_path):
    n = 5000
    source = medium_table.slice(0, n)
    nulls = np.zeros(n, dtype=bool)
    nulls[::7] = True
    keys = pa.array([None if z else k for z, k in zip(nulls, source.column("key").to_pylist())], pa.string())
    source = source.set_column(0, "key", keys).append_column("row_id", pa.array(np.arange(n, dtype=np.int64)))
    path = write_parquet(source, tmp_path / "somenull.parquet", row_group_rows=1000)
    out = tmp_path / "out"
    manifest = batch_ok("--input", path, "--output", out, "--key", "key", "--features", ",".join(FEATURE_NAMES))
    assert manifest["rows_out"] == n
    table = read_output(out, manifest)
    table = table.take(pc.sort_indices(table, sort_keys=[("row_id", "ascending")]))
    assert table.column("row_id").to_pylist() == list(range(n))
    got = table.column("key").to_pylist()
    want = source.column("key").to_pylist()
    for i in range(n):
        if nulls[i]:
            assert got[i] is not None and is_uuid7(got[i]), f"row {i}: null key became {got[i]!r}"
        else:
            assert got[i] == want[i], f"row {i}: key {want[i]!r} became {got[i]!r}"
    assert len(set(got)) == n


# --- row errors --------------------------------------------------------------------------------

BAD_NUMBER_ROW, BAD_NUMBER_COL, BAD_NUMBER = 3, "f5", "abc"
MISSING_ROW, MISSING_COL = 7, "f10"


def dirty_csv(tmp_path: Path, bad_number=True, missing=True) -> tuple[Path, list[str]]:
    """examples/data/breast_cancer.csv with a non-numeric value and/or an empty one."""
    lines = EXAMPLE_CSV.read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:]]
    bad_keys = []
    if bad_number:
        rows[BAD_NUMBER_ROW][header.index(BAD_NUMBER_COL)] = BAD_NUMBER
        bad_keys.append(rows[BAD_NUMBER_ROW][0])
    if missing:
        rows[MISSING_ROW][header.index(MISSING_COL)] = ""
        bad_keys.append(rows[MISSING_ROW][0])
    path = tmp_path / "dirty.csv"
    path.write_text("\n".join([lines[0], *(",".join(r) for r in rows)]) + "\n", encoding="utf-8")
    return path, bad_keys


def golden_by_key() -> dict[str, tuple[int, list[float]]]:
    g = GOLDEN[MODEL]
    return {
        r["key"]: (label, prob)
        for r, label, prob in zip(g["rows"], g["outputs"]["label"], g["outputs"]["probabilities"])
    }


def assert_no_output(out: Path):
    if not out.exists():
        return
    assert not (out / "_SUCCESS").exists(), "a failed job wrote _SUCCESS"
    stray = [p.name for p in out.iterdir() if p.name.startswith("part-")]
    assert not stray, f"a failed job left data files: {stray}"


def test_on_error_fail_names_column_and_value(tmp_path):
    path, _ = dirty_csv(tmp_path)
    out = tmp_path / "out"
    err = batch_fails("--input", path, "--output", out, "--on-error", "fail")
    assert BAD_NUMBER_COL in err and BAD_NUMBER in err, err
    assert_no_output(out)


def test_on_error_fail_names_missing_value(tmp_path):
    path, _ = dirty_csv(tmp_path, bad_number=False)
    out = tmp_path / "out"
    err = batch_fails("--input", path, "--output", out)
    assert MISSING_COL in err and ("null" in err.lower() or "missing" in err.lower()), err
    assert_no_output(out)


def test_on_error_skip_drops_and_counts_bad_rows(tmp_path):
    path, bad_keys = dirty_csv(tmp_path)
    out = tmp_path / "out"
    res = batch("--input", path, "--output", out, "--on-error", "skip")
    assert res.returncode == 0, res.stderr
    manifest = read_manifest(out)
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rows_failed"]) == (25, 23, 2), manifest
    table = read_output(out, manifest)
    golden = golden_by_key()
    assert sorted(table.column("key").to_pylist()) == sorted(set(golden) - set(bad_keys))
    for key, label in zip(table.column("key").to_pylist(), table.column("label").to_pylist()):
        assert label == golden[key][0], key
    assert "serval_error" not in table.column_names


def test_on_error_null_keeps_rows_with_reasons(tmp_path):
    path, bad_keys = dirty_csv(tmp_path)
    out = tmp_path / "out"
    manifest = batch_ok("--input", path, "--output", out, "--on-error", "null")
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rows_failed"]) == (25, 25, 2), manifest
    table = read_output(out, manifest)
    golden = golden_by_key()
    rows = table.to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(golden)
    for r in rows:
        if r["key"] in bad_keys:
            assert r["serval_error"], r
            assert r["label"] is None and r["probabilities"] is None, r
        else:
            assert r["serval_error"] is None, r
            assert r["label"] == golden[r["key"]][0], r["key"]
            np.testing.assert_allclose(r["probabilities"], golden[r["key"]][1], atol=PROB_ATOL)
    reasons = {r["key"]: r["serval_error"] for r in rows if r["key"] in bad_keys}
    assert BAD_NUMBER_COL in reasons[bad_keys[0]] and BAD_NUMBER in reasons[bad_keys[0]], reasons
    assert MISSING_COL in reasons[bad_keys[1]], reasons


# --- argument errors ---------------------------------------------------------------------------


def test_unknown_model(tmp_path):
    err = batch_fails("--input", EXAMPLE_CSV, "--output", tmp_path / "out", model="no_such_model")
    assert "no_such_model" in err, err
    assert_no_output(tmp_path / "out")


def test_missing_key_column(tmp_path):
    err = batch_fails("--input", EXAMPLE_CSV, "--output", tmp_path / "out", "--key", "customer_id")
    assert "customer_id" in err and "--key" in err, err
    assert_no_output(tmp_path / "out")


def test_unknown_input_format_from_extension(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_bytes(EXAMPLE_CSV.read_bytes())
    err = batch_fails("--input", path, "--output", tmp_path / "out")
    assert "format" in err and "--input-format" in err, err
    assert_no_output(tmp_path / "out")


def test_unknown_input_format_flag(tmp_path):
    err = batch_fails("--input", EXAMPLE_CSV, "--output", tmp_path / "out", "--input-format", "xml")
    assert "xml" in err and "input-format" in err, err


def test_wrong_feature_count(tmp_path):
    err = batch_fails("--input", EXAMPLE_CSV, "--output", tmp_path / "out", "--features", "f0,f1,f2")
    assert "30" in err and "3" in err and "features" in err, err
    assert_no_output(tmp_path / "out")


def test_unknown_feature_column(tmp_path):
    err = batch_fails("--input", EXAMPLE_CSV, "--output", tmp_path / "out", "--features", "f0,nope")
    assert "nope" in err and "--features" in err, err


def test_non_empty_output_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    first = batch_ok("--input", EXAMPLE_CSV, "--output", out)
    err = batch_fails("--input", EXAMPLE_CSV, "--output", out)
    assert "--overwrite" in err and "already" in err, err
    assert read_manifest(out) == first, "a refused job changed the existing output"
    second = batch_ok("--input", EXAMPLE_CSV, "--output", out, "--overwrite")
    assert second["finished_at"] != first["finished_at"]
    parts = sorted(p.name for p in out.iterdir() if p.name.startswith("part-"))
    assert parts == sorted(second["files"]), "--overwrite left the previous job's files"
    assert read_output(out, second).num_rows == 25


def test_failed_overwrite_keeps_the_previous_output(tmp_path):
    out = tmp_path / "out"
    first = batch_ok("--input", EXAMPLE_CSV, "--output", out)
    before = sorted(p.name for p in out.iterdir() if p.name.startswith("part-"))
    path, _ = dirty_csv(tmp_path)
    batch_fails("--input", path, "--output", out, "--overwrite")
    assert read_manifest(out) == first
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("part-")) == before
    assert read_output(out, first).num_rows == 25


def test_foreign_file_in_output_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.txt").write_text("keep me\n")
    err = batch_fails("--input", EXAMPLE_CSV, "--output", out)
    assert "--overwrite" in err, err
    assert (out / "report.txt").read_text() == "keep me\n"
    assert_no_output(out)


# --- a job killed half way ---------------------------------------------------------------------


def _staging_dirs(out: Path) -> list[Path]:
    """A local job's staging directories: hidden siblings of the output, `.<name>.serval-<job>`."""
    return sorted(out.parent.glob(f".{out.name}.serval-*"))


def _kill_mid_write(input_path: Path, out: Path, fmt: str) -> bool:
    """Starts a slow job (one partition, small batches), SIGKILLs it once a staged file holds
    bytes; False if the job finished first."""
    check_binary()
    stderr = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [str(serval_bin()), "batch", str(REPO), MODEL, "--input", str(input_path), "--output", str(out),
         "--input-format", "parquet", "--key", "key", "--format", fmt, "--batch-size", "1024", "--partitions", "1"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
        env=serval_env(),
    )
    try:
        deadline = time.monotonic() + 180
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the job never staged any output"
            staged = (p for d in _staging_dirs(out) for p in d.rglob("*"))
            if any(p.is_file() and p.stat().st_size > 0 for p in staged):
                break
            time.sleep(0.01)
        if proc.poll() is not None:
            stderr.seek(0)
            assert proc.returncode == 0, f"the job failed ({proc.returncode}): {stderr.read().decode()[-4000:]}"
            return False
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        return True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr.close()


def _copies(big_parquet: Path, directory: Path, n: int) -> Path:
    """A directory of `n` hard links to the big Parquet file: n million rows, no extra disk."""
    directory.mkdir()
    for i in range(n):
        os.link(big_parquet, directory / f"part{i}.parquet")
    return directory


# Parquet output reaches staging only a row group (1,048,576 rows by default) at a time, so a
# one-million-row job stages everything in its last half second: the Parquet case reads the
# million rows twice, so the kill lands while the second row group is being computed.
@pytest.mark.parametrize("fmt,copies", [("parquet", 2), ("jsonl", 1)])
def test_killed_job_leaves_nothing_readable(fmt, copies, big_parquet, medium_table, tmp_path):
    out = tmp_path / "out"
    killed = _kill_mid_write(_copies(big_parquet, tmp_path / "in", copies), out, fmt)
    if not killed:
        # Too fast to catch: once more with twice as many rows.
        out = tmp_path / "out2"
        killed = _kill_mid_write(_copies(big_parquet, tmp_path / "in2", 2 * copies), out, fmt)
    assert killed, "the batch job finished before it could be killed, even on twice the rows"

    assert _staging_dirs(out), "the killed job's staging directory is gone"
    assert not out.exists(), f"a killed job left an output: {sorted(p.name for p in out.iterdir())}"
    reader_format = "parquet" if fmt == "parquet" else "json"

    # The staging of the dead job neither blocks a new job nor leaks into its output.
    small = write_parquet(medium_table.slice(0, 1000), tmp_path / "small.parquet")
    manifest = batch_ok("--input", small, "--output", out, "--format", fmt)
    assert manifest["rows_out"] == 1000
    assert ds.dataset(out, format=reader_format).to_table().num_rows == 1000
    assert read_output(out, manifest).num_rows == 1000
    assert not _staging_dirs(out), "the next job did not remove the killed job's staging"


COMMIT_STEPS = ["staged", "named", "manifest", "published"]


def _complete(out: Path) -> dict:
    """What a reader of the directory sees, checked to be one whole output: its `_SUCCESS`,
    exactly the files it names, and as many rows as it says."""
    manifest = read_manifest(out)
    data = sorted(p.name for p in out.iterdir() if not p.name.startswith(("_", ".")))
    assert data == sorted(manifest["files"]), (data, manifest["files"])
    assert ds.dataset(out, format="parquet").to_table().num_rows == manifest["rows_out"]
    return manifest


@pytest.mark.parametrize("step", COMMIT_STEPS)
@pytest.mark.parametrize("overwrite", [False, True], ids=["fresh", "overwrite"])
def test_kill_at_each_commit_step_leaves_a_whole_output_or_none(step, overwrite, medium_table, tmp_path):
    out = tmp_path / "out"
    first = batch_ok("--input", EXAMPLE_CSV, "--output", out) if overwrite else None
    new_input = write_parquet(medium_table.slice(0, 1000), tmp_path / "new.parquet")
    killed = batch("--input", new_input, "--output", out, "--overwrite", env={"SERVAL_FAULT_POINT": step})
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    if step == "published":
        assert _complete(out)["rows_out"] == 1000, "killed after publishing: the new output"
    elif overwrite:
        assert _complete(out) == first, f"killed at '{step}': the previous output must be intact"
    else:
        assert not out.exists(), f"killed at '{step}' before publishing, yet {out} exists"
    again = batch_ok("--input", new_input, "--output", out, "--overwrite")
    assert _complete(out) == again and again["rows_out"] == 1000
    assert not _staging_dirs(out), "the next job did not remove what the killed one left"
