"""The engine in this process, configured exactly as a server instance is: built, fed,
compared and timed one way for every tool (benchmark, peers, precision_agreement,
profiler, gpu_check).

Why through `ofa_ve_engine.parameters`: a tool's `--param k=v` must mean what the same
line in config.pbtxt means (same names, checks and `auto`), so the in-process engine
gets the very options `model.py` gives a server instance.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ofa_ve_data.workload import Item
from ofa_ve_engine.parameters import read_parameters

from ofa_ve_bench.results import Throughput, compare, timed

PRECISION_PARAMS = {"int8": {"dtype": "float32", "quantization": "int8"}}
"""The config.pbtxt parameters of a precision that is not a dtype name."""
Predict = Callable[[Sequence[Any]], np.ndarray]
"""``predict(items) -> [len(items), 3]`` probabilities in LABELS order."""
More = Callable[[], bool] | None
"""Asked between calls (None: always yes): whether there is time for more."""

def build_engine(model_dir: Path, device: str, params: Mapping[str, str], **overrides: Any) -> Any:
    """An engine loaded with `params` (config.pbtxt strings, checked) plus `overrides`.

    A reduced dtype runs on any CPU here (measurement says what it costs there);
    serving refuses one the CPU would only emulate.
    """
    from ofa_ve_engine import VisualEntailmentEngine

    options = read_parameters(dict(params)).engine_options()
    options.update(check_cpu_dtype=False, **overrides)
    return VisualEntailmentEngine.from_model_dir(model_dir, device=device, **options)


def load_engine(model_dir: Path, device: str, precision: str, batch_size: int,
                params: Mapping[str, str] | None = None) -> Any:
    """The engine in `precision` (a dtype name, or `int8`: the int8 stem under a float32
    network) on `device`, forward passes of up to `batch_size` items, `params` besides."""
    params = {**(params or {}), **PRECISION_PARAMS.get(precision, {"dtype": precision})}
    return build_engine(model_dir, device, params, forward_batch_size=batch_size)


def engine_settings(engine: Any) -> dict[str, object]:
    """What the loaded engine actually runs with (for the report)."""
    names = ("forward_batch_size", "image_chunk_size", "compiled", "linear_backend", "stem_backend")
    out: dict[str, object] = {"dtype": str(engine.dtype).replace("torch.", "")}
    out.update({n: getattr(engine, n) for n in names if hasattr(engine, n)})
    out["device"] = str(engine.device)
    return out


def prepare_all(engine: Any, items: Sequence[Item]) -> list[Any]:
    """CPU preprocessing of every item (an empty premise means the image alone)."""
    return [engine.prepare(*item) for item in items]


def predict_all(predict: Predict, items: Sequence[Any], batch_size: int,
                more: More = None) -> np.ndarray:
    """[N, 3]: `predict` over `items`, `batch_size` items a call; fewer rows once `more()`
    is false (one call at least)."""
    rows: list[np.ndarray] = []
    for start in range(0, len(items), batch_size):
        if rows and more and not more():
            break
        rows.append(np.asarray(predict(items[start : start + batch_size]), dtype=np.float32))
    return np.concatenate(rows)


def answers(model_dir: Path, device: str, precision: str, work: Sequence[Item],
            more: More = None, prepared: list[Any] | None = None,
            batch_size: int = 16) -> tuple[list[Any], np.ndarray]:
    """The prepared items (`work` prepared here unless `prepared` is given) and an engine's
    answers to them; the engine is dropped after, so one model is in memory at a time."""
    engine = load_engine(model_dir, device, precision, batch_size)
    prepared = prepared or prepare_all(engine, work)
    return prepared, predict_all(engine.predict, prepared, batch_size, more)


@contextlib.contextmanager
def tf32_off() -> Iterator[None]:
    """TF32 off for matmuls and convolutions (fp32 as the CPU computes it), then restored."""
    import torch

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def agreement(model_dir: Path, device: str, precisions: Sequence[str], work: Sequence[Item],
              more: More = None, batch_size: int = 16) -> Iterator[dict[str, object]]:
    """Each of `precisions` against float32 (TF32 off) on `device` over `work`: a
    `results.compare` row each, while `more()` holds."""
    with tf32_off():
        prepared, reference = answers(model_dir, device, "float32", work, batch_size=batch_size)
    for precision in precisions:
        if more and not more():
            return
        other = answers(model_dir, device, precision, work, prepared=prepared,
                        batch_size=batch_size)[1]
        yield {"device": device, "dtype": precision, **compare(reference, other)}


def measure_engine(engine: Any, items: Sequence[Item], batch_size: int, seconds: float
                   ) -> Throughput:
    """prepare + predict of whole batches (as one server execution does), for `seconds`,
    after one untimed batch (one-time set-up at this batch size, as a server's warm-up).

    Successive batches walk through `items` as the server's requests do, so the engine
    meets the same images and text lengths (new shapes included) as the server.
    """

    def batch(n: int) -> None:
        chosen = [items[(n * batch_size + i) % len(items)] for i in range(batch_size)]
        engine.predict(prepare_all(engine, chosen))

    return timed("engine", batch_size, batch, seconds, min_calls=2, warmup=1)
