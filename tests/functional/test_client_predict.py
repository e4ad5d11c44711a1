"""ofa_ve_client.VisualEntailmentClient.predict against a real tritonserver.

Every accepted image form (bytes, str path, Path, PIL image, binary file,
http(s) URL fetched by the client from a local http.server) must reach the
server as the same pixels and so get the same answer.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import math
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from ofa_ve_client import (
    ANSWERS,
    LABELS,
    ImageFetchError,
    ImageFetchOptions,
    InvalidInputError,
    Prediction,
    VisualEntailmentClient,
)
from ofa_ve_data.workload import TEST_IMAGES
from PIL import Image

JPEG = TEST_IMAGES["landscape_640x480_jpeg"]
PNG = TEST_IMAGES["tiny_50x40_png"]
HYPOTHESIS = "A woman in an orange suit is smiling."


@pytest.fixture(scope="module")
def client(triton_server) -> Iterator[VisualEntailmentClient]:
    with VisualEntailmentClient(triton_server.grpc_url, timeout=60) as c:
        yield c


class _ImageSite(http.server.BaseHTTPRequestHandler):
    """Serves test images and misbehaving endpoints on 127.0.0.1."""

    protocol_version = "HTTP/1.1"
    hits: list[str]
    release: threading.Event  # /slow.jpg answers only once this is set (at teardown)

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: bytes, ctype: str = "image/jpeg", length: bool = True):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.hits.append(self.path)
        path = self.path.split("?", 1)[0]
        if path == "/photo.jpg":
            self._send(200, JPEG.read_bytes())
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/photo.jpg")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/unsized.jpg":  # no Content-Length: the cap must apply while streaming
            self.close_connection = True
            self._send(200, JPEG.read_bytes(), length=False)
        elif path == "/slow.jpg":  # never answers in time: only a read timeout ends it
            self.release.wait(60)
            with contextlib.suppress(OSError):  # the client has long gone
                self._send(200, JPEG.read_bytes())
        else:
            self._send(404, b"not found", "text/plain")


@pytest.fixture(scope="module")
def image_site() -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []
    release = threading.Event()
    handler = type("Handler", (_ImageSite,), {"hits": hits, "release": release})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def check_prediction(p: Prediction) -> None:
    """The contract: a known label, OFA's answer for it, probabilities that sum to 1."""
    assert p.label in LABELS
    assert p.answer == ANSWERS[LABELS.index(p.label)]
    assert list(p.probs) == list(LABELS)
    assert math.isclose(sum(p.probs.values()), 1.0, abs_tol=1e-4)
    assert all(0.0 <= v <= 1.0 for v in p.probs.values())
    assert p.score == p.probs[p.label] == max(p.probs.values())
    assert p.to_modelscope() == {"labels": p.answer, "scores": p.score}


def assert_same(a: Prediction, b: Prediction) -> None:
    assert a.label == b.label
    for name in LABELS:
        assert a.probs[name] == pytest.approx(b.probs[name], abs=1e-5)


def test_bytes_path_str_path_and_file_object_agree(client):
    reference = client.predict(JPEG.read_bytes(), HYPOTHESIS)
    check_prediction(reference)
    assert_same(client.predict(str(JPEG), HYPOTHESIS), reference)
    assert_same(client.predict(JPEG, HYPOTHESIS), reference)
    assert_same(client.predict(bytearray(JPEG.read_bytes()), HYPOTHESIS), reference)
    with JPEG.open("rb") as fh:
        assert_same(client.predict(fh, HYPOTHESIS), reference)


@pytest.mark.parametrize("name", ["landscape_640x480_jpeg", "palette_192x152_png"])
def test_pil_image_is_sent_losslessly(client, name):
    """A PIL image goes out as PNG: the server decodes exactly the pixels the caller had."""
    path = TEST_IMAGES[name]
    with Image.open(path) as im:
        im.load()
        from_pil = client.predict(im, HYPOTHESIS)
    assert_same(from_pil, client.predict(path, HYPOTHESIS))


