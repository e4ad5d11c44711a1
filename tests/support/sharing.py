"""Which tests share a costly fixture instance, and the pytest-xdist group that keeps
them in one worker (`make test`: `-n 3 --dist loadgroup`), so that each shared server,
the ModelScope process, and each module's own server, fresh virtualenv or loaded
engine is built once per run instead of once per worker that runs one of its tests.

Two tests share an instance when both use one of the session fixtures below, or the
same module- or class-scoped fixture of their module; a test that shares with one
that shares with a third puts all three together. The other session fixtures (the
demo and tiny checkpoints, the in-process engines) are cheap enough for every worker
to build its own, and tests that share nothing go to whichever worker is free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

SESSION_GROUPS: tuple[tuple[str, frozenset[str]], ...] = (
    ("demo-server", frozenset({"triton_server", "grpc_client", "spare_server"})),
    ("tiny-server", frozenset({"tiny_server"})),
    ("modelscope", frozenset({"modelscope_reference"})),
)
"""(group, session fixtures): the tests that use any of them run in that group."""

_SESSION_GROUP_OF = {fixture: name for name, fixtures in SESSION_GROUPS for fixture in fixtures}
_PER_MODULE_SCOPES = frozenset({"module", "class"})


@dataclass(frozen=True)
class FixtureUse:
    """What grouping needs of one collected test."""

    nodeid: str
    module: str
    """Its module's name (e.g. ``test_faults``): names a group of module fixtures."""
    scopes: Mapping[str, str]
    """Scope of every fixture it uses, directly or not (``"session"``, ``"module"``...)."""


def _keys(test: FixtureUse) -> list[tuple[str, ...]]:
    """The shared instances `test` uses: session groups, and (module, fixture) pairs."""
    keys: list[tuple[str, ...]] = []
    for fixture, scope in test.scopes.items():
        if scope == "session" and fixture in _SESSION_GROUP_OF:
            keys.append(("session", _SESSION_GROUP_OF[fixture]))
        elif scope in _PER_MODULE_SCOPES:
            keys.append(("module", test.module, fixture))
    return keys


def worker_groups(tests: Iterable[FixtureUse]) -> dict[str, str]:
    """nodeid -> group for every test that uses a shared instance (the others are absent).

    A group that holds a session fixture is named after it (``demo-server``; two
    joined by a test that uses both: ``demo-server+tiny-server``); one made of a
    module's fixtures alone is named after the module."""
    parent: dict[tuple[str, ...], tuple[str, ...]] = {}

    def root(key: tuple[str, ...]) -> tuple[str, ...]:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]  # path halving
            key = parent[key]
        return key

    tests = list(tests)
    keys_of = {test.nodeid: _keys(test) for test in tests}
    for keys in keys_of.values():
        for key in keys:
            parent[root(key)] = root(keys[0])
    members: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
    for key in list(parent):
        members.setdefault(root(key), set()).add(key)

    def name(component: set[tuple[str, ...]]) -> str:
        sessions = sorted(key[1] for key in component if key[0] == "session")
        return "+".join(sessions) if sessions else min(key[1] for key in component)

    names = {top: name(component) for top, component in members.items()}
    return {
        test.nodeid: names[root(keys_of[test.nodeid][0])] for test in tests if keys_of[test.nodeid]
    }
