#!/usr/bin/env python3
"""ModelScope's pipeline, the engine and the Triton server side by side, in one run.

Why one run: the machines this runs on are shared and noisy, so absolute numbers
drift from minute to minute; ratios measured close together on the same
checkpoint, the same images and the same texts are what can be compared. So the
server starts first, and then ``--rounds`` rounds each measure (a), (b) and (c)
in turn; ratios are taken within each round and reported as the median and
range over rounds. Each round records the machine's load average.

    .venv/bin/python -m ofa_ve_bench.benchmark --model-dir DIR --out-dir /tmp/bench \\
        --plot /tmp/bench/throughput.png [--device cpu|cuda] [--concurrency 1,2,4,8,16]

(a) ModelScope's own pipeline, one item per call (the only way it works), from
    the image files; (b) the engine in this process, no server, prepare + predict
    at several batch sizes (the best one counts); (c) a real tritonserver on
    loopback, driven by perf_analyzer over gRPC with the same encoded images, at
    several concurrencies (``perf_analyzer_sweep.py``). Ratios (b)/(a), (c)/(a),
    (c)/(b) use the best throughput of each. Also: the server's cold start to READY,
    the peak RSS of tritonserver and its stub processes, GPU memory per instance.

The server runs a copy of ``model_repository/`` with the config edits given
(``--instances``, ``--max-batch-size``, ``--queue-delay-us``, ``--param k=v``);
the same ``--param`` values configure the in-process engine, so (b) and (c) run
the same engine settings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ofa_ve_ops.paths import MODEL_NAME, MODEL_REPOSITORY

from ofa_ve_bench import perf_analyzer_sweep as sweep_mod

# Engine keyword arguments that config.pbtxt parameters map to (model.py does the same).
ENGINE_PARAMS = {
    "image_chunk_size": int,
    "compile": lambda v: v.strip().lower() in ("1", "true", "yes", "on"),
    "linear_backend": str,
}


@dataclass
class Throughput:
    name: str
    batch_size: int
    items: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    load_before: float = 0.0

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]

    def summary(self) -> dict[str, object]:
        row = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        row.update(
            items_per_s=round(self.items_per_s, 3),
            call_p50_ms=round(self.percentile(50), 1),
            call_p99_ms=round(self.percentile(99), 1),
            calls=len(self.latencies_ms),
        )
        return row


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


# --------------------------------------------------------------------------- (a)
def modelscope_pipeline(model_dir: Path, device: str):
    """ModelScope's own pipeline; on GPUs built as build_pipeline does, on the GPU."""
    from ofa_ve_bench.reference.modelscope_pipeline import build_pipeline, install_import_stubs

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
        from ofa_ve_bench.reference.modelscope_pipeline import (
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
        result = Throughput("modelscope_pipeline", 1, 0, 0.0, load_before=os.getloadavg()[0])
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            self.call(result.items)
            result.latencies_ms.append((time.perf_counter() - t0) * 1000)
            result.items += 1
            result.seconds = time.perf_counter() - start
            if result.seconds >= seconds and result.items >= 3:
                return result


# --------------------------------------------------------------------------- (b)
def build_engine(model_dir: Path, device: str, dtype: str, params: dict[str, str]):
    from ofa_ve_engine import VisualEntailmentEngine

    kwargs = {k: ENGINE_PARAMS[k](v) for k, v in params.items() if k in ENGINE_PARAMS and v}
    if "image_chunk_size" in kwargs and kwargs["image_chunk_size"] < 0:
        kwargs.pop("image_chunk_size")
    return VisualEntailmentEngine(
        model_dir, device=device, dtype=_torch_dtype(dtype), max_batch_size=1024, **kwargs
    )


def measure_engine(
    engine, items: Sequence[tuple[bytes, str, str]], batch_size: int, seconds: float
) -> Throughput:
    """prepare + predict of whole batches (as one server execute does), for ``seconds``."""
    batch = [items[i % len(items)] for i in range(batch_size)]

    def run() -> None:
        engine.predict([engine.prepare(img, h, p or None) for img, h, p in batch])

    run()  # first call at this shape
    result = Throughput("engine", batch_size, 0, 0.0, load_before=os.getloadavg()[0])
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        run()
        result.latencies_ms.append((time.perf_counter() - t0) * 1000)
        result.items += batch_size
        result.seconds = time.perf_counter() - start
        if result.seconds >= seconds and len(result.latencies_ms) >= 2:
            return result


# --------------------------------------------------------------------------- (c)
def _set_param(text: str, key: str, value: str) -> str:
    line = f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'
    pattern = re.compile(
        r'parameters\s*\{\s*key:\s*"' + re.escape(key) + r'"\s*value:\s*\{[^}]*\}\s*\}'
    )
    if pattern.search(text):
        return pattern.sub(lambda _: line, text, count=1)
    return text.rstrip("\n") + "\n" + line + "\n"


def _set_field(text: str, name: str, value: str) -> str:
    new, count = re.subn(rf"(?m)^(\s*){name}:\s*\S+", rf"\g<1>{name}: {value}", text, count=1)
    if not count:
        raise ValueError(f"config.pbtxt has no `{name}:` to set")
    return new


def make_model_repository(
    dest: Path,
    *,
    instances: int | None,
    max_batch_size: int | None,
    queue_delay_us: int | None,
    preferred: str | None,
    params: dict[str, str],
) -> Path:
    """A copy of model_repository/ whose config.pbtxt carries the requested settings."""
    shutil.copytree(MODEL_REPOSITORY, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    config = dest / MODEL_NAME / "config.pbtxt"
    text = config.read_text()
    if instances is not None:
        text = _set_field(text, "count", str(instances))
    if max_batch_size is not None:
        text = _set_field(text, "max_batch_size", str(max_batch_size))
    if queue_delay_us is not None:
        text = _set_field(text, "max_queue_delay_microseconds", str(queue_delay_us))
    if preferred is not None:
        sizes = ", ".join(s.strip() for s in preferred.split(",") if s.strip())
        text, count = re.subn(
            r"preferred_batch_size:\s*\[[^\]]*\]", f"preferred_batch_size: [ {sizes} ]", text
        )
        if not count:
            raise ValueError("config.pbtxt has no preferred_batch_size to set")
    for key, value in params.items():
        text = _set_param(text, key, value)
    config.write_text(text)
    return dest


def _process_group(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields_ = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields_[2]) == pgid:  # field 5 of stat: process group
            pids.append(int(entry.name))
    return pids


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def server_memory(server_pid: int) -> dict[str, object]:
    """Peak RSS (VmHWM) of tritonserver and each stub, and GPU memory per process."""
    processes = []
    for pid in sorted(_process_group(server_pid)):
        name = "tritonserver" if pid == server_pid else "stub"
        if name == "stub" and "triton_python_backend_stub" not in _cmdline(pid):
            name = Path(_cmdline(pid).split(" ")[0]).name or "other"
        processes.append(
            {
                "pid": pid,
                "process": name,
                "peak_rss_mib": round(_status_kib(pid, "VmHWM") / 1024, 1),
                "rss_mib": round(_status_kib(pid, "VmRSS") / 1024, 1),
            }
        )
    gpu = gpu_memory_by_pid()
    for p in processes:
        if p["pid"] in gpu:
            p["gpu_mib"] = gpu[p["pid"]]
    return {
        "processes": processes,
        "peak_rss_total_mib": round(sum(p["peak_rss_mib"] for p in processes), 1),
    }


def gpu_memory_by_pid() -> dict[int, int]:
    """MiB of GPU memory per process, from nvidia-smi (empty where there is none)."""
    if not shutil.which("nvidia-smi"):
        return {}
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    usage = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            usage[int(parts[0])] = int(parts[1])
    return usage


def start_server(model_dir: Path, out_dir: Path, args: argparse.Namespace, params: dict[str, str]):
    """A READY tritonserver on a configured copy of the repository (caller stops it)."""
    from ofa_ve_ops.server_process import TritonServer

    repo = make_model_repository(
        Path(tempfile.mkdtemp(prefix="bench-repo-")) / "model_repository",
        instances=args.instances,
        max_batch_size=args.max_batch_size,
        queue_delay_us=args.queue_delay_us,
        preferred=args.preferred,
        params=params,
    )
    server = TritonServer(
        repo, model_dir, log_dir=out_dir / "server-log", env=parse_params(args.server_env)
    )
    server.load_before_start = os.getloadavg()[0]
    server.start()
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    server.config_text = (repo / MODEL_NAME / "config.pbtxt").read_text()
    _say(f"server READY after {server.ready_after_s:.1f} s ({server.grpc_url})")
    return server


def sweep_server(server, out_dir: Path, args: argparse.Namespace) -> list[dict[str, object]]:
    points = sweep_mod.sweep(
        url=server.grpc_url,
        out_dir=out_dir,
        concurrency=args.concurrency,
        request_rates=args.request_rate,
        formats=args.formats,
        measurement_ms=args.measurement_ms,
        stability=args.stability,
        max_trials=args.max_trials,
        request_count=args.request_count,
        timeout_s=args.level_timeout,
    )
    return [asdict(p) for p in points]


# --------------------------------------------------------------------------- report
def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def aggregate(rounds: list[dict[str, object]]) -> dict[str, object]:
    """Medians over rounds, and the ratios of each round (taken within the round)."""
    out: dict[str, object] = {"rounds": len(rounds)}
    ms = [r["modelscope"] for r in rounds if r.get("modelscope")]
    if ms:
        out["modelscope"] = {
            "items_per_s": _median([m["items_per_s"] for m in ms]),
            "call_p50_ms": _median([m["call_p50_ms"] for m in ms]),
            "call_p99_ms": _median([m["call_p99_ms"] for m in ms]),
        }
    sizes = sorted({e["batch_size"] for r in rounds for e in r.get("engine", [])})
    engine = []
    for size in sizes:
        rows = [e for r in rounds for e in r.get("engine", []) if e["batch_size"] == size]
        engine.append(
            {
                "batch_size": size,
                "items_per_s": _median([e["items_per_s"] for e in rows]),
                "call_p50_ms": _median([e["call_p50_ms"] for e in rows]),
                "call_p99_ms": _median([e["call_p99_ms"] for e in rows]),
            }
        )
    if engine:
        out["engine"] = engine
        out["engine_best"] = max(engine, key=lambda e: e["items_per_s"])
    levels = sorted(
        {(p["mode"], p["level"]) for r in rounds for p in r.get("server", [])},
        key=lambda k: (k[0] != "concurrency", k[1]),
    )
    server = []
    for mode, level in levels:
        pts = [
            p
            for r in rounds
            for p in r.get("server", [])
            if (p["mode"], p["level"]) == (mode, level)
        ]
        server.append(
            {
                "mode": mode,
                "level": level,
                "throughput": _median([p["throughput"] for p in pts]),
                "p50_ms": _median([p["p50_ms"] for p in pts]),
                "p95_ms": _median([p["p95_ms"] for p in pts]),
                "p99_ms": _median([p["p99_ms"] for p in pts]),
                "p99_ms_worst": max(p["p99_ms"] for p in pts),
                "server_queue_ms": _median([p["server_queue_ms"] for p in pts]),
                "server_compute_infer_ms": _median([p["server_compute_infer_ms"] for p in pts]),
                "avg_batch": _median([p["avg_batch"] for p in pts]),
                "errors": sum(p["errors"] for p in pts),
            }
        )
    if server:
        out["server"] = server
        ok = [p for p in server if p["mode"] == "concurrency" and not p["errors"]]
        out["server_best"] = max(ok, key=lambda p: p["throughput"], default=None)

    best_size = out.get("engine_best", {}).get("batch_size")
    best_level = (out.get("server_best") or {}).get("level")
    ratios: dict[str, list[float]] = {"b/a": [], "c/a": [], "c/b": []}
    for r in rounds:
        a = (r.get("modelscope") or {}).get("items_per_s")
        b = next(
            (e["items_per_s"] for e in r.get("engine", []) if e["batch_size"] == best_size), None
        )
        c = next(
            (
                p["throughput"]
                for p in r.get("server", [])
                if p["mode"] == "concurrency" and p["level"] == best_level and not p["errors"]
            ),
            None,
        )
        for key, num, den in (("b/a", b, a), ("c/a", c, a), ("c/b", c, b)):
            if num and den:
                ratios[key].append(num / den)
    out["ratios"] = {
        k: {"median": round(_median(v), 3), "min": round(min(v), 3), "max": round(max(v), 3)}
        for k, v in ratios.items()
        if v
    }
    out["p50_implied"] = p50_implied(out)
    return out


def p50_implied(agg: dict[str, object]) -> dict[str, object]:
    """Items/s implied by median latencies: batch / p50 per call, concurrency / p50.

    Why: on a shared machine other jobs come in bursts, and a burst during a timed
    window drags that window's throughput down; the median latency over the calls of
    all rounds shrugs such bursts off. (Little's law: in-flight / latency.)
    """
    ms = agg.get("modelscope")
    a = 1000.0 / ms["call_p50_ms"] if ms and ms["call_p50_ms"] else None
    engine = {
        e["batch_size"]: e["batch_size"] * 1000.0 / e["call_p50_ms"]
        for e in agg.get("engine", [])
        if e["call_p50_ms"]
    }
    server = {
        p["level"]: p["level"] * 1000.0 / p["p50_ms"]
        for p in agg.get("server", [])
        if p["mode"] == "concurrency" and p["p50_ms"] and not p["errors"]
    }
    b_size = max(engine, key=engine.get, default=None)
    c_level = max(server, key=server.get, default=None)
    b = engine.get(b_size)
    c = server.get(c_level)
    return {
        "modelscope": a,
        "engine": engine,
        "engine_best_batch": b_size,
        "server": server,
        "server_best_concurrency": c_level,
        "b/a": b / a if a and b else None,
        "c/a": c / a if a and c else None,
        "c/b": c / b if b and c else None,
    }


def plot(results: dict[str, object], path: Path) -> Path:
    """Throughput and latency against concurrency, with (a) and (b) as lines (medians)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = results["summary"]
    points = [p for p in agg["server"] if p["mode"] == "concurrency"]
    xs = [p["level"] for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(xs, [p["throughput"] for p in points], "o-", label="Triton server (perf_analyzer)")
    if agg.get("engine_best"):
        best = agg["engine_best"]
        left.axhline(
            best["items_per_s"],
            color="tab:green",
            ls="--",
            label=f"engine, no server (batch {best['batch_size']})",
        )
    if agg.get("modelscope"):
        left.axhline(
            agg["modelscope"]["items_per_s"],
            color="tab:red",
            ls=":",
            label="ModelScope pipeline (1 per call)",
        )
    left.set(xscale="log", xlabel="concurrency (requests in flight)", ylabel="inferences/s")
    left.set_xticks(xs, [f"{x:g}" for x in xs])
    left.set_ylim(bottom=0)
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.plot(xs, [p["p99_ms"] for p in points], "o-", color="tab:purple", label="p99")
    right.plot(xs, [p["p50_ms"] for p in points], "s--", color="tab:gray", label="p50")
    right.set(xscale="log", xlabel="concurrency (requests in flight)", ylabel="latency (ms)")
    right.set_xticks(xs, [f"{x:g}" for x in xs])
    right.set_ylim(bottom=0)
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle(f"{results['title']} (medians of {agg['rounds']} rounds)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _ratio_text(ratios: dict[str, dict[str, float]], key: str) -> str:
    r = ratios.get(key)
    if not r:
        return "-"
    return f"{r['median']:.2f}x (rounds: {r['min']:.2f}-{r['max']:.2f})"


def report(results: dict[str, object]) -> str:
    """Markdown: the three measurements, their ratios, latency, start-up and memory."""
    agg = results["summary"]
    ms, best = agg.get("modelscope"), agg.get("engine_best")
    loads = [r["load_before"] for r in results["rounds"]]
    lines = [
        f"### {results['title']}",
        "",
        f"Medians of {agg['rounds']} rounds; each round measures (a), (b), (c) in turn. "
        f"Load average at the start of each round: {', '.join(f'{x:.1f}' for x in loads)}.",
        "",
        "| what | items/s | latency |",
        "| --- | ---: | --- |",
    ]
    if ms:
        lines.append(
            f"| (a) ModelScope pipeline, 1 per call | {ms['items_per_s']:.2f} | per call p50 "
            f"{ms['call_p50_ms']:.0f} ms, p99 {ms['call_p99_ms']:.0f} ms |"
        )
    for e in agg.get("engine", []):
        mark = " (best)" if best and e["batch_size"] == best["batch_size"] else ""
        lines.append(
            f"| (b) engine, batch {e['batch_size']}{mark} | {e['items_per_s']:.2f} | per call "
            f"p50 {e['call_p50_ms']:.0f} ms, p99 {e['call_p99_ms']:.0f} ms |"
        )
    for p in agg.get("server", []):
        what = f"c={p['level']:g}" if p["mode"] == "concurrency" else f"{p['level']:g} req/s"
        lines.append(
            f"| (c) Triton, {what} | {p['throughput']:.2f} | p50 {p['p50_ms']:.0f} ms, p99 "
            f"{p['p99_ms']:.0f} ms (worst round {p['p99_ms_worst']:.0f}), queue "
            f"{p['server_queue_ms']:.0f} ms, compute {p['server_compute_infer_ms']:.0f} ms, "
            f"avg batch {p['avg_batch']:.1f}, errors {p['errors']} |"
        )
    ratios = agg.get("ratios", {})
    lines += ["", "| ratio (within each round, then the median) | value |", "| --- | ---: |"]
    lines.append(f"| (b)/(a) engine best / ModelScope | {_ratio_text(ratios, 'b/a')} |")
    lines.append(f"| (c)/(a) server best / ModelScope | {_ratio_text(ratios, 'c/a')} |")
    lines.append(f"| (c)/(b) server best / engine best | {_ratio_text(ratios, 'c/b')} |")
    implied = agg.get("p50_implied") or {}
    if implied.get("b/a") or implied.get("c/a"):

        def fmt(x: float | None) -> str:
            return f"{x:.2f}x" if x else "-"

        lines.append(
            f"| same, from median latencies (batch or concurrency / p50): (b)/(a), (c)/(a), "
            f"(c)/(b) | {fmt(implied.get('b/a'))}, {fmt(implied.get('c/a'))}, "
            f"{fmt(implied.get('c/b'))} |"
        )
    server_best = agg.get("server_best")
    if server_best:
        lines.append(
            f"| server best at | c={server_best['level']:g}: p99 {server_best['p99_ms']:.0f} ms |"
        )
    one = next((e for e in agg.get("engine", []) if e["batch_size"] == 1), None)
    c1 = next(
        (p for p in agg.get("server", []) if p["mode"] == "concurrency" and p["level"] == 1),
        None,
    )
    if one and c1:
        lines.append(
            f"| p50 at c=1 minus one engine call (batch 1, p50) | "
            f"{c1['p50_ms'] - one['call_p50_ms']:+.1f} ms |"
        )
    server = results.get("server")
    if server:
        mem = server["memory"]
        procs = ", ".join(
            f"{p['process']} {p['peak_rss_mib']:.0f} MiB"
            + (f" (GPU {p['gpu_mib']} MiB)" if "gpu_mib" in p else "")
            for p in mem["processes"]
        )
        lines += [
            "",
            f"- cold start to READY: {server['cold_start_to_ready_s']:.1f} s "
            f"(load avg {server['load_before_start']:.1f})",
            f"- peak RSS: {mem['peak_rss_total_mib']:.0f} MiB in all ({procs})",
        ]
    if results.get("engine_settings"):
        lines.append(f"- engine settings: {results['engine_settings']}")
    lines.append(f"- machine: {results['machine']}")
    lines.append(f"- command: `{results['command']}`")
    return "\n".join(lines)


def machine_description(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = (
        f"{platform.node()}: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}, device {device}"
    )
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f" ({torch.cuda.get_device_name(torch.device(device))})"
    return text


def parse_params(pairs: Sequence[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        params[key.strip()] = value.strip()
    return params


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="ModelScope model dir")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--plot", type=Path, help="PNG path (default: OUT_DIR/benchmark.png)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--formats", default="all", choices=sorted(sweep_mod.IMAGE_SUFFIXES))
    parser.add_argument("--rounds", type=int, default=3, help="(a), (b), (c) in turn, N times")
    parser.add_argument("--modelscope-seconds", type=float, default=20.0, help="0 skips (a)")
    parser.add_argument("--engine-batch-sizes", default="1,2,4,8", help="empty skips (b)")
    parser.add_argument("--engine-seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", default="1,2,4,8,16", help="empty skips (c)")
    parser.add_argument("--request-rate", default="")
    parser.add_argument("--measurement-ms", type=int, default=10000)
    parser.add_argument("--stability", type=int, default=25)
    parser.add_argument("--max-trials", type=int, default=6)
    parser.add_argument(
        "--request-count", type=int, default=0, help="fixed requests per level (no windows)"
    )
    parser.add_argument("--level-timeout", type=float, default=600.0)
    parser.add_argument("--instances", type=int, help="instance_group count")
    parser.add_argument("--max-batch-size", type=int)
    parser.add_argument("--queue-delay-us", type=int)
    parser.add_argument("--preferred", help="preferred_batch_size, e.g. 4,8")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config.pbtxt parameter for the server (and the engine where it applies)",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for tritonserver and its stubs (e.g. OMP_WAIT_POLICY=PASSIVE)",
    )
    parser.add_argument("--torch-threads", type=int, default=0, help="for (a) and (b)")
    args = parser.parse_args(argv)
    args.concurrency = sweep_mod._numbers(args.concurrency, int)
    args.request_rate = sweep_mod._numbers(args.request_rate, float)

    import torch

    params = parse_params(args.param)
    params.setdefault("dtype", args.dtype)
    threads = args.torch_threads or int(params.get("torch_threads", "0") or 0)
    if threads:
        torch.set_num_threads(threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir.resolve()
    started = dt.datetime.now().astimezone()
    results: dict[str, object] = {
        "title": f"{platform.node()} {args.device} {args.dtype}, "
        f"{started:%Y-%m-%d %H:%M %Z}, model {model_dir.name}",
        "date": started.isoformat(timespec="seconds"),
        "machine": machine_description(args.device),
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "params": params,
        "rounds": [],
    }
    items = sweep_mod.workload_items(formats=args.formats)
    blobs = [(p.read_bytes(), h, prem) for p, h, prem in items]
    sizes = sweep_mod._numbers(args.engine_batch_sizes, int)

    server = None
    if args.concurrency or args.request_rate:
        _say("(c) starting the Triton server (cold start) ...")
        server = start_server(model_dir, args.out_dir, args, params)
    try:
        reference = None
        if args.modelscope_seconds > 0:
            _say("(a) building ModelScope's pipeline ...")
            reference = ModelScopeRunner(model_dir, args.device, items)
        engine = None
        if sizes:
            _say("(b) building the engine ...")
            engine = build_engine(model_dir, args.device, args.dtype, params)
            results["engine_settings"] = {
                "image_chunk_size": engine.image_chunk_size,
                "compile": engine.compiled,
                "linear_backend": engine.linear_backend,
                "channels_last": engine.channels_last,
            }
        for n in range(args.rounds):
            round_: dict[str, object] = {"round": n + 1, "load_before": os.getloadavg()[0]}
            if reference is not None:
                r = reference.measure(args.modelscope_seconds)
                round_["modelscope"] = r.summary()
                _say(f"round {n + 1} (a) ModelScope: {r.items_per_s:.2f} items/s")
            if engine is not None:
                rows = []
                for size in sizes:
                    r = measure_engine(engine, blobs, size, args.engine_seconds)
                    rows.append(r.summary())
                    _say(f"round {n + 1} (b) engine batch {size}: {r.items_per_s:.2f} items/s")
                round_["engine"] = rows
            if server is not None:
                round_["server"] = sweep_server(server, args.out_dir / f"sweep-{n + 1}", args)
            results["rounds"].append(round_)
        if server is not None:
            results["server"] = {
                "cold_start_to_ready_s": round(server.ready_after_s or 0.0, 2),
                "load_before_start": round(server.load_before_start, 2),
                "config": server.config_text,
                "memory": server_memory(server.pid),
            }
    finally:
        if server is not None:
            server.stop()

    results["summary"] = aggregate(results["rounds"])
    text = report(results)
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (args.out_dir / "benchmark.md").write_text(text + "\n")
    if results["summary"].get("server"):
        png = plot(results, args.plot or args.out_dir / "benchmark.png")
        text += f"\n- plot: {png}"
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
