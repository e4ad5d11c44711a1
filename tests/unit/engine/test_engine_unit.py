"""engine.py: a cheap constructor, one loader, and predict as the one owner of batching."""

from __future__ import annotations

import builtins
import dataclasses
import inspect
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ofa_ve_engine import CheckpointError, InvalidInputError, VisualEntailmentEngine
from ofa_ve_engine.engine import auto_forward_batch_size
from ofa_ve_engine.modeling import OFAModel
from support.engine_tiny import png


def _parts(engine: VisualEntailmentEngine) -> tuple:
    return engine.settings, engine.tokenizer, engine.model


def test_loader_takes_what_the_parameter_table_sets() -> None:
    """model.py passes `ModelParameters.engine_options()` to the loader: every key must be
    one of its keyword-only arguments (and nothing else the loader needs is required)."""
    from ofa_ve_engine.parameters import ModelParameters

    params = inspect.signature(VisualEntailmentEngine.from_model_dir).parameters
    assert set(ModelParameters().engine_options()) <= set(params) - {"model_dir", "device"}
    assert all(p.kind is p.KEYWORD_ONLY for name, p in params.items() if name != "model_dir")
    required = [n for n, p in params.items() if p.default is p.empty and n != "model_dir"]
    assert required == []
    assert params["dtype"].default is torch.float32 and params["forward_batch_size"].default == 32


