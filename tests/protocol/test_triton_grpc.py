"""OIP v2 gRPC through `tritonclient.grpc` (raw_input_contents) and the raw stub (typed contents)."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2

from support import (
    GOLDEN,
    MODELS,
    assert_minted,
    assert_outputs_match,
    features,
    golden_keys,
    texts,
)


def _inputs(model, rows=None, keys=None):
    x = features(model, rows)
    inp = grpcclient.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    inputs = [inp]
    if keys is not None:
        k = grpcclient.InferInput("key", [len(keys)], "BYTES")
        k.set_data_from_numpy(np.array(keys, dtype=np.object_))
        inputs.append(k)
    return inputs


def _result_dict(result):
    return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}


@pytest.mark.parametrize("model", MODELS)
def test_infer_matches_golden_with_keys(triton_grpc, model):
    keys = golden_keys(model)
    result = triton_grpc.infer(model, _inputs(model, keys=keys), request_id=f"g-{model}")
    response = result.get_response()
    assert response.model_name == model
    assert response.model_version == "1"
    assert response.id == f"g-{model}"
    got = _result_dict(result)
    assert texts(got["key"]) == keys
    assert_outputs_match(model, got)


def test_minted_keys_are_unique_uuid7(triton_grpc):
    model = "diabetes_linear"
    seen = set()
    for _ in range(3):
        result = triton_grpc.infer(model, _inputs(model), model_version="1")
        keys = texts(result.as_numpy("key"))
        assert_minted(keys, len(GOLDEN[model]["rows"]))
        assert not seen & set(keys)
        seen |= set(keys)
        assert_outputs_match(model, _result_dict(result))


def test_requested_outputs_and_signature(triton_grpc):
    model = "breast_cancer_lr"
    result = triton_grpc.infer(
        model,
        _inputs(model),
        outputs=[grpcclient.InferRequestedOutput("diagnosis")],
        parameters={"signature_name": "screening"},
    )
    names = [o.name for o in result.get_response().outputs]
    assert names == ["diagnosis", "key"]
    assert texts(result.as_numpy("diagnosis")) == GOLDEN[model]["signatures"]["screening"]["diagnosis"]


@pytest.mark.parametrize("model", ["iris_lr", "breast_cancer_gbt", "diabetes_linear"])
def test_typed_contents(grpc_stub, model):
    """The non-raw form: fp32_contents and bytes_contents instead of raw_input_contents."""
    x = features(model)
    keys = golden_keys(model)
    request = service_pb2.ModelInferRequest(model_name=model, id="typed")
    t = request.inputs.add(name="features", datatype="FP32", shape=list(x.shape))
    t.contents.fp32_contents.extend(x.ravel().tolist())
    k = request.inputs.add(name="key", datatype="BYTES", shape=[len(keys)])
    k.contents.bytes_contents.extend(s.encode() for s in keys)
    response = grpc_stub.ModelInfer(request, timeout=30)
    assert response.id == "typed"
    result = grpcclient.InferResult(response)
    got = _result_dict(result)
    assert texts(got["key"]) == keys
    assert_outputs_match(model, got)


def test_health_and_metadata(triton_grpc, inspect_json):
    assert triton_grpc.is_server_live()
    assert triton_grpc.is_server_ready()
    meta = triton_grpc.get_server_metadata()
    assert meta.name == "serval"
    assert "binary_tensor_data" in meta.extensions
    for model in MODELS:
        assert triton_grpc.is_model_ready(model)
        assert triton_grpc.is_model_ready(model, "1")
        assert not triton_grpc.is_model_ready(model, "7")
        m = triton_grpc.get_model_metadata(model, as_json=True)
        default = next(s for s in inspect_json[model]["signatures"] if s["name"] == "serving_default")
        assert m["name"] == model
        assert m["versions"] == ["1"]

        def norm(ts):
            return [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in ts]

        assert norm(m["inputs"]) == norm(default["inputs"])
        assert norm(m["outputs"]) == norm(default["outputs"])
    assert not triton_grpc.is_model_ready("no_such_model")
