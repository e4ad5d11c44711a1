"""One server execution: many requests in, one outcome per request out.

model.py hands over the inputs of every request of one execution as bytes. The
runner prepares each item (in a thread pool: Pillow and the tokenizer release
the GIL), runs the prepared items through ``engine.predict`` and splits the
probabilities back per request; a bad item ends its own request alone. Batching
has one owner per level: Triton forms the execution, the engine its forward
passes; this module only gathers and scatters. Free of Triton, so it is tested
in-process.

Two concerns of the request path are owned here:

- cancellation: ``_Execution.live`` is the one check (before each decode, and
  at each forward-pass boundary through ``predict(keep=)``); a client that has
  gone ends its request as a ``RequestCancelled`` outcome and costs no more work;
- image sharing starts here: each item's ``image_digest`` is computed once, and
  items with the same digest are decoded once; the engine shares the patch
  embeddings by the same digest (``image_sharing.py``).

Pipelining (GPU instances, by default) is only a smaller pass size: the engine
gets the items a pass at a time while the pool decodes the next pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .batching import PreparedItem
from .errors import InvalidInputError, RequestCancelled
from .image_sharing import image_digest
from .labels import LABELS

PIPELINE_MIN_PASS = 4
"""Smallest pass a pipelined execution is split into (smaller executions run as one)."""


def _never() -> bool:
    return False


@dataclass(frozen=True)
class RequestInputs:
    """The items of one request: parallel sequences, PREMISE absent as None.

    ``is_cancelled`` is Triton's ``request.is_cancelled``: asked before each item is
    decoded and at each forward pass of its items, so that a client that has gone
    (cancelled, or its deadline passed) costs no more work from then on.
    """

    images: Sequence[bytes]
    hypotheses: Sequence[bytes]
    premises: Sequence[bytes] | None = None
    is_cancelled: Callable[[], bool] = field(default=_never, compare=False)

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class RequestOutcome:
    """Probabilities [items, 3] in LABELS order, or the error that ends the request
    (``RequestCancelled`` where its client has gone)."""

    probs: np.ndarray | None = None
    error: Exception | None = None
    failed_item: int | None = None
    """Index of the item whose error ended the request (None for whole-request errors)."""
    items: int = 0


@dataclass
class ExecutionHooks:
    """Observers for metrics; each defaults to doing nothing."""

    prepared: Callable[[float], None] = lambda seconds: None
    invalid: Callable[[str], None] = lambda input_name: None
    forward_pass: Callable[[int, float], None] = lambda items, seconds: None


Prepared = tuple[PreparedItem | None, Exception | None, float]
"""What preparing one job gave: the item or its error, and the seconds it took;
``(None, None, 0.0)`` for a job not prepared because its request had ended."""


@dataclass
class _Job:
    """One item of one request, to prepare."""

    request: int
    index: int
    image: bytes
    hypothesis: bytes
    premise: bytes | None
    digest: bytes | None
    """``image_digest(image)``: the one "same image" key (None: not bytes; shares nothing)."""
    image_group: _ImageGroup = field(repr=False)
    prepared: Prepared | None = field(default=None, repr=False)


@dataclass
class _ImageGroup:
    """The jobs of one execution whose images have the same digest: decoded once."""

    jobs: list[_Job] = field(default_factory=list)
    future: Future | None = None
    done: bool = False


@dataclass
class _Execution:
    """The state of one ``run``: its requests, their outcomes, the metric hooks."""

    requests: Sequence[RequestInputs]
    outcomes: list[RequestOutcome]
    hooks: ExecutionHooks
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def live(self, request: int) -> bool:
        """Whether ``request`` still wants work: the one cancellation check. Its client
        gone, the request ends as ``RequestCancelled``. Asked from the decoding threads
        too (Triton's ``is_cancelled`` takes a lock and releases the GIL)."""
        with self._lock:
            outcome = self.outcomes[request]
            if outcome.error is None and self.requests[request].is_cancelled():
                outcome.error = RequestCancelled()
            return outcome.error is None

    def fail(self, request: int, error: Exception, item: int | None = None) -> bool:
        """End ``request`` with ``error`` (``item`` at fault), unless it has ended
        already; whether it did."""
        with self._lock:
            outcome = self.outcomes[request]
            if outcome.error is not None:
                return False
            outcome.error, outcome.failed_item = error, item
            return True


class ExecutionRunner:
    """Gather, prepare, predict, scatter: the engine behind one model instance.

    Args:
        engine: the instance's ``VisualEntailmentEngine``.
        workers: preprocessing threads (1: prepare inline, unless pipelined).
        pipelined: hand the engine a pass at a time while the next one decodes.
    """

    def __init__(self, engine, *, workers: int = 1, pipelined: bool = False) -> None:
        self.engine = engine
        self.pipelined = pipelined
        # Pipelining needs a decoder thread beside the one running the forward pass.
        threaded = workers > 1 or pipelined
        self._pool = ThreadPoolExecutor(max(1, workers), "preprocess") if threaded else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def run(
        self, requests: Sequence[RequestInputs], hooks: ExecutionHooks | None = None
    ) -> list[RequestOutcome]:
        """One outcome per request: its probabilities, or the error that ended it."""
        run = _Execution(requests, [RequestOutcome(items=len(r)) for r in requests],
                         hooks or ExecutionHooks())
        jobs = self._jobs(requests)
        groups = {id(job.image_group): job.image_group for job in jobs}
        size = self.pass_size(len(jobs), len(groups))
        whole_groups = self.pipelined and not self.engine.forward_batch_size
        if whole_groups:  # an image's items in one pass: its stem runs once
            jobs = [job for group in groups.values() for job in group.jobs]
        if self._pool is not None and (len(groups) > 1 or self.pipelined):
            for group in groups.values():
                group.future = self._pool.submit(self._prepare_group, group, run)
        rows: list[tuple[_Job, np.ndarray]] = []
        try:
            for pass_jobs in self._passes(jobs, run, size, whole_groups):
                rows += self._predict(pass_jobs, run)
        except Exception as exc:
            failed = RuntimeError(f"inference failed: the forward pass raised {exc!r}")
            for number in range(len(requests)):  # also those whose items had not
                run.fail(number, failed)  # reached a pass yet
            for group in groups.values():  # no decoding goes on after the responses
                if group.future is not None and not group.future.cancel():
                    group.future.exception()  # wait for one already running
            return run.outcomes
        self._scatter(rows, run.outcomes)
        return run.outcomes

    def pass_size(self, items: int, images: int | None = None) -> int:
        """Items handed to the engine at a time: the whole execution, or when pipelined,
        the engine's pass size, or where it has none, half the execution once it holds
        ``2 * PIPELINE_MIN_PASS`` distinct ``images`` (fewer: decoding is cheap, and one
        pass shares each image's stem)."""
        if not self.pipelined:
            return max(1, items)
        if self.engine.forward_batch_size:
            return self.engine.forward_batch_size
        if (items if images is None else images) >= 2 * PIPELINE_MIN_PASS:
            return -(-items // 2)
        return max(1, items)

    def describe(self) -> str:
        """What an execution does, for the instance's start-up log line."""
        if not self.pipelined:
            return "not pipelined (decoding, then the forward passes)"
        if self.engine.forward_batch_size:
            return (f"pipelined (passes of {self.engine.forward_batch_size} items, each decoded "
                    "while the previous one runs)")
        return (f"pipelined (an execution of {2 * PIPELINE_MIN_PASS}+ distinct images runs as two "
                "passes, the second half decoded while the first runs)")

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _jobs(requests: Sequence[RequestInputs]) -> list[_Job]:
        """Every item of the execution, in order, grouped by image digest."""
        groups: dict[object, _ImageGroup] = {}
        jobs = []
        for number, r in enumerate(requests):
            for index in range(len(r)):
                image = r.images[index]
                encoded = isinstance(image, bytes | bytearray | memoryview)
                digest = image_digest(bytes(image)) if encoded else None
                group = groups.setdefault(digest if encoded else object(), _ImageGroup())
                premise = None if r.premises is None else r.premises[index]
                job = _Job(number, index, image, r.hypotheses[index], premise, digest, group)
                group.jobs.append(job)
                jobs.append(job)
        return jobs

    def _prepare_group(self, group: _ImageGroup, run: _Execution) -> None:
        """Prepare the jobs of one image: the first decodes, the others reuse its pixels;
        an image the first job finds bad is bad for all of them. A job whose request has
        ended (or whose client has gone) is not prepared."""
        first: PreparedItem | None = None
        image_error: InvalidInputError | None = None
        for job in group.jobs:
            if image_error is not None:
                job.prepared = (None, image_error, 0.0)
                continue
            if not run.live(job.request):
                job.prepared = (None, None, 0.0)
                continue
            started = time.perf_counter()
            try:
                item = self.engine.prepare(job.image, job.hypothesis, job.premise,
                                           same_image_as=first, image_digest=job.digest)
            except Exception as exc:
                if isinstance(exc, InvalidInputError) and exc.input_name == "IMAGE":
                    image_error = exc
                job.prepared = (None, exc, 0.0)
                continue
            first = first or item
            job.prepared = (item, None, time.perf_counter() - started)

    def _accept(self, job: _Job, run: _Execution) -> PreparedItem | None:
        """The job's prepared item, or None where it failed (ending its request)."""
        group = job.image_group
        if not group.done:
            if group.future is not None:
                group.future.result()
            else:
                self._prepare_group(group, run)
            group.done = True
        item, error, seconds = job.prepared
        if item is not None:  # every item prepared is observed, whatever its request's fate
            run.hooks.prepared(seconds)
        if run.outcomes[job.request].error is not None:
            return None
        if error is not None:
            if run.fail(job.request, error, job.index) and isinstance(error, InvalidInputError):
                run.hooks.invalid(error.input_name)
            return None
        return item

    def _passes(
        self, jobs: list[_Job], run: _Execution, size: int, whole_groups: bool = False
    ) -> Iterator[list[_Job]]:
        """The accepted jobs, ``size`` at a time (with ``whole_groups``, at least ``size``,
        ending where an image group ends), each pass as soon as it is prepared."""
        pass_jobs: list[_Job] = []
        for n, job in enumerate(jobs):
            if self._accept(job, run) is not None:
                pass_jobs.append(job)
            at_boundary = (not whole_groups or n + 1 == len(jobs)
                           or jobs[n + 1].image_group is not job.image_group)
            if len(pass_jobs) >= size and at_boundary:
                yield pass_jobs
                pass_jobs = []
        if pass_jobs:
            yield pass_jobs

    def _predict(self, jobs: list[_Job], run: _Execution) -> list[tuple[_Job, np.ndarray]]:
        """(job, row) for each job the engine ran. At each forward-pass boundary the
        engine asks which items still run (``keep``); an image the GPU image path finds
        unreadable inside the pass fails its request alone (``on_invalid``)."""

        def keep(indices: list[int]) -> list[int]:
            live = {n: run.live(n) for n in {jobs[i].request for i in indices}}  # once each
            return [i for i in indices if live[jobs[i].request]]

        def on_invalid(position: int, error: InvalidInputError) -> None:
            job = jobs[position]
            if run.fail(job.request, error, job.index):
                run.hooks.invalid(error.input_name)

        probs = self.engine.predict(
            [job.prepared[0] for job in jobs],
            on_pass=lambda items, seconds: run.hooks.forward_pass(len(items), seconds),
            keep=keep,
            on_invalid=on_invalid,
        )
        return list(zip(jobs, probs, strict=True))

    @staticmethod
    def _scatter(rows: list[tuple[_Job, np.ndarray]], outcomes: list[RequestOutcome]) -> None:
        """The rows of each request that has not ended, stacked in item order."""
        by_request: dict[int, list[np.ndarray]] = {}
        for job, row in sorted(rows, key=lambda r: (r[0].request, r[0].index)):
            by_request.setdefault(job.request, []).append(row)
        for number, outcome in enumerate(outcomes):
            if outcome.error is not None:
                continue
            got = by_request.get(number, [])
            if len(got) != outcome.items:
                outcome.error = RuntimeError(
                    f"internal error: {len(got)} results for {outcome.items} items"
                )
                continue
            outcome.probs = (
                np.stack(got).astype(np.float32)
                if got else np.zeros((0, len(LABELS)), dtype=np.float32)
            )
