"""The transport of `serval serve` against real sockets: clients that stall (a request head that
never ends, a body trickling in, a connection that sends nothing) are cut off while others are
served, each port has a connection limit, and both ports speak TLS (reloaded certificates,
mutual TLS) when given a certificate."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import resource
import selectors
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import gevent.ssl
import grpc
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from support import IRIS, assert_v2_answer, serving, small_repo, start_fails, triton_infer, v2_infer
from test_metrics import scrape, value

PARTIAL_HEAD = f"POST /v2/models/{IRIS}/infer HTTP/1.1\r\nHost: a\r\n".encode()
# What the machine may add to any deadline the server is given: a slow 2-core box.
SLACK = 15.0


# ---------------------------------------------------------------- raw sockets


def connect(port: int, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if data:
        sock.sendall(data)
    return sock


def closed_by_server(socks: list[socket.socket], timeout: float) -> tuple[list[socket.socket], dict]:
    """Waits until the server has closed every socket (EOF or reset) or `timeout` has passed
    (at least one look either way): the sockets still open, and the bytes received on each."""
    received = {s: b"" for s in socks}
    still_open = set(socks)
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        while still_open:
            for key, _ in sel.select(timeout=max(0.0, min(deadline - time.monotonic(), 1.0))):
                s = key.fileobj
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:  # reset
                    data = b""
                if data:
                    received[s] += data
                else:
                    still_open.discard(s)
                    sel.unregister(s)
            if time.monotonic() >= deadline:
                break
    for s in socks:
        s.settimeout(10)
    return [s for s in socks if s in still_open], received


def refused_at_once(sock: socket.socket, request: bytes = b"") -> bool:
    """Whether the server closes `sock` without answering a byte (within 10 s)."""
    try:
        if request:
            sock.sendall(request)
        sock.settimeout(10)
        return sock.recv(65536) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def parse_response(data: bytes):
    """(status, lower-cased headers, body) of a complete HTTP/1.1 response, else None."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    if "content-length" in headers:
        n = int(headers["content-length"])
        return (int(status_line.split()[1]), headers, body[:n]) if len(body) >= n else None
    if "chunked" in headers.get("transfer-encoding", ""):
        if not body.endswith(b"0\r\n\r\n"):
            return None
        decoded, rest = b"", body
        while True:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size.split(b";")[0], 16)
            if n == 0:
                return int(status_line.split()[1]), headers, decoded
            decoded, rest = decoded + rest[:n], rest[n + 2:]
    return None


