"""The engine in this process, configured exactly as a server instance would be.

Why through `ofa_ve_engine.parameters`: a benchmark's `--param k=v` must mean what the
same line in config.pbtxt means (same names, same checks, same `auto`), so the
in-process engine and the server's instances run the same settings. The loader's
signature decides which of those settings it takes (`engine_options()` may name
options a loader of this checkout does not accept yet; those are dropped and listed).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ofa_ve_data.workload import Item
from ofa_ve_engine.parameters import parse_assignments, read_parameters

from ofa_ve_bench.machine import load_average
from ofa_ve_bench.results import Throughput


def validated_params(pairs: Sequence[str]) -> dict[str, str]:
    """`name=value` strings checked against the model's parameter table.

    Raises `ofa_ve_engine.parameters.ParameterError` (a ValueError) naming the
    parameter for an unknown name or a bad value.
    """
    return parse_assignments(pairs)


def loader() -> Callable[..., Any]:
    """`VisualEntailmentEngine.from_model_dir` (imported late: it pulls in torch)."""
    from ofa_ve_engine import VisualEntailmentEngine

    return VisualEntailmentEngine.from_model_dir


def _takes_none(param: inspect.Parameter) -> bool:
    """Whether a keyword accepts None: None is its default or its annotation says so."""
    return param.default is None or "None" in str(param.annotation)


def engine_kwargs(
    params: Mapping[str, str], load: Callable[..., Any] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Keyword arguments of the loader that `params` set, and the option names dropped.

    An option is dropped when the loader has no such keyword; an `auto` (None) value
    is left out where the loader's keyword does not take None (its default decides).
    """
    options = read_parameters(dict(params)).engine_options()
    signature = inspect.signature(load or loader())
    accepted = signature.parameters
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    kwargs, dropped = {}, []
    for name, value in options.items():
        if name not in accepted and not has_var_kw:
            dropped.append(name)
            continue
        if value is None and name in accepted and not _takes_none(accepted[name]):
            continue
        kwargs[name] = value
    return kwargs, dropped


def build_engine(
    model_dir: Path, device: str, params: Mapping[str, str], **overrides: Any
) -> tuple[Any, list[str]]:
    """An engine loaded with `params` (config.pbtxt strings) plus `overrides`.

    Returns the engine and the names of options this loader did not take.
    """
    load = loader()
    kwargs, dropped = engine_kwargs(params, load)
    if "check_cpu_dtype" in inspect.signature(load).parameters:
        # Measurement runs a reduced dtype on any CPU (and says what it costs there);
        # serving refuses one the CPU would only emulate.
        kwargs["check_cpu_dtype"] = False
    kwargs.update(overrides)
    return load(model_dir, device=device, **kwargs), dropped


def engine_settings(engine: Any) -> dict[str, object]:
    """What the loaded engine actually runs with (for the report)."""
    names = ("forward_batch_size", "image_chunk_size", "compiled", "linear_backend", "stem_backend")
    out: dict[str, object] = {"dtype": str(getattr(engine, "dtype", "")).replace("torch.", "")}
    out.update({n: getattr(engine, n) for n in names if hasattr(engine, n)})
    out["device"] = str(getattr(engine, "device", ""))
    return out


def prepare_all(engine: Any, items: Sequence[Item]) -> list[Any]:
    """CPU preprocessing of every item (an empty premise means the image alone)."""
    return [engine.prepare(image, h, p or None) for image, h, p in items]


def measure_engine(
    engine: Any, items: Sequence[Item], batch_size: int, seconds: float
) -> Throughput:
    """prepare + predict of whole batches (as one server execution does), for `seconds`.

    Successive batches walk through `items` (as the server's requests do), so the
    engine meets the same images and text lengths, new shapes included, as the
    server does in the same benchmark; one batch repeated would see one shape only.
    """
    position = 0

    def run() -> None:
        nonlocal position
        batch = [items[(position + i) % len(items)] for i in range(batch_size)]
        position += batch_size
        engine.predict(prepare_all(engine, batch))

    run()  # the first call at this batch size (one-time set-up, as a server's warm-up)
    position = 0
    result = Throughput("engine", batch_size, 0, 0.0, load_before=load_average())
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        run()
        result.latencies_ms.append((time.perf_counter() - t0) * 1000)
        result.items += batch_size
        result.seconds = time.perf_counter() - start
        if result.seconds >= seconds and len(result.latencies_ms) >= 2:
            return result
