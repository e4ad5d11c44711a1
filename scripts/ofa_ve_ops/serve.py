#!/usr/bin/env python3
"""Run a real tritonserver in the foreground serving OFA visual entailment (`make serve`).

Weights live in the model repository, the Triton way: each version folder of the
model holds a ModelScope model directory in <version>/weights/, and that is what the
version loads. A version folder whose weights/ is a real directory is served as it is
(nothing is fetched for it). Where weights/ is missing, or is a link (this script's,
from an earlier start), it is linked to, in order:
  1. OFA_VE_MODEL_DIR (or --model-dir): a ModelScope model directory you provide;
  2. the real model from the ModelScope hub (`python -m ofa_ve_ops.fetch_model`), or,
     while the hub cannot be reached, the complete copy already in its cache;
  3. where the hub cannot be reached and nothing is cached: a demo checkpoint with RANDOM
     weights (cached under the cache folder), announced loudly: its answers are
     meaningless, it only shows the server working.
A link, not a copy: the weights stay in one place (the cache), a restart re-points the
link at once, and Triton follows links in a local repository. To ship the repository
(object storage, another machine), copy it with the links followed: `cp -rL`,
`aws s3 sync`, `gcloud storage rsync -r` (docs/deployment.md).

--model-repository DIR serves another repository (default: this checkout's
model_repository/), the same way. The tritonserver process gets no OFA_VE_MODEL_DIR:
the model reads its version folders.

The process becomes `python -m ofa_ve_ops.stub_watchdog` (exec), which runs
tritonserver and forwards Ctrl-C or SIGTERM to it: Triton drains in-flight requests
(up to --exit-timeout-secs), unloads the model and exits. If a model instance's stub
process dies, the watchdog stops the server and exits 70.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from ofa_ve_ops import admin_access, environment, paths, triton_runtime
from ofa_ve_ops.paths import CACHE_DIR_ENV, MODEL_NAME, MODEL_REPOSITORY, demo_checkpoint_dir

MODEL_DIR_ENV = "OFA_VE_MODEL_DIR"
WEIGHTS_FOLDER = "weights"
LINK_RECORD = ".weights-link"
"""Beside a weights/ link this script made: its target (so a link of the operator's stays)."""

DEMO_WARNING = """
==========================================================================
  WARNING: THE MODELSCOPE HUB IS UNREACHABLE ({reason})
  Serving a DEMO CHECKPOINT WITH RANDOM WEIGHTS:
      {path}
  Every answer this server gives is MEANINGLESS. It only shows the server
  working. For real predictions set OFA_VE_MODEL_DIR to the ModelScope
  model directory of damo/ofa_visual-entailment_snli-ve_distilled_v2_en
  (or put its files in <version>/weights/ of the model, or run where the
  hub is reachable: `make serve` fetches and caches it).
==========================================================================
"""


def _say(message: str) -> None:
    print(f"serve: {message}", file=sys.stderr, flush=True)


def _env_port(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        port = int(value)
    except ValueError:
        raise SystemExit(f"serve: {name}={value!r} is not a port number") from None
    if not 0 < port < 65536:
        raise SystemExit(f"serve: {name}={port} is not a port number (1-65535)")
    return port


# Endpoint, the variable that sets its port, and what the port is for.
ENDPOINTS = (
    ("HTTP", "OFA_VE_HTTP_PORT", "http_port"),
    ("gRPC", "OFA_VE_GRPC_PORT", "grpc_port"),
    ("metrics", "OFA_VE_METRICS_PORT", "metrics_port"),
)


def _bind_error(address: str, port: int) -> OSError | None:
    """Whether tritonserver could bind address:port now (it sets SO_REUSEADDR too)."""
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return OSError(errno.EADDRNOTAVAIL, f"cannot resolve {address!r}: {exc.strerror}")
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            return exc
    return None


def _free_port_near(address: str, port: int, avoid: set[int]) -> int:
    """A port to suggest instead of `port`: port + 10, + 20, ... that binds now."""
    for candidate in range(port + 10, min(port + 1000, 65536), 10):
        if candidate not in avoid and _bind_error(address, candidate) is None:
            return candidate
    return port + 10


def check_ports(address: str, ports: dict[str, int]) -> None:
    """Refuse at once, naming every port that cannot be had in one message, with the
    variables (and flags) that move them.

    Why here: tritonserver only binds its ports after the model has loaded (seconds
    to minutes, a hub download included) and then fails with a bare "already in use",
    one port per attempt. `ports` maps an ENDPOINTS variable name to the port asked for.
    """
    by_port: dict[int, str] = {}
    problems: list[str] = []
    taken: list[tuple[str, str, str, int]] = []
    for endpoint, variable, attr in ENDPOINTS:
        port = ports[variable]
        flag = "--" + attr.replace("_", "-")
        if port in by_port:
            problems.append(
                f"{variable} and {by_port[port]} are both {port}: every endpoint needs a "
                "port of its own"
            )
            continue
        by_port[port] = variable
        error = _bind_error(address, port)
        if error is None:
            continue
        if error.errno == errno.EADDRINUSE:
            taken.append((endpoint, variable, flag, port))
        else:
            problems.append(
                f"cannot bind the {endpoint} port {address}:{port} ({error.strerror}); "
                f"check OFA_VE_BIND_ADDRESS (--address) and {variable} ({flag})"
            )
    if taken:
        avoid = set(by_port)
        moves = []
        for _, variable, flag, port in taken:
            moves.append((variable, flag, _free_port_near(address, port, avoid)))
            avoid.add(moves[-1][2])
        listed = ", ".join(f"{address}:{port} (the {endpoint} port, {variable})"
                           for endpoint, variable, _, port in taken)
        verb = "is" if len(taken) == 1 else "are"
        problems.insert(0, (
            f"{listed} {verb} already in use (another `make serve` or tritonserver?). Stop "
            "that process or pick other ports: "
            + " ".join(f"{variable}={port}" for variable, _, port in moves)
            + " make serve (or "
            + " ".join(f"{flag} {port}" for _, flag, port in moves)
            + ")"
        ))
    if problems:
        raise SystemExit("serve: " + "; ".join(problems))


def demo_checkpoint(cache_dir: Path) -> Path:
    """The cached random-weight checkpoint, written on first use."""
    from ofa_ve_engine.demo_checkpoint import (
        DEFAULT_SEED,
        checkpoint_files,
        write_demo_checkpoint,
    )

    out = demo_checkpoint_dir(DEFAULT_SEED, cache_dir)
    if all(p.is_file() for p in checkpoint_files(out)):
        return out
    _say(f"writing a random-weight demo checkpoint to {out} ...")
    return write_demo_checkpoint(out, seed=DEFAULT_SEED)


def resolve_model_dir(model_dir: Path | None, cache_dir: Path, hub_timeout_s: float) -> Path:
    """Given directory, else the hub's real model, else (hub unreachable) the demo."""
    if model_dir is not None:
        if not model_dir.is_dir():
            raise SystemExit(f"serve: model directory {model_dir} does not exist")
        _say(f"model directory: {model_dir}")
        return model_dir
    from ofa_ve_ops.fetch_model import HubUnreachableError, ModelFetchError, fetch_model

    _say("no OFA_VE_MODEL_DIR: fetching the real model from the ModelScope hub ...")
    try:
        path = fetch_model(timeout_s=hub_timeout_s)
    except HubUnreachableError as exc:
        path = demo_checkpoint(cache_dir)
        print(DEMO_WARNING.format(reason=exc, path=path), file=sys.stderr, flush=True)
        return path
    except ModelFetchError as exc:  # reachable but failed: the user must see why
        raise SystemExit(f"serve: {exc}") from None
    _say(f"real model (from the ModelScope hub, or its complete cached copy): {path}")
    return Path(path)


def version_folders(repository: Path) -> list[Path]:
    """The model's version folders (numeric names) in `repository`; refuses what is no
    repository of this model."""
    model = repository / MODEL_NAME
    if not (model / "config.pbtxt").is_file():
        raise SystemExit(
            f"serve: {repository} is not a model repository of {MODEL_NAME} "
            f"(no {MODEL_NAME}/config.pbtxt in it)"
        )
    versions = sorted(
        (p for p in model.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0),
        key=lambda p: int(p.name),
    )
    if not versions:
        raise SystemExit(f"serve: {model} has no version folder (1/, 2/, ...)")
    return versions


def needs_weights(version: Path) -> bool:
    """Whether `version/weights` is this script's to (re)link: missing, or the link it made
    itself (recorded in LINK_RECORD). A real directory there, or a link of the operator's,
    is served as it is."""
    weights = version / WEIGHTS_FOLDER
    if not weights.is_symlink():
        return not weights.exists()
    record = version / LINK_RECORD
    return record.is_file() and record.read_text().strip() == os.readlink(weights)


def link_weights(version: Path, model_dir: Path) -> Path:
    """Point `version/weights` at `model_dir` (absolute), replacing an earlier link in one
    atomic rename (a server reading the folder sees the old link or the new one), and
    record that the link is this script's."""
    weights = version / WEIGHTS_FOLDER
    target = str(model_dir.resolve())
    staging = version / f".{WEIGHTS_FOLDER}.{os.getpid()}.tmp"
    staging.unlink(missing_ok=True)
    staging.symlink_to(target, target_is_directory=True)
    os.replace(staging, weights)
    (version / LINK_RECORD).write_text(target + "\n")
    return weights


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    env_dir = os.environ.get(MODEL_DIR_ENV, "").strip()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n", 2)[2] + "\n" + environment.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=Path(env_dir) if env_dir else None,
        help=f"ModelScope model directory to link as the weights of version folders that have "
        f"none of their own (default: ${MODEL_DIR_ENV}, else hub, else demo)",
    )
    parser.add_argument(
        "--model-repository",
        type=Path,
        default=MODEL_REPOSITORY,
        help=f"the model repository to serve (default: this checkout's, {MODEL_REPOSITORY})",
    )
    parser.add_argument(
        "--address",
        default=os.environ.get("OFA_VE_BIND_ADDRESS", "").strip() or "127.0.0.1",
        help="address every endpoint binds (default: $OFA_VE_BIND_ADDRESS or 127.0.0.1)",
    )
    for (endpoint, variable, dest), default in zip(ENDPOINTS, (8000, 8001, 8002), strict=True):
        parser.add_argument(
            f"--{dest.replace('_', '-')}",
            type=int,
            default=_env_port(variable, default),
            help=f"{endpoint} port (default: ${variable} or {default})",
        )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=paths.cache_dir(),
        help=f"where the demo checkpoint is kept (default: ${CACHE_DIR_ENV} or .cache/)",
    )
    parser.add_argument(
        "--hub-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the ModelScope hub before falling back (default 10)",
    )
    parser.add_argument(
        "--exit-timeout-secs",
        type=int,
        default=triton_runtime.DEFAULT_EXIT_TIMEOUT_S,
        help="on Ctrl-C/SIGTERM, how long Triton lets in-flight requests finish",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="resolve the weights and print the links it would make and the tritonserver "
        "command; change nothing, run nothing",
    )
    parser.add_argument(
        "tritonserver_args",
        nargs="*",
        metavar="-- TRITONSERVER_ARG",
        help="extra tritonserver flags, after `--` (e.g. -- --log-verbose=1)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.dry_run:
        check_ports(args.address, {var: getattr(args, attr) for _, var, attr in ENDPOINTS})
    try:
        runtime = triton_runtime.prepare_runtime()
    except triton_runtime.RuntimeSetupError as exc:
        _say(str(exc))
        return 1
    repository = args.model_repository.resolve()
    versions = version_folders(repository)
    unlinked = [v for v in versions if needs_weights(v)]
    for version in versions:
        if version not in unlinked:
            _say(f"version {version.name}: its own weights, {version / WEIGHTS_FOLDER}")
    links: list[tuple[Path, Path]] = []
    if unlinked:
        model_dir = resolve_model_dir(args.model_dir, args.cache_dir, args.hub_timeout).resolve()
        links = [(version, model_dir) for version in unlinked]
    elif args.model_dir is not None:
        _say(f"{MODEL_DIR_ENV} not used: every version folder has weights of its own")
    command = triton_runtime.server_command(
        runtime,
        repository,
        ports=triton_runtime.Ports(args.http_port, args.grpc_port, args.metrics_port),
        address=args.address,
        exit_timeout_s=args.exit_timeout_secs,
        extra_args=args.tritonserver_args,
    )
    env = triton_runtime.server_env(runtime)
    env.pop(MODEL_DIR_ENV, None)  # the model reads its version folders
    try:  # on loopback the admin APIs may stay open; with a key they are closed
        secret = admin_access.secret_from_env(os.environ)
        if secret is not None:
            command += admin_access.restricted_flags(secret)
    except admin_access.AdminKeyError as exc:
        raise SystemExit(f"serve: {exc}") from None
    for version, model_dir in links:
        weights = version / WEIGHTS_FOLDER
        if args.dry_run:
            print(f"weights: {weights} -> {model_dir}")
        else:
            link_weights(version, model_dir)
            _say(f"version {version.name}: weights {weights} -> {model_dir}")
    if args.dry_run:
        print(" ".join(command))
        return 0
    if not triton_runtime.has_gpu():
        _say(
            'no GPU here: the model runs on the CPU. Triton will log "CudaDriverHelper '
            'has not been initialized." once; on a machine without a GPU that is expected '
            "and harmless."
        )
    _say(
        f"starting tritonserver: HTTP {args.address}:{args.http_port}, gRPC "
        f"{args.address}:{args.grpc_port}, metrics {args.address}:{args.metrics_port} "
        "(Ctrl-C stops it)"
    )
    # The watchdog runs tritonserver as its child and forwards signals; when a model
    # instance's stub process dies (Triton 2.51 keeps reporting READY while every
    # request fails), it stops the server and exits 70 so a supervisor restarts it.
    watchdog = [sys.executable, "-m", "ofa_ve_ops.stub_watchdog", "--"]
    os.execve(sys.executable, [*watchdog, *command], env)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
