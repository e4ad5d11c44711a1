"""The suite's own set-up under pytest-xdist (`make test`: `-n 3 --dist loadgroup`):
which tests share a worker (tests/support/sharing.py), and that xdist keeps them together."""

from __future__ import annotations

import pytest
from support.sharing import FixtureUse, worker_groups

pytestmark = pytest.mark.timeout(60)


def _use(nodeid: str, **scopes: str) -> FixtureUse:
    return FixtureUse(nodeid=nodeid, module=nodeid.split("::")[0], scopes=scopes)


def test_session_servers_group_their_tests_and_cheap_fixtures_do_not() -> None:
    groups = worker_groups(
        [
            _use("test_a::one", triton_server="session", demo_model_dir="session"),
            _use("test_b::two", grpc_client="session", triton_server="session"),
            _use("test_b::three", spare_server="session"),
            _use("test_c::four", tiny_server="session"),
            _use("test_c::five", demo_model_dir="session", tmp_path="function"),
        ]
    )
    assert groups == {
        "test_a::one": "demo-server",
        "test_b::two": "demo-server",
        "test_b::three": "demo-server",
        "test_c::four": "tiny-server",
    }


def test_a_module_fixture_keeps_its_tests_together_and_joins_a_session_group() -> None:
    groups = worker_groups(
        [
            _use("test_v::installs", fresh_venv="module"),
            _use("test_v::predicts", fresh_venv="module", triton_server="session"),
            _use("test_q::storm", small_queue_server="module", server_factory="session"),
            _use("test_q::sdk", small_queue_server="module"),
            _use("test_q::alone", server_factory="session"),
            # Same fixture name in another module: another instance, another group.
            _use("test_r::other", small_queue_server="module"),
        ]
    )
    assert groups == {
        "test_v::installs": "demo-server",
        "test_v::predicts": "demo-server",
        "test_q::storm": "test_q",
        "test_q::sdk": "test_q",
        "test_r::other": "test_r",
    }


def test_a_test_using_two_session_groups_joins_them() -> None:
    groups = worker_groups(
        [
            _use("test_a::x", tiny_server="session"),
            _use("test_b::y", modelscope_reference="session"),
            _use("test_c::both", tiny_server="session", triton_server="session"),
            _use("test_d::z", triton_server="session"),
        ]
    )
    assert groups["test_c::both"] == "demo-server+tiny-server"
    assert groups["test_a::x"] == groups["test_d::z"] == "demo-server+tiny-server"
    assert groups["test_b::y"] == "modelscope"


def test_no_test_of_this_run_joins_two_session_groups(request: pytest.FixtureRequest) -> None:
    """A test (or module fixture) that uses two shared servers would put both, and all
    their tests, in one worker; keep them apart instead."""
    marked = {
        item.nodeid.split("@")[0]: mark.args[0]
        for item in request.session.items
        if (mark := item.get_closest_marker("xdist_group")) is not None
    }
    assert marked.get(
        "tests/unit/test_suite_grouping.py::test_loadgroup_keeps_a_group_in_one_worker"
    )
    for nodeid, group in marked.items():
        assert "+" not in group, f"{nodeid} joins two session groups: {group}"


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
