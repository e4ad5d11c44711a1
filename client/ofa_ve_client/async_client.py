"""AsyncVisualEntailmentClient: the asyncio gRPC client (tritonclient.grpc.aio)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import tritonclient.grpc.aio as tgrpc_aio
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
from .items import Item, needs_thread, prepare
from .prediction import Prediction
from .retry import CallBudget
from .url_fetch import UrlFetcher

T = TypeVar("T")
_DEFAULT: Any = object()


class AsyncVisualEntailmentClient:
    """The asyncio twin of VisualEntailmentClient: same arguments, awaitable methods.

    gRPC channels are made on first use inside the running event loop, so the
    client may be constructed outside it; use it from one event loop only.
    Blocking work (reading files, fetching URLs, PNG-encoding PIL images)
    runs in worker threads, never on the loop.
    """

    def __init__(self, url: str | Sequence[str] = DEFAULT_URL, **options: Any) -> None:
        self.config: ClientConfig = build_config(url, **options)
        self._kwargs = client_kwargs(self.config)
        self._clients: list[tgrpc_aio.InferenceServerClient] | None = None
        self._rotation = itertools.count()
        self._fetcher = UrlFetcher(self.config.image_fetch)
        self._max_batch_size: int | None = None
        self._config_lock: asyncio.Lock | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------

    def _channels(self) -> list[tgrpc_aio.InferenceServerClient]:
        if self._closed:
            raise ClientClosedError("client is closed")
        if self._clients is None:
            self._clients = [
                tgrpc_aio.InferenceServerClient(u, **self._kwargs) for u in self.config.urls
            ]
        return self._clients

    async def close(self) -> None:
        """Close the channels and the URL-fetch pool; later calls raise ClientClosedError."""
        self._closed = True
        clients, self._clients = self._clients, None
        for client in clients or []:
            await client.close()
        self._fetcher.close()

    async def __aenter__(self) -> AsyncVisualEntailmentClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the retry loop --------------------------------------------------

    async def _call(
        self,
        fn: Callable[[tgrpc_aio.InferenceServerClient, float | None], Awaitable[T]],
        timeout: float | None,
    ) -> T:
        clients = self._channels()
        budget = CallBudget(self.config.retry, timeout, len(clients))
        start = next(self._rotation)
        while True:
            clients = self._channels()
            client = clients[(start + budget.attempt) % len(clients)]
            try:
                return await fn(client, budget.remaining())
            except InferenceServerException as exc:
                error = from_triton(exc)
            await asyncio.sleep(budget.retry_delay(error))

    def _timeout(self, timeout: float | None) -> float | None:
        return self.config.timeout if timeout is _DEFAULT else timeout

    def _headers(self) -> dict[str, str] | None:
        return dict(self.config.headers) or None

    # -- inference -------------------------------------------------------

    async def _infer(self, items: Sequence[Any], timeout: float | None) -> list[Prediction]:
        inputs = codec.build_inputs(items)
        outputs = codec.requested_outputs()
        cfg = self.config
        result = await self._call(
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

    async def predict(
        self,
        image: ImageInput,
        hypothesis: str,
        premise: str | None = None,
        *,
        timeout: float | None = _DEFAULT,
    ) -> Prediction:
        """See VisualEntailmentClient.predict."""
        item = Item(image, hypothesis, premise)
        if needs_thread(item):
            prepared = await asyncio.to_thread(prepare, item, self._fetcher)
        else:
            prepared = prepare(item, self._fetcher)
        return (await self._infer([prepared], self._timeout(timeout)))[0]

    async def predict_batch(
        self,
        items: Iterable[Any],
        *,
        return_exceptions: bool = False,
        timeout: float | None = _DEFAULT,
        batch_size: int | None = None,
        concurrency: int | None = None,
        progress: Progress | None = None,
    ) -> list[Any]:
        """See VisualEntailmentClient.predict_batch."""
        items = list(items)
        state = BatchState(len(items), return_exceptions, progress)
        if not items:
            return []
        # Never more per request than the model takes (the server would reject it whole).
        size = min(batch_size or self.config.batch_size or 2**31, await self.max_batch_size())
        limit = concurrency or self.config.concurrency
        deadline = self._timeout(timeout)
        pending = plan(items, size)
        running: set[asyncio.Task[TaskOutcome]] = set()
        try:
            while pending or running:
                while pending and len(running) < limit:
                    running.add(asyncio.create_task(self._run_task(pending.pop(0), deadline)))
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    pending.extend(state.finish(task.result()))
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        return state.final()

    async def predict_many(
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
        """See VisualEntailmentClient.predict_many."""
        texts = check_hypotheses(hypotheses)
        check_premise(premise)
        if not texts:
            return []
        if needs_thread(Item(image, "")):
            data = await asyncio.to_thread(load_image, image, self._fetcher)
        else:
            data = load_image(image, self._fetcher)
        return await self.predict_batch(
            many_items(data, texts, premise),
            return_exceptions=return_exceptions,
            timeout=timeout,
            batch_size=batch_size or await self.max_batch_size(),
            concurrency=concurrency,
            progress=progress,
        )

    async def classify(
        self,
        image: ImageInput,
        candidate_labels: Iterable[str],
        hypothesis_template: str = DEFAULT_HYPOTHESIS_TEMPLATE,
        multi_label: bool = False,
        *,
        premise: str | None = None,
        timeout: float | None = _DEFAULT,
    ) -> Classification:
        """See VisualEntailmentClient.classify."""
        query = ZeroShotQuery.build(candidate_labels, hypothesis_template, multi_label, premise)
        predictions = await self.predict_many(image, query.hypotheses, premise, timeout=timeout)
        return query.result(predictions)

    async def _run_task(self, task: Task, timeout: float | None) -> TaskOutcome:
        if not task.prepared and any(needs_thread(item) for _, item in task.entries):
            outcome = await asyncio.to_thread(prepare_task, task, self._fetcher)
        else:
            outcome = prepare_task(task, self._fetcher)
        if outcome.ready:
            try:
                outcome.predictions = await self._infer([p for _, p in outcome.ready], timeout)
            except VisualEntailmentError as exc:
                outcome.error = exc
        return outcome

    # -- server and model state ------------------------------------------

    async def max_batch_size(self) -> int:
        """The model's max_batch_size from its config, read from the server once."""
        if self._config_lock is None:
            self._config_lock = asyncio.Lock()
        async with self._config_lock:
            if self._max_batch_size is None:
                config = await self.model_config()
                size = int(config.get("max_batch_size", 0))
                if size < 1:
                    raise ProtocolError(
                        f"model {self.config.model_name!r} has max_batch_size {size}; "
                        "the interface needs a batching model"
                    )
                self._max_batch_size = size
            return self._max_batch_size

    async def is_server_ready(self, *, timeout: float | None = _DEFAULT) -> bool:
        """True if at least one of the servers is ready (no retries: a health probe)."""
        return any(h["ready"] for h in await self.health(timeout=timeout, model=False))

    async def is_model_ready(self, *, timeout: float | None = _DEFAULT) -> bool:
        """True if at least one of the servers has the model ready."""
        return any(h["model_ready"] for h in await self.health(timeout=timeout))

    async def health(
        self, *, timeout: float | None = _DEFAULT, model: bool = True
    ) -> list[dict[str, Any]]:
        """Per URL: live, ready, model_ready (when `model`), and the error if it could not tell."""
        deadline = self._timeout(timeout)
        report = []
        for url, client in zip(self.config.urls, self._channels(), strict=True):
            entry: dict[str, Any] = {"url": url, "live": False, "ready": False}
            if model:
                entry["model_ready"] = False
            try:
                kw = {"headers": self._headers(), "client_timeout": deadline}
                entry["live"] = await client.is_server_live(**kw)
                entry["ready"] = await client.is_server_ready(**kw)
                if model:
                    entry["model_ready"] = await client.is_model_ready(
                        self.config.model_name, self.config.model_version, **kw
                    )
            except InferenceServerException as exc:
                entry["error"] = str(from_triton(exc))
            report.append(entry)
        return report

    async def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.25) -> None:
        """Wait until the model is ready on some server; DeadlineExceededError after `timeout`."""
        end = time.monotonic() + timeout
        while True:
            try:
                if await self.is_model_ready(timeout=min(5.0, max(0.1, end - time.monotonic()))):
                    return
            except VisualEntailmentError:
                pass
            if time.monotonic() >= end:
                raise DeadlineExceededError(f"model not ready within {timeout:g}s")
            await asyncio.sleep(interval)

    async def server_metadata(self, *, timeout: float | None = _DEFAULT) -> dict[str, Any]:
        """Server name, version and extensions (from whichever server answers)."""
        return await self._call(
            lambda c, t: c.get_server_metadata(
                headers=self._headers(), as_json=True, client_timeout=t
            ),
            self._timeout(timeout),
        )

    async def model_metadata(self, *, timeout: float | None = _DEFAULT) -> dict[str, Any]:
        """The model's inputs and outputs as the server describes them."""
        cfg = self.config
        return await self._call(
            lambda c, t: c.get_model_metadata(
                cfg.model_name,
                cfg.model_version,
                headers=self._headers(),
                as_json=True,
                client_timeout=t,
            ),
            self._timeout(timeout),
        )

    async def model_config(self, *, timeout: float | None = _DEFAULT) -> dict[str, Any]:
        """The model's Triton config (max_batch_size, dynamic batching, ...)."""
        cfg = self.config
        reply = await self._call(
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
        return f"AsyncVisualEntailmentClient(url={list(self.config.urls)!r})"
