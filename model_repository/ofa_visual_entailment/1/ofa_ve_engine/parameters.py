"""The model's tuning parameters: one declarative table, one parser, one "auto".

Triton hands the model its config.pbtxt `parameters` as strings. Everything that
reads them (model.py at load, the benchmarks when they configure a server and an
in-process engine alike, the docs table, the config consistency test) goes through
`PARAMETERS` and `read_parameters`, so a value means the same everywhere and an
error always names the parameter.

Conventions: `auto` (or an empty value) means "let the engine decide for the device
it runs on"; booleans are `true` or `false`; integers are decimal. Unknown keys are
refused, so a typo fails the load instead of being ignored.

    python -m ofa_ve_engine.parameters        # the Markdown table of docs/configuration.md
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .limits import InputLimits

AUTO = "auto"
MODEL_DIR_ENV = "OFA_VE_MODEL_DIR"
WEIGHTS_FOLDER = "weights"
"""A version folder's weights: ``<model>/<version>/weights/``, a ModelScope model directory."""
DTYPE_NAMES = ("float32", "float16", "bfloat16")
LINEAR_BACKENDS = ("auto", "onednn", "aten")
STEM_BACKENDS = ("auto", "onednn_graph", "onednn", "aten")
IMAGE_PATHS = ("exact", "fast", "gpu")
QUANTIZATIONS = ("none", "int8")


