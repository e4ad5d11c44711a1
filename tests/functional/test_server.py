"""The model repository served by a real tritonserver, over real gRPC.

What is checked, and against what:
- answers equal the engine run in this process on the same checkpoint (labels
  identical, probabilities within 1e-5), with and without PREMISE, one item or
  several per request;
- concurrent requests are batched (Triton's statistics and our own histogram);
- every bad input gets INVALID_ARG naming the input, while a valid request in
  flight at the same time is answered, and the server stays ready;
- READY only after the warm-up inference (the session's spare server, model
  unloaded, then loaded through the repository API while readiness is polled);
- the custom metrics on the metrics endpoint;
- `scripts/ofa_ve_ops/serve.py` (what `make serve` runs) from a fresh cache with the hub
  unreachable: demo weights announced loudly, READY, answers, Ctrl-C stops it.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from ofa_ve_data.workload import HYPOTHESES, PREMISES, TEST_IMAGES
from ofa_ve_engine import ANSWERS, LABELS
from ofa_ve_engine.demo_checkpoint import DEFAULT_SEED
from ofa_ve_ops.paths import MODEL_NAME
from ofa_ve_ops.procfs import descendants, process_state
from ofa_ve_ops.server_process import TritonServer, free_ports
from ofa_ve_ops.triton_runtime import has_gpu
from PIL import Image
from support.prometheus import metric, scrape
from support.repositories import copy_repository
from support.servers import running
from support.waiting import settled, wait_for
from tritonclient.utils import InferenceServerException

INVALID_ARG = "StatusCode.INVALID_ARGUMENT"
Item = tuple[bytes, "str | bytes", "str | bytes | None"]


def image(name: str) -> bytes:
    return TEST_IMAGES[name].read_bytes()


def _bytes_tensor(name: str, values: Sequence[bytes]) -> grpcclient.InferInput:
    array = np.empty((len(values), 1), dtype=np.object_)
    for row, value in enumerate(values):
        array[row, 0] = value
    tensor = grpcclient.InferInput(name, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


def _utf8(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def request_inputs(items: Sequence[Item], send_premise: bool | None = None) -> list:
    """IMAGE, HYPOTHESIS and (when any item has one, or asked) PREMISE, [N, 1] each."""
    inputs = [
        _bytes_tensor("IMAGE", [img for img, _, _ in items]),
        _bytes_tensor("HYPOTHESIS", [_utf8(h) for _, h, _ in items]),
    ]
    if send_premise or (send_premise is None and any(p is not None for _, _, p in items)):
        inputs.append(_bytes_tensor("PREMISE", [_utf8(p or b"") for _, _, p in items]))
    return inputs


def infer(url: str, inputs: list, timeout: float = 120) -> grpcclient.InferResult:
    with grpcclient.InferenceServerClient(url) as client:
        return client.infer(MODEL_NAME, inputs, client_timeout=timeout)


def outputs(result: grpcclient.InferResult) -> tuple[list[str], list[str], np.ndarray]:
    labels = [v.decode() for v in result.as_numpy("LABEL").reshape(-1)]
    answers = [v.decode() for v in result.as_numpy("ANSWER").reshape(-1)]
    return labels, answers, result.as_numpy("PROBS")


def engine_probs(engine, items: Sequence[Item]) -> np.ndarray:
    return engine.predict([engine.prepare(img, h, p) for img, h, p in items])


def assert_matches_engine(result: grpcclient.InferResult, engine, items: Sequence[Item]) -> None:
    labels, answers, probs = outputs(result)
    want = engine_probs(engine, items)
    assert probs.shape == (len(items), 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, want, rtol=0, atol=1e-5)
    assert labels == [LABELS[i] for i in want.argmax(axis=1)]
    assert answers == [ANSWERS[LABELS.index(label)] for label in labels]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def run_concurrently(calls: Sequence[Callable[[], object]]) -> list[object]:
    """Run the calls in threads released together; each slot: its result or exception."""
    results: list[object] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = calls[index]()
        except BaseException as exc:  # inspected by the caller
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not any(t.is_alive() for t in threads), "a request did not finish in 180 s"
    return results


# --------------------------------------------------------------------------- answers
ANSWER_CASES = [
    ("landscape_640x480_jpeg", HYPOTHESES[1], None),
    ("portrait_300x500_progressive_jpeg", HYPOTHESES[12], PREMISES[1]),
    ("exif_orientation6_400x300_jpeg", HYPOTHESES[5], None),
    ("rgba_200x164_png", HYPOTHESES[2], PREMISES[4]),
    ("webp_320x214", HYPOTHESES[9], ""),  # empty premise: the image alone
    ("gif_2frames_96x64", HYPOTHESES[15], None),
]


@pytest.mark.parametrize(("name", "hypothesis", "premise"), ANSWER_CASES)
def test_one_item_equals_the_engine_in_process(
    triton_server: TritonServer, demo_engine, name: str, hypothesis: str, premise: str | None
) -> None:
    items = [(image(name), hypothesis, premise)]
    assert_matches_engine(infer(triton_server.grpc_url, request_inputs(items)), demo_engine, items)


def test_premise_absent_and_empty_are_the_same(triton_server: TritonServer) -> None:
    items = [(image("tiny_50x40_png"), HYPOTHESES[0], None)]
    absent = outputs(infer(triton_server.grpc_url, request_inputs(items, send_premise=False)))
    empty = outputs(infer(triton_server.grpc_url, request_inputs(items, send_premise=True)))
    with_text = [(image("tiny_50x40_png"), HYPOTHESES[0], PREMISES[0])]
    premised = outputs(infer(triton_server.grpc_url, request_inputs(with_text)))
    assert absent[0] == empty[0]
    np.testing.assert_allclose(absent[2], empty[2], atol=1e-6)
    assert not np.allclose(absent[2], premised[2], atol=1e-4), "PREMISE had no effect"


def test_a_request_carrying_several_items(triton_server: TritonServer, demo_engine) -> None:
    names = [
        "square_480x480_jpeg_444",
        "gray_256x256_png",
        "palette_192x152_png",
        "bmp_120x80",
        "cmyk_240x160_jpeg",
    ]
    items = [(image(n), HYPOTHESES[i], PREMISES[i] if i % 2 else None) for i, n in enumerate(names)]
    assert_matches_engine(infer(triton_server.grpc_url, request_inputs(items)), demo_engine, items)


def test_concurrent_requests_are_batched(triton_server: TritonServer, grpc_client) -> None:
    def stats() -> tuple[int, int]:
        s = grpc_client.get_inference_statistics(MODEL_NAME).model_stats[0]
        return s.inference_count, s.execution_count

    def engine_batches() -> tuple[float, float]:
        samples = scrape(triton_server.metrics_url)
        return (
            metric(samples, "ofa_ve_engine_batch_size_count"),
            metric(samples, "ofa_ve_engine_batch_size_sum"),
        )

    items_before, executions_before = stats()
    passes_before, engine_items_before = engine_batches()
    img = image("tiny_50x40_png")
    # Every request carries PREMISE (empty): Triton batches only requests with the same
    # set of inputs, so a mix of requests with and without it would run one by one.
    calls = [
        (lambda i=i: infer(triton_server.grpc_url, request_inputs([(img, HYPOTHESES[i], "")])))
        for i in range(12)
    ]
    results = run_concurrently(calls)
    assert all(isinstance(r, grpcclient.InferResult) for r in results), results
    items_after, executions_after = settled(
        stats, lambda s: s[0] - items_before >= 12, "Triton's count of the 12 answered items"
    )
    passes_after, engine_items_after = engine_batches()

    items, executions = items_after - items_before, executions_after - executions_before
    assert items == 12
    assert items / executions > 1, f"{executions} executions for {items} items: no batching"
    # Our own histogram saw every item go through the engine, in passes no larger than
    # the engine batch (on CPU instances 1 item per pass: the fastest there).
    passes = passes_after - passes_before
    assert engine_items_after - engine_items_before == 12
    assert passes >= executions


# --------------------------------------------------------------------------- bad input
def _png_with_header_size(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR claims width x height (a decompression bomb)."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = 8 + 4  # signature, chunk length: the chunk type and data follow
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 4 + 13]))
    data[ihdr + 4 + 13 : ihdr + 4 + 13 + 4] = struct.pack(">I", crc)
    return bytes(data)


def _typed(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def bad_requests(limits: dict[str, int]) -> dict[str, tuple[list, str]]:
    """Name -> (inputs, the input the error must name)."""
    good = image("tiny_50x40_png")
    text_limit = limits["max_text_bytes"]
    side = int(limits["max_image_pixels"] ** 0.5) + 100
    return {
        "undecodable image": (request_inputs([(b"this is not an image", "a cat.", None)]), "IMAGE"),
        "empty image": (request_inputs([(b"", "a cat.", None)]), "IMAGE"),
        "truncated jpeg": (
            request_inputs([(image("landscape_640x480_jpeg")[:300], "x", None)]),
            "IMAGE",
        ),
        "empty hypothesis": (request_inputs([(good, "", None)]), "HYPOTHESIS"),
        "blank hypothesis": (request_inputs([(good, " \t\n", None)]), "HYPOTHESIS"),
        "hypothesis not utf-8": (request_inputs([(good, b"\xff\xfe caf\xe9", None)]), "HYPOTHESIS"),
        "hypothesis over the limit": (
            request_inputs([(good, "a" * (text_limit + 1), None)]),
            "HYPOTHESIS",
        ),
        "premise over the limit": (
            request_inputs([(good, "x", "b" * (text_limit + 1))]),
            "PREMISE",
        ),
        "premise not utf-8": (request_inputs([(good, "x", b"\xc3\x28")]), "PREMISE"),
        "image over the byte limit": (
            request_inputs([(good + bytes(limits["max_image_bytes"]), "x", None)]),
            "IMAGE",
        ),
        "image over the pixel limit": (
            request_inputs([(_png_with_header_size(side, side), "x", None)]),
            "IMAGE",
        ),
        "one bad item among several": (
            request_inputs([(good, "x", None), (b"junk", "y", None), (good, "z", None)]),
            "IMAGE",
        ),
        # Rejected by Triton itself, before the model: declared type and shape.
        "image sent as INT32": (
            [
                _typed("IMAGE", np.zeros((1, 1), np.int32), "INT32"),
                _bytes_tensor("HYPOTHESIS", [b"a cat."]),
            ],
            "IMAGE",
        ),
        "hypothesis sent as FP32": (
            [
                _bytes_tensor("IMAGE", [good]),
                _typed("HYPOTHESIS", np.zeros((1, 1), np.float32), "FP32"),
            ],
            "HYPOTHESIS",
        ),
        "image of shape [1, 2]": (
            [
                _typed("IMAGE", np.array([[good, good]], dtype=np.object_), "BYTES"),
                _bytes_tensor("HYPOTHESIS", [b"a cat."]),
            ],
            "IMAGE",
        ),
        "image without the item dimension": (
            [
                _typed("IMAGE", np.array([good], dtype=np.object_), "BYTES"),
                _bytes_tensor("HYPOTHESIS", [b"a cat."]),
            ],
            "IMAGE",
        ),
        "hypothesis missing": ([_bytes_tensor("IMAGE", [good])], "HYPOTHESIS"),
    }


def test_bad_inputs_fail_alone_and_the_server_keeps_serving(
    triton_server: TritonServer, grpc_client, demo_engine
) -> None:
    config = grpc_client.get_model_config(MODEL_NAME, as_json=True)["config"]
    limits = {
        key: int(config["parameters"][key]["string_value"])
        for key in ("max_image_bytes", "max_image_pixels", "max_text_bytes")
    }
    cases = bad_requests(limits)
    valid = [(image("wide_1024x256_jpeg"), HYPOTHESES[10], PREMISES[3])]
    invalid_before = metric(scrape(triton_server.metrics_url), "ofa_ve_invalid_requests_total")

    # A multi-item request first keeps the instance busy, so the bad requests and the
    # valid one below queue up together and reach execute() in the same batches.
    blocker = [(image("landscape_640x480_jpeg"), h, None) for h in HYPOTHESES[:6]]
    calls = [lambda: infer(triton_server.grpc_url, request_inputs(blocker))]
    calls += [
        lambda inputs=inputs: infer(triton_server.grpc_url, inputs) for inputs, _ in cases.values()
    ]
    calls.append(lambda: infer(triton_server.grpc_url, request_inputs(valid)))
    results = run_concurrently(calls)

    assert isinstance(results[0], grpcclient.InferResult), results[0]
    assert_matches_engine(results[-1], demo_engine, valid)
    for (case, (_, input_name)), result in zip(cases.items(), results[1:-1], strict=True):
        assert isinstance(result, InferenceServerException), f"{case}: answered {result}"
        assert result.status() == INVALID_ARG, f"{case}: {result.status()} {result.message()}"
        assert input_name in result.message(), f"{case}: {result.message()}"
    multi = results[1 + list(cases).index("one bad item among several")]
    assert "item 1 of 3" in multi.message()

    assert grpc_client.is_server_ready() and grpc_client.is_model_ready(MODEL_NAME)
    assert_matches_engine(infer(triton_server.grpc_url, request_inputs(valid)), demo_engine, valid)
    samples = scrape(triton_server.metrics_url)
    # Each case that reached the model was counted under the input it named.
    reached = sum(1 for c in cases if not re.search(r"INT32|FP32|shape|dimension|missing", c))
    assert metric(samples, "ofa_ve_invalid_requests_total") - invalid_before == reached
    assert metric(samples, "ofa_ve_invalid_requests_total", input="PREMISE") >= 2


# --------------------------------------------------------------------------- metrics
def test_custom_metrics_are_exported(triton_server: TritonServer) -> None:
    infer(triton_server.grpc_url, request_inputs([(image("bmp_120x80"), HYPOTHESES[3], None)]))
    samples = scrape(triton_server.metrics_url)
    labels = {"model": MODEL_NAME, "version": "1"}
    assert metric(samples, "ofa_ve_preprocess_duration_seconds_count", **labels) >= 1
    assert metric(samples, "ofa_ve_preprocess_duration_seconds_sum", **labels) > 0
    assert metric(samples, "ofa_ve_forward_duration_seconds_count", **labels) >= 1
    assert metric(samples, "ofa_ve_engine_batch_size_count", **labels) >= 1
    assert metric(samples, "ofa_ve_engine_batch_size_bucket", le="32", **labels) >= 1
    assert metric(samples, "ofa_ve_warmup_duration_seconds", **labels) > 0
    assert metric(samples, "ofa_ve_model_info", weights="demo", device="cpu", **labels) == 1
    for name in ("IMAGE", "HYPOTHESIS", "PREMISE"):
        metric(samples, "ofa_ve_invalid_requests_total", input=name, **labels)
    # Triton's own per-model metrics are there too.
    assert metric(samples, "nv_inference_request_success", model=MODEL_NAME) >= 1


# --------------------------------------------------------------------------- readiness
def test_ready_only_after_the_warm_up(spare_server: TritonServer) -> None:
    """Load the model through the repository API while polling its readiness: on the
    session's spare server (explicit model control), the model unloaded first, and
    loaded again (so left READY) whatever happens."""
    server = spare_server
    client = grpcclient.InferenceServerClient(server.grpc_url)
    loading = threading.Thread(target=client.load_model, args=(MODEL_NAME,))
    try:
        client.unload_model(MODEL_NAME)
        deadline = time.monotonic() + 120  # for the wait only
        while client.is_model_ready(MODEL_NAME):
            if time.monotonic() >= deadline:  # a deadline for the wait
                pytest.fail("model still ready 120 s after its unload")
            time.sleep(0.05)
        log_from = len(server.log_text())  # what this load writes comes after
        deadline = time.monotonic() + 240  # for the wait only
        loading.start()
        not_ready_polls, refused_during_load = 0, None
        while not client.is_model_ready(MODEL_NAME):
            if time.monotonic() >= deadline:  # a deadline for the wait
                pytest.fail("model not ready after 240 s")
            not_ready_polls += 1
            if refused_during_load is None and not_ready_polls == 5:
                inputs = request_inputs([(image("tiny_50x40_png"), "x", None)])
                try:
                    client.infer(MODEL_NAME, inputs, client_timeout=30)
                    refused_during_load = False
                except InferenceServerException as exc:
                    refused_during_load = exc.status() != "StatusCode.DEADLINE_EXCEEDED"
            time.sleep(0.05)
        # At the first moment the model reports ready, the warm-up has run: its
        # duration gauge is set as the last step of initialize().
        samples = scrape(server.metrics_url)
        warmup_s = metric(samples, "ofa_ve_warmup_duration_seconds", model=MODEL_NAME)
        loading.join(60)
        log = server.log_text()[log_from:]
    finally:
        if loading.is_alive():
            loading.join(240)
        if not client.is_model_ready(MODEL_NAME):
            client.load_model(MODEL_NAME)  # the spare server stays usable
        client.close()

    assert not_ready_polls >= 5, "the model was ready at once: its load was not observed"
    assert refused_during_load, "an inference during loading was not refused"
    assert warmup_s > 0  # set by the warm-up, the last step before READY (see the log)
    # The stub's own lines keep their order among themselves; Triton's "successfully
    # loaded" is only checked for presence: the backend relays the stub's log lines
    # from a thread of its own, so one can be written after Triton's next line (seen
    # once in a full run). The gauge above is what shows the order against READY.
    assert log.index("loaded demo weights") < log.index("warm-up finished")
    assert "successfully loaded" in log
    assert "RANDOM DEMO WEIGHTS" in log


# --------------------------------------------------------------------------- make serve
def _serve_env(tmp_path: Path, hub: str, **extra: str) -> tuple[dict[str, str], int, int]:
    """`make serve`'s environment on free ports, the caches in tmp_path; hub endpoint."""
    http_port, grpc_port, metrics_port = free_ports(3)
    env = {k: v for k, v in os.environ.items() if k != "OFA_VE_MODEL_DIR"}
    env.update(
        OFA_VE_HTTP_PORT=str(http_port),
        OFA_VE_GRPC_PORT=str(grpc_port),
        OFA_VE_METRICS_PORT=str(metrics_port),
        OFA_VE_CACHE_DIR=str(tmp_path / "cache"),
        OFA_VE_MODEL_CACHE=str(tmp_path / "hub-cache"),
        MODELSCOPE_ENDPOINT=hub,
        HOME=str(tmp_path / "home"),  # the hub client writes a session file there
        **extra,
    )
    return env, http_port, grpc_port


