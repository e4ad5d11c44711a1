"""The environment variables the tools read: the one table.

`python -m ofa_ve_ops.serve --help` prints it, `make help` prints it (this file runs
without the virtualenv: standard library only), and README.md's table is generated
from it; tests/unit/test_docs.py fails where they disagree or where a tool reads a
variable the table leaves out.

    python3 scripts/ofa_ve_ops/environment.py            # the plain-text list
    python3 scripts/ofa_ve_ops/environment.py --markdown  # README.md's table
"""

from __future__ import annotations

import sys
import textwrap
from typing import NamedTuple


class Variable(NamedTuple):
    name: str
    default: str
    meaning: str
    reader: str = "serve"
    """Who reads it: `serve` (make serve, the container) or `client` (the ofa-ve CLI)."""


VARIABLES = (
    Variable(
        "OFA_VE_MODEL_DIR", "unset",
        "a ModelScope model directory to serve: `make serve` links it as a version folder's "
        "weights/ where that folder has none of its own (else the hub's real model, else a "
        "random-weight demo); set on tritonserver itself (the container), every version "
        "loads it instead of its own",
    ),
    Variable("OFA_VE_MODEL_CACHE", "~/.cache/ofa-ve/modelscope", "where the hub's model is kept"),
    Variable("MODELSCOPE_ENDPOINT", "https://modelscope.cn", "the ModelScope hub to fetch from"),
    Variable("OFA_VE_BIND_ADDRESS", "127.0.0.1", "the address every endpoint binds"),
    Variable("OFA_VE_HTTP_PORT", "8000", "HTTP port"),
    Variable("OFA_VE_GRPC_PORT", "8001", "gRPC port, the one the client SDK talks to"),
    Variable("OFA_VE_METRICS_PORT", "8002", "Prometheus metrics port"),
    Variable("OFA_VE_CACHE_DIR", ".cache/", "generated files: the demo checkpoint"),
    Variable("OFA_VE_TRITON_DIR", ".cache/triton/", "where tritonserver is laid out (its wheel)"),
    Variable(
        "OFA_VE_ADMIN_KEY", "unset",
        "a key Triton's admin APIs then require (open on loopback without one; "
        "docs/security.md)",
    ),
    Variable("OFA_VE_ADMIN_KEY_FILE", "unset", "a file holding that key"),
    Variable(
        "OFA_VE_ADMIN_OPEN", "unset",
        "1: the container starts without a key, its admin APIs open (never in production)",
    ),
    Variable("OFA_VE_URL", "127.0.0.1:8001", "the default --url of the `ofa-ve` CLI", "client"),
)  # fmt: skip


def help_text() -> str:
    """The plain-text list (`serve --help`, `make help`)."""
    width = max(len(v.name) for v in VARIABLES) + 2
    lines = ["Environment variables (the one table: scripts/ofa_ve_ops/environment.py):"]
    for reader, title in (("serve", "make serve and the container"), ("client", "the ofa-ve CLI")):
        lines.append(f"  read by {title}:")
        for v in VARIABLES:
            if v.reader == reader:
                text = f"{v.name:<{width}}{v.meaning} (default: {v.default})"
                lines += textwrap.wrap(
                    text, 88, initial_indent="    ", subsequent_indent=" " * (width + 4),
                    break_long_words=False, break_on_hyphens=False,
                )  # fmt: skip
    return "\n".join(lines)


def markdown_table() -> str:
    """README.md's table."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for v in VARIABLES:
        meaning = v.meaning if v.reader == "serve" else f"{v.meaning} (client)"
        default = v.default if v.default == "unset" else f"`{v.default}`"
        rows.append(f"| `{v.name}` | {default} | {meaning} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table() if sys.argv[1:] == ["--markdown"] else help_text())
