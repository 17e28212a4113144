"""OIP v2 REST through `tritonclient.http`: binary and JSON tensors, keys, ids, metadata."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support import (
    GOLDEN,
    MODELS,
    assert_minted,
    assert_outputs_match,
    features,
    golden_keys,
    texts,
)


def _inputs(model, rows=None, keys=None, binary=True):
    x = features(model, rows)
    inp = httpclient.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    inputs = [inp]
    if keys is not None:
        k = httpclient.InferInput("key", [len(keys)], "BYTES")
        k.set_data_from_numpy(np.array(keys, dtype=np.object_), binary_data=binary)
        inputs.append(k)
    return inputs


def _outputs(model, binary):
    names = list(GOLDEN[model]["outputs"]) + ["key"]
    return [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]


def _result_dict(result, model, with_key=True):
    names = [o["name"] for o in result.get_response()["outputs"]]
    return {n: result.as_numpy(n) for n in names}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model", MODELS)
def test_infer_matches_golden_with_keys(triton_http, model, binary):
    keys = golden_keys(model)
    result = triton_http.infer(
        model,
        _inputs(model, keys=keys, binary=binary),
        outputs=None if binary else _outputs(model, binary=False),
        request_id=f"req-{model}",
    )
    response = result.get_response()
    assert response["model_name"] == model
    assert response["model_version"] == "1"
    assert response["id"] == f"req-{model}"
    for out in response["outputs"]:
        if binary:
            assert "binary_data_size" in out.get("parameters", {}), out
            assert "data" not in out
        else:
            assert "data" in out and "parameters" not in out, out
    got = _result_dict(result, model)
    assert texts(got["key"]) == keys
    assert list(got["key"].shape) == [len(keys)]
    assert_outputs_match(model, got)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_minted_keys_are_unique_uuid7(triton_http, binary):
    model = "iris_lr"
    seen = set()
    for _ in range(3):
        result = triton_http.infer(
            model,
            _inputs(model, binary=binary),
            outputs=None if binary else _outputs(model, binary=False),
        )
        keys = texts(result.as_numpy("key"))
        assert_minted(keys, len(GOLDEN[model]["rows"]))
        assert not seen & set(keys), "minted keys repeat across requests"
        seen |= set(keys)
        assert_outputs_match(model, _result_dict(result, model))


def test_versioned_infer_and_subset_of_outputs(triton_http):
    model = "breast_cancer_mlp"
    rows = [3, 1, 4]
    keys = ["a", "β-ünïcode", ""]
    result = triton_http.infer(
        model,
        _inputs(model, rows, keys=keys),
        model_version="1",
        outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=False)],
    )
    names = [o["name"] for o in result.get_response()["outputs"]]
    # Keys always come back; other outputs only when requested.
    assert names == ["probabilities", "key"]
    assert texts(result.as_numpy("key")) == keys
    expected = np.array(GOLDEN[model]["outputs"]["probabilities"])[rows]
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-5, atol=1e-6)


def test_mixed_binary_and_json_inputs(triton_http):
    model = "iris_forest"
    x = features(model)
    inp = httpclient.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    keys = golden_keys(model)
    k = httpclient.InferInput("key", [len(keys)], "BYTES")
    k.set_data_from_numpy(np.array(keys, dtype=np.object_), binary_data=False)
    outputs = [
        httpclient.InferRequestedOutput("label", binary_data=True),
        httpclient.InferRequestedOutput("probabilities", binary_data=False),
        httpclient.InferRequestedOutput("key", binary_data=True),
    ]
    result = triton_http.infer(model, [k, inp], outputs=outputs)
    assert texts(result.as_numpy("key")) == keys
    assert_outputs_match(model, _result_dict(result, model))


def test_signature_via_parameters(triton_http):
    model = "iris_logits"
    result = triton_http.infer(
        model, _inputs(model), parameters={"signature_name": "classify"}
    )
    assert_outputs_match(model, _result_dict(result, model), signature="classify")


def test_health_and_metadata(triton_http, inspect_json):
    assert triton_http.is_server_live()
    assert triton_http.is_server_ready()
    meta = triton_http.get_server_metadata()
    assert meta["name"] == "serval"
    assert "binary_tensor_data" in meta["extensions"]
    for model in MODELS:
        assert triton_http.is_model_ready(model)
        assert triton_http.is_model_ready(model, "1")
        m = triton_http.get_model_metadata(model)
        default = next(s for s in inspect_json[model]["signatures"] if s["name"] == "serving_default")
        assert m["name"] == model and m["versions"] == ["1"]
        assert m["inputs"] == [
            {"name": t["name"], "datatype": t["datatype"], "shape": t["shape"]} for t in default["inputs"]
        ]
        assert m["outputs"] == [
            {"name": t["name"], "datatype": t["datatype"], "shape": t["shape"]} for t in default["outputs"]
        ]
        cfg = triton_http.get_model_config(model)
        assert cfg["name"] == model
        assert [i["name"] for i in cfg["input"]] == ["features"]
    assert not triton_http.is_model_ready("no_such_model")


def test_errors_surface_as_exceptions(triton_http):
    with pytest.raises(InferenceServerException) as err:
        triton_http.infer("no_such_model", _inputs("iris_lr"))
    assert "no_such_model" in err.value.message()
    assert err.value.status() == "404"


def test_raw_response_id_echoed_or_absent(http, server):
    """OIP `id` is an optional string: echoed when sent, omitted (not null) when not."""
    model = "iris_lr"
    x = features(model, [0])
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": x.ravel().tolist()}]}
    r = http.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=10)
    assert r.status_code == 200, r.text
    assert "id" not in r.json(), r.json()
    r = http.post(f"{server.url}/v2/models/{model}/infer", json={**body, "id": "abc-1"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "abc-1"
    assert r.json()["model_name"] == model and r.json()["model_version"] == "1"
