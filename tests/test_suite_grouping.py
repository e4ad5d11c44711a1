"""The suite's own set-up under pytest-xdist (`make test`: `-n 3 --dist loadgroup`)."""

from __future__ import annotations

import pytest
from sharing import WORKER_GROUPS, worker_group


@pytest.mark.xdist_group("grouping-check")
def test_loadgroup_keeps_a_group_in_one_worker(request: pytest.FixtureRequest) -> None:
    """pytest-xdist renames a grouped test `<id>@<group>` and schedules by that suffix;
    pytest 9.2 ignores the rename (pytest-xdist#1386), and the groups are then dropped
    silently: every worker starts every shared server. requirements/dev.txt pins a
    pytest where the rename holds; this fails if an upgrade breaks it again."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("runs under pytest-xdist's --dist loadgroup (make test)")
    assert request.node.nodeid.endswith("@grouping-check"), (
        f"{request.node.nodeid}: --dist loadgroup ignored the xdist_group mark"
    )


@pytest.mark.timeout(60)
def test_tests_sharing_a_server_share_a_group(request: pytest.FixtureRequest) -> None:
    """Every test that uses a shared server is in that server's group."""
    by_fixture = {fixture: name for name, fixtures in WORKER_GROUPS for fixture in fixtures}
    checked = 0
    for item in request.session.items:
        used = [f for f in getattr(item, "fixturenames", ()) if f in by_fixture]
        if not used:
            continue
        mark = item.get_closest_marker("xdist_group")
        assert mark is not None, item.nodeid
        assert mark.args[0] == worker_group(used) in {by_fixture[f] for f in used}, item.nodeid
        checked += 1
    if not checked:
        pytest.skip("no test of this run uses a shared server")
