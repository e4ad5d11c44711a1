"""(a) of the benchmark: ModelScope's own pipeline, one item per call, from the image files.

Why files and one item per call: that is the only way the pipeline works, so it is
the baseline every speed-up is measured against.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ofa_ve_bench.machine import load_average
from ofa_ve_bench.results import Throughput


def modelscope_pipeline(model_dir: Path, device: str) -> Any:
    """ModelScope's own pipeline; on GPUs built as build_pipeline does, on the GPU."""
    from ofa_ve_reference.modelscope_pipeline import build_pipeline, install_import_stubs

    if device == "cpu":
        return build_pipeline(model_dir)
    install_import_stubs()
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    ms_device = device.replace("cuda", "gpu")
    return pipeline(Tasks.visual_entailment, model=str(model_dir.resolve()), device=ms_device)


class ModelScopeRunner:
    """ModelScope's pipeline, built once, called one item at a time from the image files."""

    def __init__(self, model_dir: Path, device: str, items: Sequence[tuple[Path, str, str]]):
        from ofa_ve_reference.modelscope_pipeline import (
            offline_environment,
            preserved_global_rngs,
        )

        self.items = items
        with preserved_global_rngs(), offline_environment():
            self.pipe = modelscope_pipeline(model_dir, device)
        self.call(0)  # first-call costs

    def call(self, i: int) -> None:
        path, hypothesis, premise = self.items[i % len(self.items)]
        inputs = {"image": str(path), "text": hypothesis}
        if premise:
            inputs["text2"] = premise
        self.pipe(inputs)

    def measure(self, seconds: float) -> Throughput:
        """One call per item until ``seconds`` have passed (at least 3 calls)."""
        result = Throughput("modelscope_pipeline", 1, 0, 0.0, load_before=load_average())
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            self.call(result.items)
            result.latencies_ms.append((time.perf_counter() - t0) * 1000)
            result.items += 1
            result.seconds = time.perf_counter() - start
            if result.seconds >= seconds and result.items >= 3:
                return result
