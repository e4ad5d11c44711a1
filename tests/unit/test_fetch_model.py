"""The hub fetcher fails fast and clearly when the ModelScope hub cannot be reached.

Real code path: the hub endpoint is pointed (the way ModelScope reads it, via
MODELSCOPE_ENDPOINT / MODELSCOPE_DOMAIN) at loopback sockets of our own: a
closed port, and a listener that accepts but never answers.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from ofa_ve_ops.fetch_model import (
    CACHE_ENV,
    EXIT_HUB_UNREACHABLE,
    MODEL_DIR_ENV,
    HubUnreachableError,
    check_hub_reachable,
    default_cache_dir,
    fetch_model,
)

SCRIPT = ("-m", "ofa_ve_ops.fetch_model")


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_listener() -> Iterator[socket.socket]:
    """A loopback server that accepts connections and never says a word."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s


@pytest.fixture(autouse=True)
def _isolated_hub_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN", "HTTP_PROXY", "HTTPS_PROXY",
                 "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def test_closed_port_fails_fast_naming_the_way_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", endpoint)
    with pytest.raises(HubUnreachableError) as caught:
        fetch_model(cache_dir=tmp_path / "cache", timeout_s=5.0)
    message = str(caught.value)
    assert MODEL_DIR_ENV in message and endpoint in message
    # Fast: the refusal itself ends it, not the 5 s timeout running out.
    assert "refused" in message.lower()
    assert "no answer within" not in message
    assert not any((tmp_path / "cache").rglob("*.bin")), "nothing may be downloaded"


def test_silent_hub_is_bounded_by_the_timeout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, silent_listener: socket.socket
) -> None:
    """The fetcher connected, got no answer, and gave up at its own timeout (it says so)
    instead of waiting on the silent hub (pytest-timeout would end that)."""
    port = silent_listener.getsockname()[1]
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(HubUnreachableError, match=r"no answer within 1\.5 s"):
        fetch_model(cache_dir=tmp_path, timeout_s=1.5)
    silent_listener.settimeout(5)
    connection, _ = silent_listener.accept()  # it did reach the silent hub
    connection.close()


def test_a_probe_timing_out_before_the_wait_ends_reads_the_same(
    monkeypatch: pytest.MonkeyPatch, silent_listener: socket.socket
) -> None:
    """On a busy machine the probe's own socket timeout can fire before the waiting
    thread wakes (a full run once saw the bare "TimeoutError: timed out"); the report
    is the same "no answer within" either way."""
    join = threading.Thread.join
    # The waiter wakes only once the probe has given up by itself.
    monkeypatch.setattr(threading.Thread, "join", lambda thread, timeout=None: join(thread))
    endpoint = f"http://127.0.0.1:{silent_listener.getsockname()[1]}"
    with pytest.raises(HubUnreachableError, match=r"no answer within 0\.5 s"):
        check_hub_reachable(endpoint, "damo/some-model", timeout_s=0.5)


def test_deprecated_domain_variable_is_honoured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    port = _closed_port()
    monkeypatch.setenv("MODELSCOPE_DOMAIN", f"127.0.0.1:{port}")
    with (
        pytest.warns(FutureWarning, match="MODELSCOPE_DOMAIN"),
        pytest.raises(HubUnreachableError, match=f"127.0.0.1:{port}"),
    ):
        fetch_model(cache_dir=tmp_path, timeout_s=5.0)


def test_cli_exit_status_and_messages(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "MODELSCOPE_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
    }
    proc = subprocess.run(
        [sys.executable, *SCRIPT, "--cache-dir", str(tmp_path / "cache"), "--timeout", "5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == EXIT_HUB_UNREACHABLE, proc.stderr
    assert proc.stdout == "", "stdout carries only the model directory"
    assert MODEL_DIR_ENV in proc.stderr and "unreachable" in proc.stderr


def test_cache_dir_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv(CACHE_ENV)
    assert default_cache_dir() == Path.home() / ".cache" / "ofa-ve" / "modelscope"


def test_timeout_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        fetch_model(cache_dir=tmp_path, timeout_s=0)
