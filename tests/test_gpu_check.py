"""`make gpu-check` in CPU mode, so the GPU check cannot rot between lent GPU windows.

Why: the check runs for real only on a borrowed GPU machine, minutes at a time; a
step that broke here would waste that window. CPU mode runs the very same code
with small sizes (batch 1..2, 1..2 threads, a short perf_analyzer run against a
real tritonserver), here over the tiny checkpoint (`engine_tiny.py`): the steps
do not depend on the network's size, and OFA-tiny's 33M parameters would only
make them slower. No timing is asserted: only that every step ran and the
summary (Markdown and JSON) says what it measured and that it is CPU mode.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ofa_ve_bench import gpu_check

pytestmark = pytest.mark.slow


def _steps(summary: dict) -> dict[str, dict]:
    return {step["name"]: step for step in summary["steps"]}


def test_engine_part_in_cpu_mode(tmp_path: Path, tiny_model_dir: Path) -> None:
    summary = gpu_check.run_check("cpu", "engine", tmp_path, model_dir=tiny_model_dir)
    steps = _steps(summary)
    text = (tmp_path / "summary.md").read_text()
    assert gpu_check.CPU_MODE_BANNER in text
    assert json.loads((tmp_path / "summary.json").read_text())["mode"] == "cpu"

    assert steps["fp32 GPU answers equal CPU answers"]["status"] == "skipped"
    precision = steps["reduced precision against float32"]
    assert precision["status"] == "ok", precision["notes"]
    (row,) = precision["figures"]
    assert row["dtype"] == "bfloat16" and row["pairs"] == gpu_check.CPU_SIZES.agreement_pairs
    assert 0.0 <= row["label_agreement"] <= 1.0

    network = steps["network items/s per dtype and batch"]
    assert network["status"] == "ok", network["notes"]
    measured = {(r["dtype"], r["batch_size"]) for r in network["figures"]}
    sizes = gpu_check.CPU_SIZES
    assert measured == {(d, b) for d in sizes.dtypes for b in sizes.batch_sizes}
    assert all(r["items_per_s"] > 0 for r in network["figures"])

    prepare = steps["prepare() items/s per thread count"]
    assert prepare["status"] == "ok", prepare["notes"]
    assert {r["threads"] for r in prepare["figures"]} == set(sizes.threads)
    assert len({r["images"] for r in prepare["figures"]}) == 2
    assert not summary["failed"]


@pytest.mark.server
def test_server_part_in_cpu_mode(tmp_path: Path, tiny_model_dir: Path) -> None:
    summary = gpu_check.run_check("cpu", "server", tmp_path, model_dir=tiny_model_dir)
    steps = _steps(summary)
    assert "tritonserver + perf_analyzer" not in steps, steps.get(
        "tritonserver + perf_analyzer"
    )  # the prerequisites are there (the dev environment has the server)
    for image_path in ("exact", "gpu"):  # gpu: CPU instances fall back to exact
        step = steps[f"tritonserver + perf_analyzer, image_path={image_path}"]
        assert step["status"] == "ok", step["notes"]
        levels = step["figures"]["levels"]
        assert [lv["concurrency"] for lv in levels] == list(gpu_check.CPU_SIZES.concurrency)
        assert all(lv["errors"] == 0 and lv["throughput"] > 0 for lv in levels)
        assert step["figures"]["memory"]["processes"]
        assert any("image path" in line for line in step["figures"]["instance"])
        assert (tmp_path / f"server-{image_path}.log").is_file()
    assert gpu_check.CPU_MODE_BANNER in (tmp_path / "summary.md").read_text()
