"""The GPU check's device call in CPU mode, so it cannot rot between lent GPU windows.

Why: the check runs for real only on a borrowed GPU machine, minutes at a time; a
step that broke here would waste that window. This runs the device call's own script
(`scripts/gpu_check_device.sh`, what `wheelhouse.DEVICE_CALLS` runs there) in CPU mode
over the tiny checkpoint (`engine_tiny.py`): the steps do not depend on the network's
size. Without the wheelhouse the script takes this Python (the dev environment, which
has tritonserver), so both parts run against a real tritonserver. `make gpu-rehearsal`
is the full rehearsal (the device's Python, the wheels, the network off). No timing is
asserted: every step ran, every throughput row used enough distinct images, and the
summary says it is CPU mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ofa_ve_bench import gpu_check, gpu_rehearsal, wheelhouse
from ofa_ve_ops.paths import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.server]


def test_the_device_call_in_cpu_mode(tmp_path: Path, tiny_model_dir: Path) -> None:
    (call,) = wheelhouse.DEVICE_CALLS
    command = gpu_rehearsal.rehearsed_command(call["command"])
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "WHEELS": str(tmp_path / "no-wheels"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", f"{command} --model-dir {tiny_model_dir}"],
                          cwd=REPO_ROOT, env=env, timeout=call["timeout_s"], check=False,
                          capture_output=True, text=True)
    log = (out / "check.log").read_text()
    assert done.returncode == 0, log[-3000:]
    assert "the wheels could not be installed" in log  # so this Python ran it
    assert gpu_rehearsal.check_outcome(out, done.returncode) == []
    summary = json.loads((out / "summary.json").read_text())
    steps = {step["name"]: step for step in summary["steps"]}
    names = gpu_check.STEP_NAMES
    for key in ("equal", "precision", "network", "image_path", "server_exact", "server_gpu"):
        assert steps[names[key]]["status"] == "ok", (key, steps[names[key]]["notes"])
    sizes = gpu_check.CPU_SIZES
    network = steps[names["network"]]["figures"]
    assert {(r["dtype"], r["batch_size"]) for r in network} == {
        (d, b) for d in sizes.dtypes for b in sizes.batch_sizes}
    assert all(r["distinct_images"] >= r["batch_size"] for r in network)
    image_path = steps[names["image_path"]]["figures"]
    routes = {row["image"]: row["route"] for row in image_path["images"]}
    assert routes["chelsea_cmyk.jpg"].startswith("CPU") and routes["astronaut_640x480.jpg"] == \
        "device"
    assert image_path["nvjpeg_decoded"] > 0 and image_path["decoder_off"] is None
    for key in ("server_exact", "server_gpu"):
        figures = steps[names[key]]["figures"]
        assert [lv["concurrency"] for lv in figures["levels"]] == list(sizes.concurrency)
        assert all(lv["errors"] == 0 and lv["throughput"] > 0 for lv in figures["levels"])
        assert figures["distinct_images"] >= max(sizes.concurrency)
        assert set(figures["image_path_fallbacks"]) == {"bad_file", "no_nvjpeg",
                                                        "out_of_memory", "decoder_error"}
        assert figures["memory"]["processes"]
        assert any("image path" in line for line in figures["instance"])
    env_facts = summary["environment"]
    assert env_facts["imported"]["simplejpeg"].startswith("1.9.0")
    assert gpu_check.CPU_MODE_BANNER in (out / "summary.md").read_text()
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "check.log", "server-exact.log", "server-gpu.log", "summary.json", "summary.md"]
