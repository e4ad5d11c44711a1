"""The request logic of both clients, written once; the clients only say how to wait.

Every operation (a call with retries and failover, predict, predict_batch,
predict_many, classify, health, ...) is a generator of *steps* here. A step is
a call without arguments that does I/O: a gRPC call, a backoff sleep, reading
a file, starting or awaiting batch work. The operation yields the step and
gets its result (or its exception) back. VisualEntailmentClient runs each
step as a plain call; AsyncVisualEntailmentClient awaits it. So a client
class holds no request logic, only its public signatures, its channels and
how it waits (threads or the event loop): PyTriton's shape, one base under
thin sync and asyncio clients.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

from tritonclient.utils import InferenceServerException

from . import codec
from .batching import BatchState, Progress, Task, TaskOutcome, plan, prepare_task
from .channel import queue_timeout_us
from .classification import (
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
from .items import Item, PreparedItem, needs_thread, prepare
from .prediction import Prediction
from .retry import CallBudget
from .url_fetch import UrlFetcher

T = TypeVar("T")
Step = Callable[[], Any]
"""I/O for the client to run: its result, or an awaitable of it in the asyncio client."""
Steps = Generator[Step, Any, T]
"""An operation: yields steps, receives their results, returns its answer."""
Request = Callable[[Any, "float | None"], Any]
"""One gRPC call on a tritonclient client with a deadline: (client, seconds_left) -> reply."""

DEFAULT: Any = object()
"""The `timeout` default of every method: the client's own `timeout`."""


@dataclass(frozen=True)
class Finished:
    """What `resume` returns when the operation has returned `value`."""

    value: Any


def resume(steps: Steps[Any], value: Any, error: BaseException | None) -> Step | Finished:
    """Give the last step's result (or raise its error) in the operation; its next step."""
    try:
        return steps.throw(error) if error is not None else steps.send(value)
    except StopIteration as stop:
        return Finished(stop.value)


def run_step(step: Step) -> tuple[Any, BaseException | None]:
    """Run a step as a plain call: (result, None) or (None, the exception it raised)."""
    try:
        return step(), None
    except BaseException as exc:  # handed to the operation, which re-raises what it does not take
        return None, exc


async def await_step(step: Step) -> tuple[Any, BaseException | None]:
    """Await a step (the asyncio client's steps return awaitables); as `run_step`."""
    try:
        return await step(), None
    except BaseException as exc:  # CancelledError too: the operation cleans up, then re-raises
        return None, exc


class TaskRunner(Protocol):
    """How a client keeps several batch requests in flight (threads or asyncio tasks).

    `start` begins driving an operation and returns a handle with `result()`;
    `wait_first` is a step giving (done, still running); `close` is a step that
    abandons what still runs after an error (`failed`) or waits for it.
    """

    def start(self, steps: Steps[TaskOutcome]) -> Any: ...

    def wait_first(self, running: set[Any]) -> Any: ...

    def close(self, running: set[Any], failed: bool) -> Any: ...


