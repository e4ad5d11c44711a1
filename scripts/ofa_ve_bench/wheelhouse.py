#!/usr/bin/env python3
"""The GPU check's device call, and the wheels it carries to the GPU machine.

Why: that machine has no network and lacks tritonserver, perf_analyzer, numpy<2 and
simplejpeg, and a call carries 64 MiB with the working tree, less than the wheels as
published. So they are downloaded here (CPython 3.12, manylinux x86_64, no dependencies),
stripped of what that machine cannot use, re-compressed with LZMA (pip reads any
compression zipfile reads) into `.whl/server/` (ignored by git), and checked to fit.
`DEVICE_CALLS` is the call, written once: the rehearsal runs it, and `--calls-json` prints
it for the docs and whoever starts the machine (docs/gpu-check.md).

    .venv/bin/python -m ofa_ve_bench.wheelhouse               # build .whl/server, print the call
    .venv/bin/python -m ofa_ve_bench.wheelhouse --calls-json  # the call as JSON (builds the
                                                              # wheels first where missing)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

from ofa_ve_ops.paths import REPO_ROOT

MIB = 2**20
CALL_LIMIT_MIB = 64.0  # what travels with one device command: working tree plus carry
MARGIN_MIB = 4.0  # head-room for files others add to the working tree before the call
CALL_TIMEOUT_S = 540
"""One call of 9 minutes: the machine's start fits the 15-minute window beside it."""
DEVICE_CALLS: list[dict[str, object]] = [
    {
        "timeout_s": CALL_TIMEOUT_S,
        "carry": [".whl/server"],
        "command": "bash scripts/gpu_check_device.sh --mode gpu",
    }
]
"""The GPU check's device call(s), exactly as made; the rehearsal swaps `--mode gpu` for
`--mode cpu` and changes nothing else."""
STUB_PYTHONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13")
PLATFORMS = ("manylinux_2_35_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def wheels(python: str = "3.12") -> dict[str, tuple[str, ...]]:
    """Requirement -> the archive members (regular expressions) the machine has no use for."""
    other = "|".join(re.escape(v) for v in STUB_PYTHONS if v != python)
    return {
        # tritonserver, the Python backend and its stub; the bundled libpython3.13 only
        # serves the 3.13 stub
        "nvidia-pytriton==0.7.0": (rf"python_backend_stubs/({other})/",
                                   r"nvidia_pytriton\.libs/libpython3"),
        "tritonclient==2.51.0": (r"/bin/perf_client$",),  # a copy of perf_analyzer
        "numpy==1.26.4": (r"^numpy/.*/tests/", r"^numpy/tests/"),  # the stub's BYTES tensors
        "protobuf==4.25.9": (),  # tritonclient[grpc] needs protobuf<5
        "python-rapidjson==1.25": (),  # tritonclient.grpc imports it, and the next two
        "urllib3==2.8.0": (),
        "packaging==26.4": (),
        "simplejpeg==1.9.0": (),  # the exact image path's JPEG decoder (libjpeg-turbo)
    }


def _dist(requirement: str) -> str:
    """The name a wheel file starts with: `nvidia-pytriton==0.7.0` -> `nvidia_pytriton`."""
    return re.split(r"[=<>!~\[]", requirement)[0].replace("-", "_").lower()


def download(requirement: str, python: str, cache: Path) -> Path:
    """The published wheel, from the cache folder or PyPI (pip download, no deps)."""
    prefix = f"{_dist(requirement)}-{requirement.split('==')[1]}-"
    tag = "cp" + python.replace(".", "")

    def cached() -> Path | None:
        return next((p for p in sorted(cache.glob("*.whl")) if p.name.lower().startswith(prefix)
                     and any(t in p.name for t in (f"-{tag}-", "-py3-", "abi3"))), None)

    if cached() is None:
        cache.mkdir(parents=True, exist_ok=True)
        abis = ["--abi", tag, "--abi", "abi3", "--abi", "none"]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", python, "--implementation", "cp", *abis,
               *(arg for p in PLATFORMS for arg in ("--platform", p)),
               "-d", str(cache), requirement]
        subprocess.run(cmd, check=True, stdout=sys.stderr.fileno())  # stdout may be JSON
    found = cached()
    if found is None:
        raise RuntimeError(f"pip download gave no wheel for {requirement} in {cache}")
    return found


