#!/usr/bin/env python3
"""The GPU check: what a lent GPU window must measure, in one call sized to it.

Why this shape: the window is minutes long (docs/gpu-check.md), so the engine part runs
first (it answers most), every step has a budget of its own, a failed step never stops
the others, and the summary is rewritten after each step: a call cut at its limit still
returns what it measured. `--mode cpu` (`auto` without a GPU) runs the same code at small
sizes, so it is tested and rehearsed here (`make gpu-check`, `make gpu-rehearsal`).
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import functools
import importlib.util
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ofa_ve_data import workload

from ofa_ve_bench import machine, results
from ofa_ve_bench.engine_runner import agreement, answers, load_engine, prepare_all, tf32_off

PROB_TOLERANCE = 1e-4  # largest |p_gpu - p_cpu| the first step allows in float32
CPU_MODE_BANNER = "CPU mode: no GPU figures (small sizes; this checks the code path only)"
STEP_NAMES = {
    "equal": "fp32 GPU answers equal CPU answers",
    "precision": "reduced precision against float32",
    "network": "network items/s per dtype and batch (distinct images)",
    "image_path": "nvJPEG against the exact image path",
    "server_exact": "tritonserver + perf_analyzer, image_path=exact",
    "server_gpu": "tritonserver + perf_analyzer, image_path=gpu",
}
SERVER_STEPS = ("server_exact", "server_gpu")
ENGINE_STEPS = tuple(key for key in STEP_NAMES if key not in SERVER_STEPS)
PARTS = {"engine": ENGINE_STEPS, "server": SERVER_STEPS, "all": ENGINE_STEPS + SERVER_STEPS}
DEFAULT_BUDGET_S = 450.0  # the run's; wheelhouse.CALL_TIMEOUT_S also holds install, imports


@dataclass(frozen=True)
class Sizes:
    """How much each step does and may take; GPU and CPU mode differ only here."""

    batch_sizes: tuple[int, ...]
    dtypes: tuple[str, ...]
    agreement_pairs: int  # 0: all of workload.agreement_items
    seconds: float  # timed per point, after the warm-up calls
    warmup_calls: int
    min_calls: int
    concurrency: tuple[int, ...]
    perf_request_count: int  # 0: perf_analyzer's stability windows; N: N requests a level
    server_max_batch: int
    server_dtype: str
    step_budget_s: dict[str, float]


GPU_SIZES = Sizes(
    batch_sizes=(1, 2, 4, 8, 16, 32, 64, 128),
    dtypes=("float32", "float16", "bfloat16"), agreement_pairs=0, seconds=1.0,
    warmup_calls=3, min_calls=5, concurrency=(1, 16, 64, 128), perf_request_count=0,
    server_max_batch=64, server_dtype="float16",
    step_budget_s={"equal": 35, "precision": 35, "network": 100, "image_path": 20,
                   "server_exact": 120, "server_gpu": 120},
)
CPU_SIZES = Sizes(
    batch_sizes=(1, 2), dtypes=("float32", "bfloat16"), agreement_pairs=6,
    seconds=0.3, warmup_calls=1, min_calls=2, concurrency=(1, 2), perf_request_count=4,
    server_max_batch=4, server_dtype="float32",
    step_budget_s={"equal": 30, "precision": 60, "network": 60, "image_path": 60,
                   "server_exact": 120, "server_gpu": 120},
)


@dataclass
class Step:
    """One step's outcome: ok, skipped or failed, with its figures and notes."""

    name: str
    status: str = "ok"
    seconds: float = 0.0
    figures: Any = None
    notes: list[str] = field(default_factory=list)
    budget_s: float = 0.0

    def fail(self, *notes: str) -> None:
        self.status = "failed"
        self.notes += notes