def test_constructor_reads_no_file_and_times_nothing(
    tiny_engine: VisualEntailmentEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the constructor must not do I/O or timing")

    parts = _parts(tiny_engine)
    monkeypatch.setattr(builtins, "open", forbidden)
    monkeypatch.setattr(Path, "open", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(time, "perf_counter", forbidden)
    engine = VisualEntailmentEngine(*parts, forward_batch_size=3)
    assert engine.forward_batch_size == 3


def test_attributes(tiny_engine: VisualEntailmentEngine, tiny_model_dir: Path) -> None:
    e = tiny_engine
    assert (e.device, e.dtype) == (torch.device("cpu"), torch.float32)
    assert e.is_demo and e.linear_backend == "aten" and not e.compiled
    assert e.image_chunk_size == 2 and e.attend_by_length  # CPU defaults
    assert e.forward_batch_size == 32 and e.model_dir == tiny_model_dir
    assert e.settings.patch_image_size == 64 and e.limits.max_text_bytes == 8192


def test_off_cpu_defaults_run_the_whole_pass_at_once(tiny_engine: VisualEntailmentEngine) -> None:
    with torch.device("meta"):
        model = OFAModel(tiny_engine.model.arch)
    engine = VisualEntailmentEngine(tiny_engine.settings, tiny_engine.tokenizer, model)
    assert engine.device.type == "meta"
    assert engine.image_chunk_size is None and not engine.attend_by_length


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"forward_batch_size": 0}, "forward_batch_size"),
        ({"image_chunk_size": 0}, "image_chunk_size"),
        ({"image_chunk_size": -2}, "image_chunk_size"),
    ],
)
def test_bad_sizes_are_refused_by_name(
    tiny_engine: VisualEntailmentEngine, tiny_model_dir: Path, options: dict, name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        VisualEntailmentEngine(*_parts(tiny_engine), **options)
    with pytest.raises(ValueError, match=name):
        VisualEntailmentEngine.from_model_dir(tiny_model_dir, device="cpu", **options)


def test_inconsistent_parts_are_checkpoint_errors(tiny_engine: VisualEntailmentEngine) -> None:
    settings, tokenizer, model = _parts(tiny_engine)
    small = OFAModel(dataclasses.replace(model.arch, vocab_size=100))
    with pytest.raises(CheckpointError, match="vocab_size 100"):
        VisualEntailmentEngine(settings, tokenizer, small)
    odd = dataclasses.replace(settings, answer2label={"yes": 0, "no": 1})
    with pytest.raises(CheckpointError, match="visual-entailment answers"):
        VisualEntailmentEngine(odd, tokenizer, model)


def test_predict_runs_forward_passes_and_reports_each(
    tiny_engine: VisualEntailmentEngine, tiny_items: list
) -> None:
    engine = VisualEntailmentEngine(*_parts(tiny_engine), forward_batch_size=2)
    passes: list[tuple[list, float]] = []
    probs = engine.predict(tiny_items, on_pass=lambda done, s: passes.append((list(done), s)))
    assert [len(done) for done, _ in passes] == [2, 2, 1]
    assert [it for done, _ in passes for it in done] == tiny_items
    assert all(isinstance(s, float) and s >= 0 for _, s in passes)
    assert probs.shape == (len(tiny_items), 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)
    alone = np.concatenate([tiny_engine.predict([it]) for it in tiny_items])
    np.testing.assert_allclose(probs, alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(tiny_engine.predict(tiny_items), alone, atol=1e-5, rtol=0)


def test_items_no_longer_kept_are_left_out_of_their_pass(
    tiny_engine: VisualEntailmentEngine, tiny_items: list
) -> None:
    """``keep`` is asked before each pass with its items; an item it leaves out (its
    client has gone) is not run (NaN row), the others get what they would get anyway."""
    engine = VisualEntailmentEngine(*_parts(tiny_engine), forward_batch_size=2)
    asked: list[list[int]] = []
    gone = {1, 2, 3}  # the whole second pass, and one item of the first

    def keep(indices: list[int]) -> list[int]:
        asked.append(list(indices))
        return [i for i in indices if i not in gone]

    passes: list[int] = []
    probs = engine.predict(tiny_items, on_pass=lambda done, s: passes.append(len(done)),
                           keep=keep)  # fmt: skip
    assert asked == [[0, 1], [2, 3], [4]] and passes == [1, 1]
    old = engine.predict(tiny_items, wanted=lambda i: i not in gone)  # the old per-item form
    np.testing.assert_array_equal(np.isnan(old), np.isnan(probs))
    assert np.isnan(probs[sorted(gone)]).all()
    kept = [i for i in range(len(tiny_items)) if i not in gone]
    alone = np.concatenate([tiny_engine.predict([tiny_items[i]]) for i in kept])
    np.testing.assert_allclose(probs[kept], alone, atol=1e-5, rtol=0)


def test_predict_of_nothing(tiny_engine: VisualEntailmentEngine) -> None:
    calls: list = []
    out = tiny_engine.predict([], on_pass=lambda *a: calls.append(a))
    assert out.shape == (0, 3) and out.dtype == np.float32 and not calls


def test_prepare_and_warmup(tiny_engine: VisualEntailmentEngine) -> None:
    item = tiny_engine.prepare(png((1, 2, 3), (30, 20)), "Two dogs.", b"")
    assert item.pixels.shape == (64, 64, 3) and item.pixels.dtype == np.uint8
    assert item.decoder_prompt == item.input_ids[:-1]  # prompt_type prev_output
    with pytest.raises(InvalidInputError, match="IMAGE: must be encoded bytes"):
        tiny_engine.prepare("not an image", "Two dogs.")  # type: ignore[arg-type]
    tiny_engine.warmup((1, 3))


def test_gpu_image_path_keeps_jpegs_encoded_and_decodes_them_in_the_pass(
    tiny_engine: VisualEntailmentEngine,
) -> None:
    """The wiring of image_path=gpu, run on CPU tensors (torchvision's CPU decoder): JPEGs
    travel encoded to the pass, other formats as pixels, and the answers stay close to the
    exact path's (the fidelity itself is in docs/benchmarks.md)."""
    pytest.importorskip("torchvision")
    from ofa_ve_data.workload import TEST_IMAGES

    cpu_gpu = VisualEntailmentEngine(
        tiny_engine.settings, tiny_engine.tokenizer, tiny_engine.model, image_path="gpu"
    )
    assert cpu_gpu.image_path == "exact"  # a CPU engine asked for the GPU path uses exact
    cpu_gpu.image_path = "gpu"  # force the device route onto CPU tensors for this test
    jpeg = TEST_IMAGES["landscape_640x480_jpeg"].read_bytes()
    small_png = TEST_IMAGES["tiny_50x40_png"].read_bytes()
    items = [cpu_gpu.prepare(jpeg, "a person."), cpu_gpu.prepare(small_png, "a cup.")]
    assert items[0].pixels is None and items[0].encoded == jpeg
    assert items[1].pixels is not None and items[1].encoded is None
    exact = [tiny_engine.prepare(jpeg, "a person."), tiny_engine.prepare(small_png, "a cup.")]
    np.testing.assert_allclose(cpu_gpu.predict(items), tiny_engine.predict(exact), atol=2e-2)


@pytest.mark.parametrize(
    ("device", "dtype", "quantization", "flags", "expected"),
    [
        ("cuda", torch.float16, "none", {"amx_bf16"}, None),
        ("cpu", torch.float32, "none", {"amx_bf16", "amx_int8"}, 1),
        ("cpu", torch.bfloat16, "none", {"amx_bf16"}, 4),
        ("cpu", torch.bfloat16, "none", {"avx512_bf16"}, 1),  # no AMX: not measured, one at a time
        ("cpu", torch.float32, "int8", {"amx_int8"}, 4),
        ("cpu", torch.float32, "int8", {"avx512_vnni"}, 1),
    ],
)
def test_auto_forward_batch_size_follows_the_device_type_and_amx(
    device: str, dtype: torch.dtype, quantization: str, flags: set[str], expected: int | None
) -> None:
    got = auto_forward_batch_size(torch.device(device), dtype, quantization, frozenset(flags))
    assert got == expected
