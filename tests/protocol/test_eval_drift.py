"""`serval profile` and the drift / data-quality part of `serval eval`, against real processes and
files. A "training" half of load_breast_cancer is profiled, the other half is logged over four UTC
days by `serval batch --prediction-log --time-column` (day 3: mean radius shifted by +1 reference
sd, day 4: features 0-9 by +0.5 sd), and every drift value is checked against scipy (the oracle,
pinned in requirements.txt) on the same float32 values: the reference's from the training file
written here, the windows' from the inputs written here and the outputs `serval batch` wrote."""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn.datasets import load_breast_cancer

from support import REPO
from test_eval import (
    DAY,
    DAY0,
    MODEL,
    eval_json,
    fresh_log,
    read_output,
    run_batch,
    run_eval,
    serval,
    spread_over_days,
    write_inputs,
)

N_FEATURES = 30
DAY_SIZE = 71  # the 284 rows not used for training, over 4 UTC days
FEATURES = [f"features[{j}]" for j in range(N_FEATURES)]
OUTPUTS = ["label", "probabilities[0]", "probabilities[1]"]
COLUMNS = FEATURES + OUTPUTS
P_THRESHOLD = 0.05  # ks / z / chisquare
DISTANCE_THRESHOLD = 0.1  # wasserstein / psi / ...
# Day 3 (index 2): values of feature 2 outside the training range. The training max itself is in
# range; the rest are not (three above the max, one below the min).
OUT_OF_RANGE_DAY = 2


# ---------------------------------------------------------------------------------------------
# The scenario
# ---------------------------------------------------------------------------------------------

def f32(values) -> np.ndarray:
    """What the model sees and the log and profile hold: float32 values, as float64."""
    return np.asarray(values, dtype=np.float64).astype(np.float32).astype(np.float64)