def test_pil_image_in_a_mode_png_cannot_store(client):
    cmyk = TEST_IMAGES["cmyk_240x160_jpeg"]
    with Image.open(cmyk) as im:
        assert im.mode == "CMYK"
        check_prediction(client.predict(im, HYPOTHESIS))


def test_url_is_fetched_by_the_client(client, image_site):
    base, hits = image_site
    hits.clear()
    from_url = client.predict(f"{base}/photo.jpg?token=secret", HYPOTHESIS)
    assert_same(from_url, client.predict(JPEG, HYPOTHESIS))
    assert hits == ["/photo.jpg?token=secret"]  # fetched exactly once, here
    assert_same(client.predict(f"{base}/redirect", HYPOTHESIS), from_url)


def test_url_failures_name_the_image_and_hide_the_query(client, image_site):
    base, _ = image_site
    with pytest.raises(ImageFetchError) as info:
        client.predict(f"{base}/missing.jpg?token=secret", HYPOTHESIS)
    assert info.value.input_name == "IMAGE"
    assert "404" in str(info.value)
    assert "secret" not in str(info.value)
    assert info.value.status is None  # raised by the client; nothing was sent


def test_url_size_cap_and_timeouts(triton_server, image_site):
    base, _ = image_site
    size = JPEG.stat().st_size
    tight = ImageFetchOptions(max_bytes=size - 1, read_timeout=0.3, connect_timeout=2)
    with VisualEntailmentClient(triton_server.grpc_url, image_fetch=tight) as c:
        for path in ("/photo.jpg", "/unsized.jpg"):  # declared length, then streamed
            with pytest.raises(ImageFetchError, match="cap"):
                c.predict(f"{base}{path}", HYPOTHESIS)
        # /slow.jpg sends nothing until the test is over: the read timeout ends the wait.
        with pytest.raises(ImageFetchError, match=r"(?i)timed? ?out"):
            c.predict(f"{base}/slow.jpg", HYPOTHESIS)
    roomy = ImageFetchOptions(max_bytes=size)
    with VisualEntailmentClient(triton_server.grpc_url, image_fetch=roomy) as c:
        check_prediction(c.predict(f"{base}/unsized.jpg", HYPOTHESIS))


def test_premise_changes_the_prompt_and_empty_premise_means_none(client):
    without = client.predict(PNG, HYPOTHESIS)
    with_premise = client.predict(PNG, HYPOTHESIS, premise="A person stands in a field.")
    check_prediction(with_premise)
    assert with_premise.probs != without.probs
    assert_same(client.predict(PNG, HYPOTHESIS, premise=""), without)


def test_matches_the_engine_run_in_process(client, demo_engine):
    """PROBS order and label mapping survive the trip: compare with the engine itself."""
    engine = demo_engine
    image = JPEG.read_bytes()
    for premise in (None, "A person stands in a field."):
        probs = engine.predict([engine.prepare(image, HYPOTHESIS, premise=premise)])[0]
        served = client.predict(image, HYPOTHESIS, premise=premise)
        assert [served.probs[name] for name in LABELS] == pytest.approx(probs.tolist(), abs=1e-5)
        assert served.label == LABELS[int(probs.argmax())]


@pytest.mark.parametrize(
    ("image", "hypothesis", "premise", "input_name"),
    [
        (b"not an image at all", HYPOTHESIS, None, "IMAGE"),
        (PNG, "   ", None, "HYPOTHESIS"),
        (PNG, 42, None, "HYPOTHESIS"),
        (PNG, HYPOTHESIS, 3.5, "PREMISE"),
        (Path("/nonexistent/picture.jpg"), HYPOTHESIS, None, "IMAGE"),
        ("ftp://example.invalid/x.jpg", HYPOTHESIS, None, "IMAGE"),
        (b"", HYPOTHESIS, None, "IMAGE"),
        (12345, HYPOTHESIS, None, "IMAGE"),
    ],
)
def test_bad_input_names_the_input(client, image, hypothesis, premise, input_name):
    with pytest.raises(InvalidInputError) as info:
        client.predict(image, hypothesis, premise)
    assert info.value.input_name == input_name
    assert input_name in str(info.value)


