"""Image sharing: items with the same image digest share one decode and one set of
patch embeddings, with answers equal to the unshared path; the bounded patch-embedding
cache across calls, and its counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ofa_ve_engine import VisualEntailmentEngine
from ofa_ve_engine.image_sharing import PatchEmbeddingCache, image_digest
from ofa_ve_engine.serving import ExecutionRunner, RequestInputs
from support.engine_tiny import png

PHOTO = png((200, 40, 90), (61, 47))
OTHER = png((10, 160, 30), (40, 52))
HYPOTHESES = ["a red thing.", "Is this a dog?", "two birds", "It is night.", "A cat's face",
              "nobody is here", "The cup is empty", "A flag flies."]


def engine_over(tiny: VisualEntailmentEngine, **options: object) -> VisualEntailmentEngine:
    return VisualEntailmentEngine(tiny.settings, tiny.tokenizer, tiny.model, **options)


class StemSpy:
    """Counts the images the engine's stem runs over (wraps the real method)."""

    def __init__(self, engine: VisualEntailmentEngine, monkeypatch) -> None:
        self.images = 0
        real = engine._embed_patches

        def counted(items, *args):
            self.images += len(items)
            return real(items, *args)

        monkeypatch.setattr(engine, "_embed_patches", counted)


@pytest.mark.parametrize("forward_batch_size", [1, 3, 32])
def test_many_hypotheses_one_image_equal_each_alone(
    tiny_engine: VisualEntailmentEngine, monkeypatch, forward_batch_size: int
) -> None:
    engine = engine_over(tiny_engine, forward_batch_size=forward_batch_size)
    alone = np.concatenate([engine.predict([engine.prepare(PHOTO, h)]) for h in HYPOTHESES])
    first = engine.prepare(PHOTO, HYPOTHESES[0])
    items = [first] + [engine.prepare(PHOTO, h, same_image_as=first) for h in HYPOTHESES[1:]]
    items.insert(3, engine.prepare(OTHER, "another image"))
    spy = StemSpy(engine, monkeypatch)
    shared = engine.predict(items)
    assert spy.images == 2  # two distinct images, whatever the forward passes
    np.testing.assert_allclose(np.delete(shared, 3, axis=0), alone, atol=1e-5)


def test_prepare_reuses_pixels_only_for_the_same_digest(
    tiny_engine: VisualEntailmentEngine,
) -> None:
    first = tiny_engine.prepare(PHOTO, "x")
    again = tiny_engine.prepare(PHOTO, "y", same_image_as=first)
    other = tiny_engine.prepare(OTHER, "z", same_image_as=first)
    assert again.pixels is first.pixels and again.image_digest == image_digest(PHOTO)
    assert other.pixels is not first.pixels and other.image_digest != first.image_digest
    old_keyword = tiny_engine.prepare(PHOTO, "w", like=first)  # the old name, still accepted
    assert old_keyword.pixels is first.pixels
    given = tiny_engine.prepare(PHOTO, "v", image_digest=first.image_digest)
    assert given.image_digest == first.image_digest


def test_the_cache_carries_patch_embeddings_across_calls_within_its_bound(
    tiny_engine: VisualEntailmentEngine, monkeypatch
) -> None:
    engine = engine_over(tiny_engine, forward_batch_size=4, stem_cache_items=1)
    spy = StemSpy(engine, monkeypatch)
    photo = [engine.prepare(PHOTO, h) for h in HYPOTHESES[:2]]
    want = engine_over(tiny_engine).predict(photo)
    np.testing.assert_allclose(engine.predict(photo), want, atol=1e-5)
    np.testing.assert_allclose(engine.predict(photo), want, atol=1e-5)  # from the cache
    assert spy.images == 1 and (engine.patch_cache.hits, engine.patch_cache.misses) == (1, 1)
    engine.predict([engine.prepare(OTHER, "z")])  # evicts PHOTO (capacity 1)
    engine.predict(photo[:1])
    assert spy.images == 3 and len(engine.patch_cache) == 1
    # One image's patch embeddings, [P/16, P/16, d_model] float32: not the stem's
    # 4x larger [1024, P/16, P/16] features.
    d_model = engine.model.encoder.arch.d_model
    per_entry = (engine.settings.patch_image_size // 16) ** 2 * d_model * 4
    assert engine.patch_cache.bytes_used() == per_entry


def test_without_a_cache_nothing_is_kept_or_counted(tiny_engine: VisualEntailmentEngine) -> None:
    engine = engine_over(tiny_engine)
    engine.predict([engine.prepare(PHOTO, "x")])
    engine.predict([engine.prepare(PHOTO, "x")])
    assert len(engine.patch_cache) == 0
    assert (engine.patch_cache.hits, engine.patch_cache.misses) == (0, 0)


def test_patch_cache_bounds() -> None:
    with pytest.raises(ValueError, match="capacity"):
        PatchEmbeddingCache(-1)
    cache = PatchEmbeddingCache(2)
    for key in "abc":
        cache.put(key, torch.zeros(2))
    assert cache.get("a") is None and cache.get("c") is not None and len(cache) == 2


def test_an_execution_decodes_each_image_once(
    tiny_engine: VisualEntailmentEngine, monkeypatch
) -> None:
    """Across requests too: one decode per distinct image bytes; a bad image fails every
    request that carries it, each alone."""
    import ofa_ve_engine.engine as engine_module

    decodes = []
    real = engine_module.load_pixels

    def counted(data, *args, **kwargs):
        decodes.append(data)
        return real(data, *args, **kwargs)

    monkeypatch.setattr(engine_module, "load_pixels", counted)
    runner = ExecutionRunner(tiny_engine, workers=2)
    requests = [
        RequestInputs([PHOTO] * 4, [h.encode() for h in HYPOTHESES[:4]], [b""] * 4),
        RequestInputs([OTHER, PHOTO], [b"first", b"second"], [b"", b""]),
        RequestInputs([b"not an image"], [b"bad"], [b""]),
        RequestInputs([b"not an image", OTHER], [b"bad again", b"fine"], [b"", b""]),
    ]
    outcomes = runner.run(requests)
    runner.close()
    assert sorted(decodes) == sorted([PHOTO, OTHER, b"not an image"])
    assert outcomes[0].error is None and outcomes[1].error is None
    assert outcomes[2].error.input_name == "IMAGE" and outcomes[3].failed_item == 0
    alone = tiny_engine.predict([tiny_engine.prepare(PHOTO, HYPOTHESES[2])])
    np.testing.assert_allclose(outcomes[0].probs[2:3], alone, atol=1e-5)
