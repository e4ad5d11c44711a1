"""Fetching http(s) image URLs on the client, with timeouts and a size cap.

The server never sees a URL: it only ever gets image bytes, so it makes no
outbound requests and cannot be used to reach other hosts. urllib3 (already a
tritonclient dependency) gives separate connect and read timeouts and
streaming, so an oversized or slow body is cut off instead of read whole.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import ImageFetchError

if TYPE_CHECKING:
    import urllib3

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class ImageFetchOptions:
    """Limits for fetching one image URL; ``max_bytes`` also caps what is read from a
    path or a file object (images.py)."""

    connect_timeout: float = 5.0
    read_timeout: float = 10.0  # between two reads of the body
    total_timeout: float = 30.0  # the whole download
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 5
    headers: Mapping[str, str] = field(
        default_factory=lambda: {"User-Agent": "ofa-ve-client/0.1"}, hash=False
    )

    def __post_init__(self) -> None:
        if min(self.connect_timeout, self.read_timeout, self.total_timeout) <= 0:
            raise ValueError("fetch timeouts must be > 0")
        if self.max_bytes <= 0:
            raise ValueError("max_bytes must be > 0")


def is_url(text: str) -> bool:
    """True for http:// and https:// URLs (the only schemes we fetch)."""
    return text[:8].lower().startswith(("http://", "https://"))


def redact(url: str) -> str:
    """The URL without query, fragment or credentials: pre-signed URLs carry secrets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


class UrlFetcher:
    """Downloads image URLs; one connection pool, shared by threads, made on first use."""

    def __init__(self, options: ImageFetchOptions | None = None) -> None:
        self.options = options or ImageFetchOptions()
        self._pool: urllib3.PoolManager | None = None
        self._lock = threading.Lock()

    def _manager(self) -> urllib3.PoolManager:
        with self._lock:
            if self._pool is None:
                import urllib3

                self._pool = urllib3.PoolManager(num_pools=16, maxsize=8)
            return self._pool

    def fetch(self, url: str) -> bytes:
        """The body of `url`; raises ImageFetchError naming the (redacted) URL and reason."""
        import urllib3

        opts = self.options
        shown = redact(url)
        if not is_url(url):
            raise ImageFetchError(f"IMAGE: only http(s) URLs are fetched, got {shown}", url=url)
        deadline = time.monotonic() + opts.total_timeout
        try:
            response = self._manager().request(
                "GET",
                url,
                headers=dict(opts.headers),
                preload_content=False,
                timeout=urllib3.Timeout(connect=opts.connect_timeout, read=opts.read_timeout),
                retries=urllib3.Retry(
                    total=None,
                    connect=0,
                    read=0,
                    status=0,
                    other=0,
                    redirect=opts.max_redirects,
                    raise_on_redirect=True,
                    raise_on_status=False,
                ),
            )
        except urllib3.exceptions.HTTPError as exc:
            raise ImageFetchError(f"IMAGE: cannot fetch {shown}: {_reason(exc)}", url=url) from exc
        complete = False
        try:
            if response.status != 200:
                raise ImageFetchError(
                    f"IMAGE: fetching {shown} returned HTTP {response.status}", url=url
                )
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > opts.max_bytes:
                raise ImageFetchError(
                    f"IMAGE: {shown} is {int(declared)} bytes, over the {opts.max_bytes}-byte cap",
                    url=url,
                )
            body = self._read_capped(response, shown, url, deadline)
            complete = True
            return body
        finally:
            if complete:
                response.release_conn()  # body fully read: the connection can be reused
            else:
                response.close()  # unread bytes left: never hand this connection back

    def _read_capped(self, response: Any, shown: str, url: str, deadline: float) -> bytes:
        import urllib3

        limit = self.options.max_bytes
        parts: list[bytes] = []
        size = 0
        try:
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise ImageFetchError(f"IMAGE: {shown} is over the {limit}-byte cap", url=url)
                if time.monotonic() > deadline:
                    raise ImageFetchError(
                        f"IMAGE: fetching {shown} took over {self.options.total_timeout:g}s",
                        url=url,
                    )
                parts.append(chunk)
        except urllib3.exceptions.HTTPError as exc:
            raise ImageFetchError(f"IMAGE: cannot fetch {shown}: {_reason(exc)}", url=url) from exc
        return b"".join(parts)

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.clear()
                self._pool = None


def _reason(exc: BaseException) -> str:
    """The innermost useful cause of a urllib3 error (MaxRetryError wraps the real one)."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        return _reason(reason)
    return str(exc) or type(exc).__name__
