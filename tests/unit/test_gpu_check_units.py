"""Unit tests of the GPU check, its wheelhouse and its rehearsal (no server, no GPU).

Why: the check runs for real only in a lent GPU window of minutes, one call; its budgets,
its summary, the call as the docs show it and the rehearsal's verdicts are checked here
on fixed inputs, so nothing of that is first tried on the day.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from ofa_ve_bench import engine_runner, gpu_check, gpu_rehearsal, wheelhouse
from ofa_ve_data import workload
from ofa_ve_ops.paths import REPO_ROOT

# --------------------------------------------------------------------- gpu check


def test_gpu_check_budgets_and_a_summary_after_every_step(tmp_path: Path) -> None:
    """Each step runs under its own budget (never more than the run has left), and the
    summary on disk is rewritten after each step, so a call cut short still returns it."""
    now = [0.0]
    summary = {"mode": "cpu", "part": "engine", "date": "today", "budget_s": 100.0,
               "environment": {}}
    check = gpu_check.Check(None, "cpu", gpu_check.CPU_SIZES, tmp_path, 100.0, summary,
                            clock=lambda: now[0])
    given: list[float] = []

    def on_disk() -> list[str]:
        return [s["name"] for s in json.loads((tmp_path / "summary.json").read_text())["steps"]]

    seen: list[list[str]] = []  # the summary on disk as each step starts

    def fine(check, step):
        seen.append(on_disk())
        given.append(check.left())
        now[0] += 30.0
        return [{"x": 1.23456}]

    check.run("fine", 40.0, fine)
    check.run("broken", 40.0, lambda check, step: seen.append(on_disk()) or 1 / 0)
    check.run("capped", 500.0,
              lambda check, step: seen.append(on_disk()) or given.append(check.left()))
    assert seen == [[], ["fine"], ["fine", "broken"]]
    now[0] = 99.0
    check.run("late", 40.0, lambda check, step: None)
    assert given == [40.0, 70.0]  # its own 40 s; then all that is left (70), not 500
    assert [s.status for s in check.steps] == ["ok", "failed", "ok", "skipped"]
    assert "ZeroDivisionError" in check.steps[1].notes[0]
    assert check.steps[3].notes == ["time budget spent (1 s left of the run)"]
    assert on_disk() == ["fine", "broken", "capped", "late"] and summary["failed"] == ["broken"]
    text = (tmp_path / "summary.md").read_text()
    assert gpu_check.CPU_MODE_BANNER in text and "Unfinished" in text
    assert "| 1.235 |" in text and "## late: skipped" in text
    assert not list(tmp_path.glob(".*partial"))


def test_any_steps_figures_render_as_tables_and_lines() -> None:
    """One renderer for every step: rows become a table (list-valued columns stay in
    summary.json), a dict's scalars become lines, the rows nested in it tables."""
    lines = gpu_check.figures_markdown({
        "image_path": "gpu",
        "levels": [{"concurrency": 1, "throughput": 12.5, "flips": [0.1]}],
        "memory": {"processes": [{"process": "stub", "peak_rss_mib": 900.0}],
                   "peak_rss_total_mib": 900.0},
        "fallbacks": {"bad_file": 0.0},
    })
    text = "\n".join(lines)
    assert "- image_path: gpu" in lines and "- fallbacks: {'bad_file': 0.0}" in lines
    assert "| concurrency | throughput |" in text and "| 1 | 12.5 |" in text
    assert "flips" not in text
    assert "| process | peak_rss_mib |" in text and "- peak_rss_total_mib: 900" in text
    assert gpu_check.figures_markdown(None) == []


def test_rate_counts_the_items_of_every_timed_call(tmp_path: Path) -> None:
    """Every step's rate comes from `results.timed`: warm-up calls first, untimed."""
    sizes = gpu_check.CPU_SIZES
    seen: list[int] = []
    check = gpu_check.Check(None, "cpu", sizes, tmp_path, 100.0, {"mode": "cpu", "part": "all",
                            "date": "today", "budget_s": 100.0})
    rate = check.rate(seen.append, 3)
    assert seen[: sizes.warmup_calls + 1] == list(range(sizes.warmup_calls + 1))
    assert rate["calls"] == len(seen) - sizes.warmup_calls >= sizes.min_calls
    assert rate["items_per_s"] > 0 and "ms_per_call" in rate