class ParameterError(ValueError):
    """A config.pbtxt parameter is missing a valid value; the message names it."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"parameter {name!r} {problem}")
        self.name = name


def _integer(name: str, text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ParameterError(name, f"must be an integer, got {text!r}") from None
    if value < minimum:
        raise ParameterError(name, f"must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class Parameter:
    """One row of the table: how a string from config.pbtxt becomes a typed value."""

    name: str
    kind: str
    """int, auto_int, bool, choice, text or int_list."""
    default: str
    """What the parameter is when config.pbtxt leaves it out (as written there)."""
    doc: str
    minimum: int = 1
    choices: tuple[str, ...] = ()

    def parse(self, raw: str | None) -> Any:
        """The typed value of `raw` (None or blank: the default). `auto` gives None."""
        text = (raw or "").strip() or self.default
        if self.kind == "text":
            return text
        if self.kind == "choice":
            if text not in self.choices:
                choices = list(self.choices)
                raise ParameterError(self.name, f"must be one of {choices}, got {text!r}")
            return text
        if self.kind == "bool":
            lowered = text.lower()
            if lowered not in ("true", "false"):
                raise ParameterError(self.name, f"must be true or false, got {text!r}")
            return lowered == "true"
        if self.kind == "auto_int":
            return None if text.lower() == AUTO else _integer(self.name, text, self.minimum)
        if self.kind == "int":
            return _integer(self.name, text, self.minimum)
        if self.kind == "int_list":
            parts = [part.strip() for part in text.split(",") if part.strip()]
            if not parts:
                raise ParameterError(self.name, "must list at least one integer")
            return tuple(_integer(self.name, part, self.minimum) for part in parts)
        raise AssertionError(f"unknown parameter kind {self.kind!r}")

    @property
    def accepted(self) -> str:
        """The accepted values, for the docs."""
        return {
            "text": "a path, or empty",
            "choice": " / ".join(f"`{c}`" for c in self.choices),
            "bool": "`true` / `false`",
            "auto_int": f"`auto` or an integer >= {self.minimum}",
            "int": f"an integer >= {self.minimum}",
            "int_list": f"comma-separated integers >= {self.minimum}",
        }[self.kind]


PARAMETERS: tuple[Parameter, ...] = (
    Parameter(
        "model_dir", "text", "",
        "ModelScope model directory to load instead of the version folder's own "
        "`<version>/weights/` (empty: those). The tritonserver's `OFA_VE_MODEL_DIR` takes "
        "precedence over both. Relative paths are taken from the model folder.",
    ),
    Parameter(
        "forward_batch_size", "auto_int", AUTO,
        "Items per network forward pass. `auto`: 1 on CPU (fastest per item there), 4 on a "
        "CPU with AMX for `dtype` `bfloat16` or `quantization` `int8` (AMX runs a few items "
        "at a time faster), no cap on a GPU (the whole Triton batch, or its halves with "
        "`pipeline`). Triton's own "
        "`max_batch_size` is the most items one execution receives; this splits an "
        "execution into passes.",
    ),
    Parameter(
        "dtype", "choice", "float32",
        "Floating-point type of the network. Half types are much faster on GPUs; check "
        "agreement first (docs/benchmarks.md). On a CPU, bfloat16 loads only where the CPU "
        "has native kernels (AMX-BF16 or AVX512-BF16) and float16 only with AMX-FP16 or "
        "AVX512-FP16; elsewhere they would be emulated, slower than float32, and the model "
        "refuses to load with a message that says so.",
        choices=DTYPE_NAMES,
    ),
    Parameter(
        "image_chunk_size", "auto_int", AUTO,
        "Images per ResNet-stem pass inside one forward pass. `auto`: 2 on CPU (the stem's "
        "activations stay in cache), the whole pass on a GPU.",
    ),
    Parameter(
        "compile", "bool", "false",
        "`torch.compile` the ResNet stem at load (needs g++ at run time, ~20 s first start).",
    ),
    Parameter(
        "linear_backend", "choice", AUTO,
        "Library behind float32 linear layers on CPU: `auto` times both at load.",
        choices=LINEAR_BACKENDS,
    ),
    Parameter(
        "stem_backend", "choice", AUTO,
        "What runs the ResNet stem on CPU (float32, bfloat16): `onednn_graph` hands the "
        "traced stem to oneDNN's graph compiler (TorchScript's oneDNN Graph fuser); "
        "`onednn` fuses each convolution with its ReLU and residual add (oneDNN, weights "
        "reordered once at load); `aten` runs the eager modules; `auto` is the first of "
        "`onednn_graph` and `onednn` that runs and agrees with `aten` at load. `compile` "
        "and `quantization` `int8` override it.",
        choices=STEM_BACKENDS,
    ),
    Parameter(
        "quantization", "choice", "none",
        "`int8`: the ResNet stem's convolutions run in int8 on CPU (oneDNN; calibrated at "
        "load on the photos shipped in `ofa_ve_engine/calibration/`), the rest in float32. "
        "Opt-in: loads only with `dtype` `float32`, on a CPU instance whose CPU has "
        "int8 dot-product instructions (`avx512_vnni`, `avx_vnni` or `amx_int8`), without "
        "`compile`; elsewhere the model refuses to load with a message that says why. "
        "Confirm it on the real weights with `ofa-ve evaluate` first (int8 on CPU, below).",
        choices=QUANTIZATIONS,
    ),
    Parameter(
        "image_path", "choice", "exact",
        "How images become pixels. `exact`: bit-identical to ModelScope's preprocessing. "
        "`fast`: large JPEGs are downscaled in the DCT domain first (opt-in; fidelity in "
        "docs/benchmarks.md). `gpu`: JPEGs are decoded (nvJPEG) and resized on the "
        "instance's GPU (opt-in; other formats and CPU instances use `exact`).",
        choices=IMAGE_PATHS,
    ),
    Parameter(
        "pipeline", "choice", AUTO,
        "Overlap decoding with the forward pass inside one execution: while a pass runs, "
        "the next pass's images are decoded. An execution runs as passes of "
        "`forward_batch_size` items, or where there is none (GPU `auto`) as two halves once "
        "it holds 8 distinct images or more (an image's items stay in one pass). `auto`: on "
        "for GPU instances, off on CPU (where decoding and the network share the same cores).",
        choices=("auto", "true", "false"),
    ),
    Parameter(
        "stem_cache_items", "int", "0",
        "How many images' embeddings (the ResNet stem's output, projected) to keep across "
        "executions, by image digest (0: off). Items with the same image bytes always share "
        "one decode and one stem pass within an execution; the cache extends that to later "
        "executions. Each entry costs 0.9 MB (float32) or 0.5 MB (half) of the instance's "
        "device memory.",
        minimum=0,
    ),
    Parameter(
        "torch_threads", "auto_int", AUTO,
        "torch intra-op threads of this instance. `auto`: torch's default (one per core); "
        "with N CPU instances give each cores / N.",
    ),
    Parameter(
        "preprocess_threads", "auto_int", AUTO,
        "Threads decoding and resizing the images of one execution. `auto`: min(4, cores).",
    ),
    Parameter(
        "warmup_batch_sizes", "int_list", "1",
        "Batch sizes run once before the model reports READY.",
    ),
    Parameter(
        "max_image_bytes", "int", str(InputLimits.max_image_bytes),
        "Largest encoded IMAGE, in bytes; larger items get INVALID_ARG naming IMAGE.",
    ),
    Parameter(
        "max_image_pixels", "int", str(InputLimits.max_image_pixels),
        "Largest decoded IMAGE (width x height), read from the header before decoding.",
    ),
    Parameter(
        "max_text_bytes", "int", str(InputLimits.max_text_bytes),
        "Largest HYPOTHESIS or PREMISE, in UTF-8 bytes.",
    ),
)
BY_NAME: dict[str, Parameter] = {p.name: p for p in PARAMETERS}


@dataclass(frozen=True)
class ModelParameters:
    """The typed values of every parameter; None where the value is `auto`."""

    model_dir: str = ""
    forward_batch_size: int | None = None
    dtype: str = "float32"
    image_chunk_size: int | None = None
    compile: bool = False
    linear_backend: str = AUTO
    stem_backend: str = AUTO
    quantization: str = "none"
    image_path: str = "exact"
    pipeline: str = AUTO
    stem_cache_items: int = 0
    torch_threads: int | None = None
    preprocess_threads: int | None = None
    warmup_batch_sizes: tuple[int, ...] = (1,)
    limits: InputLimits = field(default_factory=InputLimits)

    def engine_options(self) -> dict[str, Any]:
        """Keyword arguments of `VisualEntailmentEngine.from_model_dir` these values set."""
        import torch

        return {
            "dtype": getattr(torch, self.dtype),
            "limits": self.limits,
            "forward_batch_size": self.forward_batch_size,
            "image_chunk_size": self.image_chunk_size,
            "compile": self.compile,
            "linear_backend": self.linear_backend,
            "stem_backend": self.stem_backend,
            "quantization": self.quantization,
            "image_path": self.image_path,
            "stem_cache_items": self.stem_cache_items,
        }

    def preprocess_workers(self) -> int:
        """Decode threads: the configured number, else min(4, cores)."""
        return self.preprocess_threads or min(4, os.cpu_count() or 1)

    def pipelined(self, device_type: str) -> bool:
        """Whether decoding overlaps the forward pass on this device (see `pipeline`)."""
        return device_type != "cpu" if self.pipeline == AUTO else self.pipeline == "true"


_LIMIT_NAMES = tuple(f.name for f in fields(InputLimits))


def read_parameters(raw: Mapping[str, str]) -> ModelParameters:
    """Parse config.pbtxt parameters (name -> string); unknown names are refused."""
    unknown = sorted(set(raw) - set(BY_NAME))
    if unknown:
        raise ParameterError(
            unknown[0], f"is not a parameter of this model (known: {', '.join(BY_NAME)})"
        )
    values = {p.name: p.parse(raw.get(p.name)) for p in PARAMETERS}
    limits = InputLimits(**{name: values.pop(name) for name in _LIMIT_NAMES})
    return ModelParameters(**values, limits=limits)


def from_triton_config(model_config: Mapping[str, Any]) -> ModelParameters:
    """The parameters of a Triton model config as JSON (what `initialize` receives)."""
    raw = model_config.get("parameters") or {}
    return read_parameters({k: v.get("string_value", "") for k, v in raw.items()})


def locate_weights(
    params: ModelParameters,
    model_folder: Path,
    version: str | int | None = None,
    environ: Mapping[str, str] = os.environ,
) -> tuple[Path, str]:
    """The ModelScope model directory this model version loads, and where that came from.

    In order: the tritonserver process's ``OFA_VE_MODEL_DIR`` (an override, per
    deployment); the ``model_dir`` parameter (relative to the model folder); else
    the version folder's own ``<version>/weights/``, the Triton way: a version's
    artifacts live in its folder, so version policies, repositories on object
    storage and explicit load/unload apply to the weights too.
    """
    from_env = environ.get(MODEL_DIR_ENV, "").strip()
    if from_env:
        path, source = Path(from_env).expanduser(), f"${MODEL_DIR_ENV}"
    elif params.model_dir:
        path, source = Path(params.model_dir).expanduser(), "parameter model_dir"
    elif version is not None and str(version).strip():
        path, source = Path(str(version).strip()) / WEIGHTS_FOLDER, "the version folder"
    else:
        raise ValueError(
            f"no model directory: put the weights in the version folder "
            f"(<version>/{WEIGHTS_FOLDER}/), or set the environment variable {MODEL_DIR_ENV} "
            "of the tritonserver process (or the `model_dir` parameter in config.pbtxt)"
        )
    path = path if path.is_absolute() else model_folder / path
    if not path.is_dir():
        raise FileNotFoundError(
            f"model directory {path} (from {source}) does not exist{_WEIGHTS_HINT}"
        )
    if not (path / "configuration.json").is_file():
        raise FileNotFoundError(
            f"model directory {path} (from {source}) has no configuration.json: it is not "
            f"a ModelScope model directory{_WEIGHTS_HINT}"
        )
    return path, source


_WEIGHTS_HINT = (
    f". Put the ModelScope model directory's files (configuration.json, config.json, "
    f"pytorch_model.bin, vocab.json, merges.txt, ...) in <version>/{WEIGHTS_FOLDER}/ of the "
    f"model (`make serve` links them there), or set {MODEL_DIR_ENV} of the tritonserver process"
)


def resolve_model_dir(
    params: ModelParameters,
    model_folder: Path,
    version: str | int | None = None,
    environ: Mapping[str, str] = os.environ,
) -> Path:
    """``locate_weights``' directory alone."""
    return locate_weights(params, model_folder, version, environ)[0]


def parse_assignments(pairs: Sequence[str]) -> dict[str, str]:
    """`name=value` strings (a benchmark's `--param`) checked against the table."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ParameterError(pair, "must be given as name=value")
        out[name.strip()] = value.strip()
    read_parameters(out)  # the same checks the server makes at load
    return out


def markdown_table(escape: Callable[[str], str] = lambda s: s.replace("|", "\\|")) -> str:
    """The docs' table of parameters, generated from `PARAMETERS`."""
    lines = ["| parameter | default | accepted | meaning |", "| --- | --- | --- | --- |"]
    for p in PARAMETERS:
        default = f"`{p.default}`" if p.default else "(empty)"
        lines.append(f"| `{p.name}` | {default} | {p.accepted} | {escape(p.doc)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ofa_ve_engine.parameters",
        description="Print the model's config.pbtxt parameters as a Markdown table.",
    )
    parser.parse_args(argv)
    print(markdown_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
