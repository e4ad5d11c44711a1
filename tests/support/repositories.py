"""Model repositories of the tests' own: the committed model folder copied, with
weights in each version folder (`<version>/weights/`), as an operator lays one out."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from ofa_ve_ops.paths import MODEL_FOLDER, MODEL_NAME

CODE_ONLY = shutil.ignore_patterns("weights", ".weights.*", "__pycache__", "*.egg-info")
"""What a version folder's copy leaves out: its weights (given per version) and build
leftovers."""


def copy_repository(
    destination: Path,
    weights: Mapping[str, Path | None],
    *,
    config_suffix: str = "",
) -> Path:
    """A repository at `destination`: the committed config.pbtxt (plus `config_suffix`)
    and, for each version named in `weights`, a copy of the committed version folder
    1/ (model.py and the engine package: a copy, so that each version folder is
    self-contained, as Triton copies and loads it) whose `weights/` is a copy of the
    given ModelScope model directory (None: no weights). Returns `destination`."""
    model = destination / MODEL_NAME
    model.mkdir(parents=True)
    config = (MODEL_FOLDER / "config.pbtxt").read_text()
    (model / "config.pbtxt").write_text(config + config_suffix)
    for version, model_dir in weights.items():
        shutil.copytree(MODEL_FOLDER / "1", model / version, ignore=CODE_ONLY)
        if model_dir is not None:
            shutil.copytree(model_dir, model / version / "weights")
    return destination