def slim(source: Path, dest_dir: Path, drop: Sequence[str]) -> tuple[Path, list[str]]:
    """`source` without members matching `drop`, LZMA-compressed; RECORD lists what is left."""
    patterns = [re.compile(p) for p in drop]
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest, partial = dest_dir / source.name, dest_dir / f"{source.name}.partial"
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(partial, "w", zipfile.ZIP_LZMA) as zout:
        dropped = [n for n in zin.namelist() if any(p.search(n) for p in patterns)]
        gone = set(dropped)
        for info in zin.infolist():
            if info.filename in gone:
                continue
            data = zin.read(info)
            if info.filename.endswith(".dist-info/RECORD") and dropped:
                kept = [ln for ln in data.decode().splitlines() if ln.split(",")[0] not in gone]
                data = ("\n".join(kept) + "\n").encode()
            zout.writestr(info, data, compress_type=zipfile.ZIP_LZMA)
    partial.replace(dest)
    with zipfile.ZipFile(dest) as check:
        bad = check.testzip()
    if bad:
        raise RuntimeError(f"{dest}: member {bad} is corrupt after repacking")
    return dest, dropped


def travelling_files(root: Path = REPO_ROOT) -> list[Path]:
    """What a device call carries without `carry`: the tracked and untracked-not-ignored
    files (a file deleted here, or a link, the device tool skips)."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], capture_output=True, text=True, check=True)
    paths = (root / name for name in dict.fromkeys(out.stdout.split("\0")) if name)
    return [p for p in paths if p.is_file() and not p.is_symlink()]


def wheels_present(dest: Path, python: str = "3.12") -> bool:
    """Whether `dest/server` holds a wheel for every requirement."""
    found = [p.name.lower() for p in (dest / "server").glob("*.whl")]
    return all(any(f.startswith(f"{_dist(r)}-") for f in found) for r in wheels(python))


def build(dest: Path, python: str = "3.12") -> dict[str, object]:
    """Download, slim and place the wheels in `dest/server`; their sizes, and the room left."""
    folder = dest / "server"
    for old in [*folder.glob("*.whl"), *folder.glob("*.partial")]:
        old.unlink()
    rows = []
    for requirement, drop in wheels(python).items():
        source = download(requirement, python, dest / ".download")
        slimmed, dropped = slim(source, folder, drop)
        rows.append({"wheel": slimmed.name, "published_mib": source.stat().st_size / MIB,
                     "carried_mib": slimmed.stat().st_size / MIB, "dropped": len(dropped)})
    carried = sum(row["carried_mib"] for row in rows)
    tree = sum(p.stat().st_size for p in travelling_files()) / MIB
    room = CALL_LIMIT_MIB - MARGIN_MIB - tree
    if carried > room:
        raise RuntimeError(f"the wheels ({carried:.1f} MiB) and the working tree ({tree:.1f} "
                           f"MiB) exceed one call's {CALL_LIMIT_MIB:g} MiB less {MARGIN_MIB:g}")
    return {"wheels": rows, "carried_mib": carried, "tree_mib": tree, "room_mib": room}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=REPO_ROOT / ".whl")
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python (3.12)")
    parser.add_argument("--calls-json", action="store_true", help="print the device call(s) "
                        "as JSON; build the wheels first where they are missing")
    args = parser.parse_args(argv)
    if not (args.calls_json and wheels_present(args.dest, args.python)):
        with contextlib.redirect_stdout(sys.stderr if args.calls_json else sys.stdout):
            report = build(args.dest, args.python)  # with --calls-json, stdout is the JSON alone
            for row in report["wheels"]:
                print(f"{row['wheel']}: {row['published_mib']:.1f} MiB published, "
                      f"{row['carried_mib']:.1f} MiB carried ({row['dropped']} members dropped)")
            print(f"carried {report['carried_mib']:.1f} MiB, working tree "
                  f"{report['tree_mib']:.1f} MiB (room for {report['room_mib']:.1f} MiB)\n"
                  "The device call (docs/gpu-check.md):")
    print(json.dumps(DEVICE_CALLS, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
