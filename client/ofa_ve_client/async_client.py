"""AsyncVisualEntailmentClient: the asyncio gRPC client (the logic is in base.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import tritonclient.grpc.aio as tgrpc_aio

from .base import DEFAULT, BaseVisualEntailmentClient, Finished, Steps, await_step, resume
from .batching import Progress, TaskOutcome
from .channel import client_kwargs
from .classification import DEFAULT_HYPOTHESIS_TEMPLATE, Classification
from .contract import DEFAULT_URL
from .images import ImageInput
from .items import PreparedItem
from .prediction import Prediction

T = TypeVar("T")


class _AsyncioRunner:
    """Batch requests in flight as asyncio tasks (base.TaskRunner)."""

    def __init__(self, client: AsyncVisualEntailmentClient) -> None:
        self._drive = client._drive

    def start(self, steps: Steps[TaskOutcome]) -> asyncio.Task[TaskOutcome]:
        return asyncio.create_task(self._drive(steps))

    async def wait_first(self, running: set[asyncio.Task[TaskOutcome]]) -> Any:
        return await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)

    async def close(self, running: set[asyncio.Task[TaskOutcome]], failed: bool) -> None:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)


class AsyncVisualEntailmentClient(BaseVisualEntailmentClient):
    """The asyncio twin of VisualEntailmentClient: same arguments, awaitable methods.

    gRPC channels are made on first use inside the running event loop, so the
    client may be constructed outside it; use it from one event loop only.
    Blocking work (reading files, fetching URLs, PNG-encoding PIL images)
    runs in worker threads, never on the loop.
    """

    def __init__(self, url: str | Sequence[str] = DEFAULT_URL, **options: Any) -> None:
        super().__init__(url, **options)
        self._kwargs = client_kwargs(self.config)
        self._clients: list[tgrpc_aio.InferenceServerClient] | None = None
        self._config_lock: asyncio.Lock | None = None

    # -- how this client waits (base.BaseVisualEntailmentClient) --------------

    async def _drive(self, steps: Steps[T]) -> T:
        """Run an operation's steps, awaiting each."""
        value, error = None, None
        while not isinstance(step := resume(steps, value, error), Finished):
            value, error = await await_step(step)
        return step.value

    def _channels(self) -> list[tgrpc_aio.InferenceServerClient]:
        self._check_open()
        if self._clients is None:
            self._clients = [
                tgrpc_aio.InferenceServerClient(u, **self._kwargs) for u in self.config.urls
            ]
        return self._clients

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def _offload(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    def _task_runner(self, workers: int) -> _AsyncioRunner:
        return _AsyncioRunner(self)

    async def _infer(
        self, items: Sequence[PreparedItem], timeout: float | None
    ) -> list[Prediction]:
        return await self._drive(self._infer_steps(items, timeout))

    # -- lifecycle -------------------------------------------------------------

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

    # -- inference (see VisualEntailmentClient for the documentation) -----------

    async def predict(
        self,
        image: ImageInput,
        hypothesis: str,
        premise: str | None = None,
        *,
        timeout: float | None = DEFAULT,
    ) -> Prediction:
        """See VisualEntailmentClient.predict."""
        return await self._drive(self._predict_steps(image, hypothesis, premise, timeout))

    async def predict_batch(
        self,
        items: Iterable[Any],
        *,
        return_exceptions: bool = False,
        timeout: float | None = DEFAULT,
        batch_size: int | None = None,
        concurrency: int | None = None,
        progress: Progress | None = None,
    ) -> list[Any]:
        """See VisualEntailmentClient.predict_batch."""
        steps = self._batch_steps(
            items, return_exceptions, timeout, batch_size, concurrency, progress
        )
        return await self._drive(steps)

    async def predict_many(
        self,
        image: ImageInput,
        hypotheses: Iterable[str],
        premise: str | None = None,
        *,
        return_exceptions: bool = False,
        timeout: float | None = DEFAULT,
        batch_size: int | None = None,
        concurrency: int | None = None,
        progress: Progress | None = None,
    ) -> list[Any]:
        """See VisualEntailmentClient.predict_many."""
        options = (return_exceptions, timeout, batch_size, concurrency, progress)
        return await self._drive(self._many_steps(image, hypotheses, premise, *options))

    async def classify(
        self,
        image: ImageInput,
        candidate_labels: Iterable[str] | str,
        hypothesis_template: str = DEFAULT_HYPOTHESIS_TEMPLATE,
        multi_label: bool = False,
        *,
        premise: str | None = None,
        timeout: float | None = DEFAULT,
    ) -> Classification:
        """See VisualEntailmentClient.classify."""
        return await self._drive(
            self._classify_steps(
                image, candidate_labels, hypothesis_template, multi_label, premise, timeout
            )
        )

    # -- server and model state ------------------------------------------------

    async def max_batch_size(self) -> int:
        """The model's max_batch_size from its config, read from the server once."""
        if self._config_lock is None:
            self._config_lock = asyncio.Lock()
        async with self._config_lock:
            return await self._drive(self._max_batch_size_steps())

    async def is_server_ready(self, *, timeout: float | None = DEFAULT) -> bool:
        """See VisualEntailmentClient.is_server_ready."""
        return await self._drive(self._ready_steps(timeout, "ready"))

    async def is_model_ready(self, *, timeout: float | None = DEFAULT) -> bool:
        """See VisualEntailmentClient.is_model_ready."""
        return await self._drive(self._ready_steps(timeout, "model_ready"))

    async def health(
        self, *, timeout: float | None = DEFAULT, model: bool = True
    ) -> list[dict[str, Any]]:
        """See VisualEntailmentClient.health."""
        return await self._drive(self._health_steps(timeout, model))

    async def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.25) -> None:
        """Wait until the model is ready on some server; DeadlineExceededError after `timeout`."""
        await self._drive(self._wait_steps(timeout, interval))

    async def server_metadata(self, *, timeout: float | None = DEFAULT) -> dict[str, Any]:
        """See VisualEntailmentClient.server_metadata."""
        return await self._drive(self._server_metadata_steps(timeout))

    async def model_metadata(self, *, timeout: float | None = DEFAULT) -> dict[str, Any]:
        """See VisualEntailmentClient.model_metadata."""
        return await self._drive(self._model_steps("get_model_metadata", timeout))

    async def model_config(self, *, timeout: float | None = DEFAULT) -> dict[str, Any]:
        """See VisualEntailmentClient.model_config."""
        return await self._drive(self._model_config_steps(timeout))
