"""VisualEntailmentClient: the blocking gRPC client."""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from . import codec
from .batching import BatchState, Progress, Task, TaskOutcome, plan, prepare_task
from .channel import client_kwargs, queue_timeout_us
from .classification import (
    DEFAULT_HYPOTHESIS_TEMPLATE,
    Classification,
    ZeroShotQuery,
    check_hypotheses,
    check_premise,
    many_items,
)
from .config import ClientConfig, build_config
from .contract import DEFAULT_URL
from .errors import (
    ClientClosedError,
    DeadlineExceededError,
    ProtocolError,
    VisualEntailmentError,
    from_triton,
)
from .images import ImageInput, load_image
from .items import Item, prepare
from .prediction import Prediction
from .retry import CallBudget
from .url_fetch import UrlFetcher

T = TypeVar("T")
_DEFAULT: Any = object()  # "use the client's default timeout"


class VisualEntailmentClient:
    """Blocking client for the `ofa_visual_entailment` Triton model over gRPC.

    Thread-safe: share one instance (one channel per URL) across threads.

    Args:
        url: "HOST:PORT" of the gRPC endpoint, or a list of them: requests
            go round-robin, and a retry moves to the next URL (failover).
        timeout: default deadline in seconds of one call, retries included
            (None: no deadline). Each method also takes `timeout=`.
        retry: RetryPolicy for UNAVAILABLE / RESOURCE_EXHAUSTED
            (RetryPolicy.disabled() for none).
        batch_size: items per request in predict_batch (default and upper
            bound: the model's max_batch_size, read from the server once).
        concurrency: requests in flight at once in predict_batch.
        headers: extra gRPC metadata on every call, e.g. {"authorization": "Bearer ..."}.
        compression_algorithm: "gzip", "deflate" or None.
        ssl, root_certificates, private_key, certificate_chain: TLS; the PEM
            values are file paths or bytes. tls_server_name overrides the
            name checked against the server certificate.
        keepalive: KeepAliveOptions. channel_args: extra gRPC channel arguments.
        image_fetch: ImageFetchOptions for http(s) image URLs.
    """

    def __init__(self, url: str | Sequence[str] = DEFAULT_URL, **options: Any) -> None:
        self.config: ClientConfig = build_config(url, **options)
        kwargs = client_kwargs(self.config)
        self._clients = [tgrpc.InferenceServerClient(u, **kwargs) for u in self.config.urls]
        self._rotation = itertools.count()
        self._fetcher = UrlFetcher(self.config.image_fetch)
        self._max_batch_size: int | None = None
        self._lock = threading.Lock()
        self._closed = False

    # -- lifecycle -------------------------------------------------------

    def close(self) -> None:
        """Close the channels and the URL-fetch pool; later calls raise ClientClosedError."""
        self._closed = True
        for client in self._clients:
            client.close()
        self._fetcher.close()

    def __enter__(self) -> VisualEntailmentClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the retry loop --------------------------------------------------

    def _call(
        self,
        fn: Callable[[tgrpc.InferenceServerClient, float | None], T],
        timeout: float | None,
    ) -> T:
        """Run fn(client, attempt_timeout) with retries, failover and one overall deadline."""
        budget = CallBudget(self.config.retry, timeout, len(self._clients))
        start = next(self._rotation)
        while True:
            if self._closed:
                raise ClientClosedError("client is closed")
            client = self._clients[(start + budget.attempt) % len(self._clients)]
            try:
                return fn(client, budget.remaining())
            except InferenceServerException as exc:
                error = from_triton(exc)
            except ValueError as exc:  # grpc: "Cannot invoke RPC on closed channel!"
                if self._closed:
                    raise ClientClosedError("client is closed") from exc
                raise
            time.sleep(budget.retry_delay(error))

    def _timeout(self, timeout: float | None) -> float | None:
        return self.config.timeout if timeout is _DEFAULT else timeout

    def _headers(self) -> dict[str, str] | None:
        return dict(self.config.headers) or None

    # -- inference -------------------------------------------------------

    def _infer(self, items: Sequence[Any], timeout: float | None) -> list[Prediction]:
        inputs = codec.build_inputs(items)
        outputs = codec.requested_outputs()
        cfg = self.config
        result = self._call(
            lambda client, deadline: client.infer(
                cfg.model_name,
                inputs,
                model_version=cfg.model_version,
                outputs=outputs,
                client_timeout=deadline,
                timeout=queue_timeout_us(deadline),
                headers=self._headers(),
                compression_algorithm=cfg.compression_algorithm,
            ),
            timeout,
        )
        return codec.parse_result(result, len(items))

    def predict(
        self,
        image: ImageInput,
        hypothesis: str,
        premise: str | None = None,
        *,
        timeout: float | None = _DEFAULT,
    ) -> Prediction:
        """Judge whether `image` (and `premise`, if given) entails `hypothesis`.

        Raises InvalidInputError (naming IMAGE, HYPOTHESIS or PREMISE) for bad
        input, and the other VisualEntailmentError subclasses for server trouble.
        """
        prepared = prepare(Item(image, hypothesis, premise), self._fetcher)
        return self._infer([prepared], self._timeout(timeout))[0]

    def predict_batch(
        self,
        items: Iterable[Any],
        *,
        return_exceptions: bool = False,
        timeout: float | None = _DEFAULT,
        batch_size: int | None = None,
        concurrency: int | None = None,
        progress: Progress | None = None,
    ) -> list[Any]:
        """Predictions for many items, in input order.

        Items are Item(image, hypothesis, premise), tuples or dicts. They are
        sent `batch_size` per request with `concurrency` requests in flight;
        `timeout` applies to each request. With return_exceptions=True a
        failed item yields its VisualEntailmentError (with `item_index`) in
        its slot and the others still get answers; otherwise the first error
        is raised and outstanding requests are abandoned. `progress(n)` is
        called as n more items finish.
        """
        items = list(items)
        state = BatchState(len(items), return_exceptions, progress)
        if not items:
            return []
        # Never more per request than the model takes (the server would reject it whole).
        size = min(batch_size or self.config.batch_size or 2**31, self.max_batch_size())
        limit = concurrency or self.config.concurrency
        deadline = self._timeout(timeout)
        pending = plan(items, size)
        pool = cf.ThreadPoolExecutor(min(limit, len(pending)), thread_name_prefix="ofa-ve")
        running: set[cf.Future[TaskOutcome]] = set()
        failed = True
        try:
            while pending or running:
                while pending and len(running) < limit:
                    running.add(pool.submit(self._run_task, pending.pop(0), deadline))
                done, running = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    pending.extend(state.finish(future.result()))
            failed = False
        finally:
            # On an error, don't wait for requests still in flight: their results are moot.
            pool.shutdown(wait=not failed, cancel_futures=True)
        return state.final()

    def predict_many(
        self,
        image: ImageInput,
        hypotheses: Iterable[str],
        premise: str | None = None,
        *,
        return_exceptions: bool = False,
        timeout: float | None = _DEFAULT,
        batch_size: int | None = None,
        concurrency: int | None = None,
        progress: Progress | None = None,
    ) -> list[Any]:
        """One prediction per hypothesis, in order, for one image (and optional premise).

        The image is read, fetched or encoded once; the interface takes IMAGE
        per item, so each item carries those same bytes, and the items go in
        as few requests as the model's max_batch_size allows (`batch_size`
        lowers that). Errors behave as in predict_batch: a bad hypothesis
        fails its own slot (return_exceptions=True) or raises with its
        `item_index`; an unreadable image or a bad premise raises at once.
        """
        texts = check_hypotheses(hypotheses)
        check_premise(premise)
        if not texts:
            return []
        data = load_image(image, self._fetcher)
        return self.predict_batch(
            many_items(data, texts, premise),
            return_exceptions=return_exceptions,
            timeout=timeout,
            batch_size=batch_size or self.max_batch_size(),
            concurrency=concurrency,
            progress=progress,
        )

    def classify(
        self,
        image: ImageInput,
        candidate_labels: Iterable[str],
        hypothesis_template: str = DEFAULT_HYPOTHESIS_TEMPLATE,
        multi_label: bool = False,
        *,
        premise: str | None = None,
        timeout: float | None = _DEFAULT,
    ) -> Classification:
        """Zero-shot classification of `image`, in the manner of HF's zero-shot pipeline.

        Each label becomes `hypothesis_template.format(label)`; all go in one
        predict_many. Single-label: scores are a softmax over the candidates
        of log P(entailment) (they sum to 1). multi_label=True: each label's
        own P(entailment). Labels come back ranked; see
        ofa_ve_client.classification for the relation to HF's scores. Bad
        arguments raise InvalidInputError before anything is sent; any
        failed label raises (a ranking with a hole in it would mislead).
        """
        query = ZeroShotQuery.build(candidate_labels, hypothesis_template, multi_label, premise)
        predictions = self.predict_many(image, query.hypotheses, premise, timeout=timeout)
        return query.result(predictions)

    def _run_task(self, task: Task, timeout: float | None) -> TaskOutcome:
        outcome = prepare_task(task, self._fetcher)
        if outcome.ready:
            try:
                outcome.predictions = self._infer([p for _, p in outcome.ready], timeout)
            except VisualEntailmentError as exc:
                outcome.error = exc
        return outcome

    # -- server and model state ------------------------------------------

    def max_batch_size(self) -> int:
        """The model's max_batch_size from its config, read from the server once."""
        with self._lock:
            if self._max_batch_size is None:
                config = self.model_config()
                size = int(config.get("max_batch_size", 0))
                if size < 1:
                    raise ProtocolError(
                        f"model {self.config.model_name!r} has max_batch_size {size}; "
                        "the interface needs a batching model"
                    )
                self._max_batch_size = size
            return self._max_batch_size

    def is_server_ready(self, *, timeout: float | None = _DEFAULT) -> bool:
        """True if at least one of the servers is ready (no retries: a health probe)."""
        return any(h["ready"] for h in self.health(timeout=timeout, model=False))

    def is_model_ready(self, *, timeout: float | None = _DEFAULT) -> bool:
        """True if at least one of the servers has the model ready."""
        return any(h["model_ready"] for h in self.health(timeout=timeout))

    def health(
        self, *, timeout: float | None = _DEFAULT, model: bool = True
    ) -> list[dict[str, Any]]:
        """Per URL: live, ready, model_ready (when `model`), and the error if it could not tell."""
        deadline = self._timeout(timeout)
        report = []
        for url, client in zip(self.config.urls, self._clients, strict=True):
            entry: dict[str, Any] = {"url": url, "live": False, "ready": False}
            if model:
                entry["model_ready"] = False
            try:
                kw = {"headers": self._headers(), "client_timeout": deadline}
                entry["live"] = client.is_server_live(**kw)
                entry["ready"] = client.is_server_ready(**kw)
                if model:
                    entry["model_ready"] = client.is_model_ready(
                        self.config.model_name, self.config.model_version, **kw
                    )
            except InferenceServerException as exc:
                entry["error"] = str(from_triton(exc))
            report.append(entry)
        return report

    def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.25) -> None:
        """Block until the model is ready on some server; DeadlineExceededError after `timeout`."""
        end = time.monotonic() + timeout
        while True:
            try:
                if self.is_model_ready(timeout=min(5.0, max(0.1, end - time.monotonic()))):
                    return
            except VisualEntailmentError:
                pass
            if time.monotonic() >= end:
                raise DeadlineExceededError(f"model not ready within {timeout:g}s")
            time.sleep(interval)

    def server_metadata(self, *, timeout: float | None = _DEFAULT) -> dict[str, Any]:
        """Server name, version and extensions (from whichever server answers)."""
        return self._call(
            lambda c, t: c.get_server_metadata(
                headers=self._headers(), as_json=True, client_timeout=t
            ),
            self._timeout(timeout),
        )

    def model_metadata(self, *, timeout: float | None = _DEFAULT) -> dict[str, Any]:
        """The model's inputs and outputs as the server describes them."""
        cfg = self.config
        return self._call(
            lambda c, t: c.get_model_metadata(
                cfg.model_name,
                cfg.model_version,
                headers=self._headers(),
                as_json=True,
                client_timeout=t,
            ),
            self._timeout(timeout),
        )

    def model_config(self, *, timeout: float | None = _DEFAULT) -> dict[str, Any]:
        """The model's Triton config (max_batch_size, dynamic batching, ...)."""
        cfg = self.config
        reply = self._call(
            lambda c, t: c.get_model_config(
                cfg.model_name,
                cfg.model_version,
                headers=self._headers(),
                as_json=True,
                client_timeout=t,
            ),
            self._timeout(timeout),
        )
        return dict(reply.get("config", reply))

    def __repr__(self) -> str:
        return f"VisualEntailmentClient(url={list(self.config.urls)!r})"
