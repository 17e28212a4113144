"""Memory per request is bounded by what the model takes and by the server's budget for
requests in flight, not by the body limit times what a decoder makes of it."""

from __future__ import annotations

import json
import re
import socket
import time

import grpc
import numpy as np
import requests
from tritonclient.grpc import service_pb2, service_pb2_grpc

from support import IRIS, assert_error, assert_v2_answer, features, serving, small_repo, v2_infer

MIB = 1 << 20


def peak_rss_mib(server) -> float:
    status = open(f"/proc/{server.proc.pid}/status").read()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def budget_in_use(server) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    m = re.search(r"^serval_request_memory_bytes (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def zeros(n: int) -> bytes:
    return b"0," * (n - 1) + b"0"


def test_a_mis_shaped_instance_is_refused_before_it_is_read_whole(tmp_path):
    """The model takes 4 values per instance: a 32 MiB instance is refused at its fifth value
    (fast path) and by counting, not by building a tree of 16 M values (~25x the body)."""
    body = b'{"instances": [[' + zeros(16 * MIB) + b"]]}"
    with serving(repo=small_repo(tmp_path)) as server:
        before = peak_rss_mib(server)
        r = requests.post(f"{server.url}/v1/models/{IRIS}:predict", data=body, timeout=120)
        assert_error(r, 413, "holds more values than model", IRIS)
        grown = peak_rss_mib(server) - before
        assert grown < 4 * len(body) / MIB, f"peak RSS grew {grown:.0f} MiB for a {len(body) / MIB:.0f} MiB body"
        assert_v2_answer(v2_infer(server.url))


def test_v2_data_past_its_shape_stops_being_read(tmp_path):
    body = (b'{"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": ['
            + zeros(16 * MIB) + b"]}]}")
    with serving(repo=small_repo(tmp_path)) as server:
        before = peak_rss_mib(server)
        r = requests.post(f"{server.url}/v2/models/{IRIS}/infer", data=body, timeout=120)
        assert_error(r, 400, "features", "more values in data than the 4")
        grown = peak_rss_mib(server) - before
        assert grown < 4 * len(body) / MIB, f"peak RSS grew {grown:.0f} MiB for a {len(body) / MIB:.0f} MiB body"


def padded_v2_request(pad: int) -> bytes:
    """A valid request for golden row 0, `pad` bytes of JSON whitespace long."""
    x = features(IRIS, [0])
    request = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}
    return json.dumps(request).encode()[:-1] + b" " * pad + b"}"


def answer_before_body(server, length: int) -> tuple[int, dict, str]:
    """Declares a body of `length` bytes and reads the answer without sending it: a refusal
    comes before the body, and a client still sending one would see the connection reset."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as s:
        s.sendall(f"POST /v2/models/{IRIS}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += s.recv(65536)
        head, _, body = response.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        while len(body) < int(headers["content-length"]):
            body += s.recv(65536)
        return int(lines[0].split()[1]), headers, json.loads(body)["error"]


def test_bodies_in_flight_share_one_budget(tmp_path):
    """A declared body holds its length of the budget from its first byte: while one client
    holds 48 of 64 MiB, another's 24 MiB body is refused at once with 429 and Retry-After; once
    the first is gone, the same request is answered. A body larger than the whole budget is
    413."""
    with serving("--max-request-memory-mib", "64", "--max-body-bytes", str(128 * MIB),
                 repo=small_repo(tmp_path)) as server:
        padded = padded_v2_request(24 * MIB)
        holder = socket.create_connection(("127.0.0.1", server.http_port))
        holder.sendall(
            f"POST /v2/models/{IRIS}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {48 * MIB}\r\n\r\n{{".encode())
        deadline = time.monotonic() + 30
        while budget_in_use(server) < 48 * MIB:
            assert time.monotonic() < deadline, "the held body never took its share of the budget"
            time.sleep(0.05)
        status, headers, error = answer_before_body(server, 24 * MIB)
        assert (status, headers.get("retry-after")) == (429, "1"), (status, headers, error)
        assert "memory" in error and "retry later" in error, error
        holder.close()
        while budget_in_use(server) > 0:
            assert time.monotonic() < deadline, "the closed connection's share was never given back"
            time.sleep(0.05)
        assert_v2_answer(requests.post(f"{server.url}/v2/models/{IRIS}/infer", data=padded, timeout=60))
        status, _, error = answer_before_body(server, 80 * MIB)
        assert status == 413 and "whole budget" in error, (status, error)


def test_grpc_messages_fill_the_budget_as_they_arrive(tmp_path):
    """tonic reads a message whole before the handler runs: the budget is charged frame by
    frame underneath it, so a message larger than what is left is RESOURCE_EXHAUSTED."""
    with serving("--max-request-memory-mib", "16", "--max-body-bytes", str(128 * MIB),
                 repo=small_repo(tmp_path)) as server:
        channel = grpc.insecure_channel(server.grpc_addr, options=[("grpc.max_send_message_length", 256 * MIB)])
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        def infer(rows: int):
            request = service_pb2.ModelInferRequest(model_name=IRIS)
            tensor = request.inputs.add(name="features", datatype="FP32", shape=[rows, 4])
            del tensor
            request.raw_input_contents.append(np.zeros((rows, 4), np.float32).tobytes())
            return stub.ModelInfer(request, timeout=60)

        try:
            infer(2 * MIB)  # 32 MiB of floats
            raise AssertionError("a 32 MiB message passed a 16 MiB budget")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            assert "whole budget" in err.details(), err.details()
        assert infer(3).raw_output_contents
        channel.close()