def test_server_side_rejection_carries_status_and_message(client):
    with pytest.raises(InvalidInputError) as info:
        client.predict(b"\x89PNG\r\n\x1a\n truncated", HYPOTHESIS)
    err = info.value
    assert err.status == "INVALID_ARGUMENT"
    assert err.input_name == "IMAGE"
    assert err.message  # the server's own words
    assert isinstance(err, ValueError)
    # The server keeps serving after a bad request.
    check_prediction(client.predict(PNG, HYPOTHESIS))


def test_server_and_model_helpers(client):
    assert client.is_server_ready()
    assert client.is_model_ready()
    assert client.max_batch_size() >= 32
    meta = client.server_metadata()
    assert meta["name"] == "triton"
    inputs = {t["name"] for t in client.model_metadata()["inputs"]}
    assert inputs == {"IMAGE", "HYPOTHESIS", "PREMISE"}
    assert client.model_config()["max_batch_size"] == client.max_batch_size()
    [entry] = client.health()
    assert entry == {"url": client.config.urls[0], "live": True, "ready": True, "model_ready": True}


def test_closed_client_refuses_calls(triton_server):
    from ofa_ve_client import ClientClosedError

    c = VisualEntailmentClient(triton_server.grpc_url)
    c.close()
    with pytest.raises(ClientClosedError):
        c.predict(PNG, HYPOTHESIS)


def test_pil_png_round_trip_is_exact():
    """The encoder the client uses keeps every pixel (palette, alpha and gray included)."""
    from ofa_ve_client.images import encode_pil

    for name in ("palette_192x152_png", "rgba_200x164_png", "gray_256x256_png"):
        with Image.open(TEST_IMAGES[name]) as im:
            im.load()
            with Image.open(io.BytesIO(encode_pil(im))) as back:
                assert back.mode == im.mode
                assert back.tobytes() == im.tobytes()


def test_files_and_file_objects_are_read_only_up_to_the_cap(tmp_path: Path):
    """One byte cap for every source (ImageFetchOptions.max_bytes): a larger file, a
    device that never ends, or a file object is refused after cap + 1 bytes, never read
    whole (the SDK once read /dev/zero until the kernel killed it)."""
    from ofa_ve_client.images import load_image
    from ofa_ve_client.url_fetch import UrlFetcher

    fetcher = UrlFetcher(ImageFetchOptions(max_bytes=1000))
    photo = TEST_IMAGES["tiny_50x40_png"]
    small = tmp_path / "small.png"
    small.write_bytes(photo.read_bytes()[:1000])
    assert load_image(small, fetcher) == photo.read_bytes()[:1000]
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 1001)
    for source, shown in ((big, str(big)), (io.BytesIO(b"x" * 5000), "the file object")):
        with pytest.raises(InvalidInputError, match=f"{shown} is over the 1000-byte cap"):
            load_image(source, fetcher)
    if Path("/dev/zero").exists():
        with pytest.raises(InvalidInputError, match="over the 1000-byte cap"):
            load_image("/dev/zero", fetcher)
    with pytest.raises(InvalidInputError, match="binary mode"):
        load_image(io.StringIO("text"), fetcher)

    class Trickle(io.RawIOBase):
        """A raw stream that hands out at most 7 bytes a read, as a socket may."""

        def __init__(self, data: bytes) -> None:
            self.data = data

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            size = 7 if size < 0 else min(size, 7)
            chunk, self.data = self.data[:size], self.data[size:]
            return chunk

    assert load_image(Trickle(b"y" * 1000), fetcher) == b"y" * 1000  # read whole, not 7 bytes
    with pytest.raises(InvalidInputError, match="over the 1000-byte cap"):
        load_image(Trickle(b"y" * 1001), fetcher)


def test_an_empty_pil_image_is_refused_naming_image():
    from ofa_ve_client.images import encode_pil

    with pytest.raises(InvalidInputError, match="IMAGE: the PIL image has an empty size 0x0"):
        encode_pil(Image.new("RGB", (0, 0)))
