"""`pip install ./client` into a fresh virtualenv (no system site-packages, no torch):
it installs, its import loads none of the heavy modules (so it is fast: measure that with
`python -X importtime -c "import ofa_ve_client"`; a time budget is not asserted on a
shared machine), never imports torch, and its `ofa-ve` talks to a real server.

Dependencies are constrained to the versions of this environment, so pip takes
them from its local cache when it has them. Nothing is skipped: a failed
install fails the test.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ofa_ve_data.workload import TEST_IMAGES

pytestmark = pytest.mark.slow  # a fresh virtualenv and a pip install

CLIENT_DIR = Path(__file__).resolve().parents[2] / "client"
# The client's runtime dependencies (and theirs that matter), pinned to what is tested here.
PINNED = (
    "tritonclient",
    "numpy",
    "pillow",
    "urllib3",
    "tqdm",
    "grpcio",
    "protobuf",
    "python-rapidjson",
    "packaging",
)


def _sh(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert out.returncode == 0, f"{cmd[:4]} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("client-install")
    # Build from a copy: an in-tree build would leave build/ and egg-info in client/.
    source = root / "client"
    shutil.copytree(
        CLIENT_DIR, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    constraints = root / "constraints.txt"
    constraints.write_text(
        "".join(f"{name}=={importlib.metadata.version(name)}\n" for name in PINNED)
    )
    venv = root / "venv"
    # This environment's pip installs into the new one (`--python`): bootstrapping a pip
    # of its own (ensurepip) and compiling every installed module to bytecode took
    # 15 of the 25 s here, and neither is what the test is about.
    _sh(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    _sh(
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "--disable-pip-version-check",
        "--quiet",
        "--no-compile",
        "-c",
        str(constraints),
        str(source),
        timeout=300,
    )
    return venv


def test_installs_without_torch_and_imports_nothing_heavy(fresh_venv):
    python = str(fresh_venv / "bin" / "python")
    probe = (
        "import importlib.util, sys, ofa_ve_client; "
        "print(ofa_ve_client.__file__); "
        "print(importlib.util.find_spec('torch') is None); "
        "print(sorted(m for m in ('torch', 'tritonclient', 'grpc', 'numpy', 'PIL') "
        "if m in sys.modules)); "
        "ofa_ve_client.VisualEntailmentClient; ofa_ve_client.AsyncVisualEntailmentClient; "
        "print('torch' in sys.modules)"
    )
    out = _sh(python, "-c", probe)
    location, no_torch_installed, loaded_by_import, torch_after_clients = out.stdout.split("\n")[:4]
    assert str(fresh_venv) in location  # a real install, not this checkout
    assert no_torch_installed == "True"
    assert loaded_by_import == "[]"  # heavy modules load lazily
    assert torch_after_clients == "False"
    _sh(sys.executable, "-m", "pip", "--python", python, "check")


def test_installed_cli_predicts(fresh_venv, triton_server):
    cli = str(fresh_venv / "bin" / "ofa-ve")
    image = str(TEST_IMAGES["tiny_50x40_png"])
    out = _sh(cli, "predict", image, "A cup of coffee.", "--url", triton_server.grpc_url)
    result = json.loads(out.stdout)
    assert result["label"] in ("entailment", "neutral", "contradiction")
    assert abs(sum(result["probs"].values()) - 1) < 1e-4
