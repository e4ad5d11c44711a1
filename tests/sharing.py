"""Which costly session fixtures tests share, and the pytest-xdist group that keeps
the tests sharing one in a single worker (`make test`: `-n 3 --dist loadgroup`), so
that each server and the ModelScope process starts once per run, not once per worker.
"""

from __future__ import annotations

from collections.abc import Iterable

WORKER_GROUPS: tuple[tuple[str, frozenset[str]], ...] = (
    ("demo-server", frozenset({"triton_server", "grpc_client", "spare_server"})),
    ("tiny-server", frozenset({"tiny_server"})),
    ("modelscope", frozenset({"modelscope_reference"})),
)
"""(group, fixtures): a test that uses any of the fixtures is in the group (the first
that matches); every other test goes to whichever worker is free."""


def worker_group(fixturenames: Iterable[str]) -> str | None:
    """The group of a test that uses `fixturenames` (directly or not), if any."""
    used = frozenset(fixturenames)
    return next((name for name, fixtures in WORKER_GROUPS if fixtures & used), None)
