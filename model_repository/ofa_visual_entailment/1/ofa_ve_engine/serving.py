"""One server execution: many requests in, one outcome per request out.

The Triton adapter (model.py) hands over the inputs of every request of one
execution as plain bytes; this module prepares every item (in a thread pool:
Pillow and the tokenizer release the GIL), fails a request whose item is bad with
that item's error alone, runs all valid items through `engine.predict` once, and
splits the probabilities back per request. Kept free of Triton so it is tested
in-process, and so that the batching has one owner: Triton forms the batch, the
engine splits it into forward passes, this module only gathers and scatters.

With `pipelined=True` (GPU instances, by default) the execution runs as several
passes and each pass's items are prepared while the previous pass runs, so the
accelerator does not wait for the whole execution's decoding: passes of the engine's
`forward_batch_size` where it has one, else (a GPU engine takes any batch) two
halves once the execution has `2 * PIPELINE_MIN_PASS` items.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .batching import PreparedItem
from .errors import InvalidInputError, RequestCancelled
from .labels import LABELS

PIPELINE_MIN_PASS = 4
"""Smallest pass a pipelined execution is split into (smaller executions run as one)."""


def _never() -> bool:
    return False


@dataclass(frozen=True)
class RequestInputs:
    """The items of one request: parallel sequences, PREMISE absent as None.

    ``is_cancelled`` (Triton's ``request.is_cancelled``) is asked before each item is
    decoded and before each forward pass of its items: a client that has gone
    (cancelled, or its deadline passed) costs no more work from then on, which
    matters most when the server is overloaded and an execution of 32 large images
    runs for tens of seconds.
    """

    images: Sequence[bytes]
    hypotheses: Sequence[bytes]
    premises: Sequence[bytes] | None = None
    is_cancelled: Callable[[], bool] = field(default=_never, compare=False)

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class RequestOutcome:
    """Probabilities [items, 3] in LABELS order, or the error that ends the request."""

    probs: np.ndarray | None = None
    error: Exception | None = None
    failed_item: int | None = None
    """Index of the item whose error ended the request (None for whole-batch errors)."""
    items: int = 0


@dataclass
class ExecutionHooks:
    """Observers for metrics; each defaults to doing nothing."""

    prepared: Callable[[float], None] = lambda seconds: None
    invalid: Callable[[str], None] = lambda input_name: None
    forward_pass: Callable[[int, float], None] = lambda items, seconds: None


@dataclass
class _Job:
    request: int
    index: int
    image: bytes
    hypothesis: bytes
    premise: bytes | None
    is_cancelled: Callable[[], bool] = field(default=_never, repr=False)
    group: _ImageGroup | None = field(default=None, repr=False)
    slot: int = 0


@dataclass
class _ImageGroup:
    """The jobs of one execution that carry the same image bytes: decoded once."""

    jobs: list[_Job] = field(default_factory=list)
    future: Future | None = None
    results: list[tuple[PreparedItem | None, Exception | None, float]] | None = None


class ExecutionRunner:
    """Gather, prepare, predict, scatter: the engine behind one model instance.

    Items of the execution that carry the same image bytes (several hypotheses about
    one photo, in one request or in several) are decoded once, and the engine runs
    its stem once for them."""

    def __init__(self, engine, *, workers: int = 1, pipelined: bool = False) -> None:
        self.engine = engine
        self.pipelined = pipelined
        # Pipelining needs a decoder thread beside the one running the forward pass.
        threaded = workers > 1 or pipelined
        self._pool = ThreadPoolExecutor(max(1, workers), "preprocess") if threaded else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _prepare_group(
        self, group: _ImageGroup
    ) -> list[tuple[PreparedItem | None, Exception | None, float]]:
        """Prepare the jobs of one image: the first decodes, the others reuse its pixels;
        an image the first job finds bad is bad for all of them. A job whose request is
        cancelled by now is skipped (Triton's ``is_cancelled`` may be asked from any
        thread: it takes a lock and releases the GIL)."""
        out: list[tuple[PreparedItem | None, Exception | None, float]] = []
        like: PreparedItem | None = None
        image_error: InvalidInputError | None = None
        for job in group.jobs:
            if image_error is not None:
                out.append((None, image_error, 0.0))
                continue
            if job.is_cancelled():
                out.append((None, RequestCancelled(), 0.0))
                continue
            started = time.perf_counter()
            try:
                item = self.engine.prepare(job.image, job.hypothesis, job.premise, like=like)
            except Exception as exc:
                if isinstance(exc, InvalidInputError) and exc.input_name == "IMAGE":
                    image_error = exc
                out.append((None, exc, 0.0))
                continue
            like = like or item
            out.append((item, None, time.perf_counter() - started))
        return out

    def run(
        self, requests: Sequence[RequestInputs | None], hooks: ExecutionHooks | None = None
    ) -> list[RequestOutcome]:
        """One outcome per request; a None request (e.g. cancelled) is skipped."""
        hooks = hooks or ExecutionHooks()
        outcomes = [RequestOutcome(items=len(r) if r is not None else 0) for r in requests]
        jobs = [
            _Job(number, index, r.images[index], r.hypotheses[index],
                 None if r.premises is None else r.premises[index], r.is_cancelled)
            for number, r in enumerate(requests) if r is not None
            for index in range(len(r))
        ]
        groups: dict[object, _ImageGroup] = {}
        for job in jobs:  # same bytes, one group; anything else stays alone (prepare says why)
            encoded = isinstance(job.image, bytes | bytearray | memoryview)
            job.group = groups.setdefault(bytes(job.image) if encoded else id(job), _ImageGroup())
            job.slot = len(job.group.jobs)
            job.group.jobs.append(job)
        if self._pool is not None and (len(groups) > 1 or self.pipelined):
            for group in groups.values():
                group.future = self._pool.submit(self._prepare_group, group)
        size = self.pass_size(len(jobs))
        try:
            results = [self._run_pass(group, outcomes, hooks, requests)
                       for group in self._passes(jobs, outcomes, hooks, size)]
        except Exception as exc:
            failed = RuntimeError(f"inference failed: the forward pass raised {exc!r}")
            for outcome, given in zip(outcomes, requests, strict=True):
                if given is not None and outcome.error is None:  # also those whose
                    outcome.error = failed  # items had not reached a pass yet
            return outcomes
        self._scatter(results, outcomes)
        for outcome, given in zip(outcomes, requests, strict=True):
            if given is None:  # skipped: neither results nor an error
                outcome.probs = None
        return outcomes

    # ------------------------------------------------------------------ internals
    def _result(self, job: _Job) -> tuple[PreparedItem | None, Exception | None, float]:
        group = job.group
        if group.results is None:
            group.results = (
                group.future.result() if group.future is not None else self._prepare_group(group)
            )
        return group.results[job.slot]

    def _accept(
        self, job: _Job, outcomes: list[RequestOutcome], hooks: ExecutionHooks,
    ) -> tuple[int, int, PreparedItem] | None:
        item, exc, seconds = self._result(job)
        outcome = outcomes[job.request]
        if outcome.error is not None:
            return None
        if isinstance(exc, RequestCancelled):
            outcome.error = exc
            return None
        if exc is not None:
            outcome.error, outcome.failed_item = exc, job.index
            if isinstance(exc, InvalidInputError):
                hooks.invalid(exc.input_name)
            return None
        hooks.prepared(seconds)
        return job.request, job.index, item

    def pass_size(self, items: int) -> int:
        """Items handed to the engine at a time: the whole execution, or when pipelined,
        the engine's pass size (or half the execution where the engine has none)."""
        if not self.pipelined:
            return max(1, items)
        if self.engine.forward_batch_size:
            return self.engine.forward_batch_size
        if items >= 2 * PIPELINE_MIN_PASS:
            return -(-items // 2)
        return max(1, items)

    def describe(self) -> str:
        """What an execution does, for the instance's start-up log line."""
        if not self.pipelined:
            return "not pipelined (decoding, then the forward passes)"
        if self.engine.forward_batch_size:
            return (f"pipelined (passes of {self.engine.forward_batch_size} items, each decoded "
                    "while the previous one runs)")
        return (f"pipelined (an execution of {2 * PIPELINE_MIN_PASS}+ items runs as two passes, "
                "the second half decoded while the first runs)")

    def _passes(self, jobs, outcomes, hooks, size: int) -> Iterator[list[tuple[int, int, Any]]]:
        """Groups of ``size`` accepted items, yielded as soon as their items are prepared."""
        group: list[tuple[int, int, PreparedItem]] = []
        for job in jobs:
            accepted = self._accept(job, outcomes, hooks)
            if accepted is not None:
                group.append(accepted)
            if len(group) >= size:
                yield group
                group = []
        if group:
            yield group

    def _run_pass(
        self, group, outcomes, hooks, requests: Sequence[RequestInputs | None]
    ) -> list[tuple[int, PreparedItem, Any]]:
        """Predict the group's items, leaving out those of requests that have failed or
        been cancelled meanwhile (asked again before each forward pass). An image the GPU
        image path finds unreadable inside the pass fails its request alone."""

        def live(number: int) -> bool:
            if outcomes[number].error is None and requests[number].is_cancelled():
                outcomes[number].error = RequestCancelled()
            return outcomes[number].error is None

        kept = [(n, i, item) for n, i, item in group if live(n)]
        if not kept:
            return []

        def on_pass(items: Sequence[PreparedItem], seconds: float) -> None:
            hooks.forward_pass(len(items), seconds)

        def wanted(position: int) -> bool:
            return live(kept[position][0])

        def on_invalid(position: int, error: InvalidInputError) -> None:
            number, index, _ = kept[position]
            if outcomes[number].error is None:
                outcomes[number].error, outcomes[number].failed_item = error, index
                hooks.invalid(error.input_name)

        probs = self.engine.predict(
            [item for _, _, item in kept], on_pass=on_pass, wanted=wanted, on_invalid=on_invalid
        )
        return [
            (n, item, row)
            for (n, _, item), row in zip(kept, probs, strict=True)
            if outcomes[n].error is None
        ]

    @staticmethod
    def _scatter(results, outcomes) -> None:
        rows: dict[int, list[np.ndarray]] = {}
        for passed in results:
            for number, _item, row in passed:
                rows.setdefault(number, []).append(row)
        for number, outcome in enumerate(outcomes):
            if outcome.error is not None:
                continue
            got = rows.get(number, [])
            if len(got) != outcome.items:
                outcome.error = RuntimeError(
                    f"internal error: {len(got)} results for {outcome.items} items"
                )
                continue
            outcome.probs = (
                np.stack(got).astype(np.float32)
                if got else np.zeros((0, len(LABELS)), dtype=np.float32)
            )
