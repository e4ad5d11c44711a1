#!/usr/bin/env python3
"""Triton's admin APIs closed to callers without the operators' key (the production default).

Why: on Triton's default command line anyone who reaches a port can register a
system shared-memory region by name (the server then maps that /dev/shm object),
and call the model-repository (load, unload), trace and logging APIs
(docs/security.md). Triton restricts them per endpoint with a key:
`--grpc-restricted-protocol=<apis>:<header>=<secret>` and
`--http-restricted-api=<apis>:<header>=<secret>`. Inference, health and metadata
and the model config stay open.

The container runs tritonserver through this module (docker/Dockerfile's
ENTRYPOINT): it reads the secret from `OFA_VE_ADMIN_KEY_FILE` (a mounted
Kubernetes Secret) or `OFA_VE_ADMIN_KEY`, appends both flags to the command after
`--` and execs it. Without a secret it refuses to start, unless
`OFA_VE_ADMIN_OPEN=1` says on purpose that the admin APIs stay open (never in
production). Callers then send `admin-key: <secret>` (HTTP) or
`triton-grpc-protocol-admin-key: <secret>` (gRPC metadata).

    OFA_VE_ADMIN_KEY_FILE=/run/secrets/admin-key \\
        python -m ofa_ve_ops.admin_access -- python -m ofa_ve_ops.stub_watchdog -- tritonserver ...

The secret ends up on tritonserver's command line (Triton takes it no other way),
so it is visible to whoever can list processes inside the container.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ofa_ve_ops.cli_args import command_after_separator

ADMIN_APIS = ("shared-memory", "model-repository", "trace", "logging")
"""Every Triton API that changes the server or maps memory. The model config stays open
(read-only, and the client SDK reads `max_batch_size` from it), as do inference,
health, metadata and statistics."""
KEY_HEADER = "admin-key"
GRPC_HEADER = f"triton-grpc-protocol-{KEY_HEADER}"
"""Triton prefixes the gRPC metadata key of a restricted protocol with this."""
KEY_ENV = "OFA_VE_ADMIN_KEY"
KEY_FILE_ENV = "OFA_VE_ADMIN_KEY_FILE"
OPEN_ENV = "OFA_VE_ADMIN_OPEN"
MIN_SECRET_CHARS = 16
_SECRET_RE = re.compile(r"^[A-Za-z0-9._~+/-]+$")  # no ',', ':', '=' or spaces: Triton's syntax


class AdminKeyError(ValueError):
    """The admin secret is missing or unusable; the message says what to set."""


def check_secret(secret: str) -> str:
    """The secret if Triton's flag syntax can carry it and it is not trivially short."""
    if len(secret) < MIN_SECRET_CHARS:
        raise AdminKeyError(
            f"the admin key has {len(secret)} characters; use at least {MIN_SECRET_CHARS} "
            "random ones (e.g. `openssl rand -hex 32`)"
        )
    if not _SECRET_RE.match(secret):
        raise AdminKeyError(
            "the admin key may hold only letters, digits and . _ ~ + / - (Triton's flag "
            "syntax uses , : = as separators); `openssl rand -hex 32` makes one"
        )
    return secret


def restricted_flags(secret: str, apis: Sequence[str] = ADMIN_APIS) -> list[str]:
    """tritonserver flags that put `apis` behind `secret` on both endpoints."""
    spec = f"{','.join(apis)}:{KEY_HEADER}={check_secret(secret)}"
    return [f"--grpc-restricted-protocol={spec}", f"--http-restricted-api={spec}"]


def secret_from_env(env: Mapping[str, str]) -> str | None:
    """The secret from OFA_VE_ADMIN_KEY_FILE (preferred) or OFA_VE_ADMIN_KEY; None if
    neither is set."""
    key_file = env.get(KEY_FILE_ENV, "").strip()
    if key_file:
        try:
            return Path(key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AdminKeyError(f"{KEY_FILE_ENV}={key_file}: {exc.strerror}") from None
    secret = env.get(KEY_ENV, "").strip()
    return secret or None


def closed_command(command: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """`command` with the restriction flags appended, or unchanged when the operator
    opened the admin APIs on purpose; AdminKeyError when there is neither."""
    secret = secret_from_env(env)
    if secret is None:
        if env.get(OPEN_ENV, "").strip() == "1":
            return list(command)
        raise AdminKeyError(
            f"no admin key: set {KEY_FILE_ENV} (a file holding it, e.g. a mounted "
            f"Kubernetes Secret) or {KEY_ENV} to a secret only operators hold, so that "
            f"Triton's admin APIs ({', '.join(ADMIN_APIS)}) refuse everyone else. "
            f"{OPEN_ENV}=1 leaves them open to any caller (not for production)."
        )
    return [*command, *restricted_flags(secret)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Everything after `--` is the command to run (the watchdog and tritonserver).",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    command = command_after_separator(parser, args.command, "the command to run")
    try:
        final = closed_command(command, os.environ)
    except AdminKeyError as exc:
        print(f"admin_access: {exc}", file=sys.stderr, flush=True)
        return 78  # EX_CONFIG: a configuration error, not worth restarting for
    if final == list(command):
        print(
            f"admin_access: WARNING: {OPEN_ENV}=1: Triton's admin APIs are open to every "
            "caller that reaches a port",
            file=sys.stderr,
            flush=True,
        )
    executable = shutil.which(final[0]) or final[0]
    os.execv(executable, final)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
