"""TLS, mutual TLS and auth headers against a tritonserver started with certificates
generated here (a throwaway self-signed CA that signs the server and client certs)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from ofa_ve_client import (
    AuthenticationError,
    Prediction,
    RetryPolicy,
    ServerUnavailableError,
    VisualEntailmentClient,
)
from ofa_ve_data.workload import TEST_IMAGES
from ofa_ve_ops.server_process import TritonServer
from support.servers import running

IMAGE = TEST_IMAGES["tiny_50x40_png"]
HYPOTHESIS = "Coffee is served in a cup."
API_KEY = "s3cret-token"
# Triton's --grpc-restricted-protocol=inference:KEY=VALUE expects the header
# "triton-grpc-protocol-KEY: VALUE" on every inference call.
AUTH_HEADER = {"triton-grpc-protocol-x-api-key": API_KEY}
SERVER_DNS = "ofa-ve.test"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # trusts nothing of ours


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, key, issuer, issuer_key, *, ca=False, san=None, usage=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert=None, key=None) -> Path:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key, other_key, server_key, client_key = (
        ec.generate_private_key(ec.SECP256R1()) for _ in range(4)
    )
    ca = _cert("ofa-ve test CA", ca_key, "ofa-ve test CA", ca_key, ca=True)
    other = _cert("some other CA", other_key, "some other CA", other_key, ca=True)
    server = _cert(
        "127.0.0.1",
        server_key,
        "ofa-ve test CA",
        ca_key,
        san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName(SERVER_DNS)],
        usage=[ExtendedKeyUsageOID.SERVER_AUTH],
    )
    client = _cert(
        "ofa-ve test client",
        client_key,
        "ofa-ve test CA",
        ca_key,
        usage=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    return Pki(
        ca=_write(d / "ca.pem", cert=ca),
        server_cert=_write(d / "server.pem", cert=server),
        server_key=_write(d / "server.key", key=server_key),
        client_cert=_write(d / "client.pem", cert=client),
        client_key=_write(d / "client.key", key=client_key),
        other_ca=_write(d / "other-ca.pem", cert=other),
    )


@pytest.fixture(scope="module")
def tls_server(server_factory, pki, tiny_model_dir) -> Iterator[TritonServer]:
    """A server of this module's own: mutual TLS, inference restricted to an API key
    (over the tiny checkpoint: what is tested is the transport, not the network)."""
    server = server_factory(
        model_dir=tiny_model_dir,
        extra_args=[
            "--grpc-use-ssl=true",
            f"--grpc-server-cert={pki.server_cert}",
            f"--grpc-server-key={pki.server_key}",
            f"--grpc-root-cert={pki.ca}",
            "--grpc-use-ssl-mutual=true",
            f"--grpc-restricted-protocol=inference:x-api-key={API_KEY}",
        ],
    )
    with running(server):  # started, READY; killed at the end
        yield server


def mtls(pki: Pki, **overrides) -> dict:
    options = {
        "ssl": True,
        "root_certificates": pki.ca,
        "certificate_chain": pki.client_cert,
        "private_key": pki.client_key,
        "headers": AUTH_HEADER,
        "timeout": 30,
        "retry": RetryPolicy.disabled(),
    }
    options.update(overrides)
    return options


def test_mutual_tls_with_auth_header(tls_server, pki, tiny_server):
    with VisualEntailmentClient(tiny_server.grpc_url) as plain:
        want = plain.predict(IMAGE, HYPOTHESIS)
    with VisualEntailmentClient(tls_server.grpc_url, **mtls(pki)) as client:
        got = client.predict(IMAGE, HYPOTHESIS)
        assert isinstance(got, Prediction)
        assert got.label == want.label
        assert got.probs == pytest.approx(want.probs, abs=1e-5)
        assert client.is_model_ready()
        batch = client.predict_batch([(IMAGE, HYPOTHESIS)] * 3, batch_size=2)
        assert all(isinstance(p, Prediction) for p in batch)


def test_pem_bytes_and_server_name_override(tls_server, pki):
    options = mtls(
        pki,
        root_certificates=pki.ca.read_bytes(),
        certificate_chain=pki.client_cert.read_bytes(),
        private_key=pki.client_key.read_bytes(),
        tls_server_name=SERVER_DNS,
    )
    with VisualEntailmentClient(tls_server.grpc_url, **options) as client:
        assert isinstance(client.predict(IMAGE, HYPOTHESIS), Prediction)


def test_missing_auth_header_is_an_authentication_error_not_retried(tls_server, pki):
    patient = RetryPolicy(max_attempts=50, initial_backoff=0.2)
    client = VisualEntailmentClient(tls_server.grpc_url, **mtls(pki, headers=None, retry=patient))
    with client, pytest.raises(AuthenticationError) as info:
        client.predict(IMAGE, HYPOTHESIS)
    assert info.value.attempts == 1
    assert "restricted" in info.value.message


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"root_certificates": "other_ca"}, id="server-cert-from-unknown-ca"),
        pytest.param({"certificate_chain": None, "private_key": None}, id="no-client-cert"),
        pytest.param(
            {
                "ssl": False,
                "root_certificates": None,
                "certificate_chain": None,
                "private_key": None,
            },
            id="plaintext-client",
        ),
    ],
)
def test_handshake_failures_are_unavailable(tls_server, pki, overrides):
    if overrides.get("root_certificates") == "other_ca":
        overrides = {"root_certificates": pki.other_ca}
    with VisualEntailmentClient(tls_server.grpc_url, **mtls(pki, **overrides)) as client:
        with pytest.raises(ServerUnavailableError):
            client.predict(IMAGE, HYPOTHESIS)
        assert client.is_server_ready() is False


def test_cli_over_mutual_tls(tls_server, pki):
    cli = Path(sys.executable).with_name("ofa-ve")
    common = [
        "--url",
        tls_server.grpc_url,
        "--ssl",
        "--root-cert",
        str(pki.ca),
        "--client-cert",
        str(pki.client_cert),
        "--client-key",
        str(pki.client_key),
        "--header",
        f"triton-grpc-protocol-x-api-key={API_KEY}",
    ]
    out = subprocess.run(
        [str(cli), "predict", str(IMAGE), HYPOTHESIS, *common],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["label"] in ("entailment", "neutral", "contradiction")
    health = subprocess.run(
        [str(cli), "health", *common], capture_output=True, text=True, timeout=60, check=False
    )
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout)["ready"] is True
