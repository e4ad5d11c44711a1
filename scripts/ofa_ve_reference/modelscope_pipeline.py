"""ModelScope's own visual-entailment pipeline, run offline on a local model directory.

This is the yardstick our engine is measured against, so it must be ModelScope's
code doing the work: `modelscope.pipelines.pipeline(Tasks.visual_entailment,
model=DIR)` with its own preprocessor, tokenizer, model and traverse scoring.

ModelScope 1.40.2 imports, on this path, packages it never executes for visual
entailment (fairseq, torchaudio, decord, cv2, librosa, ...). Those are heavy,
unbuildable here, or pin-incompatible, so when (and only when) one of them is
not installed, an import hook hands ModelScope an inert placeholder module.
Any *use* of a placeholder (calling or instantiating anything from it) raises
`StubbedModuleUsedError`, so a reference run can never silently depend on one.

Creating ModelScope's OFA preprocessor reseeds numpy's and torch's global RNGs;
`run_reference` saves and restores them. Tests run it through
`reference.worker.ReferenceWorker`, a process of its own, which also keeps the
import hook out of the test process.

CLI (prints a JSON list, one `{"labels": ..., "scores": ...}` per pair):

    python -m ofa_ve_reference.modelscope_pipeline MODEL_DIR PAIRS.json [--dump-inputs DIR]

PAIRS.json is a list of `{"image": PATH, "hypothesis": TEXT, "premise": TEXT|null}`
objects (or `[PATH, HYPOTHESIS, PREMISE]` triples); relative image paths are
resolved against the JSON file's folder.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import random
import sys
import tempfile
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

# Packages ModelScope imports on the visual-entailment path but never runs there.
# (timm is not among them: ModelScope checks its installed *version* before
# importing its multi-modal preprocessors, so the real, pinned timm is required.)
STUBBED_PACKAGES: frozenset[str] = frozenset(
    {
        "fairseq",
        "torchaudio",
        "decord",
        "cv2",
        "librosa",
        "soundfile",
        "rapidfuzz",
        "zhconv",
        "unicodedata2",
    }
)
# Optional extensions ModelScope probes with `try: import ... except ImportError`
# (a placeholder would flip its feature flag): these stay absent.
ABSENT_OPTIONAL_MODULES: frozenset[str] = frozenset({"fairseq.ngram_repeat_block_cuda"})

Pair = tuple[str | os.PathLike[str] | bytes, str, str | None]
"""(image path or encoded bytes, hypothesis, premise or None)"""


class StubbedModuleUsedError(RuntimeError):
    """Raised when ModelScope actually uses a package we replaced by a placeholder."""


PLACEHOLDER_CALLS: list[str] = []
"""Every placeholder call in this process, even one that ModelScope caught and
swallowed; `run_reference` fails if its run added any."""


class _PlaceholderMeta(type):
    """Metaclass so that placeholders can be subclassed and decorated at import time
    (class bodies, isinstance checks) but never called."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        PLACEHOLDER_CALLS.append(cls.__qualname__)
        raise StubbedModuleUsedError(
            f"{cls.__qualname__} was called, but its package is not installed and was "
            "replaced by an import-time placeholder: this code path needs the real package"
        )

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{cls.__qualname__}.{name}")


def _placeholder(qualname: str) -> type:
    return _PlaceholderMeta(qualname.rpartition(".")[2], (), {"__qualname__": qualname})


