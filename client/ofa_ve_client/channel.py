"""gRPC channel settings for tritonclient: TLS credentials and channel arguments.

We always pass the full channel-argument list ourselves (tritonclient then
ignores its own defaults), because the reconnect backoff must be short: after
a server restart gRPC otherwise waits up to two minutes before it even tries
to reconnect, and every retry in between fails at once with UNAVAILABLE.
"""

from __future__ import annotations

from typing import Any

from .config import ClientConfig, read_pem

_MAX_MESSAGE = 2**31 - 1  # tritonclient's own limit: images can be large


def channel_args(config: ClientConfig) -> list[tuple[str, Any]]:
    ka = config.keepalive
    args: dict[str, Any] = {
        "grpc.max_send_message_length": _MAX_MESSAGE,
        "grpc.max_receive_message_length": _MAX_MESSAGE,
        "grpc.keepalive_time_ms": ka.keepalive_time_ms,
        "grpc.keepalive_timeout_ms": ka.keepalive_timeout_ms,
        "grpc.keepalive_permit_without_calls": int(ka.keepalive_permit_without_calls),
        "grpc.http2.max_pings_without_data": ka.http2_max_pings_without_data,
        "grpc.initial_reconnect_backoff_ms": 100,
        "grpc.max_reconnect_backoff_ms": 1000,
    }
    if config.tls is not None and config.tls.server_name:
        args["grpc.ssl_target_name_override"] = config.tls.server_name
    args.update(dict(config.channel_args))  # the caller's word wins
    return list(args.items())


def queue_timeout_us(deadline_s: float | None) -> int | None:
    """Triton's per-request queue timeout (microseconds) matching the client's deadline.

    With the model's `allow_timeout_override`, the server then drops a request
    still queued when its caller has given up, instead of computing it for nobody.
    """
    return None if deadline_s is None else max(1, int(deadline_s * 1e6))


def client_kwargs(config: ClientConfig) -> dict[str, Any]:
    """Keyword arguments for tritonclient's (sync or aio) InferenceServerClient."""
    kwargs: dict[str, Any] = {"channel_args": channel_args(config)}
    if config.tls is not None:
        import grpc

        kwargs["creds"] = grpc.ssl_channel_credentials(
            root_certificates=read_pem(config.tls.root_certificates),
            private_key=read_pem(config.tls.private_key),
            certificate_chain=read_pem(config.tls.certificate_chain),
        )
    return kwargs
