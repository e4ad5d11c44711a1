"""Triton Python-backend adapter for the OFA visual-entailment engine.

Thin on purpose: gather every item of every request in one `execute` call, let the
engine prepare them (a bad item fails only its own request, INVALID_ARG naming the
input), run all valid items as one batch in chunks of the engine's batch size, and
scatter the results back, exactly one response per request. Everything
model-specific lives in `ofa_ve_engine`, which imports and tests without Triton.

Settings come from config.pbtxt `parameters` (documented there); the weights from
the `OFA_VE_MODEL_DIR` environment variable, else the `model_dir` parameter.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from ofa_ve_engine import (
    ANSWERS,
    LABELS,
    InputLimits,
    InvalidInputError,
    PreparedItem,
    VisualEntailmentEngine,
)

MODEL_DIR_ENV = "OFA_VE_MODEL_DIR"
INPUT_NAMES = ("IMAGE", "HYPOTHESIS", "PREMISE")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
LABEL_BYTES = np.array([label.encode() for label in LABELS], dtype=np.object_)
ANSWER_BYTES = np.array([answer.encode() for answer in ANSWERS], dtype=np.object_)

# Histogram buckets. Seconds for one item's decode+resize+tokenize, for one forward
# pass; items for the batch sizes the engine actually ran.
PREPROCESS_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]
FORWARD_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128]

DEMO_BANNER = """
##########################################################################
#  RANDOM DEMO WEIGHTS: {path}
#  This checkpoint was generated with random weights (no model hub was
#  reachable). Its answers are MEANINGLESS. Set OFA_VE_MODEL_DIR to the
#  real ModelScope model directory for real predictions.
##########################################################################"""


def _log(level: str, message: str) -> None:
    getattr(pb_utils.Logger, f"log_{level}")(message)


@dataclass
class _Pending:
    """One request on its way through execute: its items, or the error that ends it."""

    size: int = 0
    items: list[PreparedItem] = field(default_factory=list)
    error: Any = None  # pb_utils.TritonError
    probs: np.ndarray | None = None


@dataclass
class _Job:
    """One item to prepare: plain bytes only, so it can go to a worker thread."""

    pending: _Pending
    index: int
    image: bytes
    hypothesis: bytes
    premise: bytes | None


class _Parameters:
    """Typed access to config.pbtxt `parameters`, with errors naming the parameter."""

    def __init__(self, model_config: dict[str, Any]) -> None:
        raw = model_config.get("parameters", {})
        self._values = {k: v.get("string_value", "") for k, v in raw.items()}

    def text(self, key: str, default: str = "") -> str:
        return self._values.get(key, default).strip() or default

    def integer(self, key: str, default: int, minimum: int = 0) -> int:
        value = self.text(key, str(default))
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"parameter {key!r} must be an integer, got {value!r}") from None
        if number < minimum:
            raise ValueError(f"parameter {key!r} must be >= {minimum}, got {number}")
        return number

    def integers(self, key: str, default: str) -> list[int]:
        value = self.text(key, default)
        try:
            numbers = [int(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"parameter {key!r} must be comma-separated integers") from None
        if any(n < 1 for n in numbers):
            raise ValueError(f"parameter {key!r} must hold positive integers, got {value!r}")
        return numbers


def resolve_model_dir(params: _Parameters, model_folder: Path) -> Path:
    """OFA_VE_MODEL_DIR wins (set per deployment); else the `model_dir` parameter."""
    from_env = os.environ.get(MODEL_DIR_ENV, "").strip()
    configured = from_env or params.text("model_dir")
    if not configured:
        raise ValueError(
            f"no model directory: set the environment variable {MODEL_DIR_ENV} of the "
            "tritonserver process (or the `model_dir` parameter in config.pbtxt) to a "
            "ModelScope model directory"
        )
    path = Path(configured).expanduser()
    path = path if path.is_absolute() else model_folder / path
    if not path.is_dir():
        source = f"${MODEL_DIR_ENV}" if from_env else "parameter model_dir"
        raise FileNotFoundError(f"model directory {path} (from {source}) does not exist")
    return path


def instance_device(args: dict[str, str]) -> str:
    """The torch device of this instance: its GPU for KIND_GPU, else the CPU."""
    if args.get("model_instance_kind", "CPU").upper() == "GPU":
        device = f"cuda:{int(args.get('model_instance_device_id', '0'))}"
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"Triton placed instance {args.get('model_instance_name')} on GPU {device} but "
                "torch cannot use CUDA here (driver too old for this torch build, or a "
                "CPU-only torch). Fix the driver, or set instance_group kind: KIND_CPU."
            )
        return device
    return "cpu"


