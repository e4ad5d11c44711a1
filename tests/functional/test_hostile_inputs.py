"""Hostile and awkward inputs against a real tritonserver, with valid traffic alongside.

Every hostile request must come back INVALID_ARG with a message naming the input:
first each case on its own, then all of them at once interleaved with valid
requests, which Triton batches together with them and which must be answered
normally. Valid-but-odd images and text must simply work. At the end the model's
stub process is the same one as at the start: nothing here crashed it.

What answers what: Triton itself refuses requests that break the model's signature
(missing or unknown input, wrong datatype or shape, batch too large, malformed
BYTES framing) before `model.py` sees them; the engine refuses bad content
(undecodable or oversized images, bad text). Both must name the input.
"""

from __future__ import annotations

import io
import queue
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from ofa_ve_bench.soak import stub_pids
from ofa_ve_data.workload import TEST_IMAGES
from ofa_ve_engine.limits import InputLimits
from ofa_ve_ops.procfs import vm_kib
from PIL import Image
from support.hostile import payloads
from support.prometheus import by_label, scrape
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

MODEL = "ofa_visual_entailment"
LABELS = {"entailment", "neutral", "contradiction"}
LIMITS = InputLimits()
GOOD_IMAGE = TEST_IMAGES["tiny_50x40_png"].read_bytes()
GOOD_HYPOTHESIS = b"A cup of coffee stands on a saucer."
TIMEOUT_S = 120.0


def tensor(name: str, values: list, datatype: str = "BYTES", shape=None) -> tgrpc.InferInput:
    """One input tensor; BYTES values are a list of bytes, one per batch item."""
    if datatype == "BYTES":
        array = np.array(values, dtype=np.object_).reshape(-1, 1)
    else:
        array = np.asarray(values)
    if shape is not None:
        array = array.reshape(shape)
    inp = tgrpc.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    return inp


def request(
    image: bytes | None = GOOD_IMAGE,
    hypothesis: bytes | None = GOOD_HYPOTHESIS,
    premise: bytes | None = None,
) -> list[tgrpc.InferInput]:
    """A one-item request; None leaves that input out."""
    inputs = []
    if image is not None:
        inputs.append(tensor("IMAGE", [image]))
    if hypothesis is not None:
        inputs.append(tensor("HYPOTHESIS", [hypothesis]))
    if premise is not None:
        inputs.append(tensor("PREMISE", [premise]))
    return inputs


def batch_request(items: list[tuple[bytes, bytes]]) -> list[tgrpc.InferInput]:
    """One request holding several (image, hypothesis) items along the batch dimension."""
    return [
        tensor("IMAGE", [image for image, _ in items]),
        tensor("HYPOTHESIS", [hypothesis for _, hypothesis in items]),
    ]


def check_answer(result: tgrpc.InferResult, n: int = 1) -> np.ndarray:
    """Assert a well-formed answer for `n` items; returns PROBS."""
    labels = result.as_numpy("LABEL").reshape(-1)
    probs = result.as_numpy("PROBS").reshape(n, 3)
    assert len(labels) == n
    assert {label.decode() for label in labels} <= LABELS
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    return probs


@pytest.fixture(scope="module")
def client(triton_server) -> Iterator[tgrpc.InferenceServerClient]:
    with tgrpc.InferenceServerClient(triton_server.grpc_url) as c:
        yield c


@pytest.fixture(scope="module")
def stub_pid(triton_server, client) -> Iterator[int]:
    """The model's stub process at the start of the module; it must still be the same
    process, alive, once every hostile case has been sent."""
    check_answer(client.infer(MODEL, request(), client_timeout=TIMEOUT_S))
    pids = stub_pids(triton_server.pid)
    assert len(pids) >= 1, "no Python-backend stub process found under tritonserver"
    yield pids[0]
    assert pids[0] in stub_pids(triton_server.pid), "a hostile input killed the stub process"
    check_answer(client.infer(MODEL, request(), client_timeout=TIMEOUT_S))


