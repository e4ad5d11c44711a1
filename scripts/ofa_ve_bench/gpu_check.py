#!/usr/bin/env python3
"""The GPU check: what a lent GPU window must measure, sized to fit it.

Why this shape: a GPU machine is lent for minutes (one H200, 15 minutes of device
time in all, at most 10 minutes a command, no network; docs/gpu-check.md). So the
check is two independent parts, each meant for one call of at most 8 minutes, and
each step has a time budget:

- ``--part engine`` (needs nothing beyond the machine's own torch): fp32 answers on
  the GPU equal the CPU's on the test images (labels identical, probabilities within
  1e-4); float16 / bfloat16 against float32 on a decisive demo checkpoint (label
  agreement, largest probability difference); the network's items/s at batch
  1..128 per dtype; ``prepare()`` items/s at 1..16 threads on real JPEGs;
- ``--part server`` (needs the wheelhouse: tritonserver, perf_analyzer, numpy<2):
  a real tritonserver driven by perf_analyzer over gRPC with real JPEGs at a few
  concurrencies, for ``image_path=exact`` and ``image_path=gpu``: throughput,
  p50/p99, GPU memory.

``--mode cpu`` (``auto`` where torch sees no GPU) runs the same code with small
sizes in seconds to minutes, so it is tested here (tests/test_gpu_check.py) and
cannot rot; its summary says "CPU mode: no GPU figures". One summary, Markdown and
JSON, lands in ``--out``:

    PYTHONPATH=scripts:model_repository/ofa_visual_entailment/1 \\
        python3 -m ofa_ve_bench.gpu_check --mode auto --part engine --out $OUT
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import datetime as dt
import importlib.metadata
import inspect
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ofa_ve_bench import machine, workload

PROB_TOLERANCE = 1e-4
"""Largest |p_gpu - p_cpu| allowed in float32 (the check's pass criterion)."""
CPU_MODE_BANNER = "CPU mode: no GPU figures (small sizes; this checks the code path only)"


@dataclass(frozen=True)
class Sizes:
    """How much each step does; GPU and CPU mode differ only here."""

    batch_sizes: tuple[int, ...]
    threads: tuple[int, ...]
    dtypes: tuple[str, ...]
    agreement_pairs: int
    """Pairs of (image, text) compared (0: all 221)."""
    network_seconds: float
    """Timed seconds per (dtype, batch size) point, after warm-up."""
    warmup_calls: int
    min_calls: int
    prepare_items: int
    """Items prepared per thread count."""
    concurrency: tuple[int, ...]
    perf_measurement_ms: int
    perf_request_count: int
    """0: perf_analyzer's stability windows; N: a fixed N requests per level."""
    server_max_batch: int
    server_dtype: str
    part_budget_s: float
    """Wall-clock budget of one part; steps past it are skipped (and say so)."""


GPU_SIZES = Sizes(
    batch_sizes=(1, 2, 4, 8, 16, 32, 64, 128),
    threads=(1, 2, 4, 8, 16),
    dtypes=("float32", "float16", "bfloat16"),
    agreement_pairs=0,
    network_seconds=2.0,
    warmup_calls=3,
    min_calls=5,
    prepare_items=256,
    concurrency=(1, 16, 64, 128),
    perf_measurement_ms=3000,
    perf_request_count=0,
    server_max_batch=64,
    server_dtype="float16",
    part_budget_s=450.0,
)
CPU_SIZES = Sizes(
    batch_sizes=(1, 2),
    threads=(1, 2),
    dtypes=("float32", "bfloat16"),
    agreement_pairs=6,
    network_seconds=0.3,
    warmup_calls=1,
    min_calls=2,
    prepare_items=8,
    concurrency=(1, 2),
    perf_measurement_ms=1000,
    perf_request_count=4,
    server_max_batch=4,
    server_dtype="float32",
    part_budget_s=300.0,
)


def _say(message: str) -> None:
    print(f"[gpu-check {dt.datetime.now():%H:%M:%S}] {message}", flush=True)


class Budget:
    """A part's deadline: each step asks for its share and is skipped when none is left."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.deadline = clock() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - self.clock())

    def share(self, fraction: float, at_least: float = 1.0) -> float:
        """Seconds for one step: `fraction` of what is left, at least `at_least`."""
        return max(at_least, fraction * self.left())


@dataclass
class Step:
    """One step's outcome: ok, skipped or failed, with its figures and notes."""

    name: str
    status: str = "ok"
    seconds: float = 0.0
    figures: Any = None
    notes: list[str] | None = None


class Check:
    """Runs steps under a budget and keeps what each one found (a failure never stops the
    other steps: a lent window is too precious to lose to one broken step)."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.steps: list[Step] = []

    def run(self, name: str, fn: Callable[[Step], Any], min_seconds: float = 5.0) -> Step:
        step = Step(name, notes=[])
        if self.budget.left() < min_seconds:
            step.status = "skipped"
            step.notes.append(f"time budget spent ({self.budget.left():.0f} s left)")
            self.steps.append(step)
            _say(f"{name}: skipped (budget)")
            return step
        started = time.monotonic()
        _say(f"{name} ...")
        try:
            step.figures = fn(step)
        except Exception as exc:  # a failed step is a finding, not the end of the check
            step.status = "failed"
            step.notes.append(f"{type(exc).__name__}: {exc}"[:600])
            step.notes.append(traceback.format_exc(limit=3)[-800:])
        step.seconds = round(time.monotonic() - started, 1)
        _say(f"{name}: {step.status} in {step.seconds:.1f} s")
        self.steps.append(step)
        return step


# ----------------------------------------------------------------------- facts


def nvidia_smi() -> dict[str, object] | None:
    """GPU name, driver, memory used/total (MiB) from nvidia-smi; None without one."""
    out = machine.nvidia_smi_csv("--query-gpu=name,driver_version,memory.used,memory.total")
    if out is None:
        return None
    first = out.strip().splitlines()[0] if out.strip() else ""
    parts = [p.strip() for p in first.split(",")]
    if len(parts) != 4:
        return {"raw": out.strip()}
    return {
        "name": parts[0],
        "driver": parts[1],
        "memory_used_mib": int(parts[2]) if parts[2].isdigit() else parts[2],
        "memory_total_mib": int(parts[3]) if parts[3].isdigit() else parts[3],
    }


def package_versions(names: Sequence[str]) -> dict[str, str]:
    """Installed versions of `names` ("missing" where not installed)."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def environment(device: str) -> dict[str, object]:
    import torch

    facts: dict[str, object] = {
        "machine": str(machine.describe(device)),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "numpy": np.__version__,
        "packages": package_versions(
            ["nvidia-pytriton", "tritonclient", "protobuf", "grpcio", "pillow", "tokenizers"]
        ),
        "nvidia_smi": nvidia_smi(),
    }
    return facts


# ----------------------------------------------------------------- checkpoint


def write_checkpoint(out: Path) -> tuple[Path, str]:
    """A decisive demo checkpoint if the engine's writer offers one, else the plain one.

    Why decisive: random weights give near-ties (probabilities around 1/3), where any
    rounding flips a label and agreement says nothing; a decisive checkpoint gives
    clear answers, so a flip means the dtype changed an answer that was not close.
    """
    from ofa_ve_engine.demo_checkpoint import write_demo_checkpoint

    if "decisive" in inspect.signature(write_demo_checkpoint).parameters:
        return write_demo_checkpoint(out, decisive=True), "decisive demo checkpoint"
    return (
        write_demo_checkpoint(out),
        "plain demo checkpoint (write_demo_checkpoint has no decisive=True yet: "
        "near-tie answers, so reduced-precision agreement understates the real model's)",
    )


def load_engine(model_dir: Path, device: str, dtype: str, forward_batch_size: int) -> Any:
    from ofa_ve_bench.engine_runner import build_engine

    engine, _ = build_engine(
        model_dir, device, {"dtype": dtype}, forward_batch_size=forward_batch_size
    )
    return engine


def predict_all(engine: Any, prepared: Sequence[Any], batch_size: int) -> np.ndarray:
    return np.concatenate(
        [engine.predict(prepared[i : i + batch_size]) for i in range(0, len(prepared), batch_size)]
    )


# --------------------------------------------------------------- engine steps


def compare(reference: np.ndarray, other: np.ndarray) -> dict[str, object]:
    """Label agreement and largest probability difference (precision_agreement's)."""
    from ofa_ve_bench.precision_agreement import compare as _compare

    return _compare(reference, other)


def agreement_work(sizes: Sizes) -> list[workload.Item]:
    pairs = workload.agreement_items()
    if sizes.agreement_pairs:  # spread over the images: every image once before repeats
        per_image = len(workload.AGREEMENT_HYPOTHESES)
        n_images = len(pairs) // per_image
        pairs = [pairs[(i % n_images) * per_image + i // n_images] for i in range(len(pairs))]
        pairs = pairs[: sizes.agreement_pairs]
    return pairs


def step_gpu_equals_cpu(model_dir: Path, device: str, sizes: Sizes, step: Step) -> dict:
    """fp32 on the GPU against fp32 on the CPU, TF32 off: the same answers."""
    import torch

    if device == "cpu":
        step.status = "skipped"
        step.notes.append("no GPU: nothing to compare the CPU with")
        return {}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    work = agreement_work(sizes)
    results = {}
    for where in ("cpu", device):
        engine = load_engine(model_dir, where, "float32", 16)
        prepared = [engine.prepare(image, h, p or None) for image, h, p in work]
        results[where] = predict_all(engine, prepared, 16)
        del engine
    row = compare(results["cpu"], results[device])
    row["labels_identical"] = bool(row["flips"] == 0)
    row["within_tolerance"] = bool(row["max_prob_diff"] <= PROB_TOLERANCE)
    row["tolerance"] = PROB_TOLERANCE
    if not (row["labels_identical"] and row["within_tolerance"]):
        step.status = "failed"
        step.notes.append(
            f"fp32 GPU differs from CPU: {row['flips']} label flips, max |dp| "
            f"{row['max_prob_diff']:.2e} (tolerance {PROB_TOLERANCE:g})"
        )
    return row


def step_precision(model_dir: Path, device: str, sizes: Sizes, step: Step) -> list[dict]:
    """Each reduced dtype against float32 on the same device."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    work = agreement_work(sizes)
    reference_engine = load_engine(model_dir, device, "float32", 16)
    prepared = [reference_engine.prepare(image, h, p or None) for image, h, p in work]
    reference = predict_all(reference_engine, prepared, 16)
    del reference_engine
    rows = []
    for dtype in sizes.dtypes:
        if dtype == "float32":
            continue
        engine = load_engine(model_dir, device, dtype, 16)
        row = {"device": device, "dtype": dtype}
        row.update(compare(reference, predict_all(engine, prepared, 16)))
        rows.append(row)
        del engine
    return rows


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def step_network(
    model_dir: Path, device: str, sizes: Sizes, budget: Budget, step: Step
) -> list[dict]:
    """Items/s of `predict` (collate, copy to the device, forward) per dtype and batch."""
    import torch

    largest = max(sizes.batch_sizes)
    jpegs = workload.items(formats="jpeg")
    rows = []
    for dtype in sizes.dtypes:
        engine = load_engine(model_dir, device, dtype, largest)
        base = [engine.prepare(image, h, p or None) for image, h, p in jpegs]
        prepared = [base[i % len(base)] for i in range(largest)]
        for batch in sizes.batch_sizes:
            if budget.left() < 10:
                step.notes.append(f"budget: stopped before {dtype} batch {batch}")
                break
            items = prepared[:batch]
            for _ in range(sizes.warmup_calls):  # first calls at a shape pay for kernels
                engine.predict(items)
            _sync(device)
            calls, started = 0, time.perf_counter()
            while True:
                engine.predict(items)
                calls += 1
                elapsed = time.perf_counter() - started
                if elapsed >= sizes.network_seconds and calls >= sizes.min_calls:
                    break
            _sync(device)
            elapsed = time.perf_counter() - started
            rows.append(
                {
                    "dtype": dtype,
                    "batch_size": batch,
                    "items_per_s": round(batch * calls / elapsed, 2),
                    "ms_per_call": round(1000 * elapsed / calls, 3),
                    "calls": calls,
                }
            )
        if device.startswith("cuda"):
            rows.append(
                {
                    "dtype": dtype,
                    "peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                }
            )
            torch.cuda.reset_peak_memory_stats()
        del engine
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def step_prepare(model_dir: Path, sizes: Sizes, budget: Budget, step: Step) -> list[dict]:
    """`prepare()` items/s (decode, resize, tokenise) at 1..N threads on real JPEGs."""
    engine = load_engine(model_dir, "cpu", "float32", 1)
    sets = {
        "test JPEGs": [image for image, _, _ in workload.items(formats="jpeg")],
        "camera JPEGs (1920x1080, 4032x3024)": workload.large_jpegs(),
    }
    hypothesis, premise = workload.LOAD_TEXTS[1]
    rows = []
    for label, images in sets.items():
        for threads in sizes.threads:
            if budget.left() < 5:
                step.notes.append(f"budget: stopped before {label} at {threads} threads")
                return rows
            count = sizes.prepare_items

            def one(i: int, images: list[bytes] = images) -> None:
                engine.prepare(images[i % len(images)], hypothesis, premise)

            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                list(pool.map(one, range(threads)))  # warm-up: threads started, caches
                started = time.perf_counter()
                list(pool.map(one, range(count)))
                elapsed = time.perf_counter() - started
            rows.append(
                {
                    "images": label,
                    "threads": threads,
                    "items_per_s": round(count / elapsed, 2),
                    "items": count,
                }
            )
    return rows


# --------------------------------------------------------------- server steps


def server_prerequisites() -> list[str]:
    """What the server part lacks on this machine (empty: it can run)."""
    missing = []
    for module, what in (
        ("pytriton", "nvidia-pytriton (tritonserver)"),
        ("tritonclient.grpc", "tritonclient[grpc]"),
    ):
        try:
            __import__(module)
        except Exception as exc:  # ImportError, or a protobuf version clash
            missing.append(f"{what}: {type(exc).__name__}: {exc}"[:300])
    if int(np.__version__.split(".")[0]) >= 2:
        missing.append(f"numpy<2 for the Python-backend stub (this Python has {np.__version__})")
    if not missing:
        try:
            from ofa_ve_ops import triton_runtime

            triton_runtime.prepare_runtime()  # lays tritonserver out; needs libpython3.X.so
        except Exception as exc:
            missing.append(f"tritonserver runtime: {type(exc).__name__}: {exc}"[:400])
    try:
        from ofa_ve_bench.perf_analyzer_sweep import find_perf_analyzer

        find_perf_analyzer()
    except FileNotFoundError as exc:
        missing.append(str(exc))
    return missing


def step_server(
    model_dir: Path,
    image_path: str,
    sizes: Sizes,
    out: Path,
    budget: Budget,
    step: Step,
    model_repository: Path | None = None,
) -> dict:
    """A real tritonserver with `image_path`, perf_analyzer at a few concurrencies."""
    from ofa_ve_ops.server_process import ServerStartError

    from ofa_ve_bench import model_config, server_run
    from ofa_ve_bench import perf_analyzer_sweep as sweep

    batch = sizes.server_max_batch
    edits = model_config.ConfigEdits(
        max_batch_size=batch,
        preferred_batch_sizes=sorted({max(1, batch // 4), max(1, batch // 2), batch}),
        queue_delay_us=2000,
        parameters={
            "image_path": image_path,
            "dtype": sizes.server_dtype,
            "warmup_batch_sizes": f"1,{batch}",
        },
    )
    log_dir = Path(tempfile.mkdtemp(prefix=f"gpu-check-server-{image_path}-"))
    atexit.register(shutil.rmtree, log_dir, ignore_errors=True)  # its log is copied to out
    figures: dict[str, object] = {"image_path": image_path, "dtype": sizes.server_dtype}
    try:
        server = server_run.start_server(
            model_dir,
            log_dir,
            edits,
            ready_timeout_s=min(240.0, budget.share(0.6, 30)),
            model_repository=model_repository,
        )
    except (ServerStartError, RuntimeError) as exc:
        step.status = "failed"
        figures["refused"] = True
        reasons = log_errors(str(exc)) or [str(exc)[-600:]]
        step.notes.append(f"the server did not become ready with image_path={image_path}:")
        step.notes += reasons
        return figures
    finally:
        _copy_log(log_dir, out / f"server-{image_path}.log")
    try:
        figures["cold_start_to_ready_s"] = round(server.ready_after_s or 0.0, 1)
        figures["instance"] = instance_lines(server.log_text())  # what the model says it runs
        level_timeout = max(30.0, budget.share(0.5 / max(1, len(sizes.concurrency)), 30))
        points = sweep.sweep(
            url=server.grpc_url,
            out_dir=log_dir / "sweep",
            concurrency=sizes.concurrency,
            formats="jpeg",
            measurement_ms=sizes.perf_measurement_ms,
            stability=25,
            max_trials=3,
            request_count=sizes.perf_request_count,
            timeout_s=level_timeout,
        )
        figures["levels"] = [
            {
                "concurrency": int(p.level),
                "throughput": round(p.throughput, 2),
                "p50_ms": round(p.p50_ms, 2),
                "p99_ms": round(p.p99_ms, 2),
                "avg_batch": p.avg_batch,
                "errors": p.errors,
                "note": p.note,
            }
            for p in points
        ]
        figures["memory"] = server_run.server_memory(server.pid)
        figures["nvidia_smi"] = nvidia_smi()
        if any(p.errors for p in points):
            step.status = "failed"
            step.notes.append("some requests failed (see levels' errors and notes)")
    finally:
        server.stop()
        _copy_log(log_dir, out / f"server-{image_path}.log")
    return figures


def instance_lines(log: str) -> list[str]:
    """The model's own "loaded ... on DEVICE (dtype, ..., image path ...)" log lines."""
    found = []
    for line in log.splitlines():
        if "weights from" in line and "loaded" in line:
            found.append(line.split("] ", 1)[-1].strip().strip('"')[:400])
    return found


def log_errors(log: str, limit: int = 3) -> list[str]:
    """The lines of a tritonserver log that say why a model failed to load."""
    keys = ("UNAVAILABLE", "Failed to initialize Python stub", "failed to load", "ERROR:")
    found = []
    for line in log.splitlines():
        if any(key in line for key in keys):
            text = line.strip().split("\\n\\nAt:")[0][-400:]
            if text not in found:
                found.append(text)
    return found[:limit]


def _copy_log(log_dir: Path, dest: Path, limit: int = 200_000) -> None:
    """The server log's tail into the summary folder (what comes back from $OUT is capped)."""
    log = log_dir / "tritonserver.log"
    if log.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(log.read_bytes()[-limit:])


# --------------------------------------------------------------------- summary


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _table(rows: Sequence[dict], columns: Sequence[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return lines


def summary_markdown(summary: dict[str, Any]) -> str:
    """The one Markdown summary of a run (every step, its status, its figures)."""
    lines = [f"# GPU check ({summary['part']} part, {summary['mode']} mode)", ""]
    if summary["mode"] == "cpu":
        lines += [f"**{CPU_MODE_BANNER}.**", ""]
    env = summary.get("environment", {})
    lines += [
        f"- date: {summary['date']}",
        f"- machine: {env.get('machine', '?')}",
        f"- python {env.get('python')}, torch {env.get('torch')} (CUDA {env.get('cuda')}), "
        f"numpy {env.get('numpy')}",
        f"- GPU (nvidia-smi): {env.get('nvidia_smi') or 'none'}",
        f"- weights: {summary.get('weights', '?')}",
        f"- total: {summary.get('seconds', 0):.0f} s of a {summary['budget_s']:.0f} s budget",
        "",
    ]
    for step in summary["steps"]:
        lines.append(f"## {step['name']}: {step['status']} ({step['seconds']:.1f} s)")
        lines.append("")
        lines += [f"- {note.strip()}" for note in step.get("notes") or [] if note.strip()]
        figures = step.get("figures")
        if isinstance(figures, list) and figures and isinstance(figures[0], dict):
            columns = list(dict.fromkeys(k for row in figures for k in row))
            columns = [c for c in columns if c not in ("flip_margins_fp32",)]
            lines += ["", *_table(figures, columns)]
        elif isinstance(figures, dict) and figures:
            levels = figures.get("levels")
            flat = {k: v for k, v in figures.items() if k not in ("levels", "memory")}
            lines += [f"- {k}: {v}" for k, v in flat.items()]
            if levels:
                lines += ["", *_table(levels, list(levels[0]))]
            memory = figures.get("memory")
            if memory:
                procs = ", ".join(
                    f"{p['process']} {p['peak_rss_mib']:.0f} MiB peak RSS"
                    + (f", GPU {p['gpu_mib']} MiB" if "gpu_mib" in p else "")
                    for p in memory["processes"]
                )
                lines.append(f"- memory: {procs}")
        lines.append("")
    return "\n".join(lines)


def write_summary(summary: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    text = summary_markdown(summary)
    (out / "summary.md").write_text(text + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return text


# ------------------------------------------------------------------------ main


def resolve_mode(mode: str) -> str:
    """`auto` -> `gpu` where torch sees a CUDA GPU, else `cpu`."""
    if mode != "auto":
        return mode
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def run_check(
    mode: str,
    part: str,
    out: Path,
    model_dir: Path | None = None,
    sizes: Sizes | None = None,
    budget_s: float | None = None,
    model_repository: Path | None = None,
) -> dict[str, Any]:
    """Run the check's `part` (engine, server or all) and write the summary into `out`."""
    mode = resolve_mode(mode)
    sizes = sizes or (GPU_SIZES if mode == "gpu" else CPU_SIZES)
    if mode == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--mode gpu: torch sees no CUDA GPU here (use --mode auto or cpu)")
    device = "cuda" if mode == "gpu" else "cpu"
    parts = ("engine", "server") if part == "all" else (part,)
    budget_s = budget_s or sizes.part_budget_s * len(parts)
    budget = Budget(budget_s)
    started = time.monotonic()
    summary: dict[str, Any] = {
        "mode": mode,
        "part": part,
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "budget_s": budget_s,
        "sizes": sizes.__dict__,
        "environment": environment(device),
    }
    if mode == "cpu":
        summary["banner"] = CPU_MODE_BANNER
    check = Check(budget)
    if model_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        model_dir, weights = write_checkpoint(scratch / "m")
    else:
        weights = f"given model directory {model_dir}"
    summary["weights"] = weights
    if "plain" in weights:
        check.steps.append(Step("checkpoint", "ok", 0.0, None, [weights]))

    if "engine" in parts:
        check.run(
            "fp32 GPU answers equal CPU answers",
            lambda s: step_gpu_equals_cpu(model_dir, device, sizes, s),
        )
        check.run(
            "reduced precision against float32",
            lambda s: step_precision(model_dir, device, sizes, s),
        )
        check.run(
            "network items/s per dtype and batch",
            lambda s: step_network(model_dir, device, sizes, budget, s),
            min_seconds=15.0,
        )
        check.run(
            "prepare() items/s per thread count",
            lambda s: step_prepare(model_dir, sizes, budget, s),
        )
    if "server" in parts:
        missing = server_prerequisites()
        if missing:
            check.steps.append(Step("tritonserver + perf_analyzer", "skipped", 0.0, None, missing))
        else:
            for image_path in ("exact", "gpu"):
                check.run(
                    f"tritonserver + perf_analyzer, image_path={image_path}",
                    lambda s, ip=image_path: step_server(
                        model_dir, ip, sizes, out, budget, s, model_repository
                    ),
                    min_seconds=30.0,
                )
    summary["steps"] = [step.__dict__ for step in check.steps]
    summary["seconds"] = round(time.monotonic() - started, 1)
    summary["failed"] = [s.name for s in check.steps if s.status == "failed"]
    text = write_summary(summary, out)
    print("\n" + text, flush=True)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="auto", choices=["auto", "gpu", "cpu"])
    parser.add_argument("--part", default="all", choices=["engine", "server", "all"])
    parser.add_argument("--out", type=Path, required=True, help="summary.md / summary.json here")
    parser.add_argument("--model-dir", type=Path, help="real weights (default: a demo checkpoint)")
    parser.add_argument(
        "--budget", type=float, help="seconds for the whole run (default: per part)"
    )
    parser.add_argument(
        "--model-repository", type=Path, help="serve a copy of this one (default: the checkout's)"
    )
    args = parser.parse_args(argv)
    summary = run_check(
        args.mode,
        args.part,
        args.out,
        args.model_dir,
        budget_s=args.budget,
        model_repository=args.model_repository,
    )
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
