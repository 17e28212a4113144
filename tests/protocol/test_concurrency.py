"""Many clients at once: every response carries its own request's keys, in order, and the
golden outputs of its own rows (no cross-talk between concurrent requests or batches)."""

from __future__ import annotations

import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from support import GOLDEN, MODELS, N_ROWS, assert_outputs_match, features, texts

THREADS = 32
REQUESTS_PER_THREAD = 20
MAX_BATCH = 20
PROTOCOLS = ["http-binary", "http-json", "grpc", "tfserving"]


class Client:
    def __init__(self, server, protocol):
        self.server = server
        self.protocol = protocol
        if protocol.startswith("http"):
            self.client = httpclient.InferenceServerClient(url=server.http_addr)
        elif protocol == "grpc":
            self.client = grpcclient.InferenceServerClient(url=server.grpc_addr)
        else:
            self.client = requests.Session()

    def close(self):
        self.client.close()

    def infer(self, model, rows, keys) -> tuple[list[str], dict]:
        x = features(model, rows)
        if self.protocol == "tfserving":
            r = self.client.post(
                f"{self.server.url}/v1/models/{model}:predict",
                json={"instances": [{"key": k, "features": f} for k, f in zip(keys, x.tolist())]},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            preds = r.json()["predictions"]
            return [p["key"] for p in preds], {n: [p[n] for p in preds] for n in preds[0]}
        lib = grpcclient if self.protocol == "grpc" else httpclient
        binary = self.protocol != "http-json"
        inp = lib.InferInput("features", list(x.shape), "FP32")
        key = lib.InferInput("key", [len(keys)], "BYTES")
        karr = np.array(keys, dtype=np.object_)
        if lib is httpclient:
            inp.set_data_from_numpy(x, binary_data=binary)
            key.set_data_from_numpy(karr, binary_data=binary)
            outputs = [
                httpclient.InferRequestedOutput(n, binary_data=binary)
                for n in [*GOLDEN[model]["outputs"], "key"]
            ]
            result = self.client.infer(model, [key, inp], outputs=outputs)
            names = [o["name"] for o in result.get_response()["outputs"]]
        else:
            inp.set_data_from_numpy(x)
            key.set_data_from_numpy(karr)
            result = self.client.infer(model, [inp, key])
            names = [o.name for o in result.get_response().outputs]
        got = {n: result.as_numpy(n) for n in names}
        return texts(got["key"]), got


def test_concurrent_clients_get_their_own_rows(server):
    start = threading.Barrier(THREADS)

    def worker(ix):
        rng = random.Random(1000 + ix)
        client = Client(server, PROTOCOLS[ix % len(PROTOCOLS)])
        checked = 0
        try:
            start.wait(timeout=30)
            for j in range(REQUESTS_PER_THREAD):
                model = rng.choice(MODELS)
                batch = rng.randint(1, MAX_BATCH)
                rows = [rng.randrange(N_ROWS[model]) for _ in range(batch)]
                keys = [f"t{ix}-r{j}-{k}-{uuid.uuid4().hex[:8]}" for k in range(batch)]
                got_keys, got = client.infer(model, rows, keys)
                assert got_keys == keys, f"{client.protocol} {model}: keys {got_keys} != {keys}"
                assert_outputs_match(model, got, rows=rows)
                checked += 1
        finally:
            client.close()
        return checked

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(worker, range(THREADS)))
    assert sum(results) == THREADS * REQUESTS_PER_THREAD
    assert server.alive()