def write_training(path: Path, keys, X: np.ndarray) -> None:
    """`key,f0..f29`, float32-exact text: the reference data `serval profile` reads."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", *(f"f{j}" for j in range(X.shape[1]))])
        for key, row in zip(keys, X):
            writer.writerow([key, *(repr(float(v)) for v in row.astype(np.float32))])


@dataclass
class Scenario:
    repo: Path  # a copy of examples/models with breast_cancer_lr/1/reference_profile.json
    log: Path  # the 4 logged days, no labels; tests copy it before writing into it
    train_csv: Path
    profile: dict
    ref: dict[str, np.ndarray]  # column -> the reference values (float32 as float64; label int)
    cur: dict[str, np.ndarray]  # column -> the 284 logged values, in the order of `day`
    day: np.ndarray  # 0..3 for every logged row
    keys: np.ndarray  # the logged rows' keys, in the order of `day`
    truth: np.ndarray  # their true classes
    report: list[dict]  # `serval eval --window 1d --format json` with the profile

    def window(self, column: str, d: int) -> np.ndarray:
        return self.cur[column][self.day == d]


def columns_of(X: np.ndarray, label: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    cols = {f"features[{j}]": f32(X[:, j]) for j in range(X.shape[1])}
    cols["label"] = np.asarray(label, dtype=np.int64)
    cols["probabilities[0]"] = f32(scores[:, 0])
    cols["probabilities[1]"] = f32(scores[:, 1])
    return cols


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Scenario:
    tmp = tmp_path_factory.mktemp("drift")
    X, y = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(42)
    idx = rng.permutation(len(X))  # notes §6.2: reference idx[:285], current idx[285:]
    train, logged = idx[:285], idx[285:]
    assert len(logged) == 4 * DAY_SIZE

    repo = tmp / "repo"
    shutil.copytree(REPO, repo)  # profiles are written beside model.onnx: never into examples/
    train_keys = [f"train-{i:03d}" for i in train]
    write_training(tmp / "train.csv", train_keys, X[train])
    res = serval("profile", repo, MODEL, "--data", tmp / "train.csv")
    assert res.returncode == 0, res.stderr
    profile_path = repo / MODEL / "1" / "reference_profile.json"
    profile = json.loads(profile_path.read_text())

    # The reference's outputs: the model's on the training rows (a log of its own, unused after).
    train_log = tmp / "train-log"
    train_log.mkdir()
    write_inputs(tmp / "train-in.csv", np.array(train_keys), X[train], [DAY0 - DAY] * len(train))
    run_batch(MODEL, tmp / "train-in.csv", tmp / "train-out", train_log)
    out = read_output(tmp / "train-out", train_keys)
    ref = columns_of(X[train], np.array([out[k]["label"] for k in train_keys]),
                     np.array([out[k]["probabilities"] for k in train_keys], dtype=np.float32))

    # The logged days: day d holds logged[71d:71(d+1)], shifted by the reference's std (ddof 0).
    day = np.repeat(np.arange(4), DAY_SIZE)
    sd = np.array([ref[f"features[{j}]"].std() for j in range(10)])
    Xc = X[logged].copy()
    Xc[day == 2, 0] += 1.0 * sd[0]
    Xc[day == 3, :10] += 0.5 * sd
    lo, hi = float(ref["features[2]"].min()), float(ref["features[2]"].max())
    injected = np.flatnonzero(day == OUT_OF_RANGE_DAY)[[3, 17, 29, 41, 55]]
    Xc[injected, 2] = [hi, hi + 0.5, hi * 1.05, hi * 1.2, lo * 0.9]
    ts = np.empty(len(logged), dtype=object)
    for d, times in enumerate(spread_over_days([DAY_SIZE] * 4, np.random.default_rng(5))):
        ts[day == d] = times
    keys = np.array([f"bc-{i:03d}" for i in logged])
    write_inputs(tmp / "logged.csv", keys, Xc, ts)
    log = tmp / "log"
    log.mkdir()
    run_batch(MODEL, tmp / "logged.csv", tmp / "out", log)
    out = read_output(tmp / "out", keys)
    cur = columns_of(Xc, np.array([out[k]["label"] for k in keys]),
                     np.array([out[k]["probabilities"] for k in keys], dtype=np.float32))
    # batch's output echoes the inputs it was fed: the float32 values of the file.
    for j in range(N_FEATURES):
        np.testing.assert_array_equal(np.array([out[k][f"f{j}"] for k in keys]), cur[f"features[{j}]"])

    report = eval_json(log, "--window", "1d", repo=repo)
    assert len(report) == 4, [w["window_start"] for w in report]
    assert [w["rows"] for w in report] == [DAY_SIZE] * 4
    return Scenario(repo, log, tmp / "train.csv", profile, ref, cur, day, keys, y[logged], report)


# ---------------------------------------------------------------------------------------------
# The oracle (Evidently's definitions, notes §1)
# ---------------------------------------------------------------------------------------------

def ks_p(ref: np.ndarray, cur: np.ndarray) -> float:
    return float(stats.ks_2samp(ref, cur).pvalue)  # scipy's default method, as Evidently


def z_p(ref: np.ndarray, cur: np.ndarray) -> float:
    """Evidently's pooled two-proportion z-test (first sorted category -> 0, the rest -> 1)."""
    if len(set(ref.tolist())) == 1 and set(ref.tolist()) == set(cur.tolist()):
        return 1.0
    first = sorted(set(ref.tolist()) | set(cur.tolist()))[0]
    a, b = (ref != first).astype(float), (cur != first).astype(float)
    p1, p2, n1, n2 = a.mean(), b.mean(), len(a), len(b)
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return float(2 * (1 - stats.norm.cdf(abs(z))))


def wasserstein_normed(ref: np.ndarray, cur: np.ndarray) -> float:
    return float(stats.wasserstein_distance(ref, cur) / max(np.std(ref), 0.001))


def expected_data_quality(ref: dict[str, np.ndarray], window: dict[str, np.ndarray]) -> dict:
    """Only columns with a finding: numbers outside the reference's [min, max], categories the
    reference never had, one value where the reference had several (nothing here is missing)."""
    out = {}
    for column, values in window.items():
        r = ref[column]
        if column == "label":
            oor, unseen = 0, int(np.sum(~np.isin(values, r)))
        else:
            oor, unseen = int(np.sum((values < r.min()) | (values > r.max()))), 0
        constant = len(np.unique(values)) == 1 and len(np.unique(r)) > 1
        if oor or unseen or constant:
            out[column] = {"missing": 0, "out_of_range": oor, "unseen": unseen, "constant": constant}
    return out


def assert_share(window: dict, where: str) -> None:
    drift = window["drift"]
    drifted = sum(1 for v in drift.values() if v["drifted"])
    assert window["drift_share"] == drifted / len(drift), f"{where}: {window['drift_share']} != {drifted}/{len(drift)}"


