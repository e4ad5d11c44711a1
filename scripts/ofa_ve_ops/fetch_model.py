#!/usr/bin/env python3
"""Download the real OFA visual-entailment model from the ModelScope hub (cached).

    python -m ofa_ve_ops.fetch_model [--cache-dir DIR] [--revision REV] [--timeout S]

Prints the model directory (a ModelScope model directory the engine loads) on
stdout; progress and errors go to stderr. Exit status: 0 on success (a cached
copy included), 3 when the hub cannot be reached and nothing complete is cached
(so `make serve` can fall back to a demo checkpoint), 1 on any other failure.

The download itself is ModelScope's own hub client, `modelscope_hub` (the
package `modelscope` 1.40 delegates its `snapshot_download` to), called through
its `HubApi.download_repo`. Called directly, it starts without importing torch
(which `import modelscope` does), and serving needs nothing
else of ModelScope. It shows a tqdm bar per file (we pass its `TqdmCallback`),
skips files already complete in the cache, and resumes a partial file (kept as
`<name>.incomplete`) with HTTP Range requests, so re-running after an
interruption continues where it stopped.

Before downloading, one bounded request checks that the hub answers at all:
ModelScope's own retries take tens of seconds to give up, and a server start
should not wait on that. When the hub cannot be reached (an
outage, a machine without egress) but a complete copy is already in the cache,
that copy is used, with a warning naming it: a restart during an outage keeps
serving the real model. Only when there is no complete copy does it exit 3.

The hub endpoint is ModelScope's: `MODELSCOPE_ENDPOINT` (or the deprecated
`MODELSCOPE_DOMAIN`), else https://modelscope.cn. Cache: `--cache-dir`, else
`OFA_VE_MODEL_CACHE`, else `~/.cache/ofa-ve/modelscope`.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

MODEL_ID = "damo/ofa_visual-entailment_snli-ve_distilled_v2_en"
CACHE_ENV = "OFA_VE_MODEL_CACHE"
MODEL_DIR_ENV = "OFA_VE_MODEL_DIR"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "ofa-ve" / "modelscope"
DEFAULT_TIMEOUT_S = 10.0
EXIT_HUB_UNREACHABLE = 3
# What the engine reads from a ModelScope model directory (its settings module's names).
REQUIRED_FILES = (
    "configuration.json",
    "config.json",
    "pytorch_model.bin",
    "vocab.json",
    "merges.txt",
)
PARTIAL_SUFFIX = ".incomplete"  # what modelscope_hub names a file it is still downloading


class ModelFetchError(RuntimeError):
    """The model could not be fetched (the message says why and what to do)."""


class HubUnreachableError(ModelFetchError):
    """The ModelScope hub did not answer: no network, DNS, proxy or firewall."""


def default_cache_dir() -> Path:
    """`OFA_VE_MODEL_CACHE` if set, else ~/.cache/ofa-ve/modelscope."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else DEFAULT_CACHE_DIR


def hub_endpoint() -> str:
    """The endpoint ModelScope itself would use (env overrides resolved its way)."""
    from modelscope_hub import HubConfig

    return str(HubConfig().endpoint)


def _unreachable(endpoint: str, reason: str) -> HubUnreachableError:
    return HubUnreachableError(
        f"the ModelScope hub at {endpoint} is unreachable ({reason}). Either give the server "
        f"a local ModelScope model directory with {MODEL_DIR_ENV}=/path/to/model, or fix "
        f"network access to the hub (proxy: HTTPS_PROXY; other hub: MODELSCOPE_ENDPOINT)."
    )


def _root_cause(error: BaseException) -> BaseException:
    """The innermost exception (e.g. `gaierror`, `ConnectionRefusedError`): the readable one."""
    seen = {id(error)}
    while (nested := error.__cause__ or error.__context__) is not None and id(nested) not in seen:
        seen.add(id(nested))
        error = nested
    return error


