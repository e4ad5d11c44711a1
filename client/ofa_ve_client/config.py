"""Everything a client is configured with, validated once, shared by sync and async clients."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .contract import DEFAULT_URL, MODEL_NAME
from .retry import RetryPolicy
from .url_fetch import ImageFetchOptions

PemSource = str | os.PathLike | bytes  # a file path, or the PEM bytes themselves

COMPRESSIONS = ("gzip", "deflate")
DEFAULT_TIMEOUT = 60.0
DEFAULT_CONCURRENCY = 2


@dataclass(frozen=True)
class KeepAliveOptions:
    """gRPC keepalive (see gRPC's keepalive.md); the defaults are gRPC's (pings off).

    Behind load balancers that drop idle connections set e.g.
    keepalive_time_ms=30_000; the server must allow it (tritonserver
    --grpc-keepalive-permit-without-calls, --grpc-http2-min-recv-ping-interval-without-data).
    """

    keepalive_time_ms: int = 2**31 - 1
    keepalive_timeout_ms: int = 20_000
    keepalive_permit_without_calls: bool = False
    http2_max_pings_without_data: int = 2


@dataclass(frozen=True)
class TLSOptions:
    """TLS for the gRPC channel: server verification and, optionally, a client certificate."""

    root_certificates: PemSource | None = None  # None: the system's roots
    private_key: PemSource | None = None
    certificate_chain: PemSource | None = None
    server_name: str | None = None  # override the name checked against the certificate

    def __post_init__(self) -> None:
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ValueError("private_key and certificate_chain go together (mutual TLS)")


@dataclass(frozen=True)
class ClientConfig:
    urls: tuple[str, ...]
    model_name: str = MODEL_NAME
    model_version: str = ""
    timeout: float | None = DEFAULT_TIMEOUT
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    batch_size: int | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    compression_algorithm: str | None = None
    tls: TLSOptions | None = None
    keepalive: KeepAliveOptions = field(default_factory=KeepAliveOptions)
    channel_args: tuple[tuple[str, Any], ...] = ()
    image_fetch: ImageFetchOptions = field(default_factory=ImageFetchOptions)


GRPC_RESOLVER_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:")
"""Target prefixes gRPC resolves itself; passed through as they are."""


def normalize_urls(url: str | Sequence[str]) -> tuple[str, ...]:
    """'host:port' or a list of them; a leading grpc:// is tolerated, http:// is a mistake.

    gRPC name-resolver targets pass through unchanged (e.g. ``dns:///svc:8001`` with
    channel_args ``[("grpc.lb_policy_name", "round_robin")]`` spreads calls over every
    address a headless Kubernetes Service resolves to).
    """
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ValueError("at least one server URL is needed")
    out = []
    for u in urls:
        u = u.strip()
        if u.startswith("grpc://"):
            u = u[len("grpc://") :]
        if u.startswith(GRPC_RESOLVER_SCHEMES):
            out.append(u)
            continue
        if "://" in u or not u:
            raise ValueError(f"server URL must be HOST:PORT (the gRPC port), got {u!r}")
        out.append(u)
    return tuple(out)


def build_config(
    url: str | Sequence[str] = DEFAULT_URL,
    *,
    model_name: str = MODEL_NAME,
    model_version: str = "",
    timeout: float | None = DEFAULT_TIMEOUT,
    retry: RetryPolicy | None = None,
    batch_size: int | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    headers: Mapping[str, str] | None = None,
    compression_algorithm: str | None = None,
    ssl: bool = False,
    root_certificates: PemSource | None = None,
    private_key: PemSource | None = None,
    certificate_chain: PemSource | None = None,
    tls_server_name: str | None = None,
    keepalive: KeepAliveOptions | None = None,
    channel_args: Sequence[tuple[str, Any]] = (),
    image_fetch: ImageFetchOptions | None = None,
) -> ClientConfig:
    """Validate the keyword arguments shared by both clients (documented on the clients)."""
    if timeout is not None and timeout <= 0:
        raise ValueError("timeout must be > 0 seconds, or None for no deadline")
    if batch_size is not None and batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    if compression_algorithm is not None and compression_algorithm not in COMPRESSIONS:
        raise ValueError(f"compression_algorithm must be one of {COMPRESSIONS} or None")
    tls_given = any(
        v is not None for v in (root_certificates, private_key, certificate_chain, tls_server_name)
    )
    if tls_given and not ssl:
        raise ValueError("TLS options were given but ssl=False; pass ssl=True")
    tls = (
        TLSOptions(root_certificates, private_key, certificate_chain, tls_server_name)
        if ssl
        else None
    )
    # gRPC metadata keys must be lower-case ASCII.
    clean_headers = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
    return ClientConfig(
        urls=normalize_urls(url),
        model_name=model_name,
        model_version=model_version,
        timeout=timeout,
        retry=retry or RetryPolicy(),
        batch_size=batch_size,
        concurrency=concurrency,
        headers=clean_headers,
        compression_algorithm=compression_algorithm,
        tls=tls,
        keepalive=keepalive or KeepAliveOptions(),
        channel_args=tuple(channel_args),
        image_fetch=image_fetch or ImageFetchOptions(),
    )


def read_pem(source: PemSource | None) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read TLS file {source}: {exc.strerror or exc}") from None
