"""One ModelScope process for many reference jobs: pipeline runs and checkpoint checks.

Why: the reference must run in a process of its own (import placeholders, RNG
reseeding and ModelScope's registry stay out of the caller), and starting one
costs about 9 s on a 2-core machine (torch and ModelScope's imports), more than
most of the jobs themselves. A `ReferenceWorker` starts that process once and
sends it jobs one at a time as JSON lines on its stdin; each answer comes back as
one JSON line on its stdout. ModelScope's own printing goes to a log file, never
into the answers.

    with ReferenceWorker() as reference:
        results = reference.pipeline(model_dir, pairs, inputs_dir=None)  # run_reference
        written = reference.write_checkpoint(out_dir, seed=11)  # ModelScope's weights
        report = reference.loading_report(model_dir)  # ModelScope loading ours

A job that fails raises `ReferenceJobError` with the worker's traceback; the
worker keeps serving. A job that outlasts its timeout kills the worker (by PID)
and raises `TimeoutError`; the next job starts a fresh one.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from ofa_ve_reference.modelscope_pipeline import Pair, image_path

MODULE = "ofa_ve_reference.worker"


class ReferenceJobError(RuntimeError):
    """A job failed inside the worker (the message carries its traceback)."""


def _run_pipeline(model_dir: str, pairs: list[list[Any]], inputs_dir: str | None) -> Any:
    from ofa_ve_reference.modelscope_pipeline import run_reference

    if inputs_dir is not None:
        Path(inputs_dir).mkdir(parents=True, exist_ok=True)
    return run_reference(model_dir, [tuple(p) for p in pairs], inputs_dir)  # type: ignore[misc]


def _write_checkpoint(out: str, seed: int) -> str:
    from ofa_ve_reference.modelscope_checkpoint import write_modelscope_checkpoint

    return str(write_modelscope_checkpoint(Path(out), seed))


def _loading_report(model_dir: str) -> Any:
    from ofa_ve_reference.modelscope_checkpoint import loading_report

    return loading_report(Path(model_dir))


JOBS: dict[str, Callable[..., Any]] = {
    "pipeline": _run_pipeline,
    "write_checkpoint": _write_checkpoint,
    "loading_report": _loading_report,
}
"""What the worker does, by job name (keyword arguments come in the job's JSON)."""


def serve(jobs: TextIO, answers: TextIO) -> None:
    """The worker's loop: one JSON job per line in, one JSON answer per line out."""
    for line in jobs:
        if not line.strip():
            continue
        try:
            job = json.loads(line)
            answer: dict[str, Any] = {"result": JOBS[job.pop("job")](**job)}
        except Exception:  # the job's failure is the caller's to report
            answer = {"error": traceback.format_exc()}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def main() -> int:
    """Entry point of the worker process (started by `ReferenceWorker`)."""
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    with contextlib.redirect_stdout(sys.stderr):  # ModelScope's prints stay out of answers
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # and so do C-level ones
        serve(sys.stdin, answers)
    return 0


class ReferenceWorker:
    """The caller's side: starts the worker on first use, sends jobs, reads answers."""

    def __init__(self, log_path: Path | None = None, python: str = sys.executable) -> None:
        self._scratch = tempfile.TemporaryDirectory(prefix="ms-worker-")
        self.log_path = log_path or Path(self._scratch.name) / "worker.log"
        self.python = python
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._images = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def pipeline(
        self,
        model_dir: str | os.PathLike[str],
        pairs: Sequence[Pair],
        inputs_dir: str | os.PathLike[str] | None = None,
        timeout_s: float = 600.0,
    ) -> list[dict[str, Any]]:
        """ModelScope's pipeline on each pair (`modelscope_pipeline.run_reference`)."""
        records = []
        for image, hypothesis, premise in pairs:
            self._images += 1
            path = image_path(image, Path(self._scratch.name), self._images)
            records.append([path, hypothesis, premise])
        return self.call(
            "pipeline",
            timeout_s,
            model_dir=str(Path(model_dir).resolve()),
            pairs=records,
            inputs_dir=None if inputs_dir is None else str(Path(inputs_dir).resolve()),
        )

    def write_checkpoint(
        self, out: str | os.PathLike[str], seed: int, timeout_s: float = 600.0
    ) -> Path:
        """A model directory whose weights ModelScope's own `OFAModel` produced."""
        return Path(self.call("write_checkpoint", timeout_s, out=str(out), seed=seed))

    def loading_report(
        self, model_dir: str | os.PathLike[str], timeout_s: float = 600.0
    ) -> dict[str, Any]:
        """How ModelScope's `OFAModel` takes the directory's weights."""
        return self.call("loading_report", timeout_s, model_dir=str(model_dir))

    def call(self, job: str, timeout_s: float = 600.0, **arguments: Any) -> Any:
        """Run one job (a name in `JOBS`, its keyword arguments) and return its result."""
        proc = self._start()
        assert proc.stdin is not None
        try:
            proc.stdin.write((json.dumps({"job": job, **arguments}) + "\n").encode())
            proc.stdin.flush()
        except BrokenPipeError:
            code = proc.wait()
            raise ReferenceJobError(
                f"the reference worker exited ({code}) before job {job!r}:\n" + self._log_tail()
            ) from None
        answer = json.loads(self._read_line(proc, time.monotonic() + timeout_s, job))
        if "error" in answer:
            raise ReferenceJobError(
                f"reference job {job!r} failed in the worker:\n{answer['error']}"
            )
        return answer["result"]

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._buffer = b""
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [self.python, "-m", MODULE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        return self._proc

    def _read_line(self, proc: subprocess.Popen[bytes], deadline: float, job: str) -> bytes:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close(kill=True)
                raise TimeoutError(f"reference job {job!r} took too long; worker killed")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    code = proc.wait()
                    raise ReferenceJobError(
                        f"the reference worker exited ({code}) during job {job!r}:\n"
                        + self._log_tail()
                    )
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _log_tail(self, size: int = 4000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-size:]
        except OSError:
            return "(no worker log)"

    def close(self, kill: bool = False) -> None:
        """Stop the worker: the end of its input, then SIGKILL after 10 s (at once
        with ``kill``)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if kill:
            proc.kill()
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> ReferenceWorker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
        self._scratch.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