def assert_p_value_drift(entry: dict, method: str, expected: float, where: str,
                         threshold: float = P_THRESHOLD) -> None:
    assert entry["method"] == method, f"{where}: {entry}"
    assert entry["threshold"] == threshold, f"{where}: {entry}"
    assert math.isclose(entry["value"], expected, rel_tol=1e-6, abs_tol=1e-12), \
        f"{where}: {method} p {entry['value']!r} != scipy {expected!r}"
    # ks: drifted when p <= threshold; z: p < threshold (no value here sits on the threshold).
    assert entry["drifted"] == (expected <= threshold), f"{where}: {entry}, scipy p {expected}"


# ---------------------------------------------------------------------------------------------
# 1. KS against the training profile
# ---------------------------------------------------------------------------------------------

def test_every_column_drifts_by_scipys_ks_and_z_test_against_the_profile(scenario):
    s = scenario
    for d, window in enumerate(s.report):
        where = f"day {d + 1}"
        assert set(window["drift"]) == set(COLUMNS), f"{where}: {sorted(window['drift'])}"
        for column in FEATURES + ["probabilities[0]", "probabilities[1]"]:
            # 285 reference rows (<= 1000) and > 5 distinct values: Evidently picks ks.
            assert_p_value_drift(window["drift"][column], "ks", ks_p(s.ref[column], s.window(column, d)),
                                 f"{where} {column}")
        # The label: 2 categories -> z.
        assert_p_value_drift(window["drift"]["label"], "z", z_p(s.ref["label"], s.window("label", d)),
                             f"{where} label")
        assert_share(window, where)


def test_the_oracle_needs_float32_values(scenario):
    """Guards the oracle above: the window's values parsed as float64 text (18.61, not float32's
    18.6100006...) break ties with the reference differently and move some p-values, so agreement
    at 1e-6 means serval compared the float32 values on both sides."""
    s = scenario
    moved = 0
    for d in range(4):
        for column in FEATURES:
            cur = s.window(column, d)
            as_text = np.array([float(str(np.float32(v))) for v in cur])  # the log's JSON text
            if not math.isclose(ks_p(s.ref[column], cur), ks_p(s.ref[column], as_text), rel_tol=1e-6):
                moved += 1
    assert moved > 0


def test_shifted_days_flag_mean_radius_and_unshifted_days_stay_quiet(scenario):
    s = scenario
    drift = [w["drift"] for w in s.report]
    share = [w["drift_share"] for w in s.report]
    # +1.0 sd on day 3, +0.5 sd on day 4: feature 0 drifts on both, by far.
    assert drift[2]["features[0]"]["drifted"] and drift[2]["features[0]"]["value"] < 1e-10, drift[2]["features[0]"]
    assert drift[3]["features[0]"]["drifted"] and drift[3]["features[0]"]["value"] < 1e-4, drift[3]["features[0]"]
    # Day 4: all ten shifted features drift, so at least 10 of the 33 columns.
    assert all(drift[3][f"features[{j}]"]["drifted"] for j in range(10)), \
        {c: v["value"] for c, v in drift[3].items()}
    assert share[3] >= 10 / len(COLUMNS), share
    # Days 1-2 are unshifted, but KS false-alarms at ~5 % per column (notes §6.2: 6.5 % on mean
    # radius), and the size features (radius, perimeter, area and their "worst" twins) are
    # strongly correlated, so one unlucky sample of 71 flags several at once (measured: day 1
    # 5/33 - features 0, 2, 3, 20, 23 -, day 2 1/33). A loose bound, not zero.
    assert share[0] <= 0.2 and share[1] <= 0.2, share
    assert share[3] > max(share[:2]), share


# ---------------------------------------------------------------------------------------------
# 2. Data quality
# ---------------------------------------------------------------------------------------------

def test_values_outside_the_training_range_are_counted_exactly(scenario):
    s = scenario
    for d, window in enumerate(s.report):
        values = {c: s.window(c, d) for c in COLUMNS}
        assert window["data_quality"] == expected_data_quality(s.ref, values), f"day {d + 1}"
    # Day 3: the injected values (the training max itself is in range).
    assert s.report[OUT_OF_RANGE_DAY]["data_quality"]["features[2]"] == {
        "missing": 0, "out_of_range": 4, "unseen": 0, "constant": False}
    # Days 1 and 2 hold no feature-2 value outside the training range: no entry at all.
    for d in (0, 1):
        assert "features[2]" not in s.report[d]["data_quality"], s.report[d]["data_quality"]


# ---------------------------------------------------------------------------------------------
# 3. The log's own records as the reference
# ---------------------------------------------------------------------------------------------

