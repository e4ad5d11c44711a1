"""VisualEntailmentClient: the blocking gRPC client (the logic is in base.py)."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import tritonclient.grpc as tgrpc

from .base import DEFAULT, BaseVisualEntailmentClient, Finished, Steps, resume, run_step
from .batching import Progress, TaskOutcome
from .channel import client_kwargs
from .classification import DEFAULT_HYPOTHESIS_TEMPLATE, Classification
from .contract import DEFAULT_URL
from .images import ImageInput
from .items import PreparedItem
from .prediction import Prediction

T = TypeVar("T")


class _ThreadRunner:
    """Batch requests in flight on a thread pool (base.TaskRunner)."""

    def __init__(self, client: VisualEntailmentClient, workers: int) -> None:
        self._drive = client._drive
        self._pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="ofa-ve")

    def start(self, steps: Steps[TaskOutcome]) -> cf.Future[TaskOutcome]:
        return self._pool.submit(self._drive, steps)

    def wait_first(self, running: set[cf.Future[TaskOutcome]]) -> Any:
        return cf.wait(running, return_when=cf.FIRST_COMPLETED)

    def close(self, running: set[cf.Future[TaskOutcome]], failed: bool) -> None:
        self._pool.shutdown(wait=not failed, cancel_futures=True)


class VisualEntailmentClient(BaseVisualEntailmentClient):
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
        super().__init__(url, **options)
        kwargs = client_kwargs(self.config)
        self._clients = [tgrpc.InferenceServerClient(u, **kwargs) for u in self.config.urls]
        self._lock = threading.Lock()

    # -- how this client waits (base.BaseVisualEntailmentClient) --------------

    def _drive(self, steps: Steps[T]) -> T:
        """Run an operation's steps as plain calls."""
        value, error = None, None
        while not isinstance(step := resume(steps, value, error), Finished):
            value, error = run_step(step)
        return step.value

    def _channels(self) -> list[tgrpc.InferenceServerClient]:
        self._check_open()
        return self._clients

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def _offload(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)  # the calling thread is the one to block

    def _task_runner(self, workers: int) -> _ThreadRunner:
        return _ThreadRunner(self, workers)

    def _infer(self, items: Sequence[PreparedItem], timeout: float | None) -> list[Prediction]:
        return self._drive(self._infer_steps(items, timeout))

    # -- lifecycle -------------------------------------------------------------

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

    # -- inference -------------------------------------------------------------

    def predict(
        self,
        image: ImageInput,
        hypothesis: str,
        premise: str | None = None,
        *,
        timeout: float | None = DEFAULT,
    ) -> Prediction:
        """Judge whether `image` (and `premise`, if given) entails `hypothesis`.

        Raises InvalidInputError (naming IMAGE, HYPOTHESIS or PREMISE) for bad
        input, and the other VisualEntailmentError subclasses for server trouble.
        """
        return self._drive(self._predict_steps(image, hypothesis, premise, timeout))

    def predict_batch(
        self,
        items: Iterable[Any],
        *,
        return_exceptions: bool = False,
        timeout: float | None = DEFAULT,
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
        return self._drive(
            self._batch_steps(items, return_exceptions, timeout, batch_size, concurrency, progress)
        )

    def predict_many(
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
        """One prediction per hypothesis, in order, for one image (and optional premise).

        The image is read, fetched or encoded once; the interface takes IMAGE
        per item, so each item carries those same bytes, and the items go in
        as few requests as the model's max_batch_size allows (`batch_size`
        lowers that). Errors behave as in predict_batch: a bad hypothesis
        fails its own slot (return_exceptions=True) or raises with its
        `item_index`; an unreadable image or a bad premise raises at once.
        """
        options = (return_exceptions, timeout, batch_size, concurrency, progress)
        return self._drive(self._many_steps(image, hypotheses, premise, *options))

    def classify(
        self,
        image: ImageInput,
        candidate_labels: Iterable[str] | str,
        hypothesis_template: str = DEFAULT_HYPOTHESIS_TEMPLATE,
        multi_label: bool = False,
        *,
        premise: str | None = None,
        timeout: float | None = DEFAULT,
    ) -> Classification:
        """Zero-shot classification of `image`, in the manner of HF's zero-shot pipeline.

        Each label becomes `hypothesis_template.format(label)`; all go in one
        predict_many. A string of labels is split on commas (a list is taken
        as it is). Single-label: scores are a softmax over the candidates of
        log P(entailment) (they sum to 1). multi_label=True: each label's own
        P(entailment). Labels come back ranked; see ofa_ve_client.classification
        for the relation to HF's scores. Bad arguments raise InvalidInputError
        before anything is sent; any failed label raises (a ranking with a
        hole in it would mislead).
        """
        steps = self._classify_steps(
            image, candidate_labels, hypothesis_template, multi_label, premise, timeout
        )
        return self._drive(steps)

    # -- server and model state ------------------------------------------------

    def max_batch_size(self) -> int:
        """The model's max_batch_size from its config, read from the server once."""
        with self._lock:
            return self._drive(self._max_batch_size_steps())

    def is_server_ready(self, *, timeout: float | None = DEFAULT) -> bool:
        """True if at least one of the servers is ready (no retries: a health probe)."""
        return self._drive(self._ready_steps(timeout, "ready"))

    def is_model_ready(self, *, timeout: float | None = DEFAULT) -> bool:
        """True if at least one of the servers has the model ready."""
        return self._drive(self._ready_steps(timeout, "model_ready"))

    def health(
        self, *, timeout: float | None = DEFAULT, model: bool = True
    ) -> list[dict[str, Any]]:
        """Per URL: live, ready, model_ready (when `model`), and the error if it could not tell."""
        return self._drive(self._health_steps(timeout, model))

    def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.25) -> None:
        """Block until the model is ready on some server; DeadlineExceededError after `timeout`."""
        self._drive(self._wait_steps(timeout, interval))

    def server_metadata(self, *, timeout: float | None = DEFAULT) -> dict[str, Any]:
        """Server name, version and extensions (from whichever server answers)."""
        return self._drive(self._server_metadata_steps(timeout))

    def model_metadata(self, *, timeout: float | None = DEFAULT) -> dict[str, Any]:
        """The model's inputs and outputs as the server describes them."""
        return self._drive(self._model_steps("get_model_metadata", timeout))

    def model_config(self, *, timeout: float | None = DEFAULT) -> dict[str, Any]:
        """The model's Triton config (max_batch_size, dynamic batching, ...)."""
        return self._drive(self._model_config_steps(timeout))
