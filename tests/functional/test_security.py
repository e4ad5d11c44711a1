"""Security properties of the served model (docs/security.md), checked on real processes.

- Every endpoint binds 127.0.0.1 unless configured otherwise; the stub listens on
  nothing.
- gRPC over TLS with a self-signed certificate works with the raw tritonclient, and
  plaintext or untrusting clients are refused.
- The server never fetches anything: URLs in any input never cause a connection.
- Every pinned requirement is pinned exactly.
(No pickle loading of untrusted data: tests/functional/test_faults.py starts a server on a
checkpoint whose pickle would run code, and the engine tests cover the loader.)
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ofa_ve_data.workload import TEST_IMAGES
from ofa_ve_ops.paths import MODEL_NAME as MODEL
from ofa_ve_ops.procfs import children, listening_addresses
from ofa_ve_ops.server_process import TritonServer
from PIL import Image, PngImagePlugin
from support.hostile import payloads
from support.servers import running
from tritonclient.utils import InferenceServerException

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE = TEST_IMAGES["tiny_50x40_png"].read_bytes()


def request(image: bytes, hypothesis: bytes, premise: bytes | None = None) -> list:
    inputs = []
    for name, value in (("IMAGE", image), ("HYPOTHESIS", hypothesis), ("PREMISE", premise)):
        if value is None:
            continue
        inp = tgrpc.InferInput(name, [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[value]], dtype=np.object_))
        inputs.append(inp)
    return inputs


# ------------------------------------------------------------------ binding


def test_endpoints_listen_on_loopback_only(triton_server):
    server = triton_server
    listening = listening_addresses(server.pid)
    assert {port for _, port in listening} == {
        server.http_port,
        server.grpc_port,
        server.metrics_port,
    }, listening
    assert all(_loopback(address) for address, _ in listening), listening
    for stub in children(server.pid):
        assert listening_addresses(stub) == [], f"stub {stub} listens: {listening_addresses(stub)}"


def _loopback(address: str) -> bool:
    """127.0.0.0/8 or ::1, also as gRPC's IPv4-mapped IPv6 socket (::ffff:127.0.0.1)."""
    ip = ipaddress.ip_address(address)
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def test_serve_binds_loopback_unless_told_otherwise(demo_model_dir):
    """`make serve`'s command line binds every endpoint to 127.0.0.1 by default."""
    out = subprocess.run(
        [sys.executable, "-m", "ofa_ve_ops.serve", "--dry-run"],
        env={**_clean_env(), "OFA_VE_MODEL_DIR": str(demo_model_dir)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for endpoint in ("http", "grpc", "metrics"):
        assert f"--{endpoint}-address=127.0.0.1" in out, out
    assert "0.0.0.0" not in out


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OFA_VE_")}


# ------------------------------------------------------------------ TLS


def _self_signed(directory: Path, stem: str, common_name: str) -> tuple[Path, Path]:
    """A throwaway self-signed server certificate for 127.0.0.1 and localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_server(
    server_factory, tmp_path_factory, tiny_model_dir
) -> Iterator[tuple[TritonServer, Path, Path]]:
    """A server of this module's own: gRPC over TLS (no client certificate), the admin
    protocols restricted (the mutual-TLS one of test_client_tls.py refuses the
    certificate-less clients these tests need); over the tiny checkpoint, since the
    transport and access are tested, not the network."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = _self_signed(directory, "server", "127.0.0.1")
    other, _ = _self_signed(directory, "other", "127.0.0.1")  # same name, other key
    server = server_factory(
        model_dir=tiny_model_dir,
        extra_args=[
            "--grpc-use-ssl=true",
            f"--grpc-server-cert={cert}",
            f"--grpc-server-key={key}",
            f"--grpc-restricted-protocol={','.join(ADMIN_PROTOCOLS)}:{ADMIN_KEY}={ADMIN_SECRET}",
            f"--http-restricted-api={','.join(ADMIN_PROTOCOLS)}:{ADMIN_KEY}={ADMIN_SECRET}",
        ],
    )
    with running(server):  # started, READY; killed at the end
        yield server, cert, other


ADMIN_PROTOCOLS = ("shared-memory", "model-repository", "model-config", "trace", "logging")
ADMIN_KEY, ADMIN_SECRET = "admin-key", "a-long-random-secret"
ADMIN_HEADER = {f"triton-grpc-protocol-{ADMIN_KEY}": ADMIN_SECRET}


class ShmObject:
    """A POSIX shared-memory object of ours in /dev/shm (what a client would register)."""

    def __init__(self, size: int = 4096) -> None:
        self.key = f"/ofa_ve_security_probe_{os.getpid()}_{time.monotonic_ns()}"
        self.path = Path("/dev/shm") / self.key.lstrip("/")
        self.path.write_bytes(b"\0" * size)
        self.size = size

    def __enter__(self) -> ShmObject:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.path.unlink(missing_ok=True)


def test_default_server_lets_any_client_map_shared_memory(grpc_client):
    """Why the admin protocols must be restricted (docs/security.md): on the default
    command line any client that reaches the port can make tritonserver map a /dev/shm
    object by name (and then read inputs from it / write outputs into it)."""
    with ShmObject() as shm:
        grpc_client.register_system_shared_memory("probe", shm.key, shm.size)
        try:
            status = grpc_client.get_system_shared_memory_status(as_json=True)
            assert "probe" in json.dumps(status)
        finally:
            grpc_client.unregister_system_shared_memory("probe")


def test_restricted_admin_protocols_need_the_header(tls_server):
    """With --grpc-restricted-protocol the shared-memory and repository APIs refuse
    callers without the admin header, while inference stays open to TLS clients."""
    server, cert, _ = tls_server
    with (
        ShmObject() as shm,
        tgrpc.InferenceServerClient(server.grpc_url, ssl=True, root_certificates=str(cert)) as c,
    ):
        with pytest.raises(InferenceServerException) as info:
            c.register_system_shared_memory("probe", shm.key, shm.size)
        assert "restricted" in info.value.message().lower(), info.value
        with pytest.raises(InferenceServerException):
            c.unload_model(MODEL)
        assert c.is_model_ready(MODEL)
        c.register_system_shared_memory("probe", shm.key, shm.size, headers=ADMIN_HEADER)
        c.unregister_system_shared_memory("probe", headers=ADMIN_HEADER)
        result = c.infer(MODEL, request(IMAGE, b"A cup of coffee."), client_timeout=120)
        assert result.as_numpy("PROBS").shape == (1, 3)
        # The HTTP endpoint offers the same APIs: restricted the same way.
        register = f"http://{server.http_url}/v2/systemsharedmemory/region/probe/register"
        body = json.dumps({"key": shm.key, "offset": 0, "byte_size": shm.size}).encode()
        with pytest.raises(urllib.error.HTTPError) as http_info:
            urllib.request.urlopen(urllib.request.Request(register, data=body), timeout=10)
        assert http_info.value.code in (400, 401, 403), http_info.value
        allowed = urllib.request.Request(register, data=body, headers={ADMIN_KEY: ADMIN_SECRET})
        with urllib.request.urlopen(allowed, timeout=10) as response:
            assert response.status == 200
        unregister = register.replace("/register", "/unregister")
        urllib.request.urlopen(
            urllib.request.Request(unregister, data=b"", headers={ADMIN_KEY: ADMIN_SECRET}),
            timeout=10,
        ).close()


def test_grpc_over_tls_with_a_self_signed_certificate(tls_server):
    server, cert, _ = tls_server
    with tgrpc.InferenceServerClient(
        server.grpc_url, ssl=True, root_certificates=str(cert)
    ) as client:
        assert client.is_server_ready()
        result = client.infer(MODEL, request(IMAGE, b"A cup of coffee."), client_timeout=120)
        assert result.as_numpy("PROBS").shape == (1, 3)


def test_plaintext_client_is_refused_by_the_tls_endpoint(tls_server):
    server, _, _ = tls_server
    with (
        tgrpc.InferenceServerClient(server.grpc_url) as client,
        pytest.raises(InferenceServerException) as info,
    ):
        client.infer(MODEL, request(IMAGE, b"A cup of coffee."), client_timeout=10)
    assert info.value.status() == "StatusCode.UNAVAILABLE", info.value


def test_client_trusting_another_certificate_is_refused(tls_server):
    server, _, other = tls_server
    with (
        tgrpc.InferenceServerClient(
            server.grpc_url, ssl=True, root_certificates=str(other)
        ) as client,
        pytest.raises(InferenceServerException) as info,
    ):
        client.is_server_ready()
    assert info.value.status() == "StatusCode.UNAVAILABLE", info.value


# ------------------------------------------------------------------ no fetching


class ConnectionCounter:
    """A loopback listener that counts every connection made to it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_server_never_fetches_urls(triton_server, grpc_client):
    """URLs in HYPOTHESIS, PREMISE and IMAGE (as text, as an SVG reference, in image
    metadata) are data: the listener they point at sees no connection."""
    listener = ConnectionCounter()
    try:
        url = f"http://127.0.0.1:{listener.port}/photo.jpg"
        png_with_url = payloads.encode(
            Image.open(TEST_IMAGES["tiny_50x40_png"]),
            "PNG",
            pnginfo=_png_text("Source", url),
        )
        answered = [
            request(IMAGE, url.encode()),
            request(IMAGE, b"A cup of coffee.", url.encode()),
            request(png_with_url, f"See {url}".encode()),
        ]
        refused = [
            request(url.encode(), b"A photo."),
            request(payloads.SVG_WITH_EXTERNAL_REFERENCE.replace(b"{url}", url.encode()), b"x"),
            request(b"file:///etc/passwd", b"A photo."),
        ]
        for inputs in answered:
            result = grpc_client.infer(MODEL, inputs, client_timeout=120)
            assert result.as_numpy("PROBS").shape == (1, 3)
        for inputs in refused:
            with pytest.raises(InferenceServerException) as info:
                grpc_client.infer(MODEL, inputs, client_timeout=120)
            assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert "IMAGE" in info.value.message()
        # A connection of our own, made last: once the listener has counted it, it has
        # counted every connection made before it too (they are accepted in order).
        socket.create_connection(("127.0.0.1", listener.port), timeout=10).close()
        deadline = time.monotonic() + 30  # for the wait only
        while listener.connections < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert listener.connections == 1, (
            f"the server connected {listener.connections - 1} times (or the canary never came)"
        )
    finally:
        listener.close()


def _png_text(key: str, value: str) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text(key, value)
    info.add_itxt("XML:com.adobe.xmp", f'<x:xmpmeta><rdf:Description about="{value}"/></x:xmpmeta>')
    return info


# ------------------------------------------------------------------ dependencies


def test_requirements_are_pinned_exactly():
    """Every package the server and the tests install has one exact version."""
    files = sorted((REPO_ROOT / "requirements").glob("*.txt"))
    assert files
    requirement = re.compile(r"^[A-Za-z0-9._-]+(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!-]+$")
    for path in files:
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line or line.startswith(("-r ", "--requirement ")):
                continue
            if line.startswith(("--index-url", "--extra-index-url", "--find-links")):
                continue
            assert requirement.match(line.split(";", 1)[0].strip()), f"{path.name}: {line!r}"