def test_reference_from_the_log_uses_the_records_of_days_1_and_2(scenario, tmp_path):
    s = scenario
    log = fresh_log(s.log, tmp_path)
    report = eval_json(log, "--window", "1d", "--reference-from", "2026-03-01",
                       "--reference-to", "2026-03-03T00:00:00Z", repo=REPO)  # no profile there
    assert len(report) == 4
    pooled = {c: s.cur[c][s.day <= 1] for c in COLUMNS}
    assert len(pooled["features[0]"]) == 2 * DAY_SIZE
    for d, window in enumerate(report):
        where = f"day {d + 1} vs days 1-2"
        assert set(window["drift"]) == set(COLUMNS), f"{where}: {sorted(window['drift'])}"
        for column in FEATURES + ["probabilities[0]", "probabilities[1]"]:
            assert_p_value_drift(window["drift"][column], "ks", ks_p(pooled[column], s.window(column, d)),
                                 f"{where} {column}")
        assert_p_value_drift(window["drift"]["label"], "z", z_p(pooled["label"], s.window("label", d)),
                             f"{where} label")
        assert_share(window, where)
        values = {c: s.window(c, d) for c in COLUMNS}
        assert window["data_quality"] == expected_data_quality(pooled, values), where
    assert report[2]["drift"]["features[0]"]["drifted"], report[2]["drift"]["features[0]"]
    assert report[2]["drift"]["features[0]"]["value"] < 1e-8


# ---------------------------------------------------------------------------------------------
# 4. Forced methods and thresholds
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["psi", "wasserstein"])
def test_a_forced_method_replaces_the_automatic_choice_where_it_applies(scenario, tmp_path, method):
    s = scenario
    report = eval_json(fresh_log(s.log, tmp_path), "--window", "1d", "--drift-method", method, repo=s.repo)
    assert len(report) == 4
    numeric = FEATURES + ["probabilities[0]", "probabilities[1]"]
    for d, window in enumerate(report):
        where = f"day {d + 1} {method}"
        assert set(window["drift"]) == set(COLUMNS)
        for column in numeric:
            entry = window["drift"][column]
            assert entry["method"] == method and entry["threshold"] == DISTANCE_THRESHOLD, f"{where} {column}: {entry}"
            value = entry["value"]
            assert isinstance(value, (int, float)) and math.isfinite(value) and value >= 0, f"{where} {column}: {entry}"
            assert entry["drifted"] == (value >= DISTANCE_THRESHOLD), f"{where} {column}: {entry}"
            if method == "wasserstein":
                expected = wasserstein_normed(s.ref[column], s.window(column, d))
                assert math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12), \
                    f"{where} {column}: {value!r} != scipy {expected!r}"
        label = window["drift"]["label"]
        if method == "psi":  # psi applies to categories too
            assert label["method"] == "psi" and math.isfinite(label["value"]) and label["value"] >= 0, label
        else:  # wasserstein does not: the label keeps its automatic z-test
            assert_p_value_drift(label, "z", z_p(s.ref["label"], s.window("label", d)), f"{where} label")
        assert_share(window, where)
        # The method changes drift, nothing else.
        assert {k: v for k, v in window.items() if k not in ("drift", "drift_share")} == \
            {k: v for k, v in s.report[d].items() if k not in ("drift", "drift_share")}, where


def test_config_sets_methods_per_model_and_per_column_and_the_command_line_wins(scenario, tmp_path):
    s = scenario
    repo = tmp_path / "repo"
    shutil.copytree(s.repo, repo)
    with (repo / MODEL / "config.toml").open("a") as f:
        f.write('\n[monitor]\ndrift_method = "psi"\n\n[monitor.drift."features[0]"]\n'
                'method = "wasserstein"\nthreshold = 0.3\n')
    report = eval_json(s.log, "--window", "1d", repo=repo)
    for d, window in enumerate(report):
        first = window["drift"]["features[0]"]
        assert first["method"] == "wasserstein" and first["threshold"] == 0.3, first
        assert math.isclose(first["value"], wasserstein_normed(s.ref["features[0]"], s.window("features[0]", d)),
                            rel_tol=1e-9, abs_tol=1e-12)
        assert first["drifted"] == (first["value"] >= 0.3)
        assert all(window["drift"][c]["method"] == "psi" for c in FEATURES[1:]), window["drift"]
    # The command line overrides both.
    forced = eval_json(s.log, "--window", "1d", "--drift-method", "ks", repo=repo)
    assert all(w["drift"][c]["method"] == "ks" for w in forced for c in FEATURES)
    with (repo / MODEL / "config.toml").open("a") as f:
        f.write('\n[monitor.drift."features[1]"]\nmethod = "nope"\n')
    bad = run_eval(s.log, "--window", "1d", repo=repo)
    assert bad.returncode != 0 and "nope" in bad.stderr and "features[1]" in bad.stderr, bad.stderr


