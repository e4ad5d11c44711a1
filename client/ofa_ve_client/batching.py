"""predict_batch bookkeeping shared by the sync and async clients.

Items go out in requests of up to `batch_size` items, several requests in
flight at once. One bad item fails its whole request (INVALID_ARGUMENT for
all of it), so such a request's items are resent one per request to find
the culprit; the good ones then get their answers and only the bad one its
error. Results always come back in input order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidInputError, VisualEntailmentError
from .items import PreparedItem, prepare
from .prediction import Prediction
from .url_fetch import UrlFetcher

Result = Prediction | VisualEntailmentError
Progress = Callable[[int], None]


@dataclass
class Task:
    """Items that go out in one request: (index, raw item) or, when resent, (index, prepared)."""

    entries: list[tuple[int, Any]]
    prepared: bool = False


@dataclass
class TaskOutcome:
    ready: list[tuple[int, PreparedItem]]
    failed: dict[int, VisualEntailmentError] = field(default_factory=dict)
    predictions: list[Prediction] | None = None
    error: VisualEntailmentError | None = None


def plan(items: Sequence[Any], batch_size: int) -> list[Task]:
    entries = list(enumerate(items))
    return [Task(entries[i : i + batch_size]) for i in range(0, len(entries), batch_size)]


def prepare_task(task: Task, fetcher: UrlFetcher) -> TaskOutcome:
    """Prepare each item on its own, so one bad image fails only its item."""
    if task.prepared:
        return TaskOutcome(ready=list(task.entries))
    outcome = TaskOutcome(ready=[])
    for index, item in task.entries:
        try:
            outcome.ready.append((index, prepare(item, fetcher)))
        except VisualEntailmentError as exc:
            outcome.failed[index] = exc.for_item(index)
    return outcome


def _is_rejection(error: VisualEntailmentError) -> bool:
    # The server rejected the request's input: some item in it is bad.
    return isinstance(error, InvalidInputError) and error.status == "INVALID_ARGUMENT"


class BatchState:
    """Result slots in input order; turns finished tasks into results or follow-up tasks."""

    def __init__(self, n: int, return_exceptions: bool, progress: Progress | None) -> None:
        self.results: list[Result | None] = [None] * n
        self.return_exceptions = return_exceptions
        self.progress = progress

    def _settle(self, index: int, result: Result) -> None:
        if isinstance(result, VisualEntailmentError) and not self.return_exceptions:
            raise result
        self.results[index] = result

    def finish(self, outcome: TaskOutcome) -> list[Task]:
        """Record a task's results; return follow-up tasks (a split); raise in strict mode."""
        done = 0
        for index in sorted(outcome.failed):
            self._settle(index, outcome.failed[index])
            done += 1
        follow_up: list[Task] = []
        if outcome.error is not None:
            if _is_rejection(outcome.error) and len(outcome.ready) > 1:
                follow_up = [Task([entry], prepared=True) for entry in outcome.ready]
            else:
                for index, _ in outcome.ready:
                    self._settle(index, outcome.error.for_item(index))
                    done += 1
        elif outcome.predictions is not None:
            for (index, _), prediction in zip(outcome.ready, outcome.predictions, strict=True):
                self._settle(index, prediction)
                done += 1
        if self.progress is not None and done:
            self.progress(done)
        return follow_up

    def final(self) -> list[Result]:
        assert all(r is not None for r in self.results), "every item gets a result"
        return list(self.results)  # type: ignore[arg-type]