class BaseVisualEntailmentClient:
    """Configuration, state and every operation of a client; see VisualEntailmentClient.

    A subclass provides `_channels`, `_sleep`, `_offload`, `_infer`,
    `max_batch_size`, `_task_runner` and `_drive` (how steps are run).
    """

    def __init__(self, url: str | Sequence[str] = DEFAULT_URL, **options: Any) -> None:
        self.config: ClientConfig = build_config(url, **options)
        self._rotation = itertools.count()
        self._fetcher = UrlFetcher(self.config.image_fetch)
        self._max_batch_size: int | None = None
        self._closed = False

    # -- what a client provides --------------------------------------------

    def _channels(self) -> Sequence[Any]:
        """The tritonclient clients, one per URL; ClientClosedError once closed."""
        raise NotImplementedError

    def _sleep(self, seconds: float) -> Any:
        raise NotImplementedError

    def _offload(self, fn: Callable[..., T], *args: Any) -> Any:
        """Run blocking `fn(*args)` where it does not hold up the client's other work."""
        raise NotImplementedError

    def _infer(self, items: Sequence[PreparedItem], timeout: float | None) -> Any:
        """One inference request for `items` (a step: `_infer_steps` driven)."""
        raise NotImplementedError

    def max_batch_size(self) -> Any:
        raise NotImplementedError

    def _task_runner(self, workers: int) -> TaskRunner:
        raise NotImplementedError

    # -- small shared helpers ------------------------------------------------

    def _timeout(self, timeout: float | None) -> float | None:
        return self.config.timeout if timeout is DEFAULT else timeout

    def _headers(self) -> dict[str, str] | None:
        return dict(self.config.headers) or None

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("client is closed")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={list(self.config.urls)!r})"

    # -- the retry loop ------------------------------------------------------

    def _call_steps(self, request: Request, timeout: float | None) -> Steps[Any]:
        """`request(client, seconds_left)` with retries, failover and one overall deadline."""
        budget = CallBudget(self.config.retry, timeout, len(self.config.urls))
        start = next(self._rotation)
        while True:
            clients = self._channels()
            client = clients[(start + budget.attempt) % len(clients)]
            seconds_left = budget.remaining()
            try:
                return (yield partial(request, client, seconds_left))
            except InferenceServerException as exc:
                error = from_triton(exc)
            except ValueError as exc:  # grpc: "Cannot invoke RPC on closed channel!"
                if self._closed:
                    raise ClientClosedError("client is closed") from exc
                raise
            yield partial(self._sleep, budget.retry_delay(error))

    # -- inference -----------------------------------------------------------

    def _infer_steps(self, items: Sequence[PreparedItem], timeout: float | None) -> Steps[Any]:
        inputs = codec.build_inputs(items)
        outputs = codec.requested_outputs()
        cfg = self.config

        def request(client: Any, deadline: float | None) -> Any:
            return client.infer(
                cfg.model_name,
                inputs,
                model_version=cfg.model_version,
                outputs=outputs,
                client_timeout=deadline,
                timeout=queue_timeout_us(deadline),
                headers=self._headers(),
                compression_algorithm=cfg.compression_algorithm,
            )

        result = yield from self._call_steps(request, timeout)
        return codec.parse_result(result, len(items))

    def _blocking_steps(self, blocks: bool, fn: Callable[..., T], *args: Any) -> Steps[T]:
        """`fn(*args)`, offloaded when it `blocks` (reads a file, fetches a URL, encodes)."""
        if not blocks:
            return fn(*args)
        return (yield partial(self._offload, fn, *args))

    def _predict_steps(
        self, image: ImageInput, hypothesis: str, premise: str | None, timeout: float | None
    ) -> Steps[Prediction]:
        item = Item(image, hypothesis, premise)
        prepared = yield from self._blocking_steps(needs_thread(item), prepare, item, self._fetcher)
        predictions = yield partial(self._infer, [prepared], self._timeout(timeout))
        return predictions[0]

    def _batch_steps(
        self,
        items: Iterable[Any],
        return_exceptions: bool,
        timeout: float | None,
        batch_size: int | None,
        concurrency: int | None,
        progress: Progress | None,
    ) -> Steps[list[Any]]:
        items = list(items)
        state = BatchState(len(items), return_exceptions, progress)
        if not items:
            return []
        # Never more per request than the model takes (the server would reject it whole).
        largest = yield self.max_batch_size
        size = min(batch_size or self.config.batch_size or 2**31, largest)
        limit = concurrency or self.config.concurrency
        yield from self._schedule_steps(plan(items, size), limit, state, self._timeout(timeout))
        return state.final()

    def _schedule_steps(
        self, pending: list[Task], limit: int, state: BatchState, deadline: float | None
    ) -> Steps[None]:
        """Keep `limit` tasks in flight until every item has its result (or one raises)."""
        runner = self._task_runner(min(limit, len(pending)))
        running: set[Any] = set()
        failed = True
        try:
            while pending or running:
                while pending and len(running) < limit:
                    running.add(runner.start(self._task_steps(pending.pop(0), deadline)))
                done, running = yield partial(runner.wait_first, running)
                for handle in done:
                    pending.extend(state.finish(handle.result()))
            failed = False
        finally:
            # On an error, don't wait for requests still in flight: their results are moot.
            yield partial(runner.close, running, failed)

    def _task_steps(self, task: Task, timeout: float | None) -> Steps[TaskOutcome]:
        blocks = not task.prepared and any(needs_thread(item) for _, item in task.entries)
        outcome = yield from self._blocking_steps(blocks, prepare_task, task, self._fetcher)
        if outcome.ready:
            try:
                ready = [p for _, p in outcome.ready]
                outcome.predictions = yield partial(self._infer, ready, timeout)
            except VisualEntailmentError as exc:
                outcome.error = exc
        return outcome

    def _many_steps(
        self,
        image: ImageInput,
        hypotheses: Iterable[str],
        premise: str | None,
        return_exceptions: bool = False,
        timeout: float | None = DEFAULT,
        batch_size: int | None = None,
        concurrency: int | None = None,
        progress: Progress | None = None,
    ) -> Steps[list[Any]]:
        texts = check_hypotheses(hypotheses)
        check_premise(premise)
        if not texts:
            return []
        blocks = needs_thread(Item(image, ""))
        data = yield from self._blocking_steps(blocks, load_image, image, self._fetcher)
        size = batch_size or (yield self.max_batch_size)
        items = many_items(data, texts, premise)
        return (
            yield from self._batch_steps(
                items, return_exceptions, timeout, size, concurrency, progress
            )
        )

    def _classify_steps(
        self,
        image: ImageInput,
        candidate_labels: Iterable[str],
        hypothesis_template: str,
        multi_label: bool,
        premise: str | None,
        timeout: float | None,
    ) -> Steps[Classification]:
        query = ZeroShotQuery.build(candidate_labels, hypothesis_template, multi_label, premise)
        predictions = yield from self._many_steps(image, query.hypotheses, premise, timeout=timeout)
        return query.result(predictions)

    # -- server and model state ----------------------------------------------

    def _max_batch_size_steps(self) -> Steps[int]:
        if self._max_batch_size is None:
            config = yield from self._model_config_steps(DEFAULT)
            size = int(config.get("max_batch_size", 0))
            if size < 1:
                raise ProtocolError(
                    f"model {self.config.model_name!r} has max_batch_size {size}; "
                    "the interface needs a batching model"
                )
            self._max_batch_size = size
        return self._max_batch_size

    def _health_steps(self, timeout: float | None, model: bool) -> Steps[list[dict[str, Any]]]:
        kw = {"headers": self._headers(), "client_timeout": self._timeout(timeout)}
        cfg = self.config
        report = []
        for url, client in zip(cfg.urls, self._channels(), strict=True):
            entry: dict[str, Any] = {"url": url, "live": False, "ready": False}
            if model:
                entry["model_ready"] = False
            try:
                entry["live"] = yield partial(client.is_server_live, **kw)
                entry["ready"] = yield partial(client.is_server_ready, **kw)
                if model:
                    entry["model_ready"] = yield partial(
                        client.is_model_ready, cfg.model_name, cfg.model_version, **kw
                    )
            except InferenceServerException as exc:
                entry["error"] = str(from_triton(exc))
            report.append(entry)
        return report

    def _ready_steps(self, timeout: float | None, key: str) -> Steps[bool]:
        """Whether `key` (ready, model_ready) holds on at least one server; no retries."""
        report = yield from self._health_steps(timeout, model=key == "model_ready")
        return any(entry[key] for entry in report)

    def _wait_steps(self, timeout: float, interval: float) -> Steps[None]:
        end = time.monotonic() + timeout
        while True:
            try:
                probe = min(5.0, max(0.1, end - time.monotonic()))
                if (yield from self._ready_steps(probe, "model_ready")):
                    return
            except VisualEntailmentError:
                pass
            if time.monotonic() >= end:
                raise DeadlineExceededError(f"model not ready within {timeout:g}s")
            yield partial(self._sleep, interval)

    def _server_metadata_steps(self, timeout: float | None) -> Steps[dict[str, Any]]:
        return (
            yield from self._call_steps(
                lambda c, t: c.get_server_metadata(
                    headers=self._headers(), as_json=True, client_timeout=t
                ),
                self._timeout(timeout),
            )
        )

    def _model_steps(self, method: str, timeout: float | None) -> Steps[dict[str, Any]]:
        """get_model_metadata or get_model_config of this client's model, as JSON."""
        cfg = self.config
        return (
            yield from self._call_steps(
                lambda c, t: getattr(c, method)(
                    cfg.model_name,
                    cfg.model_version,
                    headers=self._headers(),
                    as_json=True,
                    client_timeout=t,
                ),
                self._timeout(timeout),
            )
        )

    def _model_config_steps(self, timeout: float | None) -> Steps[dict[str, Any]]:
        reply = yield from self._model_steps("get_model_config", timeout)
        return dict(reply.get("config", reply))
