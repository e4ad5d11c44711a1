"""Session fixtures of the per-module engine tests: one tiny checkpoint, one engine.

The tiny architecture and its inputs are in ``engine_tiny.py``; every fixture
here is built once per session, in well under a second after the imports.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_tiny import TEXTS, png, write_tiny_model_dir
from ofa_ve_engine import VisualEntailmentEngine


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint, written once per session."""
    return write_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "ofa-tiny-tiny")


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path) -> VisualEntailmentEngine:
    """The engine over the tiny checkpoint on CPU (aten linear layers: no timing)."""
    return VisualEntailmentEngine.from_model_dir(
        tiny_model_dir, device="cpu", linear_backend="aten"
    )


@pytest.fixture(scope="session")
def tiny_items(tiny_engine: VisualEntailmentEngine) -> list:
    """Prepared items of mixed text lengths and image sizes."""
    return [
        tiny_engine.prepare(png((40 * i, 90, 160), (30 + 11 * i, 20 + 17 * i)), hyp, premise)
        for i, (hyp, premise) in enumerate(TEXTS)
    ]