def expect_invalid(
    client: tgrpc.InferenceServerClient, inputs: list, names: tuple[str, ...], reason: str
) -> str:
    """Send `inputs`; assert INVALID_ARGUMENT naming every one of `names` and `reason`."""
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, inputs, client_timeout=TIMEOUT_S)
    return check_invalid(info.value, names, reason)


def check_invalid(error: InferenceServerException, names: tuple[str, ...], reason: str) -> str:
    message = error.message()
    assert error.status() == "StatusCode.INVALID_ARGUMENT", (error.status(), message)
    for name in names:
        assert name in message, f"{name!r} not named in {message!r}"
    assert reason.lower() in message.lower(), f"{reason!r} not in {message!r}"
    return message


@dataclass(frozen=True)
class Case:
    inputs: Callable[[], list]
    names: tuple[str, ...]
    reason: str


def _wrong_dtype_image() -> list:
    return [
        tensor("IMAGE", np.zeros((1, 1), np.float32), "FP32"),
        tensor("HYPOTHESIS", [GOOD_HYPOTHESIS]),
    ]


def _wrong_dtype_hypothesis() -> list:
    return [
        tensor("IMAGE", [GOOD_IMAGE]),
        tensor("HYPOTHESIS", np.zeros((1, 1), np.int32), "INT32"),
    ]


def _wrong_shape() -> list:
    return [
        tensor("IMAGE", [GOOD_IMAGE, GOOD_IMAGE], shape=(1, 2)),
        tensor("HYPOTHESIS", [GOOD_HYPOTHESIS]),
    ]


def _mismatched_batch() -> list:
    return [
        tensor("IMAGE", [GOOD_IMAGE, GOOD_IMAGE]),
        tensor("HYPOTHESIS", [GOOD_HYPOTHESIS]),
    ]


def _unknown_input() -> list:
    return [*request(), tensor("EXTRA", [b"surprise"])]


def _batch_too_large() -> list:
    return batch_request([(GOOD_IMAGE, GOOD_HYPOTHESIS)] * 33)


TEN_THOUSAND_WORDS = " ".join(["word"] * 10_000).encode()

