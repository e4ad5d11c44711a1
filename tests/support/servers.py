"""How the suite's fixtures run a server: started and READY, then killed by PID.

Why killed, not stopped: a graceful stop takes about 3 s here, most of it
Triton's exit loop, which looks for live models once a second; with some fifteen
servers per run that is most of a minute spent on shutdowns nobody checks. Killing
is what `TritonServer.kill()` does (SIGKILL to the whole process tree, then its
stubs' /dev/shm regions removed), so nothing is left behind either way. The tests
of shutdown itself (the SIGTERM drain, serve.py's Ctrl-C) stop their servers
gracefully and check what happens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ofa_ve_ops.server_process import TritonServer


@contextlib.contextmanager
def running(server: TritonServer) -> Iterator[TritonServer]:
    """``server`` started and READY for the block; killed (tree and regions) after it."""
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.kill()
