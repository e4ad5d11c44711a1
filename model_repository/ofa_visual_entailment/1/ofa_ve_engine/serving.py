"""One server execution: many requests in, one outcome per request out.

The Triton adapter (model.py) hands over the inputs of every request of one
execution as plain bytes; this module prepares every item (in a thread pool:
Pillow and the tokenizer release the GIL), fails a request whose item is bad with
that item's error alone, runs all valid items through `engine.predict` once, and
splits the probabilities back per request. Kept free of Triton so it is tested
in-process, and so that the batching has one owner: Triton forms the batch, the
engine splits it into forward passes, this module only gathers and scatters.

With `pipelined=True` (GPU instances, by default) the items are prepared in
forward-pass-sized groups while the previous group's forward pass runs, so the
accelerator does not wait for the whole execution's decoding.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .batching import PreparedItem
from .errors import InvalidInputError
from .labels import LABELS


@dataclass(frozen=True)
class RequestInputs:
    """The items of one request: parallel sequences, PREMISE absent as None."""

    images: Sequence[bytes]
    hypotheses: Sequence[bytes]
    premises: Sequence[bytes] | None = None

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
    future: Future | None = field(default=None, repr=False)


class ExecutionRunner:
    """Gather, prepare, predict, scatter: the engine behind one model instance."""

    def __init__(self, engine, *, workers: int = 1, pipelined: bool = False) -> None:
        self.engine = engine
        self.pipelined = pipelined
        self._pool = ThreadPoolExecutor(workers, "preprocess") if workers > 1 else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _prepare(self, job: _Job) -> tuple[PreparedItem | None, Exception | None, float]:
        started = time.perf_counter()
        try:
            item = self.engine.prepare(job.image, job.hypothesis, job.premise)
        except Exception as exc:  # noqa: BLE001  (reported per request by the caller)
            return None, exc, 0.0
        return item, None, time.perf_counter() - started

    def run(
        self, requests: Sequence[RequestInputs | None], hooks: ExecutionHooks | None = None
    ) -> list[RequestOutcome]:
        """One outcome per request; a None request (e.g. cancelled) is skipped."""
        hooks = hooks or ExecutionHooks()
        outcomes = [RequestOutcome(items=len(r) if r is not None else 0) for r in requests]
        jobs = [
            _Job(number, index, r.images[index], r.hypotheses[index],
                 None if r.premises is None else r.premises[index])
            for number, r in enumerate(requests) if r is not None
            for index in range(len(r))
        ]
        if self._pool is not None and len(jobs) > 1:
            for job in jobs:
                job.future = self._pool.submit(self._prepare, job)
        prepared: dict[int, list[PreparedItem]] = {}
        try:
            if self.pipelined:
                results = [self._run_pass(group, outcomes, prepared, hooks)
                           for group in self._groups(jobs, outcomes, prepared, hooks)]
            else:
                items = self._collect(jobs, outcomes, prepared, hooks)
                results = [self._run_pass(items, outcomes, prepared, hooks)]
        except Exception as exc:  # noqa: BLE001  (a failed forward fails its requests only)
            failed = RuntimeError(f"inference failed: the forward pass raised {exc!r}")
            for number in prepared:
                if outcomes[number].error is None:
                    outcomes[number].error = failed
            return outcomes
        self._scatter(results, outcomes, prepared)
        return outcomes

    # ------------------------------------------------------------------ internals
    def _result(self, job: _Job) -> tuple[PreparedItem | None, Exception | None, float]:
        return job.future.result() if job.future is not None else self._prepare(job)

    def _accept(
        self, job: _Job, outcomes: list[RequestOutcome], prepared: dict[int, list[PreparedItem]],
        hooks: ExecutionHooks,
    ) -> tuple[int, PreparedItem] | None:
        item, exc, seconds = self._result(job)
        outcome = outcomes[job.request]
        if outcome.error is not None:
            return None
        if exc is not None:
            outcome.error, outcome.failed_item = exc, job.index
            if isinstance(exc, InvalidInputError):
                hooks.invalid(exc.input_name)
            prepared.pop(job.request, None)
            return None
        hooks.prepared(seconds)
        prepared.setdefault(job.request, []).append(item)
        return job.request, item

    def _collect(self, jobs, outcomes, prepared, hooks) -> list[tuple[int, PreparedItem]]:
        accepted = [self._accept(job, outcomes, prepared, hooks) for job in jobs]
        return [a for a in accepted if a is not None and outcomes[a[0]].error is None]

    def _groups(self, jobs, outcomes, prepared, hooks) -> Iterator[list[tuple[int, PreparedItem]]]:
        """Forward-pass-sized groups, yielded as soon as their items are prepared."""
        size = self.engine.forward_batch_size or len(jobs) or 1
        group: list[tuple[int, PreparedItem]] = []
        for job in jobs:
            accepted = self._accept(job, outcomes, prepared, hooks)
            if accepted is not None:
                group.append(accepted)
            if len(group) >= size:
                yield group
                group = []
        if group:
            yield group

    def _run_pass(self, group, outcomes, prepared, hooks) -> list[tuple[int, PreparedItem, np.ndarray]]:
        """Predict the group's items (skipping requests that failed meanwhile)."""
        live = [(n, item) for n, item in group if outcomes[n].error is None]
        if not live:
            return []
        probs = self.engine.predict([item for _, item in live], on_pass=hooks.forward_pass)
        return [(n, item, row) for (n, item), row in zip(live, probs, strict=True)]

    @staticmethod
    def _scatter(results, outcomes, prepared) -> None:  # noqa: ARG004
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