def test_tf32_off_restores_the_flags() -> None:
    import torch

    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        with engine_runner.tf32_off():
            assert not torch.backends.cudnn.allow_tf32
            assert not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def test_distinct_jpegs_are_distinct_photos() -> None:
    from PIL import Image

    images = workload.distinct_jpegs(150)
    assert len(set(images)) == 150
    sizes = {Image.open(io.BytesIO(data)).size for data in images}
    assert len(sizes) > 10 and all(min(size) >= 16 for size in sizes)


def test_log_errors_pick_the_load_failure() -> None:
    log = (
        'I1 pb_stub.cc] "Failed to initialize Python stub: TypeError: bad\\n\\nAt:\\n  x"\n'
        "I2 all fine\n"
        "| ofa_visual_entailment | 1 | UNAVAILABLE: Internal: TypeError: bad |\n"
    )
    found = gpu_check.log_errors(log)
    assert len(found) == 2 and "TypeError: bad" in found[0] and "At:" not in found[0]


def test_the_prometheus_reader_sums_by_label() -> None:
    from ofa_ve_ops import prometheus

    text = (
        "# HELP ofa_ve_image_path_fallbacks_total JPEGs ...\n"
        'ofa_ve_image_path_fallbacks_total{instance="a",reason="bad_file"} 2\n'
        'ofa_ve_image_path_fallbacks_total{instance="b",reason="bad_file"} 1\n'
        'ofa_ve_image_path_fallbacks_total{instance="a",reason="no_nvjpeg"} 0\n'
        "nv_inference_count 5\n"
    )
    samples = prometheus.parse(text)
    assert len(samples) == 4
    assert prometheus.by_label(samples, "ofa_ve_image_path_fallbacks_total", "reason") == {
        "bad_file": 3.0, "no_nvjpeg": 0.0}


# -------------------------------------------------------------------- wheelhouse


def test_the_device_call_fits_the_device_tool() -> None:
    """One call, inside the tool's limits (10 minutes, 2000 characters), leaving a 15-minute
    window room for the machine's start; the mode is said once, so a rehearsal can swap it."""
    (call,) = wheelhouse.DEVICE_CALLS
    assert call["timeout_s"] <= 540 and len(call["command"]) <= 2000
    assert call["carry"] == [".whl/server"]
    assert call["command"].count("--mode gpu") == 1
    assert call["timeout_s"] >= gpu_check.DEFAULT_BUDGET_S + 60  # the install, the imports
    assert sum(gpu_check.GPU_SIZES.step_budget_s.values()) <= gpu_check.DEFAULT_BUDGET_S
    assert set(gpu_check.GPU_SIZES.step_budget_s) == set(gpu_check.STEP_NAMES)
    names = [r.split("==")[0] for r in wheelhouse.wheels()]
    assert "simplejpeg" in names and "nvidia-pytriton" in names


def test_the_gpu_check_page_shows_the_device_call_as_made() -> None:
    """docs/gpu-check.md's call is `wheelhouse --calls-json`'s, character for character."""
    text = (REPO_ROOT / "docs" / "gpu-check.md").read_text()
    marker = "<!-- device calls: python -m ofa_ve_bench.wheelhouse --calls-json -->\n```json\n"
    assert marker in text
    shown = text.split(marker, 1)[1].split("```", 1)[0]
    assert json.loads(shown) == wheelhouse.DEVICE_CALLS
    assert shown == json.dumps(wheelhouse.DEVICE_CALLS, indent=2) + "\n"
    (call,) = wheelhouse.DEVICE_CALLS
    assert f'command="{call["command"]}"' in text and f"timeout_s={call['timeout_s']}" in text


