"""Drives a server with the KServe SDK's `InferenceRESTClient` and prints what it got as JSON.

Run by test_kserve.py in its own process: kserve and tritonclient.grpc both register the
`inference.*` protobuf messages (grpc_predict_v2.proto vs grpc_service.proto), and protobuf
refuses the second registration in one process ("duplicate symbol
'inference.ServerLiveRequest'").

Usage: python3 kserve_driver.py BASE_URL  (reads the scenarios as JSON on stdin)
"""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


def _request(scenario):
    x = np.array(scenario["features"], dtype=np.float32)
    binary = scenario["binary_in"]
    inp = InferInput(name="features", shape=list(x.shape), datatype="FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    inputs = [inp]
    if scenario.get("keys") is not None:
        keys = scenario["keys"]
        k = InferInput(name="key", shape=[len(keys)], datatype="BYTES")
        k.set_data_from_numpy(np.array(keys, dtype=np.object_), binary_data=binary)
        inputs.append(k)
    params = {"binary_data_output": True} if scenario["binary_out"] else None
    return InferRequest(
        model_name=scenario["model"],
        infer_inputs=inputs,
        request_id=scenario["id"],
        parameters=params,
    )


def _plain(value):
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


async def main(base_url, scenarios):
    out = {"infer": {}, "ready": {}}
    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=30)) as client:
        out["ready"]["server_live"] = await client.is_server_live(base_url)
        out["ready"]["server_ready"] = await client.is_server_ready(base_url)
        for name in scenarios["ready_models"]:
            out["ready"][name] = await client.is_model_ready(base_url, name)
        for scenario in scenarios["infer"]:
            headers = {}
            try:
                response = await client.infer(
                    base_url,
                    _request(scenario),
                    model_name=scenario.get("url_model", scenario["model"]),
                    response_headers=headers,
                )
            except httpx.HTTPStatusError as err:
                out["infer"][scenario["name"]] = {
                    "error": str(err),
                    "status": err.response.status_code,
                }
                continue
            out["infer"][scenario["name"]] = {
                "model_name": response.model_name,
                "id": response.id,
                "content_type": headers.get("content-type"),
                "header_length": headers.get("inference-header-content-length"),
                "outputs": {
                    o.name: {
                        "datatype": o.datatype,
                        "shape": list(o.shape),
                        "data": _plain(o.as_numpy()),
                    }
                    for o in response.outputs
                },
            }
    return out


if __name__ == "__main__":
    result = asyncio.run(main(sys.argv[1], json.load(sys.stdin)))
    json.dump(result, sys.stdout)
