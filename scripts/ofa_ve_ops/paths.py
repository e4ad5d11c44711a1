"""Where things are in a checkout: the one definition every tool uses.

The tools are installed editable (scripts/setup.sh), so the checkout is found from
this file's place in it: scripts/ofa_ve_ops/paths.py.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
MODEL_NAME = "ofa_visual_entailment"
MODEL_FOLDER = MODEL_REPOSITORY / MODEL_NAME
CONFIG_PBTXT = MODEL_FOLDER / "config.pbtxt"
CACHE_DIR = REPO_ROOT / ".cache"
CACHE_DIR_ENV = "OFA_VE_CACHE_DIR"
STUB_NAME = "triton_python_backend_stub"
"""The Python backend's stub executable: one process per model instance."""
SHM_REGION_PREFIX = "triton_python_backend_shm_region"
"""How the Python backend names the /dev/shm region it gives each stub (on its command line)."""


def cache_dir() -> Path:
    """Where generated files (the demo checkpoint) go: $OFA_VE_CACHE_DIR, else .cache/."""
    return Path(os.environ.get(CACHE_DIR_ENV, "").strip() or CACHE_DIR)


def demo_checkpoint_dir(seed: int, under: Path | None = None) -> Path:
    """The one place a seed's demo checkpoint lives, so `make serve`, `make
    demo-checkpoint` and the benchmarks share one copy."""
    return (under or cache_dir()) / f"demo-checkpoint-seed{seed}"