class Check:
    """One run of the check: what every step is given (the model, device, sizes and `out`),
    the run's budget and each step's own within it, and the summary, rewritten in `out`
    after each step: a failure is a finding, never the end of the check."""

    def __init__(self, model_dir: Path | None, device: str, sizes: Sizes, out: Path,
                 seconds: float, summary: dict[str, Any],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.model_dir, self.device, self.sizes, self.out = model_dir, device, sizes, out
        self.summary, self.clock = summary, clock
        self.steps: list[Step] = []
        self.started = clock()
        self.deadline = self.step_deadline = self.started + seconds
        self.add()

    def left(self, of_run: bool = False) -> float:
        """Seconds left of the running step's budget (`of_run`: of the whole run's)."""
        deadline = self.deadline if of_run else min(self.deadline, self.step_deadline)
        return max(0.0, deadline - self.clock())

    def add(self, *steps: Step) -> None:
        self.steps += steps
        self.summary.update(steps=[s.__dict__ for s in self.steps],
                            failed=[s.name for s in self.steps if s.status == "failed"],
                            seconds=round(self.clock() - self.started, 1))
        texts = summary_markdown(self.summary), json.dumps(self.summary, indent=2, default=str)
        for name, text in zip(("summary.md", "summary.json"), texts, strict=True):
            partial = self.out / f".{name}.partial"  # never a half-written summary, even if cut
            partial.write_text(text + "\n")
            partial.replace(self.out / name)

    def rate(self, call: Callable[[int], object], items: int) -> dict[str, float]:
        """Items/s of `call(i)`, `items` a call, through `results.timed` at the run's sizes:
        warm-up calls, then calls until both `seconds` and `min_calls` are reached. Every
        step's rate comes from here."""
        sizes = self.sizes
        run = results.timed("", items, call, sizes.seconds, sizes.min_calls, sizes.warmup_calls)
        calls = len(run.latencies_ms)
        return {"items_per_s": round(run.items_per_s, 2),
                "ms_per_call": round(1000 * run.seconds / calls, 3), "calls": calls}

    def run(self, name: str, seconds: float, fn: Callable[[Check, Step], Any],
            min_s: float = 5.0) -> None:
        """`fn(self, step)` under a budget of `seconds`, or of what is left of the run if
        less; skipped when that is under `min_s`."""
        self.step_deadline, started = self.clock() + seconds, time.monotonic()
        step = Step(name, budget_s=round(self.left(), 1))
        if self.left() < min_s:
            step.status = "skipped"
            step.notes.append(f"time budget spent ({self.left(of_run=True):.0f} s left of the run)")
        else:
            say(f"{name} (budget {self.left():.0f} s) ...")
            try:
                step.figures = fn(self, step)
            except Exception as exc:
                step.fail(f"{type(exc).__name__}: {exc}"[:600],
                          traceback.format_exc(limit=3)[-800:])
            step.seconds = round(time.monotonic() - started, 1)
        say(f"{name}: {step.status} in {step.seconds:.1f} s")
        self.add(step)


say = functools.partial(machine.say, "gpu-check")


def environment(device: str) -> dict[str, object]:
    import torch
    from ofa_ve_engine import jpeg

    imported = ("numpy", "torch", "torchvision", "PIL", "simplejpeg", "tokenizers")
    gpu = machine.nvidia_smi_csv("--query-gpu=name,driver_version,memory.used,memory.total")
    return {
        "machine": str(machine.describe(device)),
        "python": f"{sys.version.split()[0]} ({sys.executable}, prefix {sys.prefix})",
        "cuda": torch.version.cuda,
        "imported": {name: machine.version(name) for name in imported},
        "packages": {name: machine.version(name, imported=False)
                     for name in ("nvidia-pytriton", "tritonclient", "protobuf", "grpcio")},
        "exact_jpeg_decoder": "simplejpeg (libjpeg-turbo)" if jpeg.simplejpeg is not None
        else "Pillow (simplejpeg is not importable)",
        "nvidia_smi (name, driver, MiB used, MiB total)": (gpu or "").strip() or None,
    }


# --------------------------------------------------------------- engine steps


def agreement_work(sizes: Sizes) -> list[workload.Item]:
    """The (image, hypothesis, premise) pairs compared; a few spread over every image."""
    pairs = workload.agreement_items()
    per_image = len(workload.AGREEMENT_HYPOTHESES)
    n_images = len(pairs) // per_image
    return pairs if not sizes.agreement_pairs else [
        pairs[(i % n_images) * per_image + i // n_images]
        for i in range(min(sizes.agreement_pairs, len(pairs)))]


def step_equal(check: Check, step: Step) -> dict:
    """fp32 on the GPU against fp32 on the CPU, TF32 off: the same answers."""
    if check.device == "cpu":
        step.notes.append("CPU mode: the CPU against itself (this rehearses the code path)")
    work = agreement_work(check.sizes)
    with tf32_off():
        prepared, on_gpu = answers(check.model_dir, check.device, "float32", work)
        _, on_cpu = answers(check.model_dir, "cpu", "float32", work, prepared=prepared,
                            more=lambda: check.left() >= 2)  # the slow side
    if len(on_cpu) < len(prepared):
        step.notes.append(f"budget: {len(on_cpu)} of {len(prepared)} pairs compared")
    row = results.compare(on_cpu, on_gpu[: len(on_cpu)])
    row.update(math_flags="TF32 off (restored after)", tolerance=PROB_TOLERANCE,
               labels_identical=row["flips"] == 0,
               within_tolerance=row["max_prob_diff"] <= PROB_TOLERANCE)
    if not (row["labels_identical"] and row["within_tolerance"]):
        step.fail(f"fp32 GPU differs from CPU: {row['flips']} label flips, max |dp| "
                  f"{row['max_prob_diff']:.2e} (tolerance {PROB_TOLERANCE:g})")
    return row


def step_precision(check: Check, step: Step) -> list[dict]:
    """Each reduced dtype against float32 (TF32 off) on the same device."""
    step.notes.append("float32 reference with TF32 off (restored after)")
    dtypes = [d for d in check.sizes.dtypes if d != "float32"]
    rows = list(agreement(check.model_dir, check.device, dtypes, agreement_work(check.sizes),
                          more=lambda: check.left() >= 5))
    if len(rows) < len(dtypes):
        step.notes.append(f"budget: stopped before {dtypes[len(rows)]}")
    return rows


def distinct_work(count: int) -> list[workload.Item]:
    """`count` distinct JPEGs, each with the next of the load texts."""
    texts, jpegs = workload.LOAD_TEXTS, workload.distinct_jpegs(count)
    return [(image, *texts[i % len(texts)]) for i, image in enumerate(jpegs)]


def step_network(check: Check, step: Step) -> list[dict]:
    """`predict` (collate, copy, forward) per dtype and batch, every item a distinct image
    (the stem runs once per distinct image), torch's default math flags (the serving
    setting); peak GPU memory per dtype."""
    import torch

    largest, cuda = max(check.sizes.batch_sizes), check.device.startswith("cuda")
    step.notes.append(f"{largest} distinct JPEGs; math flags: TF32 matmul "
                      f"{torch.backends.cuda.matmul.allow_tf32}, TF32 cuDNN "
                      f"{torch.backends.cudnn.allow_tf32}")
    rows: list[dict] = []
    prepared: list[Any] = []  # pixels and tokens do not depend on the dtype
    for dtype in check.sizes.dtypes:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        engine = load_engine(check.model_dir, check.device, dtype, largest)
        prepared = prepared or prepare_all(engine, distinct_work(largest))
        for batch in check.sizes.batch_sizes:
            if check.left() < 5:
                step.notes.append(f"budget: stopped before {dtype} batch {batch}")
                break
            call = lambda _, e=engine, items=prepared[:batch]: e.predict(items)  # noqa: E731
            rows.append({"dtype": dtype, "batch_size": batch, "distinct_images": batch,
                         **check.rate(call, batch)})
        if cuda:
            peak = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            rows.append({"dtype": dtype, "peak_gpu_memory_mib": peak})
        del engine
        if check.left() < 5:
            break
    return rows


def step_image_path(check: Check, step: Step) -> dict:
    """nvJPEG + device resize against the exact CPU route on the test JPEGs: pixels, then
    answers. On a GPU it fails where nvJPEG did not run: CPU decoding must not pass for it."""
    from ofa_ve_engine.gpu_image import GpuImageDecoder, device_eligible
    from ofa_ve_engine.image import load_pixels

    engine = load_engine(check.model_dir, check.device, "float32", 16)
    size, limits = engine.settings.patch_image_size, engine.limits
    if check.device == "cpu":
        step.notes.append("CPU mode: torchvision's CPU decoder stands in for nvJPEG")
    decoder, rows = GpuImageDecoder(size, limits, check.device), []
    for path in workload.image_paths("jpeg"):
        data = path.read_bytes()
        row = {"image": path.name,
               "route": "device" if device_eligible(data, limits) else "CPU (exact route)"}
        pixels, errors = decoder.load([data])
        if errors:
            rows.append({**row, "error": str(errors[0])})
            continue
        diff = np.abs(pixels[0].cpu().numpy().astype(np.int16)
                      - load_pixels(data, size, limits).astype(np.int16))
        rows.append({**row, "max_pixel_diff": int(diff.max()),
                     "mean_pixel_diff": round(float(diff.mean()), 4)})
    work = [item for item in agreement_work(check.sizes) if item[0][:2] == b"\xff\xd8"]  # JPEGs
    with tf32_off():
        exact = engine.predict(prepare_all(engine, work))
        engine.image_path = "gpu"  # the same engine, its JPEGs kept encoded for the device
        agreed = results.compare(exact, engine.predict(prepare_all(engine, work)))
    decoders = [d for d in (decoder, engine.gpu_image_decoder) if d is not None]
    fallbacks: Counter[str] = Counter()
    for d in decoders:
        fallbacks.update(d.take_fallbacks())
    figures = {
        "images": rows,
        "answers": {k: agreed[k] for k in ("pairs", "label_agreement", "max_prob_diff", "flips")},
        "nvjpeg_decoded": sum(d.decoded for d in decoders),
        "decoder_off": next((d.off_reason for d in decoders if d.off_reason), None),
        "fallbacks": dict(fallbacks),
    }
    if check.device != "cpu" and (figures["decoder_off"] or not figures["nvjpeg_decoded"]):
        step.fail(f"nvJPEG did not run (decoder off: {figures['decoder_off']})")
    return figures


# --------------------------------------------------------------- server steps


def server_prerequisites() -> list[str]:
    """What the server part lacks on this Python (empty: it can run)."""
    missing = []
    for module, what in (("pytriton", "nvidia-pytriton (tritonserver)"),
                         ("tritonclient.grpc", "tritonclient[grpc]")):
        try:  # find_spec: pytriton's own __init__ needs its client's dependencies
            if importlib.util.find_spec(module) is None:
                missing.append(f"{what}: not installed in {sys.prefix}")
        except Exception as exc:  # a parent package that fails to import
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
    except Exception as exc:
        missing.append(f"perf_analyzer: {type(exc).__name__}: {exc}"[:400])
    return missing


def step_server(check: Check, step: Step, image_path: str) -> dict:
    """A real tritonserver with `image_path`, perf_analyzer at each concurrency, every
    request one item of its own distinct JPEG. On a GPU its instances are KIND_GPU: a
    Triton that sees no GPU refuses to load instead of measuring the CPU."""
    from ofa_ve_ops import model_config, prometheus
    from ofa_ve_ops.server_process import ServerStartError

    from ofa_ve_bench import server_run
    from ofa_ve_bench.perf_analyzer_sweep import sweep

    sizes, on_gpu, batch = check.sizes, check.device != "cpu", check.sizes.server_max_batch
    edits = model_config.ConfigEdits(
        max_batch_size=batch, kind="KIND_GPU" if on_gpu else None, queue_delay_us=2000,
        preferred_batch_sizes=sorted({max(1, batch // 4), max(1, batch // 2), batch}),
        parameters={"image_path": image_path, "dtype": sizes.server_dtype,
                    "warmup_batch_sizes": f"1,{batch}"})
    log_dir = Path(tempfile.mkdtemp(prefix=f"gpu-check-server-{image_path}-"))
    atexit.register(shutil.rmtree, log_dir, ignore_errors=True)  # its log is copied to out
    copy_log = functools.partial(_copy_log, log_dir, check.out / f"server-{image_path}.log")
    figures: dict[str, Any] = {"image_path": image_path, "dtype": sizes.server_dtype}
    try:
        server = server_run.start_server(check.model_dir, log_dir, edits,
                                         ready_timeout_s=max(10.0, check.left() * 0.6))
    except (ServerStartError, RuntimeError) as exc:
        step.fail(f"the server did not become ready with image_path={image_path}:",
                  *(log_errors(str(exc)) or [str(exc)[-600:]]))
        return {**figures, "refused": True}
    finally:
        copy_log()
    try:
        figures["cold_start_to_ready_s"] = round(server.ready_after_s or 0.0, 1)
        figures["instance"] = instance_lines(server.log_text())  # what the model says it runs
        if on_gpu and not any(" on cuda" in line for line in figures["instance"]):
            step.fail("the model instance does not say it runs on a GPU (see instance)")
        distinct = figures["distinct_images"] = max(sizes.concurrency)  # one item a request
        points = sweep(
            url=server.grpc_url, out_dir=log_dir / "sweep", concurrency=sizes.concurrency,
            items=distinct_work(distinct), measurement_ms=2000, stability=25, max_trials=3,
            request_count=sizes.perf_request_count,
            timeout_s=max(15.0, check.left() / len(sizes.concurrency) - 5))
        kept = ("throughput", "p50_ms", "p99_ms", "avg_batch", "errors", "note")
        figures["levels"] = [{"concurrency": int(p.level), "distinct_images": distinct,
                              **{k: getattr(p, k) for k in kept}} for p in points]
        figures["memory"] = server_run.server_memory(server.pid)
        try:
            fallbacks: Any = prometheus.by_label(prometheus.scrape(server.metrics_url, timeout=5),
                                                 "ofa_ve_image_path_fallbacks_total", "reason")
            turned_off = {k: v for k, v in fallbacks.items() if v and k != "bad_file"}
        except OSError as exc:
            fallbacks, turned_off = f"metrics not read: {exc}", {}
        figures["image_path_fallbacks"] = fallbacks
        if image_path == "gpu" and on_gpu and turned_off:  # then these are the CPU's figures
            step.fail(f"the GPU image decoder turned itself off: {turned_off}")
        if any(p.errors for p in points):
            step.fail("some requests failed (see levels' errors and notes)")
    finally:
        server.stop()
        copy_log()
    return figures


def instance_lines(log: str) -> list[str]:
    """The model's own "loaded ... on DEVICE (dtype, ..., image path ...)" log lines."""
    return [line.split("] ", 1)[-1].strip().strip('"')[:400] for line in log.splitlines()
            if ("weights from" in line and "loaded" in line) or "GPU image path" in line]


def log_errors(log: str, limit: int = 3) -> list[str]:
    """The lines of a tritonserver log that say why a model failed to load."""
    keys = ("UNAVAILABLE", "Failed to initialize Python stub", "failed to load", "ERROR:")
    found = (line.strip().split("\\n\\nAt:")[0][-400:] for line in log.splitlines()
             if any(key in line for key in keys))
    return list(dict.fromkeys(found))[:limit]


def _copy_log(log_dir: Path, dest: Path, limit: int = 200_000) -> None:
    """The server log's tail into the summary folder (what comes back is capped)."""
    if (log_dir / "tritonserver.log").is_file():
        dest.write_bytes((log_dir / "tritonserver.log").read_bytes()[-limit:])


STEPS: dict[str, Callable[[Check, Step], Any]] = {
    "equal": step_equal, "precision": step_precision, "network": step_network,
    "image_path": step_image_path,
    "server_exact": functools.partial(step_server, image_path="exact"),
    "server_gpu": functools.partial(step_server, image_path="gpu"),
}


# --------------------------------------------------------------------- summary


def _cell(value: object) -> str:
    return (f"{value:.4g}" if isinstance(value, float) else str(value)).replace("|", "\\|")


def _is_rows(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(r, dict) for r in value)


def figures_markdown(figures: Any) -> list[str]:
    """Any step's figures: rows (a list of dicts) as a table, whose list-valued columns stay
    in summary.json; a dict's values as `- key: value` lines, the rows among them as tables."""
    if _is_rows(figures):
        columns = [c for c in dict.fromkeys(k for row in figures for k in row)
                   if not any(isinstance(row.get(c), list) for row in figures)]
        cells = ([_cell(row.get(c, "")) for c in columns] for row in figures)
        return ["", *results.markdown_table(columns, cells), ""]
    lines = []
    for key, value in figures.items() if isinstance(figures, dict) else ():
        if _is_rows(value) or (isinstance(value, dict) and any(map(_is_rows, value.values()))):
            lines += [f"- {key}:", *figures_markdown(value)]
        else:
            lines.append(f"- {key}: {_cell(value)}")
    return lines


def summary_markdown(summary: dict[str, Any]) -> str:
    """The one Markdown summary of a run: the facts, then every step so far."""
    lines = [f"# GPU check ({summary['part']} part, {summary['mode']} mode)", ""]
    if summary["mode"] == "cpu":
        lines += [f"**{CPU_MODE_BANNER}.**", ""]
    if not summary.get("finished"):
        lines += ["**Unfinished: the steps below are those done so far.**", ""]
    facts = {"date": summary["date"], **summary.get("environment", {}),
             "weights": summary.get("weights", "?"),
             "total": f"{summary.get('seconds', 0):.0f} s of a {summary['budget_s']:.0f} s budget"}
    lines += [f"- {key}: {value}" for key, value in facts.items()]
    for step in summary["steps"]:
        lines += ["", f"## {step['name']}: {step['status']} ({step['seconds']:.1f} s of "
                      f"{step.get('budget_s', 0):.0f})", ""]
        lines += [f"- {note.strip()}" for note in step.get("notes") or [] if note.strip()]
        lines += figures_markdown(step.get("figures"))
    return "\n".join(line for i, line in enumerate(lines) if line or lines[i - 1]).strip()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check's `--part` into `--out`; exit status 1 if a step failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="auto", choices=["auto", "gpu", "cpu"])
    parser.add_argument("--part", default="all", choices=list(PARTS))
    parser.add_argument("--out", type=Path, required=True, help="summary.md / summary.json here")
    parser.add_argument("--model-dir", type=Path, help="real weights (default: a demo checkpoint)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds for the whole run (default {DEFAULT_BUDGET_S:g}); each "
                        "step also has its own")
    args = parser.parse_args(argv)
    import torch

    if args.mode == "gpu" and not torch.cuda.is_available():
        raise SystemExit("--mode gpu: torch sees no CUDA GPU here (use --mode auto or cpu)")
    mode = args.mode if args.mode != "auto" else "gpu" if torch.cuda.is_available() else "cpu"
    device, sizes = ("cuda", GPU_SIZES) if mode == "gpu" else ("cpu", CPU_SIZES)
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "mode": mode, "part": args.part,
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "budget_s": args.budget, "sizes": sizes.__dict__, "environment": environment(device),
        "finished": False, **({"banner": CPU_MODE_BANNER} if mode == "cpu" else {}),
    }
    check = Check(args.model_dir, device, sizes, args.out, args.budget, summary)
    if args.model_dir is None:  # decisive: clear answers, so a flip means something
        from ofa_ve_engine.demo_checkpoint import write_demo_checkpoint

        scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        check.model_dir = write_demo_checkpoint(scratch / "m", decisive=True)
    summary["weights"] = (f"given model directory {args.model_dir}" if args.model_dir
                          else "decisive demo checkpoint")
    missing = None
    for key in PARTS[args.part]:
        if key in SERVER_STEPS and missing is None:  # asked late: may fail, not stop the rest
            missing = server_prerequisites()
            if missing:
                check.add(Step("tritonserver + perf_analyzer", "skipped", notes=missing))
        if not (key in SERVER_STEPS and missing):
            check.run(STEP_NAMES[key], sizes.step_budget_s[key], STEPS[key],
                      min_s=20.0 if key in SERVER_STEPS else 5.0)
    summary["finished"] = True
    check.add()
    print("\n" + summary_markdown(summary), flush=True)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
