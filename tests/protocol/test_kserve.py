"""OIP v2 REST through the KServe Python SDK's `InferenceRESTClient`.

The SDK runs in a child process (kserve_driver.py): it cannot share a process with
tritonclient.grpc (both register the `inference.*` protobuf messages).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support import MODELS, assert_minted, assert_outputs_match, features, golden_keys

DRIVER = Path(__file__).with_name("kserve_driver.py")
INFER_MODELS = ["iris_lr", "breast_cancer_gbt", "iris_logits"]
MODES = {"json": (False, False), "bin-in": (True, False), "bin-in-out": (True, True)}


def _scenarios():
    infer = []
    for model in INFER_MODELS:
        for mode, (binary_in, binary_out) in MODES.items():
            infer.append(
                {
                    "name": f"{model}/{mode}",
                    "model": model,
                    "id": f"ks-{model}-{mode}",
                    "features": features(model).tolist(),
                    "keys": golden_keys(model),
                    "binary_in": binary_in,
                    "binary_out": binary_out,
                }
            )
    infer.append(
        {
            "name": "minted",
            "model": "breast_cancer_mlp",
            "id": "ks-minted",
            "features": features("breast_cancer_mlp").tolist(),
            "keys": None,
            "binary_in": False,
            "binary_out": False,
        }
    )
    infer.append(
        {
            "name": "unknown-model",
            "model": "iris_lr",
            "url_model": "no_such_model",
            "id": "ks-404",
            "features": features("iris_lr").tolist(),
            "keys": None,
            "binary_in": False,
            "binary_out": False,
        }
    )
    return {"infer": infer, "ready_models": [*MODELS, "no_such_model"]}


@pytest.fixture(scope="module")
def kserve_results(server):
    res = subprocess.run(
        [sys.executable, str(DRIVER), server.url],
        input=json.dumps(_scenarios()),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout)


def _outputs(result):
    return {
        name: np.array(o["data"], dtype=object if o["datatype"] == "BYTES" else None)
        for name, o in result["outputs"].items()
    }


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("model", INFER_MODELS)
def test_infer(kserve_results, model, mode):
    result = kserve_results["infer"][f"{model}/{mode}"]
    assert "error" not in result, result
    assert result["model_name"] == model
    assert result["id"] == f"ks-{model}-{mode}"
    if MODES[mode][1]:
        assert result["content_type"] == "application/octet-stream"
        assert int(result["header_length"]) > 0
    else:
        assert result["content_type"] == "application/json"
    got = _outputs(result)
    assert list(got["key"]) == golden_keys(model)
    assert_outputs_match(model, got)


def test_minted_keys(kserve_results):
    result = kserve_results["infer"]["minted"]
    got = _outputs(result)
    assert_minted(list(got["key"]), len(features("breast_cancer_mlp")))
    assert_outputs_match("breast_cancer_mlp", got)


def test_readiness(kserve_results):
    ready = kserve_results["ready"]
    assert ready.pop("server_live") is True
    assert ready.pop("server_ready") is True
    assert ready.pop("no_such_model") is False
    assert ready == {m: True for m in MODELS}


def test_error_is_http_status_error(kserve_results):
    result = kserve_results["infer"]["unknown-model"]
    assert result["status"] == 404
    assert "no_such_model" in result["error"]