class TritonPythonModel:
    """One model instance: an engine on this instance's device."""

    def initialize(self, args: dict[str, str]) -> None:
        started = time.perf_counter()
        config = json.loads(args["model_config"])
        params = _Parameters(config)
        model_folder = Path(args["model_repository"])
        self.instance = args.get("model_instance_name", "")
        self.max_batch_size = int(config.get("max_batch_size", 0)) or 1

        torch_threads = params.integer("torch_threads", 0)
        if torch_threads:
            torch.set_num_threads(torch_threads)
        workers = params.integer("preprocess_threads", 0) or min(4, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(workers, "preprocess") if workers > 1 else None

        dtype_name = params.text("dtype", "float32")
        if dtype_name not in DTYPES:
            raise ValueError(f"parameter 'dtype' must be one of {sorted(DTYPES)}")
        limits = InputLimits(
            max_image_bytes=params.integer("max_image_bytes", InputLimits.max_image_bytes, 1),
            max_image_pixels=params.integer("max_image_pixels", InputLimits.max_image_pixels, 1),
            max_text_bytes=params.integer("max_text_bytes", InputLimits.max_text_bytes, 1),
        )
        model_dir = resolve_model_dir(params, model_folder)
        device = instance_device(args)
        chunk = params.text("image_chunk_size", "")
        compile_stem = params.text("compile", "false").lower()
        if compile_stem not in ("true", "false"):
            raise ValueError(f"parameter 'compile' must be true or false, got {compile_stem!r}")
        engine_batch = params.integer("engine_batch_size", 0)
        if not engine_batch:  # auto: one item per pass on CPU (fastest there), whole batches on GPU
            engine_batch = 1 if device == "cpu" else self.max_batch_size
        self.engine = VisualEntailmentEngine.from_model_dir(
            model_dir,
            device=device,
            dtype=DTYPES[dtype_name],
            limits=limits,
            max_batch_size=engine_batch,
            image_chunk_size=int(chunk) if chunk else None,
            compile=compile_stem == "true",
            linear_backend=params.text("linear_backend", "auto"),
        )
        weights = "demo" if self.engine.is_demo else "real"
        _log(
            "info",
            f"{self.instance}: loaded {weights} weights from {model_dir.resolve()} on "
            f"{self.engine.device} ({dtype_name}, engine batch {self.engine.max_batch_size}, "
            f"image chunk {self.engine.image_chunk_size or 'whole batch'}, linear backend "
            f"{self.engine.linear_backend}, compiled {self.engine.compiled}, "
            f"torch threads {torch.get_num_threads()}, preprocess threads {workers})",
        )
        if self.engine.is_demo:
            # One log call per line: Triton escapes newlines inside one message.
            for line in DEMO_BANNER.format(path=model_dir.resolve()).strip().splitlines():
                _log("warn", line)

        warmup_sizes = params.integers("warmup_batch_sizes", "1")
        warmup_started = time.perf_counter()
        self.engine.warmup(warmup_sizes)
        warmup_s = time.perf_counter() - warmup_started

        self._create_metrics(config, args, weights)
        self.warmup_seconds.set(warmup_s)
        _log(
            "info",
            f"{self.instance}: warm-up finished (batch sizes {warmup_sizes}, {warmup_s:.2f} s; "
            f"initialize took {time.perf_counter() - started:.2f} s): ready to serve",
        )

    def _create_metrics(self, config: dict[str, Any], args: dict[str, str], weights: str) -> None:
        """Custom metrics on Triton's /metrics endpoint, labelled by model and instance.

        Families must outlive their metrics, so both are kept on the instance.
        """
        labels = {
            "model": config.get("name", args.get("model_name", "")),
            "version": str(args.get("model_version", "")),
            "instance": self.instance,
        }
        family = pb_utils.MetricFamily
        self._families = {
            "preprocess": family(
                name="ofa_ve_preprocess_duration_seconds",
                description="Time to decode, resize and tokenize one item",
                kind=family.HISTOGRAM,
            ),
            "forward": family(
                name="ofa_ve_forward_duration_seconds",
                description="Time of one engine forward pass over a batch of items",
                kind=family.HISTOGRAM,
            ),
            "batch": family(
                name="ofa_ve_engine_batch_size",
                description="Items per engine forward pass (the batch sizes actually run)",
                kind=family.HISTOGRAM,
            ),
            "invalid": family(
                name="ofa_ve_invalid_requests_total",
                description="Requests refused with INVALID_ARG, by the input at fault",
                kind=family.COUNTER,
            ),
            "warmup": family(
                name="ofa_ve_warmup_duration_seconds",
                description="Duration of the start-up warm-up inference, set before READY",
                kind=family.GAUGE,
            ),
            "info": family(
                name="ofa_ve_model_info",
                description="1 per instance; labels say which weights (real or demo) and device",
                kind=family.GAUGE,
            ),
        }
        f = self._families
        self.preprocess_seconds = f["preprocess"].Metric(labels, buckets=PREPROCESS_BUCKETS)
        self.forward_seconds = f["forward"].Metric(labels, buckets=FORWARD_BUCKETS)
        self.batch_items = f["batch"].Metric(labels, buckets=BATCH_BUCKETS)
        self.invalid = {
            name: f["invalid"].Metric({**labels, "input": name}) for name in INPUT_NAMES
        }
        self.warmup_seconds = f["warmup"].Metric(labels)
        self.info = f["info"].Metric(
            {**labels, "weights": weights, "device": str(self.engine.device)}
        )
        self.info.set(1)

    def _prepare_one(self, job: _Job) -> tuple[PreparedItem | None, Exception | None, float]:
        """Engine preprocessing of one item (runs in the pool: no pb_utils calls here)."""
        started = time.perf_counter()
        try:
            item = self.engine.prepare(job.image, job.hypothesis, job.premise)
        except Exception as exc:
            return None, exc, 0.0
        return item, None, time.perf_counter() - started

    def _fail(self, pending: _Pending, job: _Job, exc: Exception) -> None:
        """End a request with the first error among its items (INVALID_ARG for bad input)."""
        where = f" (item {job.index} of {pending.size})" if pending.size > 1 else ""
        if isinstance(exc, InvalidInputError):
            self.invalid[exc.input_name].increment(1)
            code = pb_utils.TritonError.INVALID_ARG
            message = f"{exc}{where}"
        else:  # a bug or an unexpected decoder failure: this request only
            code = pb_utils.TritonError.INTERNAL
            message = f"preprocessing failed{where}: {exc!r}"
            _log("error", f"{self.instance}: {message}")
        pending.error = pb_utils.TritonError(message, code)
        pending.items.clear()

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request; all valid items of all requests run batched."""
        pendings = [_Pending() for _ in requests]
        jobs: list[_Job] = []
        for pending, request in zip(pendings, requests, strict=True):
            if request.is_cancelled():
                pending.error = pb_utils.TritonError(
                    "request cancelled", pb_utils.TritonError.CANCELLED
                )
                continue
            images, hypotheses, premises = (
                None if t is None else t.as_numpy().reshape(-1)
                for t in (pb_utils.get_input_tensor_by_name(request, n) for n in INPUT_NAMES)
            )
            pending.size = len(images)
            for index in range(pending.size):
                premise = None if premises is None else premises[index]
                jobs.append(_Job(pending, index, images[index], hypotheses[index], premise))

        if self.pool is not None and len(jobs) > 1:
            results = list(self.pool.map(self._prepare_one, jobs))
        else:
            results = [self._prepare_one(job) for job in jobs]
        for job, (item, exc, seconds) in zip(jobs, results, strict=True):
            pending = job.pending
            if pending.error is not None:
                continue
            if exc is not None:
                self._fail(pending, job, exc)
            else:
                pending.items.append(item)
                self.preprocess_seconds.observe(seconds)

        valid = [p for p in pendings if p.error is None]
        items = [item for p in valid for item in p.items]
        try:
            probs = self._predict(items)
        except Exception as exc:  # a failed forward fails its requests, not the server
            _log("error", f"{self.instance}: forward pass over {len(items)} items failed: {exc!r}")
            error = pb_utils.TritonError(f"inference failed: {exc}", pb_utils.TritonError.INTERNAL)
            for p in valid:
                p.error = error
        else:
            start = 0
            for p in valid:
                p.probs = probs[start : start + len(p.items)]
                start += len(p.items)
        return [self._response(p) for p in pendings]

    def _predict(self, items: list[PreparedItem]) -> np.ndarray:
        """Run items through the engine in chunks of its batch size, timing each."""
        chunks = []
        size = self.engine.max_batch_size
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            started = time.perf_counter()
            chunks.append(self.engine.predict(chunk))
            self.forward_seconds.observe(time.perf_counter() - started)
            self.batch_items.observe(len(chunk))
        if not chunks:
            return np.zeros((0, len(LABELS)), dtype=np.float32)
        return np.concatenate(chunks)

    @staticmethod
    def _response(pending: _Pending) -> Any:
        if pending.error is not None:
            return pb_utils.InferenceResponse(output_tensors=[], error=pending.error)
        probs = np.ascontiguousarray(pending.probs, dtype=np.float32)
        best = probs.argmax(axis=1)
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("LABEL", LABEL_BYTES[best].reshape(-1, 1)),
                pb_utils.Tensor("ANSWER", ANSWER_BYTES[best].reshape(-1, 1)),
                pb_utils.Tensor("PROBS", probs),
            ]
        )

    def finalize(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        _log("info", f"{self.instance}: unloaded")
