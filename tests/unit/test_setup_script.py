"""scripts/setup.sh, the one installer: its phases are visible and the editable installs
print no setuptools warning boxes (issue 26: a first install was silent for minutes).

Why this shape: a real first install downloads several GB (torch). Here the new
virtualenv sees this environment's packages through a .pth file, so pip finds every
pinned requirement already satisfied and the run takes seconds, while the script's
own steps (virtualenv, pip, the pinned requirements, the editable installs, the stamp)
run for real.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from ofa_ve_ops.paths import REPO_ROOT

pytestmark = pytest.mark.slow


def test_setup_shows_its_phases_and_no_warning_boxes(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    Path(site, "zz_parent.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "setup.sh"), "--venv", str(venv),
         "--profile", "serve"],
        capture_output=True, text=True, timeout=600, env=env, check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    phases = [line for line in output.splitlines() if line.startswith("setup.sh [")]
    assert [line.split("]")[0] for line in phases] == ["setup.sh [1/3", "setup.sh [2/3",
                                                      "setup.sh [3/3"], phases
    assert "Requirement already satisfied: torch" in output  # pip's own lines are shown
    assert "Editable installation" not in output and "!!" not in output
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import ofa_ve_engine, ofa_ve_ops; "
         "print(ofa_ve_engine.__file__); print(ofa_ve_ops.__file__)"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout.split()
    assert all(Path(p).is_relative_to(REPO_ROOT) for p in where), where
    again = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "setup.sh"), "--venv", str(venv),
         "--profile", "serve"], capture_output=True, text=True, timeout=120, check=True,
    )
    assert "already installed" in again.stdout