def test_a_drift_threshold_replaces_the_methods_default(scenario):
    s = scenario
    report = eval_json(s.log, "--window", "1d", "--drift-threshold", "0.001", repo=s.repo)
    for d, window in enumerate(report):
        for column in FEATURES:
            assert_p_value_drift(window["drift"][column], "ks", ks_p(s.ref[column], s.window(column, d)),
                                 f"day {d + 1} {column} at 0.001", threshold=0.001)
        assert_share(window, f"day {d + 1}")
    assert report[0]["drift_share"] < s.report[0]["drift_share"]


def test_an_unknown_drift_method_is_refused_naming_it(scenario):
    res = run_eval(scenario.log, "--window", "1d", "--format", "json", "--drift-method", "foo",
                   repo=scenario.repo)
    assert res.returncode != 0, res.stdout
    assert "foo" in res.stderr, res.stderr
    assert res.stdout.strip() == "", res.stdout


# ---------------------------------------------------------------------------------------------
# 5. No profile, no drift
# ---------------------------------------------------------------------------------------------

def test_without_a_profile_there_is_no_drift(scenario):
    assert not (REPO / MODEL / "1" / "reference_profile.json").exists()
    report = eval_json(scenario.log, "--window", "1d", repo=REPO)
    assert len(report) == 4
    assert all(w["drift"] == {} and w["drift_share"] is None for w in report), \
        [(w["drift"], w["drift_share"]) for w in report]


# ---------------------------------------------------------------------------------------------
# 6. serval profile
# ---------------------------------------------------------------------------------------------

def test_the_profile_holds_the_training_data_and_the_models_outputs(scenario):
    s, p = scenario, scenario.profile
    assert (p["model"], p["version"], p["signature"], p["rows"]) == (MODEL, 1, "serving_default", 285)
    assert set(p["columns"]) == set(COLUMNS)
    for column in FEATURES + ["probabilities[0]", "probabilities[1]"]:
        c, ref = p["columns"][column], s.ref[column]
        assert (c["kind"], c["count"], c["missing"]) == ("numerical", 285, 0), column
        # Every value (285 < --sample-size 5000), float32 as float64, in any order.
        np.testing.assert_array_equal(np.sort(c["numbers"]), np.sort(ref), err_msg=column)
        assert (c["min"], c["max"]) == (ref.min(), ref.max()), column
        assert c["mean"] == pytest.approx(ref.mean(), rel=1e-12), column
        assert c["std"] == pytest.approx(ref.std(), rel=1e-9), column  # ddof 0, as Evidently
    label = p["columns"]["label"]
    assert (label["kind"], label["count"], label["missing"]) == ("categorical", 285, 0)
    values, counts = np.unique(s.ref["label"], return_counts=True)
    assert label["frequencies"] == {str(v): int(n) for v, n in zip(values, counts)}


def test_a_sample_size_keeps_that_many_training_values(scenario, tmp_path):
    out = tmp_path / "profile.json"
    res = serval("profile", scenario.repo, MODEL, "--data", scenario.train_csv, "--sample-size", "100",
                 "--output", out)
    assert res.returncode == 0, res.stderr
    p = json.loads(out.read_text())
    assert p["rows"] == 285
    c = p["columns"]["features[0]"]
    assert c["count"] == 285 and len(c["numbers"]) == 100
    assert np.isin(c["numbers"], scenario.ref["features[0]"]).all()
    # The summary statistics are still over all the rows.
    assert c["mean"] == pytest.approx(scenario.profile["columns"]["features[0]"]["mean"], rel=1e-12)


def test_profile_refuses_an_unknown_model_naming_it(scenario, tmp_path):
    res = serval("profile", scenario.repo, "no_such_model", "--data", scenario.train_csv,
                 "--output", tmp_path / "p.json")
    assert res.returncode != 0, res.stdout
    assert "no_such_model" in res.stderr, res.stderr
    assert not (tmp_path / "p.json").exists()


def test_profile_refuses_a_missing_data_file_naming_it(scenario, tmp_path):
    missing = tmp_path / "no-such-training.csv"
    res = serval("profile", scenario.repo, MODEL, "--data", missing, "--output", tmp_path / "p.json")
    assert res.returncode != 0, res.stdout
    assert missing.name in res.stderr, res.stderr
    assert not (tmp_path / "p.json").exists()
