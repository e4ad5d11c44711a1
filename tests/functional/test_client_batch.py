"""predict_batch against a real tritonserver: input order, chunking, per-item errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ofa_ve_client import (
    InvalidInputError,
    Item,
    Prediction,
    VisualEntailmentClient,
    VisualEntailmentError,
)
from ofa_ve_data.workload import HYPOTHESES, TEST_IMAGES
from support.waiting import settled

IMAGES = [
    TEST_IMAGES[name]
    for name in ("tiny_50x40_png", "bmp_120x80", "palette_192x152_png", "webp_320x214")
]
BAD_IMAGE = b"GIF89a but not really"


@pytest.fixture(scope="module")
def client(tiny_server) -> Iterator[VisualEntailmentClient]:
    with VisualEntailmentClient(tiny_server.grpc_url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def items() -> list[Item]:
    """Eight distinct items over four images, one in three with a premise."""
    out = []
    for i in range(8):
        premise = "Something is on a table." if i % 3 == 0 else None
        out.append(Item(IMAGES[i % 4], HYPOTHESES[i], premise))
    return out


@pytest.fixture(scope="module")
def one_by_one(client, items) -> list[Prediction]:
    return [client.predict(*item) for item in items]


def same(a: Prediction, b: Prediction) -> bool:
    return a.label == b.label and all(abs(a.probs[k] - b.probs[k]) < 1e-5 for k in a.probs)


@pytest.mark.parametrize(("batch_size", "concurrency"), [(None, 1), (3, 2), (1, 8)])
def test_results_follow_input_order(client, items, one_by_one, batch_size, concurrency):
    seen: list[int] = []
    results = client.predict_batch(
        items, batch_size=batch_size, concurrency=concurrency, progress=seen.append
    )
    assert len(results) == len(items)
    for got, want in zip(results, one_by_one, strict=True):
        assert same(got, want)
    assert sum(seen) == len(items)


def test_accepts_tuples_dicts_and_items(client, items, one_by_one):
    mixed: list[object] = []
    for i, (image, hypothesis, premise) in enumerate(items[:4]):
        if i % 3 == 0:
            mixed.append({"image": image, "hypothesis": hypothesis, "premise": premise})
        elif i % 3 == 1:
            mixed.append((image, hypothesis, premise))
        else:
            mixed.append(Item(image, hypothesis, premise))
    results = client.predict_batch(iter(mixed))  # any iterable
    assert all(same(g, w) for g, w in zip(results, one_by_one[:4], strict=True))


def test_empty_batch(client):
    assert client.predict_batch([]) == []


def test_one_bad_item_does_not_hide_the_others(client, items, one_by_one):
    """Server-side rejection inside a shared request: the request is split to find the culprit."""
    batch = list(items)
    batch[2] = Item(BAD_IMAGE, "a bad image", None)  # rejected by the server
    batch[4] = Item(IMAGES[0], "", None)  # rejected by the client
    batch[5] = Item("/no/such/file.png", "missing", None)  # rejected by the client
    batch.append({"image": IMAGES[0]})  # no hypothesis at all
    results = client.predict_batch(batch, batch_size=len(batch), return_exceptions=True)
    assert len(results) == len(batch)
    for index, result in enumerate(results):
        if index in (2, 4, 5, 8):
            assert isinstance(result, InvalidInputError), (index, result)
            assert result.item_index == index
        else:
            assert same(result, one_by_one[index]), index
    assert results[2].status == "INVALID_ARGUMENT" and results[2].input_name == "IMAGE"
    assert results[4].status is None and results[4].input_name == "HYPOTHESIS"
    assert results[5].input_name == "IMAGE"
    assert results[8].input_name == "HYPOTHESIS"


def test_strict_mode_raises_the_bad_items_error(client, items):
    batch = list(items[:4])
    batch[3] = Item(BAD_IMAGE, "a bad image", None)
    with pytest.raises(InvalidInputError) as info:
        client.predict_batch(batch, batch_size=4)
    assert info.value.item_index == 3
    assert info.value.input_name == "IMAGE"
    assert "item 3" in str(info.value)


def test_every_item_bad(client):
    batch = [Item(BAD_IMAGE, f"bad {i}", None) for i in range(5)]
    results = client.predict_batch(batch, batch_size=5, return_exceptions=True)
    assert [r.item_index for r in results] == list(range(5))
    assert all(isinstance(r, VisualEntailmentError) for r in results)
    assert len({id(r) for r in results}) == 5  # one error object per item


def _request_counts(url: str) -> tuple[int, int]:
    import tritonclient.grpc as tgrpc

    with tgrpc.InferenceServerClient(url) as c:
        stats = c.get_inference_statistics("ofa_visual_entailment", as_json=True)
    inference = stats["model_stats"][0]["inference_stats"]
    return int(inference["success"].get("count", 0)), int(inference["fail"].get("count", 0))


def test_batch_size_is_capped_at_the_models_max(client, tiny_server, items, one_by_one):
    """A batch_size over max_batch_size would be rejected whole; the client caps it."""
    ok_before, failed_before = _request_counts(tiny_server.grpc_url)
    results = client.predict_batch(items, batch_size=1000)
    ok_after, failed_after = settled(
        lambda: _request_counts(tiny_server.grpc_url),
        lambda counts: counts[0] > ok_before,
        "Triton's count of the request",
    )
    assert all(same(g, w) for g, w in zip(results, one_by_one, strict=True))
    assert (ok_after - ok_before, failed_after - failed_before) == (1, 0)
