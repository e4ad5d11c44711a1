"""Where things are in a checkout: the one definition every tool uses.

The tools are installed editable (scripts/setup.sh), so the checkout is found from
this file's place in it: scripts/ofa_ve_ops/paths.py.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
MODEL_NAME = "ofa_visual_entailment"
MODEL_FOLDER = MODEL_REPOSITORY / MODEL_NAME
CONFIG_PBTXT = MODEL_FOLDER / "config.pbtxt"
CACHE_DIR = REPO_ROOT / ".cache"