def open_connections(port: int, listener: str) -> float:
    """`serval_connections_open{listener=...}` over a connection the server closes itself
    (`Connection: close`, read to EOF), so that it no longer counts once this returns."""
    with connect(port, b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n") as sock:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    parsed = parse_response(data)
    assert parsed and parsed[0] == 200, data[:500]
    m = re.search(rf'^serval_connections_open\{{[^}}]*listener="{listener}"[^}}]*\}} (\S+)$',
                  parsed[2].decode(), re.M)
    assert m, f"no serval_connections_open{{listener=\"{listener}\"}} in /metrics"
    return float(m.group(1))


def poll(check, what: str, timeout: float = SLACK):
    """Calls `check` until it returns a true value (errors count as not yet) or `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
            last = result
        except Exception as err:  # noqa: BLE001 - the point is to retry
            last = err
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


# ---------------------------------------------------------------- slow and idle clients


def test_slowloris_heads_are_cut_off_while_others_are_served(tmp_path):
    n = 500
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if wanted < 1200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} allows fewer than 1200 open files: no room for {n} sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # the server inherits it
    held = []
    try:
        with serving("--header-read-timeout-secs", "3", repo=small_repo(tmp_path)) as server:
            try:
                for _ in range(n):
                    held.append(connect(server.http_port, PARTIAL_HEAD))
                last_head_sent = time.monotonic()
                # Meanwhile, a client with a whole request is served.
                ready = requests.get(f"{server.url}/v2/health/ready", timeout=30)
                assert ready.status_code == 200, ready.text
                assert_v2_answer(v2_infer(server.url))
                still_open, received = closed_by_server(held, last_head_sent + 3 + SLACK - time.monotonic())
                assert not still_open, (
                    f"{len(still_open)} of {n} connections with an unfinished head still open "
                    f"{3 + SLACK} s after it (--header-read-timeout-secs 3)")
                answers = [data for data in received.values() if data]
                assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[:3]
            finally:
                for s in held:
                    s.close()
            assert_v2_answer(v2_infer(server.url))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_body_slower_than_the_minimum_rate_is_refused_with_408(tmp_path):
    grace = 1
    with serving("--body-min-rate", "1000", "--body-read-grace-secs", str(grace),
                 repo=small_repo(tmp_path)) as server:
        sock = connect(server.http_port, (
            f"POST /v2/models/{IRIS}/infer HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
            f"Content-Length: 100000\r\n\r\n").encode())
        deadline = time.monotonic() + grace + SLACK
        data, sending, served_meanwhile = b"", True, False
        with sock, selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_READ)
            while parse_response(data) is None and time.monotonic() < deadline:
                if sending:
                    try:
                        sock.sendall(b" " * 10)  # JSON whitespace, 10 bytes a second
                    except OSError:
                        sending = False
                if not served_meanwhile:
                    assert_v2_answer(v2_infer(server.url))
                    served_meanwhile = True
                if sel.select(timeout=1.0):  # the pace, unless the server answers
                    try:
                        chunk = sock.recv(65536)
                    except OSError:
                        break
                    if not chunk:
                        break
                    data += chunk
        parsed = parse_response(data)
        assert parsed is not None, f"no complete response within {grace + SLACK} s: {data[:500]!r}"
        status, headers, body = parsed
        assert status == 408, data[:500]
        assert headers.get("content-type", "").startswith("application/json"), headers
        error = json.loads(body)["error"]
        assert "bytes/s" in error, error
        assert_v2_answer(v2_infer(server.url))


def test_connections_that_send_nothing_are_closed_on_both_ports(tmp_path):
    idle = 3
    with serving("--idle-timeout-secs", str(idle), "--request-timeout-ms", "1000",
                 repo=small_repo(tmp_path)) as server:
        grpc_sock, http_sock = connect(server.grpc_port), connect(server.http_port)
        with grpc_sock, http_sock:
            still_open, _ = closed_by_server([grpc_sock, http_sock], idle + SLACK)
            names = {grpc_sock: "gRPC", http_sock: "HTTP"}
            assert not still_open, f"{[names[s] for s in still_open]} still open {idle + SLACK} s later"
        assert_v2_answer(v2_infer(server.url))


def test_connections_beyond_the_limit_are_closed_at_once(tmp_path):
    limit = 20
    with serving("--max-connections", str(limit), "--header-read-timeout-secs", "300",
                 repo=small_repo(tmp_path)) as server:
        # The readiness probe's connections are gone (only the scrape's own is open).
        poll(lambda: open_connections(server.http_port, "http") <= 1, "the probe's connections to close")
        for port, listener, request in ((server.http_port, "http", b"GET /v2/health/ready HTTP/1.1\r\nHost: a\r\n\r\n"),
                                        (server.grpc_port, "grpc", b"")):
            held = [connect(port, PARTIAL_HEAD if listener == "http" else b"") for _ in range(limit)]
            try:
                with connect(port) as extra:
                    assert refused_at_once(extra, request), f"{listener}: connection {limit + 1} was not closed at once"
                # The refused one was the one beyond the limit, not one of those held.
                still_open, _ = closed_by_server(held, 0)
                assert len(still_open) == limit, f"{listener}: {limit - len(still_open)} held connections closed"
            finally:
                for s in held:
                    s.close()
        # Freed: served again.
        poll(lambda: v2_infer(server.url, timeout=10).status_code == 200, "an HTTP inference after the close")

        def grpc_serves():
            with grpcclient.InferenceServerClient(server.grpc_addr) as client:
                triton_infer(client, grpcclient, client_timeout=10)
                return True

        poll(grpc_serves, "a gRPC inference after the close")
        samples = scrape(requests, server)
        for listener in ("http", "grpc"):
            assert value(samples, "serval_connections_refused_total", listener=listener) >= 1, listener
            assert any(n == "serval_connections_open" and labels.get("listener") == listener
                       for n, labels, _ in samples), listener


def test_grpc_http2_settings_are_accepted_and_calls_served(tmp_path):
    with serving("--http2-keepalive-interval-secs", "1", "--http2-keepalive-timeout-secs", "5",
                 "--max-concurrent-streams", "2", repo=small_repo(tmp_path)) as server:
        with grpcclient.InferenceServerClient(server.grpc_addr) as client:
            # More calls at once than the streams a connection may open: all answered.
            with ThreadPoolExecutor(6) as pool:
                for f in [pool.submit(triton_infer, client, grpcclient, client_timeout=30) for _ in range(6)]:
                    f.result()
            assert client.is_server_live()


# ---------------------------------------------------------------- TLS


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(subject: str, issuer: x509.Name, key, ca: bool) -> x509.CertificateBuilder:
    """What a CA and a leaf certificate share: a month of validity and the key usages."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject)).issuer_name(issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def make_ca(cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    return _builder(cn, _name(cn), key, ca=True).sign(key, hashes.SHA256()), key


def issue(ca, cn: str, client: bool = False):
    """A leaf certificate signed by `ca`: for 127.0.0.1 and localhost, or a client's."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(cn, ca_cert.subject, key, ca=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if not client:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def write_pem(cert_path: Path, key_path: Path | None, cert, key=None) -> None:
    """Writes each file whole (a temp file renamed into place), the key first."""
    files = [(cert_path, cert.public_bytes(serialization.Encoding.PEM))]
    if key_path is not None:
        files.insert(0, (key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption())))
    for path, data in files:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)


@pytest.fixture
def pki(tmp_path):
    """A CA and a server certificate (CN `serval-test`) signed by it, as PEM files."""
    ca = make_ca("serval test CA")
    files = SimpleNamespace(ca_pair=ca, ca=tmp_path / "ca.pem", cert=tmp_path / "server.pem",
                            key=tmp_path / "server-key.pem", dir=tmp_path)
    write_pem(files.ca, None, ca[0])
    write_pem(files.cert, files.key, *issue(ca, "serval-test"))
    return files


def tls_serving(pki, *extra_args: str, cert=None):
    """A server with --tls-cert/--tls-key (and `extra_args`); `cert` is the client certificate
    its readiness probe presents."""
    probe = {"verify": str(pki.ca)}
    if cert:
        probe["cert"] = cert
    return serving("--tls-cert", str(pki.cert), "--tls-key", str(pki.key), *extra_args,
                   repo=small_repo(pki.dir), scheme="https", probe=probe)


def tls_connect(port: int, ca: Path, alpn: list[str] | None = None) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(ca))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1")


def peer_cn(port: int, ca: Path) -> str:
    with tls_connect(port, ca) as s:
        subject = dict(pair for rdn in s.getpeercert()["subject"] for pair in rdn)
    return subject["commonName"]


def _trusting(ca: Path):
    """An `ssl_context_factory` for tritonclient.http that trusts only `ca`."""
    def factory(*_args, **_kwargs):
        return gevent.ssl.create_default_context(cafile=str(ca))
    return factory


def _plain_grpc_fails(server) -> bool:
    with grpc.insecure_channel(server.grpc_addr) as channel:
        try:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(service_pb2.ServerLiveRequest(), timeout=10)
        except grpc.RpcError:
            return True
    return False


def test_tls_on_both_ports(pki):
    with tls_serving(pki) as server:
        ca = str(pki.ca)
        ready = requests.get(f"{server.url}/v2/health/ready", verify=ca, timeout=10)
        assert ready.status_code == 200 and ready.json() == {"ready": True}, ready.text
        assert_v2_answer(v2_infer(server.url, verify=ca))
        tf = requests.post(f"{server.url}/v1/models/{IRIS}:predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]},
                           verify=ca, timeout=30)
        assert tf.status_code == 200, tf.text
        # TLS only: plain HTTP gets no answer.
        try:
            plain = requests.get(f"http://{server.http_addr}/v2/health/ready", timeout=10).status_code
        except requests.RequestException as err:
            plain = err
        assert plain != 200, "plain HTTP answered on a TLS port"
        with tls_connect(server.http_port, pki.ca, ["h2", "http/1.1"]) as s:
            assert s.selected_alpn_protocol() == "http/1.1"
        with tls_connect(server.grpc_port, pki.ca, ["h2"]) as s:
            assert s.selected_alpn_protocol() == "h2"
        with httpclient.InferenceServerClient(server.http_addr, ssl=True,
                                              ssl_context_factory=_trusting(pki.ca)) as client:
            assert client.is_server_ready()
            triton_infer(client, httpclient)
        with grpcclient.InferenceServerClient(server.grpc_addr, ssl=True, root_certificates=ca) as client:
            assert client.is_server_live(client_timeout=10)
            triton_infer(client, grpcclient, client_timeout=30)
        assert _plain_grpc_fails(server), "a plaintext gRPC call was answered on a TLS port"


def test_a_replaced_certificate_is_served_to_new_connections(pki):
    with tls_serving(pki) as server:
        assert peer_cn(server.http_port, pki.ca) == "serval-test"
        assert peer_cn(server.grpc_port, pki.ca) == "serval-test"
        write_pem(pki.cert, pki.key, *issue(pki.ca_pair, "reloaded"))
        for port in (server.http_port, server.grpc_port):
            poll(lambda port=port: peer_cn(port, pki.ca) == "reloaded", f"the new certificate on port {port}")
        assert_v2_answer(v2_infer(server.url, verify=str(pki.ca)))
        with grpcclient.InferenceServerClient(server.grpc_addr, ssl=True, root_certificates=str(pki.ca)) as client:
            triton_infer(client, grpcclient, client_timeout=30)


def test_mutual_tls_needs_a_client_certificate_from_the_ca(pki):
    client_ca = make_ca("serval test clients CA")
    write_pem(pki.dir / "client-ca.pem", None, client_ca[0])
    crt, key = pki.dir / "client.pem", pki.dir / "client-key.pem"
    write_pem(crt, key, *issue(client_ca, "client-1", client=True))
    # Signed by the server's CA, which is not the one clients need.
    stranger = (pki.dir / "stranger.pem", pki.dir / "stranger-key.pem")
    write_pem(*stranger, *issue(pki.ca_pair, "stranger", client=True))
    with tls_serving(pki, "--tls-client-ca", str(pki.dir / "client-ca.pem"), cert=(str(crt), str(key))) as server:
        ca = str(pki.ca)
        ok = requests.get(f"{server.url}/v2/health/ready", verify=ca, cert=(str(crt), str(key)), timeout=10)
        assert ok.status_code == 200, ok.text
        assert_v2_answer(v2_infer(server.url, verify=ca, cert=(str(crt), str(key))))
        for cert in (None, tuple(map(str, stranger))):
            with pytest.raises(requests.exceptions.ConnectionError):  # SSLError is one
                requests.get(f"{server.url}/v2/health/ready", verify=ca, cert=cert, timeout=10)
        with grpcclient.InferenceServerClient(server.grpc_addr, ssl=True, root_certificates=ca,
                                              private_key=str(key), certificate_chain=str(crt)) as client:
            triton_infer(client, grpcclient, client_timeout=30)
        for private_key, chain in ((None, None), tuple(map(str, reversed(stranger)))):
            with grpcclient.InferenceServerClient(server.grpc_addr, ssl=True, root_certificates=ca,
                                                  private_key=private_key, certificate_chain=chain) as client:
                with pytest.raises(InferenceServerException):
                    client.is_server_live(client_timeout=10)


BAD_TRANSPORT_FLAGS = [
    # id, flags (from the pki fixture), what the message must name (a tuple: one of them)
    ("cert-without-key", lambda p: ["--tls-cert", str(p.cert)], ["tls"]),
    ("key-without-cert", lambda p: ["--tls-key", str(p.key)], ["tls"]),
    ("key-not-pem", lambda p: ["--tls-cert", str(p.cert), "--tls-key", str(p.dir / "garbage.pem")],
     ["tls", "garbage.pem"]),
    ("cert-missing", lambda p: ["--tls-cert", str(p.dir / "absent.pem"), "--tls-key", str(p.key)],
     ["tls", "absent.pem"]),
    ("client-ca-not-pem", lambda p: ["--tls-cert", str(p.cert), "--tls-key", str(p.key),
                                     "--tls-client-ca", str(p.dir / "garbage.pem")],
     ["tls", ("--tls-client-ca", "garbage.pem")]),
    # A connection waiting for its answer moves no byte: it must not count as idle.
    ("idle-not-above-request-timeout", lambda p: ["--idle-timeout-secs", "3"], ["--idle-timeout-secs"]),
]


@pytest.mark.parametrize("case", BAD_TRANSPORT_FLAGS, ids=[c[0] for c in BAD_TRANSPORT_FLAGS])
def test_bad_transport_flags_stop_the_server_naming_the_problem(pki, case):
    _, flags, needles = case
    (pki.dir / "garbage.pem").write_text("this is not a PEM file\n")
    output = start_fails(*flags(pki), repo=small_repo(pki.dir)).lower()
    for needle in needles:
        options = needle if isinstance(needle, tuple) else (needle,)
        assert any(o.lower() in output for o in options), f"none of {options} in:\n{output[-2000:]}"
