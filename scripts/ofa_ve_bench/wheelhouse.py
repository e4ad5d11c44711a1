#!/usr/bin/env python3
"""The wheels the GPU check's server part needs on the GPU machine, small enough to carry.

Why: the lent GPU machine has no network and lacks tritonserver (nvidia-pytriton),
perf_analyzer (tritonclient) and numpy<2 (the Triton 2.51 Python-backend stub needs
it for BYTES tensors). What travels with one command is the working tree plus
carried paths, 64 MiB in all; the wheels as published are ~90 MB. So this
downloads them here (CPython 3.12, manylinux x86_64, no dependencies pulled in),
drops what the machine cannot use (the Python-backend stubs and the bundled
libpython of other Python versions, perf_analyzer's duplicate `perf_client`,
numpy's tests; each drop is listed) and re-compresses them with LZMA (pip reads any
compression zipfile reads), ~41 MiB in all. The wheels are then packed into as few
parts as fit the per-call budget (60 MiB minus the working tree) under `.whl/`
(ignored by git), and the device commands to run are printed.

On the machine they are installed into a venv over its own packages (the stub
ignores PYTHONPATH; see INSTALL).

    .venv/bin/python -m ofa_ve_bench.wheelhouse            # .whl/server/*.whl + commands
    .venv/bin/python -m ofa_ve_bench.wheelhouse --python 3.11 --dest /tmp/whl-311  # dry run
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ofa_ve_ops.paths import REPO_ROOT

MIB = 2**20
CALL_LIMIT_MIB = 64.0
"""What travels with one device command: working tree plus carried paths."""
MARGIN_MIB = 4.0
"""Head-room for files other engineers add to the working tree before the call."""
STUB_PYTHONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13")


@dataclass(frozen=True)
class Wheel:
    """One requirement and the archive members the GPU machine has no use for."""

    requirement: str
    drop: tuple[str, ...] = ()
    """Regular expressions over member names; {other_stubs} is filled in per Python."""
    why: str = ""


def wheels(python: str = "3.12") -> list[Wheel]:
    """Exactly what the server part lacks there (docs/gpu-check.md)."""
    other = "|".join(re.escape(v) for v in STUB_PYTHONS if v != python)
    return [
        Wheel(
            "nvidia-pytriton==0.7.0",
            (rf"python_backend_stubs/({other})/", r"nvidia_pytriton\.libs/libpython3"),
            "tritonserver, the Python backend and its stub (other Pythons' stubs dropped; the "
            "bundled libpython3.13 only serves the 3.13 stub)",
        ),
        Wheel(
            "tritonclient==2.51.0",
            (r"/bin/perf_client$",),
            "perf_analyzer and the gRPC client (perf_client is a byte-identical copy)",
        ),
        Wheel("numpy==1.26.4", (r"^numpy/.*/tests/", r"^numpy/tests/"), "numpy<2 for the stub"),
        Wheel("protobuf==4.25.9", (), "tritonclient[grpc] needs protobuf<5"),
        Wheel("python-rapidjson==1.25", (), "tritonclient.grpc imports rapidjson"),
        Wheel("urllib3==2.8.0", (), "tritonclient's base dependency"),
        Wheel("packaging==26.4", (), "tritonclient.grpc imports packaging"),
    ]


def platform_args(python: str) -> list[str]:
    tag = python.replace(".", "")
    args = ["--python-version", python, "--implementation", "cp", "--abi", f"cp{tag}"]
    args += ["--abi", "abi3", "--abi", "none"]
    for plat in (
        "manylinux_2_35_x86_64",
        "manylinux_2_28_x86_64",
        "manylinux_2_27_x86_64",
        "manylinux_2_24_x86_64",
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
        "manylinux1_x86_64",
    ):
        args += ["--platform", plat]
    return args


def download(wheel: Wheel, python: str, cache: Path) -> Path:
    """The published wheel, from the cache folder or PyPI (pip download, no deps)."""
    name = re.split(r"[=<>!~\[]", wheel.requirement)[0].replace("-", "_").lower()
    version = wheel.requirement.split("==")[1]
    pattern = re.compile(rf"^{re.escape(name)}-{re.escape(version)}-", re.IGNORECASE)
    tag = "cp" + python.replace(".", "")

    def cached() -> Path | None:
        for path in sorted(cache.glob("*.whl")):
            compatible = f"-{tag}-" in path.name or "-py3-" in path.name or "abi3" in path.name
            if pattern.match(path.name) and compatible:
                return path
        return None

    found = cached()
    if found:
        return found
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += [*platform_args(python), "-d", str(cache), wheel.requirement]
    subprocess.run(cmd, check=True)
    found = cached()
    if found is None:
        raise RuntimeError(f"pip download gave no wheel for {wheel.requirement} in {cache}")
    return found


def slim(source: Path, dest_dir: Path, drop: Sequence[str]) -> tuple[Path, list[str]]:
    """`source` without members matching `drop`, LZMA-compressed; RECORD lists what is left."""
    patterns = [re.compile(p) for p in drop]
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / source.name
    dropped: list[str] = []
    with zipfile.ZipFile(source) as zin:
        names = [i.filename for i in zin.infolist()]
        dropped = [n for n in names if any(p.search(n) for p in patterns)]
        gone = set(dropped)
        tmp = dest.with_suffix(".partial")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_LZMA) as zout:
            for info in zin.infolist():
                if info.filename in gone:
                    continue
                data = zin.read(info)
                if info.filename.endswith(".dist-info/RECORD") and gone:
                    lines = data.decode().splitlines()
                    kept = [line for line in lines if line.split(",", 1)[0] not in gone]
                    data = ("\n".join(kept) + "\n").encode()
                zout.writestr(info, data, compress_type=zipfile.ZIP_LZMA)
        tmp.replace(dest)
    with zipfile.ZipFile(dest) as check:
        bad = check.testzip()
        if bad:
            raise RuntimeError(f"{dest}: member {bad} is corrupt after repacking")
    return dest, dropped


def tree_mib(root: Path = REPO_ROOT) -> float:
    """Size of what travels without carry: tracked plus untracked-not-ignored files."""
    out = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout
    total = 0
    for name in out.split(b"\0"):
        path = root / name.decode(errors="replace")
        if name and path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total / MIB


def pack(sizes: dict[str, float], budget_mib: float) -> list[list[str]]:
    """Wheels into as few parts as fit `budget_mib` each (largest first, first fit)."""
    parts: list[list[str]] = []
    room: list[float] = []
    for name, size in sorted(sizes.items(), key=lambda kv: -kv[1]):
        if size > budget_mib:
            raise ValueError(f"{name} alone ({size:.1f} MiB) exceeds the {budget_mib:.1f} MiB")
        for i, free in enumerate(room):
            if size <= free:
                parts[i].append(name)
                room[i] -= size
                break
        else:
            parts.append([name])
            room.append(budget_mib - size)
    return parts


ENGINE_COMMAND = (
    "set -o pipefail; export PYTHONUNBUFFERED=1 "
    "PYTHONPATH=scripts:model_repository/ofa_visual_entailment/1; "
    "nvidia-smi; python3 -m ofa_ve_bench.gpu_check --mode gpu --part engine --out $OUT "
    "2>&1 | tee $OUT/engine.log"
)
VENV = "/tmp/venv"
INSTALL = (
    # A venv over the machine's own packages (torch...), the wheels inside it: the
    # Python-backend stub ignores PYTHONPATH and takes its packages from the Python on
    # PATH, which tritonserver's environment puts first (ofa_ve_ops.triton_runtime).
    f"python3 -m venv --without-pip --system-site-packages {VENV} || exit 1; "
    f"S=$({VENV}/bin/python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])'); "
    "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
    "--target $S {folder}/*.whl || exit 1; "
)
SERVER_COMMAND = (
    "set -o pipefail; export PYTHONUNBUFFERED=1 "
    "PYTHONPATH=scripts:model_repository/ofa_visual_entailment/1; "
    f"{VENV}/bin/python -m ofa_ve_bench.gpu_check --mode gpu --part server --out $OUT "
    "2>&1 | tee $OUT/server.log"
)


def device_calls(folders: Sequence[str]) -> list[dict[str, object]]:
    """The device-tool calls: engine part first, then the server part with the wheels."""
    if len(folders) == 1:
        return [
            {"command": ENGINE_COMMAND, "timeout_s": 480},
            {
                "command": INSTALL.replace("{folder}", folders[0]) + SERVER_COMMAND,
                "timeout_s": 480,
                "carry": [folders[0]],
            },
        ]
    if len(folders) == 2:  # the first part installs with the engine call; warm window!
        return [
            {
                "command": INSTALL.replace("{folder}", folders[0])
                + ENGINE_COMMAND.replace("python3 -m", f"{VENV}/bin/python -m"),
                "timeout_s": 480,
                "carry": [folders[0]],
            },
            {
                "command": INSTALL.replace("{folder}", folders[1]) + SERVER_COMMAND,
                "timeout_s": 480,
                "carry": [folders[1]],
            },
        ]
    raise ValueError(f"{len(folders)} parts: more than the two calls the check is sized for")


def build(dest: Path, python: str = "3.12", budget_mib: float | None = None) -> dict[str, object]:
    """Download, slim, pack; returns sizes, parts, drops and the device calls."""
    cache = dest / ".download"
    stage = dest / ".slim"
    sizes: dict[str, float] = {}
    report: dict[str, object] = {"python": python, "wheels": []}
    for wheel in wheels(python):
        source = download(wheel, python, cache)
        slimmed, dropped = slim(source, stage, wheel.drop)
        size = slimmed.stat().st_size / MIB
        sizes[slimmed.name] = size
        report["wheels"].append(
            {
                "wheel": slimmed.name,
                "published_mib": round(source.stat().st_size / MIB, 2),
                "carried_mib": round(size, 2),
                "dropped_members": len(dropped),
                "why": wheel.why,
            }
        )
    tree = tree_mib()
    if budget_mib is None:
        budget_mib = CALL_LIMIT_MIB - MARGIN_MIB - tree
    parts = pack(sizes, budget_mib)
    folders = ["server"] if len(parts) == 1 else [f"part{i + 1}" for i in range(len(parts))]
    for old in dest.iterdir() if dest.is_dir() else []:
        if old.is_dir() and not old.name.startswith("."):
            for f in old.glob("*.whl"):
                f.unlink()
    for folder, names in zip(folders, parts, strict=True):
        (dest / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (stage / name).replace(dest / folder / name)
    relative = dest.resolve()
    if relative.is_relative_to(REPO_ROOT):
        relative = relative.relative_to(REPO_ROOT)
    carried = [f"{relative}/{folder}" for folder in folders]
    report.update(
        tree_mib=round(tree, 2),
        budget_mib=round(budget_mib, 2),
        parts={
            c: round(sum(sizes[n] for n in names), 2)
            for c, names in zip(carried, parts, strict=True)
        },
        calls=device_calls(carried),
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=REPO_ROOT / ".whl")
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python (3.12)")
    parser.add_argument("--budget-mib", type=float, help="per part (default: 60 MiB - tree)")
    args = parser.parse_args(argv)
    report = build(args.dest, args.python, args.budget_mib)
    for row in report["wheels"]:
        print(
            f"{row['wheel']}: {row['published_mib']:.1f} MiB published, "
            f"{row['carried_mib']:.1f} MiB carried ({row['dropped_members']} members dropped)"
        )
    print(f"working tree {report['tree_mib']:.1f} MiB; budget per part {report['budget_mib']:.1f}")
    for folder, size in report["parts"].items():
        print(f"part {folder}: {size:.1f} MiB")
    print("\nDevice calls (docs/gpu-check.md), one after the other:")
    for n, call in enumerate(report["calls"], 1):
        carry = f", carry={call['carry']}" if call.get("carry") else ""
        print(f"\n{n}. run(timeout_s={call['timeout_s']}{carry}, command=")
        print(f"   {call['command']!r})")
    if len(report["calls"]) == 2 and len(report["parts"]) == 2:
        print("\nTwo parts: make the second call within the machine's 30 s warm window.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
