"""Graceful shutdown: SIGTERM with idle keep-alive connections and requests in flight exits 0,
and the in-flight requests are answered first."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import grpc
import numpy as np
import pyarrow.dataset as ds
import requests
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from support import ServalServer

MODEL = "breast_cancer_mlp_large"
ROWS = 100_000  # 12 MB, ~2 s of compute on this model: still running at SIGTERM


def test_sigterm_finishes_in_flight_requests():
    server = ServalServer()
    try:
        # Idle keep-alive connections on both ports must not hold the shutdown up.
        session = requests.Session()
        assert session.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200
        idle_client = grpcclient.InferenceServerClient(url=server.grpc_addr)
        assert idle_client.is_server_ready()

        x = np.random.default_rng(0).normal(size=(ROWS, 30)).astype(np.float32)
        results = {}
        finished = {}

        sigterm_sent = threading.Event()

        def rest():
            """A request whose body is still being uploaded when SIGTERM arrives."""
            body = {"inputs": [{"name": "features", "shape": [ROWS, 30], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}]}
            head = json.dumps(body).encode()
            payload = head + x.tobytes()
            half = len(payload) // 2

            def chunks():
                yield payload[:half]
                sigterm_sent.wait(timeout=30)
                time.sleep(0.2)
                yield payload[half:]

            r = requests.post(
                f"{server.url}/v2/models/{MODEL}/infer",
                data=chunks(),
                headers={"Inference-Header-Content-Length": str(len(head))},
                timeout=60,
            )
            results["rest"] = (r.status_code, r.json()["outputs"][0]["shape"] if r.ok else r.text)
            finished["rest"] = time.monotonic()

        def grpc_call():
            req = service_pb2.ModelInferRequest(model_name=MODEL)
            req.inputs.add(name="features", datatype="FP32", shape=[ROWS, 30])
            req.raw_input_contents.append(x.tobytes())
            options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
            with grpc.insecure_channel(server.grpc_addr, options=options) as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                try:
                    response = stub.ModelInfer(req, timeout=60)
                    results["grpc"] = ("OK", list(response.outputs[0].shape))
                    finished["grpc"] = time.monotonic()
                except grpc.RpcError as err:
                    results["grpc"] = (err.code(), err.details())

        threads = [threading.Thread(target=rest), threading.Thread(target=grpc_call)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        stopped_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        sigterm_sent.set()
        code = server.terminate(timeout=10.0)
        elapsed = time.monotonic() - stopped_at
        for t in threads:
            t.join(timeout=30)
        assert code == 0, f"exit code {code}:\n{server.stderr_text()}"
        assert elapsed < 10
        assert results.get("rest") == (200, [ROWS]), results
        assert results.get("grpc") == ("OK", [ROWS]), results
        # Both were still being computed when SIGTERM arrived (else this tests nothing).
        assert min(finished.values()) > stopped_at, "requests finished before SIGTERM; raise ROWS"
        # Nothing listens any more.
        try:
            requests.get(f"{server.url}/v2/health/live", timeout=2)
            raise AssertionError("server still answers after exiting")
        except requests.ConnectionError:
            pass
        idle_client.close()
        session.close()
    finally:
        server.kill()


def test_a_client_holding_a_partial_request_cannot_keep_the_server_alive(tmp_path):
    """Past --shutdown-timeout-secs the connections still open are closed and the process exits
    (with its prediction log flushed); before it, a request in flight is still answered."""
    log = tmp_path / "log"
    server = ServalServer("--shutdown-timeout-secs", "2", "--prediction-log", str(log))
    try:
        # A body announced at 100 bytes of which only one ever arrives.
        holder = socket.create_connection((server.http_host, server.http_port), timeout=30)
        holder.sendall(b"POST /v2/models/iris_lr/infer HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        answered = requests.post(f"{server.url}/v1/models/iris_lr:predict",
                                 json={"instances": [{"key": "before", "features": [5.1, 3.5, 1.4, 0.2]}]},
                                 timeout=10)
        assert answered.status_code == 200, answered.text
        # Generous: without the deadline the server never exits; with it, after about 2 s.
        code = server.terminate(timeout=30.0)
        assert code == 0, f"exit code {code}:\n{server.stderr_text()}"
        assert "shutdown deadline passed" in server.stderr_text(), server.stderr_text()
        assert holder.recv(1024) == b"", "the held connection was closed without an answer"
        holder.close()
        keys = [r["key"] for r in ds.dataset(log / "predictions", format="parquet",
                                              partitioning="hive").to_table().to_pylist()]
        assert keys == ["before"], keys
    finally:
        server.kill()