def _serve_answers_and_stops(
    env: dict[str, str],
    grpc_port: int,
    log_path: Path,
    repository: Path,
    answers: Callable[[grpcclient.InferenceServerClient], None] | None = None,
) -> str:
    """Run serve.py as `make serve` does, on `repository` (a copy of the committed one:
    serve.py links weights into it, which must not touch the checkout): READY, one
    answer (checked by `answers` when given), Ctrl-C stops it and every process it
    started. Returns its log."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ofa_ve_ops.serve", "--model-repository", str(repository)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal would give it
        )
    tree: list[int] = []
    try:
        deadline = time.monotonic() + 240  # for the wait only
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        while True:
            assert process.poll() is None, f"serve.py exited:\n{log_path.read_text()[-3000:]}"
            if time.monotonic() >= deadline:  # a deadline for the wait
                pytest.fail("not READY after 240 s")
            try:
                if client.is_server_ready():
                    break
            except InferenceServerException:
                pass
            time.sleep(0.2)
        result = client.infer(
            MODEL_NAME, request_inputs([(image("tiny_50x40_png"), HYPOTHESES[0], None)])
        )
        assert outputs(result)[0][0] in LABELS
        if answers is not None:
            answers(client)
        client.close()

        # Ctrl-C in a terminal: SIGINT to the whole foreground process group (the
        # watchdog, which runs tritonserver and its stubs in a group of their own).
        tree = descendants(process.pid)
        assert len(tree) >= 2, tree  # tritonserver and a stub at least
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(30) == 0
        wait_for(
            lambda: all(process_state(p) in (None, "Z") for p in tree),
            "every process serve.py started to exit after Ctrl-C",
            15,
        )
    finally:
        for pid in [process.pid, *(tree or descendants(process.pid))]:  # nothing outlives it
            if process_state(pid) not in (None, "Z"):
                os.kill(pid, signal.SIGKILL)
        process.wait(10)
    return log_path.read_text(errors="replace")


@pytest.mark.server
@pytest.mark.slow
def test_serve_script_from_a_fresh_cache_with_the_hub_unreachable(tmp_path: Path) -> None:
    """What `make serve` runs: demo weights announced, READY, answers, Ctrl-C stops it."""
    # A hub endpoint on a loopback port nobody listens on: unreachable here and
    # everywhere else, so this always exercises the fallback.
    (dead_port,) = free_ports(1)
    env, http_port, grpc_port = _serve_env(tmp_path, f"http://127.0.0.1:{dead_port}")
    repository = copy_repository(tmp_path / "repository", {"1": None})
    text = _serve_answers_and_stops(env, grpc_port, tmp_path / "serve.log", repository)
    assert "THE MODELSCOPE HUB IS UNREACHABLE" in text
    assert "DEMO CHECKPOINT WITH RANDOM WEIGHTS" in text
    assert "RANDOM DEMO WEIGHTS" in text  # the model's own log line, from tritonserver
    assert f"Started GRPCInferenceService at 127.0.0.1:{grpc_port}" in text
    assert f"Started HTTPService at 127.0.0.1:{http_port}" in text
    demo = tmp_path / "cache" / f"demo-checkpoint-seed{DEFAULT_SEED}"
    assert (demo / "pytorch_model.bin").is_file()
    # The weights reach the model through its version folder: a link to the demo.
    weights = repository / MODEL_NAME / "1" / "weights"
    assert weights.is_symlink() and weights.resolve() == demo.resolve()
    assert "overriding the version folder's own" not in text  # no OFA_VE_MODEL_DIR
    if not has_gpu():
        # On a CPU machine no alarming line goes unexplained: GPU metrics are off (no
        # NVML or DCGM errors), and the one CUDA line Triton always logs is announced.
        assert "NVML" not in text and "DCGM" not in text, text[:3000]
        errors = [line for line in text.splitlines() if re.match(r"E\d{4} ", line)]
        unexplained = [e for e in errors if "CudaDriverHelper has not been initialized" not in e]
        assert not unexplained, unexplained
        if errors:  # the explanation comes before Triton's own line
            assert text.index("expected and harmless") < text.index(errors[0])


@pytest.mark.server
@pytest.mark.slow
def test_serve_script_uses_the_cached_model_while_the_hub_is_down(
    tmp_path: Path, demo_model_dir: Path
) -> None:
    """The model was fetched once (from a loopback hub speaking ModelScope's protocol, to
    the real client); the hub then goes away. A restart must serve those cached weights,
    never a random demo checkpoint."""
    from ofa_ve_ops.fetch_model import MODEL_ID
    from support.hub_emulator import HubEmulator

    env, _, grpc_port = _serve_env(tmp_path, "")
    with HubEmulator({MODEL_ID: demo_model_dir}) as hub:
        fetched = subprocess.run(
            [sys.executable, "-m", "ofa_ve_ops.fetch_model"],
            env={**env, "MODELSCOPE_ENDPOINT": hub.endpoint},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    cached = Path(fetched.stdout.strip())
    assert cached.is_relative_to(tmp_path / "hub-cache")
    (dead_port,) = free_ports(1)
    env["MODELSCOPE_ENDPOINT"] = f"http://127.0.0.1:{dead_port}"  # the hub is down now
    repository = copy_repository(tmp_path / "repository", {"1": None})
    text = _serve_answers_and_stops(env, grpc_port, tmp_path / "serve.log", repository)
    assert "Using the complete copy already in the cache" in text
    assert f"its complete cached copy): {cached.resolve()}" in text
    assert "DEMO CHECKPOINT WITH RANDOM WEIGHTS" not in text
    assert f"weights from {cached.resolve()} on" in text  # what the model itself loaded
    assert not (tmp_path / "cache" / f"demo-checkpoint-seed{DEFAULT_SEED}").exists()


# ------------------------------------------------------------ weights in version folders
VERSION_ITEMS: list[Item] = [
    (image("landscape_640x480_jpeg"), HYPOTHESES[1], None),
    (image("rgba_200x164_png"), HYPOTHESES[2], PREMISES[4]),
]


def _version_probs(client: grpcclient.InferenceServerClient, version: str) -> np.ndarray:
    result = client.infer(
        MODEL_NAME, request_inputs(VERSION_ITEMS), model_version=version, client_timeout=120
    )
    return outputs(result)[2]


@pytest.mark.server
@pytest.mark.slow
def test_two_versions_each_answer_with_their_own_weights(
    tmp_path: Path, demo_model_dir: Path, demo_engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Versions 1 and 2 side by side (version_policy all), each with a different demo
    checkpoint in its <version>/weights/ and no OFA_VE_MODEL_DIR anywhere: each answers
    as its own checkpoint does in-process."""
    from ofa_ve_engine import VisualEntailmentEngine
    from ofa_ve_engine.demo_checkpoint import write_demo_checkpoint

    other = write_demo_checkpoint(tmp_path / "seed-7", seed=7)
    repository = copy_repository(
        tmp_path / "repository",
        {"1": demo_model_dir, "2": other},
        config_suffix="\nversion_policy: { all {} }\n",
    )
    monkeypatch.delenv("OFA_VE_MODEL_DIR", raising=False)
    server = TritonServer(repository, log_dir=tmp_path / "log")
    assert server.model_dir is None and "OFA_VE_MODEL_DIR" not in server.environment()
    with running(server), grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert client.is_model_ready(MODEL_NAME, "1") and client.is_model_ready(MODEL_NAME, "2")
        first, second = _version_probs(client, "1"), _version_probs(client, "2")
        log = server.log_text()
    np.testing.assert_allclose(first, engine_probs(demo_engine, VERSION_ITEMS), rtol=0, atol=1e-5)
    own = VisualEntailmentEngine.from_model_dir(repository / MODEL_NAME / "2" / "weights",
                                                device="cpu")
    np.testing.assert_allclose(second, engine_probs(own, VERSION_ITEMS), rtol=0, atol=1e-5)
    assert np.abs(first - second).max() > 1e-3  # two checkpoints, two sets of answers
    for version in ("1", "2"):
        weights = (repository / MODEL_NAME / version / "weights").resolve()
        assert f"weights from {weights} on" in log
    assert "overriding the version folder's own" not in log


