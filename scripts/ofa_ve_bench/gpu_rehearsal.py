#!/usr/bin/env python3
"""Rehearse the GPU check's device call here, verbatim, on a Python shaped like the GPU machine's.

Why: a lent GPU window is one call of minutes, and a call that dies on an import
wastes it. Only CUDA differs between that machine and a rehearsal that has its shape:

1. a "device python": a virtualenv (the machine's python3 is itself one) of a CPython
   3.12 shared build (the Python-backend stub links libpython3.12.so), holding the
   machine's versions of torch, torchvision, numpy, tokenizers, grpcio, Pillow
   (requirements/device-python.txt); built once, cached outside the repository;
2. the tree as it travels: tracked files and untracked files git does not ignore, plus
   the call's carried paths, nothing else, in a fresh folder;
3. each call of ``wheelhouse.DEVICE_CALLS`` run there with ``--mode cpu`` in place of
   ``--mode gpu`` and nothing else changed: ``bash -c COMMAND`` with that python first on
   PATH as ``python3``, the network off (``unshare -n``, loopback up), ``$OUT`` an empty
   folder, under the call's timeout;
4. what comes back checked: exit status 0, at most 8 files in ``$OUT``, a finished
   summary with no failed step, the Triton steps run (not skipped), and every throughput
   row with at least as many distinct images as its batch (or concurrency).

    make gpu-rehearsal      # = .venv/bin/python -m ofa_ve_bench.gpu_rehearsal

The first run downloads ~3 GB (torch with its CUDA libraries) into the device python;
later runs reuse it. Where pyenv has no CPython 3.12, pass ``--base-python`` (any 3.12
built with ``--enable-shared``, e.g. ``PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install
3.12``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ofa_ve_ops.paths import REPO_ROOT

from ofa_ve_bench import wheelhouse

REQUIREMENTS = REPO_ROOT / "requirements" / "device-python.txt"
DEVICE_PYTHON_DIR = Path(
    os.environ.get("OFA_VE_DEVICE_PYTHON_DIR", Path.home() / ".cache" / "ofa-ve" / "device-python")
)
MAX_FILES_BACK = 8
"""What the device tool returns of $OUT at most."""
PYTHON_VERSION = "3.12"


class RehearsalError(RuntimeError):
    """The rehearsal could not be set up; the message says what to do."""


def _run(cmd: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), text=True, check=False, **kwargs)  # type: ignore[call-overload]


def _python_facts(python: Path) -> dict[str, str]:
    probe = ("import json, sys, sysconfig; print(json.dumps({'version': '%d.%d' % "
             "sys.version_info[:2], 'shared': str(sysconfig.get_config_var('Py_ENABLE_SHARED')),"
             " 'venv': str(sys.prefix != sys.base_prefix)}))")
    done = _run([str(python), "-c", probe], capture_output=True)
    if done.returncode != 0:
        raise RehearsalError(f"{python} does not run: {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout)


def find_base_python(given: Path | None = None) -> Path:
    """A CPython 3.12 shared build that is not a venv: `given`, or pyenv's newest 3.12."""
    candidates = [given] if given else []
    if not candidates:
        pyenv_root = os.environ.get("PYENV_ROOT") or (
            _run(["pyenv", "root"], capture_output=True).stdout.strip()
            if shutil.which("pyenv") else ""
        )
        versions = Path(pyenv_root or Path.home() / ".pyenv") / "versions"
        found = sorted(versions.glob(f"{PYTHON_VERSION}.*"), key=lambda p: [
            int(x) if x.isdigit() else 0 for x in p.name.split(".")], reverse=True)
        candidates = [v / "bin" / f"python{PYTHON_VERSION}" for v in found]
    for python in candidates:
        if python.is_file():
            facts = _python_facts(python)
            if facts["version"] == PYTHON_VERSION and facts["shared"] == "1" and \
                    facts["venv"] == "False":
                return python
    raise RehearsalError(
        f"no CPython {PYTHON_VERSION} shared build found (tried {[str(c) for c in candidates]}): "
        f"install one (PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install {PYTHON_VERSION}) or "
        f"pass --base-python PATH to a python{PYTHON_VERSION} built with --enable-shared"
    )


def device_python(base: Path, root: Path = DEVICE_PYTHON_DIR) -> Path:
    """The device python's bin folder: a venv of `base` with requirements/device-python.txt,
    (re)built when the requirements or the base change."""
    stamp_text = hashlib.sha256(REQUIREMENTS.read_bytes() + str(base).encode()).hexdigest()
    venv = root / "venv"
    stamp = root / "stamp"
    if stamp.is_file() and stamp.read_text() == stamp_text and (venv / "bin" / "python3").exists():
        return venv / "bin"
    print(f"gpu-rehearsal: building the device python in {venv} (~3 GB the first time)",
          flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    for cmd in (
        [str(base), "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
         "--progress-bar", "off", "-r", str(REQUIREMENTS)],
    ):
        if _run(cmd).returncode != 0:
            raise RehearsalError(f"building the device python failed: {' '.join(cmd)}")
    stamp.write_text(stamp_text)
    return venv / "bin"


def travelling_files(root: Path = REPO_ROOT) -> list[str]:
    """What a device call carries without `carry`: tracked and untracked-not-ignored files."""
    out = _run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                "--exclude-standard"], capture_output=True).stdout
    return [name for name in dict.fromkeys(out.split("\0")) if name]