def test_wheelhouse_slims_and_recompresses(tmp_path: Path) -> None:
    import zipfile

    source = tmp_path / "src" / "demo-1.0-py3-none-any.whl"
    source.parent.mkdir()
    with zipfile.ZipFile(source, "w") as z:
        z.writestr("demo/keep.py", "x = 1\n" * 100)
        z.writestr("demo/python_backend_stubs/3.11/stub", b"\0" * 1000)
        z.writestr(
            "demo-1.0.dist-info/RECORD",
            "demo/keep.py,,\ndemo/python_backend_stubs/3.11/stub,,\ndemo-1.0.dist-info/RECORD,,\n",
        )
    drop = wheelhouse.wheels("3.12")["nvidia-pytriton==0.7.0"]
    dest, dropped = wheelhouse.slim(source, tmp_path / "out", drop)
    assert dropped == ["demo/python_backend_stubs/3.11/stub"]
    with zipfile.ZipFile(dest) as z:
        assert z.namelist() == ["demo/keep.py", "demo-1.0.dist-info/RECORD"]
        assert all(i.compress_type == zipfile.ZIP_LZMA for i in z.infolist())
        assert "3.11" not in z.read("demo-1.0.dist-info/RECORD").decode()
    assert not any("3.12" in p for p in drop if "stubs" in p)
    assert [p.name for p in (tmp_path / "out").iterdir()] == [source.name]


# --------------------------------------------------------------------- rehearsal


def test_the_rehearsal_refuses_a_summary_that_would_not_give_true_figures(
    tmp_path: Path,
) -> None:
    names = gpu_check.STEP_NAMES
    summary = {"finished": True, "failed": [], "steps": [
        {"name": names["network"], "status": "ok", "figures": [
            {"batch_size": 4, "distinct_images": 4, "items_per_s": 1.0},
            {"batch_size": 8, "distinct_images": 2, "items_per_s": 1.0},
            {"dtype": "float16", "peak_gpu_memory_mib": 10.0}]},
        {"name": names["server_exact"], "status": "ok", "figures": {"levels": [
            {"concurrency": 4, "distinct_images": 4, "throughput": 1.0}]}},
    ]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    problems = gpu_rehearsal.check_outcome(tmp_path, 0)
    assert len(problems) == 2, problems
    assert problems[0].startswith(names["server_gpu"] + ": missing")
    assert "2 distinct images for 8 in flight" in problems[1]
    assert gpu_rehearsal.check_outcome(tmp_path / "none", 124) == [
        "exit status 124 (124: past the call's timeout)", "no summary.json"]


def test_a_rehearsed_call_past_its_timeout_ends_with_its_whole_process_group(
    tmp_path: Path,
) -> None:
    """124, as the device tool says, and no process of the call left behind."""
    marker = tmp_path / "child.pid"
    call = {"timeout_s": 2, "command": f"sleep 300 & echo $! > {marker}; wait # --mode gpu"}
    code, seconds = gpu_rehearsal.run_call(call, tmp_path, Path("/usr/bin"), tmp_path,
                                           network=True)
    assert code == 124 and seconds < 30
    child = int(marker.read_text())
    assert not Path(f"/proc/{child}").exists() or "zombie" in Path(
        f"/proc/{child}/status").read_text()


def test_the_tree_travels_as_git_carries_it(tmp_path: Path) -> None:
    """Tracked and untracked-not-ignored files, no links; the carried folder besides."""
    import subprocess

    root = tmp_path / "repo"
    (root / "carried").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / ".gitignore").write_text("carried/\nignored.txt\n")
    for name in ("kept.txt", "ignored.txt", "carried/w.whl"):
        (root / name).write_text(name)
    (root / "link").symlink_to("kept.txt")
    mib = gpu_rehearsal.copy_tree(tmp_path / "tree", ["carried"], root)
    copied = sorted(str(p.relative_to(tmp_path / "tree")) for p in
                    (tmp_path / "tree").rglob("*") if p.is_file())
    assert copied == [".gitignore", "carried/w.whl", "kept.txt"]
    assert mib * 2**20 == sum((tmp_path / "tree" / name).stat().st_size for name in copied)
    with pytest.raises(gpu_rehearsal.RehearsalError, match="missing"):
        gpu_rehearsal.copy_tree(tmp_path / "t2", ["nowhere"], root)