@pytest.mark.server
@pytest.mark.slow
def test_a_copied_repository_serves_with_serve_and_no_environment(
    tmp_path: Path, demo_model_dir: Path, demo_engine
) -> None:
    """A repository laid out as `make serve` leaves it (1/weights a link) and copied
    elsewhere with the links followed (`cp -rL`) is self-contained: `serve
    --model-repository COPY`, no OFA_VE_MODEL_DIR and the hub unreachable, serves its
    own weights and fetches nothing."""
    original = copy_repository(tmp_path / "original", {"1": None})
    (original / MODEL_NAME / "1" / "weights").symlink_to(demo_model_dir)
    copy = tmp_path / "elsewhere" / "repository"
    shutil.copytree(original, copy, symlinks=False)  # cp -rL
    shutil.rmtree(original)
    weights = copy / MODEL_NAME / "1" / "weights"
    assert weights.is_dir() and not weights.is_symlink()
    (dead_port,) = free_ports(1)
    env, _, grpc_port = _serve_env(tmp_path, f"http://127.0.0.1:{dead_port}")
    assert "OFA_VE_MODEL_DIR" not in env

    def answers(client: grpcclient.InferenceServerClient) -> None:
        probs = _version_probs(client, "1")
        np.testing.assert_allclose(probs, engine_probs(demo_engine, VERSION_ITEMS), atol=1e-5)

    text = _serve_answers_and_stops(env, grpc_port, tmp_path / "serve.log", copy, answers)
    assert f"version 1: its own weights, {weights}" in text
    assert f"weights from {weights} on" in text
    assert "fetching" not in text and "UNREACHABLE" not in text
    assert not weights.is_symlink()  # serve.py left the operator's weights alone