class _PlaceholderModule(types.ModuleType):
    """A package whose every attribute is a placeholder class."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        if f"{self.__name__}.{name}" in ABSENT_OPTIONAL_MODULES:
            raise AttributeError(name)
        value = _placeholder(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


class _AbsentPackageFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last-resort finder: serves placeholders only for listed packages that the
    regular finders could not find (a real installed package always wins)."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names
        self.served: list[str] = []

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        top = fullname.partition(".")[0]
        if top not in self.names or fullname in ABSENT_OPTIONAL_MODULES:
            return None
        if fullname == top and importlib.machinery.PathFinder.find_spec(fullname) is not None:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _PlaceholderModule(spec.name)
        module.__path__ = []
        module.__version__ = "0.0.0+placeholder"
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        self.served.append(module.__name__)


def install_import_stubs(names: frozenset[str] = STUBBED_PACKAGES) -> _AbsentPackageFinder:
    """Install (once per process) the finder serving placeholders for absent packages."""
    for finder in sys.meta_path:
        if isinstance(finder, _AbsentPackageFinder):
            return finder
    finder = _AbsentPackageFinder(names)
    sys.meta_path.append(finder)
    return finder


@contextlib.contextmanager
def preserved_global_rngs() -> Iterator[None]:
    """Restore Python's, numpy's and torch's global RNG state afterwards (ModelScope's
    OFA preprocessor reseeds numpy and torch when it is created)."""
    import numpy as np
    import torch

    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


_OFFLINE_ENV = {
    "MODELSCOPE_ENDPOINT": "http://127.0.0.1:9",  # the discard port: nothing answers
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


@contextlib.contextmanager
def offline_environment() -> Iterator[None]:
    """Point ModelScope's and Hugging Face's hub clients at nothing while the reference
    runs (it reads a local directory; a slip must fail, not reach a network), then
    restore the caller's environment."""
    saved = {name: os.environ.get(name) for name in _OFFLINE_ENV}
    os.environ.update(_OFFLINE_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def build_pipeline(model_dir: str | os.PathLike[str], device: str = "cpu") -> Any:
    """ModelScope's visual-entailment pipeline for a local model directory, on `device`
    (`cpu`, `cuda` or `cuda:N`)."""
    install_import_stubs()
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    model_dir = Path(model_dir).resolve()
    if not (model_dir / "configuration.json").is_file():
        raise FileNotFoundError(
            f"not a ModelScope model directory (no configuration.json): {model_dir}"
        )
    return pipeline(Tasks.visual_entailment, model=str(model_dir),
                    device=device.replace("cuda", "gpu"))


def image_path(image: str | os.PathLike[str] | bytes, scratch: Path, index: int) -> str:
    """ModelScope reads images by path; encoded bytes go through a scratch file."""
    if isinstance(image, bytes | bytearray):
        path = scratch / f"image-{index}"
        path.write_bytes(bytes(image))
        return str(path)
    return str(Path(image).resolve())


def _dump_inputs(pipe: Any, inputs: dict[str, Any], path: Path) -> None:
    """Save what ModelScope's own preprocessor feeds the model for one item, so a
    parity failure can be traced to tokens, pixels or the network."""
    import numpy as np

    batch = pipe.preprocessor(dict(inputs))
    np.savez(
        path,
        input_ids=batch["net_input"]["input_ids"][0].numpy(),
        decoder_prompt=np.asarray(batch["decoder_prompts"][0], dtype=np.int64),
        patch_image=batch["net_input"]["patch_images"][0].numpy(),
    )


def run_reference(
    model_dir: str | os.PathLike[str],
    pairs: Sequence[Pair],
    inputs_dir: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Run ModelScope's pipeline on each (image, hypothesis, premise) pair, one call each.

    Returns ModelScope's own outputs reduced to `labels` (the answer word, e.g.
    "yes") and `scores` (its probability). ModelScope's input dict puts the
    hypothesis in `text` and the premise in `text2`. With `inputs_dir`, also
    writes `{index}.npz` per pair: the preprocessor's `input_ids`,
    `decoder_prompt` and normalized `patch_image` [3, P, P].
    """
    calls_before = len(PLACEHOLDER_CALLS)
    with (
        preserved_global_rngs(),
        offline_environment(),
        tempfile.TemporaryDirectory(prefix="ms-ref-") as tmp,
    ):
        pipe = build_pipeline(model_dir)
        results = []
        for index, (image, hypothesis, premise) in enumerate(pairs):
            inputs: dict[str, Any] = {
                "image": image_path(image, Path(tmp), index),
                "text": hypothesis,
            }
            if premise is not None:
                inputs["text2"] = premise
            if inputs_dir is not None:
                _dump_inputs(pipe, inputs, Path(inputs_dir) / f"{index}.npz")
            output = pipe(inputs)
            results.append({"labels": str(output["labels"]), "scores": float(output["scores"])})
    if len(PLACEHOLDER_CALLS) > calls_before:
        raise StubbedModuleUsedError(
            "ModelScope called import placeholders during the reference run (and caught the "
            f"error): {sorted(set(PLACEHOLDER_CALLS[calls_before:]))}; install those packages"
        )
    return results


def _load_pairs(path: Path) -> list[Pair]:
    records = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of pairs")
    pairs: list[Pair] = []
    for n, record in enumerate(records):
        if isinstance(record, dict):
            image, hypothesis, premise = (
                record.get("image"),
                record.get("hypothesis"),
                record.get("premise"),
            )
        elif isinstance(record, list) and len(record) in (2, 3):
            image, hypothesis, premise = (*record, None)[:3]
        else:
            raise ValueError(f"{path}: pair {n} is neither an object nor a 2/3-item list")
        if not isinstance(image, str) or not isinstance(hypothesis, str):
            raise ValueError(f"{path}: pair {n} needs a string image path and hypothesis")
        if premise is not None and not isinstance(premise, str):
            raise ValueError(f"{path}: pair {n}: premise must be a string or null")
        resolved = Path(image)
        if not resolved.is_absolute():
            resolved = path.parent / resolved
        pairs.append((str(resolved), hypothesis, premise))
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: print ModelScope's outputs for the pairs as one JSON list."""
    parser = argparse.ArgumentParser(
        prog="python -m ofa_ve_reference.modelscope_pipeline",
        description="Run ModelScope's own visual-entailment pipeline offline and print JSON.",
    )
    parser.add_argument("model_dir", type=Path, help="local ModelScope model directory")
    parser.add_argument("pairs", type=Path, help="JSON list of {image, hypothesis, premise}")
    parser.add_argument(
        "--dump-inputs",
        type=Path,
        metavar="DIR",
        help="also save the preprocessor's tokens and pixels per pair as DIR/INDEX.npz",
    )
    args = parser.parse_args(argv)
    pairs = _load_pairs(args.pairs)
    if args.dump_inputs is not None:
        args.dump_inputs.mkdir(parents=True, exist_ok=True)
    # Anything ModelScope prints must not corrupt the JSON on stdout.
    with contextlib.redirect_stdout(sys.stderr):
        results = run_reference(args.model_dir, pairs, args.dump_inputs)
    served = sorted(set(install_import_stubs().served))
    print(
        f"import placeholders served (none called): {', '.join(served) or 'none'}", file=sys.stderr
    )
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
