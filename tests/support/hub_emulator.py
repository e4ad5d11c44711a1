"""A loopback stand-in for the ModelScope hub, for the tests of our model fetcher.

Why: the real hub is unreachable from the test machines, yet what matters most about
`ofa_ve_ops.fetch_model` is how the *real* ModelScope client (`modelscope_hub` 0.5.1,
which `modelscope` 1.40.2 delegates its downloads to) behaves against a hub: resume,
integrity checks, cache hits, errors. So this serves exactly the requests that client
makes, from local folders, and the tests point the unmodified client at it with
`MODELSCOPE_ENDPOINT=http://127.0.0.1:PORT`.

What `HubApi(endpoint=...).download_repo(model_id, "model", cache_dir=...)` asks
(read from modelscope_hub/_download.py and _legacy_api.py):

- `GET /api/v1/repos/internalAccelerationInfo` (0.2 s budget; region detection for
  intra-cloud acceleration; any failure means "no region").
- `GET /api/v1/models/{owner}/{name}/repo/files?Revision=master&Recursive=True`:
  `{"Code": 200, "Data": {"Files": [{"Path", "Name", "Type": "blob"|"tree", "Size",
  "Sha256", ...}]}, "Success": true}`. The revision defaults to "master"; no revision
  lookup is made first.
- per file, `GET /api/v1/models/{owner}/{name}/repo?Revision=master&FilePath=NAME`,
  with `Range: bytes=N-` when a `NAME.incomplete` partial file of N bytes exists.
  A 206 must carry `Content-Range: bytes N-END/TOTAL`.
- errors: HTTP status >= 400 with a JSON body (`Code`, `Message`); 404 means
  NotExistError, 5xx a retryable ServerError.

Our fetcher's own pre-check is `GET /api/v1/models/{owner}/{name}` (model info).

Faults the tests can inject (each one counted, so "the first N requests" is a knob):
`corrupt()` (same size, flipped bytes), `cut()` (the connection closed after K bytes
of a file's body), `fail()` (a fixed HTTP status), `delay()` (an answer held back).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import socket
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, quote_plus, unquote, urlsplit

API = "/api/v1"
DEFAULT_BRANCH = "master"
CHUNK = 1 << 20
CORRUPT_STRIDE = 4096
"""A corrupted body has every byte at a file offset divisible by this inverted."""
NOT_FOUND_CODE = 10010205001
"""The business code our 404 bodies carry (a client-side failure, like the real hub's)."""

_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")
_MODEL_RE = re.compile(rf"{API}/models/([^/]+)/([^/]+)(/.*)?")


@dataclass(frozen=True)
class HubFile:
    """One file of a repository: where its bytes are, and what the listing says of them."""

    path: str
    source: Path
    size: int
    sha256: str


@dataclass
class HubRepo:
    """A model repository: its files (read once at start) and its revisions."""

    model_id: str
    files: dict[str, HubFile]
    subdirs: list[str]
    commit: str
    revisions: frozenset[str]

    @classmethod
    def from_folder(cls, model_id: str, folder: Path, tags: tuple[str, ...] = ()) -> HubRepo:
        """Hash every (non-hidden) file of `folder` once, as the hub's listing reports it."""
        files: dict[str, HubFile] = {}
        subdirs: set[str] = set()
        for source in sorted(folder.rglob("*")):
            rel = source.relative_to(folder)
            if any(part.startswith(".") for part in rel.parts) or not source.is_file():
                continue
            stat = source.stat()
            name = rel.as_posix()
            sha256 = _sha256(str(source), stat.st_size, stat.st_mtime_ns)
            files[name] = HubFile(name, source, stat.st_size, sha256)
            subdirs.update(p.as_posix() for p in rel.parents if p != Path("."))
        commit = hashlib.sha1(model_id.encode()).hexdigest()
        return cls(
            model_id, files, sorted(subdirs), commit, frozenset({DEFAULT_BRANCH, commit, *tags})
        )


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """The file's SHA-256, once per version of it: every test's hub serves the same
    200 MB checkpoint, and hashing it for each would cost more than the test."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 * CHUNK):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class LoggedRequest:
    """What the hub was asked, and what it answered (for the tests' assertions)."""

    method: str
    path: str
    query: dict[str, str]
    range: str | None
    status: int = 0
    body_bytes: int = 0
    """Bytes of a file's body handed to the socket (counted before each write, so a
    test that saw the client finish sees the final count; JSON answers count 0)."""
    fault: str | None = None

    @property
    def file_path(self) -> str | None:
        """The repository file a download request asked for (`FilePath`), else None."""
        if self.path.endswith("/repo") and "FilePath" in self.query:
            return self.query["FilePath"]
        return None

    @property
    def range_start(self) -> int | None:
        """N of a `Range: bytes=N-...` header, else None."""
        match = _RANGE_RE.fullmatch(self.range or "")
        return int(match.group(1)) if match and match.group(1) else None


@dataclass
class _Fault:
    """One injected misbehaviour, applied to the next `times` matching requests."""

    kind: str
    pattern: re.Pattern[str]
    times: int | None
    status: int = 0
    after_bytes: int = 0
    seconds: float = 0.0
    used: int = 0

    def take(self, target: str) -> bool:
        """Whether this fault applies to `target` now (counting it if so)."""
        if not self.pattern.search(target):
            return False
        if self.times is not None and self.used >= self.times:
            return False
        self.used += 1
        return True


@dataclass
class _State:
    repos: dict[str, HubRepo]
    log: list[LoggedRequest] = field(default_factory=list)
    faults: list[_Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler stuck in a delay never keeps the test process alive
    block_on_close = False
    state: _State


class _Handler(BaseHTTPRequestHandler):
    """Answers one request the way the ModelScope hub does (see the module docstring)."""

    protocol_version = "HTTP/1.1"  # keep-alive, like the real hub (the client pools)
    timeout = 30  # an idle kept-alive connection frees its thread after this
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet: the log is ours
        pass

    # -- entry points ------------------------------------------------------------
    def do_GET(self) -> None:
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    # -- dispatch ----------------------------------------------------------------
    def _handle(self, head: bool) -> None:
        state = self.server.state
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        entry = LoggedRequest(self.command, path, query, self.headers.get("Range"))
        with state.lock:
            state.log.append(entry)
            target = f"{path}?{parts.query}" if parts.query else path
            faults = [f for f in state.faults if f.take(target)]
        for fault in faults:
            if fault.kind == "delay":
                entry.fault = "delay"
                if state.stopping.wait(fault.seconds):
                    self.close_connection = True
                    return
        for fault in faults:
            if fault.kind == "status":
                entry.fault = f"status {fault.status}"
                self._json(entry, fault.status, None, f"injected HTTP {fault.status}", head)
                return
        if path == f"{API}/repos/internalAccelerationInfo":
            self._json(entry, 200, {"InternalRegionQueryAddress": ""}, "success", head)
            return
        match = _MODEL_RE.fullmatch(path)
        if match is None:
            self._json(entry, 404, None, f"no such API: {path}", head)
            return
        repo = state.repos.get(f"{match.group(1)}/{match.group(2)}")
        if repo is None:
            self._json(entry, 404, None, "模型不存在", head)  # the client translates it
            return
        rest = match.group(3) or ""
        revision = query.get("Revision") or DEFAULT_BRANCH
        if rest in ("/repo/files", "/repo") and revision not in repo.revisions:
            self._json(entry, 404, None, f"revision {revision} does not exist", head)
            return
        if rest == "":
            self._json(entry, 200, self._model_info(repo), "success", head)
        elif rest == "/revisions":
            self._json(entry, 200, self._revisions(repo), "success", head)
        elif rest == "/repo/files":
            self._json(entry, 200, {"Files": self._listing(repo)}, "success", head)
        elif rest == "/repo" and query.get("FilePath") in repo.files:
            self._send_file(entry, repo.files[query["FilePath"]], faults, head)
        elif rest == "/repo":
            self._json(entry, 404, None, f"file {query.get('FilePath')} does not exist", head)
        else:
            self._json(entry, 404, None, f"no such API: {path}", head)

    # -- answers -----------------------------------------------------------------
    @staticmethod
    def _model_info(repo: HubRepo) -> dict[str, object]:
        owner, name = repo.model_id.split("/", 1)
        return {
            "Id": repo.model_id,
            "Name": name,
            "Path": owner,
            "ChineseName": name,
            "Revision": DEFAULT_BRANCH,
            "Tasks": [{"Name": "visual-entailment"}],
        }

    @staticmethod
    def _revisions(repo: HubRepo) -> dict[str, object]:
        tags = sorted(repo.revisions - {DEFAULT_BRANCH, repo.commit})
        return {
            "RevisionMap": {
                "Branches": [{"Revision": DEFAULT_BRANCH}],
                "Tags": [{"Revision": t} for t in tags],
            }
        }

    @staticmethod
    def _listing(repo: HubRepo) -> list[dict[str, object]]:
        entries: list[dict[str, object]] = [
            {"Name": d.rsplit("/", 1)[-1], "Path": d, "Type": "tree", "Size": 0, "Mode": "40000"}
            for d in repo.subdirs
        ]
        for f in repo.files.values():
            entries.append(
                {
                    "Name": f.path.rsplit("/", 1)[-1],
                    "Path": f.path,
                    "Type": "blob",
                    "Size": f.size,
                    "Sha256": f.sha256,
                    "IsLFS": f.size > CHUNK,
                    "Mode": "33188",
                    "Revision": repo.commit,
                    "CommitMessage": "emulated",
                    "CommittedDate": 1700000000,
                    "CommitterName": "hub-emulator",
                }
            )
        return entries

    def _json(
        self, entry: LoggedRequest, status: int, data: object, message: str, head: bool
    ) -> None:
        ok = status < 400
        body = json.dumps(
            {
                "Code": 200 if ok else (NOT_FOUND_CODE if status == 404 else status),
                "Data": data,
                "Message": message,
                "RequestId": uuid.uuid4().hex,
                "Success": ok,
            }
        ).encode()
        entry.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_file(
        self, entry: LoggedRequest, hub_file: HubFile, faults: list[_Fault], head: bool
    ) -> None:
        size = hub_file.size
        start, end = 0, size - 1
        status = 200
        if entry.range is not None:
            match = _RANGE_RE.fullmatch(entry.range.strip())
            if match and match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                status = 206
            elif match and match.group(2):  # suffix range: the last N bytes
                start, status = max(0, size - int(match.group(2))), 206
            if status == 206 and start >= size:
                entry.status = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        corrupt = any(f.kind == "corrupt" for f in faults)
        cut = next((f.after_bytes for f in faults if f.kind == "cut"), None)
        entry.fault = ", ".join(f.kind for f in faults if f.kind in ("corrupt", "cut")) or None
        length = end - start + 1
        entry.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{hub_file.sha256}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head:
            return
        budget = length if cut is None else min(length, cut)
        with hub_file.source.open("rb") as fh:
            fh.seek(start)
            offset = start
            while budget > 0 and not self.server.state.stopping.is_set():
                block = bytearray(fh.read(min(CHUNK, budget)))
                if not block:
                    break
                if corrupt:
                    first = -offset % CORRUPT_STRIDE
                    for i in range(first, len(block), CORRUPT_STRIDE):
                        block[i] ^= 0xFF
                entry.body_bytes += len(block)
                self.wfile.write(block)
                offset += len(block)
                budget -= len(block)
        if cut is not None and cut < length:
            self.wfile.flush()
            self.close_connection = True
            # A hard cut: what a killed proxy or a dropped link looks like.
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


class HubEmulator:
    """A ModelScope hub on a free loopback port, serving `repos` (model id -> folder).

    Use as a context manager; `endpoint` is what MODELSCOPE_ENDPOINT should be set to.
    `log` holds every request; `corrupt`, `cut`, `fail` and `delay` inject faults.
    """

    def __init__(self, repos: Mapping[str, Path], tags: tuple[str, ...] = ()) -> None:
        self._repo_folders = dict(repos)
        self._tags = tags
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._state = _State(
            {mid: HubRepo.from_folder(mid, Path(p), tags) for mid, p in self._repo_folders.items()}
        )

    # -- life cycle ----------------------------------------------------------------
    def start(self) -> HubEmulator:
        """Listen on 127.0.0.1 (a port the OS picks) and serve from a daemon thread."""
        if self._server is not None:
            raise RuntimeError("the hub emulator is already running")
        self._state.stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.state = self._state
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="hub-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and wake any delayed handler; bounded by `timeout`."""
        server, self._server = self._server, None
        if server is None:
            return
        self._state.stopping.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> HubEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the hub emulator is not running")
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        """The base URL, the way MODELSCOPE_ENDPOINT takes it."""
        return f"http://127.0.0.1:{self.port}"

    # -- what the repositories hold -------------------------------------------------
    def repo(self, model_id: str) -> HubRepo:
        return self._state.repos[model_id]

    # -- the request log -------------------------------------------------------------
    @property
    def log(self) -> list[LoggedRequest]:
        """A snapshot of every request so far, in arrival order."""
        with self._state.lock:
            return list(self._state.log)

    def clear_log(self) -> None:
        with self._state.lock:
            self._state.log.clear()

    def downloads(self, file_path: str | None = None) -> list[LoggedRequest]:
        """The file-body requests (GET .../repo?FilePath=...), of one file if given."""
        return [
            r
            for r in self.log
            if r.method == "GET"
            and r.file_path is not None
            and (file_path is None or r.file_path == file_path)
        ]

    def requests_to(self, suffix: str) -> list[LoggedRequest]:
        """The requests whose path ends with `suffix`."""
        return [r for r in self.log if r.path.endswith(suffix)]

    # -- faults ------------------------------------------------------------------------
    def _add(self, fault: _Fault) -> None:
        with self._state.lock:
            self._state.faults.append(fault)

    def clear_faults(self) -> None:
        with self._state.lock:
            self._state.faults.clear()

    def corrupt(self, file_path: str, times: int | None = 1) -> None:
        """Serve `file_path` with flipped bytes (same size) for its next `times` downloads
        (None: always)."""
        self._add(_Fault("corrupt", _file_pattern(file_path), times))

    def cut(self, file_path: str, after_bytes: int, times: int | None = 1) -> None:
        """Close the connection after `after_bytes` bytes of `file_path`'s body (headers
        announce the whole length), for its next `times` downloads (None: always)."""
        if after_bytes < 0:
            raise ValueError("after_bytes must be >= 0")
        self._add(_Fault("cut", _file_pattern(file_path), times, after_bytes=after_bytes))

    def fail(self, status: int, path_regex: str = "", times: int | None = None) -> None:
        """Answer `status` (with a hub-style JSON body) to requests whose path and query
        match `path_regex` (empty: all), for the next `times` of them (None: always)."""
        self._add(_Fault("status", re.compile(path_regex), times, status=status))

    def delay(self, seconds: float, path_regex: str = "", times: int | None = None) -> None:
        """Hold back the answer to matching requests by `seconds` (stopping ends it)."""
        self._add(_Fault("delay", re.compile(path_regex), times, seconds=seconds))


def _file_pattern(file_path: str) -> re.Pattern[str]:
    """Matches the download request of exactly `file_path` (whatever the query order)."""
    return re.compile(rf"/repo\?(.*&)?FilePath={re.escape(quote_plus(file_path))}(&|$)")