def copy_tree(dest: Path, carry: Sequence[str], root: Path = REPO_ROOT) -> float:
    """The tree as it travels (files, then the carried paths) into `dest`; its MiB."""
    total = 0
    for name in travelling_files(root):
        source = root / name
        if not source.is_file() or source.is_symlink():
            continue  # deleted in the work tree, or a link (the device tool skips those)
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        total += source.stat().st_size
    for path in carry:
        source = root / path
        if not source.exists():
            raise RehearsalError(f"carried path {path} is missing here")
        for file in [source] if source.is_file() else sorted(source.rglob("*")):
            if file.is_file():
                target = dest / file.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target)
                total += file.stat().st_size
    return total / 2**20


def rehearsed_command(command: str) -> str:
    """The call's command with the one allowed change: CPU mode instead of GPU mode."""
    if command.count("--mode gpu") != 1:
        raise RehearsalError(f"the device command must say '--mode gpu' once: {command!r}")
    return command.replace("--mode gpu", "--mode cpu")


def run_call(
    call: dict[str, object], tree: Path, bin_dir: Path, out: Path, network: bool = False
) -> tuple[int, float]:
    """Run one call as the device would, with the network off; (exit status, seconds)."""
    command = rehearsed_command(str(call["command"]))
    env = {
        "PATH": f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "OUT": str(out),
        "TMPDIR": "/tmp",
    }
    inner = f"cd {tree} && exec bash -c {_quote(command)}"
    if network:
        cmd = ["bash", "-c", inner]
    else:
        cmd = ["unshare", "--net", "--", "bash", "-c", f"ip link set lo up && {inner}"]
    started = time.monotonic()
    process = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        code = process.wait(timeout=float(call["timeout_s"]))  # type: ignore[arg-type]
    except subprocess.TimeoutExpired:  # as the device would: the whole call ends
        stop_group(process)
        code = 124
    return code, time.monotonic() - started


def stop_group(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the call's whole process group (tritonserver, stubs, perf_analyzer, tee),
    SIGKILL what is left after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def check_outcome(out: Path, code: int) -> list[str]:
    """Why the call would not give true figures on the day (empty: it would)."""
    problems = []
    if code != 0:
        problems.append(f"exit status {code} (124: past the call's timeout)")
    files = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")]
    if len(files) > MAX_FILES_BACK:
        problems.append(f"{len(files)} files in $OUT; the device tool returns {MAX_FILES_BACK}")
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        return [*problems, "no summary.json"]
    summary = json.loads(summary_path.read_text())
    if not summary.get("finished"):
        problems.append("the summary is unfinished (the run was cut short)")
    if summary.get("failed"):
        problems.append(f"failed steps: {summary['failed']}")
    steps = {s["name"]: s for s in summary.get("steps", [])}
    for key in ("server_exact", "server_gpu"):
        name = _step_name(key)
        step = steps.get(name)
        if step is None or step["status"] != "ok":
            why = step["notes"] if step else steps.get("tritonserver + perf_analyzer", {}).get(
                "notes", "never ran")
            problems.append(f"{name}: {step['status'] if step else 'missing'} ({why})")
    problems += distinct_image_problems(summary)
    return problems


def _step_name(key: str) -> str:
    from ofa_ve_bench.gpu_check import STEP_NAMES

    return STEP_NAMES[key]


def distinct_image_problems(summary: dict) -> list[str]:
    """Throughput rows with fewer distinct images than items in flight."""
    problems = []
    for step in summary.get("steps", []):
        if step["name"] == _step_name("shared"):
            continue  # the one-image figure, labelled as such
        figures = step.get("figures")
        rows = figures if isinstance(figures, list) else (figures or {}).get("levels", [])
        for row in rows:
            if not isinstance(row, dict) or not any(
                    k in row for k in ("items_per_s", "throughput")):
                continue
            wanted = row.get("batch_size") or row.get("concurrency") or row.get("threads") or 1
            if row.get("distinct_images", 0) < wanted:
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
    except RehearsalError as exc:
        print(f"gpu-rehearsal: {exc}", file=sys.stderr)
        return 2
    calls = json.loads(_run([sys.executable, "-m", "ofa_ve_bench.wheelhouse", "--calls-json"],
                            capture_output=True, cwd=REPO_ROOT).stdout or "null")
    if not calls:
        print("gpu-rehearsal: `python -m ofa_ve_bench.wheelhouse --calls-json` failed",
              file=sys.stderr)
        return 2
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu-rehearsal-"))
    failed = False
    for n, call in enumerate(calls, 1):
        tree, out = work / f"call{n}" / "tree", work / f"call{n}" / "out"
        shutil.rmtree(work / f"call{n}", ignore_errors=True)
        out.mkdir(parents=True)
        mib = copy_tree(tree, call.get("carry", []))
        limit = wheelhouse.CALL_LIMIT_MIB
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
