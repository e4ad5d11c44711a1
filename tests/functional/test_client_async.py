"""AsyncVisualEntailmentClient against a real tritonserver, under 64 concurrent calls."""

from __future__ import annotations

import asyncio

import pytest
from ofa_ve_client import (
    AsyncVisualEntailmentClient,
    ClientClosedError,
    DeadlineExceededError,
    InvalidInputError,
    Item,
    Prediction,
    VisualEntailmentClient,
)
from ofa_ve_data.workload import HYPOTHESES, TEST_IMAGES
from PIL import Image

NAMES = ("tiny_50x40_png", "bmp_120x80", "gray_256x256_png", "gif_2frames_96x64")


def items(n: int) -> list[Item]:
    return [
        Item(TEST_IMAGES[NAMES[i % len(NAMES)]].read_bytes(), HYPOTHESES[i % len(HYPOTHESES)])
        for i in range(n)
    ]


def same(a: Prediction, b: Prediction) -> bool:
    return a.label == b.label and all(abs(a.probs[k] - b.probs[k]) < 1e-5 for k in a.probs)


def test_64_concurrent_predicts(tiny_server):
    distinct = items(8)
    batch = [distinct[i % 8] for i in range(64)]
    with VisualEntailmentClient(tiny_server.grpc_url) as sync_client:
        answers = sync_client.predict_batch(distinct)
    expected = [answers[i % 8] for i in range(64)]

    async def main() -> list[Prediction]:
        async with AsyncVisualEntailmentClient(tiny_server.grpc_url, timeout=120) as client:
            return await asyncio.gather(*(client.predict(*item) for item in batch))

    results = asyncio.run(main())
    assert len(results) == 64
    for got, want in zip(results, expected, strict=True):
        assert same(got, want)


def test_async_batch_order_and_per_item_errors(tiny_server):
    batch = items(7)
    batch[6] = Item(b"not an image", "bad")
    with Image.open(TEST_IMAGES["palette_192x152_png"]) as im:
        im.load()
        batch[2] = Item(im, "a PIL image, encoded off the event loop")

    async def main():
        client = AsyncVisualEntailmentClient(tiny_server.grpc_url)
        try:
            singles = [await client.predict(*item) for i, item in enumerate(batch) if i != 6]
            mixed = await client.predict_batch(
                batch, batch_size=4, concurrency=2, return_exceptions=True
            )
            with pytest.raises(InvalidInputError) as info:
                await client.predict_batch([batch[0], batch[6]], batch_size=2)
            ready = await client.is_model_ready()
            size = await client.max_batch_size()
        finally:
            await client.close()
        return singles, mixed, info.value, ready, size

    singles, mixed, strict_error, ready, size = asyncio.run(main())
    assert ready and size >= 32
    assert isinstance(mixed[6], InvalidInputError)
    assert mixed[6].item_index == 6 and mixed[6].status == "INVALID_ARGUMENT"
    good = [r for i, r in enumerate(mixed) if i != 6]
    assert all(same(g, s) for g, s in zip(good, singles, strict=True))
    assert strict_error.item_index == 1


def test_async_deadline_and_close(tiny_server):
    image = TEST_IMAGES["landscape_640x480_jpeg"]

    async def main():
        client = AsyncVisualEntailmentClient(tiny_server.grpc_url)
        with pytest.raises(DeadlineExceededError) as info:
            await client.predict(image, "too little time", timeout=0.001)
        await client.close()
        with pytest.raises(ClientClosedError):
            await client.predict(image, "closed")
        return info.value

    error = asyncio.run(main())
    assert isinstance(error, TimeoutError)
    assert error.status == "DEADLINE_EXCEEDED"
