"""The model server users typically write: FastAPI + uvicorn + one ONNX Runtime session.

Serves one ONNX model at `POST /v1/models/{name}:predict` with the TF Serving row format that
`bench/load.sh` also sends to Serval:

    {"instances": [{"features": [...]}, ...]}  ->  {"predictions": [{"label": ..., "probabilities": [...]}, ...]}

Configured by environment variables (uvicorn imports the module once per worker):

    BENCH_ONNX_MODEL=examples/models/breast_cancer_lr/1/model.onnx \
        uvicorn bench.python.fastapi_server:app --host 127.0.0.1 --port 8100 --workers 2

Deliberately plain: default session options, pydantic request models, numpy in and out.
`GET /health` answers once the session is loaded.
"""

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

MODEL_PATH = os.environ["BENCH_ONNX_MODEL"]

session = ort.InferenceSession(MODEL_PATH, providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name
output_names = [o.name for o in session.get_outputs()]

app = FastAPI()


class Instance(BaseModel):
    features: list[float]


class PredictRequest(BaseModel):
    instances: list[Instance]


@app.get("/health")
def health():
    return {"status": "ok"}


@app.post("/v1/models/{name}:predict")
def predict(name: str, request: PredictRequest):
    x = np.asarray([i.features for i in request.instances], dtype=np.float32)
    outputs = session.run(output_names, {input_name: x})
    columns = {n: o.tolist() for n, o in zip(output_names, outputs)}
    return {
        "predictions": [
            {n: columns[n][row] for n in output_names} for row in range(len(x))
        ]
    }
