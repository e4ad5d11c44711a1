#!/usr/bin/env python3
"""The GPU check: everything a lent GPU window must measure, in one call sized to it.

Why this shape: a GPU machine is lent for minutes (15 in all, machine start included,
at most 10 a command, no network; docs/gpu-check.md). So the check is one device call
of at most 9 minutes: the engine part first (it answers most), then the server part,
every step under a time budget of its own, and the summary (``summary.md``,
``summary.json``) rewritten after every step, so a call cut at its limit still returns
what it measured. The call itself is written in one place
(``python -m ofa_ve_bench.wheelhouse --calls-json``) and rehearsed here verbatim
(``make gpu-rehearsal``).

Steps (engine part): fp32 answers on the GPU equal the CPU's (TF32 off); float16 and
bfloat16 against float32 on a decisive demo checkpoint; the network's items/s per dtype
and batch on distinct images (and, apart, one image shared by the batch); nvJPEG
against the exact image path; ``prepare()`` items/s per thread count. Server part: a
real tritonserver per ``image_path`` (exact, gpu) driven by perf_analyzer over gRPC with
distinct JPEGs. Every throughput row records how many distinct images it used.

``--mode cpu`` (``auto`` where torch sees no GPU) runs the same code with small sizes,
so it is tested here and rehearsed (its summary says "CPU mode: no GPU figures"):

    PYTHONPATH=scripts:model_repository/ofa_visual_entailment/1 \\
        python3 -m ofa_ve_bench.gpu_check --mode auto --out $OUT
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import contextlib
import datetime as dt
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ofa_ve_data import workload

from ofa_ve_bench import machine
from ofa_ve_bench.precision_agreement import compare, load_engine

PROB_TOLERANCE = 1e-4
"""Largest |p_gpu - p_cpu| allowed in float32 (the check's pass criterion)."""
CPU_MODE_BANNER = "CPU mode: no GPU figures (small sizes; this checks the code path only)"
STEP_NAMES = {
    "equal": "fp32 GPU answers equal CPU answers",
    "precision": "reduced precision against float32",
    "network": "network items/s per dtype and batch (distinct images)",
    "shared": "network items/s, one image shared by the batch",
    "image_path": "nvJPEG against the exact image path",
    "prepare": "prepare() items/s per thread count",
    "server_exact": "tritonserver + perf_analyzer, image_path=exact",
    "server_gpu": "tritonserver + perf_analyzer, image_path=gpu",
}
"""Step key -> the name the summary gives it."""
ENGINE_STEPS = ("equal", "precision", "network", "shared", "image_path", "prepare")
SERVER_STEPS = ("server_exact", "server_gpu")


@dataclass(frozen=True)
class Sizes:
    """How much each step does and may take; GPU and CPU mode differ only here."""

    batch_sizes: tuple[int, ...]
    threads: tuple[int, ...]
    dtypes: tuple[str, ...]
    agreement_pairs: int
    """Pairs of (image, text) compared (0: all of ``workload.agreement_items``)."""
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
    server_kind: str | None
    """The instance kind the server runs (None: the committed KIND_AUTO)."""
    step_budget_s: dict[str, float] = field(default_factory=dict)
    """Seconds each step may take (the run's budget may leave it less)."""


GPU_SIZES = Sizes(
    batch_sizes=(1, 2, 4, 8, 16, 32, 64, 128),
    threads=(1, 2, 4, 8, 16),
    dtypes=("float32", "float16", "bfloat16"),
    agreement_pairs=0,
    network_seconds=1.0,
    warmup_calls=3,
    min_calls=5,
    prepare_items=256,
    concurrency=(1, 16, 64, 128),
    perf_measurement_ms=2000,
    perf_request_count=0,
    server_max_batch=64,
    server_dtype="float16",
    server_kind="KIND_GPU",  # a Triton that sees no GPU refuses, instead of CPU figures
    step_budget_s={"equal": 35, "precision": 35, "network": 90, "shared": 10,
                   "image_path": 20, "prepare": 35, "server_exact": 110, "server_gpu": 110},
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
    server_kind=None,
    step_budget_s={"equal": 30, "precision": 60, "network": 60, "shared": 30,
                   "image_path": 60, "prepare": 60, "server_exact": 120, "server_gpu": 120},
)
DEFAULT_BUDGET_S = 450.0
"""The whole run's seconds: one device call of 540 s holds it, the wheels' install before
it and the imports (wheelhouse.CALL_TIMEOUT_S)."""


def _say(message: str) -> None:
    print(f"[gpu-check {dt.datetime.now():%H:%M:%S}] {message}", flush=True)


class Budget:
    """A deadline: steps ask what is left and stop (or are skipped) when nothing is."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.deadline = clock() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - self.clock())

    def share(self, fraction: float, at_least: float = 1.0) -> float:
        """Seconds for one piece of a step: `fraction` of what is left, at least `at_least`."""
        return max(at_least, fraction * self.left())

    def sub(self, seconds: float) -> Budget:
        """A step's own budget: `seconds`, or what is left of this one if less."""
        return Budget(min(seconds, self.left()), self.clock)


@dataclass
class Step:
    """One step's outcome: ok, skipped or failed, with its figures and notes."""

    name: str
    status: str = "ok"
    seconds: float = 0.0
    figures: Any = None
    notes: list[str] = field(default_factory=list)
    budget_s: float = 0.0


class Check:
    """Runs steps under the run's budget, each under its own, and rewrites the summary
    after each one (a failure never stops the other steps: a lent window is too precious
    to lose to one broken step, and a call cut short still returns what it measured)."""

    def __init__(self, budget: Budget, on_step: Callable[[list[Step]], None]) -> None:
        self.budget = budget
        self.steps: list[Step] = []
        self.on_step = on_step

    def add(self, step: Step) -> None:
        self.steps.append(step)
        self.on_step(self.steps)

    def run(
        self, name: str, seconds: float, fn: Callable[[Step, Budget], Any], min_s: float = 5.0
    ) -> Step:
        budget = self.budget.sub(seconds)
        step = Step(name, budget_s=round(budget.left(), 1))
        if budget.left() < min_s:
            step.status = "skipped"
            step.notes.append(f"time budget spent ({self.budget.left():.0f} s left of the run)")
            _say(f"{name}: skipped (budget)")
            self.add(step)
            return step
        started = time.monotonic()
        _say(f"{name} (budget {budget.left():.0f} s) ...")
        try:
            step.figures = fn(step, budget)
        except Exception as exc:  # a failed step is a finding, not the end of the check
            step.status = "failed"
            step.notes.append(f"{type(exc).__name__}: {exc}"[:600])
            step.notes.append(traceback.format_exc(limit=3)[-800:])
        step.seconds = round(time.monotonic() - started, 1)
        _say(f"{name}: {step.status} in {step.seconds:.1f} s")
        self.add(step)
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


def imported_versions(modules: Sequence[str]) -> dict[str, str]:
    """The version of each module as this Python imports it, or why it does not."""
    out = {}
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # missing, or broken against this numpy/torch
            out[name] = f"not importable ({type(exc).__name__}: {exc})"[:200]
            continue
        version = getattr(module, "__version__", None)
        if version is None:
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                version = "?"
        out[name] = f"{version} ({Path(getattr(module, '__file__', '') or '?').parent})"
    return out


def package_versions(names: Sequence[str]) -> dict[str, str]:
    """Installed versions of distributions that are not imported here ("missing" if none)."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def environment(device: str) -> dict[str, object]:
    import torch
    from ofa_ve_engine import jpeg

    return {
        "machine": str(machine.describe(device)),
        "python": f"{sys.version.split()[0]} ({sys.executable}, prefix {sys.prefix})",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "imported": imported_versions(
            ["numpy", "torch", "torchvision", "PIL", "simplejpeg", "tokenizers"]
        ),
        "exact_jpeg_decoder": (
            "simplejpeg (libjpeg-turbo)" if jpeg.simplejpeg is not None
            else "Pillow (simplejpeg is not importable: the exact path decodes JPEGs with Pillow)"
        ),
        "packages": package_versions(["nvidia-pytriton", "tritonclient", "protobuf", "grpcio"]),
        "nvidia_smi": nvidia_smi(),
    }


@contextlib.contextmanager
def tf32_off() -> Iterator[None]:
    """TF32 off for matmuls and convolutions (fp32 as the CPU computes it), then restored."""
    import torch

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def math_flags() -> str:
    import torch

    return (f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, "
            f"TF32 cuDNN {torch.backends.cudnn.allow_tf32}")


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


def predict_all(
    engine: Any, prepared: Sequence[Any], batch_size: int, budget: Budget | None = None
) -> np.ndarray:
    """Probabilities of `prepared` in batches; stops early (fewer rows) when `budget` ends."""
    rows = []
    for i in range(0, len(prepared), batch_size):
        if budget is not None and rows and budget.left() < 2:
            break
        rows.append(engine.predict(prepared[i : i + batch_size]))
    return np.concatenate(rows) if rows else np.zeros((0, 3), dtype=np.float32)


def answers(
    model_dir: Path,
    device: str,
    dtype: str,
    work: Sequence[workload.Item],
    prepared: Sequence[Any] | None = None,
    budget: Budget | None = None,
) -> tuple[Sequence[Any], np.ndarray]:
    """The prepared items of `work` (or `prepared`) and an engine's probabilities for them
    on `device` in `dtype`; the engine is dropped after (one model in memory at a time)."""
    engine = load_engine(model_dir, device, dtype, 16)
    if prepared is None:
        prepared = [engine.prepare(image, h, p or None) for image, h, p in work]
    return prepared, predict_all(engine, prepared, 16, budget)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: str) -> float | None:
    if device.startswith("cuda"):
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return None


# --------------------------------------------------------------- engine steps


def agreement_work(sizes: Sizes) -> list[workload.Item]:
    pairs = workload.agreement_items()
    if sizes.agreement_pairs:  # spread over the images: every image once before repeats
        per_image = len(workload.AGREEMENT_HYPOTHESES)
        n_images = len(pairs) // per_image
        pairs = [pairs[(i % n_images) * per_image + i // n_images] for i in range(len(pairs))]
        pairs = pairs[: sizes.agreement_pairs]
    return pairs


def step_gpu_equals_cpu(
    model_dir: Path, device: str, sizes: Sizes, step: Step, budget: Budget
) -> dict:
    """fp32 on the GPU against fp32 on the CPU, TF32 off: the same answers."""
    if device == "cpu":
        step.notes.append("CPU mode: the CPU against itself (this rehearses the code path)")
    work = agreement_work(sizes)
    with tf32_off():
        prepared, on_gpu = answers(model_dir, device, "float32", work)
        # The slow side sets how many pairs are compared.
        _, on_cpu = answers(model_dir, "cpu", "float32", work, prepared, budget)
    row = compare(on_cpu, on_gpu[: len(on_cpu)])
    row["math_flags"] = "TF32 off (restored after)"
    if len(on_cpu) < len(prepared):
        step.notes.append(f"budget: {len(on_cpu)} of {len(prepared)} pairs compared")
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


def step_precision(
    model_dir: Path, device: str, sizes: Sizes, step: Step, budget: Budget
) -> list[dict]:
    """Each reduced dtype against float32 (TF32 off) on the same device."""
    work = agreement_work(sizes)
    with tf32_off():
        prepared, reference = answers(model_dir, device, "float32", work)
    step.notes.append("float32 reference with TF32 off (restored after)")
    rows = []
    for dtype in sizes.dtypes:
        if dtype == "float32":
            continue
        if budget.left() < 5:
            step.notes.append(f"budget: stopped before {dtype}")
            break
        row = {"device": device, "dtype": dtype}
        row.update(compare(reference, answers(model_dir, device, dtype, work, prepared)[1]))
        rows.append(row)
    return rows


def _time_calls(engine: Any, items: Sequence[Any], sizes: Sizes, device: str) -> dict:
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
    return {
        "items_per_s": round(len(items) * calls / elapsed, 2),
        "ms_per_call": round(1000 * elapsed / calls, 3),
        "calls": calls,
    }


def step_network(
    model_dir: Path, device: str, sizes: Sizes, step: Step, budget: Budget
) -> list[dict]:
    """Items/s of `predict` (collate, copy to the device, forward) per dtype and batch, each
    item a distinct image (the stem runs once per distinct image), torch's default math
    flags (the serving setting); peak GPU memory per dtype."""
    largest = max(sizes.batch_sizes)
    images = workload.distinct_jpegs(largest)
    texts = workload.LOAD_TEXTS
    step.notes.append(f"{largest} distinct JPEGs; math flags: {math_flags()}")
    rows: list[dict] = []
    prepared = None
    for dtype in sizes.dtypes:
        _reset_peak(device)
        engine = load_engine(model_dir, device, dtype, largest)
        if prepared is None:  # pixels and tokens do not depend on the dtype
            prepared = [
                engine.prepare(image, *_texts(texts, i)) for i, image in enumerate(images)
            ]
        for batch in sizes.batch_sizes:
            if budget.left() < 5:
                step.notes.append(f"budget: stopped before {dtype} batch {batch}")
                break
            row = {"dtype": dtype, "batch_size": batch, "distinct_images": batch}
            row.update(_time_calls(engine, prepared[:batch], sizes, device))
            rows.append(row)
        peak = _peak_mib(device)
        if peak is not None:
            rows.append({"dtype": dtype, "peak_gpu_memory_mib": peak})
        del engine
        if budget.left() < 5:
            break
    return rows


def _texts(texts: Sequence[tuple[str, str]], i: int) -> tuple[str, str | None]:
    hypothesis, premise = texts[i % len(texts)]
    return hypothesis, premise or None


def step_shared_image(
    model_dir: Path, device: str, sizes: Sizes, step: Step, budget: Budget
) -> list[dict]:
    """The speed-up of many hypotheses about one image: the batch shares one stem pass.
    Its own figure, never a network throughput: one distinct image per batch."""
    largest = max(sizes.batch_sizes)
    dtype = sizes.server_dtype
    engine = load_engine(model_dir, device, dtype, largest)
    (image,) = workload.distinct_jpegs(1)
    hypotheses = [*workload.AGREEMENT_HYPOTHESES, *(h for h, _ in workload.LOAD_TEXTS)]
    shared = [engine.prepare(image, hypotheses[i % len(hypotheses)] + f" ({i})")
              for i in range(largest)]
    row = {"dtype": dtype, "batch_size": largest, "distinct_images": 1,
           "images": "one image, a distinct hypothesis per item"}
    row.update(_time_calls(engine, shared, sizes, device))
    return [row]


def step_image_path(
    model_dir: Path, device: str, sizes: Sizes, step: Step, budget: Budget
) -> dict:
    """nvJPEG + device resize against the exact CPU route on the test JPEGs: largest pixel
    difference, then label agreement and probability difference of the answers."""
    from ofa_ve_engine.gpu_image import GpuImageDecoder, device_eligible
    from ofa_ve_engine.image import load_pixels

    exact = load_engine(model_dir, device, "float32", 16)
    size, limits = exact.settings.patch_image_size, exact.limits
    if device == "cpu":
        step.notes.append("CPU mode: torchvision's CPU decoder stands in for nvJPEG")
    decoder = GpuImageDecoder(size, limits, device)
    rows = []
    for path in workload.image_paths("jpeg"):
        data = path.read_bytes()
        route = "device" if device_eligible(data, limits) else "CPU (exact route)"
        pixels, errors = decoder.load([data])
        if errors:
            rows.append({"image": path.name, "route": route, "error": str(errors[0])})
            continue
        reference = load_pixels(data, size, limits)
        diff = np.abs(pixels[0].cpu().numpy().astype(np.int16) - reference.astype(np.int16))
        rows.append({"image": path.name, "route": route, "max_pixel_diff": int(diff.max()),
                     "mean_pixel_diff": round(float(diff.mean()), 4)})
    work = [(i, h, p) for i, h, p in agreement_work(sizes)
            if i[:2] == b"\xff\xd8"]  # the JPEG pairs
    with tf32_off():
        prepared = [exact.prepare(i, h, p or None) for i, h, p in work]
        reference = predict_all(exact, prepared, 16)
        exact.image_path = "gpu"  # the same engine, JPEGs kept encoded for the device
        on_device = predict_all(exact, [exact.prepare(i, h, p or None) for i, h, p in work], 16)
    answers = compare(reference, on_device)
    decoders = [d for d in (decoder, exact.gpu_image_decoder) if d is not None]
    fallbacks: Counter[str] = Counter()
    for d in decoders:
        fallbacks.update(d.take_fallbacks())
    figures = {
        "images": rows,
        "answers": {k: answers[k] for k in ("pairs", "label_agreement", "max_prob_diff",
                                            "flips")},
        "nvjpeg_decoded": sum(d.decoded for d in decoders),
        "decoder_off": next((d.off_reason for d in decoders if d.off_reason), None),
        "fallbacks": dict(fallbacks),
    }
    if device != "cpu" and (figures["decoder_off"] or not figures["nvjpeg_decoded"]):
        step.status = "failed"  # CPU decoding must not pass for nvJPEG's figures
        step.notes.append(f"nvJPEG did not run (decoder off: {figures['decoder_off']})")
    return figures


def step_prepare(sizes: Sizes, model_dir: Path, step: Step, budget: Budget) -> list[dict]:
    """`prepare()` items/s (decode, resize, tokenise) at 1..N threads on distinct JPEGs."""
    engine = load_engine(model_dir, "cpu", "float32", 1)
    most = max(sizes.threads)
    sets = {
        "photo-sized JPEGs": workload.distinct_jpegs(max(most, 64)),
        "camera JPEGs (1920x1080, 4032x3024)": workload.camera_jpegs(most),
    }
    hypothesis, premise = workload.LOAD_TEXTS[1]
    rows = []
    for label, images in sets.items():
        for threads in sizes.threads:
            if budget.left() < 3:
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
            rows.append({"images": label, "threads": threads,
                         "distinct_images": min(count, len(images)),
                         "items_per_s": round(count / elapsed, 2), "items": count})
    return rows


# --------------------------------------------------------------- server steps


def server_prerequisites() -> list[str]:
    """What the server part lacks on this machine (empty: it can run)."""
    missing = []
    for module, what in (
        ("pytriton", "nvidia-pytriton (tritonserver)"),
        ("tritonclient.grpc", "tritonclient[grpc]"),
    ):
        try:  # find_spec, as triton_runtime: pytriton's own __init__ needs its client's deps
            found = importlib.util.find_spec(module) is not None
        except Exception as exc:  # a parent package that fails to import
            missing.append(f"{what}: {type(exc).__name__}: {exc}"[:300])
            continue
        if not found:
            missing.append(f"{what}: not installed in {sys.prefix}")
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
    step: Step,
    budget: Budget,
    model_repository: Path | None = None,
) -> dict:
    """A real tritonserver with `image_path`, perf_analyzer at a few concurrencies, each
    request one item of its own distinct JPEG."""
    from ofa_ve_ops.server_process import ServerStartError

    from ofa_ve_bench import model_config, server_run
    from ofa_ve_bench import perf_analyzer_sweep as sweep

    batch = sizes.server_max_batch
    edits = model_config.ConfigEdits(
        max_batch_size=batch,
        kind=sizes.server_kind,
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
            ready_timeout_s=max(10.0, budget.left() * 0.6),
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
        if sizes.server_kind == "KIND_GPU" and not any(" on cuda" in line
                                                       for line in figures["instance"]):
            step.status = "failed"
            step.notes.append("the model instance does not say it runs on a GPU (see instance)")
        distinct = max(sizes.concurrency)  # one item per request: concurrency x 1
        items = [(image, *workload.LOAD_TEXTS[i % len(workload.LOAD_TEXTS)])
                 for i, image in enumerate(workload.distinct_jpegs(distinct))]
        figures["distinct_images"] = distinct
        level_timeout = max(15.0, budget.left() / max(1, len(sizes.concurrency)) - 5)
        points = sweep.sweep(
            url=server.grpc_url,
            out_dir=log_dir / "sweep",
            concurrency=sizes.concurrency,
            items=items,
            measurement_ms=sizes.perf_measurement_ms,
            stability=25,
            max_trials=3,
            request_count=sizes.perf_request_count,
            timeout_s=level_timeout,
        )
        figures["levels"] = [
            {
                "concurrency": int(p.level),
                "distinct_images": distinct,
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
        figures["image_path_fallbacks"] = fallbacks = fallback_counts(server.metrics_url)
        counted = fallbacks if isinstance(fallbacks, dict) else {}  # else: why not read
        turned_off = {k: v for k, v in counted.items() if v and k != "bad_file"}
        if image_path == "gpu" and sizes.server_kind == "KIND_GPU" and turned_off:
            step.status = "failed"  # the figures above are the CPU route's, not nvJPEG's
            step.notes.append(f"the GPU image decoder turned itself off: {turned_off}")
        if any(p.errors for p in points):
            step.status = "failed"
            step.notes.append("some requests failed (see levels' errors and notes)")
    finally:
        server.stop()
        _copy_log(log_dir, out / f"server-{image_path}.log")
    return figures


def fallback_counts(metrics_url: str) -> dict[str, float] | str:
    """``ofa_ve_image_path_fallbacks_total`` by reason, summed over instances."""
    from ofa_ve_ops import prometheus

    try:
        samples = prometheus.scrape(metrics_url, timeout=5)
    except OSError as exc:
        return f"metrics not read: {exc}"
    return prometheus.by_label(samples, "ofa_ve_image_path_fallbacks_total", "reason")


def instance_lines(log: str) -> list[str]:
    """The model's own "loaded ... on DEVICE (dtype, ..., image path ...)" log lines."""
    found = []
    for line in log.splitlines():
        if ("weights from" in line and "loaded" in line) or "GPU image path" in line:
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


def _rows_table(rows: Sequence[dict]) -> list[str]:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return ["", *_table(rows, [c for c in columns if c != "flip_margins_fp32"])]


def summary_markdown(summary: dict[str, Any]) -> str:
    """The one Markdown summary of a run (every step so far, its status, its figures)."""
    lines = [f"# GPU check ({summary['part']} part, {summary['mode']} mode)", ""]
    if summary["mode"] == "cpu":
        lines += [f"**{CPU_MODE_BANNER}.**", ""]
    if not summary.get("finished"):
        lines += ["**Unfinished: the steps below are those done so far.**", ""]
    env = summary.get("environment", {})
    lines += [
        f"- date: {summary['date']}",
        f"- machine: {env.get('machine', '?')}",
        f"- python {env.get('python')}, CUDA {env.get('cuda')}",
        f"- imported: {env.get('imported')}",
        f"- exact path's JPEG decoder: {env.get('exact_jpeg_decoder')}",
        f"- GPU (nvidia-smi): {env.get('nvidia_smi') or 'none'}",
        f"- weights: {summary.get('weights', '?')}",
        f"- total: {summary.get('seconds', 0):.0f} s of a {summary['budget_s']:.0f} s budget",
        "",
    ]
    for step in summary["steps"]:
        lines.append(f"## {step['name']}: {step['status']} ({step['seconds']:.1f} s of "
                     f"{step.get('budget_s', 0):.0f})")
        lines.append("")
        lines += [f"- {note.strip()}" for note in step.get("notes") or [] if note.strip()]
        figures = step.get("figures")
        if isinstance(figures, list) and figures and isinstance(figures[0], dict):
            lines += _rows_table(figures)
        elif isinstance(figures, dict) and figures:
            tables = {k: v for k, v in figures.items()
                      if isinstance(v, list) and v and isinstance(v[0], dict)}
            flat = {k: v for k, v in figures.items() if k not in tables and k != "memory"}
            lines += [f"- {k}: {v}" for k, v in flat.items()]
            for rows in tables.values():
                lines += _rows_table(rows)
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
    for name, content in (("summary.md", text + "\n"),
                          ("summary.json", json.dumps(summary, indent=2, default=str) + "\n")):
        partial = out / f".{name}.partial"  # never a half-written summary, even if cut
        partial.write_text(content)
        partial.replace(out / name)
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
    keys = {"engine": ENGINE_STEPS, "server": SERVER_STEPS, "all": ENGINE_STEPS + SERVER_STEPS}
    budget_s = budget_s or DEFAULT_BUDGET_S
    budget = Budget(budget_s)
    started = time.monotonic()
    summary: dict[str, Any] = {
        "mode": mode,
        "part": part,
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "budget_s": budget_s,
        "sizes": sizes.__dict__,
        "environment": environment(device),
        "steps": [],
        "failed": [],
        "finished": False,
    }
    if mode == "cpu":
        summary["banner"] = CPU_MODE_BANNER

    def record(steps: list[Step]) -> None:
        summary["steps"] = [step.__dict__ for step in steps]
        summary["failed"] = [s.name for s in steps if s.status == "failed"]
        summary["seconds"] = round(time.monotonic() - started, 1)
        write_summary(summary, out)

    check = Check(budget, record)
    record([])
    if model_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        model_dir, weights = write_checkpoint(scratch / "m")
    else:
        weights = f"given model directory {model_dir}"
    summary["weights"] = weights
    if "plain" in weights:
        check.add(Step("checkpoint", "ok", 0.0, None, [weights]))

    engine_steps: dict[str, Callable[[Step, Budget], Any]] = {
        "equal": lambda s, b: step_gpu_equals_cpu(model_dir, device, sizes, s, b),
        "precision": lambda s, b: step_precision(model_dir, device, sizes, s, b),
        "network": lambda s, b: step_network(model_dir, device, sizes, s, b),
        "shared": lambda s, b: step_shared_image(model_dir, device, sizes, s, b),
        "image_path": lambda s, b: step_image_path(model_dir, device, sizes, s, b),
        "prepare": lambda s, b: step_prepare(sizes, model_dir, s, b),
    }
    for key in keys[part]:
        if key in engine_steps:
            check.run(STEP_NAMES[key], sizes.step_budget_s[key], engine_steps[key])
    if part in ("server", "all"):
        missing = server_prerequisites()
        if missing:
            check.add(Step("tritonserver + perf_analyzer", "skipped", 0.0, None, missing))
        else:
            for key in SERVER_STEPS:
                image_path = key.split("_", 1)[1]
                check.run(
                    STEP_NAMES[key],
                    sizes.step_budget_s[key],
                    lambda s, b, ip=image_path: step_server(
                        model_dir, ip, sizes, out, s, b, model_repository
                    ),
                    min_s=20.0,
                )
    summary["finished"] = True
    record(check.steps)
    print("\n" + summary_markdown(summary), flush=True)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="auto", choices=["auto", "gpu", "cpu"])
    parser.add_argument("--part", default="all", choices=["engine", "server", "all"])
    parser.add_argument("--out", type=Path, required=True, help="summary.md / summary.json here")
    parser.add_argument("--model-dir", type=Path, help="real weights (default: a demo checkpoint)")
    parser.add_argument(
        "--budget", type=float, default=DEFAULT_BUDGET_S,
        help=f"seconds for the whole run (default {DEFAULT_BUDGET_S:g}); each step also has "
        "its own",
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
