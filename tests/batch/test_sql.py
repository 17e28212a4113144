"""`serval sql`: predict(...) in SELECT and in COPY ... TO."""

from __future__ import annotations

import numpy as np
import pytest
import pyarrow.dataset as ds

from batch_support import EXAMPLE_CSV, FEATURE_NAMES, MODEL, features_of, key_index, make_table, plain_strings, probabilities, run_serval, write_parquet
from support import GOLDEN, REPO

F_COLUMNS = ", ".join(f"f{i}" for i in range(30))


def sql(*args, **kw):
    res = run_serval("sql", REPO, *args, **kw)
    assert res.returncode == 0, f"serval sql failed ({res.returncode}):\n{res.stderr[-4000:]}"
    return res


def table_rows(text: str) -> list[list[str]]:
    """The cells of a printed table (`| a | b |` lines), header first."""
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|")
    ]


def test_select_prints_predicted_labels():
    res = sql(
        f"SELECT key, predict('{MODEL}', {F_COLUMNS})['label'] AS label "
        f"FROM '{EXAMPLE_CSV}' ORDER BY key"
    )
    rows = table_rows(res.stdout)
    assert rows and rows[0] == ["key", "label"], res.stdout
    got = {key: int(label) for key, label in rows[1:]}
    g = GOLDEN[MODEL]
    assert got == {r["key"]: label for r, label in zip(g["rows"], g["outputs"]["label"])}, res.stdout


@pytest.mark.parametrize("extension", ["json", "jsonl"])
def test_select_from_json_lines_file(tmp_path, extension):
    """A JSON Lines file queried directly, like a .csv or .parquet one, under either extension."""
    path = tmp_path / f"cases.{extension}"
    g = GOLDEN[MODEL]
    path.write_text("".join(f'{{"key": "{r["key"]}", "features": {r["features"]}}}\n' for r in g["rows"]))
    res = sql(f"SELECT key, predict('{MODEL}', features)['label'] AS label FROM '{path}' ORDER BY key")
    rows = table_rows(res.stdout)
    assert rows and rows[0] == ["key", "label"], res.stdout
    got = {key: int(label) for key, label in rows[1:]}
    assert got == {r["key"]: label for r, label in zip(g["rows"], g["outputs"]["label"])}, res.stdout


def test_select_from_registered_table_with_version_and_signature():
    res = sql(
        f"SELECT key, predict('{MODEL}:screening', '1', {F_COLUMNS})['diagnosis'] AS diagnosis "
        "FROM cases ORDER BY key",
        "--table", f"cases={EXAMPLE_CSV}",
    )
    rows = table_rows(res.stdout)
    assert rows[0] == ["key", "diagnosis"], res.stdout
    g = GOLDEN[MODEL]
    expected = dict(zip([r["key"] for r in g["rows"]], g["signatures"]["screening"]["diagnosis"]))
    assert dict(rows[1:]) == expected, res.stdout


def test_copy_to_parquet(tmp_path, ort_session):
    n = 20_000
    source = make_table(n, seed=5)
    path = write_parquet(source, tmp_path / "rows.parquet", row_group_rows=4096)
    out = tmp_path / "copied"
    quoted = ", ".join(f'"{c}"' for c in FEATURE_NAMES)
    sql(
        f"COPY (SELECT key, predict('{MODEL}', {quoted}) AS p FROM '{path}') "
        f"TO '{out}/' STORED AS PARQUET"
    )
    files = sorted(out.rglob("*.parquet"))
    assert files, f"COPY wrote nothing under {out}"
    table = plain_strings(ds.dataset(out, format="parquet").to_table())
    assert table.num_rows == n
    assert len(set(table.column("key").to_pylist())) == n
    sample = table.slice(0, 1000)
    x = features_of(source, key_index(sample.column("key").to_pylist()))
    label, prob = ort_session.run(None, {"features": x})
    p = sample.column("p").combine_chunks()
    np.testing.assert_array_equal(p.field("label").to_numpy(zero_copy_only=False), label)
    np.testing.assert_allclose(probabilities(p.field("probabilities")), prob, atol=1e-5, rtol=0)


def test_bad_sql_is_a_clear_error():
    res = run_serval("sql", REPO, f"SELECT predict('no_such_model', f0) FROM '{EXAMPLE_CSV}'")
    assert res.returncode != 0
    assert "error" in res.stderr.lower() and "no_such_model" in res.stderr, res.stderr
