#!/usr/bin/env python3
"""The GPU check's device call, and the wheels it carries to the GPU machine.

Why: the lent GPU machine has no network and lacks tritonserver (nvidia-pytriton),
perf_analyzer (tritonclient), numpy<2 (the Triton 2.51 Python-backend stub needs it
for BYTES tensors) and simplejpeg (the exact image path's JPEG decoder). What travels
with one command is the working tree plus carried paths, 64 MiB in all; the wheels as
published are ~90 MB. So this downloads them here (CPython 3.12, manylinux x86_64, no
dependencies pulled in), drops what the machine cannot use (the Python-backend stubs
and the bundled libpython of other Python versions, perf_analyzer's duplicate
`perf_client`, numpy's tests; each drop is listed), re-compresses them with LZMA (pip
reads any compression zipfile reads) into `.whl/server/` (ignored by git), and checks
that they and the tree fit one call.

The device call itself is written here, once (`DEVICE_CALLS`): the docs, the rehearsal
(`make gpu-rehearsal`) and whoever starts the GPU machine read it from `--calls-json`.

    .venv/bin/python -m ofa_ve_bench.wheelhouse               # build .whl/server, print the call
    .venv/bin/python -m ofa_ve_bench.wheelhouse --calls-json  # the same call as JSON (builds
                                                              # the wheels first if needed)
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
    """Exactly what the check lacks there (docs/gpu-check.md)."""
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
        Wheel("simplejpeg==1.9.0", (), "the exact image path's JPEG decoder (libjpeg-turbo)"),
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
    subprocess.run(cmd, check=True, stdout=sys.stderr.fileno())  # stdout may be JSON
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


CALL_TIMEOUT_S = 540
"""One device call of 9 minutes: a machine start of 1-2 minutes fits the 15-minute window
beside it, with room for one rerun of a short command."""
DEVICE_CALLS: list[dict[str, object]] = [
    {
        "timeout_s": CALL_TIMEOUT_S,
        "carry": [".whl/server"],
        "command": "bash scripts/gpu_check_device.sh --mode gpu",
    }
]
"""The GPU check's device call(s), exactly as made (scripts/gpu_check_device.sh says
what the command does). The rehearsal runs them with `--mode cpu` in place of
`--mode gpu`."""


def wheels_present(dest: Path, python: str = "3.12") -> bool:
    """Whether `dest/server` holds one wheel for every requirement of `wheels(python)`."""
    names = [w.requirement.split("==")[0].replace("-", "_").lower() for w in wheels(python)]
    found = [p.name.lower() for p in (dest / "server").glob("*.whl")]
    return all(any(f.startswith(f"{n}-") for f in found) for n in names)


def build(dest: Path, python: str = "3.12") -> dict[str, object]:
    """Download, slim and place the wheels in `dest/server`; sizes, drops and the calls."""
    cache = dest / ".download"
    folder = dest / "server"
    for old in folder.glob("*.whl"):
        old.unlink()
    report: dict[str, object] = {"python": python, "wheels": []}
    carried = 0.0
    for wheel in wheels(python):
        source = download(wheel, python, cache)
        slimmed, dropped = slim(source, folder, wheel.drop)
        size = slimmed.stat().st_size / MIB
        carried += size
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
    budget = CALL_LIMIT_MIB - MARGIN_MIB - tree
    if carried > budget:
        raise RuntimeError(
            f"the wheels ({carried:.1f} MiB) and the working tree ({tree:.1f} MiB) exceed one "
            f"call's {CALL_LIMIT_MIB:g} MiB less {MARGIN_MIB:g} MiB of margin"
        )
    report.update(tree_mib=round(tree, 2), carried_mib=round(carried, 2),
                  budget_mib=round(budget, 2), calls=DEVICE_CALLS)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=REPO_ROOT / ".whl")
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python (3.12)")
    parser.add_argument(
        "--calls-json",
        action="store_true",
        help="print the device call(s) as JSON; build the wheels first where they are missing",
    )
    args = parser.parse_args(argv)
    if args.calls_json:
        if not wheels_present(args.dest, args.python):
            with contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON alone
                build(args.dest, args.python)
        print(json.dumps(DEVICE_CALLS, indent=2))
        return 0
    report = build(args.dest, args.python)
    for row in report["wheels"]:
        print(
            f"{row['wheel']}: {row['published_mib']:.1f} MiB published, "
            f"{row['carried_mib']:.1f} MiB carried ({row['dropped_members']} members dropped)"
        )
    print(f"carried {report['carried_mib']:.1f} MiB, working tree {report['tree_mib']:.1f} MiB "
          f"(room for {report['budget_mib']:.1f} MiB of wheels)")
    print("\nThe device call (docs/gpu-check.md):")
    for call in report["calls"]:
        print(f"\nrun(timeout_s={call['timeout_s']}, carry={call['carry']}, command=")
        print(f"    {call['command']!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
