"""Session fixtures of the per-module engine tests: prepared items on the tiny engine.

The tiny architecture and its inputs are in ``tests/support/engine_tiny.py``; its
checkpoint and engine (``tiny_model_dir``, ``tiny_engine``) are in
``tests/conftest.py``, shared with the SDK tests' ``tiny_server``. Every fixture
is built once per session, in well under a second after the imports.
"""

from __future__ import annotations

import pytest
from ofa_ve_engine import VisualEntailmentEngine
from support.engine_tiny import TEXTS, png


@pytest.fixture(scope="session")
def tiny_items(tiny_engine: VisualEntailmentEngine) -> list:
    """Prepared items of mixed text lengths and image sizes."""
    return [
        tiny_engine.prepare(png((40 * i, 90, 160), (30 + 11 * i, 20 + 17 * i)), hyp, premise)
        for i, (hyp, premise) in enumerate(TEXTS)
    ]
