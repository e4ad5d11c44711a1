#!/usr/bin/env python3
"""Rehearse the GPU check's device call here, verbatim, on a Python shaped like the GPU machine's.

Why: a lent GPU window is one call of minutes, and a call that dies on an import wastes
it. Only CUDA differs between that machine and this rehearsal (docs/gpu-check.md, "Before
the window"): a "device python" (a venv of a CPython 3.12 shared build, as the stub links
libpython, with the machine's packages from requirements/device-python.txt, built once),
the tree as it travels, each call of `wheelhouse.DEVICE_CALLS` with `--mode cpu` for
`--mode gpu` under `unshare -n`, and what comes back checked.

    make gpu-rehearsal      # = .venv/bin/python -m ofa_ve_bench.gpu_rehearsal
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ofa_ve_ops import procfs
from ofa_ve_ops.paths import REPO_ROOT

from ofa_ve_bench import wheelhouse
from ofa_ve_bench.gpu_check import SERVER_STEPS, STEP_NAMES

REQUIREMENTS = REPO_ROOT / "requirements" / "device-python.txt"
DEVICE_PYTHON_DIR = Path(
    os.environ.get("OFA_VE_DEVICE_PYTHON_DIR", Path.home() / ".cache" / "ofa-ve" / "device-python")
)
MAX_FILES_BACK = 8  # what the device tool returns of $OUT at most


class RehearsalError(RuntimeError):
    """The rehearsal could not be set up; the message says what to do."""


def _run(cmd: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), text=True, check=False, **kwargs)  # type: ignore[call-overload]


def find_base_python(given: Path | None = None) -> Path:
    """A CPython 3.12 shared build that is not a venv: `given`, or pyenv's newest 3.12."""
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    found = sorted(pyenv.glob("3.12.*"), reverse=True,
                   key=lambda p: [int(x) if x.isdigit() else 0 for x in p.name.split(".")])
    candidates = [given] if given else [v / "bin" / "python3.12" for v in found]
    probe = ("import sys, sysconfig; print(sys.version_info[:2] == (3, 12) and sys.prefix == "
             "sys.base_prefix and sysconfig.get_config_var('Py_ENABLE_SHARED') == 1)")
    for python in candidates:
        if python.is_file() and _run([str(python), "-c", probe],
                                     capture_output=True).stdout.strip() == "True":
            return python
    raise RehearsalError(
        f"no CPython 3.12 shared build found (tried {[str(c) for c in candidates]}): install "
        "one (PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install 3.12) or pass --base-python "
        "PATH to a python3.12 built with --enable-shared")


