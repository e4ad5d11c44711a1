"""ExecutionRunner: one execution's requests gathered, prepared, predicted once, scattered.

Real engine (tiny architecture), real encoded images: results per request must equal
predicting that request's items alone, a bad item must fail only its own request, and
both the sequential and the pipelined schedule must give the same answers.
"""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from ofa_ve_engine import InvalidInputError, RequestCancelled, VisualEntailmentEngine
from ofa_ve_engine.serving import ExecutionHooks, ExecutionRunner, RequestInputs
from PIL import Image
from support.engine_tiny import png

IMAGES = [png((30 * i, 120, 200 - 20 * i), (24 + 9 * i, 18 + 5 * i)) for i in range(5)]


def jpeg_bytes(color: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def request(*items: tuple[bytes, str, str | None]) -> RequestInputs:
    return RequestInputs(
        [image for image, _, _ in items],
        [hyp.encode() for _, hyp, _ in items],
        [(premise or "").encode() for _, _, premise in items],
    )


@pytest.fixture(scope="module", params=[(1, False), (2, False), (2, True), (1, True)],
                ids=["inline", "pool", "pipelined", "pipelined-1-thread"])
def runner(request, tiny_engine: VisualEntailmentEngine):
    workers, pipelined = request.param
    # Two items per pass, so an execution of several requests spans several passes.
    engine = VisualEntailmentEngine(
        tiny_engine.settings, tiny_engine.tokenizer, tiny_engine.model,
        limits=tiny_engine.limits, forward_batch_size=2,
    )
    runner = ExecutionRunner(engine, workers=workers, pipelined=pipelined)
    yield runner
    runner.close()


def alone(engine: VisualEntailmentEngine, req: RequestInputs) -> np.ndarray:
    items = [engine.prepare(i, h, p) for i, h, p in zip(req.images, req.hypotheses, req.premises,
                                                          strict=True)]
    return engine.predict(items)


def test_each_request_gets_what_it_would_get_alone(runner: ExecutionRunner) -> None:
    requests = [
        request((IMAGES[0], "a red square.", None), (IMAGES[1], "two blue things", "a premise")),
        request((IMAGES[2], "Is this a dog?", None)),
        request((IMAGES[3], "tab\tand newline\n", None), (IMAGES[4], "CAPS", None),
                (IMAGES[0], "a third item", "premise!")),
    ]
    passes: list[int] = []
    prepared: list[float] = []
    hooks = ExecutionHooks(prepared=prepared.append,
                           forward_pass=lambda items, seconds: passes.append(items))
    outcomes = runner.run(requests, hooks)
    assert [o.error for o in outcomes] == [None, None, None]
    for req, outcome in zip(requests, outcomes, strict=True):
        assert outcome.probs.shape == (len(req), 3)
        np.testing.assert_allclose(outcome.probs, alone(runner.engine, req), atol=1e-5)
    assert sum(passes) == 6 and len(prepared) == 6


def test_a_bad_item_fails_its_request_alone(runner: ExecutionRunner) -> None:
    invalid: list[str] = []
    requests = [
        request((IMAGES[0], "fine", None)),
        request((IMAGES[1], "fine too", None), (b"not an image", "bad image", None)),
        request((IMAGES[2], "", None)),
        RequestInputs([IMAGES[0]], [b"gone"], None, lambda: True),  # its client has gone
        request((IMAGES[3], "also fine", None)),
    ]
    outcomes = runner.run(requests, ExecutionHooks(invalid=invalid.append))
    assert outcomes[0].error is None and outcomes[4].error is None
    assert isinstance(outcomes[1].error, InvalidInputError) and outcomes[1].failed_item == 1
    assert outcomes[1].error.input_name == "IMAGE" and outcomes[1].probs is None
    assert isinstance(outcomes[2].error, InvalidInputError)
    assert outcomes[2].error.input_name == "HYPOTHESIS"
    assert outcomes[3].probs is None and isinstance(outcomes[3].error, RequestCancelled)
    assert sorted(invalid) == ["HYPOTHESIS", "IMAGE"]
    np.testing.assert_allclose(outcomes[4].probs, alone(runner.engine, requests[4]), atol=1e-5)


class GoneAfter:
    """A client that goes away once `calls` questions about it have been answered."""

    def __init__(self, calls: int) -> None:
        self.calls = calls
        self._lock = threading.Lock()  # asked from the decoding threads too

    def __call__(self) -> bool:
        with self._lock:
            self.calls -= 1
            return self.calls < 0


def test_a_request_cancelled_during_its_execution_costs_no_more_work(
    runner: ExecutionRunner,
) -> None:
    """Its client went away after its first item was decoded: its other items are
    neither decoded nor run; the other requests of the execution are answered."""
    gone = request(*[(IMAGES[i], f"item {i}", None) for i in range(1, 5)])
    gone = RequestInputs(gone.images, gone.hypotheses, gone.premises, GoneAfter(1))
    kept = request((IMAGES[0], "still wanted", None))
    prepared: list[float] = []
    outcomes = runner.run([kept, gone], ExecutionHooks(prepared=prepared.append))
    assert outcomes[0].error is None
    np.testing.assert_allclose(outcomes[0].probs, alone(runner.engine, kept), atol=1e-5)
    assert isinstance(outcomes[1].error, RequestCancelled) and outcomes[1].probs is None
    assert outcomes[1].failed_item is None
    assert len(prepared) == 2  # the kept item and the gone request's first one


def test_a_request_cancelled_before_its_pass_is_not_run(runner: ExecutionRunner) -> None:
    """Every item prepared (one question each), then the client goes: no pass runs it."""
    items = [(IMAGES[i], f"item {i}", None) for i in range(3)]
    plain = request(*items)
    passes: list[int] = []
    hooks = ExecutionHooks(forward_pass=lambda n, seconds: passes.append(n))
    gone = RequestInputs(plain.images, plain.hypotheses, plain.premises, GoneAfter(3))
    outcomes = runner.run([gone], hooks)
    assert isinstance(outcomes[0].error, RequestCancelled) and passes == []


def test_a_request_cancelled_between_passes_is_not_run_further(runner: ExecutionRunner) -> None:
    """Its client goes after its items were decoded and its first question at a pass
    answered: at least its last pass is left out (how many ran depends on the schedule),
    its response says cancelled, and the other request is answered in full."""
    plain = request(*[(IMAGES[i], f"item {i}", None) for i in range(1, 4)])
    gone = RequestInputs(plain.images, plain.hypotheses, plain.premises, GoneAfter(4))
    kept = request((IMAGES[0], "still wanted", None), (IMAGES[4], "and this", None))
    passes: list[int] = []
    hooks = ExecutionHooks(forward_pass=lambda n, seconds: passes.append(n))
    outcomes = runner.run([kept, gone], hooks)
    assert isinstance(outcomes[1].error, RequestCancelled) and outcomes[1].probs is None
    assert outcomes[0].error is None
    np.testing.assert_allclose(outcomes[0].probs, alone(runner.engine, kept), atol=1e-5)
    assert sum(passes) < len(kept) + len(gone)


def test_a_failed_forward_pass_fails_its_requests(runner: ExecutionRunner, monkeypatch) -> None:
    def broken(items, **_: object) -> np.ndarray:
        raise RuntimeError("device lost (injected)")

    monkeypatch.setattr(runner.engine, "predict", broken)
    outcomes = runner.run([request((IMAGES[0], "x", None)), request((b"junk", "y", None))])
    assert "device lost (injected)" in str(outcomes[0].error)
    assert outcomes[0].failed_item is None
    assert isinstance(outcomes[1].error, InvalidInputError)
    many = runner.run([request((IMAGES[i], f"item {i}", None)) for i in range(5)])
    assert all("device lost" in str(o.error) and o.probs is None for o in many)


def test_an_item_refused_inside_the_pass_fails_its_request_alone(
    tiny_engine: VisualEntailmentEngine, monkeypatch
) -> None:
    """The GPU image path decodes JPEGs inside the forward pass; one the device (and the
    exact route after it) refuses must fail its own request, not the whole pass."""
    pytest.importorskip("torchvision")
    from ofa_ve_engine import gpu_image

    bad = jpeg_bytes((200, 40, 40), (40, 30))
    real_decode, rgb = gpu_image._decode_jpeg()

    def decode(encoded, **kwargs):  # nvJPEG refuses the bad file (and a batch holding it)
        if any(bytes(t.numpy()) == bad for t in encoded):
            raise RuntimeError("nvjpegDecode failed: corrupt scan (injected)")
        return real_decode(encoded, **kwargs)

    def cpu_route(data, *args, **kwargs):  # ... and so does the exact route
        if data == bad:
            raise InvalidInputError("IMAGE", "could not be decoded: corrupt scan (injected)")
        return real_load_pixels(data, *args, **kwargs)

    real_load_pixels = gpu_image.load_pixels
    monkeypatch.setattr(gpu_image, "_decode_jpeg", lambda: (decode, rgb))
    monkeypatch.setattr(gpu_image, "load_pixels", cpu_route)
    engine = VisualEntailmentEngine(tiny_engine.settings, tiny_engine.tokenizer, tiny_engine.model,
                                    limits=tiny_engine.limits, stem_cache_items=8)
    engine.image_path = "gpu"  # the device route on CPU tensors (torchvision's CPU decoder)
    invalid: list[str] = []
    runner = ExecutionRunner(engine, workers=2)
    requests = [request((IMAGES[0], "one", None)),
                request((IMAGES[1], "two", None), (bad, "three", None)),
                request((IMAGES[3], "four", None))]
    outcomes = runner.run(requests, ExecutionHooks(invalid=invalid.append))
    runner.close()
    assert outcomes[1].failed_item == 1 and "corrupt scan" in str(outcomes[1].error)
    assert invalid == ["IMAGE"]
    assert engine.take_stats().image_path_fallbacks == {"bad_file": 1}
    assert engine.gpu_image_decoder.off_reason is None  # one bad file keeps the decoder on
    for number in (0, 2):
        assert outcomes[number].error is None
        np.testing.assert_allclose(outcomes[number].probs, alone(tiny_engine, requests[number]),
                                   atol=1e-5)
    # Sent again: the unreadable image is refused again, not answered from the patch cache
    # (its embeddings came from zero pixels), while the good ones are cache hits.
    again = ExecutionRunner(engine, workers=2).run(requests[1:2])
    assert again[0].failed_item == 1 and "corrupt scan" in str(again[0].error)


def test_an_image_that_is_not_bytes_fails_its_request_alone(runner: ExecutionRunner) -> None:
    requests = [request((IMAGES[0], "fine", None)),
                RequestInputs(["a file name, not bytes"], [b"x"], [b""])]
    outcomes = runner.run(requests)
    assert outcomes[0].error is None
    assert isinstance(outcomes[1].error, InvalidInputError)
    assert outcomes[1].error.input_name == "IMAGE"


def test_a_pipelined_gpu_style_execution_runs_as_two_passes(
    tiny_engine: VisualEntailmentEngine,
) -> None:
    """A GPU engine takes any batch (``forward_batch_size=None``), so a pipelined execution of
    many distinct images is split in two: the second half is decoded while the first half's
    pass runs. An image's items stay in one pass (its stem runs once), and one image with
    many hypotheses is one pass: there is nothing to decode meanwhile."""
    engine = VisualEntailmentEngine(tiny_engine.settings, tiny_engine.tokenizer, tiny_engine.model,
                                    limits=tiny_engine.limits, forward_batch_size=None)
    engine.forward_batch_size = None  # as on a GPU (a CPU engine resolves None to 1)
    photos = [png((20 * i, 100, 240 - 20 * i), (20 + i, 16 + i)) for i in range(10)]
    distinct = [request((photos[i], f"item {i}", None)) for i in range(10)]
    shared = [request((photos[0], f"hypothesis {i}", None)) for i in range(10)]
    mixed = [request((photos[i % 9], f"item {i}", None)) for i in range(18)]  # 9 images x 2
    for requests, pipelined, expected in ((distinct, True, [5, 5]), (distinct, False, [10]),
                                          (shared, True, [10]), (mixed, True, [10, 8])):
        runner = ExecutionRunner(engine, workers=2, pipelined=pipelined)
        passes: list[int] = []
        hooks = ExecutionHooks(forward_pass=lambda n, s, passes=passes: passes.append(n))
        outcomes = runner.run(requests, hooks)
        runner.close()
        assert passes == expected, runner.describe()
        assert all(o.error is None for o in outcomes)
        for req, outcome in zip(requests, outcomes, strict=True):  # each in its own order
            np.testing.assert_allclose(outcome.probs, alone(engine, req), atol=1e-5)
    small = ExecutionRunner(engine, pipelined=True)
    assert small.pass_size(7) == 7 and small.pass_size(8) == 4  # too few items to split
    assert small.pass_size(64, images=1) == 64 and small.pass_size(64, images=8) == 32
    assert "two passes" in small.describe()
    small.close()
