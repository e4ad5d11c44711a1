"""Triton Python-backend adapter for the OFA visual-entailment engine.

Thin on purpose: read each request's input tensors as bytes, hand the whole
execution to `ofa_ve_engine.serving.ExecutionRunner` (which prepares every item,
runs the valid ones through the engine and splits the results per request), and
turn each outcome into a response or an error for that request alone. Everything
model-specific lives in `ofa_ve_engine`, which imports and tests without Triton;
the parameters of config.pbtxt are parsed by `ofa_ve_engine.parameters`, which
also finds the weights (this version folder's `weights/`, unless `OFA_VE_MODEL_DIR`
or the `model_dir` parameter overrides them).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from ofa_ve_engine import (
    ANSWERS,
    LABELS,
    InvalidInputError,
    RequestCancelled,
    VisualEntailmentEngine,
)
from ofa_ve_engine.gpu_image import FALLBACK_REASONS
from ofa_ve_engine.parameters import from_triton_config, locate_weights
from ofa_ve_engine.serving import ExecutionHooks, ExecutionRunner, RequestInputs

INPUT_NAMES = ("IMAGE", "HYPOTHESIS", "PREMISE")
LABEL_BYTES = np.array([label.encode() for label in LABELS], dtype=np.object_)
ANSWER_BYTES = np.array([answer.encode() for answer in ANSWERS], dtype=np.object_)

# The model's own metrics on Triton's /metrics endpoint, created in _create_metrics:
# key -> (name, kind, buckets, description). Their names are part of the interface.
METRICS: dict[str, tuple[str, str, list[float] | None, str]] = {
    "preprocess": ("ofa_ve_preprocess_duration_seconds", "HISTOGRAM",
                   [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0],
                   "Time to decode, resize and tokenize one item"),
    "forward": ("ofa_ve_forward_duration_seconds", "HISTOGRAM",
                [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
                "Time of one engine forward pass over a batch of items"),
    "batch": ("ofa_ve_engine_batch_size", "HISTOGRAM", [1, 2, 4, 8, 16, 32, 64, 128],
              "Items per engine forward pass (the batch sizes actually run)"),
    "invalid": ("ofa_ve_invalid_requests_total", "COUNTER", None,
                "Requests refused with INVALID_ARG, by the input at fault"),
    "stem_cache": ("ofa_ve_stem_cache_lookups_total", "COUNTER", None,
                   "Stem-cache lookups by result (hit or miss); none while the cache is off"),
    "image_path_fallbacks": ("ofa_ve_image_path_fallbacks_total", "COUNTER", None,
                             "JPEGs of the GPU image path decoded on the CPU instead, by reason"),
    "warmup": ("ofa_ve_warmup_duration_seconds", "GAUGE", None,
               "Duration of the start-up warm-up inference, set before READY"),
    "info": ("ofa_ve_model_info", "GAUGE", None,
             "1 per instance; labels say which weights (real or demo) and device"),
}

DEMO_BANNER = """
##########################################################################
#  RANDOM DEMO WEIGHTS: {path}
#  This checkpoint was generated with random weights (no model hub was
#  reachable). Its answers are MEANINGLESS. Put the real ModelScope model
#  directory's files in <version>/weights/ (or set OFA_VE_MODEL_DIR).
##########################################################################"""


def _log(level: str, message: str) -> None:
    getattr(pb_utils.Logger, f"log_{level}")(message)


class _TritonLogHandler(logging.Handler):
    """The engine's Python log records (e.g. the GPU image path turned off) into Triton's log."""

    def emit(self, record: logging.LogRecord) -> None:
        level = "error" if record.levelno >= logging.ERROR else (
            "warn" if record.levelno >= logging.WARNING else "info")
        _log(level, self.format(record))