CASES: dict[str, Case] = {
    # Image content (the engine refuses these)
    "image_zero_bytes": Case(lambda: request(image=b""), ("IMAGE",), "empty"),
    "image_truncated_jpeg": Case(
        lambda: request(image=payloads.truncated(payloads.real_image())), ("IMAGE",), "truncated"
    ),
    "image_truncated_png": Case(
        lambda: request(image=payloads.truncated(payloads.real_image("gray_256x256_png"))),
        ("IMAGE",),
        "truncated",
    ),
    "image_text_file": Case(
        lambda: request(image=payloads.TEXT_POSING_AS_IMAGE), ("IMAGE",), "not an image"
    ),
    "image_png_header_100000x100000": Case(
        lambda: request(image=payloads.png_header_claiming(100_000, 100_000)), ("IMAGE",), "pixels"
    ),
    "image_jpeg_header_65500x65500": Case(
        lambda: request(image=payloads.jpeg_header_claiming(65_500, 65_500)), ("IMAGE",), "pixels"
    ),
    "image_gif_header_65535x65535": Case(
        lambda: request(image=payloads.gif_header_claiming(65_535, 65_535)), ("IMAGE",), "pixels"
    ),
    "image_jpeg_header_9000x5000": Case(
        lambda: request(image=payloads.jpeg_header_claiming(9_000, 5_000)),
        ("IMAGE",),
        "over the limit",
    ),
    "image_valid_but_over_pixel_limit": Case(
        lambda: request(image=payloads.over_pixel_limit(LIMITS.max_image_pixels)),
        ("IMAGE",),
        "over the limit",
    ),
    "image_over_byte_limit": Case(
        lambda: request(image=payloads.over_byte_limit(LIMITS.max_image_bytes)),
        ("IMAGE",),
        "over the limit",
    ),
    "image_corrupt_png_data": Case(
        lambda: request(image=payloads.corrupt_png_data()), ("IMAGE",), "could not be decoded"
    ),
    "image_tiff_not_accepted": Case(
        lambda: request(image=payloads.unaccepted_format("TIFF")), ("IMAGE",), "not accepted"
    ),
    # Text content
    "hypothesis_empty": Case(lambda: request(hypothesis=b""), ("HYPOTHESIS",), "empty"),
    "hypothesis_whitespace": Case(
        lambda: request(hypothesis=b" \t\n  \r\n"), ("HYPOTHESIS",), "empty"
    ),
    "hypothesis_10000_words": Case(
        lambda: request(hypothesis=TEN_THOUSAND_WORDS), ("HYPOTHESIS",), "over the limit"
    ),
    "hypothesis_invalid_utf8": Case(
        lambda: request(hypothesis=b"a cat \xff\xfe on a mat"), ("HYPOTHESIS",), "UTF-8"
    ),
    "hypothesis_overlong_utf8_encoding": Case(
        lambda: request(hypothesis=b"a slash \xc0\xaf here"), ("HYPOTHESIS",), "UTF-8"
    ),
    "hypothesis_nul_bytes": Case(
        lambda: request(hypothesis=b"a cat\x00 on a mat"), ("HYPOTHESIS",), "NUL"
    ),
    "premise_invalid_utf8": Case(
        lambda: request(premise=b"\xed\xa0\x80 lone surrogate"), ("PREMISE",), "UTF-8"
    ),
    "premise_nul_bytes": Case(lambda: request(premise=b"\x00\x00"), ("PREMISE",), "NUL"),
    "premise_too_long": Case(
        lambda: request(premise=b"x" * (LIMITS.max_text_bytes + 1)), ("PREMISE",), "over the limit"
    ),
    # The model's signature (Triton itself refuses these)
    "missing_image": Case(lambda: request(image=None), ("IMAGE",), "missing"),
    "missing_hypothesis": Case(lambda: request(hypothesis=None), ("HYPOTHESIS",), "missing"),
    "wrong_datatype_image_fp32": Case(_wrong_dtype_image, ("IMAGE",), "data-type"),
    "wrong_datatype_hypothesis_int32": Case(_wrong_dtype_hypothesis, ("HYPOTHESIS",), "data-type"),
    "wrong_shape_image_1x2": Case(_wrong_shape, ("IMAGE",), "shape"),
    "mismatched_batch_sizes": Case(_mismatched_batch, ("IMAGE",), "batch size does not match"),
    "unknown_input": Case(_unknown_input, ("EXTRA",), "unexpected"),
    "batch_over_max_batch_size": Case(_batch_too_large, ("batch",), "batch"),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_hostile_input_is_refused(client, stub_pid, case: Case):
    expect_invalid(client, case.inputs(), case.names, case.reason)


def invalid_counts(triton_server) -> dict[str, float]:
    """`ofa_ve_invalid_requests_total` by input, from the server's /metrics."""
    return by_label(scrape(triton_server.metrics_url), "ofa_ve_invalid_requests_total", "input")


def test_every_hostile_case_at_once_beside_valid_traffic(triton_server, client, stub_pid):
    """All hostile cases in flight at once, interleaved with valid requests: Triton
    batches them together (fewer executions than requests reaching the model), each
    hostile request fails alone with its own message, every valid one is answered, and
    the model's invalid-request counter counts each refusal under the input at fault."""

    def executions() -> int:
        stats = client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
        return int(stats.get("execution_count", 0))

    built = {name: case.inputs() for name, case in CASES.items()}
    sequence: list[tuple[str, list]] = []
    for n, (name, inputs) in enumerate(built.items()):
        if n % 8 == 0:
            sequence.append((f"valid-{n}", request(premise=b"A table." if n % 2 else None)))
        sequence.append((name, inputs))
    counts_before, executions_before = invalid_counts(triton_server), executions()
    answers: queue.Queue = queue.Queue()
    for name, inputs in sequence:
        client.async_infer(
            MODEL,
            inputs,
            callback=partial(lambda name, result, error: answers.put((name, result, error)), name),
            client_timeout=TIMEOUT_S,
        )
    outcomes = {}
    for _ in sequence:
        name, result, error = answers.get(timeout=TIMEOUT_S)
        outcomes[name] = (result, error)
    for name, (result, error) in outcomes.items():
        if name.startswith("valid-"):
            assert error is None, f"{name} failed beside the hostile requests: {error}"
            check_answer(result)
        else:
            assert error is not None, f"{name} was answered"
            check_invalid(error, CASES[name].names, CASES[name].reason)
    counts_after = invalid_counts(triton_server)
    refused_by_model = {name for name in CASES if not name.startswith(TRITON_REFUSES)}
    reaching_model = len(refused_by_model) + sum(n.startswith("valid-") for n in outcomes)
    assert executions() - executions_before < reaching_model, "no batching happened"
    for input_name in ("IMAGE", "HYPOTHESIS", "PREMISE"):
        expected = sum(
            1 for name in refused_by_model if name.split("_", 1)[0] == input_name.lower()
        )
        got = counts_after.get(input_name, 0) - counts_before.get(input_name, 0)
        assert got == expected, f"ofa_ve_invalid_requests_total{{input={input_name}}}: {got}"


TRITON_REFUSES = (
    "missing_",
    "wrong_",
    "mismatched_",
    "unknown_",
    "batch_",
)
"""Case-name prefixes of the requests Triton refuses before `model.py` sees them."""


def test_bad_item_fails_its_whole_request_only(client, stub_pid):
    """Triton answers per request: one bad item among three fails its request, with a
    message naming the input and the item; the same good items sent on their own are
    answered."""
    good = [(GOOD_IMAGE, GOOD_HYPOTHESIS), (TEST_IMAGES["bmp_120x80"].read_bytes(), b"Coffee.")]
    mixed = [good[0], (payloads.truncated(payloads.real_image()), b"A rocket."), good[1]]
    message = expect_invalid(client, batch_request(mixed), ("IMAGE",), "truncated")
    assert "item 1 of 3" in message, message
    check_answer(client.infer(MODEL, batch_request(good), client_timeout=TIMEOUT_S), n=2)


def test_malformed_bytes_framing_is_refused(triton_server, stub_pid):
    """A BYTES tensor's raw buffer is length-prefixed; a prefix claiming 2 GiB for a
    10-byte buffer must be refused by Triton, not read past the buffer."""
    lying = struct.pack("<I", 0x7FFF_FFFF) + b"0123456789"
    infer = service_pb2.ModelInferRequest(model_name=MODEL)
    for name, raw in (("IMAGE", lying), ("HYPOTHESIS", struct.pack("<I", 3) + b"cat")):
        tensor_pb = infer.inputs.add()
        tensor_pb.name, tensor_pb.datatype = name, "BYTES"
        tensor_pb.shape.extend([1, 1])
        infer.raw_input_contents.append(raw)
    with grpc.insecure_channel(triton_server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(infer, timeout=TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
    assert "IMAGE" in info.value.details(), info.value.details()


def test_decompression_bombs_cost_only_their_header(triton_server, client, stub_pid):
    """Images whose headers claim 10^10 or 4x10^9 pixels are refused from the header:
    neither the server's nor the stub's peak memory moves (no pixel buffer was made).
    How fast the refusal is: a benchmark matter, not asserted on a shared machine."""
    check_answer(client.infer(MODEL, request(), client_timeout=TIMEOUT_S))
    pids = (triton_server.pid, stub_pid)
    peak_before = [vm_kib(pid, "VmHWM") for pid in pids]
    bombs = [
        payloads.png_header_claiming(100_000, 100_000),
        payloads.jpeg_header_claiming(65_500, 65_500),
        payloads.gif_header_claiming(65_535, 65_535),
    ]
    for bomb in bombs:
        with pytest.raises(InferenceServerException) as info:
            client.infer(MODEL, request(image=bomb), client_timeout=TIMEOUT_S)
        check_invalid(info.value, ("IMAGE",), "pixels")
    check_answer(client.infer(MODEL, request(), client_timeout=TIMEOUT_S))
    growth_mib = [
        (vm_kib(pid, "VmHWM") - before) / 1024
        for pid, before in zip(pids, peak_before, strict=True)
    ]
    assert max(growth_mib) < 32, f"peak RSS grew by {growth_mib} MiB (server, stub)"


# Valid but odd: each must be answered like any other image.
ODD_IMAGES: dict[str, Callable[[], bytes]] = {
    "one_pixel_png": partial(payloads.one_by_one, "PNG"),
    "one_pixel_jpeg": partial(payloads.one_by_one, "JPEG"),
    "strip_4000x1_png": payloads.extreme_aspect,
    "cmyk_jpeg": TEST_IMAGES["cmyk_240x160_jpeg"].read_bytes,
    "png_16bit_gray": payloads.png_16bit_gray,
    "png_16bit_rgb": payloads.png_16bit_rgb,
    "png_palette_transparency": payloads.palette_with_transparency,
    "gif_palette_transparency": partial(payloads.palette_with_transparency, "GIF"),
    "png_animated_apng": partial(payloads.animated, "PNG"),
    "webp_animated": partial(payloads.animated, "WEBP"),
    "jpeg_with_trailing_bytes": lambda: payloads.real_image() + b"\x00" * 4096,
}


def test_valid_but_odd_images_are_answered(client, stub_pid):
    """Sent as one request of many items (one forward pass): every odd image works."""
    items = [(make(), f"Picture {name}.".encode()) for name, make in ODD_IMAGES.items()]
    check_answer(client.infer(MODEL, batch_request(items), client_timeout=TIMEOUT_S), len(items))


def test_animation_is_judged_on_its_first_frame(client, stub_pid):
    """An animated GIF is judged as its first frame (as ModelScope's Image.open does):
    the same answer as that frame sent alone, losslessly."""
    animation = payloads.animated("GIF")
    first_frame = payloads.encode(Image.open(io.BytesIO(animation)).convert("RGB"), "PNG")
    got, want = check_answer(
        client.infer(
            MODEL,
            batch_request([(animation, GOOD_HYPOTHESIS), (first_frame, GOOD_HYPOTHESIS)]),
            client_timeout=TIMEOUT_S,
        ),
        2,
    )
    assert np.allclose(got, want, atol=1e-5), (got, want)


def test_empty_premise_means_image_alone(client, stub_pid):
    """Empty and whitespace-only premises answer exactly as no premise at all."""
    results = [
        check_answer(client.infer(MODEL, request(premise=p), client_timeout=TIMEOUT_S))
        for p in (None, b"", b"   \t\n")
    ]
    assert np.allclose(results[1], results[0], atol=1e-6)
    assert np.allclose(results[2], results[0], atol=1e-6)


ODD_TEXT = {
    "at_byte_limit": ("x" * LIMITS.max_text_bytes).encode(),
    "non_ascii": "Ein Café, 咖啡, قهوة 🙂 on a table.".encode(),
    "url": b"http://127.0.0.1:9/photo.jpg is a photo of coffee",
    "sql": b"'; DROP TABLE images; --",
    "format_strings": b"{{7*7}} ${jndi:ldap://127.0.0.1/a} %s%s%n",
    "control_chars": b"\x1b[31mred\x1b[0m \x07\x08 coffee",
}


def test_odd_but_valid_text_is_answered(client, stub_pid):
    """Odd text is data, never interpreted: each item is answered."""
    items = [(GOOD_IMAGE, text) for text in ODD_TEXT.values()]
    check_answer(client.infer(MODEL, batch_request(items), client_timeout=TIMEOUT_S), len(items))
