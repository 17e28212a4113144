"""TF Serving REST (`/v1`) and OIP v2 REST metadata, over raw HTTP."""

from __future__ import annotations

import numpy as np
import pytest

from support import (
    ATOL,
    GOLDEN,
    MODELS,
    RTOL,
    assert_error,
    assert_minted,
    assert_outputs_match,
    features,
    golden_keys,
    golden_outputs,
)

TF_DTYPES = {"FP32": "DT_FLOAT", "INT64": "DT_INT64", "BYTES": "DT_STRING"}


def _rows(model, keys=True):
    x = features(model).tolist()
    if not keys:
        return x
    return [{"key": k, "features": f} for k, f in zip(golden_keys(model), x)]


def _columns(predictions):
    """Row-format predictions (objects) as name -> list of per-row values."""
    assert all(isinstance(p, dict) for p in predictions), predictions[:2]
    names = predictions[0].keys()
    assert all(p.keys() == names for p in predictions)
    return {n: [p[n] for p in predictions] for n in names}


def _predict(http, server, path, body):
    r = http.post(f"{server.url}/v1/models/{path}:predict", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    return r.json()


@pytest.mark.parametrize("model", MODELS)
def test_row_format_with_keys(http, server, model):
    body = _predict(http, server, model, {"instances": _rows(model)})
    assert set(body) == {"predictions"}
    got = _columns(body["predictions"])
    assert got["key"] == golden_keys(model)
    assert_outputs_match(model, got)


@pytest.mark.parametrize("model", ["iris_lr", "diabetes_linear"])
def test_row_format_bare_lists_mint_keys(http, server, model):
    body = _predict(http, server, model, {"instances": _rows(model, keys=False)})
    got = _columns(body["predictions"])
    assert_minted(got["key"], len(GOLDEN[model]["rows"]))
    assert_outputs_match(model, got)


def test_row_format_partial_keys_keep_client_keys(http, server):
    model = "iris_forest"
    rows = _rows(model)[:4]
    del rows[1]["key"], rows[3]["key"]
    got = _columns(_predict(http, server, model, {"instances": rows})["predictions"])
    assert got["key"][0] == rows[0]["key"] and got["key"][2] == rows[2]["key"]
    assert_minted([got["key"][1], got["key"][3]], 2)
    assert_outputs_match(model, got, rows=range(4))


@pytest.mark.parametrize("model", ["breast_cancer_lr", "iris_logits", "diabetes_linear"])
def test_columnar_inputs(http, server, model):
    keys = golden_keys(model)
    body = _predict(
        http, server, model, {"inputs": {"features": features(model).tolist(), "key": keys}}
    )
    assert set(body) == {"outputs"}
    assert body["outputs"]["key"] == keys
    assert_outputs_match(model, body["outputs"])


def test_columnar_bare_input(http, server):
    model = "iris_lr"
    body = _predict(http, server, model, {"inputs": features(model).tolist()})
    assert_minted(body["outputs"]["key"], len(GOLDEN[model]["rows"]))
    assert_outputs_match(model, body["outputs"])


@pytest.mark.parametrize("model", ["breast_cancer_gbt", "iris_logits"])
def test_versioned_path(http, server, model):
    body = _predict(http, server, f"{model}/versions/1", {"instances": _rows(model)})
    got = _columns(body["predictions"])
    assert got["key"] == golden_keys(model)
    assert_outputs_match(model, got)


@pytest.mark.parametrize(
    "model,signature", [("iris_logits", "classify"), ("breast_cancer_lr", "screening")]
)
@pytest.mark.parametrize("fmt", ["rows", "columns"])
def test_signatures(http, server, model, signature, fmt):
    if fmt == "rows":
        body = _predict(http, server, model, {"signature_name": signature, "instances": _rows(model)})
        got = _columns(body["predictions"])
    else:
        body = _predict(
            http,
            server,
            model,
            {"signature_name": signature, "inputs": {"features": features(model).tolist(), "key": golden_keys(model)}},
        )
        got = body["outputs"]
    assert got["key"] == golden_keys(model)
    assert_outputs_match(model, got, signature=signature)


def test_serving_default_by_name(http, server):
    model = "iris_logits"
    body = _predict(http, server, model, {"signature_name": "serving_default", "instances": _rows(model)})
    assert_outputs_match(model, _columns(body["predictions"]))


@pytest.mark.parametrize("model", MODELS)
def test_status(http, server, model):
    expected = {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    for path in (model, f"{model}/versions/1"):
        r = http.get(f"{server.url}/v1/models/{path}", timeout=10)
        assert r.status_code == 200, r.text
        assert r.json() == expected


@pytest.mark.parametrize("model", MODELS)
def test_tf_metadata_matches_inspect(http, server, inspect_json, model):
    for path in (model, f"{model}/versions/1"):
        r = http.get(f"{server.url}/v1/models/{path}/metadata", timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_spec"] == {"name": model, "signature_name": "", "version": "1"}
        sigs = body["metadata"]["signature_def"]["signature_def"]
        expected = {s["name"]: s for s in inspect_json[model]["signatures"]}
        assert set(sigs) == set(expected)
        for name, sig in sigs.items():
            for kind in ("inputs", "outputs"):
                want = {
                    t["name"]: {
                        "name": t["name"],
                        "dtype": TF_DTYPES[t["datatype"]],
                        "tensor_shape": {
                            "dim": [{"size": str(d), "name": ""} for d in t["shape"]],
                            "unknown_rank": False,
                        },
                    }
                    for t in expected[name][kind]
                }
                assert sig[kind] == want, (name, kind)


@pytest.mark.parametrize("model", MODELS)
def test_v2_metadata_matches_inspect(http, server, inspect_json, model):
    default = next(s for s in inspect_json[model]["signatures"] if s["name"] == "serving_default")
    for path in (model, f"{model}/versions/1"):
        r = http.get(f"{server.url}/v2/models/{path}", timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["name"] == model
        assert body["versions"] == ["1"]
        for kind in ("inputs", "outputs"):
            assert body[kind] == [
                {"name": t["name"], "datatype": t["datatype"], "shape": t["shape"]} for t in default[kind]
            ], kind
        ready = http.get(f"{server.url}/v2/models/{path}/ready", timeout=10)
        assert ready.status_code == 200 and ready.json() == {"name": model, "ready": True}


def test_health_endpoints(http, server):
    assert http.get(f"{server.url}/v2/health/live", timeout=10).json() == {"live": True}
    assert http.get(f"{server.url}/v2/health/ready", timeout=10).json() == {"ready": True}
    meta = http.get(f"{server.url}/v2", timeout=10).json()
    assert meta["name"] == "serval" and isinstance(meta["version"], str)


def test_metadata_not_found(http, server):
    assert_error(http.get(f"{server.url}/v1/models/no_such_model", timeout=10), 404, "no_such_model")
    assert_error(http.get(f"{server.url}/v1/models/iris_lr/versions/9", timeout=10), 404, "9")
    assert_error(http.get(f"{server.url}/v1/models/iris_lr/labels/canary/metadata", timeout=10), 404, "canary")
    assert_error(http.get(f"{server.url}/v2/models/no_such_model", timeout=10), 404, "no_such_model")
    assert_error(http.get(f"{server.url}/v2/models/iris_lr/versions/9", timeout=10), 404, "9")
    assert_error(http.get(f"{server.url}/v2/models/no_such_model/ready", timeout=10), 404, "no_such_model")
    assert_error(http.get(f"{server.url}/no/such/route", timeout=10), 404, "/no/such/route")


def test_classify_returns_label_score_pairs_per_example(http, server):
    """TF Serving's Classify API: `examples` (with shared `context`) in, `[label, score]` for every
    class out, labels from the model's class_labels, scores the signature's probabilities."""
    model = "iris_logits"
    rows = features(model).tolist()
    # `context` holds features every example shares: here the whole input, overridden per example.
    body = {"signature_name": "classify", "context": {"features": rows[0]},
            "examples": [{"key": k} if i == 0 else {"key": k, "features": f}
                         for i, (k, f) in enumerate(zip(golden_keys(model), rows))]}
    r = http.post(f"{server.url}/v1/models/{model}:classify", json=body, timeout=30)
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    expected = golden_outputs(model, "classify")["probabilities"]
    assert len(result) == len(expected)
    for got, want in zip(result, expected):
        assert [label for label, _ in got] == ["setosa", "versicolor", "virginica"]
        np.testing.assert_allclose([p for _, p in got], want, rtol=RTOL, atol=ATOL)


def test_regress_returns_one_value_per_example(http, server):
    model = "diabetes_linear"
    body = {"examples": [{"features": f} for f in features(model).tolist()]}
    r = http.post(f"{server.url}/v1/models/{model}:regress", json=body, timeout=30)
    assert r.status_code == 200, r.text
    want = np.asarray(golden_outputs(model)["variable"], dtype=np.float64).reshape(-1)
    np.testing.assert_allclose(r.json()["result"], want, rtol=RTOL, atol=ATOL)


def test_classify_without_one_score_output_says_so(http, server):
    body = {"examples": [{"features": features("diabetes_linear").tolist()[0]}]}
    r = http.post(f"{server.url}/v1/models/diabetes_linear:classify", json=body, timeout=30)
    assert_error(r, 400, "exactly one [N, C] float output")
