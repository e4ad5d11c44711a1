"""The engine in this process, configured exactly as a server instance is, and timed.

Why through `ofa_ve_engine.parameters`: a tool's `--param k=v` must mean what the same
line in config.pbtxt means (same names, checks and `auto`), so the in-process engine
gets the very options `model.py` gives a server instance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ofa_ve_data.workload import Item
from ofa_ve_engine.parameters import read_parameters

from ofa_ve_bench.results import Throughput, timed


def build_engine(model_dir: Path, device: str, params: Mapping[str, str], **overrides: Any) -> Any:
    """An engine loaded with `params` (config.pbtxt strings, checked) plus `overrides`.

    A reduced dtype runs on any CPU here (measurement says what it costs there);
    serving refuses one the CPU would only emulate.
    """
    from ofa_ve_engine import VisualEntailmentEngine

    options = read_parameters(dict(params)).engine_options()
    options.update(check_cpu_dtype=False, **overrides)
    return VisualEntailmentEngine.from_model_dir(model_dir, device=device, **options)


def engine_settings(engine: Any) -> dict[str, object]:
    """What the loaded engine actually runs with (for the report)."""
    names = ("forward_batch_size", "image_chunk_size", "compiled", "linear_backend", "stem_backend")
    out: dict[str, object] = {"dtype": str(engine.dtype).replace("torch.", "")}
    out.update({n: getattr(engine, n) for n in names if hasattr(engine, n)})
    out["device"] = str(engine.device)
    return out


def prepare_all(engine: Any, items: Sequence[Item]) -> list[Any]:
    """CPU preprocessing of every item (an empty premise means the image alone)."""
    return [engine.prepare(image, h, p or None) for image, h, p in items]


def measure_engine(
    engine: Any, items: Sequence[Item], batch_size: int, seconds: float
) -> Throughput:
    """prepare + predict of whole batches (as one server execution does), for `seconds`.

    Successive batches walk through `items` as the server's requests do, so the engine
    meets the same images and text lengths (new shapes included) as the server.
    """

    def batch(n: int) -> None:
        start = n * batch_size
        chosen = [items[(start + i) % len(items)] for i in range(batch_size)]
        engine.predict(prepare_all(engine, chosen))

    batch(0)  # the first call at this batch size: one-time set-up, as a server's warm-up
    return timed("engine", batch_size, batch, seconds, min_calls=2)