def _forward_engine_logs() -> None:
    logger = logging.getLogger("ofa_ve_engine")
    if not any(isinstance(h, _TritonLogHandler) for h in logger.handlers):
        logger.addHandler(_TritonLogHandler())
        logger.setLevel(logging.INFO)


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
        _forward_engine_logs()
        config = json.loads(args["model_config"])
        params = from_triton_config(config)
        self.instance = args.get("model_instance_name", "")
        if params.torch_threads:
            torch.set_num_threads(params.torch_threads)
        model_dir, source = locate_weights(
            params, Path(args["model_repository"]), args.get("model_version")
        )
        if source != "the version folder":
            _log("info", f"{self.instance}: weights from {source} ({model_dir}), overriding "
                 "the version folder's own")
        engine = VisualEntailmentEngine.from_model_dir(
            model_dir, device=instance_device(args), **params.engine_options()
        )
        self.engine = engine
        workers = params.preprocess_workers()
        pipelined = params.pipelined(engine.device.type)
        self.runner = ExecutionRunner(engine, workers=workers, pipelined=pipelined)
        weights = "demo" if engine.is_demo else "real"
        forward = engine.forward_batch_size or "whole execution"
        chunk = engine.image_chunk_size or "whole pass"
        _log("info", f"{self.instance}: loaded {weights} weights from {model_dir.resolve()} on "
             f"{engine.device} ({params.dtype}, forward batch {forward}, image chunk {chunk}, "
             f"image path {params.image_path}, linear backend {engine.linear_backend}, stem "
             f"{engine.stem_backend}, quantization {engine.describe_quantization()}, torch "
             f"threads {torch.get_num_threads()}, preprocess threads {workers}, "
             f"{self.runner.describe()})")
        if engine.is_demo:  # one log call per line: Triton escapes newlines inside one
            for line in DEMO_BANNER.format(path=model_dir.resolve()).strip().splitlines():
                _log("warn", line)

        warmup_started = time.perf_counter()
        engine.warmup(params.warmup_batch_sizes)
        warmup_s = time.perf_counter() - warmup_started
        self._create_metrics(config, args, weights)
        self.metrics["warmup"].set(warmup_s)
        _log("info", f"{self.instance}: warm-up finished (batch sizes "
             f"{list(params.warmup_batch_sizes)}, {warmup_s:.2f} s; initialize took "
             f"{time.perf_counter() - started:.2f} s): ready to serve")

    def _create_metrics(self, config: dict[str, Any], args: dict[str, str], weights: str) -> None:
        """Metric families (kept alive on the instance) and their metrics, from METRICS."""
        labels = {
            "model": config.get("name", args.get("model_name", "")),
            "version": str(args.get("model_version", "")),
            "instance": self.instance,
        }
        family = pb_utils.MetricFamily
        self._families = {
            key: family(name=name, description=text, kind=getattr(family, kind))
            for key, (name, kind, _, text) in METRICS.items()
        }
        self.metrics = {
            key: self._families[key].Metric(labels, buckets=buckets)
            for key, (_, kind, buckets, _) in METRICS.items()
            if kind == "HISTOGRAM"
        }
        self.metrics["warmup"] = self._families["warmup"].Metric(labels)
        self.metrics["info"] = self._families["info"].Metric(
            {**labels, "weights": weights, "device": str(self.engine.device)}
        )
        self.metrics["info"].set(1)
        self.invalid = {
            name: self._families["invalid"].Metric({**labels, "input": name})
            for name in INPUT_NAMES
        }
        self.stem_lookups = {
            result: self._families["stem_cache"].Metric({**labels, "result": result})
            for result in ("hit", "miss")
        }
        self.image_path_fallbacks = {
            reason: self._families["image_path_fallbacks"].Metric({**labels, "reason": reason})
            for reason in FALLBACK_REASONS
        }
        self.hooks = ExecutionHooks(
            prepared=self.metrics["preprocess"].observe,
            invalid=lambda name: self.invalid[name].increment(1),
            forward_pass=self._observe_pass,
        )

    def _observe_pass(self, items: int, seconds: float) -> None:
        self.metrics["forward"].observe(seconds)
        self.metrics["batch"].observe(items)

    def _count_engine_stats(self) -> None:
        """The engine's counts since the last execution onto their counters."""
        stats = self.engine.take_stats()
        for result, count in (("hit", stats.patch_cache_hits), ("miss", stats.patch_cache_misses)):
            if count:
                self.stem_lookups[result].increment(count)
        for reason, count in stats.image_path_fallbacks.items():
            self.image_path_fallbacks[reason].increment(count)

    @staticmethod
    def _inputs(request: Any) -> RequestInputs:
        """The request's items as bytes, and its cancellation check for the runner."""
        tensors = [pb_utils.get_input_tensor_by_name(request, n) for n in INPUT_NAMES]
        images, hypotheses, premises = (
            None if t is None else t.as_numpy().reshape(-1) for t in tensors
        )
        return RequestInputs(images, hypotheses, premises, request.is_cancelled)

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request; all valid items of all requests run batched."""
        outcomes = self.runner.run([self._inputs(request) for request in requests], self.hooks)
        self._count_engine_stats()
        return [self._response(outcome) for outcome in outcomes]

    def _response(self, outcome: Any) -> Any:
        if outcome.error is not None:
            return self._error(self._triton_error(outcome))
        probs = np.ascontiguousarray(outcome.probs, dtype=np.float32)
        best = probs.argmax(axis=1)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("LABEL", LABEL_BYTES[best].reshape(-1, 1)),
            pb_utils.Tensor("ANSWER", ANSWER_BYTES[best].reshape(-1, 1)),
            pb_utils.Tensor("PROBS", probs),
        ])

    def _triton_error(self, outcome: Any) -> Any:
        """The one mapping of outcomes to Triton errors: CANCELLED for a client that has
        gone, INVALID_ARG naming the input for bad items, INTERNAL (logged) for the rest."""
        if isinstance(outcome.error, RequestCancelled):
            return pb_utils.TritonError("request cancelled", pb_utils.TritonError.CANCELLED)
        where = ""
        if outcome.failed_item is not None and outcome.items > 1:
            where = f" (item {outcome.failed_item} of {outcome.items})"
        if isinstance(outcome.error, InvalidInputError):
            return pb_utils.TritonError(f"{outcome.error}{where}", pb_utils.TritonError.INVALID_ARG)
        message = (f"preprocessing failed{where}: {outcome.error!r}"
                   if outcome.failed_item is not None else str(outcome.error))
        _log("error", f"{self.instance}: {message}")
        return pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL)

    @staticmethod
    def _error(error: Any) -> Any:
        return pb_utils.InferenceResponse(output_tensors=[], error=error)

    def finalize(self) -> None:
        self.runner.close()
        _log("info", f"{self.instance}: unloaded")
