"""Our fetcher and the REAL ModelScope client, against a loopback emulation of the hub.

Why: the hub is unreachable from here, yet resuming, integrity checks, cache hits and
error reporting are the client's (`modelscope_hub` 0.5.1, which `modelscope` 1.40.2
delegates to), and they are what `make serve` depends on. `tests/support/hub_emulator.py`
serves the demo checkpoint the way the hub serves
`damo/ofa_visual-entailment_snli-ve_distilled_v2_en`;
the client is pointed at it through `MODELSCOPE_ENDPOINT` and is never patched. The
only client knobs touched are its documented environment variables
(`MODELSCOPE_DOWNLOAD_MAX_RETRIES`, `MODELSCOPE_REPO_TREE_PAGE_MAX_ATTEMPTS`), where
its own retries would otherwise hide the first failure or take half a minute.

Most runs are the CLI in a subprocess (`python -m ofa_ve_ops.fetch_model`) with HOME,
MODELSCOPE_CACHE and the cache in tmp dirs: nothing touches the real home or cache.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import requests
from ofa_ve_ops.fetch_model import EXIT_HUB_UNREACHABLE, MODEL_ID, fetch_model
from support.hub_emulator import HubEmulator

pytestmark = pytest.mark.timeout(120)

WEIGHTS = "pytorch_model.bin"
SNAPSHOT = Path("models") / MODEL_ID.replace("/", "--") / "snapshots" / "master"
"""Where modelscope_hub puts the default revision, under the cache dir."""
NO_RETRIES = {"MODELSCOPE_DOWNLOAD_MAX_RETRIES": "0"}
"""The client's own per-file retry count: 0 makes a cut connection end the run."""
_HUB_ENV = ("MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN", "MODELSCOPE_API_TOKEN",
            "MODELSCOPE_HOME", "MODELSCOPE_CACHE", "OFA_VE_MODEL_CACHE")  # fmt: skip


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def tree_hashes(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones aside), relative path -> sha256."""
    return {
        p.relative_to(folder).as_posix(): _sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(s.startswith(".") for s in p.relative_to(folder).parts)
    }


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def expected(demo_model_dir: Path) -> dict[str, str]:
    return tree_hashes(demo_model_dir)


@pytest.fixture
def hub(demo_model_dir: Path) -> Iterator[HubEmulator]:
    """A hub serving the demo checkpoint as the real model id."""
    with HubEmulator({MODEL_ID: demo_model_dir}) as emulator:
        yield emulator


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def hub_env(
    tmp_path: Path, endpoint: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """os.environ, pointed at `endpoint`, with HOME and ModelScope's cache in tmp dirs
    and no proxy (a proxy would get the loopback requests)."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k not in _HUB_ENV}
    (tmp_path / "home").mkdir(exist_ok=True)
    env.update(
        MODELSCOPE_ENDPOINT=endpoint,
        MODELSCOPE_CACHE=str(tmp_path / "modelscope-cache"),
        HOME=str(tmp_path / "home"),
        NO_PROXY="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


def run_fetcher(
    tmp_path: Path,
    endpoint: str,
    cache: Path,
    *args: str,
    extra_env: Mapping[str, str] | None = None,
    timeout_s: float = 10,
) -> subprocess.CompletedProcess[str]:
    """`python -m ofa_ve_ops.fetch_model --cache-dir CACHE --timeout T ARGS` against
    `endpoint`; bounded, so that a hang fails the test instead of blocking it."""
    command = [sys.executable, "-m", "ofa_ve_ops.fetch_model", "--cache-dir", str(cache)]
    return subprocess.run(
        [*command, "--timeout", f"{timeout_s:g}", *args],
        env=hub_env(tmp_path, endpoint, extra_env),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def assert_clean_failure(
    proc: subprocess.CompletedProcess[str], status: int | tuple[int, ...]
) -> None:
    """Failed with `status` (or one of them), a message from the fetcher, no traceback."""
    assert proc.returncode in (status if isinstance(status, tuple) else (status,)), proc.stderr[
        -3000:
    ]
    assert proc.stdout == "", "stdout carries only the model directory"
    assert "fetch_model: " in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def download_ok(tmp_path: Path, hub: HubEmulator, cache: Path, **kwargs: object) -> Path:
    """One successful run; returns the model directory it printed."""
    proc = run_fetcher(tmp_path, hub.endpoint, cache, **kwargs)  # type: ignore[arg-type]
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip())


# -- the emulator itself speaks HTTP the way the client needs --------------------------
def test_emulator_serves_ranges_listing_and_cuts(hub: HubEmulator, demo_model_dir: Path) -> None:
    base = f"{hub.endpoint}/api/v1/models/{MODEL_ID}"
    listing = requests.get(f"{base}/repo/files", params={"Revision": "master"}, timeout=10)
    assert listing.status_code == 200 and listing.json()["Code"] == 200
    files = {f["Path"]: f for f in listing.json()["Data"]["Files"]}
    config = (demo_model_dir / "config.json").read_bytes()
    assert files["config.json"]["Size"] == len(config)
    assert files["config.json"]["Sha256"] == hashlib.sha256(config).hexdigest()

    url, params = f"{base}/repo", {"Revision": "master", "FilePath": "config.json"}
    part = requests.get(url, params=params, headers={"Range": "bytes=100-"}, timeout=10)
    assert part.status_code == 206 and part.content == config[100:]
    assert part.headers["Content-Range"] == f"bytes 100-{len(config) - 1}/{len(config)}"
    beyond = requests.get(
        url, params=params, headers={"Range": f"bytes={len(config)}-"}, timeout=10
    )
    assert beyond.status_code == 416

    hub.corrupt("config.json")
    bad = requests.get(url, params=params, timeout=10).content
    assert len(bad) == len(config) and bad != config
    assert requests.get(url, params=params, timeout=10).content == config, "only once"

    hub.cut("config.json", after_bytes=500)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(url, params=params, timeout=10).content  # noqa: B018
    assert hub.downloads("config.json")[-1].body_bytes == 500
    assert requests.get(f"{hub.endpoint}/api/v1/models/x/y", timeout=10).status_code == 404


# -- downloads ---------------------------------------------------------------------
def test_download_into_an_empty_cache_is_byte_identical_and_shows_progress(
    tmp_path: Path, hub: HubEmulator, cache: Path, expected: dict[str, str]
) -> None:
    proc = run_fetcher(tmp_path, hub.endpoint, cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_dir = Path(proc.stdout.strip())
    assert proc.stdout.count("\n") == 1, "stdout is the model directory alone"
    assert model_dir == cache / SNAPSHOT
    assert tree_hashes(model_dir) == expected
    assert not list(model_dir.glob("*.incomplete"))
    # ModelScope's TqdmCallback, one bar per file, run to its end.
    assert re.search(rf"Downloading \[{re.escape(WEIGHTS)}\]: 100%", proc.stderr), proc.stderr[
        -2000:
    ]
    # What the client asked: our probe, one listing of master, each file once, whole.
    assert len(hub.requests_to(f"/models/{MODEL_ID}")) == 1
    (listing,) = hub.requests_to("/repo/files")
    assert listing.query["Revision"] == "master"
    fetched = sorted(r.file_path for r in hub.downloads())  # type: ignore[type-var]
    assert fetched == sorted(expected)
    assert all(r.range is None and r.status == 200 for r in hub.downloads())


def test_second_run_is_served_from_the_cache(
    tmp_path: Path,
    hub: HubEmulator,
    cache: Path,
    expected: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second run, in-process through `fetch_model()`: the listing is asked again
    (the cache is checked against its sizes and hashes), no file body is."""
    first = download_ok(tmp_path, hub, cache)
    hub.clear_log()
    env = hub_env(tmp_path, hub.endpoint)
    for name in [*_HUB_ENV, *(n for n in os.environ if "proxy" in n.lower())]:
        monkeypatch.delenv(name, raising=False)
    for name in ("MODELSCOPE_ENDPOINT", "MODELSCOPE_CACHE", "HOME", "NO_PROXY"):
        monkeypatch.setenv(name, env[name])
    assert fetch_model(cache_dir=cache, timeout_s=10) == first
    assert hub.downloads() == [], [r.file_path for r in hub.downloads()]
    assert len(hub.requests_to("/repo/files")) == 1
    assert tree_hashes(first) == expected


def test_a_cut_download_fails_clearly_and_the_next_run_resumes_with_range(
    tmp_path: Path, hub: HubEmulator, cache: Path, expected: dict[str, str]
) -> None:
    size = hub.repo(MODEL_ID).files[WEIGHTS].size
    half = size // 2
    hub.cut(WEIGHTS, after_bytes=half)
    proc = run_fetcher(tmp_path, hub.endpoint, cache, extra_env=NO_RETRIES)
    assert_clean_failure(proc, 1)
    assert WEIGHTS in proc.stderr and "Re-running resumes" in proc.stderr
    partial = cache / SNAPSHOT / f"{WEIGHTS}.incomplete"
    assert partial.stat().st_size == half, "every byte received is kept for the resume"
    assert not (cache / SNAPSHOT / WEIGHTS).exists()
    assert {p.name for p in (cache / SNAPSHOT).iterdir()} == {*expected, partial.name} - {WEIGHTS}

    hub.clear_log()
    model_dir = download_ok(tmp_path, hub, cache)
    (resumed,) = hub.downloads()  # only the unfinished file is asked for again
    assert resumed.file_path == WEIGHTS
    assert resumed.range == f"bytes={half}-" and resumed.range_start == half > 0
    assert resumed.status == 206 and resumed.body_bytes == size - half
    assert tree_hashes(model_dir) == expected
    assert not partial.exists()


def test_a_cut_within_one_run_is_resumed_by_the_client_itself(
    tmp_path: Path, hub: HubEmulator, cache: Path, expected: dict[str, str]
) -> None:
    """With its default retries the client resumes at once (first retry: no backoff)."""
    third = hub.repo(MODEL_ID).files[WEIGHTS].size // 3
    hub.cut(WEIGHTS, after_bytes=third)
    model_dir = download_ok(tmp_path, hub, cache)
    first, second = hub.downloads(WEIGHTS)
    assert first.range is None and first.fault == "cut" and first.body_bytes == third
    assert second.range_start == third and second.status == 206
    assert tree_hashes(model_dir) == expected


# -- integrity -----------------------------------------------------------------------
def test_a_file_served_corrupted_once_is_detected_and_fetched_again(
    tmp_path: Path, hub: HubEmulator, cache: Path, expected: dict[str, str]
) -> None:
    """The client checks each body against the listing's Sha256, drops a mismatch
    (partial file included) and downloads the whole file again."""
    hub.corrupt(WEIGHTS, times=1)
    proc = run_fetcher(tmp_path, hub.endpoint, cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(rf"Hash validation failed for {re.escape(WEIGHTS)}", proc.stderr)
    bad, good = hub.downloads(WEIGHTS)
    assert bad.fault == "corrupt" and good.fault is None
    assert good.range is None, "the rejected bytes are not resumed from"
    assert tree_hashes(Path(proc.stdout.strip())) == expected


def test_a_file_that_stays_corrupted_fails_and_is_never_kept(
    tmp_path: Path, hub: HubEmulator, cache: Path, expected: dict[str, str]
) -> None:
    hub.corrupt("config.json", times=None)
    proc = run_fetcher(tmp_path, hub.endpoint, cache)
    assert_clean_failure(proc, 1)
    assert "Hash mismatch for config.json" in proc.stderr
    assert len(hub.downloads("config.json")) == 3, "the client's three tries"
    snapshot = cache / SNAPSHOT
    assert not (snapshot / "config.json").exists()
    assert not (snapshot / "config.json.incomplete").exists()

    hub.clear_faults()
    hub.clear_log()
    model_dir = download_ok(tmp_path, hub, cache)
    assert [r.file_path for r in hub.downloads()] == ["config.json"]
    assert tree_hashes(model_dir) == expected


def test_a_cached_file_damaged_on_disk_is_downloaded_again(
    tmp_path: Path, hub: HubEmulator, cache: Path, expected: dict[str, str]
) -> None:
    """A cache hit needs the listing's size AND sha256: same-size damage is caught."""
    model_dir = download_ok(tmp_path, hub, cache)
    damaged = model_dir / "vocab.json"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(data)
    hub.clear_log()
    assert download_ok(tmp_path, hub, cache) == model_dir
    assert [r.file_path for r in hub.downloads()] == ["vocab.json"]
    assert tree_hashes(model_dir) == expected


# -- errors --------------------------------------------------------------------------
def test_an_unknown_model_id_fails_with_the_hubs_404(
    tmp_path: Path, hub: HubEmulator, cache: Path
) -> None:
    proc = run_fetcher(tmp_path, hub.endpoint, cache, "--model-id", "damo/no-such-model")
    assert_clean_failure(proc, 1)
    assert "damo/no-such-model" in proc.stderr
    assert "404" in proc.stderr and "does not exist" in proc.stderr
    assert [r.status for r in hub.requests_to("/repo/files")] == [404]
    assert hub.downloads() == []


def test_an_unknown_revision_fails_clearly(tmp_path: Path, hub: HubEmulator, cache: Path) -> None:
    proc = run_fetcher(tmp_path, hub.endpoint, cache, "--revision", "v9.9.9")
    assert_clean_failure(proc, 1)
    assert "v9.9.9" in proc.stderr and "404" in proc.stderr
    assert hub.downloads() == []


@pytest.mark.parametrize("status", [500, 503])
def test_a_hub_answering_5xx_is_reported_unreachable(
    tmp_path: Path, hub: HubEmulator, cache: Path, status: int
) -> None:
    hub.fail(status)
    proc = run_fetcher(tmp_path, hub.endpoint, cache)
    assert_clean_failure(proc, EXIT_HUB_UNREACHABLE)
    assert "unreachable" in proc.stderr and f"HTTP {status}" in proc.stderr
    assert hub.endpoint in proc.stderr
    assert [r.path for r in hub.log] == [f"/api/v1/models/{MODEL_ID}"], "it stopped at the probe"


def test_a_5xx_behind_a_healthy_probe_fails_clearly(
    tmp_path: Path, hub: HubEmulator, cache: Path
) -> None:
    """The model-info probe answers, the listing does not. Today the fetcher reports a
    failed download (1) here, not an unreachable hub (3): either is acceptable, a
    traceback or a hang is not. One listing attempt instead of the client's four."""
    hub.fail(503, r"/repo/files")
    extra = {"MODELSCOPE_REPO_TREE_PAGE_MAX_ATTEMPTS": "1"}
    proc = run_fetcher(tmp_path, hub.endpoint, cache, extra_env=extra)
    assert_clean_failure(proc, (1, EXIT_HUB_UNREACHABLE))
    assert "503" in proc.stderr
    assert hub.downloads() == []


def test_a_hub_that_does_not_answer_in_time_is_reported_unreachable(
    tmp_path: Path, hub: HubEmulator, cache: Path
) -> None:
    hub.delay(60)
    proc = run_fetcher(tmp_path, hub.endpoint, cache, timeout_s=1)
    assert_clean_failure(proc, EXIT_HUB_UNREACHABLE)
    assert "no answer within 1 s" in proc.stderr
    assert hub.requests_to(f"/models/{MODEL_ID}"), "the probe did reach the hub"
    assert hub.downloads() == []


# -- the cache when the hub is gone ----------------------------------------------------
def test_unreachable_hub_falls_back_to_a_complete_cache(
    tmp_path: Path, hub: HubEmulator, cache: Path, expected: dict[str, str]
) -> None:
    model_dir = download_ok(tmp_path, hub, cache)
    hub.stop()
    proc = run_fetcher(tmp_path, f"http://127.0.0.1:{_closed_port()}", cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Path(proc.stdout.strip()) == model_dir
    assert "unreachable" in proc.stderr
    assert re.search(r"\busing\b[^\n]*\bcache", proc.stderr, re.IGNORECASE), proc.stderr
    assert tree_hashes(model_dir) == expected


def test_unreachable_hub_with_a_partial_cache_still_fails(
    tmp_path: Path, hub: HubEmulator, cache: Path
) -> None:
    hub.cut(WEIGHTS, after_bytes=hub.repo(MODEL_ID).files[WEIGHTS].size // 2)
    assert run_fetcher(tmp_path, hub.endpoint, cache, extra_env=NO_RETRIES).returncode == 1
    assert (cache / SNAPSHOT / f"{WEIGHTS}.incomplete").is_file()
    hub.stop()
    proc = run_fetcher(tmp_path, f"http://127.0.0.1:{_closed_port()}", cache)
    assert_clean_failure(proc, EXIT_HUB_UNREACHABLE)
    assert "unreachable" in proc.stderr
