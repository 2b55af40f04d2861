"""Ending the processes the tests start: the adapter and the private servers."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from typing import IO


def end(process: subprocess.Popen[bytes] | None, log: IO[bytes] | None, grace: float = 0.0) -> None:
    """SIGTERM and up to ``grace`` seconds to exit (none: no SIGTERM), then SIGKILL;
    either way the process is reaped and its log closed.  Safe when it is not running."""
    if process is not None:
        if grace > 0 and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(grace)
        if process.poll() is None:
            process.kill()
        process.wait()
    if log is not None:
        log.close()