def device_python(base: Path, root: Path = DEVICE_PYTHON_DIR) -> Path:
    """The device python's bin folder, (re)built when the requirements or the base change."""
    stamp_text = hashlib.sha256(REQUIREMENTS.read_bytes() + str(base).encode()).hexdigest()
    venv, stamp = root / "venv", root / "stamp"
    if stamp.is_file() and stamp.read_text() == stamp_text and (venv / "bin" / "python3").exists():
        return venv / "bin"
    print(f"gpu-rehearsal: building the device python in {venv} (~3 GB the first time)",
          flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    for cmd in ([str(base), "-m", "venv", str(venv)],
                [*pip, "--progress-bar", "off", "-r", str(REQUIREMENTS)]):
        if _run(cmd).returncode != 0:
            raise RehearsalError(f"building the device python failed: {' '.join(cmd)}")
    stamp.write_text(stamp_text)
    return venv / "bin"


def copy_tree(dest: Path, carry: Sequence[str], root: Path = REPO_ROOT) -> float:
    """The tree as it travels (the working tree's files, then the carried paths) into
    `dest`; its MiB."""
    files = wheelhouse.travelling_files(root)
    for path in carry:
        source = root / path
        if not source.exists():
            raise RehearsalError(f"carried path {path} is missing here")
        files += [f for f in [source, *sorted(source.rglob("*"))] if f.is_file()]
    for source in files:
        target = dest / source.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return sum(f.stat().st_size for f in files) / wheelhouse.MIB


def rehearsed_command(command: str) -> str:
    """The call's command with the one allowed change: CPU mode instead of GPU mode."""
    if command.count("--mode gpu") != 1:
        raise RehearsalError(f"the device command must say '--mode gpu' once: {command!r}")
    return command.replace("--mode gpu", "--mode cpu")


def run_call(
    call: dict[str, object], tree: Path, bin_dir: Path, out: Path, network: bool = False
) -> tuple[int, float]:
    """Run one call as the device would, the network off; (exit status, seconds). Past
    its timeout the whole call ends (124), tritonserver, stubs and perf_analyzer too."""
    inner = f"cd {tree} && exec bash -c {shlex.quote(rehearsed_command(str(call['command'])))}"
    cmd = ["bash", "-c", inner] if network else [
        "unshare", "--net", "--", "bash", "-c", f"ip link set lo up && {inner}"]
    env = {"PATH": f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8", "OUT": str(out),
           "TMPDIR": "/tmp"}
    started = time.monotonic()
    process = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        code = process.wait(timeout=float(call["timeout_s"]))  # type: ignore[arg-type]
    except subprocess.TimeoutExpired:
        code = 124
        for sig in (signal.SIGTERM, signal.SIGKILL):  # the group, then what is left of it
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(process.pid, sig)
                process.wait(timeout=10)
        _kill_stragglers(process.pid)
    return code, time.monotonic() - started


def _kill_stragglers(group: int, seconds: float = 10.0) -> None:
    """SIGKILL what is still in the call's process group until it is empty: a process the
    shell was forking as the call was cut can outlive both signals (seen under load). The
    leader is reaped, so a live process with its number is someone else's: then stop."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and procfs.process_state(group) is None:
        left = [p for p in procfs.process_group(group) if procfs.process_state(p) != "Z"]
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def check_outcome(out: Path, code: int) -> list[str]:
    """Why the call would not give true figures on the day (empty: it would)."""
    problems = [f"exit status {code} (124: past the call's timeout)"] if code else []
    files = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")]
    if len(files) > MAX_FILES_BACK:
        problems.append(f"{len(files)} files in $OUT; the device tool returns {MAX_FILES_BACK}")
    if not (out / "summary.json").is_file():
        return [*problems, "no summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    if not summary.get("finished"):
        problems.append("the summary is unfinished (the run was cut short)")
    if summary.get("failed"):
        problems.append(f"failed steps: {summary['failed']}")
    steps = {s["name"]: s for s in summary.get("steps", [])}
    skipped = steps.get("tritonserver + perf_analyzer", {}).get("notes", "never ran")
    for name in (STEP_NAMES[key] for key in SERVER_STEPS):
        step = steps.get(name, {"status": "missing", "notes": skipped})
        if step["status"] != "ok":
            problems.append(f"{name}: {step['status']} ({step['notes']})")
    for step in summary.get("steps", []):  # every throughput row
        figures = step.get("figures")
        rows = figures if isinstance(figures, list) else (figures or {}).get("levels", [])
        for row in rows:
            wanted = row.get("batch_size") or row.get("concurrency") or 1
            if ("items_per_s" in row or "throughput" in row) and \
                    row.get("distinct_images", 0) < wanted:
                problems.append(f"{step['name']}: a row with {row.get('distinct_images')} "
                                f"distinct images for {wanted} in flight: {row}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-python", type=Path, help="a CPython 3.12 shared build")
    parser.add_argument("--work-dir", type=Path, help="keep the tree and $OUT here")
    parser.add_argument("--with-network", action="store_true",
                        help="leave the network on (where unshare is not allowed)")
    args = parser.parse_args(argv)
    try:
        bin_dir = device_python(find_base_python(args.base_python))
        if not wheelhouse.wheels_present(REPO_ROOT / ".whl"):
            wheelhouse.build(REPO_ROOT / ".whl")
    except (RehearsalError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"gpu-rehearsal: {exc}", file=sys.stderr)
        return 2
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu-rehearsal-"))
    failed = False
    for n, call in enumerate(wheelhouse.DEVICE_CALLS, 1):
        tree, out = work / f"call{n}" / "tree", work / f"call{n}" / "out"
        shutil.rmtree(work / f"call{n}", ignore_errors=True)
        out.mkdir(parents=True)
        mib, limit = copy_tree(tree, call["carry"]), wheelhouse.CALL_LIMIT_MIB
        print(f"gpu-rehearsal: call {n}: {mib:.1f} MiB travel (limit {limit:g}); running "
              f"{rehearsed_command(call['command'])!r} with python3 = {bin_dir}/python3, "
              f"network {'on' if args.with_network else 'off'}, timeout {call['timeout_s']} s",
              flush=True)
        code, seconds = run_call(call, tree, bin_dir, out, network=args.with_network)
        problems = check_outcome(out, code)
        if mib > limit:
            problems.append(f"{mib:.1f} MiB travel, over the call's {limit:g} MiB")
        back = sorted(p.name for p in out.rglob("*") if p.is_file())
        print(f"gpu-rehearsal: call {n}: exit {code} after {seconds:.0f} s; back: {back}")
        for problem in problems:
            print(f"gpu-rehearsal: PROBLEM: {problem}")
        failed = failed or bool(problems)
    print(f"gpu-rehearsal: {'FAILED' if failed else 'passed'} (files in {work})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