def check_hub_reachable(endpoint: str, model_id: str, timeout_s: float) -> None:
    """One GET of the model's metadata, bounded by `timeout_s` in total.

    The request runs in a daemon thread because name resolution is not covered
    by socket timeouts. Any HTTP answer below 500 counts as reachable (a 404 for
    a wrong model id is reported by the download itself, precisely).
    """
    import requests

    url = f"{endpoint.rstrip('/')}/api/v1/models/{model_id}"
    outcome: list[int | BaseException] = []

    def probe() -> None:
        try:
            with requests.get(url, timeout=(timeout_s, timeout_s), stream=True) as response:
                outcome.append(response.status_code)
        except BaseException as e:  # reported to the caller below
            outcome.append(e)

    worker = threading.Thread(target=probe, name="hub-probe", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome:
        raise _unreachable(endpoint, f"no answer within {timeout_s:g} s")
    result = outcome[0]
    if isinstance(result, BaseException):
        root = _root_cause(result)
        if isinstance(result, requests.Timeout) or isinstance(root, TimeoutError):
            # The socket's own timeout can fire before this thread wakes from join().
            raise _unreachable(endpoint, f"no answer within {timeout_s:g} s")
        raise _unreachable(endpoint, f"{type(root).__name__}: {str(root)[:200]}")
    if result >= 500:
        raise _unreachable(endpoint, f"it answered HTTP {result}")


def _missing_files(model_dir: Path) -> list[str]:
    """What keeps `model_dir` from being a complete model: absent or half-downloaded files."""
    missing = [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]
    partial = sorted(p.name for p in model_dir.glob(f"*{PARTIAL_SUFFIX}"))
    return missing + partial


def cached_model(cache_dir: Path, revision: str | None, model_id: str = MODEL_ID) -> Path | None:
    """The complete copy of the model in the cache, without any network; None if there
    is none (nothing downloaded yet, or a download that never finished)."""
    from modelscope_hub import HubApi, HubError

    try:
        path = HubApi(endpoint=hub_endpoint()).download_repo(
            model_id, "model", revision=revision, cache_dir=cache_dir, local_files_only=True
        )
    except (HubError, OSError, ValueError):
        return None
    model_dir = Path(path)
    return model_dir if model_dir.is_dir() and not _missing_files(model_dir) else None


def _from_cache_or_raise(
    error: ModelFetchError, cache_dir: Path, revision: str | None, model_id: str
) -> Path:
    """The complete cached copy, with a warning naming `error`; else `error` is raised.

    The copy is complete by its files (every one the engine reads, none half-written);
    their contents were checked against the hub's hashes when they were downloaded.
    """
    cached = cached_model(cache_dir, revision, model_id)
    if cached is None:
        raise error
    print(
        f"fetch_model: WARNING: {error} Using the complete copy already in the cache: "
        f"{cached} (it was not checked against the hub for a newer revision).",
        file=sys.stderr,
        flush=True,
    )
    return cached


def fetch_model(
    cache_dir: Path | None = None,
    revision: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    model_id: str = MODEL_ID,
) -> Path:
    """Download (or reuse from the cache) the model and return its directory.

    When the hub does not answer (within about `timeout_s`), or answers but the
    download fails, the complete cached copy is returned with a warning. Without one:
    HubUnreachableError when the hub did not answer, ModelFetchError for any other
    failure (unknown model or revision, incomplete download, ...). Partial downloads
    stay in the cache and resume.
    """
    if timeout_s <= 0:
        raise ValueError("timeout_s must be positive")
    cache_dir = (cache_dir or default_cache_dir()).expanduser()
    endpoint = hub_endpoint()
    try:
        check_hub_reachable(endpoint, model_id, timeout_s)
    except HubUnreachableError as e:
        return _from_cache_or_raise(e, cache_dir, revision, model_id)

    from modelscope_hub import HubApi, HubError, NetworkError, TqdmCallback

    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        path = HubApi(endpoint=endpoint).download_repo(
            model_id,
            "model",
            revision=revision,
            cache_dir=cache_dir,
            progress_callbacks=[TqdmCallback],
        )
    except NetworkError as e:
        lost = _unreachable(endpoint, f"lost during download: {e}")
        lost.__cause__ = e
        return _from_cache_or_raise(lost, cache_dir, revision, model_id)
    except (HubError, OSError) as e:
        # A hub that answers but fails (5xx on the listing, a cut connection, a hash
        # that never matches) must not take down a server whose model is cached whole.
        resumable = next(cache_dir.rglob(f"*{PARTIAL_SUFFIX}"), None) is not None
        failed = ModelFetchError(
            f"downloading {model_id} (revision {revision or 'default'}) into {cache_dir} "
            f"failed: {e}."
            + (" Re-running resumes the partial files." if resumable else "")
            + f" Or set {MODEL_DIR_ENV} to a local ModelScope model directory."
        )
        failed.__cause__ = e
        return _from_cache_or_raise(failed, cache_dir, revision, model_id)
    model_dir = Path(path)
    missing = _missing_files(model_dir)
    if missing:
        raise ModelFetchError(
            f"{model_dir} was downloaded but lacks {', '.join(missing)}: not a ModelScope "
            f"model directory for {model_id}"
        )
    return model_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            f"Download {MODEL_ID} from the ModelScope hub into a cache and print the "
            "model directory. Where the hub is unreachable, the complete cached copy "
            "(with a warning); exit 3 when there is none."
        )
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"cache folder (default: ${CACHE_ENV} or {DEFAULT_CACHE_DIR})",
    )
    parser.add_argument("--revision", default=None, help="hub revision (default: the hub's)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for the hub to answer (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument("--model-id", default=MODEL_ID, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        model_dir = fetch_model(args.cache_dir, args.revision, args.timeout, args.model_id)
    except HubUnreachableError as e:
        print(f"fetch_model: {e}", file=sys.stderr)
        return EXIT_HUB_UNREACHABLE
    except ModelFetchError as e:
        print(f"fetch_model: {e}", file=sys.stderr)
        return 1
    print(model_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
